"""``profit``: a filter's usefulness in its own layer and in the next (Ahmadluei et al. 2023).

profit_k = γ·norm(P_self,k) + (1−γ)·norm(P_next,k), where P_self is ``taylor_fo`` and
P_next = Σ_j ‖W^{next}_{j,k}‖² is how much the consumers use channel k. ``norm`` divides
a group's vector by its maximum, so both terms lie in [0, 1] and γ weighs comparable
quantities. This criterion is one-shot; the online grow/prune loop keeps an EMA over
evaluations and can reuse ``p_self``, ``p_next`` and ``combine_profit``.

Split families. A Net2Wider split divides a channel's outgoing weights between the
original and its copies; both terms are squared, so each half would score about ¼ of its
source and be pruned right after it was grown. ``p_self`` and ``p_next`` therefore take
optional family ids (the loop's record of which channels were split from which): a
family is scored as one channel - its members' gate terms, and its members' outgoing
weights, are summed before squaring - and every member gets that score. Right after a
split this is exactly the source's score.
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
    finite_scores,
    input_column_sq_norms,
    pool_families,
    register_criterion,
    scatter_to_group,
    zeros_like_groups,
)
from pruning.criteria.taylor import taylor_fo_scores
from pruning.errors import UsageError
from pruning.surgery import ChannelGroup, Member


def p_self(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch],
    families: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """P_self: the ``taylor_fo`` score of every channel (float32, raw, not normalised).

    With ``families``, a family's gate terms are summed before squaring (module docstring).
    """
    return finite_scores(taylor_fo_scores(model, groups, batches, families))


def p_next(groups: Sequence[ChannelGroup], families: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """P_next,k = Σ over the group's consumers of Σ_j ‖W_{j,k}‖² (float32, raw).

    W_{j,k} is consumer output j's weights on input channel k (a kernel for a conv); a
    Linear after a flatten has several columns per channel and all of them are summed.
    With ``families``, W_{j,k} is replaced by the sum over k's family Σ_{k'∈F} W_{j,k'}
    (column by column), and every member gets the family's value; a consumer whose own
    outputs were split (copied rows) counts each of its output families once, by the mean
    of their rows.
    """
    scores = zeros_like_groups(groups)
    rows = _row_families(groups, families) if families is not None else {}
    for g in groups:
        family = None if families is None else families.get(g.name)
        for c in g.consumers:
            if family is not None and _poolable(c):
                scores[g.name] += _family_column_sq_norms(c, family, rows.get(id(c.module)))
            else:
                per_column = input_column_sq_norms(c.module)
                if family is not None:  # a grouped conv reads each channel alone: pool the squares
                    one = zeros_like_groups([g])[g.name]
                    scatter_to_group(one, c.idxs, c.root_idxs, per_column)
                    scores[g.name] += pool_families(one, family)
                else:
                    scatter_to_group(scores[g.name], c.idxs, c.root_idxs, per_column)
    return finite_scores(scores)


def _poolable(c: Member) -> bool:
    return not (isinstance(c.module, nn.Conv2d) and c.module.groups > 1)


def _row_families(groups: Sequence[ChannelGroup], families: Mapping[str, Tensor]) -> dict[int, Tensor]:
    """For every producer layer of a group with families: the family id of each output row."""
    rows: dict[int, Tensor] = {}
    for g in groups:
        if g.name not in families:
            continue
        for p in g.producers:
            n = p.module.weight.shape[0]
            ids = torch.arange(n) + n  # rows outside the group: families of their own
            ids[torch.as_tensor(p.idxs, dtype=torch.long)] = families[g.name].to(torch.long)[
                torch.as_tensor(p.root_idxs, dtype=torch.long)]
            rows[id(p.module)] = ids
    return rows


def _family_column_sq_norms(c: Member, family: Tensor, row_family: Tensor | None) -> Tensor:
    """‖Σ_{k∈F} W_{·,k}‖² per family F of consumer ``c``, given to every member (float64, group length).

    A channel may own several columns (a Linear after a flatten); its j-th column is added
    to the j-th columns of the other members. Rows (outputs of ``c``) of one ``row_family``
    are first replaced by their mean: split copies of a row read the channel once.
    """
    w = c.module.weight.detach().to("cpu", torch.float64)
    if row_family is not None:
        _, inverse, counts = torch.unique(row_family, return_inverse=True, return_counts=True)
        w = torch.zeros(len(counts), *w.shape[1:], dtype=w.dtype).index_add_(0, inverse, w)
        w = w / counts.view(-1, *[1] * (w.ndim - 1)).to(w.dtype)
    cols = w.transpose(0, 1).flatten(1)  # one row per input column: the weights that read it
    idxs = torch.as_tensor(c.idxs, dtype=torch.long)
    roots = torch.as_tensor(c.root_idxs, dtype=torch.long)
    order = torch.argsort(roots * (int(idxs.max()) + 1) + idxs)  # by channel, then column
    idxs, roots = idxs[order], roots[order]
    fam = family.to(torch.long)
    counts = torch.bincount(roots, minlength=len(fam))
    pos = torch.arange(len(roots)) - (torch.cumsum(counts, 0) - counts)[roots]  # j: rank within the channel
    stride = int(counts.max())
    n_fam = int(fam.max()) + 1
    pooled = torch.zeros(n_fam * stride, cols.shape[1], dtype=torch.float64)
    pooled.index_add_(0, fam[roots] * stride + pos, cols[idxs])
    per_family = torch.zeros(n_fam, dtype=torch.float64).index_add_(
        0, torch.arange(n_fam * stride) // stride, pooled.pow(2).sum(1))
    return per_family[fam]


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
        return finite_scores(combine_profit(own, nxt, self.gamma))
