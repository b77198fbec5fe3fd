"""``prunetune report NAME``: write ``results/NAME/report.html``, one self-contained page.

The page (see :mod:`search.report.html`) opens offline in any browser: interactive Pareto
scatter, kept channels per group, learning curves and criterion/mode counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from search.cli._args import add_experiment
from search.report.html import ReportInputs, build_html, write_html_report
from search.results.expdir import find_experiment, load_saved_config, read_base
from search.results.ledger import read_epochs, read_trials

REPORT_FILE = "report.html"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write results/NAME/report.html: an interactive page about the search",
                       description="Write one self-contained HTML file (opens offline) with the Pareto front "
                                   "against MACs, latency and params, the channels kept per group, the learning "
                                   "curves and the criteria/modes of the front trials.")
    add_experiment(p)
    p.add_argument("--out", help=f"output file (default results/NAME/{REPORT_FILE})")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    exp_dir = find_experiment(args.experiment)  # not an experiment: UsageError, nothing written
    cfg = load_saved_config(exp_dir)
    trials = read_trials(exp_dir)
    inputs = ReportInputs(
        trials=trials, epochs=read_epochs(exp_dir), base=read_base(exp_dir),
        title=f"{cfg.experiment.name}: {cfg.model.name} on {cfg.data.name}",
        subtitle=f"{len(trials)}/{cfg.num_samples} trials, sampler {cfg.sampler.name}, modes "
                 f"{', '.join(cfg.search.modes)}, criteria {', '.join(cfg.search.criteria)}",
        macs_budget=cfg.objectives.macs_budget,
    )  # fmt: skip
    local = Path(args.out) if args.out else exp_dir.local_path(REPORT_FILE)
    if local is not None:
        out = write_html_report(inputs, local)
        where, size = str(out), out.stat().st_size
    else:  # an experiment on object storage: the page goes there too
        page = build_html(inputs).encode()
        exp_dir.write_bytes_atomic(REPORT_FILE, page)
        where, size = exp_dir.uri(REPORT_FILE), len(page)
    print(f"wrote {where} ({size / 1e6:.1f} MB; open it in a browser, no network needed)")
    return 0
