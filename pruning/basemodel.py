"""The trained dense model every pruning trial starts from: trained once, cached by a hash of its recipe."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from pruning.models import create_model
from pruning.train import EpochMetrics, TrainConfig, load_checkpoint, save_checkpoint, train

log = logging.getLogger(__name__)


def recipe_hash(model_name: str, data_key: dict[str, Any], cfg: TrainConfig, width_mult: float = 1.0) -> str:
    """Short stable hash of everything that determines the base model's weights (device excluded).

    ``cfg.seed`` seeds both the initial weights and the batch order, so it is covered.
    """
    recipe = {"model": model_name, "data": data_key, "train": {**asdict(cfg), "device": None}, "width_mult": width_mult}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def get_base_model(
    model_name: str,
    data: Any,
    cfg: TrainConfig,
    *,
    data_key: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    width_mult: float = 1.0,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
) -> tuple[nn.Module, Path | None]:
    """Load ``checkpoint``, or the cached base model for this recipe, or train it (and cache it).

    Returns the model (in train mode, on CPU) and the path of the checkpoint it came from or
    was saved to (``None`` when nothing was cached). ``on_epoch(metrics, model)`` is called
    after every training epoch (progress; never called for a loaded model).
    """
    if checkpoint is not None:
        return load_checkpoint(checkpoint)["model"], Path(checkpoint)
    cached = None
    if cache_dir is not None:
        key = recipe_hash(model_name, data_key or {"name": data.name}, cfg, width_mult)
        cached = Path(cache_dir) / f"base-{key}.pt"
        if cached.is_file():
            log.info("base model: using cached %s", cached)
            return load_checkpoint(cached)["model"], cached
    in_channels = data.input_shape[0]
    # Initial weights from the recipe's seed, not from whatever the process drew before.
    model = create_model(model_name, num_classes=data.num_classes, in_channels=in_channels, width_mult=width_mult,
                         seed=cfg.seed)
    log.info("base model: training %s for %d epochs", model_name, cfg.epochs)
    train(model, data, cfg, on_epoch=on_epoch)
    model.cpu()
    if cached is not None:
        save_checkpoint(cached, model, recipe=model_name)
    return model, cached
