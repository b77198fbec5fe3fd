"""``prunetune resume NAME``: continue an interrupted search to exactly ``num_samples`` trials."""

from __future__ import annotations

import argparse

from search.cli._args import add_cluster, add_experiment, add_quiet, add_set, search_options
from search.cli._finalizing import finalize_at_end
from search.cli._print import print_summary, progress_to_stdout
from search.config import load_config, with_overrides
from search.results.expdir import find_experiment, load_saved_config, shown
from search.tuner import resume_search


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue an interrupted search to exactly num_samples trials",
                       description="Continue an interrupted search: finished trials are kept, unfinished ones run "
                                   "again, and the search stops at exactly num_samples distinct trials.")
    add_experiment(p)
    p.add_argument("--config", help="a changed config to continue with (default: the saved config.yaml)")
    add_set(p)
    add_cluster(p)
    p.add_argument("--force", action="store_true", help="accept a config that changes what a trial means")
    p.add_argument("--retry-errored", action="store_true", help="run trials that ended with an error again")
    add_quiet(p)
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    exp_dir = find_experiment(args.experiment)
    cfg = None
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
    elif args.overrides:  # the saved config (local or on object storage) with --set applied
        cfg = with_overrides(load_saved_config(exp_dir), args.overrides)
    progress_to_stdout(args.quiet)
    if not args.quiet:
        print(f"resuming {shown(exp_dir)}", flush=True)
    base_epochs = (cfg or load_saved_config(exp_dir)).train.epochs
    summary = resume_search(exp_dir, search_options(args, base_epochs), cfg=cfg, force=args.force)
    print_summary(summary, args.quiet)
    return finalize_at_end(cfg or load_saved_config(exp_dir), summary, args.address, args.ray_verbose, args.quiet)
