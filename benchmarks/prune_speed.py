"""Surgery overhead vs plain torch-pruning, and CPU latency speedup per MACs saved.

Measured side by side in one run (machines are noisy: read the ratios, not the seconds):

1. time to prune CIFAR VGG-16 / ResNet-56 to 50% channels per group with L1 scores -
   prunetune (graph + criterion + selection + surgery) vs torch-pruning's MetaPruner with
   the same importance and ratio. Goal: ratio <= 1.2.
2. latency speedup / MACs reduction of CIFAR VGG-16 at 50% (and 55%, whose widths are
   odd) uniform channels, batch 64, 1 thread, dense and pruned timed alternately, with
   and without ``round_to=8``. Goal >= 0.95.

Usage: python benchmarks/prune_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

from pruning.cost import count_macs
from pruning.criteria import get_criterion
from pruning.models import classifier_layer, create_model
from pruning.selection import keep_by_ratios
from pruning.surgery import GroupGraph

SHAPE = (3, 32, 32)


def ours(model: nn.Module, keep_ratio: float, round_to: int = 1) -> nn.Module:
    x = torch.zeros(1, *SHAPE)
    graph = GroupGraph(model, x)
    scores = get_criterion("l1").score(model, graph.groups, [])
    graph.prune(keep_by_ratios(scores, keep_ratio, round_to=round_to))
    return model


def plain_tp(model: nn.Module, keep_ratio: float) -> nn.Module:
    x = torch.zeros(1, *SHAPE)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=1 - keep_ratio,
        ignored_layers=[classifier_layer(model)], root_module_types=(nn.Conv2d, nn.Linear),
    )
    pruner.step()
    return model


def time_surgery(name: str, repeats: int) -> tuple[float, float]:
    base = create_model(name, 10).eval()
    t_ours, t_tp = [], []
    for _ in range(repeats):  # alternate so drift hits both alike
        for fn, acc in ((ours, t_ours), (plain_tp, t_tp)):
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            fn(m, 0.5)
            acc.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_tp)


def latency_pair(dense: nn.Module, pruned: nn.Module, runs: int) -> tuple[float, float]:
    x = torch.randn(64, *SHAPE)
    dense.eval(), pruned.eval()
    td, tpr = [], []
    with torch.inference_mode():
        for m in (dense, pruned):
            m(x)
        for _ in range(runs):
            for m, acc in ((dense, td), (pruned, tpr)):
                t0 = time.perf_counter()
                m(x)
                acc.append(time.perf_counter() - t0)
    return statistics.median(td) * 1000, statistics.median(tpr) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats, runs = (3, 5) if args.quick else (7, 15)

    print("## Surgery time: prunetune vs torch-pruning MetaPruner (L1, 50% channels per group, 1 thread)\n")
    print("| model | prunetune s | torch-pruning s | ratio (goal <= 1.2) |")
    print("|---|---|---|---|")
    for name in ("cifar_vgg16", "cifar_resnet56"):
        a, b = time_surgery(name, repeats)
        print(f"| {name} | {a:.3f} | {b:.3f} | **{a / b:.2f}** |")

    print("\n## CPU latency speedup / MACs reduction, CIFAR VGG-16, batch 64, 1 thread, median of alternating runs\n")
    print("| keep | round_to | widths (first 3 groups) | MACs dense/pruned | latency ms dense -> pruned | speedup"
          " | speedup / MACs factor (goal >= 0.95) |")
    print("|---|---|---|---|---|---|---|")
    dense = create_model("cifar_vgg16", 10).eval()
    dense_macs = count_macs(dense, SHAPE)
    for keep in (0.5, 0.55):
        for round_to in (1, 8):
            pruned = ours(copy.deepcopy(dense), keep, round_to)
            macs = count_macs(pruned, SHAPE)
            widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)][:3]
            td, tpr = latency_pair(dense, pruned, runs)
            factor = dense_macs / macs
            print(f"| {keep} | {round_to} | {widths} | {factor:.2f}x | {td:.0f} -> {tpr:.0f} | {td / tpr:.2f}x"
                  f" | **{(td / tpr) / factor:.2f}** |")


if __name__ == "__main__":
    main()
