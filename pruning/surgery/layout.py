"""Where each slice of a member's weight comes from after a surgery (prune or grow).

Every surgery is described the same way: for each channel of a group *after* the
surgery, the old channel it comes from (prune: the kept channels; grow: every old
channel, then the source channel of each new one). :func:`positions` turns that into the
slice of each member's weight along the channel (or column) dimension, so the tensors of
a grown layer are a gather of the old ones, then edited for the growth method, and
:func:`param_index_maps` tells an optimizer how to carry its state across the surgery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pruning.errors import UsageError
from pruning.surgery.groups import GroupGraph, Member


def channel_dim(member: Member) -> int:
    """Dimension of the member's weight that indexes the group's channels."""
    return 0 if member.side == "out" else 1


def positions(member: Member, group_size: int, dim_size: int, new_to_old: Sequence[int]) -> list[int]:
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


def slice_owner(member: Member, group_size: int, dim_size: int, new_size: int) -> list[int]:
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
            dim = channel_dim(m)
            for pname, p in m.module.named_parameters(recurse=False):
                if p.ndim <= dim or (dim == 1 and pname != "weight"):
                    continue  # a consumer's bias does not index its input channels
                pos = positions(m, g.size, p.shape[dim], gather)
                owner = slice_owner(m, g.size, p.shape[dim], len(new_to_old))
                maps.setdefault(f"{m.name}.{pname}", {})[dim] = [
                    -1 if (o >= 0 and new_to_old[o] < 0) else i for i, o in zip(pos, owner)
                ]
    return maps
