"""``prunetune run | resume | status | pareto | export``: searches and what they found.

``run`` starts a search from a YAML config, ``resume`` continues an interrupted one,
``status`` shows its progress, ``pareto`` prints the accuracy-vs-MACs front (and refreshes
``pareto.png``), ``export`` writes one trial's pruned model so that it loads with plain torch.
An experiment is named by its directory (``results/NAME``) or by ``NAME`` under ./results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pruning.errors import UsageError
from search.progress import EpochProgress, add_quiet

_DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start a search (Ray Tune + Optuna) from a YAML config",
                       description="Start a search: train the base model once, run num_samples pruning trials on "
                                   "Ray, record them in results/NAME/*.parquet and print the Pareto front.")
    p.add_argument("config", nargs="?", help=f"experiment YAML (default: {_DEMO_CONFIG.name}, the CPU demo)")
    _add_set(p)
    _add_cluster(p)
    p.add_argument("--fresh", action="store_true",
                   help="start over if results/NAME already holds an experiment (keeps the cached base model)")
    add_quiet(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted search to exactly num_samples trials",
                       description="Continue an interrupted search: finished trials are kept, unfinished ones run "
                                   "again, and the search stops at exactly num_samples distinct trials.")
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")
    p.add_argument("--config", help="a changed config to continue with (default: the saved config.yaml)")
    _add_set(p)
    _add_cluster(p)
    p.add_argument("--force", action="store_true", help="accept a config that changes what a trial means")
    p.add_argument("--retry-errored", action="store_true", help="run trials that ended with an error again")
    add_quiet(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="progress of a search: trials done/running/errored, best so far")
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pareto", help="print the accuracy-vs-MACs Pareto front and write pareto.png")
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")
    p.add_argument("--all", action="store_true", help="list every completed trial, not only the front")
    p.add_argument("--final", action="store_true", help="the front of final.parquet (`prunetune finalize`)")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("export", help="write one trial's pruned model (plain torch) and its widths",
                       description="Write model.pt (torch.load(..., weights_only=False)), model.pt2 (torch.export), model.onnx, "
                                   "widths.json and metrics.json for one trial.")
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")
    p.add_argument("--trial", required=True, help="trial id (a unique prefix is enough; see `prunetune pareto`)")
    p.add_argument("--out", help="output directory (default results/NAME/export/TRIAL)")
    p.set_defaults(func=cmd_export)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set num_samples=8 --set resources.gpu=0.25 (repeatable)")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join a running Ray cluster: auto, HOST:6379 or ray://HOST:10001 "
                                     "(token auth: export RAY_AUTH_MODE=token and the cluster's token)")
    p.add_argument("--verbose", dest="ray_verbose", action="store_true",
                   help="show Ray's own output (status tables, worker logs) instead of one line per trial")


# --------------------------------------------------------------------------- output


def _progress_to_stdout(quiet: bool = False) -> None:
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


def _options(args: argparse.Namespace, base_epochs: int) -> Any:
    from search.tuner import SearchOptions

    verbose = bool(getattr(args, "ray_verbose", False))
    progress = EpochProgress("base training", base_epochs, quiet=args.quiet)  # silent if the base is cached
    return SearchOptions(address=args.address, verbose=verbose, retry_errored=getattr(args, "retry_errored", False),
                         on_base_epoch=progress)


def _print_summary(summary: Any, quiet: bool = False) -> None:
    from search.expdir import open_store, shown
    from search.ledger import read_trials

    exp = open_store(summary.exp_dir)
    exp_dir = shown(exp)
    if not quiet:  # a blank line after the progress
        print()
    how = {"restore": " (resumed: Ray state restored)", "warm-start": " (resumed: new session, warm-started)"}
    name = exp_dir.rstrip("/").rsplit("/", 1)[-1]
    print(f"search {name}: {summary.done}/{summary.total} trials ({summary.errored} errored, "
          f"{summary.stopped} stopped early) in {summary.wall_s:.0f} s{how.get(summary.resumed_from or '', '')}")
    _print_front(exp, read_trials(exp), show_all=False)
    names = ["config.yaml", "trials.parquet", "epochs.parquet", "pareto.parquet", "pareto.png", "screen.parquet"]
    print(f"wrote {exp_dir}/{{{','.join(n for n in names if exp.exists(n))}}}")


def _print_front(exp_dir: Any, trials: Any, show_all: bool) -> None:
    from search.ledger import pareto_front
    from search.report import pareto_table
    from search.expdir import read_base

    base = read_base(exp_dir)
    if show_all:
        rows = trials[trials["status"] == "TERMINATED"]
        print(f"\nall {len(rows)} completed trials (sorted by MACs):")
    else:
        rows = pareto_front(trials)
        print(f"\nPareto front: {len(rows)} of {len(trials)} trials (val_acc max, MACs min; sorted by MACs):")
    print(pareto_table(rows, base))


def _print_final(exp_dir: Path, show_all: bool = False) -> None:
    """The front of ``final.parquet``; trial ids are those of the search trials finalized."""
    from search.expdir import read_base
    from search.finalize import FINAL_FILE, SOURCE_KEY, read_final
    from search.ledger import pareto_front
    from search.report import pareto_table

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


# --------------------------------------------------------------------------- commands


def _default_config() -> str | None:
    return str(_DEMO_CONFIG) if _DEMO_CONFIG.is_file() else None


def cmd_run(args: argparse.Namespace) -> int:
    from pruning.data import dataset_line
    from search.config import load_config
    from search.expdir import prepare_experiment_dir, shown
    from search.materialize import experiment_data
    from search.tuner import run_search

    from search.targets import check_targets

    cfg = load_config(args.config if args.config is not None else _default_config(), args.overrides)
    check_targets(cfg)  # a MACs target below the smallest network: before anything is written
    exp = prepare_experiment_dir(cfg, args.fresh)  # fails before anything is written
    _progress_to_stdout(args.quiet)
    if not args.quiet:
        print(f"search {cfg.experiment.name}: {cfg.num_samples} trials of {cfg.model.name} on {cfg.data.name}, "
              f"sampler {cfg.sampler.name}, {cfg.max_concurrent} at a time -> {shown(exp)}", flush=True)
    # The driver loads the dataset for the base model anyway (memoised per process): loading
    # it here costs nothing extra and rejects bad image folders before Ray starts or a file is written.
    line = dataset_line(experiment_data(cfg), cfg.data.root)
    if not args.quiet:
        print(line, flush=True)
    summary = run_search(cfg, _options(args, cfg.train.epochs), fresh=args.fresh)
    _print_summary(summary, args.quiet)
    return _finalize_at_end(cfg, summary, args)


def _finalize_at_end(cfg: Any, summary: Any, args: argparse.Namespace) -> int:
    """With ``finalize.top`` set, finalize the search that just ended (``prunetune finalize``)."""
    if cfg.finalize.top is None or summary.done < 1:
        return 0
    from search.cmd_finalize import run_finalize, settings
    from search.expdir import open_store

    print()
    exp = open_store(summary.exp_dir)
    return run_finalize(exp.local_path() or exp.uri(), settings(cfg), address=args.address,
                        verbose=bool(getattr(args, "ray_verbose", False)), quiet=args.quiet)


def cmd_resume(args: argparse.Namespace) -> int:
    from search.config import load_config, with_overrides
    from search.expdir import find_experiment, load_saved_config, shown
    from search.tuner import resume_search

    exp_dir = find_experiment(args.experiment)
    cfg = None
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
    elif args.overrides:  # the saved config (local or on object storage) with --set applied
        cfg = with_overrides(load_saved_config(exp_dir), args.overrides)
    _progress_to_stdout(args.quiet)
    if not args.quiet:
        print(f"resuming {shown(exp_dir)}", flush=True)
    base_epochs = (cfg or load_saved_config(exp_dir)).train.epochs
    summary = resume_search(exp_dir, _options(args, base_epochs), cfg=cfg, force=args.force)
    _print_summary(summary, args.quiet)
    return _finalize_at_end(cfg or load_saved_config(exp_dir), summary, args)


def _driver_state(exp_dir: Any) -> tuple[bool, dict[str, Any]]:
    from search.expdir import read_progress

    try:
        state = read_progress(exp_dir)
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        return False, {}
    if state.get("finished"):
        return False, state
    alive = False
    if state.get("host") == socket.gethostname():
        try:
            os.kill(int(state["pid"]), 0)
            alive = True
        except (OSError, ValueError, KeyError):
            alive = False
    else:  # another machine: trust a recent heartbeat
        try:
            age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(state["updated_at"])
            alive = age.total_seconds() < 600
        except (KeyError, ValueError):
            alive = False
    return alive, state


def cmd_status(args: argparse.Namespace) -> int:
    from search.ledger import pareto_front, read_trials
    from search.report import human_count
    from search.expdir import find_experiment, load_saved_config, read_base, shown

    exp_dir = find_experiment(args.experiment)
    cfg = load_saved_config(exp_dir)
    trials = read_trials(exp_dir)
    counts = trials["status"].value_counts().to_dict()
    done, stopped, errored = (int(counts.get(s, 0)) for s in ("TERMINATED", "STOPPED", "ERROR"))
    alive, state = _driver_state(exp_dir)
    running = state.get("running", []) if alive else []
    print(f"experiment {cfg.experiment.name} ({shown(exp_dir)}): {len(trials)}/{cfg.num_samples} trials recorded")
    print(f"  done {done}, stopped early {stopped}, errored {errored}, running {len(running)}")
    if alive:
        print(f"  search running (driver pid {state.get('pid')} on {state.get('host')}, updated {state.get('updated_at')})")
    elif len(trials) < cfg.num_samples:
        print(f"  search not running; continue it with `prunetune resume {shown(exp_dir)}`")
    else:
        print("  search finished")
    base = read_base(exp_dir)
    if base and base.get("val_acc") is not None:
        print(f"  base model: val {100 * base['val_acc']:.2f}%, MACs {human_count(base.get('macs'))}")
    ok = trials[trials["status"] == "TERMINATED"]
    if len(ok):
        best = ok.sort_values(["val_acc", "macs"], ascending=[False, True]).iloc[0]
        print(f"  best val so far: {100 * best['val_acc']:.2f}% (trial {best['trial_id']}, MACs "
              f"{human_count(best['macs'])}, {100 * (best['macs_ratio'] or 0):.1f}% of base)")
        front = pareto_front(trials)
        print(f"  Pareto front: {len(front)} trials (`prunetune pareto {shown(exp_dir)}`)")
    last_errors = trials[trials["status"] == "ERROR"].tail(3)
    for row in last_errors.to_dict("records"):
        print(f"  error in {row['trial_id']}: {row['error']}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from search.ledger import read_trials
    from search.expdir import find_experiment, load_saved_config, write_pareto_png

    exp_dir = find_experiment(args.experiment)
    if args.final:
        _print_final(exp_dir, show_all=args.all)
        return 0
    cfg = load_saved_config(exp_dir)
    trials = read_trials(exp_dir)
    _print_front(exp_dir, trials, show_all=args.all)
    png = write_pareto_png(exp_dir, cfg)
    print(f"wrote {png}")
    return 0


def _find_trial(trials: Any, wanted: str) -> dict[str, Any]:
    ids = [str(t) for t in trials["trial_id"]]
    hits = [t for t in ids if t == wanted] or [t for t in ids if t.startswith(wanted)]
    if not hits:
        sample = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        raise UsageError(f"unknown trial {wanted!r}; choose one of: {sample or '(no trials yet)'}")
    if len(hits) > 1:
        raise UsageError(f"trial prefix {wanted!r} is ambiguous: {', '.join(hits[:8])}")
    return trials[trials["trial_id"] == hits[0]].iloc[0].to_dict()


def cmd_export(args: argparse.Namespace) -> int:
    from search.ledger import read_trials
    from search.expdir import find_experiment, load_saved_config
    from search.export import export_trial

    exp_dir = find_experiment(args.experiment)
    cfg = load_saved_config(exp_dir)
    row = _find_trial(read_trials(exp_dir), args.trial)
    if row["status"] != "TERMINATED":
        raise UsageError(f"trial {row['trial_id']} has status {row['status']}; only completed (TERMINATED) "
                         f"trials have a final model")
    out = Path(args.out) if args.out else None  # None: export/TRIAL in the experiment
    paths = export_trial(cfg, exp_dir, row, out)
    print(f"trial {row['trial_id']}: val {100 * row['val_acc']:.2f}%, MACs {int(row['macs']):,}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    print(f"load with: torch.load('{paths['model']}', weights_only=False)  or  torch.export.load('{paths['exported']}').module()")
    return 0
