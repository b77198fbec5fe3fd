"""Oxford 102 Flowers in torchvision's on-disk layout, with the official train/val/test ids."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pruning.data.images import image_split
from pruning.data.loading import DATASETS, one_line, require_root
from pruning.data.splits import DataBundle, make_bundle
from pruning.data.stratify import stratified_take
from pruning.errors import UsageError

log = logging.getLogger(__name__)


_FLOWERS_EXPECTED = (
    "expected flowers-102/ with jpg/image_00001.jpg..., imagelabels.mat and setid.mat: download "
    "102flowers.tgz, imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ "
    "and extract/copy them into {where}/flowers-102"
)


def _read_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The flattened int64 arrays ``keys`` of a MATLAB file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    expected = _FLOWERS_EXPECTED.format(where=path.parent.parent)
    if not path.is_file():
        raise UsageError(f"{path} not found; {expected}")
    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError, MatReadError) as e:
        raise UsageError(f"cannot read {path} ({one_line(e)}); {expected}") from e
    missing = [k for k in keys if k not in mat]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)}; {expected}")
    return {k: np.asarray(mat[k]).ravel().astype(np.int64) for k in keys}


@DATASETS.register("flowers102")
def _flowers102(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """Oxford 102 Flowers, official splits (1020/1020/6149), RGB resized to ``image_size`` (64)."""
    base = require_root(root, "flowers102", _FLOWERS_EXPECTED.format(where="<root>"))
    folder = base / "flowers-102" if (base / "flowers-102").is_dir() else base
    expected = _FLOWERS_EXPECTED.format(where=folder.parent)
    if not (folder / "jpg").is_dir():
        raise UsageError(f"{folder / 'jpg'} not found; {expected}")
    labels = _read_mat(folder / "imagelabels.mat", ("labels",))["labels"] - 1  # files are 1-based
    ids = _read_mat(folder / "setid.mat", ("trnid", "valid", "tstid"))
    if len(labels) and (labels.min() < 0 or labels.max() >= 102):
        raise UsageError(f"{folder / 'imagelabels.mat'} has labels outside 1..102")
    for key, image_ids in ids.items():
        if len(image_ids) and (image_ids.min() < 1 or image_ids.max() > len(labels)):
            raise UsageError(f"{folder / 'setid.mat'} {key} has image ids outside 1..{len(labels)}")
    train_ids = ids["trnid"]
    if limit is not None and len(train_ids) > limit:  # before decoding: do not read what is dropped
        train_ids = train_ids[stratified_take(labels[train_ids - 1], limit, np.random.default_rng(seed))]
    size = image_size or 64
    started = time.perf_counter()
    splits = []
    for image_ids in (train_ids, ids["valid"], ids["tstid"]):
        paths = [folder / "jpg" / f"image_{i:05d}.jpg" for i in image_ids]
        splits.append(image_split(paths, labels[image_ids - 1], (3, size, size)))
    log.info("flowers102: decoded %d images from %s in %.1f s", sum(map(len, splits)), folder,
             time.perf_counter() - started)  # fmt: skip
    return make_bundle("flowers102", *splits, num_classes=102)
