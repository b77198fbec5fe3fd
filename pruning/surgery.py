"""The only place that changes module shapes: physical pruning (and growth) of channel groups.

A *channel group* is the set of channels that must change together: a conv's output
channels, its BN, every consumer's input channels, and - through residual adds - every
conv coupled to them. Groups come from torch-pruning's ``DependencyGraph``; this module is
the thin adapter that gives them stable names and model order, prunes them by explicit
indices, and (see ``grow``) widens them, which torch-pruning cannot do.

Group names are stable across runs and widths: the name of the first Conv/Linear in
``named_modules()`` order whose *output* channels are in the group (``group[0]`` of
torch-pruning is not stable: for a ResNet stage it can be a downsample conv).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from pruning.errors import TrialError, UsageError
from pruning.models import classifier_layer

_PRUNABLE_ROOTS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Member:
    """One parameterised layer of a group and how its channels map to the group's.

    ``side`` is ``"out"`` when the layer produces the group's channels (Conv/Linear
    output rows, BN and depthwise convs) and ``"in"`` when it consumes them (input
    columns). ``idxs[i]`` is the layer's channel (or column) index that corresponds to
    group channel ``root_idxs[i]``; a Linear after a flatten has several columns per
    group channel.
    """

    name: str
    module: nn.Module
    side: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass
class ChannelGroup:
    """A set of coupled channels that is pruned or grown as one."""

    name: str
    size: int
    members: list[Member]
    _root: nn.Module = field(repr=False)
    _handler: object = field(repr=False)

    @property
    def producers(self) -> list[Member]:
        """Conv/Linear layers whose output channels are this group (weights W_k)."""
        return [m for m in self.members if m.side == "out" and isinstance(m.module, _PRUNABLE_ROOTS)]

    @property
    def norms(self) -> list[Member]:
        """BatchNorm layers over this group's channels."""
        return [m for m in self.members if isinstance(m.module, nn.modules.batchnorm._BatchNorm)]

    @property
    def consumers(self) -> list[Member]:
        """Conv/Linear layers that read this group's channels as inputs."""
        return [m for m in self.members if m.side == "in" and isinstance(m.module, _PRUNABLE_ROOTS)]


@dataclass(frozen=True)
class SurgeryRecord:
    """What a surgery changed: widths before/after and the removed (or added) channels per group."""

    before: dict[str, int]
    after: dict[str, int]
    changed: dict[str, list[int]]


def _is_out_side(handler: object) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and handler == getattr(owner, "prune_out_channels", None)


class GroupGraph:
    """Dependency graph of a model, with channel groups named and in model order.

    Build it on the model as it is now; after any surgery build a new one (a reused
    graph keeps stale reshape strides).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        self.model = model
        was_training = model.training
        with torch.enable_grad():
            self._dg = tp.DependencyGraph().build_dependency(model, example_inputs=(example_inputs,))
        model.train(was_training)
        names = {id(m): n for n, m in model.named_modules()}
        order = {n: i for i, n in enumerate(names.values())}
        groups = []
        for g in self._dg.get_all_groups(ignored_layers=[classifier_layer(model)], root_module_types=_PRUNABLE_ROOTS):
            members = []
            for item in g:
                module = item.dep.target.module
                if id(module) not in names or not any(True for _ in module.parameters(recurse=False)):
                    continue  # parameter-free ops (add, relu, reshape) need no resizing
                members.append(
                    Member(
                        name=names[id(module)],
                        module=module,
                        side="out" if _is_out_side(item.dep.handler) else "in",
                        idxs=tuple(int(i) for i in item.idxs),
                        root_idxs=tuple(int(i) for i in item.root_idxs),
                    )
                )
            outs = [m.name for m in members if m.side == "out" and isinstance(m.module, _PRUNABLE_ROOTS)]
            if not outs:
                continue
            name = min(outs, key=order.__getitem__)
            groups.append(
                ChannelGroup(name, len(g[0].idxs), members, g[0].dep.target.module, g[0].dep.handler)
            )
        groups.sort(key=lambda grp: order[grp.name])
        self.groups: list[ChannelGroup] = groups
        self._stale = False

    def __getitem__(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise UsageError(f"unknown group {name!r}; choose one of: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def widths(self) -> dict[str, int]:
        return {g.name: g.size for g in self.groups}

    def prune(self, keep: Mapping[str, Sequence[int]]) -> SurgeryRecord:
        """Physically remove every channel of each named group not listed in ``keep[group]``.

        Groups not named are left as they are. Raises ``TrialError`` if a group would
        keep no channel. The graph is stale afterwards.
        """
        if self._stale:
            raise RuntimeError("this GroupGraph was used for surgery already; build a new one")
        before = self.widths()
        unknown = sorted(set(keep) - set(before))
        if unknown:
            raise UsageError(f"unknown group {unknown[0]!r}; choose one of: {', '.join(self.names())}")
        removed: dict[str, list[int]] = {}
        for g in self.groups:
            if g.name not in keep:
                continue
            kept = sorted(set(int(i) for i in keep[g.name]))
            if not kept:
                raise TrialError(f"group {g.name!r} would keep 0 of its {g.size} channels")
            if kept[0] < 0 or kept[-1] >= g.size:
                raise UsageError(f"keep index out of range for group {g.name!r} of {g.size} channels")
            drop = sorted(set(range(g.size)) - set(kept))
            removed[g.name] = drop
            if drop:
                pg = self._dg.get_pruning_group(g._root, g._handler, drop)
                pg.prune()
        self._stale = True
        after = {n: before[n] - len(removed.get(n, ())) for n in before}
        return SurgeryRecord(before=before, after=after, changed=removed)


def widths(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Channels per prunable group, in model order."""
    return GroupGraph(model, example_inputs).widths()


def prune(model: nn.Module, keep: Mapping[str, Sequence[int]], example_inputs: torch.Tensor) -> SurgeryRecord:
    """Remove, in place, every channel not in ``keep[group]`` (indices of channels to keep)."""
    return GroupGraph(model, example_inputs).prune(keep)


# --------------------------------------------------------------------------- growth
#
# torch-pruning can only remove channels; growth is built here on its groups. Every
# surgery (prune or grow) is described the same way: for each channel of a group *after*
# the surgery, the old channel it comes from (prune: the kept channels; grow: every old
# channel, then the source channel of each new one). ``_positions`` turns that into the
# slice of each member's weight along the channel (or column) dimension, so the tensors
# of a grown layer are a gather of the old ones, then edited for the growth method.

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


def _channel_dim(member: Member) -> int:
    """Dimension of the member's weight that indexes the group's channels."""
    return 0 if member.side == "out" else 1


def _positions(member: Member, group_size: int, dim_size: int, new_to_old: Sequence[int]) -> list[int]:
    """Old index of each slice of ``member`` along its channel dim after a surgery.

    ``new_to_old[k]`` is the old group channel that new group channel k comes from. The
    group's slices must form one block ``offset + channel*stride + j`` (j < stride): the
    layout torch-pruning records for direct consumers, concatenations and flatten.
    Slices outside the block (other groups of a concatenation) are kept in place.
    """
    stride = len(member.idxs) // group_size
    if stride * group_size != len(member.idxs):
        raise UsageError(f"layer {member.name} maps {len(member.idxs)} slices onto {group_size} channels unevenly")
    offset = min(member.idxs)
    layout = {(r, i - offset - r * stride) for i, r in zip(member.idxs, member.root_idxs)}
    if layout != {(r, j) for r in range(group_size) for j in range(stride)}:
        raise UsageError(f"layer {member.name} reads its channels in a layout growth does not support")
    block = [offset + k * stride + j for k in new_to_old for j in range(stride)]
    return list(range(offset)) + block + list(range(offset + group_size * stride, dim_size))


def _slice_owner(member: Member, group_size: int, dim_size: int, new_size: int) -> list[int]:
    """The new group channel of each new slice of ``member`` (-1 outside the group's block)."""
    stride = len(member.idxs) // group_size
    offset = min(member.idxs)
    tail = dim_size - offset - group_size * stride
    return [-1] * offset + [k for k in range(new_size) for _ in range(stride)] + [-1] * tail


def param_index_maps(graph: GroupGraph, change: Mapping[str, Sequence[int]]) -> dict[str, dict[int, list[int]]]:
    """Where each slice of every changed parameter comes from, for a planned surgery.

    ``change[group]`` lists, for every channel of the group after the surgery, the old
    channel it continues, or -1 for a new channel: the kept indices for ``prune``,
    ``list(range(C)) + [-1] * n`` for ``grow``. Returns ``{"module.param": {dim: [old
    index of each new slice, -1 for a slice of a new channel]}}`` for every parameter that
    changes shape - what an optimizer needs to carry its state (momentum) across the
    surgery. Call it on the graph built *before* the surgery.
    """
    maps: dict[str, dict[int, list[int]]] = {}
    for g in graph.groups:
        if g.name not in change:
            continue
        new_to_old = [int(k) for k in change[g.name]]
        gather = [max(k, 0) for k in new_to_old]
        for m in g.members:
            dim = _channel_dim(m)
            for pname, p in m.module.named_parameters(recurse=False):
                if p.ndim <= dim or (dim == 1 and pname != "weight"):
                    continue  # a consumer's bias does not index its input channels
                pos = _positions(m, g.size, p.shape[dim], gather)
                owner = _slice_owner(m, g.size, p.shape[dim], len(new_to_old))
                maps.setdefault(f"{m.name}.{pname}", {})[dim] = [
                    -1 if (o >= 0 and new_to_old[o] < 0) else i for i, o in zip(pos, owner)
                ]
    return maps


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
    mod, dim = member.module, _channel_dim(member)
    is_norm = isinstance(mod, nn.modules.batchnorm._BatchNorm)
    names = _NORM_BUFFERS if is_norm else (("weight", "bias") if member.side == "out" else ("weight",))
    new_to_old = [*range(size), *sources]
    for name in names:
        old = getattr(mod, name, None)
        if old is None:
            continue
        t = old.detach()
        pos = _positions(member, size, t.shape[dim], new_to_old)
        owner = torch.tensor(_slice_owner(member, size, t.shape[dim], len(new_to_old)))
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
