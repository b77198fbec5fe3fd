"""The ``DATASETS`` registry, :func:`load_data` over it, and the checks loaders share."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from pruning.data.splits import DataBundle, subset
from pruning.data.stratify import stratified_split, stratified_take
from pruning.errors import UsageError
from pruning.registry import Registry

log = logging.getLogger(__name__)


class DatasetLoader(Protocol):
    """What a ``DATASETS`` entry is: builds a bundle; ``image_size`` None means its default.

    A loader may apply ``limit`` itself (to avoid decoding images it would drop);
    :func:`load_data` applies it to whatever comes back.
    """

    def __call__(
        self, *, root: Path | None, seed: int, image_size: int | None, limit: int | None
    ) -> DataBundle: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_data(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    image_size: int | None = None,
    limit: int | None = None,
    val_limit: int | None = None,
    select_fraction: float | None = None,
) -> DataBundle:
    """Load dataset ``name`` from ``DATASETS`` as seeded train/val/test splits.

    ``root`` is the directory of the dataset's files (for those that need files);
    ``image_size`` is the side of the square images in pixels (None: the dataset's
    default; for ``imagefolder`` the images' own size); ``limit`` keeps at most that many
    training samples and ``val_limit`` at most that many validation samples (seeded,
    stratified subsets, for CPU runs; test is never cut). ``select_fraction`` in (0, 0.5]
    moves that share of the (limited) training samples, seeded and stratified, into
    ``bundle.select``, the selection split that nothing trains on. The same ``seed`` gives
    identical splits. Raises :class:`UsageError` for an unknown name, missing/invalid files
    or a bad size or fraction.
    """
    loader = DATASETS[name]
    if image_size is not None and image_size < 1:
        raise UsageError(f"image_size must be a positive number of pixels, got {image_size}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be a positive number of training samples, got {limit}")
    if val_limit is not None and val_limit < 1:
        raise UsageError(f"val_limit must be a positive number of validation samples, got {val_limit}")
    check_select_fraction(select_fraction)
    path = Path(root).expanduser() if root is not None else None
    started = time.perf_counter()
    bundle = loader(root=path, seed=seed, image_size=image_size, limit=limit)
    if limit is not None and len(bundle.train) > limit:
        keep = stratified_take(bundle.train.y.numpy(), limit, np.random.default_rng(seed))
        bundle = replace(bundle, train=subset(bundle.train, keep))
    if val_limit is not None and len(bundle.val) > val_limit:
        keep = stratified_take(bundle.val.y.numpy(), val_limit, np.random.default_rng(seed + 1))
        bundle = replace(bundle, val=subset(bundle.val, keep))
    if select_fraction is not None:
        rest, chosen = stratified_split(bundle.train.y.numpy(), [select_fraction], seed + 2)
        bundle = replace(bundle, train=subset(bundle.train, rest), select=subset(bundle.train, chosen))
    log.info(
        "dataset %s: %d train / %d val / %d test / %d select, %d classes, input %s (%.1f s)",
        name, len(bundle.train), len(bundle.val), len(bundle.test),
        len(bundle.select) if bundle.select is not None else 0, bundle.num_classes,
        "x".join(map(str, bundle.input_shape)), time.perf_counter() - started,
    )  # fmt: skip
    return bundle


def check_select_fraction(fraction: float | None) -> None:
    """A selection-split fraction must be None (no split) or in (0, 0.5]."""
    if fraction is not None and not (0.0 < fraction <= 0.5):
        raise UsageError(
            f"select_fraction must be in (0, 0.5] (a share of the training samples held out for the final pick), "
            f"got {fraction}"
        )


def dataset_line(data: DataBundle, root: str | os.PathLike[str] | None = None) -> str:
    """One line for users: name, ``root``, split sizes, input shape and classes, e.g.
    ``data: imagefolder /path — train 800 / val 200 / test 200, input 1×32×32, 10 classes``."""
    where = f" {root}" if root is not None else ""
    shape = "×".join(map(str, data.input_shape))
    select = f" / select {len(data.select)}" if data.select is not None else ""
    return (
        f"data: {data.name}{where} — train {len(data.train)} / val {len(data.val)} / test {len(data.test)}{select}, "
        f"input {shape}, {data.num_classes} classes"
    )


def require_root(root: Path | None, dataset: str, expected: str) -> Path:
    """``root`` as an existing directory, or a UsageError saying what belongs there."""
    if root is None:
        raise UsageError(
            f"dataset {dataset!r} needs a data directory: set root (data.root in a config, --root on the "
            f"command line); {expected}"
        )
    if not root.is_dir():
        raise UsageError(f"data root {root} for dataset {dataset!r} is not a directory; {expected}")
    return root


def one_line(error: BaseException) -> str:
    """An exception's message on one line (for a ``UsageError`` naming a bad file)."""
    return " ".join(str(error).split()) or type(error).__name__
