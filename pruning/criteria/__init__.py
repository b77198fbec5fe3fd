"""Channel importance criteria: ``get_criterion(name, **options).score(model, groups, batches)``.

Each criterion returns ``{group.name: float32 CPU tensor [group.size]}``, higher = more
important; each class's docstring gives its formula and the choices made. Registered names: ``attribution``, ``attribution_iba`` (options ``beta``,
``steps``, ``lr``, ``seed``), ``bn_scale``, ``fpgm``, ``l1``, ``l2``, ``profit`` (option
``gamma``), ``random`` (option ``seed``), ``taylor``, ``taylor_fo``, ``taylor_guided``.
"""

from __future__ import annotations

import inspect
from typing import Any

from pruning.criteria import attribution, attribution_iba, magnitude, profit, taylor  # noqa: F401  (registers criteria)
from pruning.criteria.base import CRITERIA, Criterion
from pruning.criteria.profit import combine_profit, p_next, p_self
from pruning.errors import UsageError

__all__ = [
    "CRITERIA",
    "Criterion",
    "combine_profit",
    "get_criterion",
    "p_next",
    "p_self",
]


def get_criterion(name: str, **options: Any) -> Criterion:
    """Build the criterion registered as ``name`` with its options (e.g. ``gamma``, ``seed``).

    Raises ``UsageError`` for an unknown name (listing the valid ones), an unknown
    option (naming it and the valid ones) or an invalid option value.
    """
    cls = CRITERIA[name]
    valid = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        allowed = ", ".join(valid) if valid else "none"
        raise UsageError(f"unknown option {unknown[0]!r} for criterion {name!r}; valid options: {allowed}")
    return cls(**options)
