"""Score → normalise → select → cut → finetune, in one or several steps (Zhang et al. 2021).

With ``steps=1`` this is the classic one-shot prune-then-finetune. With ``steps=K`` the
target is approached linearly (φ ← φ − τ/N of ALGORITHMS.md): at step i every group's
target width (or the global kept fraction, or the MACs budget) is the i/K-th point between
the dense model and the final target, the model is re-scored on its *current* weights,
pruned, and finetuned for ``step_epochs`` before the next step. ``finetune_epochs`` are
spent after the last step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning import selection
from pruning.cost import count_macs
from pruning.criteria import get_criterion
from pruning.errors import UsageError
from pruning.surgery import GroupGraph
from pruning.train import EpochMetrics, TrainConfig, evaluate, resolve_device, train

log = logging.getLogger(__name__)

RANKINGS = ("uniform", "global")


@dataclass(frozen=True)
class PruneSpec:
    """What to prune to. Exactly one of ``ratio``, ``ratios``, ``target_macs`` is set.

    ``ratio``: one keep ratio in (0, 1] - per group (``ranking="uniform"``) or of all
    channels ranked together (``ranking="global"``). ``ratios``: a keep ratio per group
    name (groups not named keep everything). ``target_macs``: a MACs budget reached by
    bisection on ``ratio`` under ``ranking``.
    """

    criterion: str = "l1"
    criterion_options: Mapping[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    ratios: Mapping[str, float] | None = None
    target_macs: int | None = None
    ranking: str = "uniform"
    steps: int = 1
    step_epochs: int = 1
    min_channels: int = 1
    round_to: int = 1
    calib_batches: int = 8
    calib_batch_size: int = 64

    def __post_init__(self) -> None:
        given = [n for n in ("ratio", "ratios", "target_macs") if getattr(self, n) is not None]
        if len(given) != 1:
            raise UsageError(f"give exactly one of ratio, ratios, target_macs (got {', '.join(given) or 'none'})")
        if self.ratio is not None:
            selection.check_ratio("ratio", self.ratio)
        for g, r in (self.ratios or {}).items():
            selection.check_ratio(f"group {g!r}", r)
        if self.target_macs is not None and self.target_macs <= 0:
            raise UsageError(f"target MACs must be > 0, got {self.target_macs}")
        if self.ranking not in RANKINGS:
            raise UsageError(f"unknown ranking {self.ranking!r}; choose one of: {', '.join(RANKINGS)}")
        if self.ratios is not None and self.ranking != "uniform":
            raise UsageError("per-group ratios take ranking='uniform' (a global ranking decides widths itself)")
        for name, low in (("steps", 1), ("min_channels", 1), ("round_to", 1), ("calib_batches", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"{name} must be >= {low}, got {getattr(self, name)}")
        get_criterion(self.criterion, **self.criterion_options)  # unknown name/option -> UsageError now


@dataclass(frozen=True)
class StepRecord:
    step: int
    widths: dict[str, int]
    macs: int
    val_acc: float
    wall_s: float


@dataclass
class PruneResult:
    model: nn.Module
    steps: list[StepRecord]
    epochs: list[EpochMetrics]


def calibration_batches(data: Any, spec: PruneSpec, device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``calib_batches`` seeded-shuffled training batches (data-free criteria get none)."""
    out = []
    for x, y in data.train.batches(spec.calib_batch_size, shuffle=True, seed=seed, device=device):
        out.append((x, y))
        if len(out) >= spec.calib_batches:
            break
    return out


def _step_keep(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    spec: PruneSpec,
    frac: float,
    dense_widths: dict[str, int],
    dense_macs: int,
    input_shape: tuple[int, ...],
) -> dict[str, list[int]]:
    """Keep indices for the step that is ``frac`` (0..1] of the way from dense to the target."""
    common = {"min_channels": spec.min_channels, "round_to": spec.round_to}
    if spec.target_macs is not None:
        budget = int(round(dense_macs - (dense_macs - spec.target_macs) * frac))
        return selection.keep_for_macs(model, scores, budget, input_shape, ranking=spec.ranking, **common)
    if spec.ratios is not None:
        targets = {g: 1.0 - (1.0 - spec.ratios.get(g, 1.0)) * frac for g in scores}
    else:
        assert spec.ratio is not None
        r = 1.0 - (1.0 - spec.ratio) * frac
        if spec.ranking == "global":
            total_now = sum(len(s) for s in scores.values())
            want = r * sum(dense_widths.values())
            return selection.keep_global(scores, min(1.0, want / total_now), **common)
        targets = {g: r for g in scores}
    # Ratios are of the dense width; convert to a ratio of the current width.
    current = {g: min(1.0, targets[g] * dense_widths[g] / len(scores[g])) for g in scores}
    return selection.keep_by_ratios(scores, current, **common)


def prune_iteratively(
    model: nn.Module,
    data: Any,
    spec: PruneSpec,
    finetune: TrainConfig,
    *,
    finetune_epochs: int | None = None,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place to ``spec`` in ``spec.steps`` steps, finetuning between and after.

    ``finetune`` gives the optimiser settings; its ``epochs`` field is replaced by
    ``spec.step_epochs`` between steps and by ``finetune_epochs`` (default
    ``finetune.epochs``) after the last step. Per-epoch metrics go to ``on_epoch``.
    """
    device = resolve_device(finetune.device)
    model.to(device)
    example = torch.zeros(1, *data.input_shape, device=device)
    criterion = get_criterion(spec.criterion, **spec.criterion_options)
    dense_graph = GroupGraph(model, example)
    dense_widths = dense_graph.widths()
    dense_macs = count_macs(model, data.input_shape)
    if spec.ratios is not None:
        unknown = sorted(set(spec.ratios) - set(dense_widths))
        if unknown:
            raise UsageError(f"unknown group {unknown[0]!r}; choose one of: {', '.join(dense_widths)}")
    final_epochs = finetune.epochs if finetune_epochs is None else finetune_epochs
    records: list[StepRecord] = []
    history: list[EpochMetrics] = []
    epoch_offset = 0

    def run_epochs(n: int) -> None:
        nonlocal epoch_offset
        if n <= 0:
            return
        cfg = TrainConfig(**{**finetune.__dict__, "epochs": n, "seed": finetune.seed + epoch_offset})

        def relay(m: EpochMetrics, mod: nn.Module) -> None:
            shifted = EpochMetrics(m.epoch + epoch_offset, m.train_loss, m.val_acc, m.lr, m.wall_s)
            history.append(shifted)
            if on_epoch is not None:
                on_epoch(shifted, mod)

        train(model, data, cfg, on_epoch=relay)
        epoch_offset += n

    for step in range(1, spec.steps + 1):
        t0 = time.perf_counter()
        graph = dense_graph if step == 1 else GroupGraph(model, example)
        batches = calibration_batches(data, spec, device, seed=finetune.seed + step) if criterion.requires_data else []
        scores = criterion.score(model, graph.groups, batches)
        keep = _step_keep(model, scores, spec, step / spec.steps, dense_widths, dense_macs, tuple(data.input_shape))
        record = graph.prune(keep)
        macs = count_macs(model, data.input_shape)
        if step < spec.steps:
            run_epochs(spec.step_epochs)
        val_acc = evaluate(model, data.val, device=device)
        records.append(StepRecord(step, dict(record.after), macs, val_acc, time.perf_counter() - t0))
        log.info("step %d/%d: MACs %d (%.1f%% of dense), val_acc %.4f", step, spec.steps, macs,
                 100.0 * macs / dense_macs, val_acc)
    run_epochs(final_epochs)
    return PruneResult(model=model, steps=records, epochs=history)
