"""Decoding image files into uint8 tensors (PIL), and resizing uint8 image tensors.

Decoded images are normalised with the ImageNet statistics (their channel mean for
grayscale images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pruning.data.loading import one_line
from pruning.data.splits import Split
from pruning.errors import UsageError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grayscale images: the ImageNet statistics averaged over the three channels.
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased) resize of N,C,H,W uint8 images to size x size, in chunks."""
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float32)
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _decode_error(path: Path, error: BaseException) -> UsageError:
    return UsageError(f"cannot decode image {path} ({one_line(error)}); replace or remove the file")


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


def image_split(paths: Sequence[Path], labels: np.ndarray, shape: tuple[int, int, int], resize: bool = True) -> Split:
    """The decoded images at ``paths`` with ``labels``, normalised by the ImageNet statistics."""
    mean, std = (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD) if shape[0] == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    x = _decode_images(paths, shape, resize)
    return Split(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)), mean, std)


def image_shape(paths: Sequence[Path], image_size: int | None, where: Path) -> tuple[int, int, int]:
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
