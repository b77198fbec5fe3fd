"""The only place that changes module shapes: physical pruning (and growth) of channel groups.

A *channel group* is the set of channels that must change together: a conv's output
channels, its BN, every consumer's input channels, and - through residual adds - every
conv coupled to them. Groups come from torch-pruning's ``DependencyGraph``; this package is
the thin adapter that gives them stable names and model order, prunes them by explicit
indices (``groups``), and widens them (``growth``), which torch-pruning cannot do.
``layout`` maps each weight slice to its source channel for both, which is also what
an optimizer needs to carry its state across a surgery (:func:`param_index_maps`).

Group names are stable across runs and widths: the name of the first Conv/Linear in
``named_modules()`` order whose *output* channels are in the group (``group[0]`` of
torch-pruning is not stable: for a ResNet stage it can be a downsample conv).
"""

from __future__ import annotations

from pruning.surgery.groups import ChannelGroup, GroupGraph, Member, SurgeryRecord, prune, widths
from pruning.surgery.growth import GROW_METHODS, SPLIT_JITTER, grow
from pruning.surgery.layout import param_index_maps

__all__ = [
    "GROW_METHODS",
    "SPLIT_JITTER",
    "ChannelGroup",
    "GroupGraph",
    "Member",
    "SurgeryRecord",
    "grow",
    "param_index_maps",
    "prune",
    "widths",
]
