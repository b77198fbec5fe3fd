"""How a search session runs and what it reports: :class:`SearchOptions`, :class:`SearchSummary`.

A leaf module (no Ray, Optuna or torch): the fronts (``search.tuner``, ``search.finalize``),
the Ray layer (``search._ray``) and the CLI all import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PrepareFn", "SearchOptions", "SearchSummary", "TrialFn"]

#: ``run_trial(cfg, params, reporter=None, *, base=None, resume=None, checkpoint=None)``'s signature.
TrialFn = Callable[..., Mapping[str, Any]]
#: ``prepare_base(cfg, *, log_progress=None, on_epoch=None) -> BaseArtifacts``'s signature.
PrepareFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How to run a search session (what to search is the :class:`ExperimentConfig`).

    ``address``: join a running Ray cluster (``auto``, ``host:6379`` or
    ``ray://host:10001``) instead of starting a local one. ``verbose``: show Ray's own
    output (status tables, worker logs). ``trial_fn``/``prepare_fn`` replace
    ``search.trial.run.run_trial``/``search.trial.base.prepare_base`` (tests and benchmarks inject fixed-cost
    trials; they must be importable or picklable by value on the workers).
    ``retry_errored``: on resume, run trials again that ended with an error.
    ``on_base_epoch(metrics, model)``: called after every epoch of base training in the
    driver (the CLI's progress; passed to ``prepare_fn`` as ``on_epoch`` only when set).
    """

    address: str | None = None
    verbose: bool = False
    trial_fn: TrialFn | None = None
    prepare_fn: PrepareFn | None = None
    retry_errored: bool = False
    on_base_epoch: Callable[..., None] | None = None


@dataclasses.dataclass(frozen=True)
class SearchSummary:
    exp_dir: Path | str  # the local dir, or the s3:// / gs:// URI of an experiment on object storage
    total: int  # num_samples
    done: int  # trials in the ledger
    errored: int
    stopped: int
    front: int  # trials on the Pareto front
    wall_s: float  # this session's wall time
    fit_s: float  # of which Tuner.fit()
    fit_started_at: float  # time.time() when Tuner.fit() started (0 if it did not run)
    resumed_from: str | None  # "restore" (Ray state) or "warm-start", None for a fresh run
