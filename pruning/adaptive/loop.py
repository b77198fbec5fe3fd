"""The training loop of the online grow/prune search: search epochs, the cut to the budget,
finetuning, and the :class:`AdaptiveResult` they add up to."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.adaptive.config import BUDGET_TOLERANCE, TRAIN_STEP_FORWARDS, AdaptiveConfig, check_budget
from pruning.adaptive.state import SearchState
from pruning.surgery import GroupGraph
from pruning.train import (
    EpochMetrics,
    TrainConfig,
    cosine_lr,
    evaluate,
    make_optimizer,
    make_scaler,
    resolve_device,
    set_lr,
    train_step,
)

log = logging.getLogger(__name__)


@dataclass
class AdaptiveResult:
    """What the loop produced.

    ``history`` has one dict per evaluation: ``step``, ``epoch``, ``widths`` (after the
    evaluation's surgery), ``macs`` (per sample), ``pruned``/``grown`` (channels per
    group), ``churned`` (of the pruned, those grown at most ``CHURN_WINDOW`` evaluations
    earlier, per group), ``pruned_grown`` (of the pruned, those grown at any time during
    this search, per group), ``over_budget``. ``train_macs`` is the total training compute:
    Σ over training steps and profit estimations of per-sample MACs × samples × 3
    (forward + backward ≈ 3 forward passes); validation passes are not counted.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    train_macs: int
    wall_s: float
    epochs: int
    val_acc: float
    search_epochs: int = 0
    stop_reason: str = ""
    initial_widths: dict[str, int] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    epoch_metrics: list[EpochMetrics] = field(default_factory=list)


class _Run:
    """One run of the loop: the model, its optimizer (rebuilt by every surgery), the step and
    epoch counters, and what the epochs recorded."""

    def __init__(self, model: nn.Module, data: Any, train_cfg: TrainConfig, cfg: AdaptiveConfig,
                 device: torch.device, on_epoch: Callable[[EpochMetrics, nn.Module], None] | None) -> None:
        self.model, self.data, self.train_cfg, self.cfg, self.device = model, data, train_cfg, cfg, device
        self.on_epoch = on_epoch
        self.state = SearchState(model, data, train_cfg, cfg, device)
        self.optimizer = make_optimizer(model, train_cfg)
        self.scaler = make_scaler(device, train_cfg)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[EpochMetrics] = []
        self.train_macs = 0
        self.step = self.epoch = self.unchanged = 0
        self.stop_reason = ""

    def search(self) -> int:
        """Epochs at the constant peak LR until a stop rule fires or ``max_epochs``; their number."""
        while self.epoch < self.cfg.max_epochs and not self.stop_reason:
            self._epoch(lambda i: self.train_cfg.lr, search=True)
        self.stop_reason = self.stop_reason or f"max_epochs ({self.cfg.max_epochs}) reached"
        log.info("search stopped after %d epochs: %s", self.epoch, self.stop_reason)
        return self.epoch

    def cut_if_over_budget(self) -> None:
        """A search that ended above the budget is cut to it before finetuning."""
        budget = self.cfg.budget_macs
        if budget is not None and self.state.macs > budget:
            self.optimizer = self.state.cut_to_budget(self.optimizer)
            self.stop_reason += f"; cut to the MACs budget ({self.state.macs} MACs)"
            log.info("search ended above the MACs budget: cut to %d MACs before finetuning", self.state.macs)

    def finetune(self) -> None:
        """``finetune_epochs`` with the LR decaying by a cosine from ``finetune_lr`` (or the peak LR) to 0."""
        steps_per_epoch = max(1, math.ceil(len(self.data.train) / self.train_cfg.batch_size))
        peak = self.cfg.finetune_lr if self.cfg.finetune_lr is not None else self.train_cfg.lr
        total = steps_per_epoch * self.cfg.finetune_epochs
        for k in range(self.cfg.finetune_epochs):
            first = k * steps_per_epoch
            self._epoch(lambda i, first=first: cosine_lr(peak, first + i, total), search=False)

    def result(self, search_epochs: int, wall_s: float) -> AdaptiveResult:
        """The run's outcome; ``val_acc`` is the last epoch's (measured now if no epoch ran)."""
        val_acc = self.metrics[-1].val_acc if self.metrics else evaluate(self.model, self.data.val, device=self.device)
        return AdaptiveResult(
            model=self.model, history=self.history, train_macs=int(self.train_macs), wall_s=wall_s,
            epochs=self.epoch, val_acc=val_acc, search_epochs=search_epochs, stop_reason=self.stop_reason,
            initial_widths=dict(self.state.initial), widths=GroupGraph(self.model, self.state.example).widths(),
            epoch_metrics=self.metrics,
        )

    def _epoch(self, lr_at: Callable[[int], float], search: bool) -> None:
        """One epoch; ``lr_at(i)`` is the LR of its step i. In the search, every
        ``eval_every_steps`` steps is an evaluation (until a stop rule fires)."""
        started = time.perf_counter()
        model, cfg, train_cfg = self.model, self.cfg, self.train_cfg
        model.train()
        losses = []
        seed = train_cfg.seed * 100_003 + self.epoch
        batches = self.data.train.batches(train_cfg.batch_size, shuffle=True, seed=seed, device=self.device,
                                          augment=train_cfg.augment)
        for i, (x, y) in enumerate(batches):
            set_lr(self.optimizer, lr_at(i))
            losses.append(train_step(model, self.optimizer, x, y, train_cfg, self.scaler))
            self.train_macs += TRAIN_STEP_FORWARDS * self.state.macs * len(y)
            self.step += 1
            if search and not self.stop_reason and self.step % cfg.eval_every_steps == 0:
                self._evaluate()
        m = EpochMetrics(epoch=self.epoch + 1, train_loss=sum(losses) / max(1, len(losses)),
                         val_acc=evaluate(model, self.data.val, device=self.device), lr=lr_at(len(losses)),
                         wall_s=time.perf_counter() - started)
        log.info("epoch %d loss %.4f val_acc %.4f MACs %d widths %s", m.epoch, m.train_loss, m.val_acc,
                 self.state.macs, list(self.state.widths().values()))
        self.metrics.append(m)
        if self.on_epoch is not None:
            self.on_epoch(m, model)
        self.epoch += 1

    def _evaluate(self) -> None:
        """An evaluation (profit, prune, grow), recorded; sets ``stop_reason`` when a stop rule fires."""
        self.optimizer, record = self.state.evaluate(self.optimizer, self.step, self.epoch + 1)
        self.train_macs += record.pop("calib_macs")
        self.history.append(record)
        self.model.train()
        self.unchanged = 0 if (record["pruned"] or record["grown"]) else self.unchanged + 1
        if self._budget_met():
            self.stop_reason = f"MACs budget met at evaluation {self.state.evaluations}"
        elif self.unchanged >= self.cfg.stop_after:
            self.stop_reason = f"no change for {self.cfg.stop_after} evaluations"

    def _budget_met(self) -> bool:
        budget = self.cfg.budget_macs
        if budget is None or self.state.macs > budget:
            return False
        from_above = any(h["over_budget"] for h in self.history)  # this evaluation's record included
        return from_above or self.state.macs >= (1 - BUDGET_TOLERANCE) * budget


def run_adaptive(
    model: nn.Module,
    data: Any,
    train_cfg: TrainConfig,
    cfg: AdaptiveConfig,
    *,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    on_finetune: Callable[[int], None] | None = None,
) -> AdaptiveResult:
    """Train ``model`` in place while pruning and growing its channel groups; then finetune.

    ``train_cfg`` gives the optimizer, batch size, peak LR, seed and device (its
    ``epochs`` is not used: ``cfg.max_epochs`` and ``cfg.finetune_epochs`` are).
    ``on_epoch(metrics, model)`` is called after every epoch, search and finetune alike;
    ``on_finetune(search_epochs)`` once, when the search has stopped and finetuning starts.
    A search that stopped above ``cfg.budget_macs`` (``max_epochs`` ran out first) is cut
    to the budget before finetuning, so the final model never exceeds it.
    Raises ``UsageError`` when the budget is below the smallest reachable network.
    """
    t0 = time.perf_counter()
    device = resolve_device(train_cfg.device)
    check_budget(model, tuple(data.input_shape), cfg)
    model.to(device)
    run = _Run(model, data, train_cfg, cfg, device, on_epoch)
    search_epochs = run.search()
    run.cut_if_over_budget()
    if on_finetune is not None:
        on_finetune(search_epochs)
    run.finetune()
    return run.result(search_epochs, wall_s=time.perf_counter() - t0)
