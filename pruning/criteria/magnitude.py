"""Data-free criteria: ``l1``, ``l2``, ``fpgm``, ``bn_scale``, ``random``.

Weight-based scores are computed per producer (every Conv/Linear whose output channels
are the group) and summed over producers, so a residual group's channel k scores the
sum over all the convs whose outputs are added together at k. Only the filters' weights
count (biases are ignored, as in Li et al.).
"""

from __future__ import annotations

import hashlib
import logging
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pruning.criteria.base import (
    Batch,
    Criterion,
    finite_scores,
    out_channel_rows,
    register_criterion,
    scatter_to_group,
    zeros_like_groups,
)
from pruning.errors import UsageError
from pruning.surgery import ChannelGroup

logger = logging.getLogger(__name__)


def _per_producer(groups: Sequence[ChannelGroup], fn: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """Σ over producers of ``fn(rows)``, rows = the producer's weight, one row per output channel."""
    scores = zeros_like_groups(groups)
    for g in groups:
        for p in g.producers:
            scatter_to_group(scores[g.name], p.idxs, p.root_idxs, fn(out_channel_rows(p.module.weight)))
    return scores


def _l1_rows(rows: Tensor) -> Tensor:
    return rows.abs().sum(1)


def l1_scores(groups: Sequence[ChannelGroup]) -> dict[str, Tensor]:
    """Σ|W_k| over the filter's weights, summed over the group's producers (float64)."""
    return _per_producer(groups, _l1_rows)


@register_criterion
class L1(Criterion):
    """``l1``: Σ|W_k| of each filter (Li et al. 2016); summed over a group's producers."""

    name = "l1"
    requires_data = False

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        return finite_scores(l1_scores(groups))


@register_criterion
class L2(Criterion):
    """``l2``: ‖W_k‖₂ of each filter; summed over a group's producers."""

    name = "l2"
    requires_data = False

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        return finite_scores(_per_producer(groups, lambda rows: torch.linalg.vector_norm(rows.double(), dim=1)))


def _fpgm_rows(rows: Tensor) -> Tensor:
    # Matmul-based distances in float64: fast for wide layers (a 4096x25088 Linear), and
    # float64 keeps the cancellation error for near-equal filters at ~1e-8 relative.
    r = rows.double()
    return torch.cdist(r, r, compute_mode="use_mm_for_euclid_dist").sum(1)


@register_criterion
class FPGM(Criterion):
    """``fpgm``: Σ_j ‖W_k − W_j‖₂ over all filters j of the same layer (He et al. 2019).

    A filter close to the layer's geometric median is redundant and scores low. Computed
    per producer over that producer's filters and summed over a group's producers.
    """

    name = "fpgm"
    requires_data = False

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        return finite_scores(_per_producer(groups, _fpgm_rows))


@register_criterion
class BNScale(Criterion):
    """``bn_scale``: |γ_k| of the group's BatchNorm(s), summed (network slimming, Liu et al. 2017).

    A group with no affine BatchNorm falls back to ``l1`` of its producers (logged at
    debug level); the two scales then differ, which only matters for global ranking
    without per-group normalisation.
    """

    name = "bn_scale"
    requires_data = False

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        scores = zeros_like_groups(groups)
        fallback = []
        for g in groups:
            norms = [n for n in g.norms if getattr(n.module, "weight", None) is not None]
            if not norms:
                fallback.append(g)
                continue
            for n in norms:
                scatter_to_group(scores[g.name], n.idxs, n.root_idxs, n.module.weight.detach().abs())
        if fallback:
            logger.debug("bn_scale: no affine BatchNorm in %s; using l1", [g.name for g in fallback])
            scores.update(l1_scores(fallback))
        return finite_scores(scores)


@register_criterion
class Random(Criterion):
    """``random``: U(0, 1) per channel, a baseline.

    Drawn from a ``torch.Generator`` seeded from (``seed``, group name) through SHA-256,
    so a group's scores depend only on the seed, its name and its size - not on the
    other groups, their order, or the process.
    """

    name = "random"
    requires_data = False

    def __init__(self, *, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise UsageError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        scores = {}
        for g in groups:
            digest = hashlib.sha256(f"{self.seed}\0{g.name}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            scores[g.name] = torch.rand(g.size, generator=gen, dtype=torch.float32)
        return finite_scores(scores)
