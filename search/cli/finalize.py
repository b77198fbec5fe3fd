"""``prunetune finalize NAME [--top K] [--epochs E] [--from-scratch | --with-scratch [--scratch-epochs S]] [--distill]
[--compare] [--pick-alpha P]``:
retrain the best trials and the uniform baseline per target, pick on the selection split.

See :mod:`search.finalize` and :mod:`search.finalpick`; ``prunetune pareto NAME --final``
shows the result.
"""

from __future__ import annotations

import argparse
from typing import Any

from search.cli._args import add_cluster, add_experiment
from search.cli._finalizing import finalize_settings, run_finalize
from search.finalize import check_finalize
from search.results.expdir import find_experiment, load_saved_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finalize", help="retrain the K best trials and the uniform baseline per target, pick on the "
                                        "selection split (final.parquet)",
                       description="Per MACs target, take the K trials with the best val accuracy (distinct cuts, "
                                   "not the search's uniform baseline trial; a search without macs_targets: the K "
                                   "best of its Pareto front, within its MACs budget if it has one) and the "
                                   "uniform L1 baseline cut to the same MACs, train them all alike for E epochs on "
                                   "Ray, score them on the selection split (data.select_fraction: no trial trained "
                                   "or was ranked on it) and pick the best there; report val, select and test of "
                                   "every candidate, record them in results/NAME/final.parquet and export each pick "
                                   "to results/NAME/export/final-CANDIDATE. A rerun skips the candidates already "
                                   "there. --top/--epochs default to the config's finalize section (epochs: as "
                                   "long as a search trial trains).")
    add_experiment(p)
    p.add_argument("--top", type=int, help="how many front trials per target (best val accuracy first)")
    p.add_argument("--epochs", type=int, help="finetune epochs (or training epochs with --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train every candidate's widths from random weights instead of finetuning the pruned "
                        "base model")
    p.add_argument("--with-scratch", action="store_true",
                   help="also train every candidate's widths from random weights (distilled with --distill); those "
                        "runs compete for the pick with the finetuned ones")
    p.add_argument("--scratch-epochs", type=int,
                   help="training epochs of the --with-scratch runs (default: finalize.scratch_epochs, else the "
                        "search's search.scratch_epochs)")
    p.add_argument("--distill", action="store_true",
                   help="every candidate distils the base model (alpha, temperature: the middle of the search "
                        "space's ranges); without it no candidate distils")
    p.add_argument("--compare", action="store_true",
                   help="also train each pick's widths finetuned with distillation and from scratch (reported "
                        "beside the pick, never picked)")
    p.add_argument("--pick-alpha", type=float,
                   help="keep the uniform baseline as the pick unless the best search candidate on the selection "
                        "split beats it there with a one-sided exact McNemar p-value <= this (e.g. 0.1; with "
                        "--with-scratch: the uniform baseline trained the most epochs); default: the config's "
                        "finalize.pick_alpha (null: the best on select, whatever the margin)")
    p.add_argument("--no-export", dest="export", action="store_false", help="do not export the picks")
    p.add_argument("--fresh", action="store_true", help="delete final.parquet first (run every candidate again)")
    add_cluster(p)
    p.set_defaults(func=cmd_finalize)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_saved_config(find_experiment(args.experiment))
    return finalize_settings(cfg, args.top, args.epochs, args.from_scratch, args.distill, args.compare,
                             args.pick_alpha, args.with_scratch, args.scratch_epochs)


def cmd_finalize(args: argparse.Namespace) -> int:
    s = _settings(args)
    check_finalize(args.experiment, s["top"], s["epochs"], s["pick_alpha"], from_scratch=s["from_scratch"],
                   with_scratch=s["with_scratch"], scratch_epochs=s["scratch_epochs"])  # before Optuna/Ray load
    return run_finalize(args.experiment, s, address=args.address, verbose=args.ray_verbose, fresh=args.fresh,
                        export=args.export)
