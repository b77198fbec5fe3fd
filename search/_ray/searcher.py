"""``LedgerSearch``: Ray Tune's ``OptunaSearch`` reconciled with the ledger, and its factory.

Defined at module level so that Ray pickles it by reference (``tuner.pkl``, searcher
checkpoints) and ``Tuner.restore`` rebuilds it from the current code.
"""

from __future__ import annotations

import functools
import logging
import pickle
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.results import ledger
from search.study import space
from search.config import ExperimentConfig
from search.results.expdir import JOURNAL_FILE, study_name
from search.study.journal import flush_journal, open_journal
from search.results.storage import Store, as_store
from search.results.ledger import is_missing, params_of
from search.study.samplers import PENALISES_MACS, make_sampler
from search.study.screen import requeue_lost

logger = logging.getLogger(__name__)

MACS_CONSTRAINT = "macs_budget"  # Optuna constraint name: macs - budget, feasible when <= 0

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The searchers of this driver, built or restored by Ray: their journals are flushed when a session ends.
_LIVE: weakref.WeakSet[LedgerSearch] = weakref.WeakSet()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


class LedgerSearch(OptunaSearch):
    """``OptunaSearch`` that knows the ledger: exact trial count, errors, budgets.

    - stops proposing once the ledger's trials plus the ones this searcher started
      reach ``num_samples`` (Ray's own counter does not survive a driver kill exactly);
    - tells Optuna a trial's result only once, as FAIL for an errored trial and PRUNED
      for a trial stopped early by ASHA (result keys: :class:`search.trial.result.TrialResult`);
    - records ``ray_trial_id`` and ``macs`` on each Optuna trial, and with a MACs budget
      the constraint ``macs_budget`` = macs - budget (TPE and NSGA-II prefer feasible
      trials, <= 0);
    - at the start of each session, fails Optuna trials left RUNNING by a killed driver
      and adds ledger trials the study does not hold (warm start from the ledger);
    - proposes the ``baselines`` first, those the ledger does not hold yet (found by their
      identity, ``space.baseline_identity``). Baselines never enter the Optuna study:
      their params (one ratio, or one global ranking) are not points of the sampler's
      space, so the sampler's history holds only trials whose params describe what ran.
    """

    def __init__(self, *, exp_dir: Store | str, num_samples: int, cfg: ExperimentConfig, groups: list[str],
                 penalise_macs: bool, baselines: Sequence[Mapping[str, Any]] = (), **kwargs: Any) -> None:
        self._exp_dir = exp_dir
        self._num_samples = num_samples
        self._cfg = cfg
        self._groups = groups
        self._penalise = penalise_macs
        self._prior_ids: set[str] | None = None  # ledger ids at session start; not checkpointed
        self._baselines = [dict(b) for b in baselines]
        self._baseline_trials: dict[str, dict] = {}  # Ray trial id -> the baseline proposed to it
        self._pending: list[dict] = []  # baselines still to propose; recomputed at session start
        super().__init__(**kwargs)
        _LIVE.add(self)

    # -- the count
    def _session_start(self) -> None:
        trials = ledger.read_trials(self._exp_dir)
        self._prior_ids = set(trials["trial_id"].astype(str))
        # Held: what the ledger recorded, and baselines proposed (to trials Ray restored and
        # will run again under the same id) but not recorded yet.
        held = [params_of(row) for row in trials.to_dict("records")]
        held += [p for tid, p in self._baseline_trials.items() if tid not in self._prior_ids]
        self._pending = space.missing_baselines(self._baselines, held)
        self._reconcile(trials)
        if self._cfg.search.screen is not None and self._ot_study is not None:
            requeue_lost(self._ot_study, trials)  # screened candidates a killed driver lost
        if self.__dict__.pop("_restored", False) and self._ot_study is not None:
            # Ray's snapshot rewound the sampler's random state: without a reseed it would
            # propose again the params of trials started after the snapshot (some of
            # which finished and are in the ledger).
            self._ot_study.sampler.reseed_rng()

    def suggest(self, trial_id: str) -> dict | None:
        if self._prior_ids is None:
            self._session_start()
        if trial_id in self._baseline_trials:
            return dict(self._baseline_trials[trial_id])
        if trial_id not in self._ot_trials:
            started = self._prior_ids | set(self._ot_trials) | set(self._baseline_trials)
            if len(started) >= self._num_samples:
                return Searcher.FINISHED
            if self._pending:  # outside Optuna: see the class docstring
                self._baseline_trials[trial_id] = self._pending.pop(0)
                return dict(self._baseline_trials[trial_id])
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    # -- results
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return None  # no Optuna pruner; ASHA (if any) stops trials on the Ray side

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._prior_ids is None:  # a restored session that proposes nothing new still reconciles
            self._session_start()
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        result = result or {}
        # A replayed trial (from the ledger) is told too: a driver killed between the
        # ledger write and this tell left it RUNNING in the journal; skip_if_finished
        # covers the usual case where the journal has it already.
        values: Any = None
        state = TrialState.PRUNED
        if error or result.get("error"):
            state = TrialState.FAIL
        elif result.get("final"):
            values = self._values(result)
            state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        # Never raise from here: Ray would turn the exception into a trial ERROR.
        try:
            if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
                return  # told before the driver was killed
            macs = result.get("macs")
            if not is_missing(macs) and state != TrialState.FAIL:
                ot_trial.set_user_attr("macs", int(macs))
                constraint = self._constraint(macs)
                if constraint is not None:
                    ot_trial.set_constraint(MACS_CONSTRAINT, constraint)
            self._ot_study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - a bad value or a journal race must not stop the search
            logger.warning("optuna: could not record trial %s: %s", trial_id, exc)

    def _constraint(self, macs: Any) -> float | None:
        budget = self._cfg.objectives.macs_budget
        if budget is None or self._penalise:  # CMA-ES ignores constraints
            return None
        return float(macs) - budget

    def _values(self, result: Mapping[str, Any]) -> Any:
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        modes = self._mode if isinstance(self._mode, list) else [self._mode]
        vals = []
        for m in metrics:
            v = result.get(m)
            if is_missing(v):
                return None
            vals.append(float(v))
        budget = self._cfg.objectives.macs_budget
        macs = result.get("macs")
        if self._penalise and budget and macs and macs > budget:
            # Multiplicative, scale-free: 2x over budget halves a maximised objective.
            excess = float(macs) / budget
            vals = [v / excess if mode == "max" else v * excess for v, mode in zip(vals, modes, strict=True)]
        return vals if isinstance(self._metric, list) else vals[0]

    # -- checkpointing (Ray pickles the searcher every ~10 s)
    def save(self, checkpoint_path: str) -> None:
        # The restored searcher reads its trials from the journal: upload it first (object storage).
        flush_journal(self._storage)
        state = self.__dict__.copy()
        state["_prior_ids"] = None
        state["_pending"] = []
        state.pop("_restored", None)
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._prior_ids = None
        self._restored = True
        _LIVE.add(self)

    # -- reconciliation with the ledger
    def settle(self) -> None:
        """Session end: make the journal agree with the ledger (the source of truth).

        A trial this searcher proposed can be recorded in the ledger without Optuna being
        told: a driver killed between the two, then a restored session in which Ray never
        reports that trial again. Each such trial is told now from its ledger row; ledger
        trials the study does not hold at all are added (:meth:`_reconcile`).
        """
        if self._ot_study is None:
            return
        trials = ledger.read_trials(self._exp_dir)
        rows = {str(r["trial_id"]): r for r in trials.to_dict("records")}
        for tid, ot_trial in list(self._ot_trials.items()):
            row = rows.get(tid)
            try:
                if row is None or self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
                    continue
            except Exception:  # noqa: BLE001 - a trial the journal lost: _reconcile adds it from the ledger
                self._ot_trials.pop(tid, None)
                continue
            result = {k: row.get(k) for k in ("val_acc", "macs", "params", "latency_ms")}
            result["final"] = row["status"] == "TERMINATED"
            result["error"] = row.get("error") if row["status"] == "ERROR" else None
            self._completed_trials.discard(tid)
            self.on_trial_complete(tid, result=result)
        self._reconcile(trials)

    def _reconcile(self, ledger_df: Any) -> None:
        study = self._ot_study
        if study is None:
            return
        storage = study._storage
        known = set(self._ot_trials)
        by_ray_id: dict[str, Any] = {}
        stale = 0
        for t in study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("ray_trial_id")
            if t.state == TrialState.RUNNING and rid not in known:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                stale += 1
                continue
            if rid is not None and t.state.is_finished() and t.state != TrialState.FAIL:
                by_ray_id[rid] = t
        added = 0
        for row in ledger_df.to_dict("records"):
            tid = str(row["trial_id"])
            if tid in by_ray_id or tid in known or space.baseline_identity(params_of(row)) is not None:
                continue  # baselines stay out of the study (class docstring)
            if self._add_from_ledger(row):
                added += 1
        if stale or added:
            logger.info("optuna study: %d stale running trial(s) marked failed, %d trial(s) added from the ledger",
                        stale, added)

    def _add_from_ledger(self, row: Mapping[str, Any]) -> bool:
        try:
            params = _flatten(params_of(row))
            distributions = space.param_distributions(self._cfg, self._groups, params)
            distributions = {k: d for k, d in distributions.items() if k in params}
            kept = {k: params[k] for k in distributions}
        except Exception as exc:  # noqa: BLE001 - an old row that no longer fits the space
            logger.info("ledger trial %s does not fit the current search space (%s); not added to the study",
                        row.get("trial_id"), exc)
            return False
        values, state = None, TrialState.FAIL
        if row["status"] == "TERMINATED":
            result = {k: row.get(k) for k in ("val_acc", "macs", "params", "latency_ms")}
            values = self._values({k: (None if is_missing(v) else v) for k, v in result.items()})
            state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        elif row["status"] == "STOPPED":
            state = TrialState.PRUNED
        attrs: dict[str, Any] = {"ray_trial_id": str(row["trial_id"]), "from_ledger": True}
        constraints = {}
        if not is_missing(row.get("macs")) and state != TrialState.FAIL:
            attrs["macs"] = int(row["macs"])
            constraint = self._constraint(row["macs"])
            if constraint is not None:
                constraints[MACS_CONSTRAINT] = constraint
        values_arg = None if values is None else (values if isinstance(values, list) else [values])
        self._ot_study.add_trial(create_trial(state=state, values=values_arg, params=kept,
                                              distributions=distributions, user_attrs=attrs,
                                              constraints=constraints or None))
        return True


# --------------------------------------------------------------------------- the factory


def _metric_mode(cfg: ExperimentConfig) -> tuple[Any, Any]:
    objs = cfg.objectives.objectives
    if len(objs) == 1:
        return objs[0].metric, objs[0].mode
    return [o.metric for o in objs], [o.mode for o in objs]


def flush_searchers() -> None:
    """Session end: settle each searcher's journal with the ledger (:meth:`LedgerSearch.settle`),
    then upload what a synced journal has not uploaded yet."""
    for searcher in list(_LIVE):
        try:
            searcher.settle()
        except Exception as exc:  # noqa: BLE001 - the next session reconciles again
            logger.warning("optuna journal: could not settle it with the ledger: %s", exc)
        try:
            flush_journal(searcher._storage)
        except OSError as exc:  # the ledger is the source of truth; the next session reconciles
            logger.warning("optuna journal: final upload failed: %s", exc)


def make_searcher(cfg: ExperimentConfig, exp_dir: Store | Path, groups: list[str], session_index: int) -> LedgerSearch:
    """The searcher of a new Ray session, its study in ``optuna.journal`` of the experiment's
    store (on object storage: a local cache uploaded after each change); it proposes the
    baselines the ledger lacks first (``LedgerSearch``)."""
    exp_dir = as_store(exp_dir)
    storage = open_journal(exp_dir, JOURNAL_FILE)
    metric, mode = _metric_mode(cfg)
    # Each session seeds its sampler differently: a random sampler seeded as in session 1
    # would propose session 1's points again.
    sampler = make_sampler(**cfg.sampler.model_dump(), seed=cfg.experiment.seed + 1000 * session_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return LedgerSearch(
            exp_dir=exp_dir, num_samples=cfg.num_samples, cfg=cfg, groups=groups,
            penalise_macs=cfg.sampler.name in PENALISES_MACS,
            space=functools.partial(space.suggest, cfg=cfg, groups=groups),
            baselines=space.baseline_params(cfg, groups), metric=metric, mode=mode, sampler=sampler,
            storage=storage, study_name=study_name(cfg),
        )
