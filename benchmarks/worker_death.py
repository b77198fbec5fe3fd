"""Work lost per worker death: epochs a retried trial runs again, with and without checkpoints.

Runs the same small search (tiny_vgg on digits, 4 trials of 8 finetune epochs, 2 at a
time, one local Ray with 2 CPUs) once per ``resources.checkpoint_every`` setting. Every
trial's worker process SIGKILLs itself once, in its first attempt, after computing epoch
``DIE_IN`` and before reporting it (so that epoch is lost too, like a death mid-epoch);
Ray retries the trial (``max_failures: 1``). From the epochs ledger: a retry's rows carry
``attempt`` 1, so the epoch it resumed after is the smallest such epoch minus one, and
the epochs run twice are ``DIE_IN`` minus that.

The markdown table goes to stdout (``make bench`` splices it into the README); progress to
stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIALS = 4
EPOCHS = 8
DIE_IN = 6  # the worker dies in this epoch of each trial's first attempt
SETTINGS = (1, 2, 0)  # checkpoint_every; 0 = no per-epoch checkpoints (the retry starts over)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dying_trial(cfg, params, reporter=None, *, base=None, resume=None, checkpoint=None):
    """``run_trial`` whose worker SIGKILLs itself once per trial, in epoch ``DIE_IN`` of its
    first attempt (a marker file per trial id records that it already died); it also notes
    the size of each resume state it saves."""
    import io

    import torch
    from ray import tune

    from search.trial.run import run_trial

    marker = Path(os.environ["PRUNETUNE_BENCH_MARKERS"]) / tune.get_context().get_trial_id()

    pending: list[int] = []  # the size of the resume state this epoch's report carries

    def report(row, model=None):
        if row["epoch"] == DIE_IN and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        reporter(row, model)
        if pending:  # reported, so stored: count it
            with open(f"{marker}.sizes", "a") as f:
                f.write(f"{pending.pop()}\n")

    def save(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        pending[:] = [len(buf.getvalue())]
        checkpoint(state)

    return run_trial(cfg, params, report, base=base, resume=resume, checkpoint=save if checkpoint else None)


def run(every: int, work: Path) -> dict:
    import pandas as pd

    from search.config import config_from_dict
    from search.tuner import SearchOptions, run_search

    markers = work / f"markers-{every}"
    markers.mkdir()
    os.environ["PRUNETUNE_BENCH_MARKERS"] = str(markers)  # the local Ray's workers inherit it
    cfg = config_from_dict({
        "experiment": {"name": f"death-{every}", "seed": 0, "results_dir": str(work)},
        "model": {"name": "tiny_vgg"}, "data": {"name": "digits", "limit": 200},
        "train": {"epochs": 1, "device": "cpu"},
        "search": {"criteria": ["l1"], "finetune_epochs": [EPOCHS, EPOCHS], "finetune_lr": [0.01, 0.01],
                   "baselines": []},
        "sampler": {"name": "random"},
        "resources": {"cpu": 1, "num_cpus": 2, "max_failures": 1, "checkpoint_every": every},
        "num_samples": TRIALS, "max_concurrent": 2,
    })  # fmt: skip
    t0 = time.perf_counter()
    summary = run_search(cfg, SearchOptions(trial_fn=dying_trial))
    wall = time.perf_counter() - t0  # progress output only: the machine is shared
    trials = pd.read_parquet(summary.exp_dir / "trials.parquet")
    epochs = pd.read_parquet(summary.exp_dir / "epochs.parquet")
    assert len(trials) == TRIALS and (trials["status"] == "TERMINATED").all(), trials
    assert (trials["retries"] == 1).all(), trials[["trial_id", "retries"]]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    resumed_after = [int(g[g["attempt"] == 1]["epoch"].min()) - 1 for _, g in epochs.groupby("trial_id")]
    rerun = [DIE_IN - r for r in resumed_after]
    sizes = [int(x) for f in markers.glob("*.sizes") for x in f.read_text().split()]
    return {"every": every, "deaths": int(trials["retries"].sum()), "resumed_after": resumed_after,
            "rerun": rerun, "wall": wall, "saves": len(sizes), "kb": sum(sizes) / 1024}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunetune-death-") as d:
        for every in SETTINGS:
            log(f"checkpoint_every={every} ...")
            rows.append(run(every, Path(d)))
            log(f"  {rows[-1]} ({rows[-1]['wall']:.0f} s)")
    print(f"### Work lost per worker death ({TRIALS} trials x {EPOCHS} finetune epochs, tiny_vgg on digits; "
          f"each trial's worker killed once, in epoch {DIE_IN})")
    print()
    print("| `checkpoint_every` | worker deaths | resumed after epoch (per trial) | epochs run twice per death "
          "| resume checkpoints saved | their total size |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        label = f"{r['every']}" if r["every"] else "0 (off)"
        mean = sum(r["rerun"]) / len(r["rerun"])
        print(f"| {label} | {r['deaths']} | {', '.join(map(str, r['resumed_after']))} | {mean:.1f} "
              f"| {r['saves']} | {r['kb']:.0f} kB |")
    print()
    print(f"Epochs run twice = {DIE_IN} (the epoch in flight when the worker died, included) minus the epoch "
          "the retry resumed after, read from `epochs.parquet` (`attempt` = 1 rows). Checkpoints saved: over "
          "both attempts of all trials; each holds the module, its optimizer state and its position.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
