"""Channel groups of a model, named and in model order, and pruning them by explicit indices.

Groups come from torch-pruning's ``DependencyGraph``; :class:`GroupGraph` is the thin
adapter that gives them stable names and model order and removes channels from them.
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

#: Layer types whose output channels root a group (and whose weights a group resizes).
PRUNABLE_ROOTS = (nn.Conv2d, nn.Linear)


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
        return [m for m in self.members if m.side == "out" and isinstance(m.module, PRUNABLE_ROOTS)]

    @property
    def norms(self) -> list[Member]:
        """BatchNorm layers over this group's channels."""
        return [m for m in self.members if isinstance(m.module, nn.modules.batchnorm._BatchNorm)]

    @property
    def consumers(self) -> list[Member]:
        """Conv/Linear layers that read this group's channels as inputs."""
        return [m for m in self.members if m.side == "in" and isinstance(m.module, PRUNABLE_ROOTS)]


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
        for g in self._dg.get_all_groups(ignored_layers=[classifier_layer(model)], root_module_types=PRUNABLE_ROOTS):
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
            outs = [m.name for m in members if m.side == "out" and isinstance(m.module, PRUNABLE_ROOTS)]
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
