"""The Ray Tune session of ``prunetune finalize``: a fixed list of params, the search's trainable.

Called by :func:`search.finalize.finalize`. ``FixedParams`` (a Tune ``Searcher``) hands out
the params dicts, one per trial, so a trial's config is exactly its params (as in a
search); ``FinalRecorder`` is the search's ``Recorder`` writing to ``final.parquet``
(:class:`search.finalize.FinalLedger`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from search import expdir, trial
from search.config import ExperimentConfig
from search.finalize import FinalLedger
from search._ray.recorder import Recorder
from search._ray.session import ray_session
from search._ray.trainable import make_trainable, trial_dirname

progress_log = logging.getLogger("search.progress")

_PREFIX = "final-"


class FinalRecorder(Recorder):
    """The search's Recorder with ``final.parquet`` as its ledger and no ``progress.json``
    (that file describes the search's driver, which ``prunetune status`` reads)."""

    def setup(self, **info: Any) -> None:
        self._ledger = FinalLedger(self.exp_dir, self.cfg.experiment.name)

    def _write_progress(self, finished: bool = False) -> None:
        return None


class FixedParams(Searcher):
    """Proposes the given params dicts in order, then ``FINISHED``; learns nothing."""

    def __init__(self, points: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self._points = [dict(p) for p in points]
        self._given: dict[str, dict[str, Any]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._given:
            if not self._points:
                return Searcher.FINISHED
            self._given[trial_id] = self._points.pop(0)
        return dict(self._given[trial_id])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        return None


def _session_name(exp_dir: Path) -> str:
    root = exp_dir / expdir.RAY_DIR
    n = len([p for p in root.iterdir() if p.name.startswith(_PREFIX)]) if root.is_dir() else 0
    return f"{_PREFIX}{n + 1:03d}"


def run_final(cfg: ExperimentConfig, exp_dir: Path, options: Any,
              make_points: Callable[[trial.BaseArtifacts], list[dict[str, Any]]], *, total: int) -> None:
    """Start Ray, prepare the base model, run one trial per params dict of
    ``make_points(base)`` (the uniform baseline's widths are bisected on the base model),
    record them, stop Ray."""
    with ray_session(cfg, options.address, options.verbose):
        prepare = options.prepare_fn or trial.prepare_base
        base = prepare(cfg, log_progress=lambda msg: progress_log.info("%s", msg))
        points = make_points(base)
        recorder = FinalRecorder(exp_dir, cfg.model_copy(update={"num_samples": total}), expdir.run_meta())
        tuner = tune.Tuner(
            make_trainable(cfg, base, options.trial_fn, replay={}),
            tune_config=tune.TuneConfig(
                search_alg=FixedParams(points),
                num_samples=len(points),
                max_concurrent_trials=cfg.max_concurrent,
                reuse_actors=True,
                trial_name_creator=trial_dirname,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=_session_name(exp_dir),
                storage_path=str((exp_dir / expdir.RAY_DIR).resolve()),
                callbacks=[recorder],
                verbose=2 if options.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                log_to_file=True,
            ),
        )
        tuner.fit()
    FinalLedger(exp_dir, cfg.experiment.name).flush()
