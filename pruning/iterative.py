"""Score → normalise → select → cut → finetune, in one or several steps (Zhang et al. 2021).

With ``steps=1`` this is the classic one-shot prune-then-finetune. With ``steps=K`` the
target is approached linearly (φ ← φ − τ/N per step): at step i every group's
target width (or the global kept fraction, or the MACs budget) is the i/K-th point between
the dense model and the final target, the model is re-scored on its *current* weights,
pruned, and finetuned for ``step_epochs`` before the next step. ``finetune_epochs`` are
spent after the last step.

Options around each cut: BN recalibration right after it (``recalib_batches``, EagleEye),
distillation from a teacher while finetuning (``TrainConfig.distill`` plus ``teacher=``),
and an accuracy guard (``max_drop_pts``) that stops the schedule at the last step whose
finetuned val accuracy is within that many percentage points of the dense model's.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from pruning import selection
from pruning.cost import count_macs
from pruning.criteria import get_criterion
from pruning.errors import UsageError
from pruning.recalibrate import recalibrate_bn
from pruning.surgery import GroupGraph
from pruning.train import EpochMetrics, TrainConfig, evaluate, make_optimizer, resolve_device, train

log = logging.getLogger(__name__)

RANKINGS = ("uniform", "global")


@dataclass(frozen=True)
class PruneSpec:
    """What to prune to. Exactly one of ``ratio``, ``ratios``, ``target_macs`` is set.

    ``ratio``: one keep ratio in (0, 1] - per group (``ranking="uniform"``) or of all
    channels ranked together (``ranking="global"``). ``ratios``: a keep ratio per group
    name (groups not named keep everything). ``target_macs``: a MACs budget reached by
    bisection on ``ratio`` under ``ranking``.

    ``recalib_batches`` > 0: right after every cut, re-estimate BN statistics on that many
    seeded training batches of ``calib_batch_size`` (:func:`recalibrate_bn`) before
    finetuning. ``max_drop_pts``: accuracy guard in percentage points of val accuracy
    (1.0 = one point, e.g. 92.0% -> 91.0%); None = off (see :func:`prune_iteratively`).
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
    recalib_batches: int = 0
    max_drop_pts: float | None = None

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
        for name, low in (("steps", 1), ("min_channels", 1), ("round_to", 1), ("calib_batches", 1),
                          ("recalib_batches", 0)):  # fmt: skip
            if getattr(self, name) < low:
                raise UsageError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_drop_pts is not None and not self.max_drop_pts >= 0:
            raise UsageError(f"max_drop_pts must be >= 0 percentage points, got {self.max_drop_pts}")
        get_criterion(self.criterion, **self.criterion_options)  # unknown name/option -> UsageError now


@dataclass(frozen=True)
class StepRecord:
    """One pruning step. ``val_acc``: after the step's finetune (``step_epochs``, or the
    final finetune for the last step); ``cut_val_acc``: right after the cut (and the BN
    recalibration, if on), before any finetune. ``accepted`` is False for the step the
    accuracy guard rejected (the model was rolled back to the step before)."""

    step: int
    widths: dict[str, int]
    macs: int
    val_acc: float
    wall_s: float
    cut_val_acc: float | None = None
    accepted: bool = True


@dataclass
class PruneResult:
    """What :func:`prune_iteratively` did. ``stop_step`` is the last accepted step
    (``spec.steps`` when the schedule completed, 0 = the dense model was kept);
    ``stop_reason`` is ``"completed"`` or ``"max_drop"``; ``base_val_acc`` is the dense
    model's val accuracy (measured only with the guard on)."""

    model: nn.Module
    steps: list[StepRecord]
    epochs: list[EpochMetrics]
    stop_step: int = 0
    stop_reason: str = "completed"
    base_val_acc: float | None = None


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


@dataclass
class ResumePoint:
    """Where a pruning schedule stands after a finetune epoch: enough to continue it in
    another process (a retried trial). ``model`` is the module itself, since pruning and
    growth changed its shapes; ``optimizer`` the finetune optimizer's ``state_dict``; the
    cosine LR schedule is a function of the epoch, so ``phase_done`` is its state."""

    step: int  # the iterative step whose finetune is under way (1-based)
    phase_done: int  # epochs of that step's finetune done
    epochs_done: int  # epochs done in all, counted across steps
    model: nn.Module
    optimizer: dict[str, Any]
    dense_widths: dict[str, int]  # of the model before the first cut
    dense_macs: int


class _Finetuner:
    """Finetunes ``model`` for a few epochs per call, numbering epochs continuously across calls.

    ``on_state(phase_done, epochs_done, optimizer)`` runs after every epoch, before ``on_epoch``.
    """

    def __init__(self, model: nn.Module, data: Any, cfg: TrainConfig,
                 on_epoch: Callable[[EpochMetrics, nn.Module], None] | None, teacher: nn.Module | None,
                 on_state: Callable[[int, int, torch.optim.Optimizer], None] | None = None) -> None:
        self.model, self.data, self.cfg, self.on_epoch, self.teacher = model, data, cfg, on_epoch, teacher
        self.on_state = on_state
        self.history: list[EpochMetrics] = []
        self.done = 0

    def __call__(self, epochs: int, *, start: int = 0, optimizer_state: dict[str, Any] | None = None) -> None:
        """Finetune for ``epochs``; ``start``/``optimizer_state``: continue a phase that a
        checkpoint left ``start`` epochs in (``self.done`` already counts them)."""
        offset = self.done - start
        if epochs <= start:
            self.done = offset + max(epochs, start)
            return
        cfg = replace(self.cfg, epochs=epochs, seed=self.cfg.seed + offset)
        optimizer = make_optimizer(self.model, cfg)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)

        def relay(m: EpochMetrics, mod: nn.Module) -> None:
            shifted = replace(m, epoch=m.epoch + offset)
            self.history.append(shifted)
            if self.on_state is not None:
                self.on_state(m.epoch, shifted.epoch, optimizer)
            if self.on_epoch is not None:
                self.on_epoch(shifted, mod)

        train(self.model, self.data, cfg, on_epoch=relay, teacher=self.teacher, start_epoch=start, optimizer=optimizer)
        self.done = offset + epochs


def _restore(model: nn.Module, snapshot: nn.Module) -> None:
    """Turn ``model`` back into ``snapshot`` (a deep copy taken earlier), in place.

    Pruning changed tensor shapes, so ``load_state_dict`` cannot do it, and callers hold
    ``model`` itself: a module's whole state (parameters, buffers, submodules, flags)
    lives in its ``__dict__``, so adopting the copy's is a complete restore.
    """
    model.__dict__.update(snapshot.__dict__)


def _too_low(val_acc: float, base_val_acc: float | None, max_drop_pts: float | None) -> bool:
    """True when ``val_acc`` is more than ``max_drop_pts`` percentage points below the base."""
    if max_drop_pts is None or base_val_acc is None:
        return False
    return 100.0 * (base_val_acc - val_acc) > max_drop_pts + 1e-9  # tolerance: 0.92 - 0.91 is not exactly 0.01


class _Checkpoints:
    """``on_state`` for the finetuner: a :class:`ResumePoint` of the step under way (set by the schedule)."""

    def __init__(self, on_state: Callable[[ResumePoint], None] | None, model: nn.Module,
                 dense_widths: dict[str, int], dense_macs: int, step: int) -> None:
        self.on_state, self.model, self.dense_widths, self.dense_macs = on_state, model, dense_widths, dense_macs
        self.step = step

    def __call__(self, phase_done: int, epochs_done: int, optimizer: torch.optim.Optimizer) -> None:
        if self.on_state is not None:
            self.on_state(ResumePoint(self.step, phase_done, epochs_done, self.model, optimizer.state_dict(),
                                      self.dense_widths, self.dense_macs))


def _dense_reference(model: nn.Module, data: Any, spec: PruneSpec, example: torch.Tensor,
                     resume: ResumePoint | None) -> tuple[GroupGraph | None, dict[str, int], int]:
    """The dense model's graph (None when resuming: the model is pruned already), widths and MACs.

    Raises ``UsageError`` when ``spec.ratios`` names a group the model does not have.
    """
    graph: GroupGraph | None = None
    if resume is None:
        graph = GroupGraph(model, example)
        dense_widths, dense_macs = graph.widths(), count_macs(model, data.input_shape)
    else:
        dense_widths, dense_macs = dict(resume.dense_widths), int(resume.dense_macs)
    if spec.ratios is not None:
        unknown = sorted(set(spec.ratios) - set(dense_widths))
        if unknown:
            raise UsageError(f"unknown group {unknown[0]!r}; choose one of: {', '.join(dense_widths)}")
    return graph, dense_widths, dense_macs


@dataclass
class _Schedule:
    """What every step of one schedule shares: the model, the target, the dense reference."""

    model: nn.Module
    data: Any
    spec: PruneSpec
    criterion: Any
    seed: int
    device: torch.device
    example: torch.Tensor
    dense_graph: GroupGraph | None
    dense_widths: dict[str, int]
    dense_macs: int
    finetuner: _Finetuner

    def run_step(self, step: int, epochs: int, resume: ResumePoint | None, started: float) -> StepRecord:
        """Cut step ``step`` and finetune it for ``epochs`` (resuming: finish the finetune the
        checkpoint was in, its cut is done); ``started`` is when the step began (perf_counter)."""
        if resume is not None and step == resume.step:
            widths, cut_val_acc = GroupGraph(self.model, self.example).widths(), None
            self.finetuner.done = resume.epochs_done
            self.finetuner(epochs, start=resume.phase_done, optimizer_state=resume.optimizer)
        else:
            reuse = step == 1 and self.dense_graph is not None  # built on the dense model: no second trace
            graph = self.dense_graph if reuse else GroupGraph(self.model, self.example)
            widths, cut_val_acc = self._cut(graph, step)
            self.finetuner(epochs)
        macs = count_macs(self.model, self.data.input_shape)
        val_acc = (evaluate(self.model, self.data.val, device=self.device) if epochs > 0 or cut_val_acc is None
                   else cut_val_acc)
        record = StepRecord(step, dict(widths), macs, val_acc, time.perf_counter() - started, cut_val_acc)
        log.info("step %d/%d: MACs %d (%.1f%% of dense), val_acc %.4f (%.4f right after the cut)", step,
                 self.spec.steps, macs, 100.0 * macs / self.dense_macs, val_acc,
                 float("nan") if cut_val_acc is None else cut_val_acc)  # fmt: skip
        return record

    def _cut(self, graph: GroupGraph, step: int) -> tuple[dict[str, int], float]:
        """Score, select and cut step ``step``, recalibrate BN if asked; (widths after, val acc after)."""
        model, data, spec, device = self.model, self.data, self.spec, self.device
        batches = calibration_batches(data, spec, device, seed=self.seed + step) if self.criterion.requires_data else []
        scores = self.criterion.score(model, graph.groups, batches)
        keep = _step_keep(model, scores, spec, step / spec.steps, self.dense_widths, self.dense_macs,
                          tuple(data.input_shape))
        cut = graph.prune(keep)
        if spec.recalib_batches > 0:
            recalib = data.train.batches(spec.calib_batch_size, shuffle=True, seed=self.seed + step, device=device)
            recalibrate_bn(model, recalib, spec.recalib_batches)
        return dict(cut.after), evaluate(model, data.val, device=device)


def _roll_back(result: PruneResult, record: StepRecord, snapshot: nn.Module | None, max_drop_pts: float | None
               ) -> None:
    """The accuracy guard rejected ``record``'s step: record it as rejected and restore the model
    (in place) to ``snapshot``, the step before."""
    assert snapshot is not None and result.base_val_acc is not None
    result.steps.append(replace(record, accepted=False))
    _restore(result.model, snapshot)
    result.stop_step, result.stop_reason = record.step - 1, "max_drop"
    log.info("step %d dropped val_acc %.2f points (> %.2f allowed): kept step %d", record.step,
             100.0 * (result.base_val_acc - record.val_acc), max_drop_pts, record.step - 1)  # fmt: skip


def prune_iteratively(
    model: nn.Module,
    data: Any,
    spec: PruneSpec,
    finetune: TrainConfig,
    *,
    finetune_epochs: int | None = None,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    teacher: nn.Module | None = None,
    on_state: Callable[[ResumePoint], None] | None = None,
    resume: ResumePoint | None = None,
) -> PruneResult:
    """Prune ``model`` in place to ``spec`` in ``spec.steps`` steps, finetuning between and after.

    ``finetune`` gives the optimiser settings; its ``epochs`` field is replaced by
    ``spec.step_epochs`` between steps and by ``finetune_epochs`` (default
    ``finetune.epochs``) after the last step. Per-epoch metrics go to ``on_epoch``.
    ``teacher`` is the model distilled while finetuning when ``finetune.distill`` is set
    (typically a copy of the dense model); each epoch's ``teacher_macs`` counts its cost.

    With ``spec.max_drop_pts`` the dense model's val accuracy is measured first and every
    step is checked after its finetune: the first step whose val accuracy is more than
    ``max_drop_pts`` points below it is rejected, ``model`` is restored (in place) to the
    last accepted step, exactly as that step left it (its own finetune, no more), and the
    schedule stops. ``result.stop_step``/``stop_reason`` say where and why.

    Checkpoints: ``on_state(point)`` receives a :class:`ResumePoint` after every finetune
    epoch (before ``on_epoch``; it holds live objects: save them before returning). Given
    that ``resume`` point, with ``model`` being ``resume.model``, the schedule continues
    inside the finetune of ``resume.step`` and ends as the uninterrupted run would have
    (same batches, LR and momentum); ``result.steps``/``epochs`` then hold only what ran
    after the resume. Not with the accuracy guard (its rollback snapshot is not saved).
    """
    device = resolve_device(finetune.device)
    model.to(device)
    example = torch.zeros(1, *data.input_shape, device=device)
    criterion = get_criterion(spec.criterion, **spec.criterion_options)
    if resume is not None and spec.max_drop_pts is not None:
        raise UsageError("resuming a pruning schedule is not supported with max_drop_pts (the accuracy guard)")
    dense_graph, dense_widths, dense_macs = _dense_reference(model, data, spec, example, resume)
    first = resume.step if resume is not None else 1
    checkpoints = _Checkpoints(on_state, model, dense_widths, dense_macs, step=first)
    finetuner = _Finetuner(model, data, finetune, on_epoch, teacher, on_state=checkpoints)
    schedule = _Schedule(model, data, spec, criterion, finetune.seed, device, example, dense_graph, dense_widths,
                         dense_macs, finetuner)
    base_val_acc = evaluate(model, data.val, device=device) if spec.max_drop_pts is not None else None
    result = PruneResult(model=model, steps=[], epochs=finetuner.history, base_val_acc=base_val_acc)
    final_epochs = finetune.epochs if finetune_epochs is None else finetune_epochs
    for step in range(first, spec.steps + 1):
        checkpoints.step = step
        started = time.perf_counter()
        snapshot = copy.deepcopy(model) if base_val_acc is not None else None  # the guard's rollback
        epochs = spec.step_epochs if step < spec.steps else final_epochs
        record = schedule.run_step(step, epochs, resume, started)
        if _too_low(record.val_acc, base_val_acc, spec.max_drop_pts):
            _roll_back(result, record, snapshot, spec.max_drop_pts)
            break
        result.steps.append(record)
        result.stop_step = step
    return result
