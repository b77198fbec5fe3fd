"""What a config materialises into: its dataset, its (untrained) model and the model's groups.

The search space (``search.study.space``) and the trial both read them from here; the trial
never imports the space (it would load Optuna). The dataset is memoised per process (one
entry): a driver asks for it for the search space and again for the base model, and a Ray
worker that runs several trials loads it once.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.data import DataBundle, load_data
from pruning.models import create_model
from pruning.surgery import GroupGraph
from pruning.train import load_checkpoint
from search.config import ExperimentConfig


def data_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything that decides the dataset's content (part of the base model's cache key).

    ``root`` only counts for ``imagefolder``, whose content *is* the directory; the
    registered datasets are the same files wherever they live.
    """
    d = cfg.data
    key: dict[str, Any] = {"name": d.name, "image_size": d.image_size, "limit": d.limit, "seed": cfg.experiment.seed}
    if d.val_limit is not None:  # only when set: keys (cache names) of configs without it stay the same
        key["val_limit"] = d.val_limit
    if d.select_fraction is not None:  # the base model trains on train minus the selection split
        key["select_fraction"] = d.select_fraction
    if d.name == "imagefolder":
        key["root"] = d.root
        if d.image_size is None:  # images at their own size since issue 12 (they were 64x64 RGB before)
            key["image_size"] = "native"
    return key


@functools.lru_cache(maxsize=1)
def _load(name: str, root: str | None, seed: int, image_size: int | None, limit: int | None,
          val_limit: int | None = None, select_fraction: float | None = None) -> DataBundle:
    return load_data(name, root=root, seed=seed, image_size=image_size, limit=limit, val_limit=val_limit,
                     select_fraction=select_fraction)


def experiment_data(cfg: ExperimentConfig) -> DataBundle:
    """The experiment's dataset (train/val/test, and ``select`` with ``data.select_fraction``:
    carved from train, so neither the base model nor a trial trains on it), loaded once per process."""
    d = cfg.data
    # One cache entry for a relative root and the absolute one the search passes on.
    root = str(Path(d.root).expanduser().resolve()) if d.root is not None else None
    return _load(d.name, root, cfg.experiment.seed, d.image_size, d.limit, d.val_limit, d.select_fraction)


def untrained_model(cfg: ExperimentConfig, data: DataBundle, seed: int | None = None) -> nn.Module:
    """``cfg.model`` with random weights drawn from ``seed`` (default ``experiment.seed``), sized for ``data`` (CPU).

    Seeded on its own generator: the weights of an adaptive trial's from-scratch model do
    not depend on what earlier trials in a reused Ray worker drew from the global RNG.
    """
    return create_model(
        cfg.model.name, num_classes=data.num_classes, in_channels=data.input_shape[0], width_mult=cfg.model.width_mult,
        seed=cfg.experiment.seed if seed is None else seed,
    )


def model_for_groups(cfg: ExperimentConfig) -> tuple[nn.Module, torch.Tensor]:
    """The model whose groups the search is over (the checkpoint if one is given) and an example input."""
    data = experiment_data(cfg)
    if cfg.model.checkpoint is not None:
        model = load_checkpoint(cfg.model.checkpoint)["model"]
    else:
        model = untrained_model(cfg, data)
    return model, data.example_input()


def group_names(cfg: ExperimentConfig) -> list[str]:
    """Prunable channel groups of ``cfg.model`` on ``cfg.data``'s input, in model order.

    Builds the model untrained (or loads ``model.checkpoint``); no training.
    """
    model, x = model_for_groups(cfg)
    return GroupGraph(model, x).names()
