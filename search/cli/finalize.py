"""``prunetune finalize NAME --top K --epochs E [--from-scratch]``: train the best front trials longer.

See :mod:`search.finalize`; ``prunetune pareto NAME --final`` shows the result.
"""

from __future__ import annotations

import argparse

from search.cli._args import add_cluster, add_experiment
from search.cli._print import print_final, progress_to_stdout
from search.finalize import check_finalize, finalize
from search.options import SearchOptions
from search.results.final import FINAL_FILE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finalize", help="train the K best front trials of a search longer (final.parquet)",
                       description="Take the K trials of the Pareto front with the best val accuracy (the front of the "
                                   "trials within the search's MACs budget, if it has one), run each "
                                   "again with E finetune epochs (or train their widths from scratch for E "
                                   "epochs) on Ray, and record them in results/NAME/final.parquet. A rerun skips "
                                   "the trials already there.")
    add_experiment(p)
    p.add_argument("--top", type=int, required=True, help="how many front trials (best val accuracy first)")
    p.add_argument("--epochs", type=int, required=True, help="finetune epochs (or training epochs with --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the trials' widths from random weights instead of finetuning the pruned base model")
    p.add_argument("--fresh", action="store_true", help="delete final.parquet first (run every chosen trial again)")
    add_cluster(p)
    p.set_defaults(func=cmd_finalize)


def cmd_finalize(args: argparse.Namespace) -> int:
    check_finalize(args.experiment, args.top, args.epochs)  # bad input: one line, before Ray starts
    progress_to_stdout()
    how = f"{args.epochs} epochs from scratch" if args.from_scratch else f"{args.epochs} finetune epochs"
    summary = finalize(args.experiment, args.top, args.epochs, from_scratch=args.from_scratch, fresh=args.fresh,
                       options=SearchOptions(address=args.address, verbose=args.ray_verbose))
    print(f"finalize {summary.exp_dir.name}: {len(summary.sources)} front trials ({how}): {len(summary.ran)} run now, "
          f"{len(summary.skipped)} already done, in {summary.wall_s:.0f} s")
    print_final(summary.exp_dir)
    print(f"wrote {summary.exp_dir / FINAL_FILE}")
    return 0
