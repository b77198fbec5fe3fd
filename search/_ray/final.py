"""The Ray Tune session of ``prunetune finalize``: a fixed list of params, the search's trainable.

Called by :func:`search.finalize.finalize`. ``FixedParams`` (a Tune ``Searcher``) hands out
the params dicts, one per trial, so a trial's config is exactly its params (as in a
search); ``FinalRecorder`` is the search's ``Recorder`` writing to ``final.parquet``
(:class:`search.results.final.FinalLedger`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from search.config import ExperimentConfig
from search.options import SearchOptions
from search.results import expdir
from search.results.final import FinalLedger
from search.results.storage import as_store
from search._ray.fit import build_tuner
from search._ray.recorder import Recorder
from search._ray.session import ray_session
from search._ray.trainable import make_trainable

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


def run_final(cfg: ExperimentConfig, exp_dir: Path, options: SearchOptions,
              make_points: Callable[[Any], list[dict[str, Any]]], *, total: int, prepare: Callable[[], Any]) -> None:
    """Start Ray, prepare the base model (``prepare()``: the search's builder), run one trial per
    params dict of ``make_points(base)`` (the uniform baseline's widths are cut from the base
    model), record them, stop Ray."""
    with ray_session(cfg, options.address, options.verbose):
        base = prepare()
        points = make_points(base)
        recorder = FinalRecorder(exp_dir, cfg.model_copy(update={"num_samples": total}), expdir.run_meta())
        trainable = make_trainable(cfg, base, options.trial_fn, replay={})
        tuner = build_tuner(cfg, as_store(exp_dir), trainable, FixedParams(points), recorder, options.verbose,
                            name=_session_name(exp_dir), num_samples=len(points))
        tuner.fit()
    FinalLedger(exp_dir, cfg.experiment.name).flush()
