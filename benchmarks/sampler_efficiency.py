"""Sampler efficiency: hypervolume of the (val accuracy, MACs) front vs number of trials,
NSGA-II vs TPE vs random, on real pruning trials (Fashion-MNIST subset).

What a trial is: the search space of ``search.study.space.suggest`` (one keep ratio per conv group of
``small_vgg`` in [0.1, 1], criterion l1), applied to one cached base model with
``pruning.iterative.prune_iteratively`` (the code ``search.trial.run.run_trial`` runs in prune
mode) and finetuned for one epoch; objectives: maximise val accuracy, minimise MACs. The
point is the sampler's efficiency, not Ray's, so trials run **in-process** with an Optuna study
per (sampler, seed) (``study.optimize``, one trial at a time, samplers built by
``search.study.samplers.make_sampler``), not through Ray Tune, and a trial skips ``run_trial``'s test
and latency measurement (seconds per trial that no sampler sees). Two worker processes of one
thread run the studies.

Hypervolume: Optuna's own ``optuna._hypervolume.compute_hypervolume`` (the function behind
``optuna.visualization.plot_hypervolume_history``), on (1 - val accuracy, MACs / dense MACs),
both minimised, reference point (0.9, 1.0): chance-level error on 10 classes and the dense MACs.
Reported: mean hypervolume over seeds after n trials, and the first n at which each sampler's
mean curve reaches random search's mean hypervolume at the last trial (goal: NSGA-II or TPE
within half the trials). The curves go to ``benchmarks/results/sampler_efficiency.png``.
``--quick``: a tiny smoke test (~1-2 minutes).
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PNG = ROOT / "benchmarks" / "results" / "sampler_efficiency.png"
SAMPLERS = ("nsga2", "tpe", "random")
REFERENCE = (0.9, 1.0)  # (val error, MACs ratio): chance level on 10 classes, the dense model's MACs


@dataclass(frozen=True)
class Settings:
    image_size: int = 16
    limit: int = 1000  # 576 trials must fit a few minutes of make bench: each trial is ~0.5 s
    val_limit: int = 500
    base_epochs: int = 10
    trials: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    ratio_min: float = 0.1
    startup: int = 8  # TPE random start-up trials; NSGA-II population size
    workers: int = 2


QUICK = Settings(limit=500, val_limit=300, base_epochs=4, trials=12, seeds=(0,), startup=4)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_config(s: Settings, sampler: str, ckpt: str | None) -> Any:
    from search.config import config_from_dict

    return config_from_dict({
        "experiment": {"name": "sampler_efficiency", "seed": 0},
        "model": {"name": "small_vgg", "checkpoint": ckpt},
        "data": {"name": "fashion_mnist", "image_size": s.image_size, "limit": s.limit, "val_limit": s.val_limit},
        "train": {"epochs": s.base_epochs, "device": "cpu"},
        "search": {"modes": ["prune"], "criteria": ["l1"], "tie": "none", "ratio_min": s.ratio_min, "ratio_max": 1.0,
                   "steps": [1], "finetune_epochs": [1, 1], "finetune_lr": [0.01, 0.01]},
        "objectives": {"objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "macs", "mode": "min"}]},
        "sampler": {"name": sampler, "n_startup_trials": s.startup, "population_size": s.startup},
    })


def train_base(s: Settings, ckpt: str) -> dict:
    from pruning.cost import count_macs
    from pruning.models import create_model
    from pruning.train import TrainConfig, evaluate, save_checkpoint, train
    from search.trial.materialize import experiment_data

    data = experiment_data(make_config(s, "random", None))
    torch.manual_seed(0)
    model = create_model("small_vgg", data.num_classes, in_channels=data.input_shape[0])
    train(model, data, TrainConfig(epochs=s.base_epochs, lr=0.05, seed=0, device="cpu"))
    save_checkpoint(ckpt, model)
    return {"val_acc": evaluate(model, data.val), "macs": count_macs(model, data.input_shape)}


def run_study(s: Settings, sampler: str, seed: int, ckpt: str) -> list[tuple[float, float, float]]:
    """One study of ``s.trials`` trials; returns (val_acc, macs_ratio, seconds) per trial, in order."""
    import optuna

    from pruning.cost import count_macs
    from pruning.iterative import PruneSpec, prune_iteratively
    from pruning.train import TrainConfig, evaluate, load_checkpoint
    from search.study import space
    from search.trial.params import ratios_from_params
    from search.trial.materialize import experiment_data
    from search.study.samplers import make_sampler

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = make_config(s, sampler, ckpt)
    data = experiment_data(cfg)
    base = load_checkpoint(ckpt)["model"]
    dense_macs = count_macs(base, data.input_shape)
    groups = space.group_names(cfg)
    out: list[tuple[float, float, float]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        t0 = time.perf_counter()
        params = space.suggest(trial, cfg, groups)
        ratios = ratios_from_params(params, groups)
        model = copy.deepcopy(base)
        spec = PruneSpec(criterion="l1", ratios={g: r for g, r in ratios.items() if r < 1.0})
        prune_iteratively(model, data, spec, TrainConfig(epochs=1, lr=0.01, seed=0, device="cpu"))
        val, macs = evaluate(model, data.val), count_macs(model, data.input_shape) / dense_macs
        out.append((val, macs, time.perf_counter() - t0))
        return val, macs

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(**cfg.sampler.model_dump(), seed=seed))
    study.optimize(objective, n_trials=s.trials)
    return out


def hv_curve(points: list[tuple[float, float, float]]) -> list[float]:
    """Hypervolume after each trial (Optuna's WFG implementation)."""
    from optuna._hypervolume import compute_hypervolume

    ref = np.array(REFERENCE)
    curve, kept = [], []
    for val, macs, _ in points:
        p = (1.0 - val, macs)
        if p[0] <= ref[0] and p[1] <= ref[1]:
            kept.append(p)
        curve.append(float(compute_hypervolume(np.array(kept), ref)) if kept else 0.0)
    return curve


def first_reaching(curve: list[float], target: float) -> int | None:
    if target <= 0:
        return None  # nothing to reach: no trial of random search beat the reference point
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-12), None)


def plot(curves: dict[str, list[list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, runs in curves.items():
        arr = np.array(runs)
        x = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(0)
        ax.plot(x, mean, label=f"{name} (mean of {len(runs)})")
        if len(runs) > 1:
            ax.fill_between(x, arr.min(0), arr.max(0), alpha=0.15)
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume of (1 - val acc, MACs ratio), ref (0.9, 1)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 12 trials, 1 seed")
    p.add_argument("--trials", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--png", default=str(PNG), help=f"where to draw the curves (default {PNG.relative_to(ROOT)})")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    s = replace(s, trials=args.trials or s.trials, seeds=tuple(args.seeds or s.seeds))
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    say(f"settings {asdict(s)}")
    with tempfile.TemporaryDirectory(prefix="ptsampler-") as tmp:
        ckpt = str(Path(tmp) / "base.pt")
        base = train_base(s, ckpt)
        say(f"base: val {base['val_acc']:.4f}, {base['macs'] / 1e6:.2f}M MACs ({time.perf_counter() - t0:.0f} s)")
        with ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            futures = {(name, seed): pool.submit(functools.partial(run_study, s, name, seed, ckpt))
                       for seed in s.seeds for name in SAMPLERS}
            runs = {}
            for key, fut in futures.items():
                runs[key] = fut.result()
                say(f"{key}: best val {max(v for v, _, _ in runs[key]):.4f}, "
                    f"{sum(t for _, _, t in runs[key]):.0f} s of trials")
    curves = {name: [hv_curve(runs[(name, seed)]) for seed in s.seeds] for name in SAMPLERS}
    mean = {name: [statistics.mean(c[i] for c in curves[name]) for i in range(s.trials)] for name in SAMPLERS}
    target = mean["random"][-1]
    trial_s = statistics.mean(t for r in runs.values() for _, _, t in r)
    plot(curves, Path(args.png), f"small_vgg, Fashion-MNIST {s.image_size}x{s.image_size} ({s.limit} train), "
                                 f"1 finetune epoch/trial, {len(s.seeds)} seed(s)")
    wall = time.perf_counter() - t0
    print(f"### Sampler efficiency: hypervolume vs trials{' — QUICK smoke run' if args.quick else ''}\n")
    print(f"Real pruning trials, in-process (no Ray): `small_vgg` on Fashion-MNIST {s.image_size}×{s.image_size}, "
          f"{s.limit} train / {s.val_limit} val images, one cached base model ({s.base_epochs} epochs, val "
          f"{100 * base['val_acc']:.2f}%); a trial = per-group keep ratios in [{s.ratio_min}, 1] (5 groups), l1, "
          f"1 finetune epoch ({trial_s:.1f} s per trial on average). Objectives: max val accuracy, min MACs. "
          f"{s.trials} trials per study, seeds {', '.join(map(str, s.seeds))}; TPE (multivariate, "
          f"{s.startup} start-up trials) and NSGA-II (population {s.startup}) as built by "
          f"`search.study.samplers`. Hypervolume: Optuna's `compute_hypervolume` on (1 − val acc, MACs ratio), "
          f"reference (0.9, 1.0) (chance-level error, dense MACs); the maximum possible is 0.9.\n")
    marks = [n for n in (8, 16, 32, 48, 64) if n <= s.trials] + ([s.trials] if s.trials not in (8, 16, 32, 48, 64) else [])
    print("| sampler | " + " | ".join(f"HV @{n}" for n in marks) + f" | trials to reach random's HV @{s.trials} |")
    print("|---|" + "---:|" * (len(marks) + 1))
    reach = {}
    for name in SAMPLERS:
        reach[name] = first_reaching(mean[name], target)
        per_seed = [first_reaching(c, statistics.mean(r[-1] for r in curves["random"])) for c in curves[name]]
        seeds = f" (per seed: {', '.join('-' if x is None else str(x) for x in per_seed)})" if len(per_seed) > 1 else ""
        print(f"| {name} | " + " | ".join(f"{mean[name][n - 1]:.4f}" for n in marks)
              + f" | {reach[name] or f'not within {s.trials}'}{seeds} |")
    half = s.trials // 2
    best = min((reach[n] for n in ("nsga2", "tpe") if reach[n] is not None), default=None)
    print(f"\nGoal (a guided sampler reaches random's hypervolume at {s.trials} trials within {half}): "
          f"{'met' if best is not None and best <= half else 'NOT met'} (NSGA-II: {reach['nsga2'] or '-'}, "
          f"TPE: {reach['tpe'] or '-'}). Curves (mean, band = min..max over seeds): "
          f"`{Path(args.png).relative_to(ROOT) if Path(args.png).is_relative_to(ROOT) else args.png}`. "
          f"Wall time {wall / 60:.1f} min on 2 worker processes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
