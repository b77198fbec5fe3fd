"""``prunetune status NAME``: progress of a search - trials done/running/errored, best so far.

Reads the experiment directory and the ledger only: loads no torch, Ray or Optuna.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
from typing import Any

from search.cli._args import add_experiment
from search.report.table import human_count
from search.results.expdir import find_experiment, ledger_counts, load_saved_config, read_base, read_progress, shown
from search.results.ledger import read_trials


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="progress of a search: trials done/running/errored, best so far")
    add_experiment(p)
    p.set_defaults(func=cmd_status)


def _driver_state(exp_dir: Any) -> tuple[bool, dict[str, Any]]:
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
    exp_dir = find_experiment(args.experiment)
    cfg = load_saved_config(exp_dir)
    trials = read_trials(exp_dir)
    recorded, errored, stopped, on_front = ledger_counts(exp_dir)
    done = recorded - errored - stopped  # TERMINATED: the ledger's other statuses (schema.STATUSES)
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
        print(f"  Pareto front: {on_front} trials (`prunetune pareto {shown(exp_dir)}`)")
    last_errors = trials[trials["status"] == "ERROR"].tail(3)
    for row in last_errors.to_dict("records"):
        print(f"  error in {row['trial_id']}: {row['error']}")
    return 0
