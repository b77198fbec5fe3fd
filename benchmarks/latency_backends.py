"""Latency speedup per MACs saved on eager torch and on onnxruntime, and where the rest goes.

All in one run, dense and pruned models timed alternately (machines are noisy: read the
ratios, not the milliseconds). Uniform L1 pruning with prunetune's own surgery, batch 64:

1. speedup / MACs factor for ``cifar_vgg16`` (3x32x32) at 50% and 55% channels per group
   (55% gives odd widths: with and without ``round_to=8``) and torchvision ``resnet18`` at
   3x64x64 (small to keep the run short) at 50%, on both backends, 1 and 2 threads.
   Goal >= 0.95.
2. why it falls short: the share of time outside Conv/Linear (BN, ReLU, pooling, adds),
   torch-pruning's all-ops count (BN, ReLU and pooling counted as operations) as an
   alternative denominator, and the speedup of the convolutions alone per MACs saved.

Usage: python benchmarks/latency_backends.py [--quick]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import onnx
import onnxruntime as ort
import torch
import torch_pruning as tp
from torch import nn

from pruning.cost import count_macs, latency_runner, pinned_threads, session_options
from pruning.criteria import get_criterion
from pruning.export import to_onnx
from pruning.models import create_model
from pruning.selection import keep_by_ratios
from pruning.surgery import GroupGraph

BATCH = 64
BACKENDS = ("torch", "onnxruntime")
# (model, input shape, keep ratio, round_to, thread counts)
CASES = [
    ("cifar_vgg16", (3, 32, 32), 0.5, 1, (1, 2)),
    ("cifar_vgg16", (3, 32, 32), 0.55, 1, (1,)),
    ("cifar_vgg16", (3, 32, 32), 0.55, 8, (1,)),
    ("resnet18", (3, 64, 64), 0.5, 1, (1, 2)),
]
# torch leaf modules by kind; what no module covers (residual adds, flatten) is "other".
KINDS = {nn.Conv2d: "conv+linear", nn.Linear: "conv+linear", nn.BatchNorm2d: "bn", nn.ReLU: "relu",
         nn.MaxPool2d: "pool", nn.AdaptiveAvgPool2d: "pool", nn.AvgPool2d: "pool"}
ORT_KINDS = {"Conv": "conv+linear", "FusedConv": "conv+linear", "Gemm": "conv+linear", "MatMul": "conv+linear",
             "FusedGemm": "conv+linear", "BatchNormalization": "bn", "Relu": "relu", "MaxPool": "pool",
             "GlobalAveragePool": "pool", "AveragePool": "pool", "ReduceMean": "pool"}
COLUMNS = ("conv+linear", "bn", "relu", "pool", "other")


def pruned_copy(model: nn.Module, shape: tuple[int, ...], keep: float, round_to: int) -> nn.Module:
    model = copy.deepcopy(model)
    graph = GroupGraph(model, torch.zeros(1, *shape))
    scores = get_criterion("l1").score(model, graph.groups, [])
    graph.prune(keep_by_ratios(scores, keep, round_to=round_to))
    return model.eval()


def alternate(
    runners: list[Callable[[], Any]], runs: int, warmup: int = 1
) -> tuple[list[list[float]], list[list[float]]]:
    """Time each runner ``runs`` times, interleaved so drift hits all alike: (wall ms, process CPU ms) per call."""
    wall: list[list[float]] = [[] for _ in runners]
    cpu: list[list[float]] = [[] for _ in runners]
    for run in runners:
        for _ in range(warmup):
            run()
    for _ in range(runs):
        for i, run in enumerate(runners):
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            cpu[i].append((time.process_time() - c0) * 1000.0)
            wall[i].append((time.perf_counter() - w0) * 1000.0)
    return wall, cpu


def spread(ts: list[float]) -> float:
    """Interquartile range / median, the noise of one series."""
    q = statistics.quantiles(ts, n=4)
    return (q[2] - q[0]) / statistics.median(ts)


def torch_breakdown(models: list[nn.Module], x: torch.Tensor, runs: int) -> list[dict[str, float]]:
    """Median CPU ms per forward by kind of leaf module, for each model (runs interleaved).

    Forward hooks read the thread's CPU clock: with 1 thread torch computes on the calling
    thread, and CPU time leaves out the time other processes hold the core.
    """
    starts: dict[nn.Module, float] = {}
    current: dict[str, float] = collections.defaultdict(float)

    def pre(m: nn.Module, _inp: Any) -> None:
        starts[m] = time.thread_time()

    def post(m: nn.Module, _inp: Any, _out: Any) -> None:
        current[KINDS[type(m)]] += (time.thread_time() - starts[m]) * 1000.0

    hooks = [h for model in models for m in model.modules() if type(m) in KINDS
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    per_model: list[list[dict[str, float]]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for model in models:
                model(x)
            for _ in range(runs):
                for model, rows in zip(models, per_model, strict=True):
                    current.clear()
                    t0 = time.thread_time()
                    model(x)
                    row = dict(current)
                    row["other"] = max(0.0, (time.thread_time() - t0) * 1000.0 - sum(row.values()))
                    rows.append(row)
    finally:
        for h in hooks:
            h.remove()
    return [{k: statistics.median(r.get(k, 0.0) for r in rows) for k in COLUMNS} for rows in per_model]


def ort_breakdown(models: list[nn.Module], x: torch.Tensor, runs: int) -> tuple[list[dict[str, float]], list[str]]:
    """Mean ms per run by node kind from onnxruntime's profiler (1 thread, runs interleaved), and its op types.

    "other" is the session's run time outside any node. The profiler's clock is wall time.
    """
    out, op_types = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i, model in enumerate(models):
            opts = session_options(1)
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tmp, f"ort{i}")
            sessions.append(ort.InferenceSession(to_onnx(model, tuple(x.shape[1:])).SerializeToString(), opts,
                                                 providers=["CPUExecutionProvider"]))
        feed = {sessions[0].get_inputs()[0].name: x.numpy()}
        for session in sessions:
            session.run(None, feed)
        for _ in range(runs):
            for session in sessions:
                session.run(None, feed)
        for session in sessions:
            with open(session.end_profiling()) as f:
                events = json.load(f)
            nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
            runs_total = sum(e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
            per_kind: dict[str, float] = collections.defaultdict(float)
            for e in nodes:
                per_kind[ORT_KINDS.get(e["args"]["op_name"], "other")] += e["dur"]
            per_kind["other"] += max(0.0, runs_total - sum(e["dur"] for e in nodes))
            out.append({k: per_kind.get(k, 0.0) / 1000.0 / (runs + 1) for k in COLUMNS})  # + the first run
            op_types |= {e["args"]["op_name"] for e in nodes}
    return out, sorted(op_types)


def nchwc_convs(model: nn.Module, shape: tuple[int, ...]) -> str:
    """How many Conv nodes onnxruntime's optimiser moved to its blocked NCHWc layout (its fast kernels)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(1)
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        opts.log_severity_level = 3  # the "hardware specific" warning about saving the optimised graph
        ort.InferenceSession(to_onnx(model, shape).SerializeToString(), opts, providers=["CPUExecutionProvider"])
        nodes = onnx.load(opts.optimized_model_filepath).graph.node
    convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
    return f"{sum(n.domain == 'com.microsoft.nchwc' for n in convs)}/{len(convs)}"


def row_for(case: tuple, pair: tuple[list[list[float]], list[list[float]]], factors: tuple[float, float],
            widths: list[int], nchwc: str, threads: int, backend: str) -> tuple[str, float, list[float]]:
    """One table row from the alternating timings, with the series' noise and wall/CPU ratios."""
    name, shape, keep, round_to, _ = case
    (td, tpr), (cd, cp) = pair
    macs_factor, ops_factor = factors
    d, p = statistics.median(td), statistics.median(tpr)
    cpu_ratio, waiting = "-", []
    if threads == 1:  # one thread computes on this thread: CPU time is the latency without waiting
        c_d, c_p = statistics.median(cd), statistics.median(cp)
        cpu_ratio = f"{c_d / c_p / macs_factor:.2f} ({c_d:.0f} -> {c_p:.0f})"
        waiting = [w / c for w, c in zip(td + tpr, cd + cp, strict=True)]
    row = (f"| {name} {'x'.join(map(str, shape))} | {keep} | {round_to} | {widths} | {threads} "
           f"| {backend} | {macs_factor:.2f}x | {d:.0f} -> {p:.0f} | {d / p:.2f}x "
           f"| **{d / p / macs_factor:.2f}** | {cpu_ratio} | {d / p / ops_factor:.2f} "
           f"| {nchwc if backend == 'onnxruntime' else '-'} |")
    return row, max(spread(td), spread(tpr)), waiting


def run_cases(runs: int, prof_runs: int) -> tuple[list[str], list[tuple], list[float], list[float]]:
    """Time every case on both backends; break the 50% cases down by layer kind."""
    rows, details, noise, waiting = [], [], [], []
    models: dict[str, tuple[nn.Module, torch.Tensor, int, int]] = {}
    dense_runners: dict[tuple[str, str, int], Callable[[], Any]] = {}  # one ONNX export per dense model and setting
    for case in CASES:
        name, shape, keep, round_to, thread_counts = case
        if name not in models:
            dense = create_model(name, 10).eval()
            all_ops = tp.utils.count_ops_and_params(dense, torch.zeros(1, *shape))[0]
            models[name] = (dense, torch.randn(BATCH, *shape), count_macs(dense, shape), all_ops)
        dense, x, dense_macs, dense_ops = models[name]
        pruned = pruned_copy(dense, shape, keep, round_to)
        macs_factor = dense_macs / count_macs(pruned, shape)
        ops_factor = dense_ops / tp.utils.count_ops_and_params(pruned, torch.zeros(1, *shape))[0]
        widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)][:3]
        nchwc = nchwc_convs(pruned, shape)
        for threads in thread_counts:
            for backend in BACKENDS:
                with pinned_threads(threads):
                    key = (name, backend, threads)
                    if key not in dense_runners:
                        dense_runners[key] = latency_runner(dense, x, backend, threads)
                    pair = alternate([dense_runners[key], latency_runner(pruned, x, backend, threads)], runs)
                row, series_noise, series_waiting = row_for(case, pair, (macs_factor, ops_factor), widths, nchwc,
                                                            threads, backend)
                rows.append(row)
                noise.append(series_noise)
                waiting.extend(series_waiting)
        if keep == 0.5:  # where the time goes, 1 thread
            with pinned_threads(1):
                bd, bp = torch_breakdown([dense, pruned], x, prof_runs)
                details.append((name, shape, "torch", bd, bp, macs_factor, ""))
                (bd, bp), ops = ort_breakdown([dense, pruned], x, prof_runs)
                details.append((name, shape, "onnxruntime", bd, bp, macs_factor, ", ".join(ops)))
    return rows, details, noise, waiting


def print_tables(rows: list[str], details: list[tuple], runs: int, prof_runs: int) -> None:
    print("## Latency speedup / MACs reduction: eager torch vs onnxruntime (batch 64, median of alternating runs)\n")
    print(f"Uniform L1 pruning to the keep ratio per group; {runs} timed runs per model after 1 warm-up run; "
          "MACs = Conv + Linear. \"CPU time\": the same ratio from the process's CPU time instead of wall time "
          "(1 thread only; CPU ms in brackets), which leaves out the time other processes held the core. \"all-ops\": "
          "the wall-time speedup over torch-pruning's all-ops count (BN, ReLU, pooling counted as operations). "
          "NCHWc: how many of the pruned model's convolutions onnxruntime runs in its blocked layout.\n")
    print("| model input | keep | round_to | widths (first 3) | threads | backend | MACs dense/pruned "
          "| latency ms dense -> pruned | speedup | speedup / MACs factor (goal >= 0.95) | same, CPU time "
          "| speedup / all-ops factor | NCHWc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))

    print("\n## Where the time goes at 50% (1 thread, ms per batch of 64; dense / pruned)\n")
    print(f"Dense and pruned runs interleaved, {prof_runs} each. torch: forward hooks around every leaf module "
          "reading the thread's CPU clock, \"other\" = the rest of the forward (residual adds, flatten, Python). "
          "onnxruntime: its own per-node profiler (wall clock), \"other\" = run time outside nodes; "
          "onnxruntime folds BN into the convolution weights and ReLU into its (NCHWc) Conv kernel, so no BN or ReLU "
          "node is left to time.\n")
    print("| model | backend | " + " | ".join(COLUMNS) + " | non-conv share dense / pruned "
          "| conv+linear speedup / MACs factor | onnxruntime op types |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---|---|---|")
    for name, shape, backend, bd, bp, macs_factor, ops in details:
        cells = " | ".join(f"{bd[k]:.1f} / {bp[k]:.1f}" for k in COLUMNS)
        share_d = 1 - bd["conv+linear"] / sum(bd.values())
        share_p = 1 - bp["conv+linear"] / sum(bp.values())
        conv_ratio = bd["conv+linear"] / bp["conv+linear"] / macs_factor
        print(f"| {name} {'x'.join(map(str, shape))} | {backend} | {cells} "
              f"| {100 * share_d:.0f}% / {100 * share_p:.0f}% | {conv_ratio:.2f} | {ops or '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = ap.parse_args()
    runs, prof_runs = (3, 2) if args.quick else (9, 4)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    rows, details, noise, waiting = run_cases(runs, prof_runs)
    print_tables(rows, details, runs, prof_runs)
    print(f"\nNoise: the interquartile range of one model's timed runs was {100 * statistics.median(noise):.0f}% of "
          f"its median (median over series; worst {100 * max(noise):.0f}%); a 1-thread forward took "
          f"{statistics.median(waiting):.2f}x its CPU time in wall time (median; the rest is waiting for a core). "
          "1-minute load average "
          f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores; "
          f"run took {time.perf_counter() - t_start:.0f} s.")


if __name__ == "__main__":
    main()
