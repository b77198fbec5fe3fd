"""Tests of pruning.data: every dataset from tiny files in the real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pruning.cost import count_macs
from pruning.data import CIFAR10_MEAN, CIFAR10_STD, DATASETS, DataBundle, Split, dataset_line, load_data
from pruning.errors import UsageError
from pruning.models import create_model

# ----------------------------------------------------------------------------- fixture writers


def _write_cifar(root: Path, kind: str, per_file: int = 20, seed: int = 0) -> tuple[dict[bytes, int], np.ndarray]:
    """Write tiny CIFAR pickles exactly as the real archives hold them (bytes keys).

    Returns {train image bytes: label} and the test batch's (data, labels).
    """
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, train_files, test_file, label_key, classes = (
            root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10,
        )  # fmt: skip
    else:
        folder, train_files, test_file, label_key, classes = (
            root / "cifar-100-python", ["train"], "test", b"fine_labels", 100,
        )  # fmt: skip
        per_file *= 5
    folder.mkdir(parents=True)
    train: dict[bytes, int] = {}
    test = None
    for name in [*train_files, test_file]:
        n = per_file if name != test_file else 20
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, size=n)]
        entry = {b"batch_label": name.encode(), b"data": data, label_key: labels,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}  # fmt: skip
        if kind == "cifar100":
            entry[b"coarse_labels"] = [v // 5 for v in labels]
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f)
        if name == test_file:
            test = (data, np.array(labels))
        else:
            train.update({row.tobytes(): lab for row, lab in zip(data, labels, strict=True)})
    return train, test


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


COLOURS = {"ant": (200, 30, 30), "bee": (120, 120, 120), "cat": (30, 30, 200)}


def _write_classes(folder: Path, per_class: int) -> None:
    for name, colour in COLOURS.items():
        for i in range(per_class):
            _write_image(folder / name / f"{i}.png", colour)


def _assert_colours_match_labels(split: Split, colours: list[tuple[int, int, int]], tol: float = 4.0) -> None:
    mean_colour = split.x.float().mean(dim=(2, 3))  # N,3 in 0..255
    expected = torch.tensor([colours[int(k)] for k in split.y], dtype=torch.float32)
    assert torch.allclose(mean_colour, expected, atol=tol)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data("digits", seed=0)


def _rows(split: Split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x}


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_split_sizes(digits: DataBundle) -> None:
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 16, 16)
    assert digits.example_input(3).shape == (3, 1, 16, 16)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1077, 360, 360)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert set(split.y.tolist()) == set(range(10))
    assert abs(float(digits.train.x.mean())) < 1e-4 and abs(float(digits.train.x.std()) - 1) < 1e-4


def test_digits_splits_are_disjoint_and_cover_everything(digits: DataBundle) -> None:
    rows = [_rows(s) for s in (digits.train, digits.val, digits.test)]
    assert sum(map(len, rows)) == 1797  # the 1797 digits are pairwise distinct
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_digits_split_is_stratified(digits: DataBundle) -> None:
    total = sum(torch.bincount(s.y, minlength=10) for s in (digits.train, digits.val, digits.test))
    for split, fraction in ((digits.val, 0.2), (digits.test, 0.2), (digits.train, 0.6)):
        counts = torch.bincount(split.y, minlength=10)
        assert torch.all((counts - fraction * total).abs() <= 2)


def test_digits_split_is_seeded(digits: DataBundle) -> None:
    same = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(same.test.x, digits.test.x) and torch.equal(same.train.y, digits.train.y)
    assert not torch.equal(other.test.y, digits.test.y)
    assert _rows(other.test) != _rows(digits.test)


def test_digits_image_size_and_limit() -> None:
    bundle = load_data("digits", image_size=8, limit=50, seed=3)
    assert bundle.input_shape == (1, 8, 8)
    assert len(bundle.train) == 50 and len(bundle.val) == 360
    assert set(bundle.train.y.tolist()) == set(range(10))  # the limited subset is stratified


def test_selection_split_is_carved_from_train_and_disjoint_from_every_split(digits: DataBundle) -> None:
    carved = load_data("digits", seed=0, select_fraction=0.1)
    assert digits.select is None
    assert (len(carved.train), len(carved.select)) == (969, 108)  # ceil(0.1 * 1077) = 108
    assert torch.equal(carved.val.x, digits.val.x) and torch.equal(carved.test.x, digits.test.x)
    train, select = _rows(carved.train), _rows(carved.select)
    assert train | select == _rows(digits.train)  # the selection split comes out of train only
    assert not (select & train) and not (select & _rows(carved.val)) and not (select & _rows(carved.test))
    assert set(carved.select.y.tolist()) == set(range(10))  # stratified
    again = load_data("digits", seed=0, select_fraction=0.1)
    assert torch.equal(again.select.x, carved.select.x)  # seeded
    assert "select 108" in dataset_line(carved)


def test_selection_split_comes_out_of_the_limited_train() -> None:
    bundle = load_data("digits", seed=3, limit=200, select_fraction=0.25)
    assert (len(bundle.train), len(bundle.select)) == (150, 50)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0, float("nan")])
def test_bad_select_fraction_names_the_value_and_the_range(fraction: float) -> None:
    with pytest.raises(UsageError, match=r"select_fraction must be in \(0, 0.5\].*got " + str(fraction)):
        load_data("synthetic", select_fraction=fraction)


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_pickles_round_trip(tmp_path: Path, kind: str) -> None:
    train, (test_data, test_labels) = _write_cifar(tmp_path, kind)
    bundle = load_data(kind, root=str(tmp_path), seed=0)
    classes = 10 if kind == "cifar10" else 100
    assert bundle.num_classes == classes and bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (90, 10, 20)
    assert bundle.train.x.dtype == torch.uint8 and len(bundle.train.mean) == 3
    # test = the official test batch, pixels and labels unchanged (rows are R, G, B planes)
    assert torch.equal(bundle.test.x, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))
    assert bundle.test.y.tolist() == test_labels.tolist()
    # train + val = the training files, every image with its own label, none twice
    seen = {}
    for split in (bundle.train, bundle.val):
        for x, y in zip(split.x, split.y, strict=True):
            seen[x.reshape(-1).numpy().tobytes()] = int(y)
    assert seen == train


def test_cifar_root_can_be_the_extracted_folder_and_split_is_seeded(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    a = load_data("cifar10", root=tmp_path / "cifar-10-batches-py", seed=5)
    b = load_data("cifar10", root=tmp_path, seed=5)
    c = load_data("cifar10", root=tmp_path, seed=6)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_cifar_normalises_with_cifar_statistics_and_resizes(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    bundle = load_data("cifar10", root=tmp_path)
    xb, yb = next(bundle.test.batches(7))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(xb, (bundle.test.x[:7].float() / 255 - mean) / std, atol=1e-5)
    assert torch.equal(yb, bundle.test.y[:7])
    small = load_data("cifar10", root=tmp_path, image_size=16)
    assert small.input_shape == (3, 16, 16) and small.test.x.dtype == torch.uint8
    for full, half in zip(bundle.test.x[:3], small.test.x[:3], strict=True):  # same as PIL's bilinear, +-1
        pil = Image.fromarray(full.permute(1, 2, 0).numpy()).resize((16, 16), Image.Resampling.BILINEAR)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert (half.int() - expected.int()).abs().max() <= 1


def test_corrupt_cifar_pickle_is_a_usage_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(UsageError, match="data_batch_3"):
        load_data("cifar10", root=tmp_path)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (str(self.target), "w"))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar100")
    marker = tmp_path / "pwned"
    with (tmp_path / "cifar-100-python" / "train").open("wb") as f:
        pickle.dump({b"data": _Exploit(marker)}, f)
    with pytest.raises(UsageError, match="refusing to load"):
        load_data("cifar100", root=tmp_path)
    assert not marker.exists()


def test_cifar_missing_file_names_it_and_the_download(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(UsageError, match="data_batch_5 not found") as info:
        load_data("cifar10", root=tmp_path)
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in str(info.value)


# ----------------------------------------------------------------------------- flowers102

FLOWER_COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]


def _write_flowers(root: Path) -> None:
    folder = root / "flowers-102"
    labels = np.array([[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]], dtype=np.uint8)  # 1-based, like the real file
    for i, label in enumerate(labels[0], start=1):
        _write_image(folder / "jpg" / f"image_{i:05d}.jpg", FLOWER_COLOURS[label - 1], size=(40 + i, 30))
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(folder / "setid.mat", {
        "trnid": np.array([[3, 7, 1, 12, 5]], dtype=np.uint16),
        "valid": np.array([[2, 9, 4]], dtype=np.uint16),
        "tstid": np.array([[6, 8, 10, 11]], dtype=np.uint16),
    })  # fmt: skip


def test_flowers102_official_splits(tmp_path: Path) -> None:
    _write_flowers(tmp_path)
    bundle = load_data("flowers102", root=tmp_path, image_size=16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (5, 3, 4)
    assert bundle.num_classes == 102 and bundle.input_shape == (3, 16, 16)
    assert bundle.train.y.tolist() == [2, 0, 0, 2, 1]  # image ids 3,7,1,12,5 -> labels 3,1,1,3,2 minus one
    for split in (bundle.train, bundle.val, bundle.test):
        _assert_colours_match_labels(split, FLOWER_COLOURS, tol=6.0)  # JPEG is lossy
    direct = load_data("flowers102", root=tmp_path / "flowers-102", limit=3)
    assert direct.input_shape == (3, 64, 64) and len(direct.train) == 3 and len(direct.test) == 4


def test_flowers102_missing_mat_file(tmp_path: Path) -> None:
    _write_flowers(tmp_path)
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(UsageError, match="setid.mat not found") as info:
        load_data("flowers102", root=tmp_path)
    assert "robots.ox.ac.uk" in str(info.value)


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_flat_is_split_70_15_15(tmp_path: Path) -> None:
    _write_classes(tmp_path, per_class=10)
    _write_image(tmp_path / "bee" / "grey.png", COLOURS["bee"], mode="L")  # other modes become RGB (bee is grey)
    _write_image(tmp_path / "bee" / "alpha.PNG", COLOURS["bee"], mode="RGBA")
    (tmp_path / "bee" / "notes.txt").write_text("not an image")
    bundle = load_data("imagefolder", root=tmp_path, image_size=8, seed=0)
    assert bundle.class_names == ("ant", "bee", "cat") and bundle.num_classes == 3
    assert bundle.input_shape == (3, 8, 8) and bundle.train.x.dtype == torch.uint8
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (22, 5, 5)
    for split in (bundle.train, bundle.val, bundle.test):
        assert set(split.y.tolist()) == {0, 1, 2}  # stratified
    colours = list(COLOURS.values())
    for split in (bundle.train, bundle.val, bundle.test):
        _assert_colours_match_labels(split, colours, tol=1.0)


def test_imagefolder_with_train_val_test_folders(tmp_path: Path) -> None:
    _write_classes(tmp_path / "train", per_class=4)
    _write_classes(tmp_path / "val", per_class=2)
    _write_classes(tmp_path / "test", per_class=1)
    bundle = load_data("imagefolder", root=tmp_path, image_size=8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 6, 3)
    assert bundle.val.y.tolist() == [0, 0, 1, 1, 2, 2]
    _assert_colours_match_labels(bundle.test, list(COLOURS.values()), tol=1.0)


def test_imagefolder_carves_missing_test_from_train(tmp_path: Path) -> None:
    _write_classes(tmp_path / "train", per_class=10)
    _write_classes(tmp_path / "val", per_class=2)
    bundle = load_data("imagefolder", root=tmp_path, image_size=8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (25, 6, 5)


def test_imagefolder_center_crops_the_shorter_side(tmp_path: Path) -> None:
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))  # blue middle third
    for i in range(3):
        (tmp_path / "only").mkdir(exist_ok=True)
        img.save(tmp_path / "only" / f"{i}.png")
    bundle = load_data("imagefolder", root=tmp_path, image_size=10)
    x = bundle.train.x[0]
    assert x.shape == (3, 10, 10) and int(x[2].min()) == 255 and int(x[0].max()) == 0


def test_imagefolder_unknown_class_in_val_and_corrupt_image(tmp_path: Path) -> None:
    _write_classes(tmp_path / "train", per_class=3)
    _write_image(tmp_path / "val" / "dog" / "0.png", (0, 0, 0))
    with pytest.raises(UsageError, match="dog.*choose one of: ant, bee, cat"):
        load_data("imagefolder", root=tmp_path)
    (tmp_path / "val" / "dog" / "0.png").unlink()
    (tmp_path / "val" / "dog").rmdir()
    (tmp_path / "train" / "ant" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UsageError, match="cannot decode image .*0.png"):
        load_data("imagefolder", root=tmp_path)


def test_empty_imagefolder(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UsageError, match="no images found under") as info:
        load_data("imagefolder", root=tmp_path)
    assert str(tmp_path) in str(info.value)


def _write_grey_digits(folder: Path, per_class: int, size: tuple[int, int] = (32, 32)) -> None:
    """Grayscale PNGs whose brightness encodes the class."""
    for k in range(3):
        for i in range(per_class):
            path = folder / f"class{k}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", size, 40 + 80 * k).save(path)


def test_imagefolder_keeps_grayscale_and_native_size(tmp_path: Path) -> None:
    _write_grey_digits(tmp_path, per_class=6)
    bundle = load_data("imagefolder", root=tmp_path)
    assert bundle.input_shape == (1, 32, 32)
    assert bundle.train.x.shape[1:] == (1, 32, 32) and bundle.train.mean == (0.449,)
    assert {int(v) for v in bundle.train.x.unique()} == {40, 120, 200}  # pixels untouched, no resampling
    # A model built for the bundle runs on its batches, and its MACs are those of a 1x32x32 input:
    # tiny_vgg = conv 1->16 @32x32, pool, conv 16->32 @16x16, pool, conv 32->32 @8x8, linear 32->3.
    model = create_model("tiny_vgg", num_classes=bundle.num_classes, in_channels=bundle.input_shape[0])
    xb, _ = next(bundle.train.batches(4))
    assert model(xb).shape == (4, 3)
    expected = 32 * 32 * 16 * 1 * 9 + 16 * 16 * 32 * 16 * 9 + 8 * 8 * 32 * 32 * 9 + 32 * 3
    assert count_macs(model, bundle.input_shape) == expected
    line = dataset_line(bundle, tmp_path)
    assert line == f"data: imagefolder {tmp_path} — train 12 / val 3 / test 3, input 1×32×32, 3 classes"


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    _write_grey_digits(tmp_path, per_class=5)
    for i in range(3):
        Image.new("L", (28, 20), 0).save(tmp_path / "class1" / f"odd{i}.png")
    with pytest.raises(UsageError) as info:
        load_data("imagefolder", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "most common 32x32" in message and "15 of 18 images" in message and "--image-size" in message
    bundle = load_data("imagefolder", root=tmp_path, image_size=16)
    assert bundle.input_shape == (1, 16, 16)


def test_imagefolder_mixed_sizes_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.cli import main

    _write_grey_digits(tmp_path / "data", per_class=5)
    Image.new("L", (28, 20), 0).save(tmp_path / "data" / "class0" / "odd.png")
    out = tmp_path / "out"
    args = ["prune", "--model", "tiny_vgg", "--data", "imagefolder", "--root", str(tmp_path / "data"),
            "--ratio", "0.5", "--epochs", "0", "--finetune-epochs", "0", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunetune: error: images under") and err.count("\n") == 1 and "32x32" in err
    assert not out.exists()
    assert main([*args, "--image-size", "12"]) == 0
    stdout = capsys.readouterr().out
    assert "input 1×12×12, 3 classes" in stdout and stdout.count("data: imagefolder") == 1
    assert torch.load(out / "model.pt", weights_only=False)(torch.zeros(2, 1, 12, 12)).shape == (2, 3)
    grow = ["grow", "--model", "tiny_vgg", "--data", "imagefolder", "--root", str(tmp_path / "data"),
            "--from-scratch", "--epochs", "1", "--finetune-epochs", "0", "--image-size", "10",
            "--out", str(tmp_path / "grown")]  # fmt: skip
    assert main(grow) == 0
    assert capsys.readouterr().out.count("input 1×10×10, 3 classes") == 1


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_seed() -> None:
    bundle = load_data("synthetic", seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (512, 128, 128)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    assert bundle.train.x.dtype == torch.float32 and int(bundle.train.y.max()) < 10
    assert torch.equal(load_data("synthetic", seed=0).val.x, bundle.val.x)
    assert not torch.equal(load_data("synthetic", seed=1).val.x, bundle.val.x)
    # learnable: the nearest class mean (from train) classifies val far above chance
    means = torch.stack([bundle.train.x[bundle.train.y == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(bundle.val.x.flatten(1), means).argmin(1)
    assert (predicted == bundle.val.y).float().mean() > 0.5


# ----------------------------------------------------------------------------- batches()


def _id_split(n: int = 37, size: int = 8) -> Split:
    """float32 split whose sample i is filled with i, so batches reveal which samples they hold."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, size, size).contiguous()
    return Split(x, torch.arange(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(shuffle: bool) -> None:
    split = _id_split()
    batches = list(split.batches(10, shuffle=shuffle, seed=4))
    assert [len(y) for _, y in batches] == [10, 10, 10, 7]
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(37))
    assert torch.equal(torch.cat([x for x, _ in batches])[:, 0, 0, 0].long(), ys)  # x follows y
    assert (ys.tolist() != list(range(37))) == shuffle
    dropped = list(split.batches(10, shuffle=shuffle, drop_last=True))
    assert [len(y) for _, y in dropped] == [10, 10, 10]
    with pytest.raises(UsageError, match="batch_size"):
        split.batches(0)


def test_batches_shuffle_is_seeded() -> None:
    split = _id_split()
    order = lambda seed: torch.cat([y for _, y in split.batches(8, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


def test_augment_is_a_seeded_crop_or_flip_of_each_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 16, 16, generator=gen)
    split = Split(x, torch.arange(12))
    (plain_x, plain_y), = split.batches(12, shuffle=True, seed=7)
    (aug_x, aug_y), = split.batches(12, shuffle=True, seed=7, augment=True)
    (again_x, _), = split.batches(12, shuffle=True, seed=7, augment=True)
    (other_x, _), = split.batches(12, shuffle=True, seed=8, augment=True)
    assert aug_x.shape == plain_x.shape and torch.equal(aug_y, plain_y)  # labels and order kept
    assert torch.equal(aug_x, again_x) and not torch.equal(aug_x, other_x)
    assert not torch.equal(aug_x, plain_x)
    pad = 2  # 16 // 8
    seen = set()  # (dy, dx, flipped) of every sample
    for sample, label in zip(aug_x, aug_y, strict=True):
        padded = torch.nn.functional.pad(x[label], (pad, pad, pad, pad))
        windows = {(i, j): padded[:, i : i + 16, j : j + 16] for i in range(2 * pad + 1) for j in range(2 * pad + 1)}
        found = {
            (i, j, flipped)
            for (i, j), window in windows.items()
            for flipped in (False, True)
            if torch.equal(sample, window.flip(-1) if flipped else window)
        }
        assert len(found) == 1  # exactly one crop (random noise matches nothing else)
        seen |= found
    assert {flipped for _, _, flipped in seen} == {False, True}
    assert len({i for i, _, _ in seen}) > 1 and len({j for _, j, _ in seen}) > 1  # both offsets vary


def test_batches_land_on_the_requested_device() -> None:
    x_uint8 = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    split = Split(x_uint8, torch.zeros(5, dtype=torch.int64), mean=(0.5,) * 3, std=(0.25,) * 3)
    devices = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for augment in (False, True):
            x, y = next(split.batches(4, shuffle=True, device=device, augment=augment))
            assert x.device.type == device and y.device.type == device
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 8, 8)
    x, _ = next(split.batches(5))
    assert torch.allclose(x, torch.full_like(x, -2.0))  # (0/255 - 0.5) / 0.25
    assert pickle.loads(pickle.dumps(split))._resident == {}  # device copies are not pickled


def test_split_rejects_uint8_without_statistics() -> None:
    with pytest.raises(ValueError, match="mean and std"):
        Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UsageError) as info:
        load_data("cifar11")
    message = str(info.value)
    assert "unknown dataset 'cifar11'" in message
    for name in ("cifar10", "cifar100", "digits", "fashion_mnist", "flowers102", "imagefolder", "synthetic"):
        assert name in message and name in DATASETS


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "flowers102", "imagefolder"])
def test_missing_root_is_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as info:
        load_data(name, root=missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match="needs a data directory: set root"):
        load_data(name)


def test_empty_cifar_root_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cifar-10-python.tar.gz from https://www.cs.toronto.edu") as info:
        load_data("cifar10", root=tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("kwargs", [{"image_size": 0}, {"limit": 0}, {"val_limit": 0}])
def test_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(UsageError, match=str(next(iter(kwargs)))):
        load_data("synthetic", **kwargs)
