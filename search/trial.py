"""One trial of a search, as plain Python: ``run_trial(cfg, params, reporter) -> metrics``.

The base model is prepared once per experiment (``prepare_base``: trained, or loaded
from ``model.checkpoint`` or from the cache ``<exp_dir>/base-<hash>.pt``) and handed to
every trial as a picklable ``BaseArtifacts`` (Ray: one ``ray.put`` by the tuner). A trial
copies the base model and either prunes it (mode ``prune``: growth of groups whose ratio
exceeds 1, then ``prune_iteratively`` with finetuning) or runs the online grow/prune loop
(mode ``adaptive``). It knows nothing of Ray: the reporter is any callable.

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
from pruning.iterative import PruneSpec, ResumePoint, prune_iteratively
from pruning.measure import measure
from pruning.surgery import GroupGraph, grow
from pruning.train import EpochMetrics, TrainConfig, resolve_device
from search.config import ExperimentConfig
from search.materialize import data_key, experiment_data, untrained_model
from search.space import ADAPTIVE_CHOICE_KNOBS, ADAPTIVE_FLOAT_KNOBS, BASELINES, MODES, ratios_from_params

log = logging.getLogger(__name__)

#: Timed forward passes per latency measurement (median); small: a trial measures once.
LATENCY_RUNS = 5

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


def prepare_base(cfg: ExperimentConfig, *, log_progress: Callable[[str], None] | None = None) -> BaseArtifacts:
    """Train or load the base model, measure it, and list its groups.

    Loads ``cfg.model.checkpoint`` if set, else the cached ``base_cache_path(cfg)`` if it
    exists, else trains for ``cfg.train.epochs`` and writes that cache. ``log_progress``
    receives one line per stage (the CLI prints them; default: the logger).
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
        checkpoint=cfg.model.checkpoint, width_mult=cfg.model.width_mult,
    )  # fmt: skip
    model.cpu()
    device = resolve_device(cfg.train.device)
    m = measure(model.to(device), data, device=device, latency_batch=cfg.train.latency_batch, latency_runs=LATENCY_RUNS)
    model.cpu()
    widths = GroupGraph(model, data.example_input()).widths()
    say(f"base model: val_acc {m.val_acc:.4f}, test_acc {m.test_acc:.4f}, {m.macs / 1e6:.3f}M MACs, "
        f"{m.params / 1e3:.1f}k params, {len(widths)} prunable groups")  # fmt: skip
    return BaseArtifacts(
        model=model, metrics={k: float(v) for k, v in m.as_dict().items()}, group_names=list(widths),
        widths=list(widths.values()), checkpoint=str(path) if path is not None else None,
    )  # fmt: skip


class _EpochRows:
    """Builds the reporter's per-epoch rows; MACs and widths are recomputed only when shapes change."""

    def __init__(self, data: DataBundle, groups: list[str], reporter: Reporter | None) -> None:
        self.data, self.groups, self.reporter = data, groups, reporter
        self.count = 0
        self._shapes: tuple | None = None
        self._macs = 0
        self._widths: list[int] = []

    def __call__(self, m: EpochMetrics, model: nn.Module) -> None:
        self.count += 1
        if self.reporter is None:
            return
        shapes = tuple(tuple(p.shape) for p in model.parameters())
        if shapes != self._shapes:
            x = self.data.example_input().to(next(model.parameters()).device)
            self._macs = count_macs(model, self.data.input_shape)
            self._widths = _widths(model, x, self.groups)
            self._shapes = shapes
        row = {
            "epoch": int(m.epoch), "train_loss": float(m.train_loss), "val_acc": float(m.val_acc),
            "macs": int(self._macs), "widths": list(self._widths), "lr": float(m.lr), "wall_s": float(m.wall_s),
        }  # fmt: skip
        self.reporter(row, model)


def _widths(model: nn.Module, x: torch.Tensor, groups: list[str]) -> list[int]:
    now = GroupGraph(model, x).widths()
    return [int(now.get(g, 0)) for g in groups]


def _grow_counts(ratios: Mapping[str, float], widths: Mapping[str, int], round_to: int) -> dict[str, int]:
    """Channels to add to each group whose ratio (width multiplier) is above 1."""
    add = {}
    for g, r in ratios.items():
        if r > 1.0:
            target = math.ceil(r * widths[g] / round_to) * round_to if round_to > 1 else round(r * widths[g])
            if target > widths[g]:
                add[g] = int(target - widths[g])
    return add


def _finetune_config(cfg: ExperimentConfig, params: Mapping[str, Any]) -> tuple[TrainConfig, int]:
    s = cfg.search
    epochs = int(params.get("finetune_epochs", s.finetune_epochs[1]))
    lr = float(params.get("finetune_lr", math.sqrt(s.finetune_lr[0] * s.finetune_lr[1])))
    return replace(base_train_config(cfg), epochs=epochs, lr=lr), epochs


def _run_prune(
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts,
    on_epoch: _EpochRows, resume: ResumePoint | None = None, on_state: Callable[[ResumePoint], None] | None = None,
) -> str:
    """Grow groups with ratio > 1, prune the others, finetune; returns the criterion used.
    With ``resume`` (``model`` is its module, already grown and cut) the schedule continues there."""
    s = cfg.search
    criterion = str(params.get("criterion", s.criteria[0]))
    common: dict[str, Any] = dict(
        criterion=criterion, steps=int(params.get("steps", s.steps[0])), min_channels=s.min_channels,
        round_to=s.round_to, calib_batches=cfg.train.calib_batches, calib_batch_size=cfg.train.batch_size,
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
    if spec.max_drop_pts is not None:  # a guarded schedule cannot resume mid-way: save no resume state
        on_state = None
    prune_iteratively(model, data, spec, finetune, finetune_epochs=epochs, on_epoch=on_epoch, on_state=on_state,
                      resume=resume)
    return criterion


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
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], on_epoch: _EpochRows
) -> nn.Module:
    """The online grow/prune loop with the sampled knobs; returns the resulting model.

    Starts from the base model's copy, or from random weights with ``adaptive.from_scratch``
    (then the search phase trains at ``train.lr``, else at the finetune LR: the base is
    already trained). Budget: ``objectives.macs_budget``.
    """
    from pruning.adaptive import AdaptiveConfig, run_adaptive

    s, a = cfg.search, cfg.search.adaptive
    finetune, epochs = _finetune_config(cfg, params)
    if a.from_scratch:
        model = untrained_model(cfg, data)
    knobs = {k: params.get(k, getattr(a, k)[0]) for k in (*ADAPTIVE_FLOAT_KNOBS, *ADAPTIVE_CHOICE_KNOBS)}
    adaptive_cfg = AdaptiveConfig(
        **knobs, max_width_mult=a.max_width_mult, min_channels=s.min_channels, round_to=s.round_to,
        budget_macs=cfg.objectives.macs_budget, max_epochs=a.epochs, finetune_epochs=epochs,
        finetune_lr=finetune.lr, calib_batches=cfg.train.calib_batches,
    )  # fmt: skip
    search_cfg = finetune if not a.from_scratch else replace(finetune, lr=cfg.train.lr)
    result = run_adaptive(model, data, search_cfg, adaptive_cfg, on_epoch=on_epoch)
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
    (per group, base group order), ``lr``, ``wall_s`` (that epoch's seconds); a trial with
    no epoch (``finetune_epochs=0``, one step) never calls it.

    Returns ``val_acc``, ``test_acc`` (0..1), ``macs``, ``params``, ``latency_ms`` (CPU,
    1 thread, batch ``train.latency_batch``), ``macs_ratio`` (of the base), ``widths``,
    ``group_names``, ``epochs`` (run), ``wall_s`` (whole trial), ``mode``, ``criterion``
    (``"profit"`` for adaptive), ``base_val_acc``. Raises ``TrialError`` when the trial
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
        if mode == "prune":
            rows.count = point.epochs_done if point is not None else 0
            criterion = _run_prune(model, data, cfg, params, base, rows, point, _state_saver(cfg, mode, checkpoint))
        else:
            model = _run_adaptive(model, data, cfg, params, rows)
            criterion = "profit"
        model.to(device)
        m = measure(model, data, device=device, latency_batch=cfg.train.latency_batch, latency_runs=LATENCY_RUNS)
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
    }
