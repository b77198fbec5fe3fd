"""``fashion_mnist`` from tiny IDX files written in the real format (gzipped and raw); no package needed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import pruning.data.fashion_mnist
from pruning.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, Split, load_data, read_idx
from pruning.errors import UsageError

N_TRAIN, N_TEST, SIDE = 80, 20, 28


def _idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's IDX layout: 0, 0, type 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_fashion(folder: Path, *, gz: bool, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files as Debian ships them (``*-ubyte.gz``) or uncompressed; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x = rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10  # every class equally often
        rng.shuffle(y)
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            data = _idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[prefix] = (x, y.astype(np.int64))
    return out


def _rows(split: Split) -> list[bytes]:
    return [row.numpy().tobytes() for row in split.x]


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_round_trip_into_official_splits(tmp_path: Path, gz: bool) -> None:
    written = _write_fashion(tmp_path, gz=gz)
    bundle = load_data("fashion_mnist", root=tmp_path, seed=0)
    assert bundle.name == "fashion_mnist" and bundle.num_classes == 10 and bundle.input_shape == (1, SIDE, SIDE)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (N_TRAIN - 8, 8, N_TEST)  # val = 10% of train
    assert bundle.train.mean == FASHION_MNIST_MEAN and bundle.train.std == FASHION_MNIST_STD
    assert bundle.train.x.dtype == torch.uint8
    # test is the official test file, in order; train + val are exactly the official train file
    x_test, y_test = written["t10k"]
    assert torch.equal(bundle.test.x[:, 0], torch.from_numpy(x_test)) and torch.equal(bundle.test.y, torch.from_numpy(y_test))
    x_train, y_train = written["train"]
    label_of = {row.tobytes(): int(label) for row, label in zip(x_train[:, None], y_train, strict=True)}
    seen = _rows(bundle.train) + _rows(bundle.val)
    assert sorted(seen) == sorted(label_of)
    for split in (bundle.train, bundle.val):
        assert [label_of[r] for r in _rows(split)] == split.y.tolist()
    assert len(set(bundle.val.y.tolist())) == 8  # stratified: 8 of 10 equal classes, none twice


def test_val_is_seeded_stratified_and_limits_cut_train_and_val(tmp_path: Path) -> None:
    _write_fashion(tmp_path / "fashion-mnist", gz=True)  # root may also be the parent folder
    a = load_data("fashion_mnist", root=tmp_path, seed=0)
    b = load_data("fashion_mnist", root=tmp_path, seed=0)
    c = load_data("fashion_mnist", root=tmp_path, seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert sorted(_rows(a.val)) != sorted(_rows(c.val))
    assert torch.bincount(a.val.y, minlength=10).max() - torch.bincount(a.val.y, minlength=10).min() <= 1
    small = load_data("fashion_mnist", root=tmp_path, seed=0, limit=30, val_limit=5)
    assert (len(small.train), len(small.val), len(small.test)) == (30, 5, N_TEST)
    assert torch.bincount(small.train.y, minlength=10).tolist() == [3] * 10  # stratified subset
    assert set(_rows(small.train)) <= set(_rows(a.train)) and set(_rows(small.val)) <= set(_rows(a.val))


def test_image_size_resizes_every_split(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    bundle = load_data("fashion_mnist", root=tmp_path, image_size=32)
    assert bundle.input_shape == (1, 32, 32)
    x, _ = next(bundle.test.batches(4))
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32


def test_default_directory_and_missing_files_name_the_apt_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setattr(pruning.data.fashion_mnist, "FASHION_MNIST_DIR", absent)
    with pytest.raises(UsageError) as info:
        load_data("fashion_mnist")
    message = str(info.value)
    assert str(absent) in message and "apt-get install dataset-fashion-mnist" in message and "\n" not in message
    _write_fashion(absent, gz=True)
    assert len(load_data("fashion_mnist").test) == N_TEST  # no root: the Debian directory
    with pytest.raises(UsageError, match="is not a directory.*apt-get install dataset-fashion-mnist"):
        load_data("fashion_mnist", root=tmp_path / "nowhere")
    (absent / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UsageError, match=r"no t10k-labels-idx1-ubyte\[.gz\] in .*usr-share-datasets-fashion-mnist"):
        load_data("fashion_mnist")


def test_corrupt_or_mismatched_files_are_usage_errors(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-5])
    with pytest.raises(UsageError, match="truncated"):
        load_data("fashion_mnist", root=tmp_path)
    images.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UsageError, match="cannot read .*train-images-idx3-ubyte"):
        load_data("fashion_mnist", root=tmp_path)
    images.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(UsageError, match="not an unsigned-byte IDX file"):
        load_data("fashion_mnist", root=tmp_path)
    images.write_bytes(_idx_bytes(np.zeros((N_TRAIN - 1, SIDE, SIDE), np.uint8)))
    with pytest.raises(UsageError, match="not N images of HxW with N labels"):
        load_data("fashion_mnist", root=tmp_path)
    images.write_bytes(good)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(N_TRAIN, 10, np.uint8)))
    with pytest.raises(UsageError, match="labels outside 0..9"):
        load_data("fashion_mnist", root=tmp_path)


def test_read_idx_reads_any_rank(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    (tmp_path / "b.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array) and np.array_equal(read_idx(tmp_path / "b.gz"), array)
