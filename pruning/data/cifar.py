"""CIFAR-10 and CIFAR-100 from their "python version" pickles (loaded without running code).

Val is a seeded stratified 10% of the official training set, test the official test batch.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning.data.images import resize_uint8
from pruning.data.loading import DATASETS, one_line, require_root
from pruning.data.splits import DataBundle, Split, make_bundle, subset
from pruning.data.stratify import stratified_split
from pruning.errors import UsageError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class _CifarFormat:
    name: str
    folder: str  # what the archive extracts to
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    archive: str

    def expected(self, where: Path | str) -> str:
        files = ", ".join((*self.train_files, self.test_file))
        return (
            f"expected {self.folder}/ with {files}: download {self.archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {where}"
        )


_CIFAR10 = _CifarFormat(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
    "labels", 10, CIFAR10_MEAN, CIFAR10_STD, "cifar-10-python.tar.gz",
)  # fmt: skip
_CIFAR100 = _CifarFormat(
    "cifar100", "cifar-100-python", ("train",), "test", "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD,
    "cifar-100-python.tar.gz",
)  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what CIFAR batches hold (dicts, lists, bytes, numpy arrays).

    A pickle can name any callable; refusing all others means a tampered download
    cannot run code.
    """

    _ALLOWED = frozenset(
        {
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):  # pickles written by numpy < 2
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, fmt: _CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N,3,32,32 uint8) and labels (N int64) of one CIFAR pickle."""
    if not path.is_file():
        raise UsageError(f"{path} not found; {fmt.expected(path.parent.parent)}")
    try:
        with path.open("rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UsageError(f"cannot read CIFAR batch {path} ({one_line(e)}); {fmt.expected(path.parent.parent)}") from e
    if isinstance(entry, dict):  # keys are bytes in the real files, str if re-pickled by Python 3
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get(fmt.label_key) if isinstance(entry, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels is None
        or len(labels) != len(data)
    ):
        raise UsageError(
            f"{path} is not a CIFAR batch (a dict with b'data' uint8 N x 3072 and b'{fmt.label_key}'); "
            f"{fmt.expected(path.parent.parent)}"
        )
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() >= fmt.num_classes):
        raise UsageError(f"{path} has labels outside 0..{fmt.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar(
    fmt: _CifarFormat, *, root: Path | None, seed: int, image_size: int | None, limit: int | None
) -> DataBundle:
    """The official train files minus a seeded stratified 10% (val), and the official test file."""
    base = require_root(root, fmt.name, fmt.expected("<root>"))
    folder = base / fmt.folder
    if not (folder / fmt.test_file).is_file() and (base / fmt.test_file).is_file():
        folder = base  # root is the extracted folder itself
    if not folder.is_dir():
        raise UsageError(f"no {fmt.folder}/ under {base}; {fmt.expected(base)}")
    parts = [_read_cifar_batch(folder / name, fmt) for name in fmt.train_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(folder / fmt.test_file, fmt)
    train, val = stratified_split(y, (0.1,), seed)
    size = image_size or 32
    tx, tx_test = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(x_test))
    if size != 32:
        tx, tx_test = resize_uint8(tx, size), resize_uint8(tx_test, size)
    full = Split(tx, torch.from_numpy(y), fmt.mean, fmt.std)
    test = Split(tx_test, torch.from_numpy(y_test), fmt.mean, fmt.std)
    return make_bundle(fmt.name, subset(full, train), subset(full, val), test, fmt.num_classes)


DATASETS.register("cifar10")(partial(_load_cifar, _CIFAR10))
DATASETS.register("cifar100")(partial(_load_cifar, _CIFAR100))
