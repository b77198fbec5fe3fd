"""Run a pruning search on Ray Tune with an Optuna sampler; record every trial in the ledger.

The public front, like Ray's ``Tuner`` over its implementation: :func:`run_search`
and :func:`resume_search` with their :class:`SearchOptions` and :class:`SearchSummary`.
The work happens in the Ray layer ``search._ray`` (the only place that imports Ray),
which this module imports inside :func:`_ray_layer` when a search actually runs;
the options are :mod:`search.options`'s.

One search session is: prepare the base model once in the driver (``trial.base.prepare_base``),
put it in the object store, and let a Ray Tune ``Tuner`` run ``trial.run.run_trial`` for the
parameters that ``LedgerSearch`` (an ``OptunaSearch``) proposes. A driver-side
``Recorder`` callback appends each finished trial to ``trials.parquet`` (and its epochs
to ``epochs.parquet``) with atomic writes, so a killed driver leaves valid files. The
experiment directory's layout is in :mod:`search.results.expdir`.

Resume: the ledger is the source of truth and Ray's
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

import logging
import os
import time
from types import ModuleType
from typing import Any

from pruning.atomic import check_writable
from pruning.errors import UsageError
from search.config import ExperimentConfig
from search.options import SearchOptions, SearchSummary
from search.report.png import write_pareto_png
from search.results import expdir
from search.results.ledger import Ledger, read_trials
from search.results.screen import log_proxy_correlation
from search.results.storage import Store
from search.trial import base as trial_base
from search.trial.materialize import group_names
from search.trial.targets import check_targets

__all__ = ["SearchOptions", "SearchSummary", "resume_search", "run_search"]  # the options: re-exported, the front's API

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("search.progress")


def _ray_layer() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The Ray layer (``session``, ``fit``, ``screening``): the one lazy import of Ray, so that
    merely importing this module (``prunetune run --help``, config errors) does not load Ray."""
    from search._ray import fit, screening, session  # the Ray layer: loaded only when a search runs

    return session, fit, screening


def prepare_base(cfg: ExperimentConfig, exp: Store, options: SearchOptions = SearchOptions()) -> Any:
    """The base model of a search, a finalize and an export: ``options.prepare_fn`` or
    ``search.trial.base.prepare_base``. For an experiment on object storage the cached
    ``base-HASH.pt`` is fetched from it first and uploaded after it was trained: training and
    ``torch.load`` need a local file (``cfg.exp_dir``, a local cache)."""
    cached = trial_base.base_cache_path(cfg)
    expdir.fetch_cached(exp, cached)
    prepare = options.prepare_fn or trial_base.prepare_base
    base = prepare(cfg, log_progress=lambda msg: progress_log.info("%s", msg), on_epoch=options.on_base_epoch)
    expdir.keep_cached(exp, cached)
    return base


def _session(cfg: ExperimentConfig, exp_dir: Store, options: SearchOptions, mode: str,
             fresh: bool = False) -> tuple[float, float, str | None]:
    """Start Ray, prepare the base model, run one Tuner session, stop Ray."""
    session, fit, screening = _ray_layer()
    with session.ray_session(cfg, options.address, options.verbose):
        if fresh:
            expdir.wipe(exp_dir)
        expdir.save_config(cfg, exp_dir)
        t_prep = time.perf_counter()
        base = prepare_base(cfg, exp_dir, options)
        expdir.write_base(exp_dir, base)
        groups = list(getattr(base, "group_names", None) or group_names(cfg))
        logger.info("base model ready in %.1f s", time.perf_counter() - t_prep)
        if cfg.search.screen is not None:  # cheap proxy over many candidates; the best become trials
            screening.enqueue(cfg, exp_dir, screening.run_screening(cfg, exp_dir, base, groups))
        result = fit.fit_session(cfg, exp_dir, options, base, groups, mode)
        if cfg.search.screen is not None:
            log_proxy_correlation(cfg, exp_dir)
        return result


def _finish(cfg: ExperimentConfig, exp_dir: Store, t0: float, fit: tuple[float, float, str | None]) -> SearchSummary:
    Ledger(exp_dir, cfg.experiment.name).flush()  # pareto.parquet even when no trial ran now
    write_pareto_png(exp_dir, cfg)
    done, errored, stopped, front = expdir.ledger_counts(exp_dir)
    started, fit_s, resumed_from = fit
    return SearchSummary(exp_dir=exp_dir.local_path() or exp_dir.uri(), total=cfg.num_samples, done=done, errored=errored, stopped=stopped,
                         front=front, wall_s=time.perf_counter() - t0, fit_s=fit_s, fit_started_at=started,
                         resumed_from=resumed_from)


def run_search(cfg: ExperimentConfig, options: SearchOptions = SearchOptions(), *, fresh: bool = False) -> SearchSummary:
    """Start a new search in ``cfg.exp_dir`` and run it to ``cfg.num_samples`` trials.

    Raises UsageError (before writing anything) when the directory is not writable or
    already holds an experiment and ``fresh`` is false.
    """
    t0 = time.perf_counter()
    cfg = expdir.absolute(cfg)
    check_targets(cfg)
    exp_dir = expdir.prepare_experiment_dir(cfg, fresh)
    fit = _session(cfg, exp_dir, options, "fresh", fresh=fresh)
    return _finish(cfg, exp_dir, t0, fit)


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d["experiment"].pop("results_dir", None)
    return d


def _resume_config(exp_dir: Store, cfg: ExperimentConfig | None, force: bool) -> tuple[ExperimentConfig, bool]:
    """The config to continue with (absolute, results_dir = ``exp_dir``'s parent) and
    whether it is the saved one; UsageError for a changed search without ``force``."""
    saved = expdir.load_saved_config(exp_dir)
    cfg = saved if cfg is None else cfg
    saved, cfg = expdir.absolute(saved), expdir.absolute(cfg)
    if cfg.experiment.name != saved.experiment.name:
        raise UsageError(f"experiment name {cfg.experiment.name!r} differs from the saved {saved.experiment.name!r}")
    changed = cfg.search_hash() != saved.search_hash()
    if changed and not force:
        raise UsageError(f"the config differs from the one {expdir.shown(exp_dir)!r} was started with (search hash "
                         f"{saved.search_hash()} -> {cfg.search_hash()}); pass --force to continue with it anyway")
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(
        update={"results_dir": expdir.results_dir_of(exp_dir)})})
    cfg = expdir.absolute(cfg)
    return cfg, not changed and _comparable(cfg) == _comparable(expdir.absolute(saved))


def resume_search(exp_dir: str | os.PathLike[str], options: SearchOptions = SearchOptions(), *,
                  cfg: ExperimentConfig | None = None, force: bool = False) -> SearchSummary:
    """Continue the search in ``exp_dir`` until it holds exactly ``num_samples`` trials.

    ``cfg`` (default: the saved ``config.yaml``) may change ``max_concurrent`` and
    ``resources``; any other change (its ``search_hash``) is refused unless ``force``.
    A changed config always starts a new Ray session (warm-started); an unchanged one
    restores Ray's last session.
    """
    t0 = time.perf_counter()
    exp_dir = expdir.find_experiment(exp_dir)
    cfg, same = _resume_config(exp_dir, cfg, force)
    if not same:  # a changed config (--force) may bring new targets
        check_targets(cfg)
    if exp_dir.local_path() is not None:
        check_writable(exp_dir.local_path(), "results directory")
    held = len(read_trials(exp_dir))
    if held >= cfg.num_samples:
        progress_log.info("%s already holds %d/%d trials; nothing to resume", expdir.shown(exp_dir), held, cfg.num_samples)
        _ray_layer()[1].settle_finished(cfg, exp_dir)
        return _finish(cfg, exp_dir, t0, (0.0, 0.0, None))
    fit = _session(cfg, exp_dir, options, "resume" if same else "force")
    return _finish(cfg, exp_dir, t0, fit)
