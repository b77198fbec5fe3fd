"""Search vs fixed pruning recipes on Fashion-MNIST, at 30% and 10% of the dense MACs (issues 10, 17).

Data and model are chosen so that methods can be told apart on 2 CPU cores (digits
is too easy: the demo's config says why): Fashion-MNIST downsampled, a seeded stratified subset of 4,000
training and 1,000 validation images (from the official train set), the official 10,000 test
images. ``--model`` chooses the testbed (``svb_settings.TESTBEDS``: image size, width multiplier,
base epochs): ``small_vgg`` (default; 5 convs 32,32,64,64,128 + BN, 7.15M MACs at 16x16, a dense
epoch ~3.5 s on one thread), ``cifar_resnet20`` at 16x16 or ``cifar_vgg16`` x0.25 at 32x32
(``--width-mult`` overrides): the deeper testbed, the one where ``allocation_headroom.py`` measured
that the allocation of widths matters (best random allocation by val +1.3 pt over uniform at 10%). A seeded stratified 10% of the training subset is the
selection split (``data.select_fraction``): the base model, every fixed arm and every search trial
train on the rest (the same images: ``load_data(..., select_fraction=0.1)`` with the seed gives the
split the search's experiment data carves), and only finalize scores on it.

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
(e) the search: ``search.tuner.run_search`` (Ray, 2 trials at a time, TPE on val accuracy,
    budget-exact trials: ``objectives.macs_targets: [budget]`` scales each trial's per-group keep
    ratios onto the budget, so no trial lands over it (checked in the ledger); criterion l1 or
    taylor_fo, distillation on/off with its alpha and T, short trials of ``--search-epochs``; the
    uniform profile is enqueued as a baseline trial; ``search.screen`` scores
    ``--screen-candidates`` random profiles with ``--screen-proxy`` and enqueues the
    ``--screen-keep`` best as trials). Reported: the best trial on val, on test; then
    ``search.finalize`` (the ``--finalize-top`` best trials and the uniform L1 baseline at the
    budget, ``--finetune-epochs`` each, picked on the selection split: the arm "(e) search +
    finalize" is that pick, finalize's uniform row is reported beside it); with
    ``--finalize-distill`` also finalize with distillation, its own arm;
(f) the widths of (e)'s pick after finalize and of (a) trained from scratch for base + finetune epochs.

Training compute = per-sample MACs x samples x 3 (forward + backward) summed over every
training epoch (+ the teacher's forward MACs x samples when distilling), including the base
model's training for the arms that start from it and every search trial for (e). Scoring passes are not counted: a few batches, except ``attribution_iba``,
which optimises a bottleneck for 10 steps per batch and layer (about 4 x 10 x 5 forward/backward
passes of a batch per pruning step). Markdown on
stdout, progress on stderr, the plot of proxy score against finetuned accuracy to
``benchmarks/results/svb_proxy_<model>.png``. ``--quick`` is a smoke test (tiny sizes, one seed, ~2 minutes).
"""

from __future__ import annotations

import argparse
import copy
import functools
from types import SimpleNamespace
import json
import logging
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
from svb_finalize import arm_finalize, extra_finalize_rows, finalize_arm_name
from svb_report import plot_proxy, report
from svb_settings import DATASET, DISTILL_RANGES, QUICK, TESTBEDS, ZHANG, Settings, for_testbed


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


def search_config(s: Settings, seed: int, frac: float, ckpt: str, root: Path, r_uni: float) -> Any:
    """The search of arm (e) at one budget: budget-exact trials (``objectives.macs_targets: [frac]``,
    no trial over its target), ``search.screen`` (``screen_candidates`` profiles scored by the
    proxy, the ``screen_keep`` best enqueued as trials) and the selection split
    (``data.select_fraction``) that finalize picks on."""
    from search.config import config_from_dict

    return config_from_dict({
        "experiment": {"name": s.exp_name(seed, frac), "seed": seed, "results_dir": str(root)},
        "model": {"name": s.model, "checkpoint": ckpt, "width_mult": s.width_mult},
        "data": {"name": DATASET, "image_size": s.image_size, "limit": s.limit, "val_limit": s.val_limit,
                 "select_fraction": s.select_fraction},
        "train": {"epochs": s.base_epochs, "lr": s.lr, "batch_size": s.batch_size, "device": "cpu"},
        # With a target the ratio keys are a profile scaled onto it: the range only bounds how
        # unequal the groups may be (the same spread as before targets, around the uniform ratio).
        "search": {"modes": ["prune"], "criteria": ["l1", "taylor_fo"], "tie": s.tie, "steps": [1],
                   "ratio_min": round(r_uni / 3.5, 3), "ratio_max": round(min(1.0, 1.9 * r_uni), 3),
                   "finetune_epochs": [s.search_epochs, s.search_epochs],
                   "finetune_lr": [s.finetune_lr, s.finetune_lr],
                   "distill": [False, True], **DISTILL_RANGES, "recalib_batches": s.recalib_batches,
                   "baselines": [{"ranking": "uniform", "criterion": "l1"}],
                   "screen": {"candidates": s.screen_candidates, "keep": s.screen_keep, "proxy": s.screen_proxy,
                              "batches": s.screen_batches}},
        "objectives": {"objectives": [{"metric": "val_acc", "mode": "max"}], "macs_targets": [frac]},
        "sampler": {"name": "tpe", "n_startup_trials": max(2, s.search_trials // 4)},
        "resources": {"cpu": 1, "num_cpus": 2},
        "num_samples": s.search_trials, "max_concurrent": 2,
    })


def arm_search(cfg: Any, s: Settings, seed: int, dense_macs: int) -> tuple[dict, dict]:
    """(e) before finalize: run the search, pick the best trial on val (all are budget-exact).
    Returns (result, params); the result carries the ledger check (trials over their target),
    the proxy's Spearman rank correlation and its (proxy score, finetuned val/test) pairs."""
    from search.results.ledger import read_trials
    from search.results.screen import proxy_correlation, read_screen
    from search.trial.params import SCREEN_KEY, TARGET_KEY
    from search.tuner import SearchOptions, run_search

    t0 = time.perf_counter()
    summary = run_search(cfg, SearchOptions(), fresh=True)
    df = read_trials(summary.exp_dir)
    done = df[df.status == "TERMINATED"]
    compute = int(done.train_macs.sum())  # every finished trial's training, distillation teacher included
    # The ledger check: no trial may land over its own target (macs_target x the base model's MACs).
    over = int((done.macs > done.macs_target * dense_macs).sum())
    if done.empty:
        raise RuntimeError(f"search {cfg.experiment.name}: no finished trial")
    best = done.sort_values(["val_acc", "macs", "trial_id"], ascending=[False, True, True], kind="mergesort").iloc[0]
    params = json.loads(best.params_json)
    screen = read_screen(summary.exp_dir)
    rho, n_pairs = proxy_correlation(screen, df)
    scores = {(round(float(r.target), 9), int(r.candidate)): float(r.score) for r in screen.itertuples()
              if r.score == r.score and r.score is not None}
    pairs = []
    for r in done.itertuples():
        p = json.loads(r.params_json)
        if p.get(SCREEN_KEY) is not None and p.get(TARGET_KEY) is not None:
            key = (round(float(p[TARGET_KEY]), 9), int(p[SCREEN_KEY]))
            if key in scores:
                pairs.append((scores[key], float(r.val_acc), float(r.test_acc)))
    res = {"arm": "search, best trial", "test_acc": float(best.test_acc), "val_acc": float(best.val_acc),
           "macs": int(best.macs), "macs_target": float(best.macs_target), "compute": compute,
           "epochs": int(best.epochs),
           "widths": dict(zip(best.group_names, (int(w) for w in best.widths))), "wall_s": time.perf_counter() - t0,
           "trials": len(df), "finished": len(done), "over_target": over, "screened": len(screen),
           "screen_failed": int(screen.score.isna().sum()) if len(screen) else 0,
           "proxy_rho": rho, "proxy_pairs": n_pairs, "proxy_points": pairs,
           "all_scores": [float(x) for x in screen.score.dropna()],
           "criterion": str(best.criterion), "trial_id": str(best.trial_id),
           "baseline_chosen": "baseline" in params, "screened_chosen": params.get(SCREEN_KEY) is not None,
           "distill": bool(params.get("distill"))}
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
            *((key + (f"global {c}",), part(arm_ours, s, seed, budget, ckpt, c, "global", s.iter_steps))
              for c in (ZHANG if s.zhang_arms else ())),
            (key + ("adaptive grow/prune",), part(arm_adaptive, s, seed, budget, ckpt))]


def search_arms(s: Settings, seed: int, frac: float, dense_macs: int, ckpt: str, root: Path,
                plan: tuple[float, dict[str, int]]) -> tuple[list[dict], Jobs]:
    """(e) before and after finalize (and after finalize --distill with ``finalize_distill``), in
    this process (Ray); returns their rows and the job of (f) at the widths of (e)'s pick.
    ``plan``: :func:`uniform_plan` of this seed and budget."""
    r_uni, uni_widths = plan
    cfg = search_config(s, seed, frac, ckpt, root, r_uni)
    say(f"search seed {seed}, budget {frac:.0%}: {s.search_trials} trials, screening {s.screen_candidates} "
        f"({s.screen_proxy}, keep {s.screen_keep}), uniform ratio {r_uni:.3f}")
    try:
        res, params = arm_search(cfg, s, seed, dense_macs)
    except Exception as e:  # noqa: BLE001
        res, params = {"arm": "search, best trial", "error": f"{type(e).__name__}: {e}"[:120]}, None
    res.update(seed=seed, uniform_widths=uni_widths)
    rows = [res]
    if params is not None:
        for distill in s.finalize_variants:
            try:
                rows += [dict(r, seed=seed) for r in arm_finalize(cfg, s, distill)]
            except Exception as e:  # noqa: BLE001
                rows.append({"arm": finalize_arm_name(distill), "seed": seed,
                             "error": f"{type(e).__name__}: {e}"[:120]})
            for kind in s.extra_finalizes:
                rows += extra_finalize_rows(cfg, s, seed, distill, kind)
    for row in rows:
        _record(root, (seed, frac, row["arm"]), row)
        say(f"{row['arm']} seed {seed} {frac:.0%}: " + (row.get("error") or
            f"test {100 * row['test_acc']:.2f}% MACs {row['macs'] / dense_macs:.2%}"))
    pick = next((r for r in rows if r["arm"].startswith("search + finalize") and "error" not in r), None)
    if pick is None:
        return rows, []
    name = "scratch, widths of (e)"
    return rows, [((seed, frac, name), functools.partial(arm_scratch, s, seed, pick["widths"], name))]


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
    # Budget-major (every seed at the first budget, then the next): an interrupted run has whole budgets.
    plans = {(seed, frac): uniform_plan(ckpt[seed], s, seed, int(frac * dense_macs)) for frac in s.budgets for seed in s.seeds}
    for (seed, frac), (_, uni_widths) in plans.items():
        pending += _submit(pool, fixed_arms(s, seed, frac, int(frac * dense_macs), ckpt[seed], uni_widths))
    for (seed, frac), plan in plans.items():
        found, jobs = search_arms(s, seed, frac, dense_macs, ckpt[seed], root, plan)
        rows[frac] += found
        pending += _submit(pool, jobs)
    for key, res in _collect(pending, root):
        rows[key[1]].append(dict(res, seed=key[0]))
    return bases, rows


def _settings(raw: dict) -> tuple[Settings, bool]:
    """The Settings of a kept run's ``settings.json`` (lists back to tuples) and its ``quick``."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k != "quick"}
    return Settings(**fields), bool(raw["quick"])


def _kept(root: Path) -> tuple[dict, dict[tuple, dict]]:
    """A run kept with ``--keep``: its ``settings.json`` and the last row of each arm of its
    ``arms.jsonl`` (a run that was interrupted has what it finished)."""
    raw = json.loads((root / "settings.json").read_text())
    last: dict[tuple, dict] = {}
    with open(root / "arms.jsonl") as f:
        for line in f:
            row = json.loads(line)
            last[tuple(row.pop("key"))] = row
    return raw, last


def report_from(roots: list[Path], plot_dir: Path) -> int:
    """The report of a run kept with ``--keep``, from ``settings.json`` and ``arms.jsonl``;
    several ``roots``: runs of the same settings on other seeds (``--seeds``), read as one run
    of all their seeds (the settings must agree but for the seeds, and no seed may repeat)."""
    raw, last = _kept(roots[0])
    for root in roots[1:]:
        other, more = _kept(root)
        differ = sorted(k for k in raw.keys() | other.keys() if k != "seeds" and raw.get(k) != other.get(k))
        if differ:
            raise SystemExit(f"--report-from {root}: its settings differ from {roots[0]}'s in {', '.join(differ)}")
        if set(raw["seeds"]) & set(other["seeds"]):
            raise SystemExit(f"--report-from {root}: seeds {sorted(set(raw['seeds']) & set(other['seeds']))} are "
                             f"also in an earlier DIR")
        raw, last = {**raw, "seeds": raw["seeds"] + other["seeds"]}, {**last, **more}
    s, quick = _settings(raw)
    bases = {k[0]: v for k, v in last.items() if k[1] == "dense" and "error" not in v}
    rows: dict[float, list[dict]] = {frac: [] for frac in s.budgets}
    for k, v in last.items():
        if k[1] != "dense" and k[1] in rows:
            rows[k[1]].append(dict(v, seed=k[0]))
    png = plot_proxy(s, rows, plot_dir, quick)
    report(s, bases, rows, float("nan"), quick, png)
    return 0


def refinalize(root: Path, plot_dir: Path, only: tuple[str, ...] = (), budgets: tuple[float, ...] = ()) -> int:
    """Finalize again (``--fresh``, this code) every search kept in ``root`` by ``--keep``, and
    train (f) at the widths of each new pick; the rows are appended to ``arms.jsonl`` (the
    last row of an arm wins), then the report is printed as ``--report-from`` prints it.
    ``only``: run only these extra finalizes ("scratch": ``finalize --with-scratch`` after the
    kept finalizes, whose finetuned rows it reuses; "long": every candidate finetuned as long
    as scratch trains, in a copy of the experiment), and record in ``settings.json`` that the
    run has those arms. ``budgets``: only these (default: every budget of the run)."""
    s, quick = _settings(json.loads((root / "settings.json").read_text()))
    more = replace(s, finalize_scratch=s.finalize_scratch or "scratch" in only,
                   finalize_long=s.finalize_long or "long" in only)
    if more != s:
        s = more
        (root / "settings.json").write_text(json.dumps({**asdict(s), "quick": quick}))
    torch.set_num_threads(1)
    pool = ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker)
    pending = []
    try:
        for frac in s.budgets:
            for seed in s.seeds:
                cfg = SimpleNamespace(exp_dir=root / s.exp_name(seed, frac))
                if not (cfg.exp_dir / "trials.parquet").is_file() or (budgets and frac not in budgets):
                    continue
                say(f"refinalize seed {seed} budget {frac:.0%}")
                if only:
                    for row in [r for distill in s.finalize_variants for kind in only
                                for r in extra_finalize_rows(cfg, s, seed, distill, kind)]:
                        _record(root, (seed, frac, row["arm"]), row)
                        say(f"{row['arm']} seed {seed} {frac:.0%}: " +
                            (row.get("error") or f"test {100 * row['test_acc']:.2f}%"))
                    continue
                rows = []
                for distill in s.finalize_variants:
                    rows += [dict(r, seed=seed) for r in arm_finalize(cfg, s, distill)]
                for row in rows:
                    _record(root, (seed, frac, row["arm"]), row)
                    say(f"{row['arm']} seed {seed} {frac:.0%}: test {100 * row['test_acc']:.2f}%")
                name = "scratch, widths of (e)"
                pending += _submit(pool, [((seed, frac, name), functools.partial(arm_scratch, s, seed, rows[0]["widths"],
                                                                                  name))])
        _collect(pending, root)
    finally:
        pool.shutdown(cancel_futures=True)
    return report_from([root], plot_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny subset, 1 seed, few epochs and trials")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument("--budgets", type=float, nargs="+", help="override the MACs budgets (fractions of dense)")
    p.add_argument("--trials", type=int, help="override the search trials per budget and seed")
    p.add_argument("--search-epochs", type=int, help="override the finetune epochs of each search trial")
    p.add_argument("--workers", type=int, help="worker processes for the non-search arms (1 thread each)")
    p.add_argument("--keep", help="keep the experiment directories and base models here, and reuse base models "
                                  "found there (default: a temp dir, removed)")
    p.add_argument("--model", choices=sorted(TESTBEDS), default="small_vgg",
                   help="the testbed (its image size and base epochs: svb_settings.TESTBEDS)")
    p.add_argument("--width-mult", type=float, help="override the testbed's width multiplier")
    p.add_argument("--screen-candidates", type=int, help="screened candidates per budget and seed")
    p.add_argument("--screen-keep", type=int, help="best screened candidates enqueued as trials")
    p.add_argument("--screen-proxy", choices=["abn", "epochs1"], help="the screening proxy")
    p.add_argument("--finalize-top", type=int, help="search trials finalize retrains per target (+ the uniform one)")
    p.add_argument("--finalize-distill", action="store_true",
                   help="also finalize with distillation, reported as its own arm")
    p.add_argument("--finalize-distill-only", action="store_true",
                   help="finalize with distillation only (the like-for-like rival of uniform L1 + distillation)")
    p.add_argument("--tie", choices=["none", "slope"], help="the search's profile: a keep value per group (none, "
                   "the default) or one depth slope per trial (slope)")
    p.add_argument("--no-zhang", action="store_true", help="skip the (c) arms (iterative global Zhang et al. criteria)")
    p.add_argument("--base-epochs", type=int, help="override the testbed's dense training epochs")
    p.add_argument("--plot-dir", default=str(Path(__file__).parent / "results"),
                   help="where svb_proxy_<model>.png goes (proxy score vs finetuned accuracy)")
    p.add_argument("--refinalize", metavar="DIR",
                   help="finalize again, with this code, every search of the run kept in DIR (--keep DIR), retrain (f) "
                        "at the new picks' widths, and print the report")
    p.add_argument("--finalize-scratch", action="store_true",
                   help="also finalize --with-scratch (every candidate also trained from scratch for base + finetune "
                        "epochs, competing for the pick), its own arm; with --refinalize DIR: only that, reusing the "
                        "kept finalizes (--budgets: only those budgets)")
    p.add_argument("--finalize-long", action="store_true",
                   help="also finalize with every candidate finetuned base + finetune epochs (as long as the scratch "
                        "arms train), in a copy of each experiment, its own arm: is a gain of --with-scratch from "
                        "training from scratch or from training longer?; with --refinalize DIR: only that (with "
                        "--finalize-scratch: both)")
    p.add_argument("--report-from", metavar="DIR", nargs="+",
                   help="print the report of the run kept in DIR (--keep DIR) from its arms.jsonl, running nothing; "
                        "several DIRs: runs of the same settings on other --seeds, reported as one")
    args = p.parse_args(argv)
    s = for_testbed(QUICK if args.quick else Settings(), args.model, args.width_mult)
    s = replace(s, seeds=tuple(args.seeds or s.seeds), budgets=tuple(args.budgets or s.budgets), search_trials=args.trials or s.search_trials,
                search_epochs=args.search_epochs or s.search_epochs, workers=args.workers or s.workers,
                screen_candidates=args.screen_candidates or s.screen_candidates,
                screen_keep=args.screen_keep or s.screen_keep, screen_proxy=args.screen_proxy or s.screen_proxy,
                finalize_top=args.finalize_top or s.finalize_top,
                finalize_distill=args.finalize_distill or args.finalize_distill_only or s.finalize_distill,
                finalize_plain=not args.finalize_distill_only, zhang_arms=not args.no_zhang,
                base_epochs=args.base_epochs or s.base_epochs, finalize_scratch=args.finalize_scratch,
                finalize_long=args.finalize_long, tie=args.tie or s.tie)
    if s.screen_keep > s.screen_candidates:
        p.error(f"--screen-keep {s.screen_keep} > --screen-candidates {s.screen_candidates}")
    if args.report_from:
        return report_from([Path(d) for d in args.report_from], Path(args.plot_dir))
    if args.refinalize:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("search.progress").setLevel(logging.WARNING)
        only = ("scratch",) * args.finalize_scratch + ("long",) * args.finalize_long
        return refinalize(Path(args.refinalize), Path(args.plot_dir), only,
                          tuple(args.budgets or ()))
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
    (root / "settings.json").write_text(json.dumps({**asdict(s), "quick": args.quick}))
    pool = ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker)
    try:
        bases, rows = run_all(s, root, pool)
    finally:
        pool.shutdown(cancel_futures=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    png = plot_proxy(s, rows, Path(args.plot_dir), args.quick)
    report(s, bases, rows, time.perf_counter() - t_start, args.quick, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
