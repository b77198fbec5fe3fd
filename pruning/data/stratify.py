"""Seeded, class-stratified subsets with exact sizes (largest-remainder quotas per class)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def stratified_take(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
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


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``[rest, part_1, ...]``, seeded and stratified.

    ``part_i`` holds ``ceil(fractions[i] * len(y))`` samples; ``rest`` is what remains.
    """
    rng = np.random.default_rng(seed)
    remaining = np.arange(len(y))
    parts = []
    for fraction in fractions:
        n = math.ceil(round(fraction * len(y), 6))
        pick = stratified_take(y[remaining], n, rng)
        parts.append(remaining[pick])
        remaining = np.delete(remaining, pick)
    return [remaining, *parts]
