"""Fashion-MNIST from the four IDX files (gzipped or raw) of Debian's ``dataset-fashion-mnist``.

Files come from ``root`` or, without one, from :data:`FASHION_MNIST_DIR`; val is a seeded
stratified 10% of the official 60k training set, test the official 10k.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from pruning.data.images import resize_uint8
from pruning.data.loading import DATASETS, one_line
from pruning.data.splits import DataBundle, Split, make_bundle, subset
from pruning.data.stratify import stratified_split
from pruning.errors import UsageError

FASHION_MNIST_MEAN = (0.2860,)  # of the 60k official training images, 0-1 units
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package puts the files


_FASHION_FILES = {  # split -> (images, labels) file names, each also accepted with ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_HINT = (
    "install Debian's package (apt-get install dataset-fashion-mnist, files land in {default}) "
    "or set root (data.root in a config, --root on the command line) to a folder with "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file (LeCun's MNIST format), gzipped or raw.

    Header: two zero bytes, the type code 0x08 (unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32; the data follows.
    """
    try:
        with path.open("rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UsageError(f"cannot read {path} ({one_line(e)})") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] < 1:
        raise UsageError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    start = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)) if len(raw) >= start else ()
    if len(dims) != ndim or len(raw) - start != math.prod(dims):
        held = max(0, len(raw) - start)
        raise UsageError(f"{path} is truncated or too long: header says {dims}, file holds {held} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _fashion_folder(root: Path | None) -> Path:
    """``root`` (or its ``fashion-mnist/`` sub-folder) if given, else Debian's directory."""
    if root is None:
        return FASHION_MNIST_DIR
    return root / "fashion-mnist" if (root / "fashion-mnist").is_dir() else root


def _fashion_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,1,H,W uint8) and labels (N int64) of the official ``split``."""
    arrays = []
    for name in _FASHION_FILES[split]:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path is None:
            raise UsageError(
                f"fashion_mnist: no {name}[.gz] in {folder}; " + _FASHION_HINT.format(default=FASHION_MNIST_DIR)
            )
        arrays.append((path, read_idx(path)))
    (image_path, x), (label_path, y) = arrays
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise UsageError(
            f"{image_path} ({x.shape}) and {label_path} ({y.shape}) are not N images of HxW with N labels"
        )
    if len(y) and int(y.max()) >= 10:
        raise UsageError(f"{label_path} has labels outside 0..9")
    return x[:, None], y.astype(np.int64)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """Fashion-MNIST (Xiao et al. 2017): 1x28x28, 10 classes; val = seeded stratified 10% of train."""
    folder = _fashion_folder(root)
    if root is not None and not folder.is_dir():
        raise UsageError(f"data root {folder} for dataset 'fashion_mnist' is not a directory; "
                         + _FASHION_HINT.format(default=FASHION_MNIST_DIR))  # fmt: skip
    x, y = _fashion_split(folder, "train")
    x_test, y_test = _fashion_split(folder, "test")
    if x.shape[1:] != x_test.shape[1:]:
        raise UsageError(
            f"fashion_mnist: train images are {x.shape[2:]} but test images {x_test.shape[2:]} in {folder}"
        )
    train, val = stratified_split(y, (0.1,), seed)  # val is carved before any limit: same val at every limit
    tx, tx_test = torch.from_numpy(x.copy()), torch.from_numpy(x_test.copy())  # frombuffer arrays are read-only
    if image_size is not None and image_size != tx.shape[-1]:
        tx, tx_test = resize_uint8(tx, image_size), resize_uint8(tx_test, image_size)
    full = Split(tx, torch.from_numpy(y), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    test = Split(tx_test, torch.from_numpy(y_test), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return make_bundle("fashion_mnist", subset(full, train), subset(full, val), test, 10)
