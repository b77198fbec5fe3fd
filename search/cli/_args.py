"""The options and arguments more than one command takes, each written once.

Importing this module loads neither torch, Ray nor Optuna (``status`` and ``pareto`` use it);
:func:`check_one_model` imports torch when a ``prune``/``grow`` command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pruning.atomic import check_writable
from pruning.errors import UsageError
from search.options import SearchOptions
from search.report.progress import EpochProgress

__all__ = ["add_cluster", "add_experiment", "add_one_model", "add_quiet", "add_set", "check_one_model",
           "parse_macs", "search_options"]


def add_experiment(p: argparse.ArgumentParser) -> None:
    """The positional ``experiment`` of every command that reads a search's results."""
    p.add_argument("experiment", help="experiment directory (results/NAME) or NAME")


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set num_samples=8 --set resources.gpu=0.25 (repeatable)")


def add_cluster(p: argparse.ArgumentParser) -> None:
    """``--address`` and ``--verbose`` of the commands that run on Ray."""
    p.add_argument("--address", help="join a running Ray cluster: auto, HOST:6379 or ray://HOST:10001 "
                                     "(token auth: export RAY_AUTH_MODE=token and the cluster's token)")
    p.add_argument("--verbose", dest="ray_verbose", action="store_true",
                   help="show Ray's own output (status tables, worker logs) instead of one line per trial")


def add_quiet(p: argparse.ArgumentParser) -> None:
    """The ``-q/--quiet`` flag shared by the commands that do long work."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the summary at the end (no per-epoch or per-trial progress)")


def search_options(args: argparse.Namespace, base_epochs: int) -> SearchOptions:
    """``--address``/``--verbose``/``--retry-errored`` and the base training's progress lines."""
    progress = EpochProgress("base training", base_epochs, quiet=args.quiet)  # silent if the base is cached
    return SearchOptions(address=args.address, verbose=bool(getattr(args, "ray_verbose", False)),
                         retry_errored=getattr(args, "retry_errored", False), on_base_epoch=progress)


def add_one_model(p: argparse.ArgumentParser, models: str, datasets: list[str]) -> None:
    """The model, data and run options of ``prune`` and ``grow`` (one model, no search); ``--out``
    is the command's own. ``models`` gives examples of model names."""
    p.add_argument("--model", required=True, help=f"model name (e.g. {models}, pkg.mod:fn)")
    p.add_argument("--data", required=True, help=f"dataset ({', '.join(datasets)})")
    p.add_argument("--root", help="directory holding the dataset files (cifar10/100, fashion_mnist, flowers102, imagefolder)")
    p.add_argument("--image-size", type=int, help="resize images to N x N pixels (default: the dataset's; "
                                                  "imagefolder: the images' own size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use at most this many training samples")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    add_quiet(p)


def check_one_model(args: argparse.Namespace, default_out: str, width_mult: float = 1.0) -> Path:
    """Check the options of :func:`add_one_model` before any work or any file: the model and
    dataset names, the device and the output directory (``--out``, else ``default_out``); returns it."""
    from pruning.data import DATASETS  # torch: only prune and grow load it, when they run
    from pruning.models import create_model  # torch, as above
    from pruning.train import resolve_device  # torch, as above

    create_model(args.model, num_classes=2, width_mult=width_mult)  # unknown model or bad width -> UsageError
    DATASETS[args.data]
    resolve_device(args.device)
    out = Path(args.out or default_out)
    check_writable(out)
    return out


def parse_macs(text: str, base_macs: int) -> int:
    """``--target-macs``/``--budget-macs``: a count (``2.5e6``) or a share of ``base_macs`` (``40%``)."""
    try:
        if text.endswith("%"):
            return int(round(float(text[:-1]) / 100.0 * base_macs))
        return int(float(text))
    except ValueError:
        raise UsageError(f"bad --target-macs {text!r}; expected a count (2.5e6) or a share of the base (40%)") from None
