"""What the search commands print: progress lines on stdout, the Pareto fronts, a search's summary.

Loads neither torch, Ray nor Optuna (``pareto`` uses it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pruning.errors import UsageError
from search.options import SearchSummary
from search.report.table import pareto_table
from search.results.expdir import CONFIG_FILE, PARETO_PNG, SCREEN_FILE, open_store, read_base, shown
from search.results.final import FINAL_FILE, SOURCE_KEY, read_final
from search.results.ledger import EPOCHS_FILE, PARETO_FILE, TRIALS_FILE, pareto_front, read_trials

__all__ = ["print_final", "print_front", "print_summary", "progress_to_stdout"]

#: The files of a search the summary names, when they exist.
_SUMMARY_FILES = (CONFIG_FILE, TRIALS_FILE, EPOCHS_FILE, PARETO_FILE, PARETO_PNG, SCREEN_FILE)


def progress_to_stdout(quiet: bool = False) -> None:
    """Progress lines of the search go to stdout, unadorned (the CLI owns stdout); none when ``quiet``."""
    log = logging.getLogger("search.progress")
    for old in [h for h in log.handlers if getattr(h, "_prunetune", False)]:
        log.removeHandler(old)  # bound to an earlier sys.stdout (in-process callers such as tests swap it)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._prunetune = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def print_summary(summary: SearchSummary, quiet: bool = False) -> None:
    """The last lines of ``run`` and ``resume``: counts, the front and the files written."""
    exp = open_store(summary.exp_dir)
    exp_dir = shown(exp)
    if not quiet:  # a blank line after the progress
        print()
    how = {"restore": " (resumed: Ray state restored)", "warm-start": " (resumed: new session, warm-started)"}
    name = exp_dir.rstrip("/").rsplit("/", 1)[-1]
    print(f"search {name}: {summary.done}/{summary.total} trials ({summary.errored} errored, "
          f"{summary.stopped} stopped early) in {summary.wall_s:.0f} s{how.get(summary.resumed_from or '', '')}")
    print_front(exp, read_trials(exp), show_all=False)
    print(f"wrote {exp_dir}/{{{','.join(n for n in _SUMMARY_FILES if exp.exists(n))}}}")


def print_front(exp_dir: Any, trials: Any, show_all: bool) -> None:
    """The Pareto front of ``trials`` (or, ``show_all``, every completed trial) as a table."""
    base = read_base(exp_dir)
    if show_all:
        rows = trials[trials["status"] == "TERMINATED"]
        print(f"\nall {len(rows)} completed trials (sorted by MACs):")
    else:
        rows = pareto_front(trials)
        print(f"\nPareto front: {len(rows)} of {len(trials)} trials (val_acc max, MACs min; sorted by MACs):")
    print(pareto_table(rows, base))


def print_final(exp_dir: Path, show_all: bool = False) -> None:
    """The front of ``final.parquet``; trial ids are those of the search trials finalized."""
    final = read_final(exp_dir)
    if final.empty:
        raise UsageError(f"{str(exp_dir)!r} has no {FINAL_FILE} yet; run `prunetune finalize {exp_dir} --top K "
                         f"--epochs E` first")
    rows = final[final["status"] == "TERMINATED"] if show_all else pareto_front(final)
    rows = rows.assign(trial_id=rows["candidate"].fillna(rows[SOURCE_KEY]).fillna(rows["trial_id"]))
    what = f"all {len(rows)} completed" if show_all else f"Pareto front: {len(rows)} of {len(final)}"
    print(f"\nfinal ({FINAL_FILE}) {what} trials (trial_id = the candidate finalized: search trial or "
          f"uniform@TARGET, + variant; sorted by MACs):")
    print(pareto_table(rows, read_base(exp_dir)))
