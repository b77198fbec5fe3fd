"""Dataset registry and loaders: seeded train/val/test splits held in memory as tensors.

``load_data(name, root=..., seed=..., image_size=..., limit=..., val_limit=...)`` returns a
:class:`DataBundle`. Registered names (``DATASETS``):

* ``digits``: scikit-learn's bundled 8x8 digits (no files needed) upsampled to 16x16,
  seeded stratified 60/20/20 split. The demo and test dataset.
* ``cifar10`` / ``cifar100``: the "python version" pickles; val is a seeded stratified
  10% of the official training set, test is the official test batch.
* ``fashion_mnist``: the four IDX files (gzipped or raw) of Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or of ``root``; val is
  a seeded stratified 10% of the official 60k training set, test the official 10k.
* ``flowers102``: torchvision's on-disk layout, the official train/val/test ids.
* ``imagefolder``: ``root/<class>/*.png|jpg|jpeg``, or the same under ``root/train``
  (plus optional ``root/val``, ``root/test``). Images keep their own size and channel
  count (grayscale stays 1 channel) unless ``image_size`` is given.
* ``synthetic``: seeded random images with a class-dependent pattern, for speed tests.

Val is what a search optimises; test is only reported. Images are stored as uint8 and
normalised per batch on the device (``(x/255 - mean)/std``); ``digits`` and
``synthetic`` are stored as float32, already normalised. :meth:`Split.batches` moves a
split to the device once and slices batches there: no DataLoader, no worker processes,
augmentation (random crop + horizontal flip) runs on the batch tensor.

Held-out splits are stratified by class with exact sizes ``ceil(fraction * N)``
(largest-remainder quotas per class), so ``digits`` gives 1077/360/360 images.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pruning.errors import UsageError
from pruning.registry import Registry

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)  # of the 60k official training images, 0-1 units
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package puts the files
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grayscale images: the ImageNet statistics averaged over the three channels.
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SYNTHETIC_SIZES = (512, 128, 128)  # train, val, test samples
SYNTHETIC_CLASSES = 10


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class Split:
    """One split held in memory: ``x`` is N,C,H,W, ``y`` is N int64 class indices.

    ``x`` is uint8 pixels (0-255) with per-channel ``mean``/``std`` (in 0-1 units), or
    float32 already normalised (``mean``/``std`` None). Equality and hashing are by
    identity (tensors have no truth value).
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # device -> (x, y) copies, made by the first batches() call for that device
    _resident: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"Split.x must be N,C,H,W; got shape {tuple(self.x.shape)}")
        if self.y.ndim != 1 or len(self.y) != len(self.x) or self.y.dtype != torch.int64:
            raise ValueError(f"Split.y must be int64 of length {len(self.x)}; got {self.y.dtype} {tuple(self.y.shape)}")
        channels = self.x.shape[1]
        if self.x.dtype == torch.uint8:
            if self.mean is None or self.std is None or len(self.mean) != channels or len(self.std) != channels:
                raise ValueError(f"uint8 Split.x needs mean and std with {channels} values each")
        elif self.x.dtype == torch.float32:
            if self.mean is not None or self.std is not None:
                raise ValueError("float32 Split.x is already normalised: mean and std must be None")
        else:
            raise ValueError(f"Split.x must be uint8 or float32, got {self.x.dtype}")

    def __len__(self) -> int:
        return len(self.y)

    def __getstate__(self) -> dict[str, Any]:
        # pickling (Ray's object store, deepcopy) carries the data, not the device copies
        return {**self.__dict__, "_resident": {}}

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        augment: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches on ``device``: x float32 normalised B,C,H,W, y int64 B.

        The whole split is copied to ``device`` once and cached there. ``shuffle`` draws
        the order from a ``torch.Generator`` seeded with ``seed``; ``augment`` applies a
        random crop (zero padding of ``max(1, size // 8)`` pixels, 4 for 32x32, applied
        after normalisation) and a horizontal flip with probability 0.5, drawn from the
        same generator, so the same seed gives the same epoch on any device. Without
        ``drop_last`` every sample is yielded exactly once; with it, the last partial
        batch is skipped.
        """
        if batch_size < 1:  # checked here, not at the first next()
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        return self._iterate(batch_size, shuffle, seed, device, augment, drop_last)

    def _iterate(
        self, batch_size: int, shuffle: bool, seed: int, device: str | torch.device, augment: bool, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self._on(device)
        dev = x.device
        generator = torch.Generator().manual_seed(seed)
        n = len(self)
        order = (torch.randperm(n, generator=generator) if shuffle else torch.arange(n)).to(dev)
        scale = shift = None
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            scale, shift = (1.0 / (255.0 * std)).to(dev), (mean / std).to(dev)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]  # a copy: callers may modify it in place
            if scale is not None and shift is not None:
                xb = xb.to(torch.float32).mul_(scale).sub_(shift)
            if augment:
                xb = _crop_flip(xb, generator)
            yield xb, y[idx]

    def _on(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = torch.device(device)
        if key.type == "cuda" and key.index is None:
            key = torch.device("cuda", torch.cuda.current_device())
        if key not in self._resident:
            self._resident[key] = (self.x.to(key), self.y.to(key))
        return self._resident[key]


def _crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop from a zero-padded batch plus random horizontal flip, per sample."""
    b, c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # b,h
    cols = dx[:, None] + torch.arange(w, device=dev)  # b,w
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip is a reversed column index
    return padded[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A dataset's three splits plus what a model needs to know about them.

    ``input_shape`` is C,H,W of one sample as :meth:`Split.batches` yields it (pixels);
    ``class_names`` lists the class of each label index where the data has names
    (``imagefolder``), else it is empty.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split_name in ("train", "val", "test"):
            split: Split = getattr(self, split_name)
            if tuple(split.x.shape[1:]) != self.input_shape:
                raise ValueError(f"{split_name} samples are {tuple(split.x.shape[1:])}, expected {self.input_shape}")
            if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= self.num_classes):
                raise ValueError(f"{split_name} labels fall outside 0..{self.num_classes - 1}")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape (batch, C, H, W), e.g. for tracing a model or counting MACs."""
        return torch.zeros(batch, *self.input_shape)


def _bundle(
    name: str, train: Split, val: Split, test: Split, num_classes: int, class_names: Sequence[str] = ()
) -> DataBundle:
    c, h, w = train.x.shape[1:]
    return DataBundle(name, train, val, test, num_classes, (c, h, w), tuple(class_names))


def _subset(split: Split, index: np.ndarray) -> Split:
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Split(split.x[idx], split.y[idx], split.mean, split.std)


def _stratified_take(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` samples of ``y``, each class in proportion to its count.

    Per-class quotas are ``n * count / len(y)`` rounded by largest remainder (ties broken
    at random), so the total is exactly ``n`` and every class is within one of its share.
    """
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = n * counts / len(y)
    take = np.minimum(np.floor(quota).astype(np.int64), counts)
    short = n - int(take.sum())
    if short > 0:
        order = np.lexsort((rng.permutation(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(inverse == k))[:t] for k, t in enumerate(take)]
    return np.sort(np.concatenate([*chosen, np.empty(0, np.int64)]))


def _stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``[rest, part_1, ...]``, seeded and stratified.

    ``part_i`` holds ``ceil(fractions[i] * len(y))`` samples; ``rest`` is what remains.
    """
    rng = np.random.default_rng(seed)
    remaining = np.arange(len(y))
    parts = []
    for fraction in fractions:
        n = math.ceil(round(fraction * len(y), 6))
        pick = _stratified_take(y[remaining], n, rng)
        parts.append(remaining[pick])
        remaining = np.delete(remaining, pick)
    return [remaining, *parts]


# --------------------------------------------------------------------------- registry


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
) -> DataBundle:
    """Load dataset ``name`` from ``DATASETS`` as seeded train/val/test splits.

    ``root`` is the directory of the dataset's files (for those that need files);
    ``image_size`` is the side of the square images in pixels (None: the dataset's
    default; for ``imagefolder`` the images' own size); ``limit`` keeps at most that many
    training samples and ``val_limit`` at most that many validation samples (seeded,
    stratified subsets, for CPU runs; test is never cut). The same ``seed`` gives identical splits.
    Raises :class:`UsageError` for an unknown name or missing/invalid files.
    """
    loader = DATASETS[name]
    if image_size is not None and image_size < 1:
        raise UsageError(f"image_size must be a positive number of pixels, got {image_size}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be a positive number of training samples, got {limit}")
    if val_limit is not None and val_limit < 1:
        raise UsageError(f"val_limit must be a positive number of validation samples, got {val_limit}")
    path = Path(root).expanduser() if root is not None else None
    started = time.perf_counter()
    bundle = loader(root=path, seed=seed, image_size=image_size, limit=limit)
    if limit is not None and len(bundle.train) > limit:
        keep = _stratified_take(bundle.train.y.numpy(), limit, np.random.default_rng(seed))
        bundle = replace(bundle, train=_subset(bundle.train, keep))
    if val_limit is not None and len(bundle.val) > val_limit:
        keep = _stratified_take(bundle.val.y.numpy(), val_limit, np.random.default_rng(seed + 1))
        bundle = replace(bundle, val=_subset(bundle.val, keep))
    log.info(
        "dataset %s: %d train / %d val / %d test, %d classes, input %s (%.1f s)",
        name, len(bundle.train), len(bundle.val), len(bundle.test), bundle.num_classes,
        "x".join(map(str, bundle.input_shape)), time.perf_counter() - started,
    )  # fmt: skip
    return bundle


def dataset_line(data: DataBundle, root: str | os.PathLike[str] | None = None) -> str:
    """One line for users: name, ``root``, split sizes, input shape and classes, e.g.
    ``data: imagefolder /path — train 800 / val 200 / test 200, input 1×32×32, 10 classes``."""
    where = f" {root}" if root is not None else ""
    shape = "×".join(map(str, data.input_shape))
    return (
        f"data: {data.name}{where} — train {len(data.train)} / val {len(data.val)} / test {len(data.test)}, "
        f"input {shape}, {data.num_classes} classes"
    )


def _require_root(root: Path | None, dataset: str, expected: str) -> Path:
    """``root`` as an existing directory, or a UsageError saying what belongs there."""
    if root is None:
        raise UsageError(
            f"dataset {dataset!r} needs a data directory: set root (data.root in a config, --root on the "
            f"command line); {expected}"
        )
    if not root.is_dir():
        raise UsageError(f"data root {root} for dataset {dataset!r} is not a directory; {expected}")
    return root


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# --------------------------------------------------------------------------- digits, synthetic


@DATASETS.register("digits")
def _digits(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """scikit-learn's 1797 8x8 digits, bilinear to ``image_size`` (16), stratified 60/20/20."""
    from sklearn.datasets import load_digits

    size = image_size or 16
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values are 0..16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = np.asarray(raw.target, dtype=np.int64)
    train, test, val = _stratified_split(y, (0.2, 0.2), seed)
    train_x = x[torch.from_numpy(train)]
    x = (x - train_x.mean()) / train_x.std()  # statistics of the training split only
    split = Split(x, torch.from_numpy(y))
    return _bundle("digits", _subset(split, train), _subset(split, val), _subset(split, test), 10)


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
    return _bundle("synthetic", train, val, test, SYNTHETIC_CLASSES)


# --------------------------------------------------------------------------- CIFAR


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
        raise UsageError(f"cannot read CIFAR batch {path} ({_one_line(e)}); {fmt.expected(path.parent.parent)}") from e
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


def _resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased) resize of N,C,H,W uint8 images to size x size, in chunks."""
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float32)
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_cifar(
    fmt: _CifarFormat, *, root: Path | None, seed: int, image_size: int | None, limit: int | None
) -> DataBundle:
    """The official train files minus a seeded stratified 10% (val), and the official test file."""
    base = _require_root(root, fmt.name, fmt.expected("<root>"))
    folder = base / fmt.folder
    if not (folder / fmt.test_file).is_file() and (base / fmt.test_file).is_file():
        folder = base  # root is the extracted folder itself
    if not folder.is_dir():
        raise UsageError(f"no {fmt.folder}/ under {base}; {fmt.expected(base)}")
    parts = [_read_cifar_batch(folder / name, fmt) for name in fmt.train_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(folder / fmt.test_file, fmt)
    train, val = _stratified_split(y, (0.1,), seed)
    size = image_size or 32
    tx, tx_test = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(x_test))
    if size != 32:
        tx, tx_test = _resize_uint8(tx, size), _resize_uint8(tx_test, size)
    full = Split(tx, torch.from_numpy(y), fmt.mean, fmt.std)
    test = Split(tx_test, torch.from_numpy(y_test), fmt.mean, fmt.std)
    return _bundle(fmt.name, _subset(full, train), _subset(full, val), test, fmt.num_classes)


DATASETS.register("cifar10")(partial(_load_cifar, _CIFAR10))
DATASETS.register("cifar100")(partial(_load_cifar, _CIFAR100))


# --------------------------------------------------------------------------- Fashion-MNIST

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
        raise UsageError(f"cannot read {path} ({_one_line(e)})") from e
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
    train, val = _stratified_split(y, (0.1,), seed)  # val is carved before any limit: same val at every limit
    tx, tx_test = torch.from_numpy(x.copy()), torch.from_numpy(x_test.copy())  # frombuffer arrays are read-only
    if image_size is not None and image_size != tx.shape[-1]:
        tx, tx_test = _resize_uint8(tx, image_size), _resize_uint8(tx_test, image_size)
    full = Split(tx, torch.from_numpy(y), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    test = Split(tx_test, torch.from_numpy(y_test), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return _bundle("fashion_mnist", _subset(full, train), _subset(full, val), test, 10)


# --------------------------------------------------------------------------- decoded images


def _decode_error(path: Path, error: BaseException) -> UsageError:
    return UsageError(f"cannot decode image {path} ({_one_line(error)}); replace or remove the file")


def _read_image(path: Path, size: int | None, channels: int = 3) -> np.ndarray:
    """One image as H x W x ``channels`` uint8 (1: grayscale, 3: RGB).

    ``size`` None keeps the image's own size; otherwise the shorter side is resized to
    ``size`` and the centre cropped to size x size.
    """
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as source:
            if size is not None:
                source.draft(mode, (size, size))  # JPEG: decode at a reduced scale, still >= size
            img = source.convert(mode)
        if size is not None:
            w, h = img.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _decode_error(path, e) from e


def _decode_images(paths: Sequence[Path], shape: tuple[int, int, int], resize: bool) -> torch.Tensor:
    """N,C,H,W uint8 tensor of the images at ``paths``, in order (``resize``: to H x H)."""
    c, h, w = shape
    out = np.empty((len(paths), h, w, c), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = _read_image(path, h if resize else None, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_split(paths: Sequence[Path], labels: np.ndarray, shape: tuple[int, int, int], resize: bool = True) -> Split:
    mean, std = (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD) if shape[0] == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    x = _decode_images(paths, shape, resize)
    return Split(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)), mean, std)


def _image_shape(paths: Sequence[Path], image_size: int | None, where: Path) -> tuple[int, int, int]:
    """C,H,W the images at ``paths`` load as: 1 channel if all are grayscale, else 3 (RGB);
    ``image_size`` squared, or their own size, which must then be the same for all.

    Reads only the image headers.
    """
    sizes: dict[tuple[int, int], list[Path]] = {}
    grey = True
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.setdefault(img.size, []).append(path)
                grey = grey and Image.getmodebase(img.mode) == "L"  # L, LA, 1, I, I;16, F
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise _decode_error(path, e) from e
    channels = 1 if grey else 3
    if image_size is not None:
        return channels, image_size, image_size
    common = max(sizes, key=lambda s: len(sizes[s]))
    if len(sizes) > 1:
        other = next(s for s in sizes if s != common)
        raise UsageError(
            f"images under {where} differ in size: most common {common[0]}x{common[1]} (width x height, "
            f"{len(sizes[common])} of {len(paths)} images), but e.g. {sizes[other][0]} is {other[0]}x{other[1]}; "
            f"pass --image-size N (data.image_size in a config) to resize all to NxN, e.g. --image-size {min(common)}"
        )
    w, h = common
    nbytes = len(paths) * channels * h * w
    if nbytes > 2**31:
        log.warning("imagefolder: %d images of %dx%dx%d take %.1f GB in memory; set image_size to shrink them",
                    len(paths), channels, h, w, nbytes / 1e9)  # fmt: skip
    return channels, h, w


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
        raise UsageError(f"cannot read {path} ({_one_line(e)}); {expected}") from e
    missing = [k for k in keys if k not in mat]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)}; {expected}")
    return {k: np.asarray(mat[k]).ravel().astype(np.int64) for k in keys}


@DATASETS.register("flowers102")
def _flowers102(*, root: Path | None, seed: int, image_size: int | None, limit: int | None) -> DataBundle:
    """Oxford 102 Flowers, official splits (1020/1020/6149), RGB resized to ``image_size`` (64)."""
    base = _require_root(root, "flowers102", _FLOWERS_EXPECTED.format(where="<root>"))
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
        train_ids = train_ids[_stratified_take(labels[train_ids - 1], limit, np.random.default_rng(seed))]
    size = image_size or 64
    started = time.perf_counter()
    splits = []
    for image_ids in (train_ids, ids["valid"], ids["tstid"]):
        paths = [folder / "jpg" / f"image_{i:05d}.jpg" for i in image_ids]
        splits.append(_image_split(paths, labels[image_ids - 1], (3, size, size)))
    log.info("flowers102: decoded %d images from %s in %.1f s", sum(map(len, splits)), folder,
             time.perf_counter() - started)  # fmt: skip
    return _bundle("flowers102", *splits, num_classes=102)


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
    base = _require_root(root, "imagefolder", _IMAGEFOLDER_EXPECTED.format(where="<root>"))
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
    rest, *carved = _stratified_split(labels, [0.15] * len(carve), seed)
    for name, index in zip(carve, carved, strict=True):
        given[name] = ([paths[i] for i in index], labels[index])
    if limit is not None and len(rest) > limit:  # before decoding: do not read what is dropped
        rest = rest[_stratified_take(labels[rest], limit, np.random.default_rng(seed))]
    train_paths = [paths[i] for i in rest]
    shape = _image_shape([*train_paths, *given["val"][0], *given["test"][0]], image_size, base)
    resize = image_size is not None
    started = time.perf_counter()
    train = _image_split(train_paths, labels[rest], shape, resize)
    val, test = (_image_split(*given[name], shape, resize) for name in ("val", "test"))
    log.info("imagefolder: loaded %d images of %d classes from %s in %.1f s",
             len(train) + len(val) + len(test), len(classes), base, time.perf_counter() - started)  # fmt: skip
    return _bundle("imagefolder", train, val, test, len(classes), classes)
