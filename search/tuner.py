"""Run a pruning search on Ray Tune with an Optuna sampler; record every trial in the ledger.

One search session is: prepare the base model once in the driver (``trial.prepare_base``),
put it in the object store, and let a Ray Tune ``Tuner`` run ``trial.run_trial`` for the
parameters that ``_LedgerSearch`` (an ``OptunaSearch``) proposes. A driver-side
:class:`Recorder` callback appends each finished trial to ``trials.parquet`` (and its
epochs to ``epochs.parquet``) with atomic writes, so a killed driver leaves valid files.

Experiment directory layout (``cfg.exp_dir``)::

    config.yaml      the resolved config (``resume`` compares its search hash)
    base.json        the unpruned model's metrics and widths
    trials.parquet   epochs.parquet   pareto.parquet   pareto.png
    optuna.journal   the Optuna study (``optuna-dashboard optuna.journal``)
    progress.json    what the running driver is doing (for ``prunetune status``)
    ray/session-NNN  Ray Tune's experiment state and trial checkpoints, one per session

Resume (see ARCHITECTURE.md, failure model): the ledger is the source of truth and Ray's
experiment state a cache. ``resume_search`` restores the newest Ray session with
``Tuner.restore`` when the config is unchanged; otherwise (no Ray state yet, or a changed
config accepted with ``force``) it starts a new session whose sampler is warm-started
from the Optuna journal and the ledger. In both cases the searcher counts the trials the
ledger already holds, so the experiment ends with exactly ``num_samples`` distinct trials:
a trial that finished after Ray's last snapshot is replayed from the ledger (not re-run),
a trial that was running when the driver died runs again under the same id, and a trial
Ray never saved is replaced by a new proposal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pruning.errors import TrialError, UsageError
from pruning.export import check_writable, write_json
from search.config import ExperimentConfig


class _LazyModule:
    """Import a module on first attribute access. Trial workers import this module for
    ``run_one`` but never touch the ledger; pandas + pyarrow would add ~1 s to every
    worker's start."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # pickle/copy probe dunders on a half-built instance
            raise AttributeError(attr)
        import importlib

        return getattr(importlib.import_module(self._name), attr)

    def __reduce__(self) -> tuple:
        return (_LazyModule, (self._name,))


ledger_mod = _LazyModule("search.ledger")

__all__ = [
    "SearchOptions",
    "SearchSummary",
    "base_summary",
    "experiment_files",
    "export_trial",
    "find_experiment",
    "load_trial_model",
    "make_sampler",
    "prepare_experiment_dir",
    "resume_search",
    "run_search",
]

logger = logging.getLogger(__name__)
#: Progress lines ("trial 5/16 <id>: val ... | front: ...") go to this logger; the CLI prints it to stdout.
progress_log = logging.getLogger("search.progress")

CONFIG_FILE = "config.yaml"
BASE_FILE = "base.json"
PROGRESS_FILE = "progress.json"
JOURNAL_FILE = "optuna.journal"
PARETO_PNG = "pareto.png"
MACS_CONSTRAINT = "macs_budget"  # Optuna constraint name: macs - budget, feasible when <= 0
RAY_DIR = "ray"
_SESSION_PREFIX = "session-"

# Ray Tune knobs, set before Ray is imported (workers of a local cluster inherit them):
# no per-trial CSV/JSON/TensorBoard loggers (files nobody reads, and per-result cost), and
# trials keep the driver's working directory so relative paths in a config stay valid.
_RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "60",
    "RAY_DEDUP_LOGS": "1",
}
# Quiet by default: Ray's new output engine prints its experiment banner at any verbosity;
# the legacy reporter honours verbose=0. Our Recorder prints one line per trial instead.
_QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}


# Loggers whose warnings are noise in the quiet default: the token-auth notice of every
# local ray.init (docs/search.md explains token auth), and the result-file fetch warnings
# caused by disabling Tune's per-trial loggers (the ledger holds the results).
_QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.analysis.experiment_analysis",
                  "ray.tune.result_grid")


def _set_ray_env(verbose: bool) -> None:
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.update(_QUIET_ENV)
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- options


TrialFn = Callable[..., Mapping[str, Any]]  # run_trial(cfg, params, reporter=None, *, base=None)
PrepareFn = Callable[..., Any]  # prepare_base(cfg, log_progress=None) -> BaseArtifacts


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How to run a search session (what to search is the :class:`ExperimentConfig`).

    ``address``: join a running Ray cluster (``auto``, ``host:6379`` or
    ``ray://host:10001``) instead of starting a local one. ``verbose``: show Ray's own
    output (status tables, worker logs). ``trial_fn``/``prepare_fn`` replace
    ``search.trial.run_trial``/``prepare_base`` (tests and benchmarks inject fixed-cost
    trials; they must be importable or picklable by value on the workers).
    ``retry_errored``: on resume, run trials again that ended with an error.
    """

    address: str | None = None
    verbose: bool = False
    trial_fn: TrialFn | None = None
    prepare_fn: PrepareFn | None = None
    retry_errored: bool = False


@dataclasses.dataclass(frozen=True)
class SearchSummary:
    exp_dir: Path
    total: int  # num_samples
    done: int  # trials in the ledger
    errored: int
    stopped: int
    front: int  # trials on the Pareto front
    wall_s: float  # this session's wall time
    fit_s: float  # of which Tuner.fit()
    fit_started_at: float  # time.time() when Tuner.fit() started (0 if it did not run)
    resumed_from: str | None  # "restore" (Ray state) or "warm-start", None for a fresh run


# --------------------------------------------------------------------------- experiment dir


def _default_trial_module() -> Any:
    from search import trial

    return trial


def experiment_files(exp_dir: Path) -> list[Path]:
    """The files and dirs a search writes in ``exp_dir`` (``--fresh`` deletes them; cached
    base models ``base-*.pt`` are kept because their name is a hash of their recipe)."""
    names = [CONFIG_FILE, BASE_FILE, PROGRESS_FILE, JOURNAL_FILE, PARETO_PNG, RAY_DIR, "export",
             ledger_mod.TRIALS_FILE, ledger_mod.EPOCHS_FILE, ledger_mod.PARETO_FILE]
    return [exp_dir / n for n in names]


def find_experiment(name_or_path: str | os.PathLike[str]) -> Path:
    """``results/NAME`` or ``NAME`` (under ./results) -> the experiment directory.

    Raises UsageError when it is not a directory holding a ``config.yaml``.
    """
    p = Path(name_or_path)
    candidates = [p] if p.is_absolute() or len(p.parts) > 1 else [p, Path("results") / p]
    for c in candidates:
        if (c / CONFIG_FILE).is_file():
            return c
    raise UsageError(f"{str(name_or_path)!r} is not an experiment directory (no {CONFIG_FILE}; "
                     f"start one with `prunetune run CONFIG`)")


def prepare_experiment_dir(cfg: ExperimentConfig, fresh: bool) -> Path:
    """Validate that the experiment can start in ``cfg.exp_dir`` (nothing is written here).

    An existing experiment is an error unless ``fresh`` (then its files are removed by
    :func:`run_search` just before it starts).
    """
    exp_dir = cfg.exp_dir
    make_sampler(cfg)  # a sampler whose package is missing fails here, before any file
    check_writable(exp_dir, "results directory")
    if exp_dir.exists() and not exp_dir.is_dir():
        raise UsageError(f"results path {str(exp_dir)!r} exists and is not a directory")
    existing = [f for f in experiment_files(exp_dir) if f.exists()]
    if existing and not fresh:
        raise UsageError(f"{str(exp_dir)!r} already holds an experiment; continue it with "
                         f"`prunetune resume {exp_dir}` or start over with --fresh")
    return exp_dir


def _wipe(exp_dir: Path) -> None:
    for f in experiment_files(exp_dir):
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()


def _absolute(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its paths made absolute (trials on other nodes or in other dirs)."""
    exp = cfg.experiment.model_copy(update={"results_dir": str(Path(cfg.experiment.results_dir).resolve())})
    data = cfg.data
    if data.root is not None:
        data = data.model_copy(update={"root": str(Path(data.root).expanduser().resolve())})
    model = cfg.model
    if model.checkpoint is not None:
        model = model.model_copy(update={"checkpoint": str(Path(model.checkpoint).expanduser().resolve())})
    return cfg.model_copy(update={"experiment": exp, "data": data, "model": model})


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version() -> str:
    try:
        from pruning import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def base_summary(base: Any) -> dict[str, Any]:
    """The base model's metrics as the plain dict ``report`` expects (val_acc, test_acc,
    macs, params, latency_ms, widths, group_names)."""
    metrics = dict(getattr(base, "metrics", {}) or {})
    out = {k: metrics.get(k) for k in ("val_acc", "test_acc", "macs", "params", "latency_ms")}
    widths = getattr(base, "widths", None)
    if isinstance(widths, Mapping):
        widths = list(widths.values())
    out["widths"] = [int(w) for w in widths] if widths is not None else None
    out["group_names"] = list(getattr(base, "group_names", []) or [])
    ckpt = getattr(base, "checkpoint", None)
    out["checkpoint"] = str(ckpt) if ckpt is not None else None
    return out


def read_base(exp_dir: Path) -> dict[str, Any] | None:
    p = exp_dir / BASE_FILE
    return json.loads(p.read_text()) if p.is_file() else None


# --------------------------------------------------------------------------- sampler


def make_sampler(cfg: ExperimentConfig, seed: int | None = None) -> Any:
    """The Optuna sampler named by ``cfg.sampler`` (tpe | nsga2 | random | cmaes).

    A MACs budget is a constraint that TPE and NSGA-II read from each finished trial
    (``Trial.set_constraint("macs_budget", macs - budget)``, feasible when <= 0; set by
    the searcher); CMA-ES, which ignores constraints, gets a penalty on its objective
    instead; random search ignores the budget.
    """
    import optuna

    s = cfg.sampler
    seed = cfg.experiment.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.name == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, seed=seed, multivariate=True,
                                              group=True, constant_liar=True)
        if s.name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
        if s.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.name == "cmaes":
            try:
                import cmaes  # noqa: F401 - Optuna imports it only when sampling
            except ImportError:
                raise UsageError("sampler cmaes needs the 'cmaes' package (pip install cmaes); "
                                 "or choose one of: tpe, nsga2, random") from None
            return optuna.samplers.CmaEsSampler(n_startup_trials=s.n_startup_trials, seed=seed,
                                                warn_independent_sampling=False)
    raise UsageError(f"unknown sampler {s.name!r}; choose one of: tpe, nsga2, random, cmaes")  # pragma: no cover


def _params_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled params of a ledger row ({} when missing)."""
    text = row.get("params_json")
    return json.loads(text) if isinstance(text, str) and text else {}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


_LAZY_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``search.tuner._LedgerSearch`` and ``._RecorderCallback``, defined on first use.

    They subclass Ray Tune classes, and importing Ray Tune takes seconds that ``status``
    or ``pareto`` should not pay. Being module attributes (PEP 562), they are pickled by
    reference in Ray's ``tuner.pkl`` and searcher checkpoints, so ``Tuner.restore``
    rebuilds them from the current code.
    """
    makers = {"_LedgerSearch": _make_searcher_class, "_RecorderCallback": _make_callback_class}
    if name not in makers:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _LAZY_CLASSES:
        cls = makers[name]()
        cls.__module__, cls.__qualname__ = __name__, name
        _LAZY_CLASSES[name] = cls
    return _LAZY_CLASSES[name]


def _make_searcher_class() -> type:
    """Define :class:`_LedgerSearch` (see the module ``__getattr__``)."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class _LedgerSearch(OptunaSearch):
        """``OptunaSearch`` that knows the ledger: exact trial count, errors, budgets.

        - stops proposing once the ledger's trials plus the ones this searcher started
          reach ``num_samples`` (Ray's own counter does not survive a driver kill exactly);
        - tells Optuna a trial's result only once (a replayed trial is skipped), as FAIL for
          an errored trial and PRUNED for a trial stopped early by ASHA;
        - records ``ray_trial_id`` and ``macs`` on each Optuna trial, and with a MACs budget
          the constraint ``macs_budget`` = macs - budget (TPE and NSGA-II prefer feasible
          trials, <= 0);
        - at the start of each session, fails Optuna trials left RUNNING by a killed driver
          and adds ledger trials the study does not hold (warm start from the ledger).
        """

        def __init__(self, *, exp_dir: str, num_samples: int, cfg: ExperimentConfig, groups: list[str],
                     penalise_macs: bool, **kwargs: Any) -> None:
            self._exp_dir = exp_dir
            self._num_samples = num_samples
            self._cfg = cfg
            self._groups = groups
            self._penalise = penalise_macs
            self._prior_ids: set[str] | None = None  # ledger ids at session start; not checkpointed
            super().__init__(**kwargs)

        # -- the count
        def _session_start(self) -> None:
            trials = ledger_mod.read_trials(self._exp_dir)
            self._prior_ids = set(trials["trial_id"].astype(str))
            self._reconcile(trials)
            if self.__dict__.pop("_restored", False) and self._ot_study is not None:
                # Ray's snapshot rewound the sampler's random state: without a reseed it would
                # propose again the params of trials started after the snapshot (some of
                # which finished and are in the ledger).
                self._ot_study.sampler.reseed_rng()

        def suggest(self, trial_id: str) -> dict | None:
            if self._prior_ids is None:
                self._session_start()
            if trial_id not in self._ot_trials:
                started = self._prior_ids | set(self._ot_trials)
                if len(started) >= self._num_samples:
                    return Searcher.FINISHED
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
                if not _missing(macs) and state != TrialState.FAIL:
                    ot_trial.set_user_attr("macs", int(macs))
                    budget = self._cfg.objectives.macs_budget
                    if budget is not None and not self._penalise:  # CMA-ES ignores constraints
                        ot_trial.set_constraint(MACS_CONSTRAINT, float(macs) - budget)
                self._ot_study.tell(ot_trial, values, state=state, skip_if_finished=True)
            except Exception as exc:  # noqa: BLE001 - a bad value or a journal race must not stop the search
                logger.warning("optuna: could not record trial %s: %s", trial_id, exc)

        def _values(self, result: Mapping[str, Any]) -> Any:
            metrics = self._metric if isinstance(self._metric, list) else [self._metric]
            modes = self._mode if isinstance(self._mode, list) else [self._mode]
            vals = []
            for m in metrics:
                v = result.get(m)
                if _missing(v):
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
            state = self.__dict__.copy()
            state["_prior_ids"] = None
            state.pop("_restored", None)
            with open(checkpoint_path, "wb") as f:
                pickle.dump(state, f)

        def restore(self, checkpoint_path: str) -> None:
            super().restore(checkpoint_path)
            self._prior_ids = None
            self._restored = True

        # -- reconciliation with the ledger
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
                if tid in by_ray_id or tid in known:
                    continue
                if self._add_from_ledger(row):
                    added += 1
            if stale or added:
                logger.info("optuna study: %d stale running trial(s) marked failed, %d trial(s) added from the ledger",
                            stale, added)

        def _add_from_ledger(self, row: Mapping[str, Any]) -> bool:
            from optuna.trial import FixedTrial, create_trial

            try:
                params = _flatten(_params_of(row))
                fixed = FixedTrial(params)
                self._space(fixed)
                distributions = {k: d for k, d in fixed.distributions.items() if k in params}
                kept = {k: params[k] for k in distributions}
            except Exception as exc:  # noqa: BLE001 - an old row that no longer fits the space
                logger.info("ledger trial %s does not fit the current search space (%s); not added to the study",
                            row.get("trial_id"), exc)
                return False
            status = row["status"]
            values = None
            state = TrialState.FAIL
            if status == "TERMINATED":
                result = {k: row.get(k) for k in ("val_acc", "macs", "params", "latency_ms")}
                result = {k: (None if _missing(v) else v) for k, v in result.items()}
                values = self._values(result)
                state = TrialState.COMPLETE if values is not None else TrialState.FAIL
            elif status == "STOPPED":
                state = TrialState.PRUNED
            attrs = {"ray_trial_id": str(row["trial_id"]), "from_ledger": True}
            constraints = {}
            if not _missing(row.get("macs")) and state != TrialState.FAIL:
                attrs["macs"] = int(row["macs"])
                budget = self._cfg.objectives.macs_budget
                if budget is not None and not self._penalise:
                    constraints[MACS_CONSTRAINT] = float(row["macs"]) - budget
            values_arg = None if values is None else (values if isinstance(values, list) else [values])
            self._ot_study.add_trial(create_trial(state=state, values=values_arg, params=kept,
                                                  distributions=distributions, user_attrs=attrs,
                                                  constraints=constraints or None))
            return True

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return _LedgerSearch


def _missing(v: Any) -> bool:
    """None, NaN or pandas' NA (ledger frames use nullable integer columns)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple, dict, str)) or hasattr(v, "__len__"):
        return False
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- trainable


_TRIAL_KEYS = ("val_acc", "test_acc", "macs", "params", "latency_ms", "macs_ratio", "widths", "group_names",
               "epochs", "wall_s", "mode", "criterion", "base_val_acc")
_EPOCH_KEYS = ("epoch", "train_loss", "val_acc", "macs", "widths", "lr", "wall_s")
_OBJECTIVE_KEYS = ("val_acc", "macs", "params", "latency_ms")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _plain(v: Any) -> Any:
    """Make a value safe for a Ray result (numpy/torch scalars and lists to Python)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _trial_resources_cpu() -> int:
    from ray import tune

    try:
        res = tune.get_context().get_trial_resources().required_resources
        return max(1, int(res.get("CPU", 1)))
    except Exception:  # noqa: BLE001 - outside Tune or an old API: one thread
        return 1


def _with_objectives(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every result carries every objective key (Tune checks that the searcher's metrics are
    present), NaN when unknown: ASHA multiplies the value, so None would break it."""
    for key in _OBJECTIVE_KEYS:
        if metrics.get(key) is None:
            metrics[key] = float("nan")
    return metrics


def run_one(config: dict, *, cfg: ExperimentConfig, base: Any, trial_fn: TrialFn | None,
            replay: Mapping[str, Mapping[str, Any]]) -> None:
    """The Ray Tune trainable: a few lines around ``run_trial``.

    Reports every epoch (for ASHA and the epochs ledger), then one final result with
    ``final=True`` and the pruned model as a checkpoint. A trial that raises is reported
    as a final result with ``error`` (recorded as ERROR, no retry: the same params and
    seed would fail again); only a CUDA out-of-memory error is raised to Ray, which
    retries it (``resources.max_failures``). A trial the ledger already holds (it finished
    after Ray's last snapshot before the driver died) is replayed, not re-run.
    """
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if trial_id in replay:
        tune.report(_with_objectives({**replay[trial_id], "final": True, "replayed": True}))
        return
    torch.set_num_threads(_trial_resources_cpu())
    if trial_fn is None:
        trial_fn = _default_trial_module().run_trial
    started_at = _now()
    last_model: list[Any] = [None]

    def reporter(row: Mapping[str, Any], model: Any = None) -> None:
        last_model[0] = model
        tune.report(_with_objectives({**{k: _plain(row.get(k)) for k in _EPOCH_KEYS}, "final": False}))

    try:
        result = dict(trial_fn(cfg, config, reporter, base=base))
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's error
        kind = "TrialError" if isinstance(exc, TrialError) else type(exc).__name__
        logger.info("trial %s failed: %s: %s", trial_id, kind, exc)
        tune.report(_with_objectives({"final": True, "error": f"{kind}: {exc}"[:2000], "started_at": started_at,
                                      "finished_at": _now()}))
        return
    metrics = _with_objectives({**{k: _plain(result.get(k)) for k in _TRIAL_KEYS}, "final": True,
                                "started_at": started_at, "finished_at": _now()})
    model = result.get("model", last_model[0])
    if model is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="prunetune-ckpt-") as d:
        widths = dict(zip(result.get("group_names") or [], result.get("widths") or [], strict=False))
        torch.save({"model": model.cpu(), "widths": {k: int(v) for k, v in widths.items()},
                    "params": config}, Path(d) / "model.pt")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def load_trial_model(cfg: ExperimentConfig, row: Mapping[str, Any], trial_fn: TrialFn | None = None) -> Any:
    """The pruned model of a finished trial: from its checkpoint, else by running the
    trial again locally (same params and seed; the base model comes from the cache)."""
    import torch

    ckpt = row.get("checkpoint")
    if isinstance(ckpt, str) and (Path(ckpt) / "model.pt").is_file():
        return torch.load(Path(ckpt) / "model.pt", map_location="cpu", weights_only=False)["model"]
    logger.info("trial %s has no saved model; running it again to export it", row.get("trial_id"))
    trial_mod = _default_trial_module()
    fn = trial_fn or trial_mod.run_trial
    last: list[Any] = [None]
    result = fn(cfg, _params_of(row), lambda _row, model=None: last.__setitem__(0, model),
                base=trial_mod.prepare_base(cfg))
    model = result.get("model", last[0]) if isinstance(result, Mapping) else last[0]
    if model is None:
        raise UsageError(f"trial {row.get('trial_id')} has no saved model and re-running it gave none")
    return model.cpu()


def export_trial(cfg: ExperimentConfig, exp_dir: Path, row: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write a finished trial's model with ``pruning.export.export_model`` (model.pt, model.pt2,
    widths.json, metrics.json) into ``out``; returns the written paths."""
    from pruning.export import export_model
    from search.experiment import experiment_data

    check_writable(out)
    model = load_trial_model(cfg, row)
    names = [str(g) for g in (row.get("group_names") if row.get("group_names") is not None else [])]
    widths = [int(w) for w in (row.get("widths") if row.get("widths") is not None else [])]
    metrics = {k: _json_safe(row.get(k)) for k in ("trial_id", "experiment", "mode", "criterion", "val_acc", "test_acc",
                                                   "macs", "params", "latency_ms", "macs_ratio", "base_val_acc",
                                                   "epochs", "wall_s", "seed", "git_sha", "prunetune_version")}
    metrics["params_sampled"] = _params_of(row)
    metrics["model"] = cfg.model.name
    metrics["data"] = cfg.data.name
    input_shape = tuple(experiment_data(cfg).input_shape)
    return export_model(model, out, input_shape, dict(zip(names, widths, strict=False)), metrics)


def _json_safe(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return v


# --------------------------------------------------------------------------- recorder


def _ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _int_or_none(v: Any) -> int | None:
    return None if _missing(v) else int(v)


def _float_or_none(v: Any) -> float | None:
    return None if _missing(v) else float(v)


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001
        err = None
    if err is None:
        return "trial failed (no error recorded by Ray)"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:2000]


def _front_text(front: Any, limit: int = 4) -> str:
    from search.report import human_count

    if not len(front):
        return "-"
    rows = front.sort_values("macs").to_dict("records")
    if len(rows) > limit:  # the extremes and evenly spaced points between them
        step = (len(rows) - 1) / (limit - 1)
        rows = [rows[round(i * step)] for i in range(limit)]
    pts = [f"{100 * r['val_acc']:.1f}%@{human_count(r['macs'])}" for r in rows]
    more = f" (+{len(front) - len(pts)})" if len(front) > len(pts) else ""
    return " ".join(pts) + more


class Recorder:
    """Ray Tune callback in the driver: ledger rows, progress lines, ``progress.json``.

    Created per session and picklable (Ray stores callbacks in ``tuner.pkl``): the ledger
    is opened in :meth:`setup`, so it also reloads what a killed driver left behind.
    """

    def __init__(self, exp_dir: Path, cfg: ExperimentConfig, meta: Mapping[str, Any]) -> None:
        self.exp_dir = Path(exp_dir)
        self.cfg = cfg
        self.meta = dict(meta)
        self._ledger: ledger_mod.Ledger | None = None
        # Epoch rows wait here until their trial is recorded, so epochs.parquet never holds
        # rows of a trial that a killed driver lost (it runs again, or is replaced).
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self._awaiting: dict[str, dict[str, Any]] = {}  # final results whose model checkpoint is being saved
        self._recorded: set[str] = set()  # recorded in this session
        self._running: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_ledger=None, _epochs={}, _awaiting={}, _recorded=set(), _running={})
        return state

    # Ray Tune calls these through _RecorderCallback. A trial is recorded as soon as its
    # outcome is known - at its final result, or once the checkpoint of that result is
    # saved, or when ASHA stops it - which is before Ray tells the searcher (Optuna) that
    # it completed: a driver killed in between leaves the trial in the ledger, not only
    # in the Optuna journal.
    def setup(self, **info: Any) -> None:
        self._ledger = ledger_mod.Ledger(self.exp_dir, self.cfg.experiment.name)
        self._write_progress()

    @property
    def ledger(self) -> ledger_mod.Ledger:
        if self._ledger is None:
            self.setup()
        assert self._ledger is not None
        return self._ledger

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running[trial.trial_id] = _now()
        self._write_progress()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        if result.get("final"):
            if result.get("replayed"):
                return
            if result.get("should_checkpoint"):  # the model follows: record it with its path
                self._awaiting[tid] = dict(result)
            else:
                self._record_final(trial, result, None)
            return
        if result.get("epoch") is not None:
            row = {k: result.get(k) for k in _EPOCH_KEYS}
            row["trial_id"] = tid
            row["epoch"] = int(row["epoch"])
            row["macs"] = _int_or_none(row["macs"])
            row["widths"] = [int(w) for w in row["widths"]] if row.get("widths") is not None else None
            for k in ("train_loss", "val_acc", "lr", "wall_s"):
                row[k] = _float_or_none(row[k])
            self._epochs.setdefault(tid, {})[row["epoch"]] = row  # a retried trial reports epoch 1 again
        if result.get("done"):  # the scheduler (ASHA) stops the trial after this result
            self._record(trial, result, "STOPPED", None, None)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        result = self._awaiting.pop(trial.trial_id, None)
        if result is not None:
            self._record_final(trial, result, getattr(checkpoint, "path", None))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._awaiting.pop(trial.trial_id, None)  # Ray runs it again: its next outcome counts
        self._recorded.discard(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self._running.pop(tid, None)
        result = trial.last_result or {}
        pending = self._awaiting.pop(tid, None)
        if pending is not None:  # a final result whose checkpoint never arrived
            self._record_final(trial, pending, None)
        elif tid not in self._recorded and not (result.get("replayed") and tid in self.ledger):
            if result.get("final"):
                self._record_final(trial, result, None)
            else:
                self._record(trial, result, "STOPPED", None, None)
        self._write_progress()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.pop(trial.trial_id, None)
        self._awaiting.pop(trial.trial_id, None)
        self._record(trial, trial.last_result or {}, "ERROR", _error_text(trial), None)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush()
        self._write_progress(finished=True)

    # -- internals
    def _record_final(self, trial: Any, result: Mapping[str, Any], checkpoint: str | None) -> None:
        if result.get("error"):
            self._record(trial, result, "ERROR", str(result["error"]), None)
        else:
            self._record(trial, result, "TERMINATED", None, checkpoint)

    def _record(self, trial: Any, result: Mapping[str, Any], status: str, error: str | None,
                ckpt: str | None) -> None:
        self._recorded.add(trial.trial_id)
        final = bool(result.get("final"))
        widths = result.get("widths")
        row = {
            "trial_id": trial.trial_id,
            "status": status,
            "mode": result.get("mode") if final else trial.config.get("mode"),
            "criterion": result.get("criterion") if final else trial.config.get("criterion"),
            "params_json": json.dumps(_plain(trial.config), sort_keys=True, default=str),
            "widths": [int(w) for w in widths] if widths is not None else None,
            "group_names": list(result.get("group_names") or []) or None,
            "base_val_acc": _float_or_none(result.get("base_val_acc")),
            "val_acc": _float_or_none(result.get("val_acc")),
            "test_acc": _float_or_none(result.get("test_acc")),
            "macs": _int_or_none(result.get("macs")),
            "params": _int_or_none(result.get("params")),
            "latency_ms": _float_or_none(result.get("latency_ms")),
            "macs_ratio": _float_or_none(result.get("macs_ratio")),
            "epochs": _int_or_none(result.get("epochs") if final else result.get("epoch")),
            "wall_s": _float_or_none(result.get("wall_s") if final else result.get("time_total_s")),
            "seed": self.cfg.experiment.seed,
            "git_sha": self.meta.get("git_sha"),
            "prunetune_version": self.meta.get("prunetune_version"),
            "started_at": _ts(result.get("started_at")),
            "finished_at": _ts(result.get("finished_at")) or dt.datetime.now(dt.timezone.utc),
            "checkpoint": ckpt,
            "error": error,
        }
        if not isinstance(row["mode"], str):
            row["mode"] = None
        if not isinstance(row["criterion"], str):
            row["criterion"] = None
        epochs = self._epochs.pop(trial.trial_id, {})
        try:
            self.ledger.add_epochs(list(epochs.values()))
            self.ledger.add_trial(row)
        except ValueError as exc:  # a trial_fn returned something off-schema: keep the trial, as an error
            logger.warning("trial %s: result does not fit the ledger (%s); recorded as ERROR", trial.trial_id, exc)
            bad = {k: row[k] for k in ("trial_id", "params_json", "seed", "git_sha", "prunetune_version",
                                       "started_at", "finished_at")}
            self.ledger.add_trial({**bad, "status": "ERROR", "error": f"invalid result: {exc}"[:2000]})
        self._flush()
        self._log_progress(row)
        self._write_progress()

    def _flush(self) -> None:
        self.ledger.flush()

    def _log_progress(self, row: Mapping[str, Any]) -> None:
        from search.report import human_count

        trials = self.ledger.trials()
        done = len(trials)
        total = self.cfg.num_samples
        front = ledger_mod.pareto_front(trials)
        if row["status"] == "ERROR":
            what = f"ERROR {row['error']}"
        else:
            kept = f" ({100 * row['macs_ratio']:.0f}% of base)" if row.get("macs_ratio") is not None else ""
            acc = f"{100 * row['val_acc']:.2f}%" if row.get("val_acc") is not None else "-"
            what = f"val {acc} MACs {human_count(row.get('macs'))}{kept}"
            if row["status"] == "STOPPED":
                what += " (stopped early)"
        progress_log.info("trial %d/%d %s: %s | front: %s", done, total, row["trial_id"], what, _front_text(front))

    def _write_progress(self, finished: bool = False) -> None:
        state = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated_at": _now(),
            "finished": finished,
            "num_samples": self.cfg.num_samples,
            "running": sorted(self._running),
        }
        try:
            write_json(self.exp_dir / PROGRESS_FILE, state)
        except OSError as exc:  # progress is informative only
            logger.debug("could not write progress.json: %s", exc)


def _as_ray_callback(recorder: Recorder) -> Any:
    return __getattr__("_RecorderCallback")(recorder)


def _make_callback_class() -> type:
    """A Ray Tune ``Callback`` forwarding to :class:`Recorder` (see the module ``__getattr__``)."""
    from ray import tune

    class _RecorderCallback(tune.Callback):
        def __init__(self, rec: Recorder) -> None:
            self.rec = rec

        def setup(self, **info: Any) -> None:
            self.rec.setup(**info)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.rec.on_trial_start(iteration, trials, trial, **info)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.rec.on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.rec.on_trial_complete(iteration, trials, trial, **info)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.rec.on_trial_error(iteration, trials, trial, **info)

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
            self.rec.on_checkpoint(iteration, trials, trial, checkpoint, **info)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.rec.on_trial_recover(iteration, trials, trial, **info)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.rec.on_experiment_end(trials, **info)

    return _RecorderCallback


# --------------------------------------------------------------------------- Ray session


@contextmanager
def ray_session(cfg: ExperimentConfig, options: SearchOptions):
    """Start (and stop) a local Ray, or connect to ``options.address``. Reuses an
    already-initialised Ray (tests, notebooks) and leaves it running."""
    _set_ray_env(options.verbose)
    import ray

    if ray.is_initialized():
        yield ray
        return
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {
        "log_to_driver": options.verbose,
        "logging_level": logging.INFO if options.verbose else logging.ERROR,
    }
    if options.address:
        if not options.address.startswith("ray://"):
            kwargs["include_dashboard"] = False
        if not options.verbose:  # the core worker's C++ retry warnings; the error below says it in one line
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        try:
            ray.init(address=options.address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to join (address, token, version) is the user's to fix
            text = " ".join(str(exc).split()) or type(exc).__name__
            hint = ""
            if "auth" in text.lower() or "token" in text.lower():
                hint = " (token auth: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
            raise UsageError(f"cannot join the Ray cluster at {options.address!r}: {text[:300]}{hint}") from None
    else:
        ray.init(num_cpus=cfg.resources.num_cpus, num_gpus=cfg.resources.num_gpus, include_dashboard=False, **kwargs)
    logger.info("ray.init took %.1f s", time.perf_counter() - t0)
    try:
        yield ray
    finally:
        t1 = time.perf_counter()
        ray.shutdown()
        logger.info("ray.shutdown took %.1f s", time.perf_counter() - t1)


# --------------------------------------------------------------------------- the search


def _sessions(exp_dir: Path) -> list[Path]:
    root = exp_dir / RAY_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_SESSION_PREFIX))


def _next_session_name(exp_dir: Path) -> str:
    existing = _sessions(exp_dir)
    n = int(existing[-1].name.removeprefix(_SESSION_PREFIX)) + 1 if existing else 1
    return f"{_SESSION_PREFIX}{n:03d}"


def _restorable(session_dir: Path) -> bool:
    return (session_dir / "tuner.pkl").is_file() and any(session_dir.glob("experiment_state-*.json"))


def _metric_mode(cfg: ExperimentConfig) -> tuple[Any, Any]:
    objs = cfg.objectives.objectives
    if len(objs) == 1:
        return objs[0].metric, objs[0].mode
    return [o.metric for o in objs], [o.mode for o in objs]


def _study_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.experiment.name}-{cfg.search_hash()}"


def _make_searcher(cfg: ExperimentConfig, exp_dir: Path, groups: list[str], session_index: int,
                   first_session: bool) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    space_mod = _space_module()
    metric, mode = _metric_mode(cfg)
    storage = JournalStorage(JournalFileBackend(str((exp_dir / JOURNAL_FILE).resolve())))
    points = []
    if first_session:
        points = list(space_mod.baseline_params(cfg, groups))
    else:  # enqueue the baselines that neither ran nor wait in the study
        points = _missing_baselines(space_mod.baseline_params(cfg, groups), storage, _study_name(cfg), exp_dir)
    cls = __getattr__("_LedgerSearch")
    # Each session seeds its sampler differently: a random sampler seeded as in session 1
    # would propose session 1's points again.
    sampler = make_sampler(cfg, seed=cfg.experiment.seed + 1000 * session_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(
            exp_dir=str(exp_dir), num_samples=cfg.num_samples, cfg=cfg, groups=groups,
            penalise_macs=cfg.sampler.name == "cmaes",
            space=functools.partial(space_mod.suggest, cfg=cfg, groups=groups),
            metric=metric, mode=mode, sampler=sampler, storage=storage, study_name=_study_name(cfg),
            points_to_evaluate=points or None,
        )


def _missing_baselines(points: Sequence[Mapping[str, Any]], storage: Any, study_name: str,
                       exp_dir: Path) -> list[dict]:
    """The baseline points that neither ran (ledger, study) nor wait in the study's queue."""
    import optuna
    from optuna.trial import TrialState

    seen = [_flatten(_params_of({"params_json": p})) for p in ledger_mod.read_trials(exp_dir)["params_json"]]
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        study = None
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING:
                seen.append(_flatten(t.system_attrs.get("fixed_params", {})))
            elif t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                seen.append(_flatten(t.params))

    def done(point: Mapping[str, Any]) -> bool:
        flat = _flatten(point)
        return any(s and all(flat.get(k) == v for k, v in s.items()) for s in seen)

    return [dict(p) for p in points if not done(p)]


def _space_module() -> Any:
    from search import space

    return space


def _trial_dirname(trial: Any) -> str:
    """Trial directories named by trial id (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"


def _scheduler(cfg: ExperimentConfig) -> Any:
    if cfg.scheduler.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # The most epochs a trial reports (finetuning between iterative steps included, or the
    # adaptive loop's), plus its final result.
    s = cfg.search
    epochs = s.finetune_epochs[1] + max(s.steps) - 1
    if "adaptive" in s.modes:
        epochs = max(epochs, s.adaptive.epochs + s.finetune_epochs[1])
    max_t = max(epochs, 1) + 1
    return ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration", max_t=max_t,
                         grace_period=min(cfg.scheduler.grace_period, max_t), reduction_factor=cfg.scheduler.reduction_factor)


def _trainable(cfg: ExperimentConfig, base: Any, options: SearchOptions, replay: Mapping[str, Any]) -> Any:
    from ray import tune

    fn = tune.with_parameters(run_one, cfg=cfg, base=base, trial_fn=options.trial_fn, replay=dict(replay))
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    return tune.with_resources(fn, resources)


def _replay_rows(exp_dir: Path, retry_errored: bool) -> dict[str, dict[str, Any]]:
    """Ledger rows a restored Ray may try to run again, as the final results to report."""
    import pandas as pd

    df = ledger_mod.read_trials(exp_dir)
    out = {}
    for row in df.to_dict("records"):
        if row["status"] == "ERROR" and retry_errored:
            continue
        res = {k: _plain(row.get(k)) for k in _OBJECTIVE_KEYS}
        res = {k: (None if _missing(v) else v) for k, v in res.items()}
        if row["status"] == "ERROR":
            res["error"] = row.get("error") or "error"
        out[str(row["trial_id"])] = res
    return out


def _prepare_base(cfg: ExperimentConfig, options: SearchOptions) -> Any:
    prepare = options.prepare_fn or _default_trial_module().prepare_base

    def log_progress(msg: str) -> None:
        progress_log.info("%s", msg)

    return prepare(cfg, log_progress=log_progress)


def _ledger_counts(exp_dir: Path) -> tuple[int, int, int, int]:
    df = ledger_mod.read_trials(exp_dir)
    front = ledger_mod.pareto_front(df)
    return len(df), int((df["status"] == "ERROR").sum()), int((df["status"] == "STOPPED").sum()), len(front)


def write_pareto_png(exp_dir: Path, cfg: ExperimentConfig) -> Path:
    from search.report import plot_pareto

    trials = ledger_mod.read_trials(exp_dir)
    front = ledger_mod.pareto_front(trials)
    return plot_pareto(trials, front, exp_dir / PARETO_PNG, base=read_base(exp_dir),
                       title=f"{cfg.experiment.name}: {cfg.model.name} on {cfg.data.name}")


def _fit(cfg: ExperimentConfig, exp_dir: Path, options: SearchOptions, mode: str) -> tuple[float, float, str | None]:
    """Run one session; ``mode`` is "fresh", "resume" or "force" (changed config).

    Returns (when Tuner.fit started as time.time(), its seconds, how it resumed).
    """
    import ray
    from ray import tune

    t_prep = time.perf_counter()
    base = _prepare_base(cfg, options)
    write_json(exp_dir / BASE_FILE, base_summary(base))
    groups = list(getattr(base, "group_names", None) or _space_module().group_names(cfg))
    logger.info("base model ready in %.1f s", time.perf_counter() - t_prep)

    meta = {"git_sha": _git_sha(), "prunetune_version": _version()}
    recorder = _as_ray_callback(Recorder(exp_dir, cfg, meta))
    sessions = _sessions(exp_dir)
    resumed_from = None
    tuner = None
    replay = _replay_rows(exp_dir, options.retry_errored)
    trainable = _trainable(cfg, base, options, replay)
    if mode == "resume" and sessions and _restorable(sessions[-1]):
        try:
            tuner = tune.Tuner.restore(str(sessions[-1].resolve()), trainable=trainable, resume_unfinished=True,
                                       resume_errored=options.retry_errored)
            resumed_from = "restore"
        except Exception as exc:  # noqa: BLE001 - Ray's state is a cache; fall back to a warm start
            logger.warning("could not restore Ray's experiment state (%s); warm-starting a new session", exc)
            tuner = None
    if tuner is None:
        if mode != "fresh":
            resumed_from = "warm-start"
        name = _next_session_name(exp_dir)
        searcher = _make_searcher(cfg, exp_dir, groups, session_index=len(sessions), first_session=mode == "fresh")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=_scheduler(cfg),
                num_samples=cfg.num_samples,
                max_concurrent_trials=cfg.max_concurrent,
                reuse_actors=True,
                trial_name_creator=_trial_dirname,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str((exp_dir / RAY_DIR).resolve()),
                callbacks=[recorder],
                verbose=2 if options.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                log_to_file=True,
            ),
        )
    started = time.time()
    t0 = time.perf_counter()
    tuner.fit()
    return started, time.perf_counter() - t0, resumed_from


def _save_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    text = cfg.to_yaml()
    ledger_mod.atomic_write(exp_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def _finish(cfg: ExperimentConfig, exp_dir: Path, t0: float, fit: tuple[float, float, str | None]) -> SearchSummary:
    ledger_mod.Ledger(exp_dir, cfg.experiment.name).flush()  # pareto.parquet even when no trial ran now
    write_pareto_png(exp_dir, cfg)
    done, errored, stopped, front = _ledger_counts(exp_dir)
    started, fit_s, resumed_from = fit
    return SearchSummary(exp_dir=exp_dir, total=cfg.num_samples, done=done, errored=errored, stopped=stopped,
                         front=front, wall_s=time.perf_counter() - t0, fit_s=fit_s, fit_started_at=started,
                         resumed_from=resumed_from)


def run_search(cfg: ExperimentConfig, options: SearchOptions = SearchOptions(), *, fresh: bool = False) -> SearchSummary:
    """Start a new search in ``cfg.exp_dir`` and run it to ``cfg.num_samples`` trials.

    Raises UsageError (before writing anything) when the directory is not writable or
    already holds an experiment and ``fresh`` is false.
    """
    t0 = time.perf_counter()
    cfg = _absolute(cfg)
    exp_dir = prepare_experiment_dir(cfg, fresh)
    with ray_session(cfg, options):
        if fresh:
            _wipe(exp_dir)
        _save_config(cfg, exp_dir)
        fit = _fit(cfg, exp_dir, options, "fresh")
    return _finish(cfg, exp_dir, t0, fit)


def load_saved_config(exp_dir: Path) -> ExperimentConfig:
    from search.config import load_config

    return load_config(exp_dir / CONFIG_FILE)


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d["experiment"].pop("results_dir", None)
    return d


def resume_search(exp_dir: str | os.PathLike[str], options: SearchOptions = SearchOptions(), *,
                  cfg: ExperimentConfig | None = None, force: bool = False) -> SearchSummary:
    """Continue the search in ``exp_dir`` until it holds exactly ``num_samples`` trials.

    ``cfg`` (default: the saved ``config.yaml``) may change ``max_concurrent`` and
    ``resources``; any other change (its ``search_hash``) is refused unless ``force``.
    A changed config always starts a new Ray session (warm-started); an unchanged one
    restores Ray's last session.
    """
    t0 = time.perf_counter()
    exp_dir = find_experiment(exp_dir)
    saved = load_saved_config(exp_dir)
    cfg = saved if cfg is None else cfg
    saved, cfg = _absolute(saved), _absolute(cfg)
    if cfg.experiment.name != saved.experiment.name:
        raise UsageError(f"experiment name {cfg.experiment.name!r} differs from the saved {saved.experiment.name!r}")
    changed = cfg.search_hash() != saved.search_hash()
    if changed and not force:
        raise UsageError(f"the config differs from the one {str(exp_dir)!r} was started with (search hash "
                         f"{saved.search_hash()} -> {cfg.search_hash()}); pass --force to continue with it anyway")
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(
        update={"results_dir": str(exp_dir.resolve().parent)})})
    cfg = _absolute(cfg)
    check_writable(exp_dir, "results directory")
    if len(ledger_mod.read_trials(exp_dir)) >= cfg.num_samples:
        progress_log.info("%s already holds %d/%d trials; nothing to resume", exp_dir,
                          len(ledger_mod.read_trials(exp_dir)), cfg.num_samples)
        return _finish(cfg, exp_dir, t0, (0.0, 0.0, None))
    same = not changed and _comparable(cfg) == _comparable(_absolute(saved))
    with ray_session(cfg, options):
        _save_config(cfg, exp_dir)
        fit = _fit(cfg, exp_dir, options, "resume" if same else "force")
    return _finish(cfg, exp_dir, t0, fit)
