"""Splits held in memory as tensors, batched on the device, and the bundle of a dataset's three.

Images are stored as uint8 and normalised per batch on the device (``(x/255 - mean)/std``);
float32 splits are stored already normalised. :meth:`Split.batches` moves a split to the
device once and slices batches there: no DataLoader, no worker processes, augmentation
(random crop + horizontal flip) runs on the batch tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pruning.errors import UsageError


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
    (``imagefolder``), else it is empty. ``select`` is the *selection split* carved from the
    training data by ``load_data(select_fraction=...)`` (None without one): nothing trains
    on it and a search never ranks on it, so a final pick among candidates made on it is
    not biased by the search's own choice (the winner's curse of picking on val).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...] = ()
    select: Split | None = None

    def __post_init__(self) -> None:
        for split_name in ("train", "val", "test", "select"):
            split: Split | None = getattr(self, split_name)
            if split is None:
                continue
            if tuple(split.x.shape[1:]) != self.input_shape:
                raise ValueError(f"{split_name} samples are {tuple(split.x.shape[1:])}, expected {self.input_shape}")
            if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= self.num_classes):
                raise ValueError(f"{split_name} labels fall outside 0..{self.num_classes - 1}")

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape (batch, C, H, W), e.g. for tracing a model or counting MACs."""
        return torch.zeros(batch, *self.input_shape)


def make_bundle(
    name: str, train: Split, val: Split, test: Split, num_classes: int, class_names: Sequence[str] = ()
) -> DataBundle:
    """A bundle whose ``input_shape`` is that of the ``train`` samples."""
    c, h, w = train.x.shape[1:]
    return DataBundle(name, train, val, test, num_classes, (c, h, w), tuple(class_names))


def subset(split: Split, index: np.ndarray) -> Split:
    """The samples of ``split`` at ``index`` (a copy), with its normalisation."""
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Split(split.x[idx], split.y[idx], split.mean, split.std)
