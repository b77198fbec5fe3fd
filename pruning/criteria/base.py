"""The ``Criterion`` base class, the ``CRITERIA`` registry and the machinery criteria share.

Every criterion maps a model and its channel groups to one importance score per group
channel (higher = more important). Shared pieces, written once:

* ``scatter_to_group``: per-layer-channel values of one member -> per-group-channel scores
  (``root_idxs`` gives the mapping; several columns per channel are summed);
* ``find_sites``: where each producer's feature map a_k is read - the output of the
  BatchNorm that directly follows the producer, else the producer's own output;
* ``run_backward``: forward/backward over calibration batches in eval mode with hooks on
  the sites, handing feature maps and gradients to a callback, then restoring the model
  (training modes, ``requires_grad`` flags; no hooks or ``.grad`` left, weights untouched).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.errors import TrialError, UsageError
from pruning.registry import Registry
from pruning.selection import normalize
from pruning.surgery import ChannelGroup

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
Objective = Literal["loss", "true_logit"]



class Criterion(ABC):
    """Scores the channels of channel groups; higher = more important.

    Subclasses set ``name`` and ``requires_data`` and take their options as keyword-only
    ``__init__`` arguments (``get_criterion`` rejects any other option by name).
    """

    name: ClassVar[str]
    requires_data: bool = False

    @abstractmethod
    def score(
        self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]
    ) -> dict[str, Tensor]:
        """One float32 CPU tensor of shape ``[group.size]`` per group, keyed by group name.

        ``batches`` are ``(inputs, integer labels)`` pairs; data-free criteria ignore them.
        The model is left exactly as it was (weights, buffers, training modes).
        """

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: add ``cls`` to ``CRITERIA`` under ``cls.name``."""
    return CRITERIA.register(cls.name)(cls)


# --------------------------------------------------------------------------- scores


def zeros_like_groups(groups: Sequence[ChannelGroup]) -> dict[str, Tensor]:
    """A float64 zero vector per group (criteria accumulate in float64, return float32)."""
    return {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}


def scatter_to_group(
    out: Tensor, idxs: Sequence[int], root_idxs: Sequence[int], per_channel: Tensor
) -> None:
    """Add ``per_channel[idxs[i]]`` to ``out[root_idxs[i]]`` for every i, in place.

    ``per_channel`` is indexed by the layer's own channel (or column) index; several
    indices mapping to one group channel (a Linear after a flatten) are summed.
    """
    values = per_channel.detach().to("cpu", torch.float64)[torch.as_tensor(idxs, dtype=torch.long)]
    out.index_add_(0, torch.as_tensor(root_idxs, dtype=torch.long), values)


def pool_families(v: Tensor, family: Tensor) -> Tensor:
    """Every channel gets the sum of ``v`` over its family (channels sharing a ``family`` id).

    A Net2Wider split divides a channel's outgoing weights, and with them its first-order
    terms, between the members of a family; their sum is what the source had.
    """
    fam = family.to(torch.long)
    pooled = torch.zeros(int(fam.max()) + 1 if fam.numel() else 0, dtype=v.dtype).index_add_(0, fam, v)
    return pooled[fam]


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (for non-negative sums, ``den == 0`` means ``num == 0``)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def finite_scores(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cast to float32 CPU. Divisions are guarded, so a non-finite score means the model
    itself produced NaN/inf on the calibration data: raise ``TrialError``."""
    out = {}
    for name, s in scores.items():
        s32 = s.detach().to("cpu", torch.float32)
        if not torch.isfinite(s32).all():
            raise TrialError(f"non-finite importance scores in group {name!r} (does the model output NaN?)")
        out[name] = s32
    return out


def out_channel_rows(weight: Tensor) -> Tensor:
    """A layer's weight as one row per output channel (Conv2d ``[out, in/g, kh, kw]``, Linear ``[out, in]``)."""
    return weight.detach().flatten(1)


def input_column_sq_norms(module: nn.Module) -> Tensor:
    """Σ_j W[j, c]² for every input channel/column c of a Conv2d or Linear (length = its inputs).

    For a grouped conv, input channel c is read by the output channels of its group only.
    """
    w = module.weight.detach()
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        g = module.groups
        in_per, out_per = w.shape[1], w.shape[0] // g
        sq = w.pow(2).reshape(g, out_per, in_per, -1).sum(dim=(1, 3))  # [groups, in_per]
        return sq.reshape(-1)
    return w.pow(2).transpose(0, 1).flatten(1).sum(1)


def check_batches(criterion: Criterion, batches: Sequence[Batch]) -> None:
    """A data-based criterion needs at least one ``(inputs, labels)`` batch."""
    if len(batches) == 0:
        raise UsageError(f"criterion {criterion.name!r} needs calibration data; got 0 batches")


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Site:
    """Where one producer's feature map a_k is read during calibration.

    ``module`` is the BatchNorm right after the producer if there is one, else the
    producer itself; ``idxs[i]`` is the channel of ``module``'s output that is group
    channel ``root_idxs[i]``.
    """

    group: str
    producer: str
    module: nn.Module
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass
class BackwardPass:
    """One calibration batch: feature maps and gradients, detached.

    ``features[i]``/``grads[i]`` belong to ``sites[i]`` (``None`` if that module did not
    run); ``param_grads[j]`` to the j-th requested parameter (zeros if unused).
    """

    features: list[Tensor | None]
    grads: list[Tensor | None]
    param_grads: list[Tensor]
    labels: Tensor


def _first_output(out: object) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def grad_eval_mode(model: nn.Module, *, params_grad: bool = True) -> Iterator[None]:
    """Eval mode with autograd on; every parameter's ``requires_grad`` set to ``params_grad``
    (True: scores that need weight gradients; False: only something else is optimised, e.g.
    attribution_iba's masks). Restores modes and flags on exit.

    Modes are saved per module (a frozen BN inside a training model stays frozen).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            if p.is_floating_point():
                p.requires_grad_(params_grad)
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def find_sites(model: nn.Module, groups: Sequence[ChannelGroup], example: Tensor) -> list[Site]:
    """The feature-map site of every producer of every group, in group then producer order.

    A producer is paired with a BatchNorm of its group whose input is the producer's
    output tensor (traced on one no-grad forward pass of ``example``). Unpaired producers
    are read at their own output.
    """
    producer_of: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (producer name, output kept alive)
    paired: dict[str, nn.Module] = {}
    norms = {id(n.module): n for g in groups for n in g.norms}
    handles = []

    def on_producer(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            t = _first_output(out)
            producer_of.setdefault(id(t), (name, t))

        return hook

    def on_norm(module: nn.Module, inp: tuple[object, ...]) -> None:
        if inp and isinstance(inp[0], Tensor) and id(inp[0]) in producer_of:
            paired.setdefault(producer_of[id(inp[0])][0], module)

    try:
        for g in groups:
            for p in g.producers:
                handles.append(p.module.register_forward_hook(on_producer(p.name)))
        for n in norms.values():
            handles.append(n.module.register_forward_pre_hook(on_norm))
        modes = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            with torch.no_grad():
                model(example[:2].to(_device(model)))
        finally:
            for m, training in modes:
                m.training = training
    finally:
        for h in handles:
            h.remove()

    sites = []
    for g in groups:
        norm_members = {id(n.module): n for n in g.norms}
        for p in g.producers:
            bn = paired.get(p.name)
            member = norm_members.get(id(bn)) if bn is not None else None
            if member is None:
                sites.append(Site(g.name, p.name, p.module, p.idxs, p.root_idxs))
            else:
                sites.append(Site(g.name, p.name, member.module, member.idxs, member.root_idxs))
    return sites


def _objective(logits: Tensor, labels: Tensor, objective: Objective) -> Tensor:
    if objective == "loss":
        return F.cross_entropy(logits, labels)
    # Sum over samples of each sample's true-class logit: in eval mode samples do not
    # interact, so its gradient at sample n is ∂y_{c_n}/∂a for that sample alone.
    return logits.gather(1, labels.view(-1, 1)).sum()


def run_backward(
    model: nn.Module,
    batches: Sequence[Batch],
    sites: Sequence[Site],
    objective: Objective,
    on_pass: Callable[[BackwardPass], None],
    params: Sequence[Tensor] = (),
) -> None:
    """For each batch: eval-mode forward, gradient of ``objective``, then ``on_pass(pass)``.

    ``objective`` is ``"loss"`` (mean cross-entropy) or ``"true_logit"`` (Σ_n y_{n,c_n}).
    Gradients are taken with ``torch.autograd.grad`` w.r.t. the site outputs and
    ``params``, so no ``.grad`` is written; BN statistics do not move (eval mode). Site
    outputs are cloned on the way out of the hook so that an in-place ReLU downstream
    cannot overwrite the captured (pre-ReLU) feature map.
    """
    device = _device(model)
    captured: dict[int, Tensor] = {}
    seen: set[int] = set()
    index = {id(s.module): i for i, s in enumerate(sites)}

    def hook(module: nn.Module, _inp: object, out: object) -> object:
        i = index[id(module)]
        if i in captured or not isinstance(out, Tensor):
            return None  # only the first call of a shared module is a site
        captured[i] = out
        return out.clone()

    handles = [s.module.register_forward_hook(hook) for s in {id(s.module): s for s in sites}.values()]
    try:
        with grad_eval_mode(model):
            for x, y in batches:
                captured.clear()
                x, y = x.to(device), y.to(device, torch.long)
                logits = _first_output(model(x))
                target = _objective(logits, y, objective)
                order = sorted(captured)
                seen.update(order)
                inputs = [captured[i] for i in order] + list(params)
                grads = torch.autograd.grad(target, inputs, allow_unused=True) if inputs else ()
                features: list[Tensor | None] = [None] * len(sites)
                feature_grads: list[Tensor | None] = [None] * len(sites)
                for j, i in enumerate(order):
                    features[i] = captured[i].detach()
                    g = grads[j]
                    feature_grads[i] = torch.zeros_like(features[i]) if g is None else g.detach()
                param_grads = [
                    torch.zeros_like(p) if g is None else g.detach()
                    for p, g in zip(params, grads[len(order):])
                ]
                captured.clear()
                on_pass(BackwardPass(features, feature_grads, param_grads, y))
    finally:
        captured.clear()
        for h in handles:
            h.remove()
    missing = [s.producer for i, s in enumerate(sites) if i not in seen]
    if missing:
        logger.warning("producers never ran during calibration (scored 0): %s", missing)


def channels_last_flat(t: Tensor) -> Tensor:
    """A feature map ``[N, C, *space]`` as ``[N, C, S]`` (S = 1 for a Linear's ``[N, C]``)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def site_means(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Sequence[Batch],
    objective: Objective,
    stat: Callable[[Tensor, Tensor], Tensor],
    per_sample: bool,
) -> tuple[list[Site], list[Tensor | None]]:
    """Average a per-site statistic over the calibration batches.

    ``stat(a, g)`` gets a site's feature map ``[N, C, S]`` and the gradient of
    ``objective`` w.r.t. it and returns one value per layer channel ``[C]``. With
    ``per_sample`` it must return a *sum* over the batch's samples and the result is
    divided by the total number of samples; otherwise the per-batch values are averaged
    over batches. Sites that never ran get ``None``.
    """
    sites = find_sites(model, groups, batches[0][0])
    sums: list[Tensor | None] = [None] * len(sites)
    count = [0]

    def on_pass(bp: BackwardPass) -> None:
        count[0] += int(bp.labels.shape[0]) if per_sample else 1
        for i in range(len(sites)):
            a, g = bp.features[i], bp.grads[i]
            if a is None or g is None:
                continue
            v = stat(channels_last_flat(a), channels_last_flat(g)).detach().to("cpu", torch.float64)
            sums[i] = v if sums[i] is None else sums[i] + v

    run_backward(model, batches, sites, objective, on_pass)
    return sites, [None if s is None else s / max(count[0], 1) for s in sums]


def sum_normalized_sites(
    groups: Sequence[ChannelGroup], sites: Sequence[Site], values: Sequence[Tensor | None]
) -> dict[str, Tensor]:
    """L2-normalise each site's (layer's) vector, then sum the sites of each group per channel."""
    scores = zeros_like_groups(groups)
    for site, v in zip(sites, values):
        if v is not None:
            scatter_to_group(scores[site.group], site.idxs, site.root_idxs, normalize(v).to(v.dtype))
    return scores
