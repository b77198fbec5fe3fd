"""``finalize``: train the best front trials of a search longer, into ``final.parquet``.

A search ranks widths with short finetunes; the few worth keeping deserve a longer one.
:func:`finalize` takes the ``top`` trials of the Pareto front of ``trials.parquet``
(val_acc max, MACs min) with the best val accuracy - among the trials within the search's
``objectives.macs_budget`` when it has one - and runs each again on Ray Tune with
the same trainable as a search (``search.trial.run_trial``):

- default: the trial's own params with ``finetune_epochs = epochs`` (``scratch_epochs``
  for a scratch-mode trial) - the same pruning from the base model, finetuned longer;
- ``from_scratch``: mode ``scratch`` at the trial's final widths (ratio keys = widths /
  base widths, whatever mode found them) trained from random weights for ``epochs``
  (Liu et al. 2019), distilling the base model if the trial did.

Rows go to ``final.parquet`` (the trials schema plus ``source_trial_id``, one row per
source) and their epochs to ``final_epochs.parquet``, written by the search's
``Recorder`` as each run finishes (atomic writes). A rerun skips every source already
in ``final.parquet``, so a finalize killed part-way and run again loses and repeats no
row. ``pareto --final`` shows the front of ``final.parquet``.

This module imports neither Ray nor Optuna at its top (``pareto --final`` reads it); the
Ray part is :mod:`search._ray.final`, imported when a finalize runs.
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
import pyarrow as pa

from pruning.errors import UsageError
from pruning.atomic import check_writable
from search import expdir, finalpick, ledger
from search.config import ExperimentConfig
from search.ledger import TRIALS_SCHEMA, Ledger, params_of, pareto_front, read_trials
from search.ledger_schema import validate_row
from search.storage import Store, as_store

__all__ = ["FINAL_EPOCHS_FILE", "FINAL_FILE", "FINAL_SCHEMA", "FinalLedger", "FinalizeSummary", "SOURCE_KEY",
           "check_finalize", "choose_sources", "final_params", "finalize", "read_final"]

progress_log = logging.getLogger("search.progress")

FINAL_FILE = expdir.FINAL_FILE
FINAL_EPOCHS_FILE = expdir.FINAL_EPOCHS_FILE
#: The params key (and column) naming the search trial a final run was made from.
SOURCE_KEY = "source_trial_id"
# The candidate columns of issue 17 (nullable: older final.parquet files read with nulls);
# macs_target only if the trials schema does not already carry it.
FINAL_SCHEMA = pa.schema([*TRIALS_SCHEMA, pa.field(SOURCE_KEY, pa.string()),
                          *(f for f in finalpick.FINAL_EXTRA_FIELDS if f.name not in TRIALS_SCHEMA.names)])
#: Params of a trial that the from-scratch run keeps (distillation); the widths come from the row.
_SCRATCH_KEEPS = ("distill", "distill_alpha", "distill_temperature")


@dataclasses.dataclass(frozen=True)
class FinalizeSummary:
    exp_dir: Path
    sources: list[str]  # the candidates (search trial ids, uniform@TARGET; + variant suffix), per target
    ran: list[str]  # of which run by this call
    skipped: list[str]  # of which already in final.parquet
    wall_s: float
    picks: dict[str, str] = dataclasses.field(default_factory=dict)  # target label -> the picked candidate
    exported: dict[str, Path] = dataclasses.field(default_factory=dict)  # target label -> export dir of the pick
    report: str = ""  # the per-target tables (finalpick.summary_text)


# --------------------------------------------------------------------------- the final ledger


def read_final(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """``final.parquet`` as a DataFrame with the columns of :data:`FINAL_SCHEMA` (empty if absent)."""
    return ledger._to_frame(ledger._read_table(as_store(exp_dir), FINAL_FILE, FINAL_SCHEMA))


class FinalLedger(Ledger):
    """The :class:`~search.ledger.Ledger` of ``final.parquet``/``final_epochs.parquet``.

    Rows are unique by ``candidate`` (else, in files of older finalizes, ``source_trial_id``;
    both taken from the row, else from its params): a candidate recorded again replaces its
    row. ``flush`` writes no Pareto file.
    """

    def __init__(self, exp_dir: Store | str | os.PathLike[str], experiment: str) -> None:
        if not experiment:
            raise ValueError("experiment name must be a non-empty string")
        self.store = as_store(exp_dir)
        self.exp_dir = self.store.local_path()
        self.experiment = experiment
        self._trials: dict[str, dict[str, Any]] = {}
        self._epochs: dict[tuple[str, int], dict[str, Any]] = {}
        for row in ledger._read_table(self.store, FINAL_FILE, FINAL_SCHEMA).to_pylist():
            row["candidate"] = _key(row)  # a row of an older finalize: its source is its candidate key
            self._trials[row["candidate"]] = row
        for row in ledger._read_table(self.store, FINAL_EPOCHS_FILE, ledger.EPOCHS_SCHEMA).to_pylist():
            self._epochs[(row["trial_id"], row["epoch"])] = row

    def add_trial(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        row.setdefault("experiment", self.experiment)
        params = params_of(row)
        row.setdefault(SOURCE_KEY, params.get(SOURCE_KEY))
        for k, v in finalpick.final_columns(params).items():
            if row.get(k) is None:  # (a trials column such as macs_target may come unset from the result)
                row[k] = v
        checked = validate_row(row, FINAL_SCHEMA, "final trial")
        checked["candidate"] = _key(checked)
        self._trials[checked["candidate"]] = checked

    def update(self, key: str, **columns: Any) -> None:
        """Set ``columns`` of the row of candidate ``key`` (scores and picks, after the runs)."""
        self._trials[key] = validate_row({**self._trials[key], **columns}, FINAL_SCHEMA, "final trial")

    def keys(self) -> list[str]:
        return list(self._trials)

    def trials(self) -> pd.DataFrame:
        return ledger._to_frame(pa.Table.from_pylist(list(self._trials.values()), schema=FINAL_SCHEMA))

    def flush(self) -> None:
        """Write final_epochs.parquet, then final.parquet (each atomically)."""
        epochs = ledger._to_table(self.epochs(), ledger.EPOCHS_SCHEMA)
        ledger._write_table_atomic(self.store, FINAL_EPOCHS_FILE, epochs)
        ledger._write_table_atomic(self.store, FINAL_FILE, ledger._to_table(self.trials(), FINAL_SCHEMA))

    def __contains__(self, trial_id: object) -> bool:
        return any(r["trial_id"] == trial_id for r in self._trials.values())


def _key(row: Mapping[str, Any]) -> str:
    return row.get("candidate") or row[SOURCE_KEY] or row["trial_id"]


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
    from search.space import ratio_key  # imports Optuna: not at the top (pareto --final reads this module)

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
             distill: bool = False, compare: bool = False, fresh: bool = False, export: bool = True,
             options: Any = None) -> FinalizeSummary:
    """Retrain, per target, the ``top`` best front trials of ``experiment`` and the uniform
    baseline for ``epochs``, pick on the selection split, into ``final.parquet``.

    ``experiment`` is ``results/NAME`` or ``NAME``. Every candidate is trained alike:
    ``from_scratch`` trains its widths from random weights instead of finetuning the pruned
    base model, ``distill`` distils the base model (else no candidate distils). Each target's
    pick (best select accuracy, :func:`search.finalpick.pick_rows`) is marked ``picked`` and,
    with ``export``, exported to ``export/final-<candidate>``. ``compare`` then also runs each
    pick's widths in the other variants (:func:`search.finalpick.compare_variants`) for the
    report; they are never picked. ``fresh`` deletes ``final.parquet``/``final_epochs.parquet``
    first. ``options`` is a :class:`search.tuner.SearchOptions` (cluster address, verbosity,
    injected ``trial_fn``/``prepare_fn``). Candidates already in ``final.parquet`` are skipped.
    Raises UsageError (before Ray starts) for ``top`` or ``epochs`` < 1, an unknown
    experiment, or a search with no finished trial.
    """
    t0 = time.perf_counter()
    exp_dir, _ = check_finalize(experiment, top, epochs)
    cfg = _config(exp_dir)
    check_writable(exp_dir, "results directory")
    if fresh:
        for name in (FINAL_FILE, FINAL_EPOCHS_FILE):
            (exp_dir / name).unlink(missing_ok=True)
    from search.tuner import SearchOptions

    options = options or SearchOptions()
    targets = finalpick.plan_targets(read_trials(exp_dir), top, cfg.objectives.macs_budget)
    main = finalpick.Variant(from_scratch, distill)
    cands = finalpick.candidates(targets, main)
    ran, skipped = _run_candidates(cfg, exp_dir, options, cands, epochs)
    picks = _score_and_pick(cfg, exp_dir, targets, main, options)
    shown = [main]
    if compare:
        shown += finalpick.compare_variants(main)
        by_label = {t.label: t for t in targets}
        extra = [finalpick.Candidate(by_label[label], v, None if pick.uniform else pick.row)
                 for label, pick in picks.items() for v in shown[1:]]
        more_ran, more_skipped = _run_candidates(cfg, exp_dir, options, extra, epochs)
        ran, skipped, cands = ran + more_ran, skipped + more_skipped, cands + extra
        _score_and_pick(cfg, exp_dir, targets, main, options)  # scores the new rows; the picks stay
    final = read_final(exp_dir)
    exported = _export_picks(cfg, exp_dir, final, picks, options) if export else {}
    data = _select_size(cfg)
    return FinalizeSummary(exp_dir=exp_dir, sources=[c.key for c in cands], ran=ran, skipped=skipped,
                           wall_s=time.perf_counter() - t0, picks={k: c.key for k, c in picks.items()},
                           exported=exported, report=finalpick.summary_text(final, targets, main, shown, data))


def _run_candidates(cfg: ExperimentConfig, exp_dir: Path, options: Any, cands: Sequence[finalpick.Candidate],
                    epochs: int) -> tuple[list[str], list[str]]:
    """Run the candidates not yet in ``final.parquet`` (one Ray session); returns (run, skipped) keys."""
    done = set(FinalLedger(exp_dir, cfg.experiment.name).keys())
    todo = [c for c in cands if c.key not in done]
    skipped = [c.key for c in cands if c.key in done]
    if skipped:
        progress_log.info("%d of %d already in %s: %s", len(skipped), len(cands), FINAL_FILE, ", ".join(skipped))
    if todo:
        from search._ray import final
        from search.materialize import experiment_data

        def points(base: Any) -> list[dict[str, Any]]:
            shape = experiment_data(cfg).input_shape
            return [finalpick.candidate_params(c, epochs, cfg, base, shape) for c in todo]

        final.run_final(cfg, exp_dir, options, points, total=len(done) + len(todo))  # rows of final.parquet
    return [c.key for c in todo], skipped


def _score_and_pick(cfg: ExperimentConfig, exp_dir: Path, targets: Sequence[finalpick.Target],
                    main: finalpick.Variant, options: Any) -> dict[str, finalpick.Candidate]:
    """Score the finished rows lacking ``select_acc`` on the selection split, mark each
    target's pick among its ``main`` candidates (``picked``; every other row False), write
    ``final.parquet``; returns target label -> picked candidate."""
    from search.export import load_trial_model

    led = FinalLedger(exp_dir, cfg.experiment.name)
    final = led.trials()
    trial_fn = getattr(options, "trial_fn", None)
    for key, acc in finalpick.score_select(cfg, final, lambda row: load_trial_model(cfg, row, trial_fn)).items():
        led.update(key, select_acc=acc)
    final = led.trials()
    picks: dict[str, finalpick.Candidate] = {}
    for t in targets:
        mains = {c.key: c for c in finalpick.candidates([t], main)}
        best = finalpick.pick_rows(final, list(mains))
        if not best.empty:
            picks[t.label] = mains[str(best.iloc[0]["candidate"])]
    picked = {c.key for c in picks.values()}
    for key in led.keys():
        led.update(key, picked=key in picked)
    led.flush()
    if cfg.data.select_fraction is None:
        progress_log.info("no selection split (data.select_fraction is null in this experiment): picked on val, "
                          "which the search ranked on")
    return picks


def _select_size(cfg: ExperimentConfig) -> int | None:
    from search.materialize import experiment_data

    select = experiment_data(cfg).select
    return None if select is None else len(select)


def _export_picks(cfg: ExperimentConfig, exp_dir: Path, final: pd.DataFrame,
                  picks: Mapping[str, finalpick.Candidate], options: Any) -> dict[str, Path]:
    """Each pick's model, exported like ``prunetune export`` into ``export/final-<candidate>``."""
    from search.export import export_trial

    out = {}
    for label, cand in picks.items():
        row = final[final["candidate"] == cand.key].iloc[0].to_dict()
        target = exp_dir / "export" / f"final-{cand.key}"
        export_trial(cfg, exp_dir, row, target)
        out[label] = target
    return out
