"""Screening on Ray (``search.screen``): score the candidates as Ray tasks, enqueue the best.

Called by :func:`search.tuner._session` inside the Ray session, after the base model is
ready and before the Tuner runs. What a candidate is and how it is scored is
:mod:`search.screen`'s; this module only spreads the work over the cluster (one task per
candidate with the trial's resources: ``resources.cpu``/``gpu``/``custom``, so fractional
GPUs pack many per GPU) and collects the rows as they finish.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import optuna
import ray

import torch

from search.config import ExperimentConfig
from search.results.expdir import JOURNAL_FILE, study_name
from search.results.screen import ScreenLog, screen_frame, read_screen
from search._ray.searcher import _metric_mode
from search.results.storage import Store
from search.study.journal import flush_journal, open_journal
from search.study.screen import best_candidates, enqueue_best, screen_plan
from search.trial.params import SCREEN_KEY, TARGET_KEY
from search.trial.screen import score_candidate

progress_log = logging.getLogger("search.progress")


def _score(cfg: ExperimentConfig, base: Any, params: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))
    return score_candidate(cfg, base, params)


def run_screening(cfg: ExperimentConfig, exp_dir: Store, base: Any, groups: list[str]) -> ScreenLog:
    """Score every candidate ``screen.parquet`` lacks; returns the complete log."""
    sc = cfg.search.screen
    assert sc is not None
    book = ScreenLog(exp_dir)  # the rows a killed session wrote: those candidates are not screened again
    plan = screen_plan(cfg, groups)
    todo = [p for p in plan if not book.has(p)]
    total = len(plan)
    progress_log.info("screening: %d candidates (%d per target x %d targets), proxy %s: %d already screened, %d to go",
                      total, sc.candidates, len(cfg.objectives.macs_targets or []), sc.proxy, total - len(todo),
                      len(todo))
    if not todo:
        return book
    res = cfg.resources
    task = ray.remote(_score).options(num_cpus=res.cpu, num_gpus=res.gpu, resources=dict(res.custom) or None,
                                      max_retries=res.max_failures)
    cfg_ref, base_ref = ray.put(cfg), ray.put(base)
    pending = {task.remote(cfg_ref, base_ref, p): p for p in todo}
    t0 = time.perf_counter()
    step = max(1, len(todo) // 10)
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        params = pending.pop(ready[0])
        try:
            row = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - the worker died past its retries: a failed candidate
            row = {"candidate": params[SCREEN_KEY], "target": params[TARGET_KEY],
                   "criterion": params["criterion"], "proxy": sc.proxy, "error": f"{type(exc).__name__}: {exc}"[:500]}
        book.add(row)
        done += 1
        if done % step == 0 or not pending:
            progress_log.info("screening: %d/%d (%.0f%%) in %.0f s", done, len(todo), 100.0 * done / len(todo),
                              time.perf_counter() - t0)
    book.flush()
    return book


def enqueue(cfg: ExperimentConfig, exp_dir: Store, book: ScreenLog) -> int:
    """Enqueue the best candidates into the experiment's Optuna study (created here if the
    searcher has not yet: same name, same directions); returns how many were new."""
    metric, mode = _metric_mode(cfg)
    modes = mode if isinstance(mode, list) else [mode]
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    storage = open_journal(exp_dir, JOURNAL_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=study_name(cfg), storage=storage, directions=directions,
                                    load_if_exists=True)
        frame = read_screen(exp_dir) if not book.rows else screen_frame(book.rows.values())
        added = enqueue_best(study, frame, cfg)
    flush_journal(storage)
    best = best_candidates(frame, cfg)
    progress_log.info("screening: the %d best of each target enqueued as full trials (%d new)",
                      cfg.search.screen.keep if cfg.search.screen else 0, added)
    fixed = len(best) + len(cfg.search.baselines) * len(cfg.objectives.macs_targets or [1])
    if fixed > cfg.num_samples:
        progress_log.warning("warning: num_samples %d is below the %d enqueued candidates and baselines; raise it "
                             "to finetune them all", cfg.num_samples, fixed)
    return added
