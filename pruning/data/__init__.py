"""Dataset registry and loaders: seeded train/val/test splits held in memory as tensors.

``load_data(name, root=..., seed=..., image_size=..., limit=..., val_limit=...,
select_fraction=...)`` returns a :class:`DataBundle` (train/val/test, plus an optional
selection split carved from train).  Registered names (``DATASETS``), one module per family:

* ``digits``: scikit-learn's bundled 8x8 digits (no files needed) upsampled to 16x16,
  seeded stratified 60/20/20 split. The demo and test dataset (``builtin``).
* ``cifar10`` / ``cifar100``: the "python version" pickles; val is a seeded stratified
  10% of the official training set, test is the official test batch (``cifar``).
* ``fashion_mnist``: the four IDX files (gzipped or raw) of Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or of ``root``; val is
  a seeded stratified 10% of the official 60k training set, test the official 10k
  (``fashion_mnist``).
* ``flowers102``: torchvision's on-disk layout, the official train/val/test ids (``flowers``).
* ``imagefolder``: ``root/<class>/*.png|jpg|jpeg``, or the same under ``root/train``
  (plus optional ``root/val``, ``root/test``). Images keep their own size and channel
  count (grayscale stays 1 channel) unless ``image_size`` is given (``imagefolder``).
* ``synthetic``: seeded random images with a class-dependent pattern, for speed tests
  (``builtin``).

Val is what a search optimises; test is only reported. Images are stored as uint8 and
normalised per batch on the device (``(x/255 - mean)/std``); ``digits`` and
``synthetic`` are stored as float32, already normalised. :meth:`Split.batches` moves a
split to the device once and slices batches there (``splits``).

Held-out splits are stratified by class with exact sizes ``ceil(fraction * N)``
(largest-remainder quotas per class, ``stratify``), so ``digits`` gives 1077/360/360 images.
The registry and :func:`load_data` live in ``loading``, image decoding in ``images``.
"""

from __future__ import annotations

# Importing a family's module registers its datasets.
from pruning.data import builtin, cifar, fashion_mnist, flowers, imagefolder  # noqa: F401
from pruning.data.builtin import SYNTHETIC_CLASSES, SYNTHETIC_SIZES
from pruning.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from pruning.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, read_idx
from pruning.data.imagefolder import IMAGE_SUFFIXES
from pruning.data.images import IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, IMAGENET_MEAN, IMAGENET_STD
from pruning.data.loading import DATASETS, DatasetLoader, dataset_line, load_data
from pruning.data.splits import DataBundle, Split

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_GREY_MEAN",
    "IMAGENET_GREY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_SIZES",
    "DataBundle",
    "DatasetLoader",
    "Split",
    "dataset_line",
    "load_data",
    "read_idx",
]
