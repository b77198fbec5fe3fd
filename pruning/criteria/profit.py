"""``profit``: a filter's usefulness in its own layer and in the next (Ahmadluei et al. 2023).

profit_k = γ·norm(P_self,k) + (1−γ)·norm(P_next,k), where P_self is ``taylor_fo`` and
P_next = Σ_j ‖W^{next}_{j,k}‖² is how much the consumers use channel k. ``norm`` divides
a group's vector by its maximum, so both terms lie in [0, 1] and γ weighs comparable
quantities. This criterion is one-shot; the online grow/prune loop keeps an EMA over
evaluations and can reuse ``p_self``, ``p_next`` and ``combine_profit``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from pruning.criteria.base import (
    Batch,
    Criterion,
    check_batches,
    finalize,
    input_column_sq_norms,
    register_criterion,
    scatter_to_group,
    zeros_like_groups,
)
from pruning.criteria.taylor import taylor_fo_scores
from pruning.errors import UsageError
from pruning.surgery import ChannelGroup


def p_self(model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
    """P_self: the ``taylor_fo`` score of every channel (float32, raw, not normalised)."""
    return finalize(taylor_fo_scores(model, groups, batches))


def p_next(groups: Sequence[ChannelGroup]) -> dict[str, Tensor]:
    """P_next,k = Σ over the group's consumers of Σ_j ‖W_{j,k}‖² (float32, raw).

    W_{j,k} is consumer output j's weights on input channel k (a kernel for a conv); a
    Linear after a flatten has several columns per channel and all of them are summed.
    """
    scores = zeros_like_groups(groups)
    for g in groups:
        for c in g.consumers:
            scatter_to_group(scores[g.name], c.idxs, c.root_idxs, input_column_sq_norms(c.module))
    return finalize(scores)


def max_normalize(v: Tensor) -> Tensor:
    """``v / max(v)`` for a non-negative vector; an all-zero vector stays zero.

    No epsilon: raw ``taylor_fo`` values can be 1e-15 and must still normalise to [0, 1].
    """
    m = v.max() if v.numel() else torch.zeros((), dtype=v.dtype)
    return v / m if m > 0 else torch.zeros_like(v)


def combine_profit(
    self_scores: Mapping[str, Tensor], next_scores: Mapping[str, Tensor], gamma: float
) -> dict[str, Tensor]:
    """γ·norm(P_self) + (1−γ)·norm(P_next) per group, norm = divide by the group's max (float32)."""
    _check_gamma(gamma)
    return {
        name: (gamma * max_normalize(self_scores[name].double())
               + (1 - gamma) * max_normalize(next_scores[name].double())).float()
        for name in next_scores
    }


def _check_gamma(gamma: object) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 <= float(gamma) <= 1:
        raise UsageError(f"gamma must be in [0, 1], got {gamma!r}")
    return float(gamma)


@register_criterion
class Profit(Criterion):
    """``profit``: γ·norm(P_self) + (1−γ)·norm(P_next), norm = divide by the group's max.

    Options: ``gamma`` in [0, 1] (default 0.5). With ``gamma=0`` the score is data-free
    (P_next only; ``requires_data`` is then False and no backward pass is run).
    """

    name = "profit"
    requires_data = True

    def __init__(self, *, gamma: float = 0.5) -> None:
        self.gamma = _check_gamma(gamma)
        self.requires_data = self.gamma > 0

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        nxt = p_next(groups)
        if self.gamma > 0:
            check_batches(self, batches)
            own = p_self(model, groups, batches)
        else:
            own = {name: torch.zeros_like(v) for name, v in nxt.items()}
        return finalize(combine_profit(own, nxt, self.gamma))
