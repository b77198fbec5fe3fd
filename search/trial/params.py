"""What a trial's ``params`` mean, without Optuna: the modes, the ratio keys and the defaults.

A params dict (``search.study.space`` samples it; the ledger stores it) is read back here by
the trial, the search and finalize alike:

* :data:`MODES` and the keys of each mode (:data:`ADAPTIVE_FLOAT_KNOBS`,
  :data:`ADAPTIVE_CHOICE_KNOBS`, :data:`BUDGET_KEY`), the MACs target :data:`TARGET_KEY` and the
  screening marker :data:`SCREEN_KEY`; a baseline's markers ``baseline``
  (one of :data:`BASELINES`) and ``ratio``;
* the ratio keys (:func:`ratio_key`, :data:`ALL_KEY`; with ``search.tie: slope`` the one
  :data:`SLOPE_KEY`, a profile over depth) and the one rule that turns them into a
  keep ratio per group (:func:`ratios_from_params`, described in ``search.study.space``);
* :func:`baseline_defaults`: the value of every key a params dict may lack - the first
  criterion, step count and grow method, the most finetune epochs, the geometric middle of
  the finetune LR range, the middle of the distillation ranges. A baseline is built from them
  (``search.study.space.baseline_params``) and a trial fills the keys its params lack with them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pruning.errors import UsageError
from search.config import ExperimentConfig

__all__ = ["ADAPTIVE_CHOICE_KNOBS", "ADAPTIVE_FLOAT_KNOBS", "ALL_KEY", "BASELINES", "BUDGET_KEY", "MODES",
           "SCREEN_KEY", "SLOPE_KEY", "TARGET_KEY", "baseline_defaults", "depth_profile", "ratio_key",
           "ratios_from_params"]

MODES = ("prune", "adaptive", "scratch")
BASELINES = ("uniform", "global")
ALL_KEY = "r_all"
#: ``search.tie: slope``: the trial's depth slope, its profile ``pruning.budget.depth_profile``.
SLOPE_KEY = "depth_slope"
#: Adaptive-mode knobs, each sampled from the ``search.adaptive`` field of the same name.
ADAPTIVE_FLOAT_KNOBS = ("gamma", "prune_threshold", "grow_fraction")
ADAPTIVE_CHOICE_KNOBS = ("patience", "eval_every_steps", "grow_method")
#: Adaptive mode: the trial's MACs budget as a fraction of the base model's MACs (``macs_budget_range``).
BUDGET_KEY = "macs_budget_ratio"
#: With ``objectives.macs_targets``: the trial's target, a fraction of the base MACs (``search.trial.targets``).
TARGET_KEY = "macs_target"
#: Marker of a trial enqueued by screening: the candidate's index in ``screen.parquet`` (``search.study.screen``).
SCREEN_KEY = "screen_candidate"


def baseline_defaults(cfg: ExperimentConfig) -> dict[str, Any]:
    """The value of each key a params dict may lack (see the module docstring)."""
    s = cfg.search
    return {
        "criterion": s.criteria[0],
        "steps": s.steps[0],
        "grow_method": s.adaptive.grow_method[0],
        "finetune_epochs": s.finetune_epochs[1],
        "finetune_lr": math.sqrt(s.finetune_lr[0] * s.finetune_lr[1]),
        "distill_alpha": sum(s.distill_alpha) / 2,
        "distill_temperature": sum(s.distill_temperature) / 2,
    }


def depth_profile(groups: Sequence[str], slope: float) -> dict[str, float]:
    """The one-parameter profile p_i ∝ exp(-slope · i / (n - 1)) over ``groups`` in model order
    (i = 0 the first group), scaled so that its largest value is 1: ``slope`` > 0 keeps the early
    groups wider than the late ones, < 0 the reverse, 0 is uniform. The early groups of a CNN run
    at high resolution (many MACs per channel), so the sign trades early width against late width
    at the same MACs."""
    names = list(groups)
    n = max(len(names) - 1, 1)
    exponents = [-slope * i / n for i in range(len(names))]
    top = max(exponents, default=0.0)  # subtracted: the largest value is exp(0) = 1 exactly
    return {g: math.exp(e - top) for g, e in zip(names, exponents)}


def ratio_key(group: str) -> str:
    """The untied ratio key of ``group``: ``r_<group>`` with unsafe characters replaced."""
    return "r_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", group)


def ratios_from_params(params: Mapping[str, Any], groups: list[str]) -> dict[str, float]:
    """``{group: keep ratio}`` for every group of a prune-mode params dict (the rule of ``search.study.space``).

    A baseline maps every group to its ``ratio`` (for ``global`` that is the share of
    all channels, nominal per group). Adaptive-mode params have no ratios: ``{}``.
    """
    if params.get("mode") == "adaptive":
        return {}
    if params.get("baseline") in BASELINES:
        return {g: float(params["ratio"]) for g in groups}
    if ALL_KEY in params:
        return {g: float(params[ALL_KEY]) for g in groups}
    if SLOPE_KEY in params:
        return depth_profile(groups, float(params[SLOPE_KEY]))
    out: dict[str, float] = {}
    current: float | None = None
    for g in groups:
        key = ratio_key(g)
        if key in params:
            current = float(params[key])
        if current is None:
            raise UsageError(f"params give no keep ratio for group {g!r}: expected {key!r} or {ALL_KEY!r}")
        out[g] = current
    return out
