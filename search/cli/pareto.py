"""``prunetune pareto NAME``: print the accuracy-vs-MACs front and refresh ``pareto.png``.

Reads the experiment directory and the ledger only: loads no torch, Ray or Optuna.
"""

from __future__ import annotations

import argparse

from search.cli._args import add_experiment
from search.cli._print import print_final, print_front
from search.report.png import write_pareto_png
from search.results.expdir import find_experiment, load_saved_config
from search.results.ledger import read_trials


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="print the accuracy-vs-MACs Pareto front and write pareto.png")
    add_experiment(p)
    p.add_argument("--all", action="store_true", help="list every completed trial, not only the front")
    p.add_argument("--final", action="store_true", help="the front of final.parquet (`prunetune finalize`)")
    p.set_defaults(func=cmd_pareto)


def cmd_pareto(args: argparse.Namespace) -> int:
    exp_dir = find_experiment(args.experiment)
    if args.final:
        print_final(exp_dir, show_all=args.all)
        return 0
    cfg = load_saved_config(exp_dir)
    trials = read_trials(exp_dir)
    print_front(exp_dir, trials, show_all=args.all)
    png = write_pareto_png(exp_dir, cfg)
    print(f"wrote {png}")
    return 0
