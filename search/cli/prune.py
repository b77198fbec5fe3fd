"""``prunetune prune``: train (or load) a model, prune it with one criterion, finetune, report, save."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from torch import nn

from pruning import __version__
from pruning.basemodel import get_base_model
from pruning.cost import measure_latency_ms
from pruning.criteria import CRITERIA
from pruning.data import DATASETS, dataset_line, load_data
from pruning.errors import UsageError
from pruning.export import export_model
from pruning.iterative import RANKINGS, PruneSpec, prune_iteratively
from pruning.measure import Measurement, measure
from pruning.surgery import widths
from pruning.train import TrainConfig, resolve_device, save_checkpoint
from search.cli._args import add_one_model, check_one_model, parse_macs
from search.report.progress import EpochProgress, say_unless


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune one model with one criterion (no search)",
                       description="Train (or load) a model, prune it, finetune, and print before/after.")
    add_one_model(p, "small_vgg, cifar_vgg16, resnet18", DATASETS.names())
    p.add_argument("--criterion", default="l1", help=f"importance criterion ({', '.join(CRITERIA.names())})")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="keep ratio in (0, 1]: per group, or of all channels with --ranking global")
    target.add_argument("--ratios", help="per-group keep ratios: group=R,group=R,... (others keep all channels)")
    target.add_argument("--target-macs", help="MACs budget: a count (e.g. 2.5e6) or a share of the base model (e.g. 40%%)")
    p.add_argument("--ranking", default="uniform", choices=RANKINGS, help="uniform ratio per group or one global ranking")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning steps (Zhang et al. 2021); 1 = one-shot")
    p.add_argument("--step-epochs", type=int, default=1, help="finetune epochs between steps")
    p.add_argument("--max-drop", type=float, metavar="PTS",
                   help="stop at the last step whose finetuned val accuracy is within PTS percentage points of the base")
    p.add_argument("--finetune-epochs", type=int, default=10, help="finetune epochs after the last step")
    p.add_argument("--epochs", type=int, default=30, help="base training epochs (when no --checkpoint)")
    p.add_argument("--checkpoint", help="start from this trained model instead of training one")
    p.add_argument("--lr", type=float, default=0.05, help="base training peak LR (cosine)")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="finetune peak LR (cosine)")
    p.add_argument("--min-channels", type=int, default=1)
    p.add_argument("--round-to", type=int, default=1, help="round kept channels up to a multiple (e.g. 8)")
    p.add_argument("--out", help="output directory (default results/prune-<model>-<data>-<criterion>)")
    p.set_defaults(func=run)


def parse_ratios(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"bad --ratios entry {part!r}; expected group=ratio, e.g. features.0=0.5") from None
    if not out:
        raise UsageError("--ratios is empty; expected group=ratio,group=ratio,...")
    return out


def _fmt_row(label: str, m: Measurement) -> str:
    lat = f"{m.latency_ms:9.2f}" if m.latency_ms is not None else "        -"
    return f"{label:<8} {100 * m.val_acc:8.2f} {100 * m.test_acc:9.2f} {m.macs / 1e6:10.3f} {m.params / 1e3:9.1f} {lat}"


def print_comparison(base: Measurement, pruned: Measurement) -> None:
    print(f"{'model':<8} {'val_acc%':>8} {'test_acc%':>9} {'MACs(M)':>10} {'params(k)':>9} {'lat_ms':>9}")
    print(_fmt_row("base", base))
    print(_fmt_row("pruned", pruned))
    speed = (base.latency_ms / pruned.latency_ms) if (base.latency_ms and pruned.latency_ms) else float("nan")
    print(f"MACs reduction {100 * (1 - pruned.macs / base.macs):.1f}%  ({base.macs / pruned.macs:.2f}x), "
          f"params reduction {100 * (1 - pruned.params / base.params):.1f}%, "
          f"CPU latency speedup {speed:.2f}x (torch, batch 64, 1 thread)")


def onnxruntime_latency_ms(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The model's CPU latency on onnxruntime, same batch/threads/runs as ``measure``'s torch number."""
    return measure_latency_ms(copy.deepcopy(model).cpu(), input_shape, runs=10, backend="onnxruntime")


def _checked(args: argparse.Namespace) -> tuple[dict[str, float] | None, dict[str, Any], Path]:
    """Validate everything cheap before any work or any file: the per-group ratios, the
    ``PruneSpec`` keywords and the output directory."""
    out = check_one_model(args, f"results/prune-{args.model.replace(':', '_')}-{args.data}-{args.criterion}")
    ratios = parse_ratios(args.ratios) if args.ratios else None
    spec_kwargs = dict(criterion=args.criterion, ranking=args.ranking, steps=args.steps, step_epochs=args.step_epochs,
                       min_channels=args.min_channels, round_to=args.round_to, max_drop_pts=args.max_drop)
    if args.target_macs is None:
        PruneSpec(ratio=args.ratio, ratios=ratios, **spec_kwargs)
    return ratios, spec_kwargs, out


def _print_onnxruntime_latency(base_model: nn.Module, model: nn.Module, shape: Any) -> dict[str, float]:
    ort_ms = {"base": onnxruntime_latency_ms(base_model, shape), "pruned": onnxruntime_latency_ms(model, shape)}
    print(f"onnxruntime CPU latency {ort_ms['base']:.2f} -> {ort_ms['pruned']:.2f} ms, "
          f"speedup {ort_ms['base'] / ort_ms['pruned']:.2f}x (batch 64, 1 thread)")
    return ort_ms


def run(args: argparse.Namespace) -> int:
    ratios, spec_kwargs, out = _checked(args)
    base_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device)
    t0 = time.perf_counter()
    data = load_data(args.data, root=args.root, seed=args.seed, image_size=args.image_size, limit=args.limit)
    device = resolve_device(args.device)
    say = say_unless(args.quiet)
    say(dataset_line(data, args.root))
    if args.checkpoint is None:
        say(f"training base {args.model} for {args.epochs} epochs...")
    with EpochProgress("base training", args.epochs, quiet=args.quiet) as on_base_epoch:
        base_model, _ = get_base_model(args.model, data, base_cfg, checkpoint=args.checkpoint,
                                       on_epoch=on_base_epoch)
    base_model.to(device)
    base = measure(base_model, data, device=device)
    model = copy.deepcopy(base_model)
    target_macs = parse_macs(args.target_macs, base.macs) if args.target_macs is not None else None
    spec = PruneSpec(ratio=args.ratio, ratios=ratios, target_macs=target_macs, **spec_kwargs)
    example = data.example_input().to(device)
    base_widths = widths(model, example)
    say(f"pruning with {args.criterion} ({spec.steps} step(s)), then finetuning {args.finetune_epochs} epochs...")
    ft_cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size,
                         seed=args.seed, device=args.device)
    ft_total = (spec.steps - 1) * spec.step_epochs + args.finetune_epochs  # fewer if --max-drop stops early
    with EpochProgress("finetune", ft_total, quiet=args.quiet) as on_ft_epoch:
        result = prune_iteratively(model, data, spec, ft_cfg, on_epoch=on_ft_epoch)
    if result.stop_reason != "completed":
        print(f"stopped after step {result.stop_step} of {spec.steps}: step {result.stop_step + 1} lost more than "
              f"{args.max_drop} points of val accuracy")
    pruned = measure(model, data, device=device)
    new_widths = widths(model, example)
    say("")  # a blank line after the progress; none when --quiet prints only the summary
    print_comparison(base, pruned)
    ort_ms = _print_onnxruntime_latency(base_model, model, data.input_shape)
    print("widths: " + ", ".join(f"{g} {base_widths[g]}->{new_widths[g]}" for g in base_widths))
    metrics = {
        "model": args.model, "data": args.data, "criterion": args.criterion, "spec": {
            "ratio": spec.ratio, "ratios": spec.ratios, "target_macs": spec.target_macs, "ranking": spec.ranking,
            "steps": spec.steps, "min_channels": spec.min_channels, "round_to": spec.round_to},
        "base": base.as_dict(), "pruned": pruned.as_dict(), "base_widths": base_widths,
        "latency_ms_onnxruntime": ort_ms,
        "steps": [s.__dict__ for s in result.steps], "wall_s": time.perf_counter() - t0,
        "stop_step": result.stop_step, "stop_reason": result.stop_reason, "max_drop_pts": spec.max_drop_pts,
        "prunetune_version": __version__,
    }
    paths = export_model(model, out, tuple(data.input_shape), new_widths, metrics)
    save_checkpoint(out / "base.pt", base_model.cpu())
    print(f"wrote {paths['model']} (torch.load(..., weights_only=False)), {paths['exported']} (torch.export.load(...).module()), "
          f"{paths['onnx']} (onnxruntime), {paths['widths']}, {paths['metrics']}, {out / 'base.pt'}")
    return 0
