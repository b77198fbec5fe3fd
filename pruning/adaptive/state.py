"""The loop's bookkeeping between evaluations: smoothed (EMA) channel profits, prune/grow plans
and the surgery that carries optimizer state (momentum) across them.

:meth:`SearchState.evaluate` is one evaluation: estimate profits, smooth them, plan which
channels go and which groups grow, cut and grow, and rebuild the optimizer.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruning.adaptive.config import CHURN_WINDOW, OVER_BUDGET_STEP, TRAIN_STEP_FORWARDS, AdaptiveConfig
from pruning.cost import count_macs
from pruning.criteria import combine_profit, p_next, p_self
from pruning.selection import keep_for_macs
from pruning.surgery import GroupGraph, grow, param_index_maps
from pruning.train import TrainConfig, make_optimizer


def _remap(t: torch.Tensor, dims: Mapping[int, list[int]]) -> torch.Tensor:
    """Gather ``t`` along each dim by old index; -1 (a new channel) becomes zeros."""
    for dim, idx in dims.items():
        index = torch.tensor(idx, device=t.device)
        t = t.index_select(dim, index.clamp(min=0))
        fresh = (index < 0).nonzero().flatten()
        if len(fresh):
            t = t.index_fill(dim, fresh, 0)
    return t


class SearchState:
    """State of the search: smoothed profits, counters, optimizer state by parameter name."""

    def __init__(self, model: nn.Module, data: Any, train_cfg: TrainConfig, cfg: AdaptiveConfig,
                 device: torch.device) -> None:
        self.model, self.data, self.train_cfg, self.cfg, self.device = model, data, train_cfg, cfg, device
        self.example = data.example_input(1).to(device)
        self.input_shape = tuple(data.input_shape)
        self.initial = GroupGraph(model, self.example).widths()
        self.cap = {g: max(n, math.floor(cfg.max_width_mult * n)) for g, n in self.initial.items()}
        self.ema: dict[str, torch.Tensor] = {}
        self.below: dict[str, torch.Tensor] = {}
        # Evaluation that grew each channel (-1: there from the start), and its split family:
        # a split copy joins its source's family, and a family is scored as one channel.
        self.born = {g: torch.full((n,), -1, dtype=torch.long) for g, n in self.initial.items()}
        self.family = {g: torch.arange(n) for g, n in self.initial.items()}
        self.quiet = dict.fromkeys(self.initial, 0)  # evaluations since the group last changed
        self.macs = count_macs(model, self.input_shape)
        self.evaluations = 0

    def widths(self) -> dict[str, int]:
        """Current width of every group (tracked, so no graph is built for it)."""
        return {g: len(self.ema[g]) if g in self.ema else n for g, n in self.initial.items()}

    # -- profit ------------------------------------------------------------------------
    def _calibration(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.data.train.batches(
            self.train_cfg.batch_size, shuffle=True, seed=self.train_cfg.seed * 7919 + self.evaluations,
            device=self.device,
        )
        return list(itertools.islice(batches, self.cfg.calib_batches))

    def _profit(self, graph: GroupGraph) -> tuple[dict[str, torch.Tensor], int]:
        """Profit per channel and the samples its estimation saw."""
        nxt = p_next(graph.groups, self.family)
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.cfg.gamma > 0:
            batches = self._calibration()
            own = p_self(self.model, graph.groups, batches, self.family)
        else:
            own = {g: torch.zeros_like(v) for g, v in nxt.items()}
        return combine_profit(own, nxt, self.cfg.gamma), sum(len(y) for _, y in batches)

    def _smooth(self, profit: Mapping[str, torch.Tensor]) -> None:
        a = self.cfg.ema
        for g, p in profit.items():
            p = p.double()
            self.ema[g] = p if g not in self.ema else a * self.ema[g] + (1 - a) * p
            self.below.setdefault(g, torch.zeros(len(p), dtype=torch.long))

    # -- decisions ---------------------------------------------------------------------
    def mean_profit(self, g: str) -> float:
        """The group's mean EMA profit over split families (each family counted once), so a
        split, which copies a family's profit to a new member, does not move the mean."""
        _, inverse, counts = torch.unique(self.family[g], return_inverse=True, return_counts=True)
        weight = 1.0 / counts[inverse].double()
        return float((weight * self.ema[g]).sum() / weight.sum())

    def _round(self, n: int) -> int:
        r = self.cfg.round_to
        return int(math.ceil(n / r) * r) if r > 1 else n

    def _plan_prune(self, over_budget: bool) -> dict[str, list[int]]:
        """Channels to keep per group that loses channels.

        Under budget: channels below ``prune_threshold`` x the group mean for ``patience``
        evaluations in a row. Over budget: the lowest-profit channels of one global ranking
        (per-group L2-normalised, ``selection.keep_for_macs``) until MACs fall by
        ``OVER_BUDGET_STEP`` or to the budget, whichever is less - without patience.
        """
        for g, ema in self.ema.items():
            low = ema < self.cfg.prune_threshold * self.mean_profit(g)
            self.below[g] = torch.where(low, self.below[g] + 1, torch.zeros_like(self.below[g]))
        budget = self.cfg.budget_macs
        if over_budget and budget is not None:
            target = max(budget, int(self.macs * (1 - OVER_BUDGET_STEP)))
            keep = keep_for_macs(self.model, self.ema, target, self.input_shape, ranking="global",
                                 min_channels=self.cfg.min_channels, round_to=self.cfg.round_to)
            return {g: k for g, k in keep.items() if len(k) < len(self.ema[g])}
        keep = {}
        for g, ema in self.ema.items():
            drop = int((self.below[g] >= self.cfg.patience).sum())
            size = len(ema)
            n_keep = min(size, self._round(max(self.cfg.min_channels, size - drop)))
            if n_keep < size:
                order = sorted(range(size), key=lambda k: (-float(ema[k]), k))
                keep[g] = sorted(order[:n_keep])
        return keep

    def _plan_grow(self, skip: set[str]) -> dict[str, int]:
        """Channels to add per group: top-q groups by mean profit, quiet for ``patience`` evaluations."""
        if self.cfg.grow_fraction == 0 or self.cfg.grow_top_q == 0:
            return {}
        ranked = sorted(self.ema, key=lambda g: -self.mean_profit(g))
        top = ranked[: max(1, math.ceil(self.cfg.grow_top_q * len(ranked)))]
        add = {}
        for g in top:
            size = len(self.ema[g])
            if g in skip or self.quiet[g] < self.cfg.patience or size >= self.cap[g]:
                continue
            target = min(self.cap[g], self._round(size + math.ceil(self.cfg.grow_fraction * size)))
            if target > size:
                add[g] = target - size
        return add

    def _fit_budget(self, add: dict[str, int]) -> dict[str, int]:
        """Shrink a growth plan (halving the last groups' additions) until it fits the budget."""
        if self.cfg.budget_macs is None or not add:
            return add
        plan = dict(add)
        for g in reversed(list(add)):
            while plan.get(g, 0) > 0:
                trial = copy.deepcopy(self.model)
                grow(trial, plan, self.example, method="zero")
                if count_macs(trial, self.input_shape) <= self.cfg.budget_macs:
                    return plan
                plan[g] //= 2
            plan.pop(g, None)
        return plan

    # -- surgery -----------------------------------------------------------------------
    def _prune(self, graph: GroupGraph, keep: Mapping[str, list[int]], state: dict[str, dict]
               ) -> tuple[dict[str, int], dict[str, int]]:
        """Prune. Returns, per group, the pruned channels that this search grew: within the
        last ``CHURN_WINDOW`` evaluations (churn), and at any time."""
        self._carry(param_index_maps(graph, keep), state)
        graph.prune(keep)
        churn, grown = {}, {}
        for g, kept in keep.items():
            dropped = torch.ones(len(self.born[g]), dtype=torch.bool)
            dropped[kept] = False
            born = self.born[g][dropped]
            churn[g] = int((born >= max(0, self.evaluations - CHURN_WINDOW)).sum())
            grown[g] = int((born >= 0).sum())
            for per_channel in (self.ema, self.below, self.born, self.family):
                per_channel[g] = per_channel[g][kept]
        return {g: n for g, n in churn.items() if n}, {g: n for g, n in grown.items() if n}

    def _grow(self, add: Mapping[str, int], state: dict[str, dict]) -> None:
        graph = GroupGraph(self.model, self.example)
        sources = {}
        for g, n in add.items():
            order = sorted(range(len(self.ema[g])), key=lambda k: (-float(self.ema[g][k]), k))
            sources[g] = [order[t % len(order)] for t in range(n)]
        change = {g: [*range(graph.widths()[g]), *[-1] * n] for g, n in add.items()}
        self._carry(param_index_maps(graph, change), state)
        grow(self.model, add, self.example, method=self.cfg.grow_method, sources=sources,
             noise=self.cfg.noise, seed=self.train_cfg.seed * 7919 + self.evaluations)
        for g, src in sources.items():
            # A split copy joins its source's family and has its profit; a zero-outgoing one
            # is a family of its own and gets the group mean.
            if self.cfg.grow_method == "split":
                new, fam = self.ema[g][src], self.family[g][src]
            else:
                new = torch.full((len(src),), self.mean_profit(g), dtype=self.ema[g].dtype)
                fam = int(self.family[g].max()) + 1 + torch.arange(len(src))
            self.ema[g] = torch.cat([self.ema[g], new])
            self.family[g] = torch.cat([self.family[g], fam])
            self.below[g] = torch.cat([self.below[g], torch.zeros(len(src), dtype=torch.long)])
            self.born[g] = torch.cat([self.born[g], torch.full((len(src),), self.evaluations, dtype=torch.long)])

    @staticmethod
    def _carry(maps: Mapping[str, Mapping[int, list[int]]], state: dict[str, dict]) -> None:
        for name, dims in maps.items():
            if name in state:
                state[name] = {k: _remap(v, dims) if torch.is_tensor(v) and v.ndim else v
                               for k, v in state[name].items()}

    def evaluate(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> tuple[torch.optim.Optimizer, dict]:
        """One evaluation: profit, prune, grow, optimizer rebuilt if anything changed."""
        graph = GroupGraph(self.model, self.example)
        profit, samples = self._profit(graph)
        calib_macs = TRAIN_STEP_FORWARDS * self.macs * samples
        self._smooth(profit)
        budget = self.cfg.budget_macs
        over = budget is not None and self.macs > budget
        keep = self._plan_prune(over)
        removed = {g: len(self.ema[g]) - len(kept) for g, kept in keep.items()}
        add = {} if over else self._fit_budget(self._plan_grow(skip=set(keep)))
        changed = set(keep) | set(add)
        churn: dict[str, int] = {}
        pruned_grown: dict[str, int] = {}
        if changed:
            names = {p: n for n, p in self.model.named_parameters()}
            state = {names[p]: dict(s) for p, s in optimizer.state.items() if p in names}
            if keep:
                churn, pruned_grown = self._prune(graph, keep, state)
            if add:
                self._grow(add, state)
            optimizer = self._rebuild(optimizer, state)
        for g in self.quiet:
            self.quiet[g] = 0 if g in changed else self.quiet[g] + 1
        self.evaluations += 1
        record = {
            "evaluation": self.evaluations, "step": step, "epoch": epoch,
            "widths": self.widths(), "macs": self.macs,
            "pruned": removed,
            "grown": dict(add), "churned": churn, "pruned_grown": pruned_grown,
            "over_budget": over, "calib_macs": calib_macs,
        }
        return optimizer, record

    def _rebuild(self, optimizer: torch.optim.Optimizer, state: dict[str, dict]) -> torch.optim.Optimizer:
        """A new optimizer for the changed model, with the carried state; MACs recounted."""
        optimizer = make_optimizer(self.model, self.train_cfg, lr=optimizer.param_groups[0]["lr"])
        for name, p in self.model.named_parameters():
            s = state.get(name)
            if s is not None and all(not torch.is_tensor(v) or v.ndim == 0 or v.shape == p.shape
                                     for v in s.values()):
                optimizer.state[p] = s
        self.macs = count_macs(self.model, self.input_shape)
        return optimizer

    def cut_to_budget(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Prune to ``budget_macs`` at once (one global profit ranking, ``keep_for_macs``, which
        counts the pruned model's MACs exactly): the search ended above the budget."""
        graph = GroupGraph(self.model, self.example)
        if not self.ema:  # no evaluation ran yet: estimate the profits once
            self._smooth(self._profit(graph)[0])
        keep = keep_for_macs(self.model, self.ema, self.cfg.budget_macs, self.input_shape, ranking="global",
                             min_channels=self.cfg.min_channels, round_to=self.cfg.round_to)
        keep = {g: k for g, k in keep.items() if len(k) < len(self.ema[g])}
        names = {p: n for n, p in self.model.named_parameters()}
        state = {names[p]: dict(s) for p, s in optimizer.state.items() if p in names}
        self._prune(graph, keep, state)
        return self._rebuild(optimizer, state)
