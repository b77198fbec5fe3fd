"""Online grow/prune training (after Ahmadluei et al. 2023): the network finds its own widths.

Every ``eval_every_steps`` training steps (an *evaluation*) each channel's profit is
re-estimated on a few training batches and smoothed over evaluations (EMA)::

    profit_k = γ·norm(P_self,k) + (1−γ)·norm(P_next,k)    (``pruning.criteria.profit``)

where P_self is ``taylor_fo`` (the loss change if channel k goes), P_next how much the
next layers use channel k, and norm divides by the group's maximum. Channels split from
one another form a *family* that is scored as one channel (the sum of its members' terms
before squaring), and the group mean counts each family once, so a split leaves every
prune decision as it was (``pruning.criteria.profit``). Then:

* **prune** the channels whose EMA profit stayed below ``prune_threshold`` × the group's
  mean for ``patience`` evaluations in a row (never below ``min_channels``);
* **grow** the groups whose mean profit ranks in the top ``grow_top_q`` of all groups
  and that did not change for ``patience`` evaluations: ``ceil(grow_fraction·C)`` new
  filters, split from the highest-profit ones (Net2Wider, ``grow_method="split"``) or
  with zero outgoing weights (``"zero"``), never beyond ``max_width_mult`` × the width
  the group had at the start;
* carry the optimizer's momentum over: sliced for kept channels, zero for new ones,
  untouched tensors keep theirs.

Search stops when no group changed for ``stop_after`` evaluations, when a MACs budget
is met (reached from above, or filled from below to within ``BUDGET_TOLERANCE``), or
after ``max_epochs``; the current epoch is completed and ``finetune_epochs`` follow.
Over budget, pruning is more aggressive (no patience: the lowest-profit channels of a
global ranking go until MACs drop by ``OVER_BUDGET_STEP`` or reach the budget) and
nothing grows; under it, growth never crosses it. A search that ends above the budget
(``max_epochs`` ran out first) is cut to it at once, by the same global ranking, before
finetuning: the final model never exceeds the budget.

The search trains at the constant peak LR of the ``TrainConfig`` (widths are still
moving; a decayed LR would freeze new filters); finetuning decays from that rate (or
``finetune_lr``) to 0 by a cosine.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.cost import count_macs
from pruning.criteria import combine_profit, p_next, p_self
from pruning.errors import UsageError
from pruning.selection import keep_for_macs
from pruning.surgery import GROW_METHODS, GroupGraph, grow, param_index_maps
from pruning.train import (
    EpochMetrics,
    TrainConfig,
    cosine_lr,
    evaluate,
    make_optimizer,
    make_scaler,
    resolve_device,
    set_lr,
    train_step,
)

log = logging.getLogger(__name__)

#: A training step costs about 3 forward passes (forward + backward for activations and
#: weights); ``train_macs`` counts MACs × samples × this factor.
TRAIN_STEP_FORWARDS = 3

#: Below the budget, the search stops once MACs are within this fraction of it.
BUDGET_TOLERANCE = 0.05

#: A pruned channel counts as *churn* when it was grown at most this many evaluations
#: earlier (grown, then pruned before it had a chance to learn).
CHURN_WINDOW = 2

#: Over the budget, one evaluation cuts at most this fraction of the MACs (a gradual
#: approach lets the profits of the survivors be re-estimated between cuts).
OVER_BUDGET_STEP = 0.2


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the online grow/prune loop (see the module docstring for what each does).

    ``budget_macs`` is per-sample MACs (Conv + Linear) or None for no budget.
    ``finetune_lr`` None starts finetuning at the search's (peak) learning rate.
    """

    eval_every_steps: int = 10
    gamma: float = 0.5
    prune_threshold: float = 0.5
    patience: int = 2
    grow_fraction: float = 0.25
    grow_top_q: float = 0.25
    max_width_mult: float = 2.0
    grow_method: str = "split"
    noise: float = 0.01
    min_channels: int = 2
    round_to: int = 1
    stop_after: int = 6
    budget_macs: int | None = None
    max_epochs: int = 20
    finetune_epochs: int = 5
    finetune_lr: float | None = None
    ema: float = 0.9
    calib_batches: int = 2

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UsageError(what)

        need(self.eval_every_steps >= 1, f"eval_every_steps must be >= 1, got {self.eval_every_steps}")
        need(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        need(0.0 <= self.prune_threshold <= 1.0, f"prune_threshold must be in [0, 1], got {self.prune_threshold}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        need(0.0 <= self.grow_fraction <= 4.0, f"grow_fraction must be in [0, 4], got {self.grow_fraction}")
        need(0.0 <= self.grow_top_q <= 1.0, f"grow_top_q must be in [0, 1], got {self.grow_top_q}")
        need(self.max_width_mult > 0, f"max_width_mult must be > 0, got {self.max_width_mult}")
        need(self.grow_method in GROW_METHODS,
             f"unknown grow method {self.grow_method!r}; choose one of: {', '.join(GROW_METHODS)}")
        need(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        need(self.min_channels >= 1, f"min_channels must be >= 1, got {self.min_channels}")
        need(self.round_to >= 1, f"round_to must be >= 1, got {self.round_to}")
        need(self.stop_after >= 1, f"stop_after must be >= 1, got {self.stop_after}")
        need(self.budget_macs is None or self.budget_macs > 0, f"budget_macs must be > 0, got {self.budget_macs}")
        need(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        need(self.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        need(self.finetune_lr is None or self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}")
        need(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        need(self.calib_batches >= 1, f"calib_batches must be >= 1, got {self.calib_batches}")


@dataclass
class AdaptiveResult:
    """What the loop produced.

    ``history`` has one dict per evaluation: ``step``, ``epoch``, ``widths`` (after the
    evaluation's surgery), ``macs`` (per sample), ``pruned``/``grown`` (channels per
    group), ``churned`` (of the pruned, those grown at most ``CHURN_WINDOW`` evaluations
    earlier, per group), ``pruned_grown`` (of the pruned, those grown at any time during
    this search, per group), ``over_budget``. ``train_macs`` is the total training compute:
    Σ over training steps and profit estimations of per-sample MACs × samples × 3
    (forward + backward ≈ 3 forward passes); validation passes are not counted.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    train_macs: int
    wall_s: float
    epochs: int
    val_acc: float
    search_epochs: int = 0
    stop_reason: str = ""
    initial_widths: dict[str, int] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    epoch_metrics: list[EpochMetrics] = field(default_factory=list)


def floor_width(size: int, min_channels: int, round_to: int = 1) -> int:
    """The narrowest a group of ``size`` channels can be pruned to.

    ``min_channels`` rounded up to ``round_to``, at most ``size`` (as ``_plan_prune`` and
    ``selection.keep_for_macs`` round).
    """
    n = max(1, min_channels)
    return min(size, int(math.ceil(n / round_to) * round_to) if round_to > 1 else n)


def smallest_macs(model: nn.Module, input_shape: tuple[int, ...], min_channels: int, round_to: int = 1) -> int:
    """MACs per sample of ``model`` with every group cut to its floor (the smallest the loop can reach).

    The floor is ``floor_width``: with ``round_to`` > 1 it lies above ``min_channels``, as in every prune.
    """
    small = copy.deepcopy(model).cpu()
    graph = GroupGraph(small, torch.zeros(1, *input_shape))
    graph.prune({g: range(floor_width(n, min_channels, round_to)) for g, n in graph.widths().items()})
    return count_macs(small, input_shape)


def check_budget(model: nn.Module, input_shape: tuple[int, ...], cfg: AdaptiveConfig) -> None:
    """``UsageError`` if ``cfg.budget_macs`` is below the smallest network the loop can reach."""
    if cfg.budget_macs is None:
        return
    floor = smallest_macs(model, input_shape, cfg.min_channels, cfg.round_to)
    if cfg.budget_macs < floor:
        raise UsageError(
            f"MACs budget {cfg.budget_macs} is below the smallest network this model can be pruned to "
            f"({floor} MACs with min_channels={cfg.min_channels}, round_to={cfg.round_to})"
        )


def _remap(t: torch.Tensor, dims: Mapping[int, list[int]]) -> torch.Tensor:
    """Gather ``t`` along each dim by old index; -1 (a new channel) becomes zeros."""
    for dim, idx in dims.items():
        index = torch.tensor(idx, device=t.device)
        t = t.index_select(dim, index.clamp(min=0))
        fresh = (index < 0).nonzero().flatten()
        if len(fresh):
            t = t.index_fill(dim, fresh, 0)
    return t


class _Loop:
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


def run_adaptive(
    model: nn.Module,
    data: Any,
    train_cfg: TrainConfig,
    cfg: AdaptiveConfig,
    *,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    on_finetune: Callable[[int], None] | None = None,
) -> AdaptiveResult:
    """Train ``model`` in place while pruning and growing its channel groups; then finetune.

    ``train_cfg`` gives the optimizer, batch size, peak LR, seed and device (its
    ``epochs`` is not used: ``cfg.max_epochs`` and ``cfg.finetune_epochs`` are).
    ``on_epoch(metrics, model)`` is called after every epoch, search and finetune alike;
    ``on_finetune(search_epochs)`` once, when the search has stopped and finetuning starts.
    A search that stopped above ``cfg.budget_macs`` (``max_epochs`` ran out first) is cut
    to the budget before finetuning, so the final model never exceeds it.
    Raises ``UsageError`` when the budget is below the smallest reachable network.
    """
    t0 = time.perf_counter()
    device = resolve_device(train_cfg.device)
    check_budget(model, tuple(data.input_shape), cfg)
    model.to(device)
    loop = _Loop(model, data, train_cfg, cfg, device)
    optimizer = make_optimizer(model, train_cfg)
    scaler = make_scaler(device, train_cfg)
    steps_per_epoch = max(1, math.ceil(len(data.train) / train_cfg.batch_size))
    history: list[dict[str, Any]] = []
    metrics: list[EpochMetrics] = []
    train_macs = 0
    step, unchanged, stop_reason = 0, 0, ""

    def budget_met() -> bool:
        if cfg.budget_macs is None or loop.macs > cfg.budget_macs:
            return False
        from_above = any(h["over_budget"] for h in history)  # this evaluation's record included
        return from_above or loop.macs >= (1 - BUDGET_TOLERANCE) * cfg.budget_macs

    def run_epoch(epoch: int, lr_at: Callable[[int], float], search: bool) -> None:
        nonlocal optimizer, train_macs, step, unchanged, stop_reason
        e0 = time.perf_counter()
        model.train()
        losses = []
        batches = data.train.batches(train_cfg.batch_size, shuffle=True, seed=train_cfg.seed * 100_003 + epoch,
                                     device=device, augment=train_cfg.augment)
        for i, (x, y) in enumerate(batches):
            lr = lr_at(i)
            set_lr(optimizer, lr)
            losses.append(train_step(model, optimizer, x, y, train_cfg, scaler))
            train_macs += TRAIN_STEP_FORWARDS * loop.macs * len(y)
            step += 1
            if search and not stop_reason and step % cfg.eval_every_steps == 0:
                optimizer, record = loop.evaluate(optimizer, step, epoch + 1)
                train_macs += record.pop("calib_macs")
                history.append(record)
                model.train()
                unchanged = 0 if (record["pruned"] or record["grown"]) else unchanged + 1
                if budget_met():
                    stop_reason = f"MACs budget met at evaluation {loop.evaluations}"
                elif unchanged >= cfg.stop_after:
                    stop_reason = f"no change for {cfg.stop_after} evaluations"
        m = EpochMetrics(epoch=epoch + 1, train_loss=sum(losses) / max(1, len(losses)),
                         val_acc=evaluate(model, data.val, device=device), lr=lr_at(len(losses)),
                         wall_s=time.perf_counter() - e0)
        log.info("epoch %d loss %.4f val_acc %.4f MACs %d widths %s", m.epoch, m.train_loss, m.val_acc,
                 loop.macs, list(loop.widths().values()))
        metrics.append(m)
        if on_epoch is not None:
            on_epoch(m, model)

    epoch = 0
    while epoch < cfg.max_epochs and not stop_reason:
        run_epoch(epoch, lambda i: train_cfg.lr, search=True)
        epoch += 1
    search_epochs = epoch
    stop_reason = stop_reason or f"max_epochs ({cfg.max_epochs}) reached"
    log.info("search stopped after %d epochs: %s", search_epochs, stop_reason)
    if cfg.budget_macs is not None and loop.macs > cfg.budget_macs:
        optimizer = loop.cut_to_budget(optimizer)
        stop_reason += f"; cut to the MACs budget ({loop.macs} MACs)"
        log.info("search ended above the MACs budget: cut to %d MACs before finetuning", loop.macs)
    if on_finetune is not None:
        on_finetune(search_epochs)
    ft_peak = cfg.finetune_lr if cfg.finetune_lr is not None else train_cfg.lr
    ft_steps = steps_per_epoch * cfg.finetune_epochs
    for k in range(cfg.finetune_epochs):
        first = k * steps_per_epoch
        run_epoch(epoch, lambda i, first=first: cosine_lr(ft_peak, first + i, ft_steps), search=False)
        epoch += 1
    return AdaptiveResult(
        model=model, history=history, train_macs=int(train_macs), wall_s=time.perf_counter() - t0,
        epochs=epoch, val_acc=metrics[-1].val_acc if metrics else evaluate(model, data.val, device=device),
        search_epochs=search_epochs, stop_reason=stop_reason, initial_widths=dict(loop.initial),
        widths=GroupGraph(model, loop.example).widths(), epoch_metrics=metrics,
    )
