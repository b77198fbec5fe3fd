"""``prunetune run [CONFIG]``: start a search from a YAML config (default: the CPU demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pruning.data import dataset_line
from search.cli._args import add_cluster, add_quiet, add_set, search_options
from search.cli._finalizing import finalize_at_end
from search.cli._print import print_summary, progress_to_stdout
from search.config import load_config
from search.results.expdir import prepare_experiment_dir, shown
from search.trial.materialize import experiment_data
from search.trial.targets import check_targets
from search.tuner import run_search

_DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start a search (Ray Tune + Optuna) from a YAML config",
                       description="Start a search: train the base model once, run num_samples pruning trials on "
                                   "Ray, record them in results/NAME/*.parquet and print the Pareto front.")
    p.add_argument("config", nargs="?", help=f"experiment YAML (default: {_DEMO_CONFIG.name}, the CPU demo)")
    add_set(p)
    add_cluster(p)
    p.add_argument("--fresh", action="store_true",
                   help="start over if results/NAME already holds an experiment (keeps the cached base model)")
    add_quiet(p)
    p.set_defaults(func=cmd_run)


def _default_config() -> str | None:
    return str(_DEMO_CONFIG) if _DEMO_CONFIG.is_file() else None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config if args.config is not None else _default_config(), args.overrides)
    check_targets(cfg)  # a MACs target below the smallest network: before anything is written
    exp = prepare_experiment_dir(cfg, args.fresh)  # fails before anything is written
    progress_to_stdout(args.quiet)
    if not args.quiet:
        print(f"search {cfg.experiment.name}: {cfg.num_samples} trials of {cfg.model.name} on {cfg.data.name}, "
              f"sampler {cfg.sampler.name}, {cfg.max_concurrent} at a time -> {shown(exp)}", flush=True)
    # The driver loads the dataset for the base model anyway (memoised per process): loading
    # it here costs nothing extra and rejects bad image folders before Ray starts or a file is written.
    line = dataset_line(experiment_data(cfg), cfg.data.root)
    if not args.quiet:
        print(line, flush=True)
    summary = run_search(cfg, search_options(args, cfg.train.epochs), fresh=args.fresh)
    print_summary(summary, args.quiet)
    return finalize_at_end(cfg, summary, args.address, args.ray_verbose, args.quiet)
