"""``prunetune`` command line: one sub-command per module, errors as one line + exit 2.

Sub-commands: ``prune`` and ``grow`` (one model, no search), ``run``, ``resume``,
``status``, ``pareto``, ``export``, ``report``, ``finalize`` (searches). Each lives in its own
module of ``search.cli`` exposing ``register(subparsers)``, which adds its parser and sets
``func``; no command module imports another (shared options: ``_args``, printing: ``_print``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pruning.errors import UsageError

#: Which module registers each sub-command. ``main`` imports only the module of the command
#: it runs (``status`` and ``pareto`` then load no torch, Ray or Optuna); ``--help`` imports all.
COMMANDS = {name: f"search.cli.{name}" for name in
            ("prune", "grow", "run", "resume", "status", "pareto", "export", "report", "finalize")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"prunetune: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command, or only the module that registers ``command``."""
    parser = _Parser(prog="prunetune", description="Find the best number of filters per layer of a CNN: prune or grow one model, or search per-layer widths with Optuna on Ray Tune (results in Parquet).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library progress (INFO) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"prunetune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunetune: interrupted", file=sys.stderr)
        return 130

