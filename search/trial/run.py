"""One trial of a search, as plain Python: ``run_trial(cfg, params, reporter) -> metrics``.

The base model is prepared once per experiment (``prepare_base``: trained, or loaded
from ``model.checkpoint`` or from the cache ``<exp_dir>/base-<hash>.pt``) and handed to
every trial as a picklable ``BaseArtifacts`` (Ray: one ``ray.put`` by the tuner). A trial
copies the base model and either prunes it (mode ``prune``: growth of groups whose ratio
exceeds 1, then ``prune_iteratively`` with finetuning), runs the online grow/prune loop
(mode ``adaptive``), or trains the sampled widths from random weights (mode ``scratch``).
It knows nothing of Ray: the reporter is any callable.

This module is the trial's entry point: it picks the mode, handles the resume state of an
interrupted prune trial, measures the result and returns its metrics. The base model is
:mod:`search.trial.base`'s, the per-epoch rows :mod:`search.trial.epochs`'s and the mode
bodies :mod:`search.trial.modes`'s.

A trial that runs and fails (NaN loss, a group pruned to nothing, a target the pruning
code rejects) raises ``TrialError``; the search records it and goes on.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from pruning.data import DataBundle
from pruning.errors import TrialError, UsageError
from pruning.iterative import PruneResult, ResumePoint
from pruning.measure import Measurement, measure
from pruning.train import resolve_device
from search.config import ExperimentConfig
from search.trial.materialize import experiment_data
from search.trial.params import MODES
from search.trial.base import LATENCY_RUNS, BaseArtifacts, base_cache_path, prepare_base
from search.trial.epochs import EpochRows, Reporter, group_widths
from search.trial.modes import run_adaptive, run_prune, run_scratch

# BaseArtifacts, prepare_base and base_cache_path are part of the trial's contract (the tuner,
# the finalize session and benchmarks use them through this module).
__all__ = ["RESUME_VERSION", "BaseArtifacts", "Checkpointer", "Reporter", "base_cache_path", "prepare_base",
           "run_trial"]

log = logging.getLogger(__name__)

Checkpointer = Callable[[dict[str, Any]], None]
"""``checkpoint(state)``: a trial's resume state, to be saved now (it holds the live model:
``torch.save`` it before returning); ``run_trial(..., resume=state)`` continues from it.
Called right before the ``reporter`` call of the same epoch."""

#: Version of the resume state's layout (a state of another version is ignored: the trial restarts).
RESUME_VERSION = 1


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

    ``params`` is a dict from ``search.study.space.suggest`` or ``baseline_params``. Keys it
    lacks take the values a baseline gets: the first of ``criteria``/``steps``, the upper
    bound of ``finetune_epochs``, the geometric middle of ``finetune_lr``; in prune mode
    the ratio keys are required. ``reporter(row,
    model)`` is called after every finetune epoch with ``row`` = ``epoch`` (1-based,
    counted across iterative steps), ``train_loss``, ``val_acc``, ``macs``, ``widths``
    (per group, base group order), ``lr``, ``wall_s`` (that epoch's seconds),
    ``rung_epoch`` (1-based index within the final step's finetune, None before it: see
    ``search.trial.epochs.EpochRows``) and ``rung_epochs`` (that finetune's epochs); a trial with
    no epoch (``finetune_epochs=0``, one step) never calls it.

    Returns ``val_acc``, ``test_acc`` (0..1), ``macs``, ``params``, ``latency_ms`` (CPU,
    1 thread, batch ``train.latency_batch``), ``macs_ratio`` (of the base), ``widths``,
    ``group_names``, ``epochs`` (run), ``wall_s`` (whole trial), ``mode``, ``criterion``
    (``"profit"`` for adaptive, ``"none"`` for scratch), ``base_val_acc``, ``val_acc_pruned``,
    ``stop_step``, ``stop_reason`` (prune mode, else None; see ``search.trial.result``),
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
        rows = EpochRows(data, base.group_names, reporter)
        model, criterion, pruned = _run_mode(mode, cfg, params, base, data, rows, resume, checkpoint)
        model.to(device)
        m = measure(model, data, device=device, latency_batch=cfg.train.latency_batch, latency_runs=LATENCY_RUNS,
                    latency_backend=cfg.train.latency_backend)
        widths = group_widths(model, data.example_input().to(device), base.group_names)
    except UsageError as e:
        raise TrialError(str(e)) from e
    return {
        **_measured(m, base, widths), "epochs": int(rows.count), "wall_s": float(time.perf_counter() - t0),
        "mode": str(mode), "criterion": criterion, "base_val_acc": float(base.metrics["val_acc"]),
        **_prune_outcome(pruned), "train_macs": int(rows.train_macs), "teacher_macs": int(rows.teacher_macs),
    }  # fmt: skip


def _run_mode(
    mode: str, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts, data: DataBundle,
    rows: EpochRows, resume: Mapping[str, Any] | None, checkpoint: Checkpointer | None,
) -> tuple[nn.Module, str, PruneResult | None]:
    """Run the body of ``mode`` on a copy of the base model (a prune trial: or on the module of
    its resume state); returns the trained model, the criterion it used and, in prune mode, what
    ``prune_iteratively`` did."""
    point = _resume_point(resume, mode)
    model = point.model if point is not None else copy.deepcopy(base.model)
    if mode == "prune":
        rows.count = point.epochs_done if point is not None else 0
        criterion, pruned = run_prune(model, data, cfg, params, base, rows, point, _state_saver(cfg, mode, checkpoint))
        return model, criterion, pruned
    if mode == "scratch":
        return run_scratch(data, cfg, params, base, rows), "none", None
    return run_adaptive(model, data, cfg, params, rows, base.metrics["macs"]), "profit", None


def _measured(m: Measurement, base: BaseArtifacts, widths: list[int]) -> dict[str, Any]:
    """The trial model's accuracy and cost, and its widths per base group."""
    return {
        "val_acc": float(m.val_acc),
        "test_acc": float(m.test_acc),
        "macs": int(m.macs),
        "params": int(m.params),
        "latency_ms": float(m.latency_ms or 0.0),  # always measured (latency=True)
        "macs_ratio": float(m.macs / base.metrics["macs"]),
        "widths": widths,
        "group_names": list(base.group_names),
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
