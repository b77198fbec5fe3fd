"""``prunetune finalize NAME [--top K] [--epochs E] [--from-scratch] [--distill] [--compare]``:
retrain the best trials and the uniform baseline per target, pick on the selection split.

See :mod:`search.finalize` and :mod:`search.finalpick`; ``prunetune pareto NAME --final``
shows the result.
"""

from __future__ import annotations

import argparse
from typing import Any

from pruning.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finalize", help="retrain the K best trials and the uniform baseline per target, pick on the "
                                        "selection split (final.parquet)",
                       description="Per MACs target, take the K trials of the Pareto front with the best val accuracy "
                                   "(the front of the trials within the search's MACs budget, if it has one) and the "
                                   "uniform L1 baseline cut to the same MACs, train them all alike for E epochs on "
                                   "Ray, score them on the selection split (data.select_fraction: no trial trained "
                                   "or was ranked on it) and pick the best there; report val, select and test of "
                                   "every candidate, record them in results/NAME/final.parquet and export each pick "
                                   "to results/NAME/export/final-CANDIDATE. A rerun skips the candidates already "
                                   "there. --top/--epochs default to the config's finalize section (epochs: as "
                                   "long as a search trial trains).")
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")
    p.add_argument("--top", type=int, help="how many front trials per target (best val accuracy first)")
    p.add_argument("--epochs", type=int, help="finetune epochs (or training epochs with --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train every candidate's widths from random weights instead of finetuning the pruned "
                        "base model")
    p.add_argument("--distill", action="store_true",
                   help="every candidate distils the base model (alpha, temperature: the middle of the search "
                        "space's ranges); without it no candidate distils")
    p.add_argument("--compare", action="store_true",
                   help="also train each pick's widths finetuned with distillation and from scratch (reported "
                        "beside the pick, never picked)")
    p.add_argument("--no-export", dest="export", action="store_false", help="do not export the picks")
    p.add_argument("--fresh", action="store_true", help="delete final.parquet first (run every candidate again)")
    p.add_argument("--address", help="join a running Ray cluster: auto, HOST:6379 or ray://HOST:10001")
    p.add_argument("--verbose", dest="ray_verbose", action="store_true", help="show Ray's own output")
    p.set_defaults(func=cmd_finalize)


def settings(cfg: Any, top: int | None = None, epochs: int | None = None, from_scratch: bool = False,
             distill: bool = False, compare: bool = False) -> dict[str, Any]:
    """Finalize's settings: the arguments given, else the config's ``finalize`` section
    (epochs: as long as a search trial trains)."""
    f = cfg.finalize
    top = top if top is not None else f.top
    if top is None:
        raise UsageError("--top is required (or set finalize.top in the experiment's config)")
    scratch = from_scratch or f.from_scratch
    epochs = epochs if epochs is not None else f.epochs
    if epochs is None:
        epochs = cfg.search.scratch_epochs if scratch else cfg.search.finetune_epochs[1]
    return {"top": top, "epochs": epochs, "from_scratch": scratch, "distill": distill or f.distill,
            "compare": compare or f.compare}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from search.expdir import find_experiment, load_saved_config

    cfg = load_saved_config(find_experiment(args.experiment))
    return settings(cfg, args.top, args.epochs, args.from_scratch, args.distill, args.compare)


def cmd_finalize(args: argparse.Namespace) -> int:
    from search.finalize import check_finalize

    s = _settings(args)
    check_finalize(args.experiment, s["top"], s["epochs"])  # before Optuna/Ray load
    return run_finalize(args.experiment, s, address=args.address, verbose=args.ray_verbose, fresh=args.fresh,
                        export=args.export)


def run_finalize(experiment: Any, s: dict[str, Any], *, address: str | None = None, verbose: bool = False,
                 fresh: bool = False, export: bool = True, quiet: bool = False) -> int:
    """Run :func:`search.finalize.finalize` with settings ``s`` and print its report (also
    the end of ``prunetune run`` with a ``finalize`` section)."""
    from search.cmd_experiment import _progress_to_stdout
    from search.finalize import FINAL_FILE, finalize
    from search.tuner import SearchOptions

    _progress_to_stdout(quiet)
    how = f"{s['epochs']} epochs from scratch" if s["from_scratch"] else f"{s['epochs']} finetune epochs"
    how += " with distillation" if s["distill"] else ""
    summary = finalize(experiment, s["top"], s["epochs"], from_scratch=s["from_scratch"], distill=s["distill"],
                       compare=s["compare"], fresh=fresh, export=export,
                       options=SearchOptions(address=address, verbose=verbose))
    print(f"finalize {summary.exp_dir.name}: {len(summary.sources)} candidates ({how}): {len(summary.ran)} run now, "
          f"{len(summary.skipped)} already done, in {summary.wall_s:.0f} s")
    print(summary.report)
    for label, path in summary.exported.items():
        print(f"picked for target {label}: {summary.picks[label]} -> {path}")
    print(f"wrote {summary.exp_dir / FINAL_FILE}")
    return 0
