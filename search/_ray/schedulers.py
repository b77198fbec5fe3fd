"""Early stopping for searches: MO-ASHA for several objectives, Ray's ASHA for one.

MO-ASHA (Schmucker et al. 2021, "Multi-objective multi-fidelity hyperparameter optimization
with application to fairness") is asynchronous successive halving whose rung decision ranks
trials on all objectives: a trial reaching a rung continues only if it is among the best
``ceil(n / reduction_factor)`` of the ``n`` trials recorded at that rung, ranked by
non-dominated sorting (front 0 first) and, within the boundary front, by crowding distance
(NSGA-II's; larger first). Ranking on accuracy alone would stop exactly the cheap, heavily
pruned trials that form the low-MACs end of the front. A trial continues when fewer than
``ceil(n / reduction_factor)`` recorded trials rank strictly before it, so exact ties at the
boundary continue; the best trial on each objective always survives (front 0, infinite
crowding distance).

Result keys read (the trial reporter emits them; a result without them is never acted on):

- ``rung_epoch`` (the default ``time_attr``): the finetune epoch index, from 1, within the
  trial's *final* pruning step. Absent or None for results that are not comparable across
  trials: adaptive-mode search epochs and the finetune epochs of intermediate iterative
  steps. Such results always get CONTINUE and are not recorded at any rung.
- every objective metric (e.g. ``val_acc`` and ``macs``), finite; a result where one is
  missing, None or NaN gets CONTINUE and is not recorded.
- ``rung_epochs`` (optional): the number of finetune epochs of the trial's final step. A
  result with ``rung_epoch >= rung_epochs`` is recorded at its rung but never stopped:
  stopping a trial at its last epoch saves nothing and loses its final result and model.

``max_t`` is the most finetune epochs a final step can have; rungs sit at
``grace_period * reduction_factor**k < max_t``, and no trial is stopped for reaching
``max_t`` (the trainable ends by itself and still reports its final result).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from search.results.pareto import non_dominated_ranks

logger = logging.getLogger(__name__)

RUNG_EPOCH = "rung_epoch"
RUNG_EPOCHS = "rung_epochs"
MODES = ("max", "min")


# --------------------------------------------------------------------------- pure functions


def _as_matrix(points: Any) -> np.ndarray:
    """(n, m) floats; a flat sequence is n points of one objective."""
    p = np.asarray(points, dtype=float)
    return p.reshape(len(p), -1) if p.size else p.reshape(0, 1)


def nondominated_ranks(points: Any) -> np.ndarray:
    """Pareto front index of each point (0 = non-dominated), all objectives minimised.

    ``points`` is an (n, m) array of finite values; the sort is the ledger's
    (:func:`search.results.pareto.non_dominated_ranks`), counted from 0 here.
    """
    p = _as_matrix(points)
    return non_dominated_ranks(p, ("min",) * p.shape[1]).astype(int) - 1


def crowding_distances(points: Any, ranks: Any | None = None) -> np.ndarray:
    """NSGA-II crowding distance of each point within its own front (larger = lonelier).

    Per objective, the front's two extreme points get infinity and every other point the gap
    between its neighbours divided by the front's range; an objective on which the whole
    front is equal adds nothing. ``ranks`` defaults to ``nondominated_ranks(points)``.
    """
    p = _as_matrix(points)
    ranks = nondominated_ranks(p) if ranks is None else np.asarray(ranks)
    distance = np.zeros(len(p))
    for front in np.unique(ranks):
        members = np.flatnonzero(ranks == front)
        for m in range(p.shape[1]):
            order = members[np.argsort(p[members, m], kind="stable")]
            values = p[order, m]
            span = values[-1] - values[0]
            if span <= 0:
                continue
            distance[order[0]] = distance[order[-1]] = np.inf
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def is_in_top(points: Any, index: int, keep: int) -> bool:
    """Whether ``points[index]`` is among the best ``keep`` points (all objectives minimised).

    Best means a lower front, then within a front a larger crowding distance; the point is in
    the top when fewer than ``keep`` points rank strictly before it (ties count for it).
    """
    ranks = nondominated_ranks(points)
    crowding = crowding_distances(points, ranks)
    r, c = ranks[index], crowding[index]
    ahead = (ranks < r) | ((ranks == r) & (crowding > c))
    return int(ahead.sum()) < keep


# --------------------------------------------------------------------------- result filter


def _time(result: Mapping[str, Any], time_attr: str) -> float | None:
    t = result.get(time_attr)
    return None if t is None else float(t)


def _objectives(result: Mapping[str, Any], metrics: Sequence[str], signs: Sequence[float]) -> np.ndarray | None:
    """The result's objectives as a minimisation vector, or None when one is missing/None/NaN."""
    values = []
    for metric, sign in zip(metrics, signs):
        v = result.get(metric)
        if v is None:
            return None
        v = float(v)
        if math.isnan(v):
            return None
        values.append(sign * v)
    return np.array(values)


def _at_last_epoch(result: Mapping[str, Any], t: float) -> bool:
    last = result.get(RUNG_EPOCHS)
    return last is not None and t >= float(last)


# --------------------------------------------------------------------------- schedulers


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving on several objectives (one bracket); see the module doc.

    Args:
        metrics: the objective result keys, e.g. ``["val_acc", "macs"]``.
        modes: ``"max"`` or ``"min"`` per metric, e.g. ``["max", "min"]``.
        max_t: the most ``time_attr`` units (finetune epochs of the final step) a trial runs.
        grace_period: the first rung; no trial is stopped before it.
        reduction_factor: η; each rung keeps the best ``ceil(n / η)`` of its ``n`` trials.
        time_attr: the result key counting comparable epochs (default ``rung_epoch``).
    """

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], *, max_t: int, grace_period: int = 1,
                 reduction_factor: float = 2, time_attr: str = RUNG_EPOCH):
        super().__init__()
        metrics, modes = list(metrics), list(modes)
        if not metrics or len(modes) != len(metrics):
            raise ValueError(f"MO-ASHA needs one mode per metric; got metrics {metrics} and modes {modes}")
        if bad := [m for m in modes if m not in MODES]:
            raise ValueError(f"unknown mode {bad[0]!r}; choose one of: {', '.join(MODES)}")
        if grace_period < 1 or reduction_factor <= 1 or max_t < 1:
            raise ValueError(f"MO-ASHA needs grace_period >= 1, reduction_factor > 1 and max_t >= 1; got "
                             f"{grace_period}, {reduction_factor}, {max_t}")
        self._metrics, self._modes = metrics, modes
        self._signs = [-1.0 if mode == "max" else 1.0 for mode in modes]
        self._metric = metrics[0]  # Tune checks every result carries the scheduler's `metric`
        self._time_attr = time_attr
        self._max_t = max_t
        self._rf = float(reduction_factor)
        # One rung per milestone below max_t: {trial_id: minimisation vector} recorded there.
        milestones, t = [], float(grace_period)
        while t < max_t:
            milestones.append(t)
            t *= self._rf
        self._rungs: list[tuple[float, dict[str, np.ndarray]]] = [(m, {}) for m in milestones]
        self._num_stopped = 0

    @property
    def milestones(self) -> list[float]:
        """The rung milestones, in ``time_attr`` units, ascending."""
        return [m for m, _ in self._rungs]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Configured at construction; a metric/mode from TuneConfig would conflict (Tune then raises).
        return metric is None and mode is None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        recorded = self._record(trial.trial_id, result)
        if recorded is None:
            return TrialScheduler.CONTINUE
        rung, t = recorded
        if _at_last_epoch(result, t):
            return TrialScheduler.CONTINUE
        ids = list(rung)
        keep = math.ceil(len(ids) / self._rf)
        if is_in_top(np.stack([rung[i] for i in ids]), ids.index(trial.trial_id), keep):
            return TrialScheduler.CONTINUE
        self._num_stopped += 1
        logger.debug("MO-ASHA stops trial %s at %s=%s (%d at the rung, keeping %d)", trial.trial_id,
                     self._time_attr, t, len(ids), keep)
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result:
            self._record(trial.trial_id, result)  # a last comparable result still informs its rung

    def _record(self, trial_id: str, result: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], float] | None:
        """Record a comparable result at the highest rung it reached and has not been recorded at;
        the rung and the time, or None when there is nothing to decide."""
        t = _time(result, self._time_attr)
        point = _objectives(result, self._metrics, self._signs)
        if t is None or point is None:
            return None
        reached = [rung for milestone, rung in self._rungs if t >= milestone]
        if not reached or trial_id in reached[-1]:
            return None
        reached[-1][trial_id] = point
        return reached[-1], t

    def debug_string(self) -> str:
        rungs = " | ".join(f"{self._time_attr}={m:g}: {len(r)} recorded" for m, r in self._rungs)
        return f"Using MO-ASHA on {self._metrics} {self._modes}: num_stopped={self._num_stopped}; {rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class ComparableASHAScheduler(AsyncHyperBandScheduler):
    """Ray's ASHA on one objective, acting on comparable results only (see the module doc):
    results without ``time_attr`` or with a NaN metric get CONTINUE unrecorded, and a result
    at the trial's last epoch (``rung_epochs``) is recorded but never stopped."""

    def _comparable(self, result: Mapping[str, Any]) -> bool:
        return _time(result, self._time_attr) is not None and _objectives(result, [self._metric], [1.0]) is not None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self._comparable(result):
            return TrialScheduler.CONTINUE
        if trial.trial_id not in self._trial_info:  # restored mid-run: Tune does not re-add it
            self.on_trial_add(tune_controller, trial)
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and _at_last_epoch(result, _time(result, self._time_attr)):
            self._num_stopped -= 1  # the bracket has recorded the result; only the STOP is withdrawn
            return TrialScheduler.CONTINUE
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result and self._comparable(result) and trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
        else:
            self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)


def make_scheduler(metrics: Sequence[str], modes: Sequence[str], *, max_t: int, grace_period: int = 1,
                   reduction_factor: float = 2, time_attr: str = RUNG_EPOCH) -> TrialScheduler:
    """The early-stopping scheduler for a search: Ray's ASHA for one objective, MO-ASHA for more.

    ``max_t`` is the most finetune epochs of a final step (``search.finetune_epochs[1]``). With
    no rung below it (``max_t <= grace_period``) nothing can be stopped early: a FIFOScheduler.
    """
    metrics, modes = list(metrics), list(modes)
    if len(metrics) != 1:
        return MOASHAScheduler(metrics, modes, max_t=max_t, grace_period=grace_period,
                               reduction_factor=reduction_factor, time_attr=time_attr)
    if len(modes) != 1 or modes[0] not in MODES:
        raise ValueError(f"ASHA needs one mode of {', '.join(MODES)}; got {modes}")
    if max_t <= grace_period:
        return FIFOScheduler()
    # Ray's ASHA puts rungs at milestones <= its max_t; max_t - 1 keeps them below the last
    # epoch, and stop_last_trials=False lets a trial that reaches it report its final result.
    return ComparableASHAScheduler(time_attr=time_attr, metric=metrics[0], mode=modes[0], max_t=max_t - 1,
                                   grace_period=grace_period, reduction_factor=reduction_factor,
                                   stop_last_trials=False)
