"""Budget-exact widths: scale a relative width *profile* until the pruned model hits a MACs target.

A profile maps group names to relative keep values in (0, 1]; its *projection* at a target
keeps ``clip(s·profile[g], 0, 1)·C_g`` channels of group g (``min_channels`` and ``round_to``
honoured as in :mod:`pruning.selection`), with the scale ``s`` found by bisection so that the
pruned model's MACs are as close to the target as rounding allows. When rounding leaves the
result outside ``±tol`` of the target, a greedy correction adds or removes one ``round_to``
unit at a time on the group furthest from its share of the profile (or, when no single unit
lands inside, moves one unit between two groups), until it is within. Groups a profile does not
name get 1.0; groups without scores are not pruned.
``uniform`` is the profile of all ones (the same ratio everywhere, as ``--target-macs`` does).

Speed is the point: a screening projects hundreds of candidates. Pruning a model copy per
bisection step (``keep_for_macs``) costs a dependency graph per step; here the MACs are a
:class:`MacsPolynomial` of the group widths instead, exact by construction (a Conv2d costs
``H_out·W_out·k_h·k_w·(C_in/groups)·C_out``, a Linear ``in·out``: each ``C`` is affine in at most
the widths of the groups it belongs to, so the total is a quadratic polynomial), built once per
model from its group graph. ``Projector.prune`` cuts a model and checks its counted MACs
against the polynomial, so a model the polynomial does not describe fails loudly, never quietly.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.selection import _round_count, _top, check_ratio

#: Bisection steps on the scale: 2^-50 of its range, far below one channel.
_BISECT_STEPS = 50


def uniform_profile(groups: Sequence[str] | Mapping[str, object]) -> dict[str, float]:
    """The profile of all ones: the same keep ratio in every group."""
    return {g: 1.0 for g in groups}


def random_profile(
    groups: Sequence[str] | Mapping[str, object], rng: random.Random, *, low: float = 0.1
) -> dict[str, float]:
    """A random profile: each group's relative keep value uniform in ``[low, 1]`` (EagleEye draws
    per-layer ratios uniformly; the projection then scales them to the budget)."""
    if not 0.0 < low <= 1.0:
        raise UsageError(f"random profile low must be in (0, 1], got {low}")
    return {g: rng.uniform(low, 1.0) for g in groups}


@dataclass(frozen=True)
class _Side:
    full: int  # channels (or input columns / groups) at full width
    deps: tuple[tuple[str, int], ...]  # (group, channels of this side per group channel)


@dataclass(frozen=True)
class _Term:
    layer: str
    coef: int  # MACs per (input channel per conv group) x (output channel)
    div: int  # conv groups (1 for dense convs, depthwise convs and Linear)
    cin: _Side
    cout: _Side


def _width(side: _Side, sizes: Mapping[str, int], widths: Mapping[str, int]) -> int:
    return side.full - sum(k * (sizes[g] - widths[g]) for g, k in side.deps)


class MacsPolynomial:
    """MACs of ``model`` as an exact function of its group widths (as ``pruning.cost.count_macs``
    counts them: Conv2d and Linear only). Build once per model; evaluating costs microseconds."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], graph: object | None = None) -> None:
        from pruning.surgery import GroupGraph  # local: surgery imports torch-pruning, keep import light

        device = next(model.parameters()).device
        if graph is None:
            graph = GroupGraph(model, torch.zeros(1, *input_shape, device=device))
        self.sizes: dict[str, int] = dict(graph.widths())  # type: ignore[attr-defined]
        deps: dict[tuple[str, str], dict[str, int]] = {}  # (layer, side) -> group -> channels per group channel
        for g in graph.groups:  # type: ignore[attr-defined]
            for m in g.members:
                if not isinstance(m.module, (nn.Conv2d, nn.Linear)):
                    continue
                n = len(set(m.idxs))
                if n % g.size:
                    raise ValueError(f"layer {m.name} has {n} channels in group {g.name} of {g.size}: not a multiple")
                deps.setdefault((m.name, m.side), {})[g.name] = n // g.size
        self.terms: list[_Term] = []
        for name, layer_macs in _layer_macs(model, input_shape).items():
            m = model.get_submodule(name)
            div = 1
            if isinstance(m, nn.Conv2d):
                cin_full, cout_full = m.in_channels, m.out_channels
                if m.groups > 1 and m.groups == m.in_channels:
                    # A depthwise conv's groups follow its channels (torch-pruning keeps groups == C):
                    # it reads 1 input channel per output channel at any width, linear in C_out.
                    cin = _Side(1, ())
                else:
                    # Other grouped convs keep their groups: MACs ~ (C_in / groups) x C_out
                    # (Projector.prune checks the count, should a model behave otherwise).
                    cin, div = _Side(cin_full, tuple(deps.get((name, "in"), {}).items())), m.groups
            else:
                cin_full, cout_full = m.in_features, m.out_features
                cin = _Side(cin_full, tuple(deps.get((name, "in"), {}).items()))
            cout = _Side(cout_full, tuple(deps.get((name, "out"), {}).items()))
            denom = cin.full // div * cout.full
            if layer_macs % denom:
                raise ValueError(f"layer {name}: {layer_macs} MACs is not a multiple of C_in x C_out = {denom}")
            self.terms.append(_Term(name, layer_macs // denom, div, cin, cout))
        self.full = self(self.sizes)

    def __call__(self, widths: Mapping[str, int]) -> int:
        """MACs at ``widths`` (groups not named stay at full size)."""
        w = {**self.sizes, **widths}
        return sum(t.coef * (_width(t.cin, self.sizes, w) // t.div) * _width(t.cout, self.sizes, w) for t in self.terms)


def _layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each Conv2d/Linear for one sample, by the formula of ``pruning.cost.count_macs``."""
    out: dict[str, int] = {}
    hooks = []

    def hook(name: str):  # noqa: ANN202
        def record(m: nn.Module, _inp: tuple, o: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                macs = o[0].numel() * (m.in_channels // m.groups) * kh * kw
            else:
                macs = o[0].numel() * m.in_features
            out[name] = out.get(name, 0) + int(macs)

        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out


@dataclass(frozen=True)
class Projection:
    """A profile projected to a MACs target.

    ``keep``: sorted channel indices to keep per group (for ``pruning.surgery.prune``);
    ``widths``: kept channels per group; ``macs``: MACs of the pruned model (exact: the
    polynomial equals ``count_macs`` of the cut model, which ``Projector.prune`` checks);
    ``scale``: the ``s`` of ``clip(s·profile)``; ``within_tol``: ``|macs - target| <= tol·target``.
    """

    keep: dict[str, list[int]]
    widths: dict[str, int]
    macs: int
    target: int
    scale: float
    within_tol: bool
    profile: dict[str, float]

    @property
    def fraction(self) -> float:
        """MACs reached / target."""
        return self.macs / self.target


class Projector:
    """Projects profiles to MACs targets for one model and one set of scores.

    ``scores``: ``{group: scores}`` of the groups that may be pruned (higher = keep; others
    stay whole); the polynomial is built once here, so every :meth:`project` costs
    microseconds to a few milliseconds.
    """

    def __init__(
        self,
        model: nn.Module,
        scores: Mapping[str, torch.Tensor],
        input_shape: Sequence[int],
        *,
        min_channels: int = 1,
        round_to: int = 1,
        tol: float = 0.01,
        poly: MacsPolynomial | None = None,
    ) -> None:
        if min_channels < 1:
            raise UsageError(f"min_channels must be >= 1, got {min_channels}")
        if round_to < 1:
            raise UsageError(f"round_to must be >= 1, got {round_to}")
        if not 0.0 < tol < 1.0 or math.isnan(tol):
            raise UsageError(f"tol must be in (0, 1), got {tol}")
        self.model, self.input_shape = model, tuple(input_shape)
        self.min_channels, self.round_to, self.tol = min_channels, round_to, tol
        self.poly = poly if poly is not None else MacsPolynomial(model, input_shape)
        unknown = sorted(set(scores) - set(self.poly.sizes))
        if unknown:
            raise UsageError(f"unknown group {unknown[0]!r}; choose one of: {', '.join(self.poly.sizes)}")
        for g, s in scores.items():
            if len(s) != self.poly.sizes[g]:
                raise ValueError(f"scores of group {g!r} have {len(s)} entries for {self.poly.sizes[g]} channels")
        self.scores = {g: scores[g] for g in self.poly.sizes if g in scores}  # model order
        self.sizes = {g: self.poly.sizes[g] for g in self.scores}
        self.floor = {g: _round_count(0, c, min_channels, round_to) for g, c in self.sizes.items()}
        self.min_macs = self.poly(self.floor)
        self.full_macs = self.poly.full

    # ---------------------------------------------------------------- widths

    def _count(self, g: str, ratio: float) -> int:
        c = self.sizes[g]
        return _round_count(int(round(min(1.0, ratio) * c)), c, self.min_channels, self.round_to)

    def _at(self, profile: Mapping[str, float], s: float) -> dict[str, int]:
        return {g: self._count(g, s * profile[g]) for g in self.sizes}

    def step(self, g: str, n: int, up: bool) -> int | None:
        """The next width of group g one ``round_to`` unit up or down, or None at the end."""
        c, r = self.sizes[g], self.round_to
        if up:
            return None if n >= c else min(c, (n // r + 1) * r)
        lower = ((n - 1) // r) * r  # the largest multiple of r below n (n may be the full, odd size)
        return lower if lower >= self.floor[g] and lower >= 1 else None

    def _correct(self, w: dict[str, int], ideal: Mapping[str, float], target: int) -> dict[str, int]:
        """Greedy: one unit at a time on the group furthest from its ideal share, until within tol;
        when no single unit lands in the band, one unit up on a group and one down on another."""
        hi, lo = target * (1 + self.tol), target * (1 - self.tol)
        macs = self.poly(w)

        def skew(v: dict[str, int]) -> float:  # how far the widths are from the profile's proportions
            return max(n / ideal[g] for g, n in v.items()) / min(n / ideal[g] for g, n in v.items())

        for _ in range(sum(self.sizes.values())):
            if lo <= macs <= hi:
                break
            up = macs < lo
            moves = []
            for g, n in w.items():
                m = self.step(g, n, up)
                if m is not None:
                    moves.append((n / ideal[g], g, m, self.poly({**w, g: m})))
            if not moves:
                break
            # Prefer moves that do not jump past the far side of the band, most out of proportion first.
            safe = [mv for mv in moves if (mv[3] <= hi if up else mv[3] >= lo)]
            if safe:
                _, g, m, new = min(safe) if up else max(safe)
                w[g], macs = m, new
                continue
            _, g, m, new = min(moves, key=lambda mv: abs(mv[3] - target))
            if abs(new - target) < abs(macs - target):
                w[g], macs = m, new
                continue
            swaps = []
            for g, n in w.items():
                m_up = self.step(g, n, True)
                for h, k in w.items():
                    m_down = self.step(h, k, False) if h != g else None
                    if m_up is not None and m_down is not None:
                        v = {**w, g: m_up, h: m_down}
                        swaps.append((v, self.poly(v)))
            inside = [(skew(v), i) for i, (v, c) in enumerate(swaps) if lo <= c <= hi]
            if not inside:
                break
            w, macs = swaps[min(inside)[1]]
        return w

    def widths_for(self, profile: Mapping[str, float], target: int) -> tuple[dict[str, int], float]:
        """Widths of ``profile`` projected to ``target`` MACs, and the scale found."""
        self.check_target(target)
        unknown = sorted(set(profile) - set(self.sizes))
        if unknown:
            raise UsageError(f"unknown group {unknown[0]!r} in profile; choose one of: {', '.join(self.sizes)}")
        p = {g: float(profile.get(g, 1.0)) for g in self.sizes}
        for g, v in p.items():
            check_ratio(f"profile of group {g!r}", v)
        if self.full_macs <= target:
            return dict(self.sizes), 1.0 / min(p.values())
        lo, hi = 0.0, 1.0 / min(p.values())  # at hi every ratio clips to 1: the full model
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            if self.poly(self._at(p, mid)) <= target:
                lo = mid
            else:
                hi = mid
        under, over = self._at(p, lo), self._at(p, hi)
        s, w = (lo, under) if target - self.poly(under) <= self.poly(over) - target else (hi, over)
        ideal = {g: max(1e-9, min(1.0, s * p[g]) * self.sizes[g]) for g in self.sizes}
        return self._correct(dict(w), ideal, target), s

    def check_target(self, target: int) -> None:
        """``UsageError`` unless ``target`` is at least the smallest network ``min_channels`` allows."""
        if target < self.min_macs:
            raise UsageError(
                f"MACs target {target} is below the smallest network this model can be pruned to "
                f"({self.min_macs} MACs with min_channels={self.min_channels}, round_to={self.round_to})"
            )

    # ---------------------------------------------------------------- projections

    def project(self, profile: Mapping[str, float], target: int, *, verify: bool = False) -> Projection:
        """``profile`` projected to ``target`` MACs. ``verify``: also cut a copy of the model and
        check its counted MACs (one surgery; the polynomial is exact, so this guards the model)."""
        w, s = self.widths_for(profile, target)
        macs = self.poly(w)
        proj = Projection(keep=self.keep(w), widths=w, macs=macs, target=int(target), scale=s,
                          within_tol=abs(macs - target) <= self.tol * target,
                          profile={g: float(profile.get(g, 1.0)) for g in self.sizes})
        if verify:
            self.prune(proj)
        return proj

    def keep(self, widths: Mapping[str, int]) -> dict[str, list[int]]:
        """The top-scoring ``widths[g]`` channels of each group, sorted."""
        return {g: _top(self.scores[g], int(widths[g])) for g in self.sizes}

    def prune(self, proj: Projection, model: nn.Module | None = None) -> nn.Module:
        """A pruned copy of ``model`` (default: the projector's) at ``proj``; raises if its
        counted MACs differ from ``proj.macs`` (a model the polynomial does not describe)."""
        from pruning.surgery import prune

        m = copy.deepcopy(model if model is not None else self.model)
        prune(m, proj.keep, torch.zeros(1, *self.input_shape, device=next(m.parameters()).device))
        counted = count_macs(m, self.input_shape)
        if counted != proj.macs:
            raise RuntimeError(f"pruned model counts {counted} MACs, the MACs polynomial said {proj.macs}")
        return m

    def sample(
        self, target: int, n: int, *, seed: int = 0, low: float = 0.1, max_draws: int | None = None
    ) -> list[Projection]:
        """``n`` distinct random profiles (``random_profile``, seeded) projected to ``target``, each
        within ``tol``; fewer only if ``max_draws`` (default 20·n) draws do not give ``n``."""
        self.check_target(target)
        rng = random.Random(seed)
        out: list[Projection] = []
        seen: set[tuple[int, ...]] = set()
        for _ in range(max_draws if max_draws is not None else 20 * n):
            if len(out) >= n:
                break
            proj = self.project(random_profile(list(self.sizes), rng, low=low), target)
            key = tuple(proj.widths.values())
            if proj.within_tol and key not in seen:
                seen.add(key)
                out.append(proj)
        return out


def project_profile(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    profile: Mapping[str, float],
    target_macs: int,
    input_shape: Sequence[int],
    *,
    min_channels: int = 1,
    round_to: int = 1,
    tol: float = 0.01,
    verify: bool = True,
) -> Projection:
    """One-off :meth:`Projector.project` (builds the polynomial; for many profiles keep a ``Projector``)."""
    proj = Projector(model, scores, input_shape, min_channels=min_channels, round_to=round_to, tol=tol)
    return proj.project(profile, target_macs, verify=verify)
