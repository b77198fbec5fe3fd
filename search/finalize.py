"""``finalize``: train the best front trials of a search longer, into ``final.parquet``.

A search ranks widths with short finetunes; the few worth keeping deserve a longer one.
:func:`finalize` takes the ``top`` trials of the Pareto front of ``trials.parquet``
(val_acc max, MACs min) with the best val accuracy - among the trials within the search's
``objectives.macs_budget`` when it has one - and runs each again on Ray Tune with
the same trainable as a search (``search.trial.run.run_trial``):

- default: the trial's own params with ``finetune_epochs = epochs`` (``scratch_epochs``
  for a scratch-mode trial) - the same pruning from the base model, finetuned longer;
- ``from_scratch``: mode ``scratch`` at the trial's final widths (ratio keys = widths /
  base widths, whatever mode found them) trained from random weights for ``epochs``
  (Liu et al. 2019), distilling the base model if the trial did.

Rows go to ``final.parquet`` (the trials schema plus ``source_trial_id``, one row per
source) and their epochs to ``final_epochs.parquet``, written by the search's
``Recorder`` as each run finishes (atomic writes). A rerun skips every source already
in ``final.parquet``, so a finalize killed part-way and run again loses and repeats no
row. ``pareto --final`` shows the front of ``final.parquet`` (:mod:`search.results.final`).

This module imports neither Ray nor Optuna at its top (a bad ``prunetune finalize`` fails
before either loads); the Ray part is :mod:`search._ray.final`, imported when a finalize runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pruning.atomic import check_writable
from pruning.errors import UsageError
from search.config import ExperimentConfig
from search.options import SearchOptions
from search import tuner
from search.results import expdir
from search.results.final import FINAL_EPOCHS_FILE, FINAL_FILE, SOURCE_KEY, read_final
from search.results.ledger import params_of, pareto_front, read_trials
from search.results.storage import as_store
from search.trial.params import ratio_key

__all__ = ["FinalizeSummary", "check_finalize", "choose_sources", "final_params", "finalize"]

progress_log = logging.getLogger("search.progress")

#: Params of a trial that the from-scratch run keeps (distillation); the widths come from the row.
_SCRATCH_KEEPS = ("distill", "distill_alpha", "distill_temperature")


@dataclasses.dataclass(frozen=True)
class FinalizeSummary:
    exp_dir: Path
    sources: list[str]  # the chosen search trials, best val first
    ran: list[str]  # of which run by this call
    skipped: list[str]  # of which already in final.parquet
    wall_s: float


# --------------------------------------------------------------------------- what to run


def choose_sources(trials: pd.DataFrame, top: int, macs_budget: int | None = None) -> pd.DataFrame:
    """The ``top`` front trials (val_acc max, MACs min) with the highest val accuracy
    (ties: fewer MACs, then trial id), best first. With ``macs_budget`` (the search's
    ``objectives.macs_budget``) the front is that of the trials within the budget: the
    others were infeasible for the search, and the most accurate of them would otherwise
    fill the top K."""
    if macs_budget is not None:
        trials = trials[trials["macs"] <= macs_budget]
    front = pareto_front(trials)
    order = front.sort_values(["val_acc", "macs", "trial_id"], ascending=[False, True, True], kind="mergesort")
    return order.head(top).reset_index(drop=True)


def final_params(row: Mapping[str, Any], epochs: int, from_scratch: bool, group_names: Sequence[str],
                 base_widths: Sequence[int]) -> dict[str, Any]:
    """The params of the final run of the trials row ``row`` (see the module docstring)."""
    params = params_of(row)
    if from_scratch:
        widths = dict(zip(row["group_names"], (int(w) for w in row["widths"])))
        out: dict[str, Any] = {"mode": "scratch", "scratch_epochs": int(epochs)}
        out.update({k: params[k] for k in _SCRATCH_KEEPS if k in params})
        out.update({ratio_key(g): widths[g] / bw for g, bw in zip(group_names, base_widths)})
    else:
        out = dict(params)
        out["scratch_epochs" if params.get("mode") == "scratch" else "finetune_epochs"] = int(epochs)
    out[SOURCE_KEY] = str(row["trial_id"])
    return out


def check_finalize(experiment: str | os.PathLike[str], top: int, epochs: int) -> tuple[Path, pd.DataFrame]:
    """The experiment directory and the chosen source rows; UsageError for ``top`` or
    ``epochs`` < 1, an unknown experiment, or a search with no finished trial."""
    if top < 1:
        raise UsageError(f"--top must be an integer >= 1, got {top}")
    if epochs < 1:
        raise UsageError(f"--epochs must be an integer >= 1, got {epochs}")
    exp = expdir.find_experiment(experiment)
    exp_dir = exp.local_path()
    if exp_dir is None:
        raise UsageError(f"finalize runs on a local or NFS experiment; {exp.uri()} is on object storage "
                         f"(copy it to a local directory first)")
    budget = expdir.load_saved_config(exp_dir).objectives.macs_budget
    trials = read_trials(exp_dir)
    chosen = choose_sources(trials, top, budget)
    if chosen.empty:
        within = "" if budget is None or choose_sources(trials, 1).empty else f" within the MACs budget of {budget}"
        raise UsageError(f"{str(exp_dir)!r} has no finished (TERMINATED) trial{within} to finalize; "
                         f"run or resume the search first")
    return exp_dir, chosen


def _config(exp_dir: Path) -> ExperimentConfig:
    """The saved config, paths absolute, living in ``exp_dir`` wherever that is now."""
    cfg = expdir.absolute(expdir.load_saved_config(exp_dir))
    exp = cfg.experiment.model_copy(update={"results_dir": str(exp_dir.resolve().parent)})
    return cfg.model_copy(update={"experiment": exp})


def finalize(experiment: str | os.PathLike[str], top: int, epochs: int, *, from_scratch: bool = False,
             fresh: bool = False, options: SearchOptions | None = None) -> FinalizeSummary:
    """Train the ``top`` best front trials of ``experiment`` for ``epochs`` into ``final.parquet``.

    ``experiment`` is ``results/NAME`` or ``NAME``; ``from_scratch`` trains their widths
    from random weights instead of finetuning the pruned base model longer; ``fresh``
    deletes ``final.parquet``/``final_epochs.parquet`` first. ``options`` is a
    :class:`search.tuner.SearchOptions` (cluster address, verbosity, injected
    ``trial_fn``/``prepare_fn``). Sources already in ``final.parquet`` are skipped.
    Raises UsageError (before Ray starts) for ``top`` or ``epochs`` < 1, an unknown
    experiment, or a search with no finished trial.
    """
    t0 = time.perf_counter()
    exp_dir, chosen = check_finalize(experiment, top, epochs)
    cfg = _config(exp_dir)
    check_writable(exp_dir, "results directory")
    if fresh:
        for name in (FINAL_FILE, FINAL_EPOCHS_FILE):
            (exp_dir / name).unlink(missing_ok=True)
    sources = [str(t) for t in chosen["trial_id"]]
    done = set(read_final(exp_dir)[SOURCE_KEY].dropna().astype(str))
    todo = chosen[~chosen["trial_id"].astype(str).isin(done)]
    skipped = [s for s in sources if s in done]
    if skipped:
        progress_log.info("%d of %d already in %s: %s", len(skipped), len(sources), FINAL_FILE, ", ".join(skipped))
    if not todo.empty:
        from search._ray import final  # the Ray layer: loaded only when a finalize runs

        options = options or SearchOptions()
        final.run_final(cfg, exp_dir, options, todo.to_dict("records"), total=len(sources),
                        prepare=lambda: tuner.prepare_base(cfg, as_store(exp_dir), options),
                        make_params=lambda row, names, widths: final_params(row, epochs, from_scratch, names, widths))
    return FinalizeSummary(exp_dir=exp_dir, sources=sources, ran=[str(t) for t in todo["trial_id"]],
                           skipped=skipped, wall_s=time.perf_counter() - t0)
