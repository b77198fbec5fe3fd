"""Class folders of images (``root/<class>/*.png|jpg|jpeg``, optionally under train/val/test)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pruning.data.images import image_shape, image_split
from pruning.data.loading import DATASETS, require_root
from pruning.data.splits import DataBundle, make_bundle
from pruning.data.stratify import stratified_split, stratified_take
from pruning.errors import UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


_IMAGEFOLDER_EXPECTED = (
    "expected class folders of images ({where}/<class>/*.png|jpg|jpeg), or the same under {where}/train "
    "(and optionally {where}/val, {where}/test)"
)


def _scan_classes(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image paths and labels under ``folder/<class>/``.

    With ``classes`` None the classes are the sorted sub-folders that hold images;
    otherwise every sub-folder must be one of ``classes`` and labels index into it.
    """
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if images:
            found[sub.name] = images
        else:
            log.warning("imagefolder: %s holds no .png/.jpg/.jpeg images; ignored", sub)
    names = sorted(found) if classes is None else list(classes)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise UsageError(
            f"{folder / unknown[0]} is not a class of the training folder; choose one of: {', '.join(names)}"
        )
    paths = [p for name in names for p in found.get(name, [])]
    labels = np.array([k for k, name in enumerate(names) for _ in found.get(name, [])], dtype=np.int64)
    return names, paths, labels


@DATASETS.register("imagefolder")
def _imagefolder(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """Class folders of images, classes sorted by name, at the images' own size and channel
    count (1 if all are grayscale, else RGB); with ``image_size`` resized and centre-cropped
    to image_size x image_size. Without ``image_size`` all images must have one size.

    With ``root/train`` the given ``val``/``test`` folders are used and a missing one is
    carved from train (seeded, stratified, 15% each); without it, a 70/15/15 split.
    """
    base = require_root(root, "imagefolder", _IMAGEFOLDER_EXPECTED.format(where="<root>"))
    expected = _IMAGEFOLDER_EXPECTED.format(where=base)
    layout = base / "train" if (base / "train").is_dir() else base
    classes, paths, labels = _scan_classes(layout)
    if not paths:
        raise UsageError(f"no images found under {layout}; {expected}")
    given: dict[str, tuple[list[Path], np.ndarray]] = {}
    if layout != base:
        for name in ("val", "test"):
            if (base / name).is_dir():
                _, split_paths, split_labels = _scan_classes(base / name, classes)
                if split_paths:
                    given[name] = (split_paths, split_labels)
    carve = [name for name in ("val", "test") if name not in given]
    if len(paths) < len(carve) + 1:
        raise UsageError(f"only {len(paths)} images under {layout}: too few to carve {' and '.join(carve)} from")
    rest, *carved = stratified_split(labels, [0.15] * len(carve), seed)
    for name, index in zip(carve, carved, strict=True):
        given[name] = ([paths[i] for i in index], labels[index])
    if limit is not None and len(rest) > limit:  # before decoding: do not read what is dropped
        rest = rest[stratified_take(labels[rest], limit, np.random.default_rng(seed))]
    train_paths = [paths[i] for i in rest]
    shape = image_shape([*train_paths, *given["val"][0], *given["test"][0]], image_size, base)
    resize = image_size is not None
    started = time.perf_counter()
    train = image_split(train_paths, labels[rest], shape, resize)
    val, test = (image_split(*given[name], shape, resize) for name in ("val", "test"))
    log.info("imagefolder: loaded %d images of %d classes from %s in %.1f s",
             len(train) + len(val) + len(test), len(classes), base, time.perf_counter() - started)  # fmt: skip
    return make_bundle("imagefolder", train, val, test, len(classes), classes)
