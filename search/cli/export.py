"""``prunetune export NAME --trial ID``: write one trial's pruned model so that it loads with plain torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pruning.errors import UsageError
from search.cli._args import add_experiment
from search.export import export_trial
from search.results.expdir import find_experiment, load_saved_config
from search.results.ledger import read_trials


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write one trial's pruned model (plain torch) and its widths",
                       description="Write model.pt (torch.load(..., weights_only=False)), model.pt2 (torch.export), model.onnx, "
                                   "widths.json and metrics.json for one trial.")
    add_experiment(p)
    p.add_argument("--trial", required=True, help="trial id (a unique prefix is enough; see `prunetune pareto`)")
    p.add_argument("--out", help="output directory (default results/NAME/export/TRIAL)")
    p.set_defaults(func=cmd_export)


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
