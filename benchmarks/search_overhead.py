"""Search overhead: how much longer a search takes than its trials' compute, side by side.

Runs the same search three times in one process on one local Ray (2 CPUs): 8 trials of
fixed CPU work (torch matmuls, one thread, reported as 5 "epochs"), 2 at a time, sampled
by OptunaSearch (NSGA-II, 2 objectives) over the real search space:

1. plain Ray Tune, default settings (a new worker process per trial);
2. plain Ray Tune with ``reuse_actors=True``;
3. prunetune's ``run_search`` (reused workers, base model through the object store,
   ledger written per trial, final model checkpointed per trial).

ratio = ``Tuner.fit()`` wall time / (sum of the trials' work seconds / concurrency).
1.00 would be perfect packing. ``ray.init`` is shared and reported separately. Idle
worker-slot time is split into: before a slot's first trial (worker start), between
trials on a slot, and after a slot's last trial (until ``fit()`` returns).

The markdown table goes to stdout (``make bench`` splices it into the README); progress to
stderr. ``--quick`` uses 4 s trials instead of 30 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TRIALS = 8
CONCURRENCY = 2
EPOCHS = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def busy(seconds: float) -> None:
    """Fixed CPU work: single-threaded matmuls for ``seconds`` of wall time."""
    import torch

    a = torch.randn(96, 96)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a.T / 96.0)


def _record(record_dir: str, t0: float, t1: float) -> None:
    Path(record_dir, f"{os.getpid()}-{t0:.6f}.json").write_text(json.dumps({"t0": t0, "t1": t1, "pid": os.getpid()}))


def plain_trainable(config: dict, *, seconds: float, record_dir: str) -> None:
    """What a plain Ray Tune user writes: import torch, work, report each epoch."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    t0 = time.time()
    for epoch in range(1, EPOCHS + 1):
        busy(seconds / EPOCHS)
        tune.report({"epoch": epoch, "val_acc": 0.5 + 0.1 * epoch / EPOCHS, "macs": 1000 * epoch})
    _record(record_dir, t0, time.time())


def prunetune_trial(cfg, params, reporter=None, *, base=None, resume=None, checkpoint=None, seconds: float,
                    record_dir: str) -> dict:
    """The same work behind ``run_trial``'s interface: epoch rows and a (tiny) final model."""
    import copy

    model = copy.deepcopy(base.model)
    t0 = time.time()
    for epoch in range(1, EPOCHS + 1):
        busy(seconds / EPOCHS)
        reporter({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.5 + 0.1 * epoch / EPOCHS,
                  "macs": int(base.metrics["macs"]), "widths": list(base.widths), "lr": 0.01,
                  "wall_s": seconds / EPOCHS}, model)
    t1 = time.time()
    _record(record_dir, t0, t1)
    return {"val_acc": 0.6, "test_acc": 0.6, "macs": int(base.metrics["macs"]), "params": int(base.metrics["params"]),
            "latency_ms": 1.0, "macs_ratio": 1.0, "widths": list(base.widths), "group_names": list(base.group_names),
            "epochs": EPOCHS, "wall_s": t1 - t0, "mode": "prune", "criterion": params.get("criterion"),
            "base_val_acc": base.metrics["val_acc"]}


def _config(root: Path, name: str):
    from search.config import load_config

    return load_config(None, [
        f"experiment.name={name}", f"experiment.results_dir={root}", "model.name=tiny_vgg", "data.limit=100",
        "train.epochs=0", "train.device=cpu", "sampler.name=nsga2", "sampler.population_size=4",
        f"num_samples={TRIALS}", f"max_concurrent={CONCURRENCY}", "resources.cpu=1",
    ])


def run_plain(root: Path, seconds: float, reuse: bool, cfg, groups: list[str]) -> tuple[float, str, float]:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search.study import space
    from search.study.samplers import make_sampler

    record = tempfile.mkdtemp(dir=root)
    searcher = OptunaSearch(functools.partial(space.suggest, cfg=cfg, groups=groups), metric=["val_acc", "macs"],
                            mode=["max", "min"], sampler=make_sampler(**cfg.sampler.model_dump(), seed=cfg.experiment.seed))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(plain_trainable, seconds=seconds, record_dir=record), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=TRIALS, max_concurrent_trials=CONCURRENCY,
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=str(root / "ray"), name=f"plain-{int(reuse)}", verbose=0),
    )
    t = time.perf_counter()
    start = time.time()
    tuner.fit()
    return time.perf_counter() - t, record, start


def run_ours(root: Path, seconds: float, cfg) -> tuple[float, str, object]:
    from search.tuner import SearchOptions, run_search

    record = tempfile.mkdtemp(dir=root)
    opts = SearchOptions(trial_fn=functools.partial(prunetune_trial, seconds=seconds, record_dir=record))
    summary = run_search(cfg, opts, fresh=True)
    assert summary.done == TRIALS, summary
    return summary.fit_s, record, summary


def analyse(fit_s: float, fit_start: float, record: str) -> dict:
    rows = sorted((json.loads(p.read_text()) for p in Path(record).glob("*.json")), key=lambda r: r["t0"])
    assert len(rows) == TRIALS, f"{len(rows)} trial records"
    fit_end = fit_start + fit_s
    compute = sum(r["t1"] - r["t0"] for r in rows)
    slots: list[list[dict]] = [[] for _ in range(CONCURRENCY)]
    for r in rows:  # each trial goes to the slot that freed up first
        slot = min(slots, key=lambda s: s[-1]["t1"] if s else float("-inf"))
        slot.append(r)
    first = sum(s[0]["t0"] - fit_start for s in slots if s)
    between = sum(b["t0"] - a["t1"] for s in slots for a, b in zip(s, s[1:]))
    last = sum(fit_end - s[-1]["t1"] for s in slots if s)
    return {"fit_s": fit_s, "ideal_s": compute / CONCURRENCY, "ratio": fit_s / (compute / CONCURRENCY),
            "first_s": first / CONCURRENCY, "between_s": between / max(1, TRIALS - CONCURRENCY),
            "last_s": last / CONCURRENCY, "workers": len({r["pid"] for r in rows})}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 s trials instead of 30 s (a rough check)")
    p.add_argument("--seconds", type=float, help="work per trial in seconds (overrides --quick)")
    args = p.parse_args()
    seconds = args.seconds or (4.0 if args.quick else 30.0)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # plain Tune's banner would go to our stdout
    import logging

    import ray

    import optuna

    logging.getLogger("search.progress").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="ptbench"))
    t = time.perf_counter()
    ray.init(num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - t
    log(f"ray.init {init_s:.1f} s; {TRIALS} trials x {seconds:g} s, {CONCURRENCY} at a time")

    from search.study import space

    results = {}
    cfg = _config(root, "plain")
    groups = space.group_names(cfg)
    for label, reuse in (("plain Ray Tune, default (new worker per trial)", False),
                         ("plain Ray Tune, reuse_actors=True", True)):
        log(f"running: {label}")
        fit_s, record, start = run_plain(root, seconds, reuse, cfg, groups)
        results[label] = analyse(fit_s, start, record)
        log(f"  {results[label]}")
    label = "prunetune run_search"
    log(f"running: {label}")
    fit_s, record, summary = run_ours(root, seconds, _config(root, "ours"))
    results[label] = analyse(fit_s, summary.fit_started_at, record)
    results[label]["session_s"] = summary.wall_s
    log(f"  {results[label]}")
    t = time.perf_counter()
    ray.shutdown()
    shutdown_s = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)

    print(f"{TRIALS} trials x {seconds:g} s of fixed CPU work, {CONCURRENCY} at a time on {os.cpu_count()} CPUs, "
          f"OptunaSearch NSGA-II (2 objectives); one run, same Ray instance.\n")
    print("| variant | `fit()` wall s | ideal s (work / 2) | ratio | worker start s | gap between trials s | "
          "after last trial s | worker processes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['fit_s']:.1f} | {r['ideal_s']:.1f} | **{r['ratio']:.2f}** | {r['first_s']:.1f} | "
              f"{r['between_s']:.2f} | {r['last_s']:.1f} | {r['workers']} |")
    ours = results[label]
    print(f"\nIdle time per worker slot: *worker start* = before its first trial began (process start, "
          f"imports, fetching the base model), *gap* = average wait between one trial's end and the next "
          f"trial's start, *after* = last trial's end to `fit()` returning. Not in the table: `ray.init` "
          f"{init_s:.1f} s and `ray.shutdown` {shutdown_s:.1f} s (once per session); the whole prunetune "
          f"session (base model, ledger, Pareto plot) took {ours['session_s']:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
