"""One trial of a search, as plain Python: ``run_trial(cfg, params, reporter) -> metrics``.

The base model is prepared once per experiment (``prepare_base``: trained, or loaded
from ``model.checkpoint`` or from the cache ``<exp_dir>/base-<hash>.pt``) and handed to
every trial as a picklable ``BaseArtifacts`` (Ray: one ``ray.put`` by the tuner). A trial
copies the base model and either prunes it (mode ``prune``: growth of groups whose ratio
exceeds 1, then ``prune_iteratively`` with finetuning), runs the online grow/prune loop
(mode ``adaptive``), or trains the sampled widths from random weights (mode ``scratch``).
It knows nothing of Ray: the reporter is any callable.

A trial that runs and fails (NaN loss, a group pruned to nothing, a target the pruning
code rejects) raises ``TrialError``; the search records it and goes on.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.basemodel import get_base_model, recipe_hash
from pruning.cost import count_macs
from pruning.data import DataBundle
from pruning.errors import TrialError, UsageError
from pruning.iterative import PruneResult, PruneSpec, ResumePoint, prune_iteratively
from pruning.measure import measure
from pruning.selection import keep_by_ratios
from pruning.surgery import GroupGraph, grow
from pruning.train import DistillConfig, EpochMetrics, TrainConfig, resolve_device, train
from search.config import ExperimentConfig
from search.materialize import data_key, experiment_data, untrained_model
from search.space import ADAPTIVE_CHOICE_KNOBS, ADAPTIVE_FLOAT_KNOBS, BASELINES, BUDGET_KEY, MODES, ratios_from_params

log = logging.getLogger(__name__)

#: Timed forward passes per latency measurement (median); small: a trial measures once.
LATENCY_RUNS = 5

#: A training step costs about 3 forward passes (forward, backward for activations and for
#: weights); ``train_macs`` counts per-sample MACs x samples x this factor (as pruning.adaptive).
TRAIN_STEP_FORWARDS = 3

Reporter = Callable[[dict[str, Any], nn.Module | None], None]
"""``reporter(epoch_row, model)`` after every finetune epoch (Ray: ``tune.report`` + checkpoint)."""

Checkpointer = Callable[[dict[str, Any]], None]
"""``checkpoint(state)``: a trial's resume state, to be saved now (it holds the live model:
``torch.save`` it before returning); ``run_trial(..., resume=state)`` continues from it.
Called right before the ``reporter`` call of the same epoch."""

#: Version of the resume state's layout (a state of another version is ignored: the trial restarts).
RESUME_VERSION = 1


@dataclass
class BaseArtifacts:
    """The trained dense model every trial starts from, and what it measured. Picklable."""

    model: nn.Module  # trained dense model, CPU
    metrics: dict[str, float]  # val_acc, test_acc (0..1), macs, params, latency_ms of the base
    group_names: list[str]  # prunable groups, model order
    widths: list[int]  # channels per group, same order
    checkpoint: str | None  # file the model was loaded from or cached to


def base_train_config(cfg: ExperimentConfig) -> TrainConfig:
    """``cfg.train`` as the training loop's config (seeded by ``experiment.seed``)."""
    t = cfg.train
    return TrainConfig(
        epochs=t.epochs, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        label_smoothing=t.label_smoothing, augment=t.augment, seed=cfg.experiment.seed, device=t.device,
    )  # fmt: skip


def base_cache_path(cfg: ExperimentConfig) -> Path:
    """Where the base model of ``cfg`` is cached: ``<exp_dir>/base-<hash of model+data+train>.pt``."""
    key = recipe_hash(cfg.model.name, data_key(cfg), base_train_config(cfg), cfg.model.width_mult)
    return cfg.exp_dir / f"base-{key}.pt"


def prepare_base(cfg: ExperimentConfig, *, log_progress: Callable[[str], None] | None = None,
                 on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None) -> BaseArtifacts:
    """Train or load the base model, measure it, and list its groups.

    Loads ``cfg.model.checkpoint`` if set, else the cached ``base_cache_path(cfg)`` if it
    exists, else trains for ``cfg.train.epochs`` and writes that cache. ``log_progress``
    receives one line per stage (the CLI prints them; default: the logger); ``on_epoch``
    is called after every base training epoch (the CLI's per-epoch progress).
    """
    say = log_progress or (lambda msg: log.info("%s", msg))
    say(f"loading dataset {cfg.data.name}")
    data = experiment_data(cfg)
    train_cfg = base_train_config(cfg)
    cached = base_cache_path(cfg)
    if cfg.model.checkpoint is not None:
        say(f"base model: loading {cfg.model.checkpoint}")
    elif cached.is_file():
        say(f"base model: using cached {cached}")
    else:
        say(f"base model: training {cfg.model.name} for {train_cfg.epochs} epochs")
    model, path = get_base_model(
        cfg.model.name, data, train_cfg, data_key=data_key(cfg), cache_dir=cfg.exp_dir,
        checkpoint=cfg.model.checkpoint, width_mult=cfg.model.width_mult, on_epoch=on_epoch,
    )  # fmt: skip
    model.cpu()
    device = resolve_device(cfg.train.device)
    m = measure(model.to(device), data, device=device, latency_batch=cfg.train.latency_batch, latency_runs=LATENCY_RUNS,
                latency_backend=cfg.train.latency_backend)
    model.cpu()
    widths = GroupGraph(model, data.example_input()).widths()
    say(f"base model: val_acc {m.val_acc:.4f}, test_acc {m.test_acc:.4f}, {m.macs / 1e6:.3f}M MACs, "
        f"{m.params / 1e3:.1f}k params, {len(widths)} prunable groups")  # fmt: skip
    return BaseArtifacts(
        model=model, metrics={k: float(v) for k, v in m.as_dict().items()}, group_names=list(widths),
        widths=list(widths.values()), checkpoint=str(path) if path is not None else None,
    )  # fmt: skip


class _EpochRows:
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
            self._widths = _widths(model, x, self.groups)
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


def _widths(model: nn.Module, x: torch.Tensor, groups: list[str]) -> list[int]:
    now = GroupGraph(model, x).widths()
    return [int(now.get(g, 0)) for g in groups]


def _grow_counts(ratios: Mapping[str, float], widths: Mapping[str, int], round_to: int) -> dict[str, int]:
    """Channels to add to each group whose ratio (width multiplier) is above 1."""
    add = {}
    for g, r in ratios.items():
        if r > 1.0:
            # 1e-9: a ratio rebuilt from widths (finalize --from-scratch) must not round up a whole step
            target = math.ceil(r * widths[g] / round_to - 1e-9) * round_to if round_to > 1 else round(r * widths[g])
            if target > widths[g]:
                add[g] = int(target - widths[g])
    return add


def _finetune_config(cfg: ExperimentConfig, params: Mapping[str, Any]) -> tuple[TrainConfig, int]:
    s = cfg.search
    epochs = int(params.get("finetune_epochs", s.finetune_epochs[1]))
    lr = float(params.get("finetune_lr", math.sqrt(s.finetune_lr[0] * s.finetune_lr[1])))
    return replace(base_train_config(cfg), epochs=epochs, lr=lr, distill=_distill(cfg, params)), epochs


def _distill(cfg: ExperimentConfig, params: Mapping[str, Any]) -> DistillConfig | None:
    """The trial's distillation settings (params ``distill``, ``distill_alpha``, ``distill_temperature``)."""
    if not params.get("distill"):
        return None
    s = cfg.search
    alpha = float(params.get("distill_alpha", sum(s.distill_alpha) / 2))
    temperature = float(params.get("distill_temperature", sum(s.distill_temperature) / 2))
    return DistillConfig(alpha=alpha, temperature=temperature)


def _teacher(train_cfg: TrainConfig, base: BaseArtifacts) -> nn.Module | None:
    """A copy of the base model when the trial distils (the base stays untouched on the CPU)."""
    return copy.deepcopy(base.model) if train_cfg.distill is not None else None


def _run_prune(
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts,
    on_epoch: _EpochRows, resume: ResumePoint | None = None, on_state: Callable[[ResumePoint], None] | None = None,
) -> tuple[str, PruneResult]:
    """Grow groups with ratio > 1, prune the others, finetune; returns the criterion used and what
    ``prune_iteratively`` did (BN recalibration, distillation and the max-drop guard from ``search``).
    With ``resume`` (``model`` is its module, already grown and cut) the schedule continues there."""
    s = cfg.search
    criterion = str(params.get("criterion", s.criteria[0]))
    common: dict[str, Any] = dict(
        criterion=criterion, steps=int(params.get("steps", s.steps[0])), min_channels=s.min_channels,
        round_to=s.round_to, calib_batches=cfg.train.calib_batches, calib_batch_size=cfg.train.batch_size,
        recalib_batches=s.recalib_batches, max_drop_pts=s.max_drop_pts,
    )  # fmt: skip
    if params.get("baseline") in BASELINES:
        spec = PruneSpec(ratio=float(params["ratio"]), ranking=str(params["baseline"]), **common)
    else:
        ratios = ratios_from_params(params, base.group_names)
        add = _grow_counts(ratios, dict(zip(base.group_names, base.widths)), s.round_to)
        if add and resume is None:
            if not s.grow:
                g = next(iter(add))
                raise UsageError(f"ratio {ratios[g]} > 1 for group {g!r} needs search.grow: true")
            method = str(params.get("grow_method", s.adaptive.grow_method[0]))
            record = grow(model, add, data.example_input(), method=method, seed=cfg.experiment.seed)
            log.info("grew %s", {g: f"{record.before[g]}->{record.after[g]}" for g in add})
        spec = PruneSpec(ratios={g: r for g, r in ratios.items() if r < 1.0}, **common)
    finetune, epochs = _finetune_config(cfg, params)
    on_epoch.final_after((spec.steps - 1) * spec.step_epochs, epochs)  # each earlier step: step_epochs
    if spec.max_drop_pts is not None:  # a guarded schedule cannot resume mid-way: save no resume state
        on_state = None
    result = prune_iteratively(model, data, spec, finetune, finetune_epochs=epochs, on_epoch=on_epoch,
                               teacher=_teacher(finetune, base), on_state=on_state, resume=resume)
    return criterion, result


def _run_scratch(
    data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts, on_epoch: _EpochRows
) -> nn.Module:
    """Mode ``scratch`` (Liu et al. 2019): the sampled widths trained from random weights.

    The base architecture is cut (first channels: no criterion, the weights are thrown
    away) and widened to the sampled per-group widths - the same rounding as prune mode -
    then every layer is re-initialised at its new size (``reset_parameters``, seeded by
    ``experiment.seed``) and trained for ``scratch_epochs`` (params, else
    ``search.scratch_epochs``) with the base recipe (``train.lr``, cosine), distilling the
    base model when the params say so.
    """
    s = cfg.search
    model = copy.deepcopy(base.model)
    x = data.example_input()
    ratios = ratios_from_params(params, base.group_names)
    widths = dict(zip(base.group_names, base.widths))
    shrink = {g: r for g, r in ratios.items() if r < 1.0}
    if shrink:
        zeros = {g: torch.zeros(widths[g]) for g in shrink}
        keep = keep_by_ratios(zeros, shrink, min_channels=s.min_channels, round_to=s.round_to)
        GroupGraph(model, x).prune({g: sorted(k) for g, k in keep.items()})
    add = _grow_counts(ratios, widths, s.round_to)
    if add:
        grow(model, add, x, method="zero", seed=cfg.experiment.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.experiment.seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    epochs = int(params.get("scratch_epochs", s.scratch_epochs))
    train_cfg = replace(base_train_config(cfg), epochs=epochs, distill=_distill(cfg, params))
    train(model, data, train_cfg, on_epoch=on_epoch, teacher=_teacher(train_cfg, base))
    return model


def adaptive_budget(cfg: ExperimentConfig, params: Mapping[str, Any], base_macs: float) -> int | None:
    """An adaptive trial's MACs budget: ``macs_budget_ratio`` x the base model's MACs (rounded
    down), capped by ``objectives.macs_budget``; without the ratio (older params) the cap alone."""
    cap = cfg.objectives.macs_budget
    if params.get(BUDGET_KEY) is None:
        return cap
    budget = max(1, math.floor(float(params[BUDGET_KEY]) * base_macs))
    return budget if cap is None else min(budget, cap)


def _resume_point(resume: Mapping[str, Any] | None, mode: str) -> ResumePoint | None:
    """The prune schedule's point in a resume state, None when it cannot be used (restart)."""
    if not resume:
        return None
    point = resume.get("point")
    if resume.get("version") != RESUME_VERSION or resume.get("mode") != mode or not isinstance(point, ResumePoint):
        log.warning("ignoring a resume state this trial cannot use (mode %r, version %r); starting over",
                    resume.get("mode"), resume.get("version"))
        return None
    return point


def _state_saver(cfg: ExperimentConfig, mode: str,
                 checkpoint: Checkpointer | None) -> Callable[[ResumePoint], None] | None:
    """``on_state`` for the prune schedule: every ``resources.checkpoint_every`` epochs, a resume state."""
    every = cfg.resources.checkpoint_every
    if checkpoint is None or every <= 0:
        return None

    def on_state(point: ResumePoint) -> None:
        if point.epochs_done % every == 0:
            checkpoint({"version": RESUME_VERSION, "mode": mode, "point": point, "epoch": point.epochs_done})

    return on_state


def _run_adaptive(
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], on_epoch: _EpochRows,
    base_macs: float,
) -> nn.Module:
    """The online grow/prune loop with the sampled knobs; returns the resulting model.

    Starts from the base model's copy, or from random weights with ``adaptive.from_scratch``
    (then the search phase trains at ``train.lr``, else at the finetune LR: the base is
    already trained). Budget: ``adaptive_budget``; the final model never exceeds it.
    """
    from pruning.adaptive import AdaptiveConfig, run_adaptive

    s, a = cfg.search, cfg.search.adaptive
    finetune, epochs = _finetune_config(cfg, params)
    if a.from_scratch:
        model = untrained_model(cfg, data)
    knobs = {k: params.get(k, getattr(a, k)[0]) for k in (*ADAPTIVE_FLOAT_KNOBS, *ADAPTIVE_CHOICE_KNOBS)}
    adaptive_cfg = AdaptiveConfig(
        **knobs, max_width_mult=a.max_width_mult, min_channels=s.min_channels, round_to=s.round_to,
        budget_macs=adaptive_budget(cfg, params, base_macs), max_epochs=a.epochs, finetune_epochs=epochs,
        finetune_lr=finetune.lr, calib_batches=cfg.train.calib_batches,
    )  # fmt: skip
    search_cfg = finetune if not a.from_scratch else replace(finetune, lr=cfg.train.lr)
    result = run_adaptive(model, data, search_cfg, adaptive_cfg, on_epoch=on_epoch,
                          on_finetune=lambda search_epochs: on_epoch.final_after(search_epochs, epochs))
    on_epoch.train_macs = int(result.train_macs)  # its own count: widths change within epochs
    log.info("adaptive loop: %s after %d epochs", result.stop_reason or "ran all epochs", result.epochs)
    return result.model


def run_trial(
    cfg: ExperimentConfig,
    params: dict[str, Any],
    reporter: Reporter | None = None,
    *,
    base: BaseArtifacts | None = None,
    resume: Mapping[str, Any] | None = None,
    checkpoint: Checkpointer | None = None,
) -> dict[str, Any]:
    """Run one trial on a copy of the base model and return its final metrics (JSON-able).

    ``params`` is a dict from ``search.space.suggest`` or ``baseline_params``. Keys it
    lacks take the values a baseline gets: the first of ``criteria``/``steps``, the upper
    bound of ``finetune_epochs``, the geometric middle of ``finetune_lr``; in prune mode
    the ratio keys are required. ``reporter(row,
    model)`` is called after every finetune epoch with ``row`` = ``epoch`` (1-based,
    counted across iterative steps), ``train_loss``, ``val_acc``, ``macs``, ``widths``
    (per group, base group order), ``lr``, ``wall_s`` (that epoch's seconds),
    ``rung_epoch`` (1-based index within the final step's finetune, None before it: see
    ``_EpochRows``) and ``rung_epochs`` (that finetune's epochs); a trial with
    no epoch (``finetune_epochs=0``, one step) never calls it.

    Returns ``val_acc``, ``test_acc`` (0..1), ``macs``, ``params``, ``latency_ms`` (CPU,
    1 thread, batch ``train.latency_batch``), ``macs_ratio`` (of the base), ``widths``,
    ``group_names``, ``epochs`` (run), ``wall_s`` (whole trial), ``mode``, ``criterion``
    (``"profit"`` for adaptive, ``"none"`` for scratch), ``base_val_acc``, ``val_acc_pruned``,
    ``stop_step``, ``stop_reason`` (prune mode, else None; see ``search.result``),
    ``train_macs`` and ``teacher_macs`` (MACs). Raises ``TrialError`` when the trial
    fails, including any ``UsageError`` raised while running it.

    Checkpoints (mode ``prune``): every ``resources.checkpoint_every`` finetune epochs
    ``checkpoint(state)`` receives a resume state (the module itself, since growth and
    pruning changed its shapes, the optimizer's state, the iterative step and epoch);
    ``resume=state`` continues the trial there, inside whichever step's finetune it was,
    and ends as the uninterrupted trial would have. Adaptive trials save none and restart.
    """
    t0 = time.perf_counter()
    if base is None:
        base = prepare_base(cfg)
    mode = params.get("mode", "prune")
    try:
        if mode not in MODES:
            raise UsageError(f"unknown trial mode {mode!r}; choose one of: {', '.join(MODES)}")
        data = experiment_data(cfg)
        device = resolve_device(cfg.train.device)
        point = _resume_point(resume, mode)
        model = point.model if point is not None else copy.deepcopy(base.model)
        rows = _EpochRows(data, base.group_names, reporter)
        pruned: PruneResult | None = None
        if mode == "prune":
            rows.count = point.epochs_done if point is not None else 0
            criterion, pruned = _run_prune(model, data, cfg, params, base, rows, point,
                                           _state_saver(cfg, mode, checkpoint))
        elif mode == "scratch":
            model = _run_scratch(data, cfg, params, base, rows)
            criterion = "none"
        else:
            model = _run_adaptive(model, data, cfg, params, rows, base.metrics["macs"])
            criterion = "profit"
        model.to(device)
        m = measure(model, data, device=device, latency_batch=cfg.train.latency_batch, latency_runs=LATENCY_RUNS,
                    latency_backend=cfg.train.latency_backend)
        widths = _widths(model, data.example_input().to(device), base.group_names)
    except UsageError as e:
        raise TrialError(str(e)) from e
    return {
        "val_acc": float(m.val_acc),
        "test_acc": float(m.test_acc),
        "macs": int(m.macs),
        "params": int(m.params),
        "latency_ms": float(m.latency_ms or 0.0),  # always measured (latency=True)
        "macs_ratio": float(m.macs / base.metrics["macs"]),
        "widths": widths,
        "group_names": list(base.group_names),
        "epochs": int(rows.count),
        "wall_s": float(time.perf_counter() - t0),
        "mode": str(mode),
        "criterion": criterion,
        "base_val_acc": float(base.metrics["val_acc"]),
        **_prune_outcome(pruned),
        "train_macs": int(rows.train_macs),
        "teacher_macs": int(rows.teacher_macs),
    }


def _prune_outcome(pruned: PruneResult | None) -> dict[str, Any]:
    """``val_acc_pruned`` (right after the last accepted cut), ``stop_step``, ``stop_reason``; None
    outside prune mode."""
    if pruned is None:
        return {"val_acc_pruned": None, "stop_step": None, "stop_reason": None}
    accepted = [st for st in pruned.steps if st.accepted]
    cut = accepted[-1].cut_val_acc if accepted else None
    return {"val_acc_pruned": None if cut is None else float(cut), "stop_step": int(pruned.stop_step),
            "stop_reason": str(pruned.stop_reason)}
