"""Search vs fixed pruning recipes on Fashion-MNIST, at 30% and 10% of the dense MACs (issue 10).

Data and model are chosen so that methods can be told apart on 2 CPU cores (REFERENCE_NUMBERS:
digits is too easy): Fashion-MNIST downsampled to 16x16, a seeded stratified subset of 4,000
training and 1,000 validation images (from the official train set), the official 10,000 test
images; ``small_vgg`` (5 convs 32,32,64,64,128 + BN, 7.15M MACs at 16x16). At this size uniform
L1 at 10% of the MACs loses about 2 points against dense (measured in the same run and printed:
the "design check"), while a dense epoch takes ~3.5 s on one thread.

Per seed the dense base model is trained once (``--base-epochs``) and shared by every arm. Then,
per budget (MACs <= budget x dense), every pruning arm gets the same ``--finetune-epochs``:

(a) uniform: the same keep ratio in every group, L1 (``pruning.iterative``, one shot);
(b) global Taylor with torch-pruning's own ``MetaPruner`` + ``GroupTaylorImportance`` (not our
    code), bisection on its global pruning ratio to the budget;
(c) Zhang et al.'s iterative pruning with global ranking to the budget: ``taylor_guided``,
    ``attribution``, ``attribution_iba`` (3 steps, 1 epoch after each of the first two, the
    rest after the last: the same total finetune epochs; scores from 4 batches of 64 per step);
(d) online grow/prune (``pruning.adaptive``) from the base model with the budget: at most 2
    search epochs at the finetune LR, then finetune epochs to the same total;
(e) the search: ``search.tuner.run_search`` (Ray, 2 trials at a time, TPE on val accuracy with
    the MACs budget as a constraint, per-group keep ratios, criterion l1 or taylor_fo, short
    trials of ``--search-epochs``; the uniform ratio at the budget is enqueued as a baseline
    trial); the best feasible trial on val, reported on test; then *finalized*: the chosen
    trial re-run with ``--finetune-epochs`` (see :func:`finalize_choice`);
(f) the widths of (e) and of (a) trained from scratch for base + finetune epochs.

Training compute = per-sample MACs x samples x 3 (forward + backward) summed over every
training epoch, including the base model's training for the arms that start from it and every
search trial for (e). Scoring passes are not counted: a few batches, except ``attribution_iba``,
which optimises a bottleneck for 10 steps per batch and layer (about 4 x 10 x 5 forward/backward
passes of a batch per pruning step). Markdown on
stdout, progress on stderr. ``--quick`` is a smoke test (tiny sizes, one seed, ~2 minutes).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL = "small_vgg"
DATASET = "fashion_mnist"
ZHANG = ("taylor_guided", "attribution", "attribution_iba")
FORWARDS = 3  # a training step costs ~3 forward passes (pruning.adaptive.TRAIN_STEP_FORWARDS)


@dataclass(frozen=True)
class Settings:
    image_size: int = 16
    limit: int = 4000
    val_limit: int = 1000
    base_epochs: int = 15
    finetune_epochs: int = 5
    search_trials: int = 24
    search_epochs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.3, 0.1)
    lr: float = 0.05
    finetune_lr: float = 0.01
    batch_size: int = 64
    iter_steps: int = 3
    calib_batches: int = 4  # (c): batches of 64 scored per step (attribution_iba optimises per batch: costly)
    workers: int = 2


QUICK = Settings(limit=600, val_limit=300, base_epochs=3, finetune_epochs=3, search_trials=4, search_epochs=1, calib_batches=1,
                 seeds=(0,))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared helpers (workers)


@functools.lru_cache(maxsize=1)
def _data(s: Settings, seed: int) -> Any:
    from pruning.data import load_data

    return load_data(DATASET, seed=seed, image_size=s.image_size, limit=s.limit, val_limit=s.val_limit)


def _train_cfg(s: Settings, seed: int, epochs: int, lr: float) -> Any:
    from pruning.train import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, batch_size=s.batch_size, seed=seed, device="cpu")


class _Compute:
    """``on_epoch`` callback: adds per-sample MACs x samples x 3 for every training epoch."""

    def __init__(self, n: int, input_shape: tuple[int, ...]) -> None:
        self.n, self.shape, self.macs, self.epochs = n, input_shape, 0, 0

    def __call__(self, _m: Any, model: nn.Module) -> None:
        from pruning.cost import count_macs

        self.macs += FORWARDS * count_macs(model, self.shape) * self.n
        self.epochs += 1


def _result(name: str, model: nn.Module, data: Any, compute: int, epochs: int, t0: float, **extra: Any) -> dict:
    from pruning.cost import count_macs
    from pruning.surgery import widths
    from pruning.train import evaluate

    model.cpu()
    return {"arm": name, "test_acc": evaluate(model, data.test), "val_acc": evaluate(model, data.val),
            "macs": count_macs(model, data.input_shape), "compute": int(compute), "epochs": int(epochs),
            "widths": widths(model, data.example_input()), "wall_s": time.perf_counter() - t0, **extra}


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def base_name(s: Settings, seed: int) -> str:
    """File name of the base model of ``seed``: a hash of what determines it, so ``--keep DIR`` reuses it."""
    import hashlib

    recipe = [MODEL, DATASET, s.image_size, s.limit, s.val_limit, s.base_epochs, s.lr, s.batch_size, seed]
    return f"base-seed{seed}-{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:10]}.pt"


def job_base(s: Settings, seed: int, ckpt: str) -> dict:
    """Train the dense base model of ``seed`` and save it to ``ckpt`` (or load ``ckpt`` if it exists)."""
    from pruning.cost import count_macs
    from pruning.models import create_model
    from pruning.train import save_checkpoint, train

    t0 = time.perf_counter()
    data = _data(s, seed)
    if Path(ckpt).is_file():  # trained by an earlier run with the same recipe; its compute still counts
        model = _load_base(ckpt)
        compute = FORWARDS * count_macs(model, data.input_shape) * len(data.train) * s.base_epochs
        return _result("dense", model, data, compute, s.base_epochs, t0, reused=True)
    torch.manual_seed(seed)
    model = create_model(MODEL, data.num_classes, in_channels=data.input_shape[0])
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.base_epochs, s.lr), on_epoch=meter)
    save_checkpoint(ckpt, model.cpu(), recipe=MODEL)
    return _result("dense", model, data, meter.macs, meter.epochs, t0)


def _load_base(ckpt: str) -> nn.Module:
    from pruning.train import load_checkpoint

    return load_checkpoint(ckpt)["model"]


def arm_ours(s: Settings, seed: int, budget: int, ckpt: str, criterion: str, ranking: str, steps: int) -> dict:
    """(a) and (c): our ``prune_iteratively`` to the MACs budget, then the finetune epochs."""
    from pruning.iterative import PruneSpec, prune_iteratively

    t0 = time.perf_counter()
    data, model = _data(s, seed), _load_base(ckpt)
    meter = _Compute(len(data.train), tuple(data.input_shape))
    spec = PruneSpec(criterion=criterion, target_macs=budget, ranking=ranking, steps=steps, step_epochs=1,
                     calib_batches=s.calib_batches, calib_batch_size=s.batch_size)
    prune_iteratively(model, data, spec, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr),
                      finetune_epochs=s.finetune_epochs - (steps - 1), on_epoch=meter)
    return _result(f"{ranking} {criterion}", model, data, meter.macs, meter.epochs, t0)


def arm_tp_taylor(s: Settings, seed: int, budget: int, ckpt: str) -> dict:
    """(b): torch-pruning MetaPruner, global GroupTaylorImportance, bisection on its ratio to the budget."""
    import torch_pruning as tp

    from pruning.cost import count_macs
    from pruning.models import classifier_layer
    from pruning.train import train

    t0 = time.perf_counter()
    data, base = _data(s, seed), _load_base(ckpt)
    calib = [b for _, b in zip(range(8), data.train.batches(s.batch_size, shuffle=True, seed=seed))]

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(base).eval()  # eval: the gradient passes must not move BN statistics
        m.zero_grad()
        for x, y in calib:
            nn.functional.cross_entropy(m(x), y).backward()
        pruner = tp.pruner.MetaPruner(m, data.example_input(), importance=tp.importance.GroupTaylorImportance(),
                                      global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.97,
                                      ignored_layers=[classifier_layer(m)])
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m.train()

    lo, hi, best = 0.0, 0.97, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if count_macs(m, data.input_shape) <= budget:
            hi, best = mid, m
        else:
            lo = mid
    model = best if best is not None else pruned(hi)
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr), on_epoch=meter)
    return _result("global Taylor (torch-pruning)", model, data, meter.macs, meter.epochs, t0)


def arm_adaptive(s: Settings, seed: int, budget: int, ckpt: str) -> dict:
    """(d): the online grow/prune loop from the base model with the MACs budget."""
    from pruning.adaptive import AdaptiveConfig, run_adaptive

    t0 = time.perf_counter()
    data, model = _data(s, seed), _load_base(ckpt)
    search_epochs = min(2, s.finetune_epochs - 1)
    cfg = AdaptiveConfig(budget_macs=budget, max_epochs=search_epochs, finetune_epochs=s.finetune_epochs - search_epochs,
                         finetune_lr=s.finetune_lr, eval_every_steps=5)
    res = run_adaptive(model, data, _train_cfg(s, seed, s.finetune_epochs, s.finetune_lr), cfg)
    return _result("adaptive grow/prune", res.model, data, res.train_macs, res.epochs, t0, note=res.stop_reason)


def arm_scratch(s: Settings, seed: int, widths: dict[str, int], name: str) -> dict:
    """(f): a model of ``widths`` with fresh random weights, trained base + finetune epochs."""
    from pruning.models import create_model
    from pruning.surgery import prune
    from pruning.train import train

    t0 = time.perf_counter()
    data = _data(s, seed)
    torch.manual_seed(seed)
    model = create_model(MODEL, data.num_classes, in_channels=data.input_shape[0])
    prune(model, {g: list(range(w)) for g, w in widths.items()}, data.example_input())
    for m in model.modules():  # re-initialise at the new shapes (fan-in changed)
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    meter = _Compute(len(data.train), tuple(data.input_shape))
    train(model, data, _train_cfg(s, seed, s.base_epochs + s.finetune_epochs, s.lr), on_epoch=meter)
    return _result(name, model, data, meter.macs, meter.epochs, t0)


def arm_finalize(s: Settings, seed: int, cfg_json: str, params: dict, trial_id: str) -> dict:
    """(e) after finalize, in a worker (see :func:`finalize_choice`)."""
    from search.config import config_from_dict

    t0 = time.perf_counter()
    cfg = config_from_dict(json.loads(cfg_json))
    out = finalize_choice(cfg, params, s.finetune_epochs, trial_id=trial_id)
    data = _data(s, seed)
    compute = FORWARDS * out["macs"] * len(data.train) * out["epochs"]
    return {"arm": "search, after finalize", "test_acc": out["test_acc"], "val_acc": out["val_acc"],
            "macs": out["macs"], "compute": compute, "epochs": out["epochs"],
            "widths": dict(zip(out["group_names"], out["widths"])), "wall_s": time.perf_counter() - t0}


def finalize_choice(cfg: Any, params: dict, epochs: int, *, trial_id: str) -> dict:
    """Finalize the search's chosen trial: re-run it with ``epochs`` finetune epochs.

    FINALIZE SWITCH: until ``search.finalize`` (``prunetune finalize NAME --top K --epochs E``)
    is merged, this re-runs the chosen trial's params through the same trial code
    (``search.trial.run_trial``: same base model, criterion, per-group ratios and seed) with
    ``finetune_epochs=epochs`` instead of the search's short finetune. Once merged, call
    ``search.finalize`` on ``cfg.exp_dir`` for trial ``trial_id`` (the best trial within the
    budget on val, which need not be in a top-K of the 2-objective front) with ``epochs``,
    and return its ``final.parquet`` row (keys used: val_acc, test_acc, macs, epochs,
    widths, group_names). Its ``--from-scratch`` variant can then replace
    ``arm_scratch(..., "scratch, widths of (e)")``.
    """
    from search.trial import prepare_base, run_trial

    base = prepare_base(cfg)
    return run_trial(cfg, dict(params, finetune_epochs=epochs), base=base)


# --------------------------------------------------------------------------- the search arm (driver, Ray)


def uniform_plan(ckpt: str, s: Settings, seed: int, budget: int) -> tuple[float, dict[str, int]]:
    """The largest single keep ratio whose uniformly pruned model fits ``budget``, and its widths
    (what arm (a) and the search's uniform baseline trial prune to)."""
    from pruning.cost import count_macs
    from pruning.selection import keep_by_ratios
    from pruning.surgery import GroupGraph

    data, base = _data(s, seed), _load_base(ckpt)
    sizes = GroupGraph(base, data.example_input()).widths()

    def macs(r: float) -> int:
        m = copy.deepcopy(base)
        keep = keep_by_ratios({g: torch.arange(n, 0, -1).float() for g, n in sizes.items()}, r)
        GroupGraph(m, data.example_input()).prune(keep)
        return count_macs(m, data.input_shape)

    lo, hi = 0.01, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) <= budget else (lo, mid)
    return lo, {g: len(k) for g, k in keep_by_ratios({g: torch.ones(n) for g, n in sizes.items()}, lo).items()}


def search_config(s: Settings, seed: int, frac: float, budget: int, ckpt: str, root: Path, r_uni: float) -> Any:
    from search.config import config_from_dict

    return config_from_dict({
        "experiment": {"name": f"seed{seed}_b{round(100 * frac)}", "seed": seed, "results_dir": str(root)},
        "model": {"name": MODEL, "checkpoint": ckpt},
        "data": {"name": DATASET, "image_size": s.image_size, "limit": s.limit, "val_limit": s.val_limit},
        "train": {"epochs": s.base_epochs, "lr": s.lr, "batch_size": s.batch_size, "device": "cpu"},
        "search": {"modes": ["prune"], "criteria": ["l1", "taylor_fo"], "tie": "none", "steps": [1],
                   "ratio_min": round(r_uni / 3.5, 3), "ratio_max": round(min(1.0, 1.9 * r_uni), 3),
                   "finetune_epochs": [s.search_epochs, s.search_epochs],
                   "finetune_lr": [s.finetune_lr, s.finetune_lr],
                   "baselines": [{"ranking": "uniform", "ratio": math.floor(1000 * r_uni) / 1000, "criterion": "l1"}]},
        "objectives": {"objectives": [{"metric": "val_acc", "mode": "max"}], "macs_budget": budget},
        "sampler": {"name": "tpe", "n_startup_trials": max(2, s.search_trials // 4)},
        "resources": {"cpu": 1, "num_cpus": 2},
        "num_samples": s.search_trials, "max_concurrent": 2,
    })


def arm_search(cfg: Any, s: Settings, seed: int, budget: int) -> tuple[dict, dict]:
    """(e) before finalize: run the search, pick the best feasible trial on val. Returns (result, params)."""
    from search.ledger import read_trials
    from search.tuner import SearchOptions, run_search

    t0 = time.perf_counter()
    summary = run_search(cfg, SearchOptions(), fresh=True)
    df = read_trials(summary.exp_dir)
    n = len(_data(s, seed).train)
    done = df[df.status == "TERMINATED"]
    compute = int((FORWARDS * done.macs * n * done.epochs).sum())
    ok = done[done.macs <= budget]
    if ok.empty:
        raise RuntimeError(f"search {cfg.experiment.name}: no trial within the budget of {budget} MACs")
    best = ok.loc[ok.val_acc.idxmax()]
    params = json.loads(best.params_json)
    res = {"arm": "search, best trial", "test_acc": float(best.test_acc), "val_acc": float(best.val_acc),
           "macs": int(best.macs), "compute": compute, "epochs": int(best.epochs),
           "widths": dict(zip(best.group_names, (int(w) for w in best.widths))), "wall_s": time.perf_counter() - t0,
           "trials": len(df), "feasible": len(ok), "criterion": str(best.criterion), "trial_id": str(best.trial_id),
           "baseline_chosen": "baseline" in params}
    return res, params


# --------------------------------------------------------------------------- report


ORDER = ["dense", "uniform l1", "global Taylor (torch-pruning)", *(f"global {c}" for c in ZHANG),
         "adaptive grow/prune", "search, best trial", "search, after finalize", "scratch, widths of (e)",
         "scratch, widths of (a)"]
LABEL = {"uniform l1": "(a) uniform L1", "global Taylor (torch-pruning)": "(b) global Taylor (torch-pruning)",
         **{f"global {c}": f"(c) iterative global {c}" for c in ZHANG}, "adaptive grow/prune": "(d) adaptive grow/prune",
         "search, best trial": "(e) search, best trial (short finetune)", "search, after finalize":
         "(e) search, after finalize", "scratch, widths of (e)": "(f) scratch, widths of (e)",
         "scratch, widths of (a)": "(f) scratch, widths of (a)", "dense": "dense"}


def _ms(xs: list[float]) -> str:
    xs = [100 * x for x in xs]
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def _mean(rows: list[dict], arm: str, key: str = "test_acc") -> float | None:
    xs = [r[key] for r in rows if r["arm"] == arm and "error" not in r]
    return statistics.mean(xs) if xs else None


def report(s: Settings, bases: dict[int, dict], rows: dict[float, list[dict]], wall: float, quick: bool) -> None:
    dense_macs = statistics.mean(b["macs"] for b in bases.values())
    base_compute = statistics.mean(b["compute"] for b in bases.values())
    n_test = "10,000"
    print(f"### Search vs fixed pruning recipes (Fashion-MNIST, {MODEL}){' — QUICK smoke run' if quick else ''}\n")
    print(f"Fashion-MNIST at {s.image_size}×{s.image_size}: {s.limit} training and {s.val_limit} validation images "
          f"(seeded stratified subsets of the official train set), the official {n_test} test images; `{MODEL}` "
          f"(5 convs with BN, {dense_macs / 1e6:.2f}M MACs). Dense: {s.base_epochs} epochs, LR {s.lr} (cosine). Every "
          f"pruning arm then gets {s.finetune_epochs} finetune epochs at LR {s.finetune_lr}; scratch arms train "
          f"{s.base_epochs + s.finetune_epochs} epochs at LR {s.lr}. Seeds {', '.join(map(str, s.seeds))} (each seed "
          f"its own split, base model and search); test accuracy mean ± std over seeds. The search: "
          f"{s.search_trials} trials per budget and seed on Ray (2 at a time), TPE on val accuracy with the MACs "
          f"budget as a constraint, per-group keep ratios + criterion (l1 / taylor_fo), {s.search_epochs} finetune "
          f"epoch(s) per trial; chosen on val, reported on test. *Finalize* re-runs the chosen trial with "
          f"{s.finetune_epochs} finetune epochs (the same trial code; `search.finalize` is not merged yet). "
          f"Compute = training MACs (per-sample MACs × samples × 3, all epochs, base training included for arms "
          f"that start from the base model, every search trial included for (e)) as a multiple of the dense "
          f"base training ({base_compute / 1e12:.2f} TMACs).\n")
    for frac in s.budgets:
        print(f"#### Budget {frac:.0%} of the dense MACs\n")
        print("| arm | MACs kept | test acc % | Δ vs dense (pt) | val acc % | training compute (× base) | epochs |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        dense = statistics.mean(b["test_acc"] for b in bases.values())
        for arm in ORDER:
            got = list(bases.values()) if arm == "dense" else [r for r in rows[frac] if r["arm"] == arm]
            ok = [r for r in got if "error" not in r]
            if not ok:
                print(f"| {LABEL[arm]} | - | failed: {got[0]['error'] if got else 'not run'} | | | | |")
                continue
            extra = 0 if arm.startswith(("scratch", "dense")) else base_compute
            if arm == "search, after finalize":  # finalizing comes after the whole search
                extra += _mean(rows[frac], "search, best trial", "compute") or 0
            compute = statistics.mean(r["compute"] for r in ok) + extra
            over = " (over budget)" if arm != "dense" and max(r["macs"] for r in ok) > frac * dense_macs else ""
            print(f"| {LABEL[arm]} | {statistics.mean(r['macs'] for r in ok) / dense_macs:.1%}{over} | "
                  f"{_ms([r['test_acc'] for r in ok])} | {100 * (statistics.mean(r['test_acc'] for r in ok) - dense):+.2f} | "
                  f"{_ms([r['val_acc'] for r in ok])} | {compute / base_compute:.2f} | "
                  f"{statistics.mean(r['epochs'] for r in ok):g} |")
        print()
        for r in rows[frac]:
            if r["arm"] == "search, best trial" and "error" not in r:
                print(f"- seed {r['seed']}: search ran {r['trials']} trials ({r['feasible']} within the budget); chose "
                      f"{'the uniform baseline trial' if r['baseline_chosen'] else r['criterion']} with widths "
                      f"{' '.join(map(str, r['widths'].values()))} (uniform: "
                      f"{' '.join(map(str, r['uniform_widths'].values()))}).")
        print()
    _goals(s, bases, rows)
    print(f"\nTotal benchmark wall time {wall / 60:.1f} min ({s.workers} worker processes of 1 thread for the arms; "
          f"Ray with 2 one-CPU trials for the search; a shared machine).")


def _goals(s: Settings, bases: dict[int, dict], rows: dict[float, list[dict]]) -> None:
    dense = statistics.mean(b["test_acc"] for b in bases.values())
    low = min(s.budgets)
    r = rows[low]
    a, b = _mean(r, "uniform l1"), _mean(r, "global Taylor (torch-pruning)")
    e, ef = _mean(r, "search, best trial"), _mean(r, "search, after finalize")
    checks = []
    if a is not None:
        checks.append((f"design check: uniform L1 at {low:.0%} loses ≥ 2 pt vs dense ({100 * (a - dense):+.2f} pt)",
                       100 * (dense - a) >= 2.0))
    if ef is not None and a is not None:
        checks.append((f"(e) after finalize ≥ (a) + 1.0 pt at {low:.0%} ({100 * (ef - a):+.2f} pt)", 100 * (ef - a) >= 1.0))
    if ef is not None and b is not None:
        checks.append((f"(e) after finalize ≥ (b) + 0.5 pt at {low:.0%} ({100 * (ef - b):+.2f} pt)", 100 * (ef - b) >= 0.5))
    if e is not None and a is not None:
        checks.append((f"(e) before finalize ≥ (a) + 1.0 pt at {low:.0%} ({100 * (e - a):+.2f} pt)", 100 * (e - a) >= 1.0))
    for frac in s.budgets:
        ef, f = _mean(rows[frac], "search, after finalize"), _mean(rows[frac], "scratch, widths of (e)")
        if ef is not None and f is not None:
            checks.append((f"(e) after finalize ≥ (f) same widths from scratch at {frac:.0%} ({100 * (ef - f):+.2f} pt)",
                           ef >= f))
    print("Goals (mean test accuracy over seeds):\n")
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")


# --------------------------------------------------------------------------- driver


def _record(root: Path, key: tuple, res: dict) -> None:
    """Append one arm's result to ``<work dir>/arms.jsonl`` (progress that survives an interrupted run)."""
    with open(root / "arms.jsonl", "a") as f:
        f.write(json.dumps({"key": list(key), **res}, default=str) + "\n")


def _run_jobs(pool: ProcessPoolExecutor, jobs: list[tuple[tuple, Any]], root: Path) -> list[tuple[tuple, dict]]:
    futures = [(key, pool.submit(fn)) for key, fn in jobs]
    out = []
    for key, fut in futures:
        try:
            res = fut.result()
        except Exception as e:  # noqa: BLE001 - one failed arm must not lose the others
            res = {"arm": key[-1], "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]}
        _record(root, key, res)
        say(f"{key}: " + (res.get("error") or f"test {100 * res['test_acc']:.2f}% MACs {res['macs'] / 1e6:.3f}M "
                                              f"({res['wall_s']:.0f} s)"))
        out.append((key, res))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 1 seed, few epochs and trials")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument("--trials", type=int, help="override the search trials per budget and seed")
    p.add_argument("--workers", type=int, help="worker processes for the non-search arms (1 thread each)")
    p.add_argument("--keep", help="keep the experiment directories and base models here, and reuse base models "
                                  "found there (default: a temp dir, removed)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    s = replace(s, seeds=tuple(args.seeds or s.seeds), search_trials=args.trials or s.search_trials,
                workers=args.workers or s.workers)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("search.progress").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    import shutil

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(args.keep or tempfile.mkdtemp(prefix="ptbench10-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    say(f"settings {asdict(s)}; work dir {root}")
    pool = ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker)
    try:
        ckpt = {seed: str(root / base_name(s, seed)) for seed in s.seeds}
        bases = {key[0]: res for key, res in _run_jobs(pool, [((seed, "dense"), functools.partial(job_base, s, seed, ckpt[seed]))
                                                           for seed in s.seeds], root)}
        for res in bases.values():
            if "error" in res:
                raise SystemExit(f"base model training failed: {res['error']}")
        dense_macs = bases[s.seeds[0]]["macs"]
        rows: dict[float, list[dict]] = {frac: [] for frac in s.budgets}
        jobs: list[tuple[tuple, Any]] = []
        for seed in s.seeds:
            for frac in s.budgets:
                budget = int(frac * dense_macs)
                r_uni, uni_widths = uniform_plan(ckpt[seed], s, seed, budget)
                cfg = search_config(s, seed, frac, budget, ckpt[seed], root, r_uni)
                say(f"search seed {seed}, budget {frac:.0%}: {s.search_trials} trials (uniform ratio {r_uni:.3f})")
                try:
                    res, params = arm_search(cfg, s, seed, budget)
                except Exception as e:  # noqa: BLE001
                    res, params = {"arm": "search, best trial", "error": f"{type(e).__name__}: {e}"[:120]}, None
                res.update(seed=seed, uniform_widths=uni_widths)
                _record(root, (seed, frac, "search, best trial"), res)
                rows[frac].append(res)
                say(f"search seed {seed} {frac:.0%}: {res.get('error') or res}")
                key = (seed, frac)
                jobs += [(key + ("scratch, widths of (a)",), functools.partial(arm_scratch, s, seed, uni_widths,
                                                                               "scratch, widths of (a)"))]
                if params is not None:
                    jobs += [(key + ("scratch, widths of (e)",), functools.partial(arm_scratch, s, seed, res["widths"],
                                                                                   "scratch, widths of (e)")),
                             (key + ("search, after finalize",), functools.partial(
                                 arm_finalize, s, seed, json.dumps(cfg.model_dump(mode="json")), params,
                                 res["trial_id"]))]
                jobs += [(key + ("uniform l1",), functools.partial(arm_ours, s, seed, budget, ckpt[seed], "l1", "uniform", 1)),
                         (key + ("global Taylor (torch-pruning)",), functools.partial(arm_tp_taylor, s, seed, budget, ckpt[seed])),
                         *((key + (f"global {c}",), functools.partial(arm_ours, s, seed, budget, ckpt[seed], c, "global",
                                                                      s.iter_steps)) for c in ZHANG),
                         (key + ("adaptive grow/prune",), functools.partial(arm_adaptive, s, seed, budget, ckpt[seed]))]
        jobs.sort(key=lambda j: not j[0][-1].startswith("scratch"))  # longest first
        for key, res in _run_jobs(pool, jobs, root):
            res["seed"] = key[0]
            rows[key[1]].append(res)
    finally:
        pool.shutdown(cancel_futures=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(s, bases, rows, time.perf_counter() - t_start, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
