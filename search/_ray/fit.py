"""One Ray Tune session of a search: build (or restore) the Tuner and run it.

Called by :func:`search.tuner.run_search` / ``resume_search`` inside a
:func:`search._ray.session.ray_session`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from search.results import expdir
from search.config import ExperimentConfig
from search.options import SearchOptions
from search.results.ledger import is_missing, read_trials
from search.trial.result import OBJECTIVE_KEYS, plain
from search._ray.recorder import Recorder
from search._ray.searcher import flush_searchers, make_searcher
from search._ray.schedulers import make_scheduler
from search._ray.trainable import RESUME_FILE, make_trainable, trial_dirname
from search.results.storage import Store, as_store

logger = logging.getLogger(__name__)


def replay_results(exp_dir: Store | Path, retry_errored: bool) -> dict[str, dict[str, Any]]:
    """Ledger trials a restored Ray may try to run again, as the final results ``run_one``
    reports instead of running them (``replayed``); errored ones are left out, and so
    run again, when ``retry_errored``."""
    out = {}
    for row in read_trials(exp_dir).to_dict("records"):
        if row["status"] == "ERROR" and retry_errored:
            continue
        res = {k: plain(row.get(k)) for k in OBJECTIVE_KEYS}
        res = {k: (None if is_missing(v) else v) for k, v in res.items()}
        if row["status"] == "ERROR":
            res["error"] = row.get("error") or "error"
        out[str(row["trial_id"])] = res
    return out


def _named_checkpoint(trial_json: str, meta_json: str) -> tuple[str, str] | None:
    """(trial dir, checkpoint dir name) of the checkpoint a restored trial resumes from: the
    one of its last result (every result carries one at ``checkpoint_every: 1``)."""
    try:
        trial = f"trial_{json.loads(trial_json)['trial_id']}"
        name = json.loads(meta_json)["last_result"].get("checkpoint_dir_name")
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return (trial, name) if name else None


def _copy_checkpoint(session: Store, source: str | None, target: str) -> None:
    """Copy the checkpoint dir ``source`` to ``target`` (both below ``session``); with no
    source, a checkpoint holding only a note, from which the trainable starts over."""
    with tempfile.TemporaryDirectory(prefix="prunetune-repair-") as d:
        if source is not None:
            session.download_dir(source, d)
        else:
            (Path(d) / "REPAIRED.txt").write_text("Ray deleted this checkpoint after its last snapshot and no "
                                                 "newer one was saved; the trial starts over.\n")
        session.upload_dir(d, target)


def repair_checkpoints(session: Store | Path) -> int:
    """Give restored trials the checkpoint Ray's saved state names, when Ray deleted it since.

    Ray writes its experiment state every few seconds (on object storage: uploads it) but
    deletes a trial's older checkpoints (``num_to_keep=1``) as soon as a new one is saved:
    a driver killed in between leaves a state naming a checkpoint that is gone, and Ray's
    restore of that trial fails before the trainable runs, on every retry, so the trial
    ends ERROR. For each such trial (the checkpoint of its last result in the newest
    ``experiment_state-*.json``, the one ``Tuner.restore`` reads), its newest checkpoint is
    copied under the missing name (a resume checkpoint first; a final one is replayed from
    the ledger or started over; with none, the trial starts over). Local or object storage
    (``session`` is the session dir); returns the count.
    """
    session = as_store(session)
    names = session.list()
    states = [n for n in names if "/" not in n and n.startswith("experiment_state-") and n.endswith(".json")]
    if not states:
        return 0
    try:
        trial_data = json.loads(session.read_bytes(max(states)))["trial_data"]  # Ray restores max() too
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    files = set(names)
    repaired = 0
    for trial_json, meta_json in trial_data:
        named = _named_checkpoint(trial_json, meta_json)
        if named is None:
            continue
        trial, name = named
        saved = sorted({n.split("/")[1] for n in names if n.count("/") >= 2 and n.startswith(f"{trial}/checkpoint_")})
        if name in saved:
            continue
        resumable = [c for c in saved if f"{trial}/{c}/{RESUME_FILE}" in files]
        source = (resumable or saved or [None])[-1]
        _copy_checkpoint(session, f"{trial}/{source}" if source else None, f"{trial}/{name}")
        logger.info("%s: checkpoint %s was deleted after Ray's last snapshot; restoring from %s instead",
                    trial, name, source or "an empty checkpoint (the trial starts over)")
        repaired += 1
    return repaired


def _restore(exp: Store, session: str, trainable: Any, retry_errored: bool) -> Any:
    path, fs = exp.ray_storage(f"{expdir.RAY_DIR}/{session}")
    try:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=retry_errored,
                                  storage_filesystem=fs)
    except Exception as exc:  # noqa: BLE001 - Ray's state is a cache; fall back to a warm start
        logger.warning("could not restore Ray's experiment state (%s); warm-starting a new session", exc)
        return None


#: Objectives a per-epoch result does not carry (measured once, at the end); at a rung, MACs
#: stands in for them: like them it is a cost that grows with the widths.
RUNG_PROXY = {"latency_ms": "macs", "params": "macs"}


def make_search_scheduler(cfg: ExperimentConfig) -> Any:
    """``scheduler.name: asha``: MO-ASHA on the objectives (Ray's ASHA for a single one),
    rungs counted in finetune epochs of the final step (``rung_epoch``); else None (FIFO).
    ``latency_ms``/``params`` are ranked by their proxy, MACs (``RUNG_PROXY``)."""
    if cfg.scheduler.name != "asha":
        return None
    rung = dict.fromkeys((RUNG_PROXY.get(o.metric, o.metric), o.mode) for o in cfg.objectives.objectives)
    return make_scheduler([m for m, _ in rung], [mode for _, mode in rung],
                          max_t=max(1, cfg.search.finetune_epochs[1]), grace_period=cfg.scheduler.grace_period,
                          reduction_factor=cfg.scheduler.reduction_factor)


def build_tuner(cfg: ExperimentConfig, exp_dir: Store, trainable: Any, searcher: Any, callback: Any, verbose: bool,
                *, name: str, num_samples: int, scheduler: Any = None) -> Any:
    """The Ray Tune ``Tuner`` of a search session and of a finalize run (the same settings):
    session ``name`` below ``<exp_dir>/ray``, ``num_samples`` trials from ``searcher``."""
    # Local: an absolute path. Object storage: the path in the bucket and its filesystem;
    # Ray's driver and workers then write state and checkpoints there directly.
    storage_path, storage_fs = exp_dir.ray_storage(expdir.RAY_DIR)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=cfg.max_concurrent,
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=[callback],
            verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            log_to_file=True,
        ),
    )


def fit_session(cfg: ExperimentConfig, exp_dir: Store, options: SearchOptions, base: Any, groups: list[str],
                mode: str) -> tuple[float, float, str | None]:
    """Run one session; ``mode`` is "fresh", "resume" or "force" (changed config).

    "resume" restores Ray's newest session when it can; otherwise a new session starts,
    its searcher warm-started from the journal and the ledger. Returns (when Tuner.fit
    started as time.time(), its seconds, how it resumed: "restore", "warm-start" or None).
    """
    recorder = Recorder(exp_dir, cfg, expdir.run_meta())
    sessions = expdir.sessions(exp_dir)
    trainable = make_trainable(cfg, base, options.trial_fn, replay_results(exp_dir, options.retry_errored))
    tuner, resumed_from = None, None
    if mode == "resume" and sessions and expdir.restorable(exp_dir, sessions[-1]):
        # Ray may have deleted the checkpoint its last snapshot names
        repair_checkpoints(exp_dir.child(f"{expdir.RAY_DIR}/{sessions[-1]}"))
        tuner = _restore(exp_dir, sessions[-1], trainable, options.retry_errored)
        resumed_from = "restore" if tuner is not None else None
    if tuner is None:
        resumed_from = None if mode == "fresh" else "warm-start"
        searcher = make_searcher(cfg, exp_dir, groups, session_index=len(sessions))
        tuner = build_tuner(cfg, exp_dir, trainable, searcher, recorder, options.verbose,
                            name=expdir.next_session_name(exp_dir), num_samples=cfg.num_samples,
                            scheduler=make_search_scheduler(cfg))
    started = time.time()
    t0 = time.perf_counter()
    try:
        tuner.fit()
    finally:
        flush_searchers()  # what a synced journal (object storage) has not uploaded yet
    return started, time.perf_counter() - t0, resumed_from


def settle_finished(cfg: ExperimentConfig, exp_dir: Store) -> None:
    """``resume`` of a search whose ledger is complete: no Tuner session, but its Optuna
    journal is settled with the ledger (a driver killed between the last ledger write and
    that trial's tell left it behind; :meth:`LedgerSearch.settle`)."""
    groups = (expdir.read_base(exp_dir) or {}).get("group_names")
    if not groups or not exp_dir.exists(expdir.JOURNAL_FILE):
        return  # nothing was ever told (or no base model): nothing to settle
    searcher = make_searcher(cfg, exp_dir, list(groups), session_index=len(expdir.sessions(exp_dir)))
    flush_searchers()
    del searcher
