"""The body of each trial mode: what a trial does to its copy of the base model.

``prune`` grows the groups whose sampled ratio exceeds 1 and then prunes and finetunes
iteratively (:func:`run_prune`); ``scratch`` trains the sampled widths from random weights
(:func:`run_scratch`); ``adaptive`` runs the online grow/prune loop within a sampled MACs
budget (:func:`run_adaptive`). Parameters a trial's params lack take the values a baseline
gets. ``search.trial.run.run_trial`` picks the mode and measures the result.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pruning.adaptive import AdaptiveConfig
from pruning.adaptive import run_adaptive as adaptive_loop
from pruning.data import DataBundle
from pruning.errors import UsageError
from pruning.iterative import PruneResult, PruneSpec, ResumePoint, prune_iteratively
from pruning.selection import grow_counts, keep_by_ratios
from pruning.surgery import GroupGraph, grow
from pruning.train import DistillConfig, TrainConfig, train
from search.config import ExperimentConfig
from search.trial.materialize import untrained_model
from search.trial.params import (ADAPTIVE_CHOICE_KNOBS, ADAPTIVE_FLOAT_KNOBS, BASELINES, BUDGET_KEY, TARGET_KEY,
                                 baseline_defaults, ratios_from_params)
from search.trial.targets import target_macs, trial_ratios
from search.trial.base import BaseArtifacts, base_train_config
from search.trial.epochs import EpochRows

__all__ = ["adaptive_budget", "run_adaptive", "run_prune", "run_scratch"]

log = logging.getLogger(__name__)


def _finetune_config(cfg: ExperimentConfig, params: Mapping[str, Any]) -> tuple[TrainConfig, int]:
    default = baseline_defaults(cfg)
    epochs = int(params.get("finetune_epochs", default["finetune_epochs"]))
    lr = float(params.get("finetune_lr", default["finetune_lr"]))
    return replace(base_train_config(cfg), epochs=epochs, lr=lr, distill=_distill(cfg, params)), epochs


def _distill(cfg: ExperimentConfig, params: Mapping[str, Any]) -> DistillConfig | None:
    """The trial's distillation settings (params ``distill``, ``distill_alpha``, ``distill_temperature``)."""
    if not params.get("distill"):
        return None
    default = baseline_defaults(cfg)
    alpha = float(params.get("distill_alpha", default["distill_alpha"]))
    temperature = float(params.get("distill_temperature", default["distill_temperature"]))
    return DistillConfig(alpha=alpha, temperature=temperature)


def _teacher(train_cfg: TrainConfig, base: BaseArtifacts) -> nn.Module | None:
    """A copy of the base model when the trial distils (the base stays untouched on the CPU)."""
    return copy.deepcopy(base.model) if train_cfg.distill is not None else None


def run_prune(
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts,
    on_epoch: EpochRows, resume: ResumePoint | None = None, on_state: Callable[[ResumePoint], None] | None = None,
) -> tuple[str, PruneResult]:
    """Grow groups with ratio > 1, prune the others, finetune; returns the criterion used and what
    ``prune_iteratively`` did (BN recalibration, distillation and the max-drop guard from ``search``).
    With ``resume`` (``model`` is its module, already grown and cut) the schedule continues there."""
    s, default = cfg.search, baseline_defaults(cfg)
    criterion = str(params.get("criterion", default["criterion"]))
    common: dict[str, Any] = dict(
        criterion=criterion, steps=int(params.get("steps", default["steps"])), min_channels=s.min_channels,
        round_to=s.round_to, calib_batches=cfg.train.calib_batches, calib_batch_size=cfg.train.batch_size,
        recalib_batches=s.recalib_batches, max_drop_pts=s.max_drop_pts,
    )  # fmt: skip
    target = params.get(TARGET_KEY)  # budget-exact trial (search.targets)
    if params.get("baseline") == "global" and target is not None:
        spec = PruneSpec(target_macs=target_macs(target, base.metrics["macs"]), ranking="global", **common)
    elif params.get("baseline") in BASELINES and target is None:
        spec = PruneSpec(ratio=float(params["ratio"]), ranking=str(params["baseline"]), **common)
    else:
        ratios = trial_ratios(cfg, params, base)
        add = grow_counts(ratios, dict(zip(base.group_names, base.widths)), s.round_to)
        if add and resume is None:
            if not s.grow:
                g = next(iter(add))
                raise UsageError(f"ratio {ratios[g]} > 1 for group {g!r} needs search.grow: true")
            method = str(params.get("grow_method", default["grow_method"]))
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


def run_scratch(
    data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], base: BaseArtifacts, on_epoch: EpochRows
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
    ratios = trial_ratios(cfg, params, base)
    widths = dict(zip(base.group_names, base.widths))
    shrink = {g: r for g, r in ratios.items() if r < 1.0}
    if shrink:
        zeros = {g: torch.zeros(widths[g]) for g in shrink}
        keep = keep_by_ratios(zeros, shrink, min_channels=s.min_channels, round_to=s.round_to)
        GroupGraph(model, x).prune({g: sorted(k) for g, k in keep.items()})
    add = grow_counts(ratios, widths, s.round_to)
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


def run_adaptive(
    model: nn.Module, data: DataBundle, cfg: ExperimentConfig, params: Mapping[str, Any], on_epoch: EpochRows,
    base_macs: float,
) -> nn.Module:
    """The online grow/prune loop with the sampled knobs; returns the resulting model.

    Starts from the base model's copy, or from random weights with ``adaptive.from_scratch``
    (then the search phase trains at ``train.lr``, else at the finetune LR: the base is
    already trained). Budget: ``adaptive_budget``; the final model never exceeds it.
    """
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
    result = adaptive_loop(model, data, search_cfg, adaptive_cfg, on_epoch=on_epoch,
                          on_finetune=lambda search_epochs: on_epoch.final_after(search_epochs, epochs))
    on_epoch.train_macs = int(result.train_macs)  # its own count: widths change within epochs
    log.info("adaptive loop: %s after %d epochs", result.stop_reason or "ran all epochs", result.epochs)
    return result.model

