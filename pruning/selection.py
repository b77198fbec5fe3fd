"""Which channels to keep: from criterion scores to per-group keep indices.

Three ways, all returning ``{group: sorted indices to keep}`` for ``surgery.prune``:

* ``keep_by_ratios`` - a keep ratio per group (uniform when every ratio is the same);
* ``keep_global`` - one global ranking of per-group L2-normalised scores (Zhang et al. 2021:
  sort every filter, cut the lowest), with ``min_channels`` enforced per group;
* ``keep_for_macs`` - bisection on either of the above until the pruned model fits a MACs
  budget.

``round_to`` rounds every kept count *up* to a multiple (e.g. 8, for fast kernels), never
above the group's size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from pruning.cost import count_macs
from pruning.errors import UsageError


def _round_count(n: int, size: int, min_channels: int, round_to: int) -> int:
    n = max(n, min_channels, 1)
    if round_to > 1:
        n = int(math.ceil(n / round_to) * round_to)
    return min(n, size)


def _top(scores: torch.Tensor, n: int) -> list[int]:
    # Stable tie-break by index so equal scores give the same choice every run.
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n])


def check_ratio(name: str, ratio: float) -> None:
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise UsageError(f"keep ratio for {name} must be in (0, 1], got {ratio}")


def keep_by_ratios(
    scores: Mapping[str, torch.Tensor],
    ratios: Mapping[str, float] | float,
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Keep ``round(ratio·C)`` top-scoring channels of each group (groups not in ``ratios`` stay whole)."""
    if not isinstance(ratios, Mapping):
        ratios = {g: float(ratios) for g in scores}
    unknown = sorted(set(ratios) - set(scores))
    if unknown:
        raise UsageError(f"unknown group {unknown[0]!r}; choose one of: {', '.join(scores)}")
    keep = {}
    for g, s in scores.items():
        r = ratios.get(g, 1.0)
        check_ratio(f"group {g!r}", r)
        n = _round_count(int(round(r * len(s))), len(s), min_channels, round_to)
        keep[g] = _top(s, n)
    return keep


def normalize(s: torch.Tensor) -> torch.Tensor:
    """ŝ = s / ‖s‖₂ in float64 (the norm too, so tiny vectors still normalise); a zero vector stays zero.

    The one per-group L2 normalisation: the global ranking here and the per-layer sums of
    the attribution criteria (``pruning.criteria.base``) both use it."""
    norm = torch.linalg.vector_norm(s.double())
    return (s.double() / norm) if norm > 0 else s.double()


def grow_counts(ratios: Mapping[str, float], widths: Mapping[str, int], round_to: int) -> dict[str, int]:
    """Channels to add to each group whose ratio (width multiplier) is above 1: the growing
    counterpart of :func:`keep_by_ratios` (the target width rounded up to ``round_to``)."""
    add = {}
    for g, r in ratios.items():
        if r > 1.0:
            # 1e-9: a ratio rebuilt from widths (finalize --from-scratch) must not round up a whole step
            target = math.ceil(r * widths[g] / round_to - 1e-9) * round_to if round_to > 1 else round(r * widths[g])
            if target > widths[g]:
                add[g] = int(target - widths[g])
    return add


def keep_global(
    scores: Mapping[str, torch.Tensor],
    keep_fraction: float,
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Keep the top ``keep_fraction`` of all channels ranked together after per-group L2 normalisation."""
    check_ratio("global keep fraction", keep_fraction)
    flat = [(float(v), g, i) for g, s in scores.items() for i, v in enumerate(normalize(s))]
    n_total = len(flat)
    n_keep = max(1, int(round(keep_fraction * n_total)))
    flat.sort(key=lambda t: (-t[0], t[1], t[2]))
    counts = {g: 0 for g in scores}
    for _, g, _ in flat[:n_keep]:
        counts[g] += 1
    return {
        g: _top(s, _round_count(counts[g], len(s), min_channels, round_to)) for g, s in scores.items()
    }


def keep_for_macs(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    target_macs: int,
    input_shape: tuple[int, ...],
    *,
    ranking: str = "uniform",
    min_channels: int = 1,
    round_to: int = 1,
    iterations: int = 14,
) -> dict[str, list[int]]:
    """The largest uniform ratio (or global fraction) whose pruned model has at most ``target_macs``.

    Each bisection step prunes a copy of ``model`` and counts its MACs, so the budget is
    met exactly as the final model will count it. Raises ``UsageError`` when even the
    smallest network (``min_channels`` everywhere) exceeds the budget.
    """
    from pruning.surgery import prune  # local: surgery imports models, keep this module light

    if ranking not in ("uniform", "global"):
        raise UsageError(f"unknown ranking {ranking!r}; choose one of: global, uniform")

    def plan(r: float) -> dict[str, list[int]]:
        if ranking == "global":
            return keep_global(scores, r, min_channels=min_channels, round_to=round_to)
        return keep_by_ratios(scores, r, min_channels=min_channels, round_to=round_to)

    def macs_of(keep: dict[str, list[int]]) -> int:
        m = copy.deepcopy(model)
        prune(m, keep, torch.zeros(1, *input_shape, device=next(model.parameters()).device))
        return count_macs(m, input_shape)

    if count_macs(model, input_shape) <= target_macs:
        return {g: list(range(len(s))) for g, s in scores.items()}
    smallest = plan(1e-9)
    min_macs = macs_of(smallest)
    if min_macs > target_macs:
        raise UsageError(
            f"MACs budget {target_macs} is below the smallest network this model can be pruned to "
            f"({min_macs} MACs with min_channels={min_channels}, round_to={round_to})"
        )
    lo, hi, best = 1e-9, 1.0, smallest
    for _ in range(iterations):
        mid = (lo + hi) / 2
        keep = plan(mid)
        if macs_of(keep) <= target_macs:
            lo, best = mid, keep
        else:
            hi = mid
    return best
