"""Budget-exact trials (``objectives.macs_targets``): a width *profile* scaled onto a MACs target.

With targets set, every prune- and scratch-mode trial samples ``macs_target`` (one of the
targets, a fraction of the base model's MACs) and its ratio keys (``search.study.space``) are
read as a *profile*: relative keep ratios, not absolute ones. The trial scales the profile
by one factor onto ``macs_target`` x base MACs (``pruning.budget.Projector``: bisection on
the model's exact MACs polynomial), then corrects the widths so that they land at or below
the target and, where the groups are fine enough, within 1% of it - ``min_channels`` and
``round_to`` honoured - so no trial is spent over its budget and the sampler never has to
learn the constraint. The widths are
handed to the prune schedule as exact per-group ratios (kept/width), so the criterion still
decides *which* channels go; only how many is fixed here.

Adaptive-mode trials take the sampled target as their ``macs_budget_ratio``. A baseline at
a target is the all-ones profile projected onto it (uniform), or a global ranking bisected
onto it (``PruneSpec(target_macs=...)``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pruning.budget import Projector
from pruning.errors import UsageError
from pruning.surgery import GroupGraph
from search.config import ExperimentConfig
from search.trial.materialize import experiment_data, model_for_groups
from search.trial.params import TARGET_KEY, ratios_from_params  # TARGET_KEY: a fraction of the base MACs

__all__ = ["TARGET_KEY", "check_targets", "project_widths", "smallest_fraction", "target_macs", "trial_ratios"]


def target_macs(target: float, base_macs: float) -> int:
    """The MACs budget of ``target`` (a fraction): rounded down, so reaching it is never over it."""
    return max(1, math.floor(float(target) * float(base_macs)))


def _rank_scores(widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
    # Widths depend on the profile alone, not on which channels go: any scores give the same
    # counts (the trial's criterion picks the channels when it cuts).
    return {g: torch.arange(n, 0, -1, dtype=torch.float32) for g, n in widths.items()}


#: Where a projection aims: the band [1 - 2 x AIM_TOL, 1] x the target, never above it.
AIM_TOL = 0.005

_PROJECTORS: dict[tuple, Projector] = {}


def _projector(model: torch.nn.Module, widths: Mapping[str, int], input_shape: Sequence[int], *, min_channels: int,
               round_to: int) -> Projector:
    """One ``pruning.budget.Projector`` per model shape and rounding, per process (it builds the
    model's MACs polynomial once; every projection after that costs microseconds)."""
    key = (type(model).__name__, tuple(widths.items()), tuple(input_shape), min_channels, round_to,
           sum(p.numel() for p in model.parameters()))
    if key not in _PROJECTORS:
        _PROJECTORS[key] = Projector(model, _rank_scores(widths), input_shape, min_channels=min_channels,
                                     round_to=round_to, tol=AIM_TOL)
    return _PROJECTORS[key]


def project_widths(model: torch.nn.Module, widths: Mapping[str, int], profile: Mapping[str, float], budget: int,
                   input_shape: Sequence[int], *, min_channels: int, round_to: int) -> dict[str, int]:
    """``{group: channels kept}``: ``profile`` scaled onto ``budget`` MACs, never above it.

    ``Projector`` lands within ``±tol`` of what it is asked for; asked for
    ``budget / (1 + AIM_TOL)`` with ``tol = AIM_TOL`` it lands in about ``[0.99, 1] x budget``.
    Where rounding leaves it outside (coarse groups, ``round_to``), :func:`_fill` searches
    the widths around it for the closest at or below the budget.
    """
    proj = _projector(model, widths, input_shape, min_channels=min_channels, round_to=round_to)
    proj.check_target(budget)
    if proj.full_macs <= budget:  # a target of 100%: the whole model fits, nothing to cut
        return dict(widths)
    aim = max(proj.min_macs, math.floor(budget / (1.0 + AIM_TOL)))
    kept = dict(proj.widths_for(profile, aim)[0])
    if proj.poly(kept) > budget or proj.poly(kept) < (1.0 - 2 * AIM_TOL) * budget:
        kept = _fill(proj, profile, kept, int(budget))
    return {g: int(kept[g]) for g in widths}


def _fill(proj: Projector, profile: Mapping[str, float], kept: dict[str, int], budget: int,
          tol: float = 2 * AIM_TOL) -> dict[str, int]:
    """The widths closest to ``budget`` at or below it, near ``kept``: a local search on the
    MACs polynomial (``proj.poly``) with moves of up to three groups by a few ``round_to``
    units each, taking the move that gets closest to the budget without going over it
    (ties: the one that stays closest to the profile's shape), until within ``tol`` below it
    or no move gets closer. Starts by stepping down while ``kept`` is over the budget."""
    sizes = proj.sizes

    def spread(k: Mapping[str, int]) -> float:  # how far the widths stray from the profile's shape
        shares = [k[g] / (max(float(profile.get(g, 1.0)), 1e-9) * sizes[g]) for g in sizes]
        return max(shares) - min(shares)

    def moved(k: Mapping[str, int], g: str, d: int) -> int | None:
        """Group g's width ``d`` round_to units up or down (the Projector's own unit steps)."""
        n: int | None = k[g]
        for _ in range(abs(d)):
            n = proj.step(g, n, d > 0)
            if n is None:
                return None
        return n

    best_k, best_m = dict(kept), proj.poly(kept)
    while best_m > budget:  # over: the most out-of-proportion group one unit down (floor: check_target)
        down = [(k, g) for g in sizes if (k := moved(best_k, g, -1)) is not None]
        if not down:
            break
        n, g = max(down, key=lambda t: (best_k[t[1]] / (max(float(profile.get(t[1], 1.0)), 1e-9) * sizes[t[1]]), t[1]))
        best_k[g] = n
        best_m = proj.poly(best_k)
    names = list(sizes)
    size = 3 if len(names) <= 8 else 2 if len(names) <= 16 else 1  # groups moved at once: bounded work
    reach = 3 if len(names) <= 6 else 2  # units per group and move
    steps = [d for d in range(-reach, reach + 1) if d]
    moves = [(combo, deltas) for r in range(1, size + 1) for combo in itertools.combinations(names, r)
             for deltas in itertools.product(steps, repeat=r)]
    for _ in range(64):  # a bound: every accepted move gets closer
        if (1.0 - tol) * budget <= best_m <= budget:
            break
        found: tuple[int, float, dict[str, int]] | None = None
        for combo, deltas in moves:
            trial = dict(best_k)
            for g, d in zip(combo, deltas):
                n = moved(best_k, g, d)
                if n is None:
                    break
                trial[g] = n
            else:
                m = proj.poly(trial)
                if (best_m < m or best_m > budget) and m <= budget and (
                        found is None or (m, -spread(trial)) > (found[0], found[1])):
                    found = (m, -spread(trial), trial)
        if found is None:
            break
        best_m, best_k = found[0], found[2]
    return best_k


def trial_ratios(cfg: ExperimentConfig, params: Mapping[str, Any], base: Any) -> dict[str, float]:
    """``{group: keep ratio}`` of a prune/scratch trial: its ratio keys as they are, or, when
    its params carry ``macs_target``, its profile projected onto that target (exact ratios
    kept/width, so that the schedule's rounding gives back the projected counts)."""
    ratios = ratios_from_params(params, base.group_names)
    if params.get(TARGET_KEY) is None:
        return ratios
    s = cfg.search
    widths = dict(zip(base.group_names, base.widths))
    budget = target_macs(params[TARGET_KEY], base.metrics["macs"])
    kept = project_widths(base.model, widths, ratios, budget, experiment_data(cfg).input_shape,
                          min_channels=s.min_channels, round_to=s.round_to)
    return {g: kept[g] / widths[g] for g in widths}


def smallest_fraction(cfg: ExperimentConfig) -> tuple[float, int]:
    """(MACs of the smallest network ``min_channels``/``round_to`` allow, as a fraction of the
    base model's MACs; the base MACs). Builds the model untrained (or loads
    ``model.checkpoint``); the MACs polynomial is built once per process."""
    model, x = model_for_groups(cfg)
    widths = GroupGraph(model, x).widths()
    proj = _projector(model, widths, tuple(experiment_data(cfg).input_shape), min_channels=cfg.search.min_channels,
                      round_to=cfg.search.round_to)
    return proj.min_macs / proj.full_macs, int(proj.full_macs)


def check_targets(cfg: ExperimentConfig) -> None:
    """UsageError (one line) when a target of ``objectives.macs_targets`` is below the smallest
    network the model can be pruned to; call before anything is written."""
    targets = cfg.objectives.macs_targets
    if not targets:
        return
    low, base_macs = smallest_fraction(cfg)
    for t in targets:
        if target_macs(t, base_macs) < round(low * base_macs):
            raise UsageError(
                f"objectives.macs_targets: target {t:g} ({100 * t:g}% of {base_macs:,} MACs) is below the smallest "
                f"network {cfg.model.name} can be pruned to, {low:.4g} ({100 * low:.3g}%) with "
                f"min_channels={cfg.search.min_channels}, round_to={cfg.search.round_to}")
