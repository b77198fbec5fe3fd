"""Online grow/prune (adaptive) vs train -> prune (taylor_fo) -> finetune, measured side by side.

Three arms in one run, same data, seed and model family:

* **dense**: the full-width model trained ``--epochs`` epochs (cosine LR);
* **pipeline**: that dense model pruned in one shot with ``taylor_fo`` (global ranking
  of per-group-normalised scores) to the adaptive arm's final MACs, then finetuned
  ``--finetune-epochs`` epochs;
* **adaptive**: ``run_adaptive`` from random weights at ``--width-mult`` (narrow, so it
  must grow) with a MACs budget of ``--budget`` x the dense model; search, then finetune;
* **uniform** (control): the same architecture with one width multiplier for every layer,
  the largest whose MACs do not exceed the adaptive model's, trained from scratch for as
  many epochs as the adaptive arm took. If it matches the adaptive arm, the per-layer
  widths the loop found did not matter on this data.

Training compute = Σ per-sample MACs × samples × 3 (forward + backward) over every
training step and every scoring pass; the pipeline's includes training the dense model.
Validation passes are not counted. Markdown goes to stdout, progress to stderr.

    python benchmarks/adaptive_vs_pipeline.py                  # digits, ~2.5 min on 2 cores
    python benchmarks/adaptive_vs_pipeline.py --adaptive-only --search-epochs 4 --adaptive-finetune-epochs 0
        # reduced: the adaptive arm alone (its budget from the untrained dense model's MACs), for churn

*Churn* counts channels that the loop grew and then pruned again within
``CHURN_WINDOW`` (2) evaluations: growth that the profit immediately undid.
    python benchmarks/adaptive_vs_pipeline.py --data cifar10 --root ~/data/cifar10 --model cifar_vgg11
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from pruning.adaptive import CHURN_WINDOW, TRAIN_STEP_FORWARDS, AdaptiveConfig, AdaptiveResult, run_adaptive
from pruning.cost import count_macs
from pruning.data import load_data
from pruning.iterative import PruneSpec, prune_iteratively
from pruning.models import create_model
from pruning.surgery import widths
from pruning.train import TrainConfig, evaluate, train


@dataclass
class Arm:
    name: str
    test_acc: float
    val_acc: float
    macs: int
    train_macs: int
    wall_s: float
    widths: dict[str, int]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _epoch_macs(macs: int, samples: int) -> int:
    return TRAIN_STEP_FORWARDS * macs * samples


def churn(result: AdaptiveResult) -> tuple[int, int, int, int]:
    """Over the search: channels grown; of those, pruned within ``CHURN_WINDOW`` evaluations,
    and pruned at any time; channels pruned in all."""
    def total(key: str) -> int:
        return sum(n for h in result.history for n in h[key].values())

    return total("grown"), total("churned"), total("pruned_grown"), total("pruned")


def _churn_line(result: AdaptiveResult) -> str:
    grown, churned, later, pruned = churn(result)
    return (f"Grow-then-prune churn: {churned} of {grown} grown channels were pruned again within "
            f"{CHURN_WINDOW} evaluations ({churned / max(1, grown):.0%}); {later} grown channels were pruned "
            f"during the search, of {pruned} channels pruned in all.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_vgg")
    p.add_argument("--data", default="digits")
    p.add_argument("--root", help="dataset directory (cifar10/100, flowers102, imagefolder)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--limit", type=int, help="at most this many training samples")
    p.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    p.add_argument("--lr", type=float, default=0.05, help="peak LR of dense training and of the adaptive search")
    p.add_argument("--finetune-epochs", type=int, default=10, help="pipeline finetune epochs")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="pipeline finetune peak LR")
    p.add_argument("--budget", type=float, default=0.5,
                   help="adaptive MACs budget, x the dense model's MACs (0: no budget, --adaptive-only only)")
    p.add_argument("--width-mult", type=float, default=0.5, help="adaptive start width (from scratch)")
    p.add_argument("--search-epochs", type=int, default=20, help="adaptive: maximum search epochs")
    p.add_argument("--adaptive-finetune-epochs", type=int, default=15, help="adaptive: epochs after the search")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny models gain nothing from more)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--patience", type=int, default=AdaptiveConfig.patience, help="adaptive: patience (r)")
    p.add_argument("--eval-every", type=int, default=AdaptiveConfig.eval_every_steps,
                   help="adaptive: training steps per evaluation (E)")
    p.add_argument("--adaptive-only", action="store_true",
                   help="run only the adaptive arm (budget from the untrained dense model's MACs) and report churn")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    data = load_data(args.data, root=args.root, seed=args.seed, image_size=args.image_size, limit=args.limit)
    shape, n = tuple(data.input_shape), len(data.train)
    device = torch.device(args.device)
    example = data.example_input().to(device)

    def build(width_mult: float) -> nn.Module:
        torch.manual_seed(args.seed)
        return create_model(args.model, data.num_classes, in_channels=shape[0], width_mult=width_mult)

    def finish(name: str, model: nn.Module, train_macs: int, t0: float) -> Arm:
        arm = Arm(name, evaluate(model, data.test, device=device), evaluate(model, data.val, device=device),
                  count_macs(model, shape), int(train_macs), time.perf_counter() - t0, widths(model, example))
        _say(f"{name}: test {100 * arm.test_acc:.2f}% MACs {arm.macs / 1e6:.3f}M compute {arm.train_macs / 1e9:.1f} "
             f"GMACs wall {arm.wall_s:.1f}s widths {list(arm.widths.values())}")
        return arm

    if args.adaptive_only:
        return _adaptive_only(args, data, build, finish)

    # Dense.
    _say(f"dense: training {args.model} on {args.data} for {args.epochs} epochs...")
    t0 = time.perf_counter()
    dense_model = build(1.0)
    dense_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                            device=args.device)
    train(dense_model, data, dense_cfg)
    dense_macs = count_macs(dense_model, shape)
    dense = finish("dense", dense_model, _epoch_macs(dense_macs, n) * args.epochs, t0)

    # Adaptive: from a narrow random start, grow/prune under the budget.
    _say(f"adaptive: from scratch at width x{args.width_mult}, budget {args.budget:.0%} of dense MACs...")
    t0 = time.perf_counter()
    adaptive_model = build(args.width_mult)
    acfg = AdaptiveConfig(budget_macs=int(args.budget * dense_macs), max_epochs=args.search_epochs,
                          finetune_epochs=args.adaptive_finetune_epochs,
                          patience=args.patience, eval_every_steps=args.eval_every)
    train_cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device)
    result = run_adaptive(adaptive_model, data, train_cfg, acfg)
    adaptive = finish("adaptive", adaptive_model, result.train_macs, t0)
    start_widths = result.initial_widths
    grown = sum(any(h["grown"].get(g) for h in result.history) for g in start_widths)
    pruned = sum(any(h["pruned"].get(g) for h in result.history) for g in start_widths)

    # Pipeline: the dense model pruned with taylor_fo to the adaptive model's MACs, finetuned.
    _say(f"pipeline: taylor_fo to {adaptive.macs / 1e6:.3f}M MACs, finetune {args.finetune_epochs} epochs...")
    t0 = time.perf_counter()
    pipe_model = copy.deepcopy(dense_model)
    spec = PruneSpec(criterion="taylor_fo", target_macs=adaptive.macs, ranking="global",
                     min_channels=acfg.min_channels, calib_batch_size=args.batch_size)
    ft_cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size,
                         seed=args.seed, device=args.device)
    prune_iteratively(pipe_model, data, spec, ft_cfg)
    pipe_macs = count_macs(pipe_model, shape)
    calib = TRAIN_STEP_FORWARDS * dense_macs * spec.calib_batches * args.batch_size
    pipeline = finish("pipeline", pipe_model,
                      dense.train_macs + calib + _epoch_macs(pipe_macs, n) * args.finetune_epochs, t0)
    pipeline.wall_s += dense.wall_s  # the pipeline's wall time includes training the dense model

    # Control: uniform widths at the same MACs, trained from scratch as long as the adaptive arm.
    lo, hi = 0.05, 1.0
    for _ in range(20):  # bisection on the width multiplier: MACs grow monotonically with it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_macs(build(mid), shape) <= adaptive.macs else (lo, mid)
    _say(f"uniform: width x{lo:.3f} from scratch for {result.epochs} epochs...")
    t0 = time.perf_counter()
    uniform_model = build(lo)
    train(uniform_model, data, replace(dense_cfg, epochs=result.epochs))
    uniform = finish(f"uniform ×{lo:.2f}", uniform_model,
                     _epoch_macs(count_macs(uniform_model, shape), n) * result.epochs, t0)

    # Report (markdown on stdout).
    print(f"### Adaptive grow/prune vs train→prune→finetune ({args.model} on {args.data}, seed {args.seed})\n")
    print(f"{n} training samples, {len(data.test)} test samples (one test error = "
          f"{100 / max(1, len(data.test)):.2f} pt). Dense: {args.epochs} epochs. Pipeline: dense → taylor_fo "
          f"(global) to the adaptive model's MACs → {args.finetune_epochs} finetune epochs. Adaptive: from "
          f"scratch at width ×{args.width_mult}, budget {args.budget:.0%} of dense MACs, "
          f"{result.search_epochs} search epochs ({result.stop_reason}) + {result.epochs - result.search_epochs} "
          f"finetune epochs; groups that grew at some point: {grown}, that lost channels: {pruned}. Training compute = "
          f"per-sample MACs × samples × {TRAIN_STEP_FORWARDS} (forward + backward), summed over all training "
          f"and scoring passes (the pipeline's includes the dense training). {args.threads} CPU thread(s).\n")
    print("| arm | test acc % | val acc % | MACs (M) | MACs vs dense | training compute (GMACs) "
          "| compute vs pipeline | wall s | widths |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in (dense, pipeline, adaptive, uniform):
        print(f"| {arm.name} | {100 * arm.test_acc:.2f} | {100 * arm.val_acc:.2f} | {arm.macs / 1e6:.3f} "
              f"| {arm.macs / dense.macs:.1%} | {arm.train_macs / 1e9:.1f} | {arm.train_macs / pipeline.train_macs:.2f}x "
              f"| {arm.wall_s:.1f} | {' '.join(map(str, arm.widths.values()))} |")
    print(f"\nAdaptive start widths: {' '.join(map(str, start_widths.values()))}. {_churn_line(result)}")
    gap = 100 * (dense.test_acc - adaptive.test_acc)
    checks = {
        f"test accuracy within 0.5 pt of dense (gap {gap:+.2f} pt)": gap <= 0.5,
        f"≥50% fewer MACs than dense ({1 - adaptive.macs / dense.macs:.1%} fewer)": adaptive.macs <= 0.5 * dense.macs,
        f"training compute ≤ pipeline ({adaptive.train_macs / pipeline.train_macs:.2f}x)":
            adaptive.train_macs <= pipeline.train_macs,
    }
    met = all(checks.values())
    print(f"\nGoal {'met' if met else 'NOT met'}: " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items())
          + f". Total benchmark wall time {time.perf_counter() - t_start:.0f} s.")
    if not math.isclose(pipe_macs, adaptive.macs, rel_tol=0.02):
        print(f"\nNote: the pipeline reached {pipe_macs / 1e6:.3f}M MACs for a {adaptive.macs / 1e6:.3f}M target "
              "(bisection over a global keep fraction).")
    return 0


def _adaptive_only(args: argparse.Namespace, data, build, finish) -> int:
    """The reduced run: the adaptive arm alone, with its grow/prune churn."""
    dense_macs = count_macs(build(1.0), tuple(data.input_shape))  # MACs do not depend on training
    t0 = time.perf_counter()
    model = build(args.width_mult)
    acfg = AdaptiveConfig(budget_macs=int(args.budget * dense_macs) if args.budget > 0 else None,
                          max_epochs=args.search_epochs, finetune_epochs=args.adaptive_finetune_epochs,
                          patience=args.patience, eval_every_steps=args.eval_every)
    train_cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device)
    result = run_adaptive(model, data, train_cfg, acfg)
    arm = finish("adaptive", model, result.train_macs, t0)
    print(f"### Adaptive arm only ({args.model} on {args.data}, seed {args.seed})\n")
    budget = f"budget {args.budget:.0%} of dense MACs" if args.budget > 0 else "no budget"
    print(f"From scratch at width ×{args.width_mult}, {budget}, "
          f"{result.search_epochs} search epochs ({result.stop_reason}) + {result.epochs - result.search_epochs} "
          f"finetune epochs, {len(result.history)} evaluations. Test {100 * arm.test_acc:.2f}%, "
          f"{arm.macs / dense_macs:.1%} of dense MACs, widths {' '.join(map(str, arm.widths.values()))}. "
          f"{_churn_line(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
