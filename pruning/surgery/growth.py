"""Growth of channel groups (Net2Wider split or zero-outgoing), built on torch-pruning's groups.

torch-pruning can only remove channels. Growth walks a group's members and resizes each
layer side itself: output rows (and BN buffers) are gathered from their sources, input
columns take their sources' columns (split: with the outgoing weight shared unevenly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pruning.errors import UsageError
from pruning.surgery.groups import ChannelGroup, GroupGraph, Member, SurgeryRecord
from pruning.surgery.layout import channel_dim, positions, slice_owner


GROW_METHODS = ("split", "zero")

#: Net2Wider splits a source's outgoing weights between the original and its copies. The
#: shares are drawn (seeded) in [1 - jitter, 1 + jitter] and normalised to sum to 1: the
#: function is unchanged, but original and copy get different gradients, which breaks
#: their symmetry even without noise on the incoming weights.
SPLIT_JITTER = 0.1

_NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _check_growable(group: ChannelGroup) -> None:
    for m in group.members:
        mod = m.module
        if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not _is_depthwise(mod):
            raise UsageError(
                f"cannot grow group {group.name!r}: {m.name} is a grouped convolution "
                f"(groups={mod.groups}); only plain and depthwise convs can grow"
            )
        if not isinstance(mod, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            raise UsageError(
                f"cannot grow group {group.name!r}: {m.name} is a {type(mod).__name__}; "
                "growth supports Conv2d, Linear and BatchNorm layers"
            )


def _split_shares(size: int, sources: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Per new-group-channel factor for outgoing weights: 1, or the share of a split source."""
    factor = torch.ones(size + len(sources), dtype=torch.float64)
    copies: dict[int, list[int]] = {}
    for t, s in enumerate(sources):
        copies.setdefault(int(s), []).append(size + t)
    for s, new in copies.items():
        u = 1.0 + SPLIT_JITTER * (2.0 * torch.rand(len(new) + 1, generator=gen, dtype=torch.float64) - 1.0)
        factor[[s, *new]] = u / u.sum()
    return factor


def _randn(shape: Sequence[int], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(like.device, like.dtype)


def _weight_std(w: torch.Tensor) -> float:
    """Scale for random incoming weights: the layer's own weight std (fan-in init if undefined)."""
    std = float(w.detach().float().std()) if w.numel() > 1 else 0.0
    return std if std > 0 else 1.0 / max(1, w[0].numel()) ** 0.5


def _set_tensor(module: nn.Module, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, new.contiguous())  # a registered buffer stays a buffer


def _update_sizes(module: nn.Module) -> None:
    """Make a layer's size attributes agree with its (resized) weights."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        sizes = [t.shape[0] for t in (module.weight, module.running_mean) if t is not None]
        if sizes:
            module.num_features = int(sizes[0])
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = (int(d) for d in module.weight.shape)
    elif isinstance(module, nn.Conv2d):
        module.out_channels = int(module.weight.shape[0])
        if module.groups > 1:  # depthwise (checked before growing)
            module.groups = module.in_channels = module.out_channels
        else:
            module.in_channels = int(module.weight.shape[1])


def _grow_member(
    member: Member, size: int, sources: Sequence[int], method: str, noise: float,
    factor: torch.Tensor | None, gen: torch.Generator,
) -> None:
    mod, dim = member.module, channel_dim(member)
    is_norm = isinstance(mod, nn.modules.batchnorm._BatchNorm)
    names = _NORM_BUFFERS if is_norm else (("weight", "bias") if member.side == "out" else ("weight",))
    new_to_old = [*range(size), *sources]
    for name in names:
        old = getattr(mod, name, None)
        if old is None:
            continue
        t = old.detach()
        pos = positions(member, size, t.shape[dim], new_to_old)
        owner = torch.tensor(slice_owner(member, size, t.shape[dim], len(new_to_old)))
        new = t.index_select(dim, torch.tensor(pos, device=t.device)).clone()
        fresh = (owner >= size).nonzero().flatten().tolist()  # slices of the new channels
        if member.side == "in":
            if method == "split":  # original and copies share the source's outgoing weight
                f = torch.where(owner >= 0, factor[owner.clamp(min=0)], torch.ones(()))
                new *= f.to(new.device, new.dtype).view(1, -1, *([1] * (new.ndim - 2)))
            else:
                new[:, fresh] = 0
        elif is_norm:
            if method == "zero":
                new[fresh] = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}[name]
        elif name == "weight" and fresh:
            if method == "split" and noise > 0:
                new[fresh] += noise * _weight_std(t) * _randn(new[fresh].shape, gen, new)
            elif method == "zero":
                new[fresh] = _weight_std(t) * _randn(new[fresh].shape, gen, new)
        elif name == "bias" and method == "zero":
            new[fresh] = 0
        _set_tensor(mod, name, old, new)
    _update_sizes(mod)


def _default_sources(group: ChannelGroup, n: int) -> list[int]:
    """The n channels with the largest incoming-weight norm (summed over producers), cycling."""
    score = torch.zeros(group.size, dtype=torch.float64)
    for p in group.producers:
        rows = p.module.weight.detach().flatten(1).double().pow(2).sum(1).cpu()
        score.index_add_(0, torch.tensor(p.root_idxs), rows[list(p.idxs)])
    order = sorted(range(group.size), key=lambda k: (-float(score[k]), k))
    return [order[t % group.size] for t in range(n)]


def _grow_graph(
    graph: GroupGraph, add: Mapping[str, int], method: str, sources: Mapping[str, Sequence[int]],
    noise: float, gen: torch.Generator,
) -> dict[str, list[int]]:
    """Grow the named groups of one (fresh) graph; they must not share a layer side."""
    added = {}
    for g in graph.groups:
        n = add.get(g.name, 0)
        if n == 0:
            continue
        _check_growable(g)
        src = [int(s) for s in sources[g.name]] if g.name in sources else _default_sources(g, n)
        factor = _split_shares(g.size, src, gen) if method == "split" else None
        done = set()
        for m in g.members:
            if (id(m.module), m.side) not in done:
                done.add((id(m.module), m.side))
                _grow_member(m, g.size, src, method, noise, factor, gen)
        added[g.name] = list(range(g.size, g.size + n))
    return added


def _check_grow_args(
    graph: GroupGraph, add: Mapping[str, int], method: str, sources: Mapping[str, Sequence[int]], noise: float
) -> None:
    if method not in GROW_METHODS:
        raise UsageError(f"unknown grow method {method!r}; choose one of: {', '.join(GROW_METHODS)}")
    if not noise >= 0:
        raise UsageError(f"grow noise must be >= 0 (a relative std), got {noise}")
    sizes = graph.widths()
    for name, n in {**add, **{k: add.get(k, 0) for k in sources}}.items():
        if name not in sizes:
            raise UsageError(f"unknown group {name!r}; choose one of: {', '.join(sizes)}")
        if int(n) != n or n < 0:
            raise UsageError(f"number of channels to add to group {name!r} must be an integer >= 0, got {n}")
        src = sources.get(name)
        if src is not None:
            if len(src) != n:
                raise UsageError(f"group {name!r}: {len(src)} sources given for {n} new channels")
            bad = [s for s in src if not 0 <= int(s) < sizes[name]]
            if bad:
                raise UsageError(f"group {name!r}: source channel {bad[0]} out of range 0..{sizes[name] - 1}")


def grow(
    model: nn.Module,
    add: Mapping[str, int],
    example_inputs: torch.Tensor,
    *,
    method: str = "split",
    sources: Mapping[str, Sequence[int]] | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> SurgeryRecord:
    """Widen, in place, each named group by ``add[group]`` channels, appended after the old ones.

    ``method="split"`` (Net2Wider): each new channel copies a source channel's incoming
    weights and BN (``sources[group]``, default: the largest-norm channels), plus Gaussian
    noise of std ``noise`` × std(layer weight) on the incoming weights; the source's
    outgoing weights are split unevenly between original and copies (shares sum to 1), so
    with ``noise=0`` the function is unchanged. ``method="zero"``: new incoming weights are
    random (std of the layer's weights), BN is fresh (γ=1, β=0, μ=0, σ²=1) and outgoing
    weights are zero - unchanged function, the new channels learn from their first step.

    Every layer of a group changes together (producers, BN, consumers, residual-coupled
    convs), as found by torch-pruning's dependency graph. Parameters become new objects:
    rebuild the optimizer (``param_index_maps`` gives the mapping). ``changed`` in the
    record lists the new channel indices per group.
    """
    sources = dict(sources or {})
    graph = GroupGraph(model, example_inputs)
    _check_grow_args(graph, add, method, sources, noise)
    before = graph.widths()
    gen = torch.Generator().manual_seed(seed)
    pending = [name for name in graph.names() if add.get(name, 0) > 0]
    added: dict[str, list[int]] = {}
    while pending:
        # Groups that share a layer side (a concatenation read by one layer) shift each
        # other's column offsets: grow them on separate, freshly built graphs.
        batch, sides = [], set()
        for name in pending:
            keys = {(id(m.module), m.side) for m in graph[name].members}
            if not keys & sides:
                batch.append(name)
                sides |= keys
        added.update(_grow_graph(graph, {n: add[n] for n in batch}, method, sources, noise, gen))
        pending = [n for n in pending if n not in batch]
        if pending:
            graph = GroupGraph(model, example_inputs)
    after = {n: before[n] + len(added.get(n, ())) for n in before}
    return SurgeryRecord(before=before, after=after, changed=added)
