"""Datasets that need no files: scikit-learn's ``digits`` and seeded ``synthetic`` images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pruning.data.loading import DATASETS
from pruning.data.splits import DataBundle, Split, make_bundle, subset
from pruning.data.stratify import stratified_split

SYNTHETIC_SIZES = (512, 128, 128)  # train, val, test samples
SYNTHETIC_CLASSES = 10


@DATASETS.register("digits")
def _digits(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """scikit-learn's 1797 8x8 digits, bilinear to ``image_size`` (16), stratified 60/20/20."""
    from sklearn.datasets import load_digits

    size = image_size or 16
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values are 0..16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = np.asarray(raw.target, dtype=np.int64)
    train, test, val = stratified_split(y, (0.2, 0.2), seed)
    train_x = x[torch.from_numpy(train)]
    x = (x - train_x.mean()) / train_x.std()  # statistics of the training split only
    split = Split(x, torch.from_numpy(y))
    return make_bundle("digits", subset(split, train), subset(split, val), subset(split, test), 10)


@DATASETS.register("synthetic")
def _synthetic(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """Seeded 3xSxS noise plus a smooth per-class pattern (S = ``image_size``, 32): learnable."""
    size = image_size or 32
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(SYNTHETIC_CLASSES, 3, 4, 4, generator=generator)
    patterns = 0.5 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def make(n: int) -> Split:
        y = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=generator)
        return Split(torch.randn(n, 3, size, size, generator=generator) + patterns[y], y)

    train, val, test = (make(n) for n in SYNTHETIC_SIZES)
    return make_bundle("synthetic", train, val, test, SYNTHETIC_CLASSES)
