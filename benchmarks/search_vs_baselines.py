"""Search vs fixed pruning recipes on Fashion-MNIST, at 30% and 10% of the dense MACs (issue 10).

Data and model are chosen so that methods can be told apart on 2 CPU cores (digits
is too easy: the demo's config says why): Fashion-MNIST downsampled to 16x16, a seeded stratified subset of 4,000
training and 1,000 validation images (from the official train set), the official 10,000 test
images; ``small_vgg`` (5 convs 32,32,64,64,128 + BN, 7.15M MACs at 16x16). At this size uniform
L1 at 10% of the MACs loses about 2 points against dense (measured in the same run and printed:
the "design check"), while a dense epoch takes ~3.5 s on one thread.

Per seed the dense base model is trained once (``--base-epochs``) and shared by every arm. Then,
per budget (MACs <= budget x dense), every pruning arm gets the same ``--finetune-epochs``:

(a) uniform: the same keep ratio in every group, L1 (``pruning.iterative``, one shot); also with
    distillation from the base model while finetuning (alpha, T fixed at the middle of the
    search's ranges), to tell what the search gains from widths from what it gains from distilling;
(b) global Taylor with torch-pruning's own ``MetaPruner`` + ``GroupTaylorImportance`` (not our
    code), bisection on its global pruning ratio to the budget;
(c) Zhang et al.'s iterative pruning with global ranking to the budget: ``taylor_guided``,
    ``attribution``, ``attribution_iba`` (3 steps, 1 epoch after each of the first two, the
    rest after the last: the same total finetune epochs; scores from 4 batches of 64 per step);
(d) online grow/prune (``pruning.adaptive``) from the base model with the budget: at most 2
    search epochs at the finetune LR, then finetune epochs to the same total;
(e) the search: ``search.tuner.run_search`` (Ray, 2 trials at a time, TPE on val accuracy with
    the MACs budget as a constraint, per-group keep ratios, criterion l1 or taylor_fo,
    distillation on/off with its alpha and T, short
    trials of ``--search-epochs``; the uniform ratio at the budget is enqueued as a baseline
    trial); the best feasible trial on val, reported on test; then *finalized* with
    ``search.finalize`` (top 1 within the budget, ``--finetune-epochs``; see :func:`arm_finalize`);
(f) the widths of (e) and of (a) trained from scratch for base + finetune epochs.

Training compute = per-sample MACs x samples x 3 (forward + backward) summed over every
training epoch (+ the teacher's forward MACs x samples when distilling), including the base
model's training for the arms that start from it and every search trial for (e). Scoring passes are not counted: a few batches, except ``attribution_iba``,
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
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from svb_arms import _data, _init_worker, _load_base, arm_adaptive, arm_ours, arm_scratch, arm_tp_taylor, base_name, job_base
from svb_report import report
from svb_settings import DATASET, DISTILL_RANGES, MODEL, QUICK, ZHANG, Settings


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
                   "distill": [False, True], **DISTILL_RANGES,
                   "baselines": [{"ranking": "uniform", "ratio": math.floor(1000 * r_uni) / 1000, "criterion": "l1"}]},
        "objectives": {"objectives": [{"metric": "val_acc", "mode": "max"}], "macs_budget": budget},
        "sampler": {"name": "tpe", "n_startup_trials": max(2, s.search_trials // 4)},
        "resources": {"cpu": 1, "num_cpus": 2},
        "num_samples": s.search_trials, "max_concurrent": 2,
    })


def arm_finalize(cfg: Any, s: Settings, seed: int, chosen: dict) -> dict:
    """(e) after finalize: ``search.finalize`` (``prunetune finalize NAME --top 1 --epochs E``) on the
    search's experiment. With the MACs budget in the search's config, its top-1 source is the best
    trial within the budget on val, i.e. the trial (e) chose: checked, not assumed. Finalize also
    retrains the uniform baseline at that trial's MACs and hands back whichever of the two is
    better on the selection split (issue 17): that pick is the arm's model."""
    from search.finalize import finalize
    from search.results.final import read_final
    from search.tuner import SearchOptions

    t0 = time.perf_counter()
    summary = finalize(cfg.exp_dir, top=1, epochs=s.finetune_epochs, fresh=True, export=False,
                       options=SearchOptions())
    if summary.sources[:1] != [chosen["trial_id"]]:  # then the uniform baseline at the same MACs
        raise RuntimeError(f"finalize chose {summary.sources}, the benchmark's pick is {chosen['trial_id']}")
    final = read_final(summary.exp_dir)
    if (final["status"] != "TERMINATED").any():
        raise RuntimeError(f"finalize of {chosen['trial_id']} ended with errors: {list(final['error'].dropna())}")
    # What finalize hands back: the trial or the uniform baseline, whichever is better on the selection split.
    row = final[final["picked"] == True].iloc[0]  # noqa: E712 (nullable column)
    compute = int(final["train_macs"].sum())  # every candidate finalize trained, the uniform baseline too
    return {"arm": "search, after finalize", "test_acc": float(row.test_acc), "val_acc": float(row.val_acc),
            "macs": int(row.macs), "compute": compute, "epochs": int(row.epochs),
            "widths": dict(zip(row.group_names, (int(w) for w in row.widths))), "wall_s": time.perf_counter() - t0}


def arm_search(cfg: Any, s: Settings, seed: int, budget: int) -> tuple[dict, dict]:
    """(e) before finalize: run the search, pick the best feasible trial on val. Returns (result, params)."""
    from search.results.ledger import read_trials
    from search.tuner import SearchOptions, run_search

    t0 = time.perf_counter()
    summary = run_search(cfg, SearchOptions(), fresh=True)
    df = read_trials(summary.exp_dir)
    done = df[df.status == "TERMINATED"]
    compute = int(done.train_macs.sum())  # every finished trial's training, distillation teacher included
    ok = done[done.macs <= budget]
    if ok.empty:
        raise RuntimeError(f"search {cfg.experiment.name}: no trial within the budget of {budget} MACs")
    best = ok.sort_values(["val_acc", "macs", "trial_id"], ascending=[False, True, True], kind="mergesort").iloc[0]
    params = json.loads(best.params_json)
    res = {"arm": "search, best trial", "test_acc": float(best.test_acc), "val_acc": float(best.val_acc),
           "macs": int(best.macs), "compute": compute, "epochs": int(best.epochs),
           "widths": dict(zip(best.group_names, (int(w) for w in best.widths))), "wall_s": time.perf_counter() - t0,
           "trials": len(df), "feasible": len(ok), "criterion": str(best.criterion), "trial_id": str(best.trial_id),
           "baseline_chosen": "baseline" in params, "distill": bool(params.get("distill"))}
    return res, params


# --------------------------------------------------------------------------- driver


def _record(root: Path, key: tuple, res: dict) -> None:
    """Append one arm's result to ``<work dir>/arms.jsonl`` (progress that survives an interrupted run)."""
    with open(root / "arms.jsonl", "a") as f:
        f.write(json.dumps({"key": list(key), **res}, default=str) + "\n")


Jobs = list[tuple[tuple, Any]]


def _submit(pool: ProcessPoolExecutor, jobs: Jobs) -> list[tuple[tuple, Any]]:
    return [(key, pool.submit(fn)) for key, fn in jobs]


def _collect(futures: list[tuple[tuple, Any]], root: Path) -> list[tuple[tuple, dict]]:
    """Wait for each job, record its result (or its one-line error) and log it."""
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


def fixed_arms(s: Settings, seed: int, frac: float, budget: int, ckpt: str, uni_widths: dict[str, int]) -> Jobs:
    """The arms that need no search: (a), (b), (c), (d) and (f) at the widths of (a); longest first."""
    key = (seed, frac)
    part = functools.partial
    return [(key + ("scratch, widths of (a)",), part(arm_scratch, s, seed, uni_widths, "scratch, widths of (a)")),
            (key + ("uniform l1",), part(arm_ours, s, seed, budget, ckpt, "l1", "uniform", 1)),
            (key + ("uniform l1 + distill",), part(arm_ours, s, seed, budget, ckpt, "l1", "uniform", 1, True)),
            (key + ("global Taylor (torch-pruning)",), part(arm_tp_taylor, s, seed, budget, ckpt)),
            *((key + (f"global {c}",), part(arm_ours, s, seed, budget, ckpt, c, "global", s.iter_steps)) for c in ZHANG),
            (key + ("adaptive grow/prune",), part(arm_adaptive, s, seed, budget, ckpt))]


def search_arms(s: Settings, seed: int, frac: float, budget: int, ckpt: str, root: Path,
                plan: tuple[float, dict[str, int]]) -> tuple[list[dict], Jobs]:
    """(e) before and after finalize, in this process (Ray); returns their rows and the job of (f)
    at the widths of (e). ``plan``: :func:`uniform_plan` of this seed and budget."""
    r_uni, uni_widths = plan
    cfg = search_config(s, seed, frac, budget, ckpt, root, r_uni)
    say(f"search seed {seed}, budget {frac:.0%}: {s.search_trials} trials (uniform ratio {r_uni:.3f})")
    try:
        res, params = arm_search(cfg, s, seed, budget)
    except Exception as e:  # noqa: BLE001
        res, params = {"arm": "search, best trial", "error": f"{type(e).__name__}: {e}"[:120]}, None
    res.update(seed=seed, uniform_widths=uni_widths)
    rows = [res]
    if params is not None:
        try:
            fin = arm_finalize(cfg, s, seed, res)
        except Exception as e:  # noqa: BLE001
            fin = {"arm": "search, after finalize", "error": f"{type(e).__name__}: {e}"[:120]}
        rows.append(dict(fin, seed=seed))
    for row in rows:
        _record(root, (seed, frac, row["arm"]), row)
        say(f"{row['arm']} seed {seed} {frac:.0%}: {row.get('error') or row}")
    if params is None:
        return rows, []
    name = "scratch, widths of (e)"
    return rows, [((seed, frac, name), functools.partial(arm_scratch, s, seed, res["widths"], name))]


def run_all(s: Settings, root: Path, pool: ProcessPoolExecutor) -> tuple[dict[int, dict], dict[float, list[dict]]]:
    """Every arm of every seed and budget. The fixed arms run in ``pool`` while this process runs
    the searches on Ray (so finalize's single trial leaves no core idle)."""
    ckpt = {seed: str(root / base_name(s, seed)) for seed in s.seeds}
    bases = {key[0]: res for key, res in _collect(_submit(pool, [
        ((seed, "dense"), functools.partial(job_base, s, seed, ckpt[seed])) for seed in s.seeds]), root)}
    for res in bases.values():
        if "error" in res:
            raise SystemExit(f"base model training failed: {res['error']}")
    dense_macs = bases[s.seeds[0]]["macs"]
    rows: dict[float, list[dict]] = {frac: [] for frac in s.budgets}
    pending = []
    plans = {(seed, frac): uniform_plan(ckpt[seed], s, seed, int(frac * dense_macs)) for seed in s.seeds for frac in s.budgets}
    for (seed, frac), (_, uni_widths) in plans.items():
        pending += _submit(pool, fixed_arms(s, seed, frac, int(frac * dense_macs), ckpt[seed], uni_widths))
    for (seed, frac), plan in plans.items():
        found, jobs = search_arms(s, seed, frac, int(frac * dense_macs), ckpt[seed], root, plan)
        rows[frac] += found
        pending += _submit(pool, jobs)
    for key, res in _collect(pending, root):
        rows[key[1]].append(dict(res, seed=key[0]))
    return bases, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 1 seed, few epochs and trials")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument("--trials", type=int, help="override the search trials per budget and seed")
    p.add_argument("--search-epochs", type=int, help="override the finetune epochs of each search trial")
    p.add_argument("--workers", type=int, help="worker processes for the non-search arms (1 thread each)")
    p.add_argument("--keep", help="keep the experiment directories and base models here, and reuse base models "
                                  "found there (default: a temp dir, removed)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    s = replace(s, seeds=tuple(args.seeds or s.seeds), search_trials=args.trials or s.search_trials,
                search_epochs=args.search_epochs or s.search_epochs, workers=args.workers or s.workers)
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
        bases, rows = run_all(s, root, pool)
    finally:
        pool.shutdown(cancel_futures=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(s, bases, rows, time.perf_counter() - t_start, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
