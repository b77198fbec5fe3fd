"""The base model every trial of an experiment starts from: trained once, measured, shared.

``prepare_base`` trains it (or loads ``model.checkpoint``, or the cache
``<exp_dir>/base-<hash>.pt``), measures it and lists its prunable groups; the result is a
picklable :class:`BaseArtifacts` the tuner hands to every trial (Ray: one ``ray.put``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pruning.basemodel import get_base_model, recipe_hash
from pruning.measure import measure
from pruning.surgery import GroupGraph
from pruning.train import EpochMetrics, TrainConfig, resolve_device
from search.config import ExperimentConfig
from search.trial.materialize import data_key, experiment_data

__all__ = ["LATENCY_RUNS", "BaseArtifacts", "base_cache_path", "base_train_config", "prepare_base"]

log = logging.getLogger(__name__)

#: Timed forward passes per latency measurement (median); small: a trial measures once.
LATENCY_RUNS = 5


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

