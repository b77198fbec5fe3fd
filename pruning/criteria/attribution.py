"""``attribution``: agreement between a filter's feature map and the layer's Grad-CAM map.

Zhang et al. 2021 (Grad-CAM, Selvaraju et al.): a filter matters when what it responds
to is where the model's attribution for the true class lies.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pruning.criteria.base import (
    Batch,
    Criterion,
    check_batches,
    finite_scores,
    register_criterion,
    safe_divide,
    site_means,
    sum_normalized_sites,
)
from pruning.surgery import ChannelGroup


def agreement(a: Tensor, heat: Tensor) -> Tensor:
    """Σ over samples of ⟨ReLU(a_k)/‖ReLU(a_k)‖₁, H/‖H‖₁⟩ per channel k: ``[C]``.

    ``a`` is a ``[N, C, S]`` feature map, ``heat`` a non-negative ``[N, S]`` attribution
    map H of the same samples. Each term lies in [0, 1]; an all-zero map gives 0.
    """
    heat = safe_divide(heat, heat.sum(dim=1, keepdim=True))
    act = a.clamp_min(0)
    act = safe_divide(act, act.sum(dim=2, keepdim=True))
    return (act * heat.unsqueeze(1)).sum(dim=2).sum(dim=0)


def _attribution_stat(a: Tensor, g: Tensor) -> Tensor:
    """:func:`agreement` of a ``[N, C, S]`` feature map ``a`` with its Grad-CAM map (``g`` = ∂y_c/∂a)."""
    alpha = g.mean(dim=2, keepdim=True)  # [N, C, 1]: Grad-CAM channel weights
    cam = (alpha * a).sum(dim=1).clamp_min(0)  # [N, S]
    return agreement(a, cam)


@register_criterion
class Attribution(Criterion):
    """``attribution``: score_k = ⟨ReLU(a_k)/‖ReLU(a_k)‖₁, H/‖H‖₁⟩ summed over space.

    H = ReLU(Σ_j α_j a_j) is Grad-CAM at the producer's output (BN output if any), with
    α_j = spatial mean of ∂y_c/∂a_j and y_c the true-class logit; the sum over j runs
    over all channels of that layer. Averaged over all calibration samples,
    L2-normalised per layer (producer) and summed over a group's producers. Each term
    lies in [0, 1]; an all-zero feature map or attribution map gives 0 (divisions are
    guarded: 0/0 is taken as 0). For a Linear producer (no spatial extent) the score is 1 where
    both a_k and H are positive, else 0.
    """

    name = "attribution"
    requires_data = True

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        check_batches(self, batches)
        sites, values = site_means(model, groups, batches, "true_logit", _attribution_stat, per_sample=True)
        return finite_scores(sum_normalized_sites(groups, sites, values))
