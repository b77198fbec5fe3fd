"""``finalize``: retrain the best trials and the uniform baseline per target, pick on fresh data.

A search ranks widths with short finetunes on val, so its best trial on val is biased upwards
(the winner's curse). :func:`finalize` therefore takes, per MACs target (trials grouped by
``macs_target``; without it, one target at the best trial's MACs), the ``top`` trials of the
Pareto front of ``trials.parquet`` with the best val accuracy - among the trials within
``objectives.macs_budget`` when the search has one - *and* the uniform L1 baseline cut to the
same target, and runs them all alike on Ray Tune with the search's trainable
(``search.trial.run.run_trial``): ``epochs`` finetune epochs from the pruned base model, or
from random weights with ``from_scratch`` (Liu et al. 2019), distilling the base model with
``distill`` (else no candidate distils); with ``with_scratch`` every candidate is also trained
from random weights and those runs compete for the pick. Each finished candidate is scored on the selection
split (``data.select_fraction``: no trial trained on it, the search never ranked on it) and the
best there is each target's *pick*, exported to ``export/final-<candidate>``. What a candidate
is, how it is trained and how the pick is made is :mod:`search.finalpick`.

Rows go to ``final.parquet`` (:mod:`search.results.final`) and their epochs to
``final_epochs.parquet``, written by the search's ``Recorder`` as each run finishes (atomic
writes). A rerun skips every candidate already in ``final.parquet``, so a finalize killed
part-way and run again loses and repeats no row. ``pareto --final`` shows the front of
``final.parquet``.

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
from search import finalpick, tuner
from search.config import ExperimentConfig
from search.export import export_trial, load_trial_model
from search.finalpick import choose_sources, final_params
from search.options import SearchOptions
from search.results import expdir
from search.results.final import FINAL_EPOCHS_FILE, FINAL_FILE, FinalLedger, read_final
from search.results.ledger import read_trials
from search.results.storage import as_store
from search.trial.materialize import experiment_data

__all__ = ["FinalizeSummary", "check_finalize", "choose_sources", "final_params", "finalize"]

progress_log = logging.getLogger("search.progress")


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


# --------------------------------------------------------------------------- what to run


def check_finalize(experiment: str | os.PathLike[str], top: int, epochs: int, pick_alpha: float | None = None, *,
                   from_scratch: bool = False, with_scratch: bool = False,
                   scratch_epochs: int | None = None) -> tuple[Path, pd.DataFrame]:
    """The experiment directory and the chosen source rows; UsageError for ``top``,
    ``epochs`` or ``scratch_epochs`` < 1, ``pick_alpha`` outside (0, 1], ``with_scratch``
    with ``from_scratch``, an unknown experiment, or a search with no finished trial."""
    if pick_alpha is not None and not 0 < pick_alpha <= 1:
        raise UsageError(f"--pick-alpha must be in (0, 1], got {pick_alpha:g}")
    if with_scratch and from_scratch:
        raise UsageError("--with-scratch adds from-scratch runs beside the finetuned ones, --from-scratch makes "
                         "every run one: choose one of them")
    if scratch_epochs is not None and scratch_epochs < 1:
        raise UsageError(f"--scratch-epochs must be an integer >= 1, got {scratch_epochs}")
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
             options: SearchOptions | None = None, pick_alpha: float | None = None, with_scratch: bool = False,
             scratch_epochs: int | None = None) -> FinalizeSummary:
    """Retrain, per target, the ``top`` best front trials of ``experiment`` and the uniform
    baseline for ``epochs``, pick on the selection split, into ``final.parquet``.

    ``experiment`` is ``results/NAME`` or ``NAME``. Every candidate is trained alike:
    ``from_scratch`` trains its widths from random weights instead of finetuning the pruned
    base model, ``distill`` distils the base model (else no candidate distils). Each target's
    pick (best select accuracy, :func:`search.finalpick.pick_rows`) is marked ``picked`` and,
    with ``export``, exported to ``export/final-<candidate>``. ``compare`` then also runs each
    pick's widths in the other variants (:func:`search.finalpick.compare_variants`) for the
    report; they are never picked. ``pick_alpha`` (in (0, 1]): the uniform baseline stays a
    target's pick unless the best search candidate on select beats it there with a one-sided
    exact McNemar p-value at most ``pick_alpha`` (None: the best on select, whatever the
    margin). ``with_scratch`` also trains every candidate from random weights for
    ``scratch_epochs`` (None: ``search.scratch_epochs``; distilled with ``distill``) and
    those runs compete for the pick (the reference of ``pick_alpha`` and of every
    ``select_p`` is then the uniform baseline trained longest:
    :func:`search.finalpick.reference_variant`). ``fresh`` deletes ``final.parquet``/``final_epochs.parquet``
    first. ``options`` is a :class:`search.tuner.SearchOptions` (cluster address, verbosity,
    injected ``trial_fn``/``prepare_fn``). Candidates already in ``final.parquet`` are skipped.
    Raises UsageError (before Ray starts) for bad settings (:func:`check_finalize`), an
    unknown experiment, or a search with no finished trial.
    """
    t0 = time.perf_counter()
    exp_dir, _ = check_finalize(experiment, top, epochs, pick_alpha, from_scratch=from_scratch,
                                with_scratch=with_scratch, scratch_epochs=scratch_epochs)
    cfg = _config(exp_dir)
    check_writable(exp_dir, "results directory")
    if fresh:
        for name in (FINAL_FILE, FINAL_EPOCHS_FILE):
            (exp_dir / name).unlink(missing_ok=True)
    options = options or SearchOptions()
    targets = finalpick.plan_targets(read_trials(exp_dir), top, cfg.objectives.macs_budget)
    main = finalpick.Variant(from_scratch, distill)
    competing = [finalpick.Variant(True, distill)] if with_scratch else []
    epochs_of = {main: epochs, **{v: scratch_epochs or cfg.search.scratch_epochs for v in competing}}
    cands = [c for v in (main, *competing) for c in finalpick.candidates(targets, v)]
    ran, skipped = _run_candidates(cfg, exp_dir, options, cands, epochs_of, epochs)
    ref = finalpick.reference_variant(main, competing, epochs_of)
    picks = _score_and_pick(cfg, exp_dir, targets, main, competing, ref, options, pick_alpha)
    shown = [main, *competing]
    if compare:
        shown += [v for v in finalpick.compare_variants(main) if v not in shown]
        by_label = {t.label: t for t in targets}
        have = {c.key for c in cands}
        extra = [c for label, pick in picks.items() for v in shown[1:]
                 if (c := finalpick.Candidate(by_label[label], v, None if pick.uniform else pick.row)).key not in have]
        more_ran, more_skipped = _run_candidates(cfg, exp_dir, options, extra, epochs_of, epochs)
        ran, skipped, cands = ran + more_ran, skipped + more_skipped, cands + extra
        _score_and_pick(cfg, exp_dir, targets, main, competing, ref, options, pick_alpha)  # scores new rows; picks stay
    final = read_final(exp_dir)
    exported = _export_picks(cfg, exp_dir, final, picks, options) if export else {}
    data = _select_size(cfg)
    return FinalizeSummary(exp_dir=exp_dir, sources=[c.key for c in cands], ran=ran, skipped=skipped,
                           wall_s=time.perf_counter() - t0, picks={k: c.key for k, c in picks.items()},
                           exported=exported,
                           report=finalpick.summary_text(final, targets, main, shown, data, competing, ref))


def _run_candidates(cfg: ExperimentConfig, exp_dir: Path, options: Any, cands: Sequence[finalpick.Candidate],
                    epochs_of: Mapping[finalpick.Variant, int], epochs: int) -> tuple[list[str], list[str]]:
    """Run the candidates not yet in ``final.parquet`` (one Ray session), each for its
    variant's epochs (``epochs_of``, else ``epochs``); returns (run, skipped) keys. A
    candidate already there but trained for other epochs is a UsageError (before Ray starts):
    its row would be compared with rows trained for these epochs."""
    had = {row["candidate"]: finalpick.asked_epochs(row)
           for row in FinalLedger(exp_dir, cfg.experiment.name).trials().to_dict("records")}
    done = set(had)
    for c in cands:
        want = epochs_of.get(c.variant, epochs)
        if c.key in done and had.get(c.key) not in (None, want):
            flag = "--epochs" if c.variant not in epochs_of or c.variant == next(iter(epochs_of)) else "--scratch-epochs"
            raise UsageError(f"{FINAL_FILE} has {c.key} trained {had[c.key]} epochs, this finalize asks {flag} "
                             f"{want}: pass --fresh to retrain every candidate (or finalize with {flag} "
                             f"{had[c.key]})")
    todo = [c for c in cands if c.key not in done]
    skipped = [c.key for c in cands if c.key in done]
    if skipped:
        progress_log.info("%d of %d already in %s: %s", len(skipped), len(cands), FINAL_FILE, ", ".join(skipped))
    if todo:
        from search._ray import final  # the Ray layer: loaded only when a finalize runs

        def points(base: Any) -> list[dict[str, Any]]:
            shape = experiment_data(cfg).input_shape
            return [finalpick.candidate_params(c, epochs_of.get(c.variant, epochs), cfg, base, shape) for c in todo]

        final.run_final(cfg, exp_dir, options, points, total=len(done) + len(todo),  # rows of final.parquet
                        prepare=lambda: tuner.prepare_base(cfg, as_store(exp_dir), options))
    return [c.key for c in todo], skipped


def _score_and_pick(cfg: ExperimentConfig, exp_dir: Path, targets: Sequence[finalpick.Target],
                    main: finalpick.Variant, competing: Sequence[finalpick.Variant], reference: finalpick.Variant,
                    options: Any, pick_alpha: float | None) -> dict[str, finalpick.Candidate]:
    """Score the finished rows lacking ``select_acc`` on the selection split (with their
    per-example hits), give each of a target's candidates in ``main`` and the ``competing``
    variants its p-value against the target's uniform baseline in ``reference``, mark each
    target's pick among them (``picked``; every other row False;
    :func:`search.finalpick.pick_rows` with ``pick_alpha``), write ``final.parquet``;
    returns target label -> picked candidate."""
    led = FinalLedger(exp_dir, cfg.experiment.name)
    final = led.trials()
    trial_fn = getattr(options, "trial_fn", None)
    for key, scores in finalpick.score_select(cfg, final, lambda row: load_trial_model(cfg, row, trial_fn)).items():
        led.update(key, **scores)
    final = led.trials()
    mains = [{c.key: c for v in (main, *competing) for c in finalpick.candidates([t], v)} for t in targets]
    refs = [finalpick.Candidate(t, reference, None).key for t in targets]  # each target's uniform baseline
    have = set(led.keys())
    for keys, ref in zip(mains, refs):
        p = finalpick.p_values(final, list(keys), ref)
        for key in have.intersection(keys):  # the reference's own: none (a rerun may change the reference)
            led.update(key, select_p=p.get(key))
    final = led.trials()
    picks: dict[str, finalpick.Candidate] = {}
    for t, keys, ref in zip(targets, mains, refs):
        best = finalpick.pick_rows(final, list(keys), pick_alpha, ref)
        if not best.empty:
            picks[t.label] = keys[str(best.iloc[0]["candidate"])]
    picked = {c.key for c in picks.values()}
    for key in led.keys():
        led.update(key, picked=key in picked)
    led.flush()
    if cfg.data.select_fraction is None:
        progress_log.info("no selection split (data.select_fraction is null in this experiment): picked on val, "
                          "which the search ranked on")
    return picks


def _select_size(cfg: ExperimentConfig) -> int | None:
    select = experiment_data(cfg).select
    return None if select is None else len(select)


def _export_picks(cfg: ExperimentConfig, exp_dir: Path, final: pd.DataFrame,
                  picks: Mapping[str, finalpick.Candidate], options: Any) -> dict[str, Path]:
    """Each pick's model, exported like ``prunetune export`` into ``export/final-<candidate>``."""
    out = {}
    for label, cand in picks.items():
        row = final[final["candidate"] == cand.key].iloc[0].to_dict()
        target = exp_dir / "export" / f"final-{cand.key}"
        export_trial(cfg, exp_dir, row, target)
        out[label] = target
    return out
