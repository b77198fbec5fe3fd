"""``prunetune grow``: train while pruning *and growing* channel groups (online grow/prune loop).

Starts from random weights (``--from-scratch``, optionally narrow with ``--width-mult``),
from a checkpoint, or from a base model trained here; prints widths at start and end,
accuracy, MACs and the total training compute; writes the model, widths and history.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pruning import __version__
from pruning.adaptive import TRAIN_STEP_FORWARDS, AdaptiveConfig, check_budget, run_adaptive
from pruning.basemodel import get_base_model
from pruning.cost import count_macs
from pruning.data import DATASETS, DataBundle, dataset_line, load_data
from pruning.errors import UsageError
from pruning.export import export_model, write_json
from pruning.measure import measure
from pruning.models import create_model
from pruning.surgery import GROW_METHODS, widths
from pruning.train import TrainConfig, load_checkpoint, resolve_device
from search.cli._args import add_one_model, check_one_model, parse_macs
from search.report.progress import EpochProgress, say_unless

_DEFAULTS = AdaptiveConfig()

# CLI flag -> AdaptiveConfig field, for the loop's knobs (help text names the default).
_KNOBS = {
    "eval_every": ("eval_every_steps", int, "training steps between evaluations (E)"),
    "gamma": ("gamma", float, "weight of P_self (taylor_fo) vs P_next in the profit, in [0, 1]"),
    "prune_threshold": ("prune_threshold", float, "prune channels below this x the group's mean profit (tau_p)"),
    "patience": ("patience", int, "consecutive evaluations before a prune / between changes of a group (r)"),
    "grow_fraction": ("grow_fraction", float, "grow a group by ceil(this x its width) filters (rho)"),
    "grow_top_q": ("grow_top_q", float, "share of groups, ranked by mean profit, that may grow (q)"),
    "max_width_mult": ("max_width_mult", float, "cap on a group's width, x its width at the start"),
    "grow_method": ("grow_method", str, f"how new filters start: {' or '.join(GROW_METHODS)}"),
    "noise": ("noise", float, "split: std of the copies' incoming-weight noise, x the layer's weight std"),
    "min_channels": ("min_channels", int, "never prune a group below this many channels"),
    "round_to": ("round_to", int, "keep widths multiples of this (e.g. 8)"),
    "stop_after": ("stop_after", int, "stop searching after this many evaluations without change (K)"),
    "ema": ("ema", float, "smoothing of the profit over evaluations"),
    "calib_batches": ("calib_batches", int, "training batches per profit estimate"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grow", help="train while pruning and growing filters (online, no search)",
                       description="Online grow/prune training (after Ahmadluei et al. 2023): the network "
                                   "finds its own number of filters per layer.")
    add_one_model(p, "small_vgg, tiny_resnet, cifar_resnet20", DATASETS.names())
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-scratch", action="store_true", help="start from random weights")
    start.add_argument("--checkpoint", help="start from this trained model: a checkpoint or an exported model.pt "
                                            "(default: train a base model here)")
    p.add_argument("--width-mult", type=float, default=1.0,
                   help="with --from-scratch: start with every width scaled by this (e.g. 0.5, so the loop must grow)")
    p.add_argument("--budget-macs", help="MACs budget per sample: a count (3.5e6) or a share of the width-1 model (50%%)")
    p.add_argument("--epochs", type=int, default=_DEFAULTS.max_epochs, help="maximum epochs of the grow/prune search")
    p.add_argument("--finetune-epochs", type=int, default=_DEFAULTS.finetune_epochs,
                   help="epochs after the search (cosine to 0)")
    p.add_argument("--lr", type=float, help="search LR (constant; default 0.05 from scratch, 0.01 from a trained model)")
    p.add_argument("--finetune-lr", type=float, help="finetune peak LR (default: the search LR)")
    p.add_argument("--base-epochs", type=int, default=30, help="epochs to train the base model (no --checkpoint)")
    for flag, (field_name, kind, text) in _KNOBS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, default=getattr(_DEFAULTS, field_name),
                       help=f"{text} (default {getattr(_DEFAULTS, field_name)})")
    p.add_argument("--out", help="output directory (default results/grow-<model>-<data>)")
    p.set_defaults(func=run)


def _adaptive_config(args: argparse.Namespace, budget_macs: int | None) -> AdaptiveConfig:
    knobs = {field_name: getattr(args, flag) for flag, (field_name, _, _) in _KNOBS.items()}
    return AdaptiveConfig(**knobs, budget_macs=budget_macs, max_epochs=args.epochs,
                          finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr)


def _widths_line(before: dict[str, int], after: dict[str, int]) -> str:
    def arrow(g: str) -> str:
        sign = "+" if after[g] > before[g] else ("-" if after[g] < before[g] else "=")
        return f"{g} {before[g]}->{after[g]} ({sign})"

    return ", ".join(arrow(g) for g in before)


def _load_model(path: str) -> nn.Module:
    """A ``save_checkpoint`` file, or a bare module as ``prunetune grow``/``prune`` export it (model.pt)."""
    try:
        return load_checkpoint(path)["model"]
    except UsageError as e:
        if "not a prunetune checkpoint" not in str(e):
            raise
    model = torch.load(path, map_location="cpu", weights_only=False)  # readable: load_checkpoint just read it
    if not isinstance(model, nn.Module):
        raise UsageError(f"checkpoint {path!r} holds neither a model nor a prunetune checkpoint")
    return model


def _checked_out_dir(args: argparse.Namespace) -> Path:
    """Validate everything cheap before any work or any file; returns the output directory."""
    if args.width_mult != 1.0 and not args.from_scratch:
        raise UsageError(f"--width-mult {args.width_mult} needs --from-scratch (a trained model keeps its widths)")
    out = check_one_model(args, f"results/grow-{args.model.replace(':', '_')}-{args.data}", args.width_mult)
    _adaptive_config(args, None)  # knob ranges
    if args.epochs < 1 or args.base_epochs < 0 or args.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be >= 1, --base-epochs >= 0")
    return out


def _print_result(result: Any, final: Any, start_widths: dict[str, int], start_macs: int, base_train_macs: int,
                  t0: float) -> None:
    print(f"search stopped after {result.search_epochs} epochs ({result.stop_reason}); "
          f"{result.epochs - result.search_epochs} finetune epochs")
    print("widths: " + _widths_line(start_widths, result.widths))
    print(f"val_acc {100 * final.val_acc:.2f}%  test_acc {100 * final.test_acc:.2f}%  "
          f"MACs {start_macs / 1e6:.3f}M -> {final.macs / 1e6:.3f}M per sample  params {final.params / 1e3:.1f}k")
    print(f"training compute {result.train_macs / 1e9:.2f} GMACs (per-sample MACs x samples x "
          f"{TRAIN_STEP_FORWARDS} for forward+backward, profit passes included)"
          + (f" + base training {base_train_macs / 1e9:.2f} GMACs" if base_train_macs else "")
          + f"; wall {result.wall_s:.1f} s (loop), {time.perf_counter() - t0:.1f} s total")


def _trained_start(args: argparse.Namespace, data: DataBundle, start: nn.Module,
                   say: Callable[[str], None]) -> tuple[nn.Module, int]:
    """The model the loop starts from and the training MACs spent on it here: ``start`` itself
    (random weights or a checkpoint, 0 MACs), else a base model trained for ``--base-epochs``."""
    if args.from_scratch or args.checkpoint:
        return start, 0
    say(f"training base {args.model} for {args.base_epochs} epochs...")
    base_cfg = TrainConfig(epochs=args.base_epochs, lr=0.05, batch_size=args.batch_size, seed=args.seed,
                           device=args.device)
    with EpochProgress("base training", args.base_epochs, quiet=args.quiet) as on_base_epoch:
        model, _ = get_base_model(args.model, data, base_cfg, on_epoch=on_base_epoch)
    shape = tuple(data.input_shape)
    return model, TRAIN_STEP_FORWARDS * count_macs(model, shape) * len(data.train) * args.base_epochs


def run(args: argparse.Namespace) -> int:
    out = _checked_out_dir(args)
    t0 = time.perf_counter()
    data = load_data(args.data, root=args.root, seed=args.seed, image_size=args.image_size, limit=args.limit)
    shape = tuple(data.input_shape)
    say = say_unless(args.quiet)
    say(dataset_line(data, args.root))

    def make(width_mult: float) -> nn.Module:
        torch.manual_seed(args.seed)  # the same seed gives the same random start
        return create_model(args.model, num_classes=data.num_classes, in_channels=shape[0], width_mult=width_mult)

    start = _load_model(args.checkpoint) if args.checkpoint else make(args.width_mult)
    reference_macs = count_macs(start if args.checkpoint else make(1.0), shape)
    budget = parse_macs(args.budget_macs, reference_macs) if args.budget_macs is not None else None
    cfg = _adaptive_config(args, budget)
    check_budget(start, shape, cfg)  # before any training: the budget must be reachable
    lr = args.lr if args.lr is not None else (0.05 if args.from_scratch else 0.01)
    train_cfg = TrainConfig(lr=lr, batch_size=args.batch_size, seed=args.seed, device=args.device)

    model, base_train_macs = _trained_start(args, data, start, say)
    device = resolve_device(args.device)
    model.to(device)
    example = data.example_input().to(device)
    start_widths = widths(model, example)
    start_macs = count_macs(model, shape)
    say(f"start ({'random weights' if args.from_scratch else 'trained'}): MACs {start_macs / 1e6:.3f}M"
        + (f", budget {budget / 1e6:.3f}M" if budget else ""))
    say("start widths: " + ", ".join(f"{g} {n}" for g, n in start_widths.items()))

    def shape_now(m, net) -> str:
        return f"MACs {count_macs(net, shape) / 1e6:.3f}M widths {list(widths(net, example).values())}"

    # The search may stop before --epochs: the total (and so the ETA) is an upper bound.
    with EpochProgress("grow", args.epochs + args.finetune_epochs, quiet=args.quiet, extra=shape_now) as progress:
        result = run_adaptive(model, data, train_cfg, cfg, on_epoch=progress)
    final = measure(model, data, device=device)
    end_widths = result.widths
    _print_result(result, final, start_widths, start_macs, base_train_macs, t0)

    metrics = {
        "model": args.model, "data": args.data, "from_scratch": args.from_scratch, "width_mult": args.width_mult,
        "checkpoint": args.checkpoint, "config": asdict(cfg), "lr": lr, "start_widths": start_widths,
        "widths": end_widths, "start_macs": start_macs, "final": final.as_dict(), "train_macs": result.train_macs,
        "base_train_macs": base_train_macs, "train_macs_unit": f"MACs x samples x {TRAIN_STEP_FORWARDS}",
        "search_epochs": result.search_epochs, "epochs": result.epochs, "stop_reason": result.stop_reason,
        "wall_s": result.wall_s, "seed": args.seed, "prunetune_version": __version__,
        "epoch_metrics": [asdict(m) for m in result.epoch_metrics],
    }
    paths = export_model(model, out, shape, end_widths, metrics)
    history = write_json(out / "history.json", result.history)
    print(f"wrote {paths['model']} (torch.load(..., weights_only=False)), {paths['widths']}, {history}, "
          f"{paths['metrics']}, {paths['exported']}")
    return 0

