"""Gradient-based criteria: ``taylor``, ``taylor_fo``, ``taylor_guided``.

Feature maps a_k are read at the output of the BatchNorm that directly follows a
producer (before any ReLU), or at the producer's output if it has no BN (see
``base.find_sites``). ``taylor`` and ``taylor_guided`` are computed per producer
(layer), L2-normalised per layer, then summed over the producers of a residual group.
Calibration runs in eval mode; see ``base.run_backward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from pruning.criteria.base import (
    Batch,
    BackwardPass,
    Criterion,
    check_batches,
    finite_scores,
    find_sites,
    pool_families,
    register_criterion,
    run_backward,
    scatter_to_group,
    site_means,
    sum_normalized_sites,
    zeros_like_groups,
)
from pruning.errors import UsageError
from pruning.surgery import ChannelGroup


def _taylor_stat(a: Tensor, g: Tensor) -> Tensor:
    # g is the gradient of the batch's *mean* loss, i.e. ∂L_n/∂a_n / N for sample n (eval
    # mode: samples do not interact); × N gives each example's own gradient, so batches of
    # different sizes weigh their examples alike. |·| per example, then summed over the batch.
    return (a * g).mean(dim=2).abs().sum(dim=0) * a.shape[0]


@register_criterion
class Taylor(Criterion):
    """``taylor`` (Molchanov et al. 2017, ICLR): mean over examples of |mean over space of a_k · ∂L/∂a_k|.

    L is the example's own cross-entropy. The absolute value is taken per example (as
    published), so examples whose first-order terms have opposite signs do not cancel;
    the result is averaged over all calibration examples, L2-normalised per layer
    (producer) and summed over a group's producers.
    """

    name = "taylor"
    requires_data = True

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        check_batches(self, batches)
        sites, values = site_means(model, groups, batches, "loss", _taylor_stat, per_sample=True)
        return finite_scores(sum_normalized_sites(groups, sites, values))


def _guided_stat(a: Tensor, g: Tensor) -> Tensor:
    return (a.clamp_min(0) * g.clamp_min(0)).mean(dim=2).sum(dim=0)


@register_criterion
class TaylorGuided(Criterion):
    """``taylor_guided`` (Zhang et al. 2021): mean over samples and space of ReLU(a_k)·ReLU(∂y_c/∂a_k).

    y_c is the logit of the sample's true class; only positive activations with positive
    gradients count (as in guided backprop). Averaged over all calibration samples,
    L2-normalised per layer (producer) and summed over a group's producers.
    """

    name = "taylor_guided"
    requires_data = True

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        check_batches(self, batches)
        sites, values = site_means(model, groups, batches, "true_logit", _guided_stat, per_sample=True)
        return finite_scores(sum_normalized_sites(groups, sites, values))


def taylor_fo_scores(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch],
    families: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Raw ``taylor_fo`` scores (float64, not normalised): mean over batches of t_k², see ``TaylorFO``.

    ``families[group]`` (optional) gives each channel a family id: the gate terms of a
    family are summed before squaring and every member gets the family's score (the loss
    change if the whole family goes), so a Net2Wider split does not change the score.
    """
    if len(batches) == 0:
        raise UsageError("taylor_fo needs calibration data; got 0 batches")
    sites = find_sites(model, groups, batches[0][0])
    # One "gate" per producer: its BN's (γ, β) if it has an affine BN, else its (weight, bias).
    producers = {(g.name, p.name): p for g in groups for p in g.producers}
    units: list[tuple[str, Tensor, tuple[int, ...], tuple[int, ...]]] = []
    for s in sites:
        module, idxs, root_idxs = s.module, s.idxs, s.root_idxs
        if getattr(module, "weight", None) is None:  # BN without affine parameters: use the filter
            p = producers[(s.group, s.producer)]
            module, idxs, root_idxs = p.module, p.idxs, p.root_idxs
        for param in (module.weight, getattr(module, "bias", None)):
            if param is not None:
                units.append((s.group, param, idxs, root_idxs))
    params = [u[1] for u in units]
    scores = zeros_like_groups(groups)

    def on_pass(bp: BackwardPass) -> None:
        t = zeros_like_groups(groups)
        for (group, p, idxs, root_idxs), gp in zip(units, bp.param_grads):
            per_channel = (p.detach() * gp).reshape(p.shape[0], -1).sum(1)
            scatter_to_group(t[group], idxs, root_idxs, per_channel)
        for name, v in t.items():
            if families is not None and name in families:
                v = pool_families(v, families[name])
            scores[name] += v.pow(2)

    run_backward(model, batches, [], "loss", on_pass, params=params)
    return {name: s / len(batches) for name, s in scores.items()}


@register_criterion
class TaylorFO(Criterion):
    """``taylor_fo`` (Molchanov et al. 2019): (Σ_{w∈k} w·∂L/∂w)², averaged over batches.

    L = mean cross-entropy of a batch; the square is taken per batch, then averaged.
    The sum runs over the *gate* of channel k at every producer of the group: for a
    producer followed by an affine BatchNorm this is the BN-gate form γ_k·∂L/∂γ_k +
    β_k·∂L/∂β_k (= Σ over batch and space of a_k·∂L/∂a_k at the BN output, the
    first-order change of L when the channel is removed); for a producer without one,
    its filter's weights and bias. The conv weights behind a BN are *not* added to the
    BN gate (that would count the same channel twice). For a residual group the
    producers' gates are summed before squaring: the channel is removed at all of
    them at once. No per-layer normalisation.
    """

    name = "taylor_fo"
    requires_data = True

    def score(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
        check_batches(self, batches)
        return finite_scores(taylor_fo_scores(model, groups, batches))
