"""What ``search_vs_baselines.py`` runs: the design constants and :class:`Settings` (shared with
its report, :mod:`svb_report`)."""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "small_vgg"
DATASET = "fashion_mnist"
ZHANG = ("taylor_guided", "attribution", "attribution_iba")
FORWARDS = 3  # a training step costs ~3 forward passes (pruning.adaptive.TRAIN_STEP_FORWARDS)
# Distillation (Hinton et al. 2015): the fixed recipe's alpha and T are the middle of the ranges the
# search may choose from (DISTILL_RANGES), not tuned to this data.
DISTILL_RANGES = {"distill_alpha": (0.5, 0.9), "distill_temperature": (2.0, 6.0)}
DISTILL_ALPHA, DISTILL_T = (sum(DISTILL_RANGES["distill_alpha"]) / 2, sum(DISTILL_RANGES["distill_temperature"]) / 2)


@dataclass(frozen=True)
class Settings:
    image_size: int = 16
    limit: int = 4000
    val_limit: int = 1000
    base_epochs: int = 15
    finetune_epochs: int = 5
    search_trials: int = 24
    search_epochs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.3, 0.1)
    lr: float = 0.05
    finetune_lr: float = 0.01
    batch_size: int = 64
    iter_steps: int = 3
    calib_batches: int = 4  # (c): batches of 64 scored per step (attribution_iba optimises per batch: costly)
    workers: int = 2


QUICK = Settings(limit=600, val_limit=300, base_epochs=3, finetune_epochs=3, search_trials=4, search_epochs=1, calib_batches=1,
                 seeds=(0,))
