"""What a trial reports after each training epoch, and the training compute it counts.

:class:`EpochRows` is the ``on_epoch`` callback of the training loops a trial runs: it
builds the reporter's per-epoch row (MACs and widths recomputed only when shapes change),
marks the epochs of the final finetune for the early-stopping scheduler, and sums
``train_macs``/``teacher_macs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pruning.adaptive import TRAIN_STEP_FORWARDS  # train_macs: per-sample MACs x samples x this factor
from pruning.cost import count_macs
from pruning.data import DataBundle
from pruning.surgery import GroupGraph
from pruning.train import EpochMetrics

__all__ = ["TRAIN_STEP_FORWARDS", "EpochRows", "Reporter", "group_widths"]

Reporter = Callable[[dict[str, Any], nn.Module | None], None]
"""``reporter(epoch_row, model)`` after every finetune epoch (Ray: ``tune.report`` + checkpoint)."""


class EpochRows:
    """Builds the reporter's per-epoch rows; MACs and widths are recomputed only when shapes change.

    Also sums the training compute: ``train_macs`` (student 3 x forward MACs x the epoch's
    samples, plus the teacher's forwards) and ``teacher_macs``.

    ``final_from``/``rung_epochs`` mark the epochs of the trial's final finetune (the only
    ones comparable across trials, for the early-stopping scheduler): epoch ``e`` is its
    ``e - final_from``-th when ``final_from`` is set and ``e > final_from``, else its
    ``rung_epoch`` is None (intermediate iterative steps; the adaptive search phase).
    """

    def __init__(self, data: DataBundle, groups: list[str], reporter: Reporter | None) -> None:
        self.data, self.groups, self.reporter = data, groups, reporter
        self.count = 0
        self.train_macs = 0
        self.teacher_macs = 0
        self.final_from: int | None = None
        self.rung_epochs: int | None = None
        self._shapes: tuple | None = None
        self._macs = 0
        self._widths: list[int] = []

    def __call__(self, m: EpochMetrics, model: nn.Module) -> None:
        self.count += 1
        shapes = tuple(tuple(p.shape) for p in model.parameters())
        if shapes != self._shapes:
            x = self.data.example_input().to(next(model.parameters()).device)
            self._macs = count_macs(model, self.data.input_shape)
            self._widths = group_widths(model, x, self.groups)
            self._shapes = shapes
        self.teacher_macs += int(m.teacher_macs)
        self.train_macs += TRAIN_STEP_FORWARDS * self._macs * len(self.data.train) + int(m.teacher_macs)
        if self.reporter is None:
            return
        row = {
            "epoch": int(m.epoch), "train_loss": float(m.train_loss), "val_acc": float(m.val_acc),
            "macs": int(self._macs), "widths": list(self._widths), "lr": float(m.lr), "wall_s": float(m.wall_s),
        }  # fmt: skip
        final = self.final_from is not None and m.epoch > self.final_from
        row["rung_epoch"] = int(m.epoch - self.final_from) if final else None
        row["rung_epochs"] = self.rung_epochs if final else None
        self.reporter(row, model)

    def final_after(self, epochs_before: int, final_epochs: int) -> None:
        """The epochs after the first ``epochs_before`` are the final finetune's ``final_epochs``."""
        self.final_from, self.rung_epochs = int(epochs_before), int(final_epochs)


def group_widths(model: nn.Module, x: torch.Tensor, groups: list[str]) -> list[int]:
    """The channels of each of ``groups`` in ``model`` now (0 for a group it no longer has)."""
    now = GroupGraph(model, x).widths()
    return [int(now.get(g, 0)) for g in groups]

