"""What the online grow/prune loop is told: its knobs, its constants, and whether a MACs budget is reachable."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.surgery import GROW_METHODS, GroupGraph


#: A training step costs about 3 forward passes (forward + backward for activations and
#: weights); ``train_macs`` counts MACs × samples × this factor.
TRAIN_STEP_FORWARDS = 3

#: Below the budget, the search stops once MACs are within this fraction of it.
BUDGET_TOLERANCE = 0.05

#: A pruned channel counts as *churn* when it was grown at most this many evaluations
#: earlier (grown, then pruned before it had a chance to learn).
CHURN_WINDOW = 2

#: Over the budget, one evaluation cuts at most this fraction of the MACs (a gradual
#: approach lets the profits of the survivors be re-estimated between cuts).
OVER_BUDGET_STEP = 0.2


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the online grow/prune loop (see the module docstring for what each does).

    ``budget_macs`` is per-sample MACs (Conv + Linear) or None for no budget.
    ``finetune_lr`` None starts finetuning at the search's (peak) learning rate.
    """

    eval_every_steps: int = 10
    gamma: float = 0.5
    prune_threshold: float = 0.5
    patience: int = 2
    grow_fraction: float = 0.25
    grow_top_q: float = 0.25
    max_width_mult: float = 2.0
    grow_method: str = "split"
    noise: float = 0.01
    min_channels: int = 2
    round_to: int = 1
    stop_after: int = 6
    budget_macs: int | None = None
    max_epochs: int = 20
    finetune_epochs: int = 5
    finetune_lr: float | None = None
    ema: float = 0.9
    calib_batches: int = 2

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UsageError(what)

        need(self.eval_every_steps >= 1, f"eval_every_steps must be >= 1, got {self.eval_every_steps}")
        need(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        need(0.0 <= self.prune_threshold <= 1.0, f"prune_threshold must be in [0, 1], got {self.prune_threshold}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        need(0.0 <= self.grow_fraction <= 4.0, f"grow_fraction must be in [0, 4], got {self.grow_fraction}")
        need(0.0 <= self.grow_top_q <= 1.0, f"grow_top_q must be in [0, 1], got {self.grow_top_q}")
        need(self.max_width_mult > 0, f"max_width_mult must be > 0, got {self.max_width_mult}")
        need(self.grow_method in GROW_METHODS,
             f"unknown grow method {self.grow_method!r}; choose one of: {', '.join(GROW_METHODS)}")
        need(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        need(self.min_channels >= 1, f"min_channels must be >= 1, got {self.min_channels}")
        need(self.round_to >= 1, f"round_to must be >= 1, got {self.round_to}")
        need(self.stop_after >= 1, f"stop_after must be >= 1, got {self.stop_after}")
        need(self.budget_macs is None or self.budget_macs > 0, f"budget_macs must be > 0, got {self.budget_macs}")
        need(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        need(self.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        need(self.finetune_lr is None or self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}")
        need(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        need(self.calib_batches >= 1, f"calib_batches must be >= 1, got {self.calib_batches}")


def floor_width(size: int, min_channels: int, round_to: int = 1) -> int:
    """The narrowest a group of ``size`` channels can be pruned to.

    ``min_channels`` rounded up to ``round_to``, at most ``size`` (as ``_plan_prune`` and
    ``selection.keep_for_macs`` round).
    """
    n = max(1, min_channels)
    return min(size, int(math.ceil(n / round_to) * round_to) if round_to > 1 else n)


def smallest_macs(model: nn.Module, input_shape: tuple[int, ...], min_channels: int, round_to: int = 1) -> int:
    """MACs per sample of ``model`` with every group cut to its floor (the smallest the loop can reach).

    The floor is ``floor_width``: with ``round_to`` > 1 it lies above ``min_channels``, as in every prune.
    """
    small = copy.deepcopy(model).cpu()
    graph = GroupGraph(small, torch.zeros(1, *input_shape))
    graph.prune({g: range(floor_width(n, min_channels, round_to)) for g, n in graph.widths().items()})
    return count_macs(small, input_shape)


def check_budget(model: nn.Module, input_shape: tuple[int, ...], cfg: AdaptiveConfig) -> None:
    """``UsageError`` if ``cfg.budget_macs`` is below the smallest network the loop can reach."""
    if cfg.budget_macs is None:
        return
    floor = smallest_macs(model, input_shape, cfg.min_channels, cfg.round_to)
    if cfg.budget_macs < floor:
        raise UsageError(
            f"MACs budget {cfg.budget_macs} is below the smallest network this model can be pruned to "
            f"({floor} MACs with min_channels={cfg.min_channels}, round_to={cfg.round_to})"
        )
