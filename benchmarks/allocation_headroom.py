"""Does the allocation of widths matter? Uniform L1 vs budget-exact random allocations at a tight MACs budget (default 10%; issue 17).

Per testbed (model, width multiplier, image size) and seed: a dense base model is trained once on a
seeded stratified subset of Fashion-MNIST (``--limit`` training, ``--val-limit`` validation images,
the official 10,000 test images). From it, at ``--budget`` x the dense MACs, every allocation is cut
by L1 (top filters per group) and finetuned the same way (same epochs, LR, data order):

* **uniform**: the profile of all ones projected to the budget (``pruning.budget``);
* **uniform, another seed**: the same cut finetuned with another data order: the noise floor;
  with ``--uniform-draws N``, N finetunes of uniform in all (N data orders), and the report adds the
  *noise-matched* headroom: the best of N uniform finetunes by val against the best of the first
  N random allocations by val (a best-of-N pick also gains its finetune's luck, so the best random
  allocation against a single uniform finetune overstates what the widths give);
* **random** (``--allocations`` per seed): random profiles (each group's relative keep value uniform
  in [low, 1], low alternating 0.1 and 0.4 for wide and near-uniform draws), projected to within
  ±1% of the budget;
* **abn-screened** (``--screen`` candidates, top ``screen_top``): EagleEye's procedure, random
  profiles (low 0.1) scored by adaptive BN, the best ones finetuned;
* **cost-graded** (``GRADED``, off with ``--no-graded``): deterministic profiles that keep wider the
  groups whose channels cost few MACs (or the reverse);
* **depth slopes** (``--slopes S ...``, each finetuned with ``--slope-draws`` data orders): the
  one-parameter family p_g = exp(-S * i_g / (n - 1)), i_g the group's index in model order (S > 0:
  the early groups wider, the late ones narrower; S < 0 the reverse), projected to the budget. Each
  slope's mean test accuracy over its draws is compared with the mean over uniform's draws: what
  the direction gives *in expectation*, free of the finetune's luck that a best-of-N pick gains.

Proxies recorded for every finetuned allocation, before its finetune: adaptive BN (BN statistics
re-estimated on ``--abn-batches`` training batches, ``pruning.recalibrate.recalibrate_bn``, then
accuracy on val) and the val accuracy after the first finetune epoch (of the same cosine schedule: a
free by-product, not a separate 1-epoch run). Their Spearman rank correlation with the finetuned val
and test accuracy is printed per seed (over uniform + random + screened allocations).

Headroom = test accuracy of the random allocation that is best on *val* minus uniform's test
accuracy; the max over allocations on test is the optimistic bound. Markdown on stdout (``make
bench`` style: ``benchmarks/results/allocation_headroom.md``), progress on stderr; ``--base-epochs``,
``--limit`` and ``--finetune-epochs`` change the recipe (a converged base, more data); ``--quick`` is
a smoke run (tiny sizes, one seed, ~3 minutes). Not part of ``make bench`` (about 80 minutes of
2 one-thread workers on a shared machine). The README's second block is
``--from DIR --testbeds cifar_vgg16 --seeds 0 1 2 3 4 --allocations 8 --title ...`` after
``--keep DIR --testbeds cifar_vgg16 --seeds 3 4 --allocations 8 --screen 0 --no-graded`` and
``--keep DIR --testbeds cifar_vgg16 --seeds 0 1 2 3 4 --allocations 8 --refine-epochs 5`` (uniform and
the best allocation by val finetuned again for 5 epochs: does the headroom survive a longer finetune?).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from headroom_report import report, report_by_lr, report_slopes
from headroom_settings import (DATASET, DRAWN_PREFIXES, GRADED, NOISE_SEED, QUICK, REFINED, TESTBEDS, Settings,
                               base_epochs, first_random, profile_kind, slope_kind)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker jobs (1 thread each)


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


@functools.lru_cache(maxsize=2)
def _data(s: Settings, tb: str, seed: int) -> Any:
    from pruning.data import load_data

    return load_data(DATASET, seed=seed, image_size=TESTBEDS[tb].image_size, limit=s.limit, val_limit=s.val_limit)


def base_name(s: Settings, tb: str, seed: int) -> str:
    """File name of a base model: a hash of what determines it, so ``--keep DIR`` reuses it."""
    t = TESTBEDS[tb]
    recipe = [t.model, t.width_mult, t.image_size, DATASET, s.limit, s.val_limit, base_epochs(s, tb), s.lr, s.batch_size,
              seed]
    return f"base-{tb}-seed{seed}-{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:10]}.pt"


def _abn_acc(model: torch.nn.Module, data: Any, s: Settings, seed: int) -> float:
    from pruning.recalibrate import recalibrate_bn
    from pruning.train import evaluate

    recalibrate_bn(model, data.train.batches(s.batch_size, shuffle=True, seed=seed), s.abn_batches)
    return evaluate(model, data.val)


def _projector(model: torch.nn.Module, data: Any, s: Settings) -> Any:
    from pruning.budget import Projector
    from pruning.criteria import get_criterion
    from pruning.surgery import GroupGraph

    graph = GroupGraph(model, data.example_input())
    scores = get_criterion("l1").score(model, graph.groups, [])
    return Projector(model, scores, data.input_shape, min_channels=s.min_channels)


def job_base(s: Settings, tb: str, seed: int, ckpt: str) -> dict:
    """Train (or load) the base model, then plan the allocations: uniform, random, ABN-screened."""
    import random

    from pruning.budget import random_profile, uniform_profile
    from search.trial.params import depth_profile
    from pruning.models import create_model
    from pruning.train import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train

    t0 = time.perf_counter()
    data, t = _data(s, tb, seed), TESTBEDS[tb]
    if Path(ckpt).is_file():
        model, reused = load_checkpoint(ckpt)["model"], True
    else:
        torch.manual_seed(seed)
        model = create_model(t.model, data.num_classes, in_channels=data.input_shape[0], width_mult=t.width_mult)
        train(model, data, TrainConfig(epochs=base_epochs(s, tb), lr=s.lr, batch_size=s.batch_size, seed=seed))
        save_checkpoint(ckpt, model.cpu(), recipe=t.model)
        reused = False
    base_s = time.perf_counter() - t0
    proj = _projector(model, data, s)
    target = int(s.budget * proj.full_macs)
    allocs = [{"kind": "uniform", "profile": uniform_profile(proj.sizes)}]
    rng = random.Random(seed)
    for i in range(s.allocations):
        low = 0.1 if i % 2 == 0 else 0.4
        allocs.append({"kind": "random", "low": low, "profile": random_profile(list(proj.sizes), rng, low=low)})
    # EagleEye screening: candidates scored by adaptive BN, the best finetuned.
    t2 = time.perf_counter()
    screened = []
    for p in proj.sample(target, s.screen, seed=10_000 + seed, low=0.1):
        screened.append((_abn_acc(proj.prune(p), data, s, seed), p.profile))
    screen_s = time.perf_counter() - t2
    screened.sort(key=lambda t: -t[0])
    allocs += [{"kind": "abn-screened", "profile": prof, "screen_rank": i}
               for i, (_, prof) in enumerate(screened[:s.screen_top])]
    if s.graded:
        uni = proj.project(allocs[0]["profile"], target).widths
        at = proj.poly(uni)
        d = {g: proj.poly({**uni, g: uni[g] + 1}) - at for g in uni}  # marginal MACs of one more channel
        lo, hi = min(d.values()), max(d.values())
        for kind, beta in GRADED:
            prof = {g: (lo / d[g]) ** beta if beta > 0 else (d[g] / hi) ** -beta for g in d}
            allocs.append({"kind": kind, "profile": prof})
    allocs += [{"kind": slope_kind(sl), "profile": depth_profile(list(proj.sizes), sl)} for sl in s.slopes]
    for name, values in s.profiles:  # their lengths were checked by main (_check_profiles)
        top = max(values)  # relative: the largest keeps 1, as a projected profile must
        allocs.append({"kind": profile_kind(name), "profile": {g: v / top for g, v in zip(proj.sizes, values)}})
    t3 = time.perf_counter()
    for a in allocs:
        a["widths"] = proj.project(a["profile"], target).widths
    one_proj_ms = 1000 * (time.perf_counter() - t3) / len(allocs)
    return {"tb": tb, "seed": seed, "dense_test": evaluate(model, data.test), "dense_val": evaluate(model, data.val),
            "dense_macs": proj.full_macs, "target": target, "allocs": allocs, "base_s": base_s, "reused": reused,
            "projection_ms": one_proj_ms, "screen_s": screen_s, "screen_n": len(screened),
            "screen_abn": [a for a, _ in screened]}


def job_finetune(s: Settings, tb: str, seed: int, ckpt: str, alloc: dict, train_seed: int) -> dict:
    """Cut ``alloc`` from the base model by L1, record the proxies, finetune, evaluate."""
    from pruning.train import TrainConfig, evaluate, load_checkpoint, train

    t0 = time.perf_counter()
    data = _data(s, tb, seed)
    base = load_checkpoint(ckpt)["model"]
    proj = _projector(base, data, s)
    target = int(s.budget * proj.full_macs)
    p = proj.project(alloc["profile"], target)
    if p.widths != alloc["widths"]:
        raise RuntimeError(f"projection differs from the plan: {p.widths} vs {alloc['widths']}")
    model = proj.prune(p)  # checks the counted MACs against the polynomial
    abn = _abn_acc(model, data, s, seed)
    history = train(model, data, TrainConfig(epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=s.batch_size,
                                             seed=train_seed))
    return {**{k: v for k, v in alloc.items() if k != "profile"}, "tb": tb, "seed": seed, "train_seed": train_seed,
            "macs": p.macs, "target": target, "finetune_epochs": s.finetune_epochs, "finetune_lr": s.finetune_lr,
            "abn_val": abn,
            "ep1_val": history[0].val_acc,
            "val_acc": evaluate(model, data.val), "test_acc": evaluate(model, data.test),
            "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- driver


def run(s: Settings, root: Path) -> tuple[list[dict], list[dict]]:
    """Every base model and finetune, at most ``s.workers`` at a time. A finished base model's
    finetunes go ahead of the next base model, so results arrive seed by seed (and an
    interrupted run has whole seeds in ``rows.jsonl``: ``--from DIR`` reports them)."""
    pool = ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker)
    bases, rows = [], []
    # Finetunes an earlier run of the same settings recorded (``--keep DIR``) are not run again.
    earlier = {_row_key(r): r for r in read_rows(root)[1]} if (root / "rows.jsonl").is_file() else {}
    log = open(root / "rows.jsonl", "a")
    queue: list[tuple] = [("base", tb, seed) for seed in s.seeds for tb in s.testbeds]
    ckpt = {(tb, seed): str(root / base_name(s, tb, seed)) for _, tb, seed in queue}
    pending: dict[Any, tuple] = {}
    try:
        while queue or pending:
            while queue and len(pending) < s.workers:
                job = queue.pop(0)
                kind, tb, seed = job[:3]
                if kind == "base":
                    fut = pool.submit(job_base, s, tb, seed, ckpt[(tb, seed)])
                else:
                    fut = pool.submit(job_finetune, s, tb, seed, ckpt[(tb, seed)], job[3], job[4])
                pending[fut] = job
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, tb, seed = pending.pop(fut)[:3]
                res = fut.result()
                log.write(json.dumps({"job": kind, **res}, default=str) + "\n")
                log.flush()
                if kind == "base":
                    bases.append(res)
                    say(f"base {tb} seed {seed}: dense test {100 * res['dense_test']:.2f}% ({res['base_s']:.0f} s"
                        f"{', reused' if res['reused'] else ''}); {len(res['allocs'])} allocations planned, "
                        f"screened {res['screen_n']} in {res['screen_s']:.0f} s")
                    jobs = [("finetune", tb, seed, a, seed) for a in res["allocs"]]
                    jobs += [("finetune", tb, seed, a, seed + k * NOISE_SEED) for a in res["allocs"]
                             if a["kind"].startswith(DRAWN_PREFIXES) for k in range(1, s.slope_draws)]
                    jobs.append(("finetune", tb, seed, {**res["allocs"][0], "kind": "uniform, another seed"},
                                 seed + NOISE_SEED))
                    jobs += [("finetune", tb, seed, {**res["allocs"][0], "kind": "uniform, draw"}, seed + k * NOISE_SEED)
                             for k in range(2, s.uniform_draws)]
                    todo = []
                    for job in jobs:
                        key = _row_key({**job[3], "tb": tb, "seed": seed, "train_seed": job[4]})
                        if key in earlier and _same_finetune(earlier[key], s):
                            rows.append(earlier[key])
                        else:
                            todo.append(job)
                    say(f"{tb} seed {seed}: {len(jobs) - len(todo)} finetunes reused from an earlier run")
                    queue[:0] = todo
                else:
                    rows.append(res)
                    say(f"{tb} seed {seed} {res['kind']}: widths {list(res['widths'].values())} abn "
                        f"{100 * res['abn_val']:.1f} ep1 {100 * res['ep1_val']:.1f} -> val {100 * res['val_acc']:.2f} "
                        f"test {100 * res['test_acc']:.2f} ({res['wall_s']:.0f} s)")
    finally:
        pool.shutdown(cancel_futures=True)
        log.close()
    return bases, rows


def _same_finetune(row: dict, s: Settings) -> bool:
    """Whether a recorded finetune was trained as ``s`` asks (rows before --finetune-lr: LR 0.01)."""
    return row["finetune_epochs"] == s.finetune_epochs and row.get("finetune_lr", 0.01) == s.finetune_lr


def _row_key(r: dict) -> tuple:
    return (r["tb"], r["seed"], r["kind"], r.get("screen_rank"), json.dumps(r["widths"]), r["train_seed"])


def read_rows(root: Path) -> tuple[list[dict], list[dict]]:
    """Base models and finetunes recorded in ``root/rows.jsonl`` (the last record of each wins)."""
    bases: dict[tuple, dict] = {}
    rows: dict[tuple, dict] = {}
    for line in (root / "rows.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.pop("job") == "base":
            old = bases.get((r["tb"], r["seed"]))
            if old is not None and r["reused"] and not old["reused"]:  # keep the time of the real training
                r = {**r, "base_s": old["base_s"], "reused": False}
            if old is not None and not r["screen_n"] and old["screen_n"]:  # and of a screening a rerun skipped
                r = {**r, **{k: old[k] for k in ("screen_s", "screen_n", "projection_ms")}}
            bases[(r["tb"], r["seed"])] = r
        else:
            rows[_row_key(r)] = r
    return list(bases.values()), list(rows.values())


def refine(s: Settings, root: Path, epochs: int) -> None:
    """Finetune uniform and the best-by-val random allocation (of the first ``s.allocations``) of each
    testbed and seed of ``root/rows.jsonl`` again for ``epochs`` epochs (same data order as before):
    does the headroom survive a longer finetune? Recorded in ``rows.jsonl`` (kinds ``REFINED``);
    finetunes already recorded with these epochs are not run again."""
    bases, rows = read_rows(root)
    rows = first_random(s, bases, rows)
    done = {_row_key(r) for r in rows
            if r["kind"] in REFINED and r["finetune_epochs"] == epochs and r.get("of_first") == s.allocations}
    longer = replace(s, finetune_epochs=epochs)
    jobs = []
    for b in bases:
        if b["tb"] not in s.testbeds or b["seed"] not in s.seeds:
            continue
        mine = [r for r in rows if r["tb"] == b["tb"] and r["seed"] == b["seed"]]
        rnd = [r for r in mine if r["kind"] == "random"]
        if not rnd or not any(r["kind"] == "uniform" for r in mine):
            continue
        best = max(rnd, key=lambda r: (r["val_acc"], -r["macs"]))
        plan = {json.dumps(a["widths"]): a for a in b["allocs"]}
        for kind, a in zip(REFINED, (b["allocs"][0], plan[json.dumps(best["widths"])])):
            alloc = {**a, "kind": kind, "of_first": s.allocations}  # best of the first N random
            if _row_key({**alloc, "tb": b["tb"], "seed": b["seed"], "train_seed": b["seed"]}) not in done:
                jobs.append((b["tb"], b["seed"], str(root / base_name(s, b["tb"], b["seed"])), alloc))
    say(f"refine: {len(jobs)} finetunes of {epochs} epochs to run")
    with ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool, \
            open(root / "rows.jsonl", "a") as log:
        futs = [pool.submit(job_finetune, longer, tb, seed, ckpt, alloc, seed) for tb, seed, ckpt, alloc in jobs]
        for fut in futs:
            res = fut.result()
            log.write(json.dumps({"job": "finetune", **res}, default=str) + "\n")
            log.flush()
            say(f"{res['tb']} seed {res['seed']} {res['kind']}: test {100 * res['test_acc']:.2f}")


def _parse_profiles(p: argparse.ArgumentParser, items: list[str] | None) -> tuple | None:
    """``["head2=2,2,1,...", ...]`` -> ``(("head2", (2.0, 2.0, 1.0, ...)), ...)``; one line on a bad item."""
    if not items:
        return None
    out = []
    for item in items:
        name, sep, values = item.partition("=")
        try:
            vals = tuple(float(v) for v in values.split(","))
        except ValueError:
            vals = ()
        if not sep or not name or not vals or min(vals) <= 0:
            p.error(f"--profiles {item!r}: expected NAME=P1,...,PN with positive numbers, one per group")
        out.append((name, vals))
    return tuple(out)


def _group_names(tb: str) -> list[str]:
    """The prunable groups of testbed ``tb``'s model in model order (a --profiles item has one value
    per group), from an untrained model: the groups depend on neither the data's channels nor its
    classes."""
    from pruning.models import create_model
    from pruning.surgery import GroupGraph

    t = TESTBEDS[tb]
    model = create_model(t.model, 10, in_channels=1, width_mult=t.width_mult)
    return list(GroupGraph(model, torch.zeros(1, 1, t.image_size, t.image_size)).widths())


def _check_profiles(p: argparse.ArgumentParser, s: Settings) -> None:
    """One line (exit 2) when a --profiles item has not one value per group of every testbed,
    before any base model trains."""
    for tb in s.testbeds if s.profiles else ():
        names = _group_names(tb)
        for name, values in s.profiles:
            if len(values) != len(names):
                p.error(f"--profiles {name}: {len(values)} values for the {len(names)} groups of {tb} "
                        f"({', '.join(names)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny subset, 1 seed, few allocations")
    p.add_argument("--testbeds", nargs="+", choices=sorted(TESTBEDS), help="override the testbeds")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument("--allocations", type=int, help="random allocations finetuned per seed")
    p.add_argument("--screen", type=int, help="candidates screened by adaptive BN per seed")
    p.add_argument("--finetune-epochs", type=int, help="finetune epochs of every allocation")
    p.add_argument("--finetune-lr", type=float, help="finetune learning rate of every allocation (default 0.01)")
    p.add_argument("--base-epochs", type=int, help="dense training epochs (default: the testbed's own)")
    p.add_argument("--limit", type=int, help="training images (a seeded stratified subset of the official train set)")
    p.add_argument("--budget", type=float, help="the MACs budget as a fraction of the dense MACs (default 0.1)")
    p.add_argument("--uniform-draws", type=int, help="finetune uniform with this many data orders (the noise-matched "
                                                     "headroom: best of N uniform vs best of N random, by val)")
    p.add_argument("--slopes", type=float, nargs="+", help="depth-slope profiles exp(-S*i/(n-1)) to finetune "
                                                         "(S > 0: early groups wider)")
    p.add_argument("--profiles", nargs="+", metavar="NAME=P1,...,PN", help="named profiles (a relative keep value "
                   "per group, in model order) to finetune like the depth slopes")
    p.add_argument("--slopes-only", action="store_true", help="report only the depth slopes (and --profiles) "
                   "against uniform")
    p.add_argument("--slope-draws", type=int, help="data orders each depth slope is finetuned with (default 4)")
    p.add_argument("--no-graded", dest="graded", action="store_false", default=None,
                   help="leave out the cost-graded profiles (GRADED)")
    p.add_argument("--workers", type=int, help="worker processes (1 thread each)")
    p.add_argument("--refine-epochs", type=int, help="with --keep DIR of a finished run: finetune uniform and the "
                   "best random allocation by val again for this many epochs, then report")
    p.add_argument("--title", help="the report's heading (default: what it measures)")
    p.add_argument("--from", dest="source", nargs="+", help="only report what DIR/rows.jsonl of an earlier (--keep) run "
                   "holds; several DIRs (runs that differ in --finetune-lr, with --slopes): the slopes by finetune LR")
    p.add_argument("--keep", help="keep base models and rows.jsonl here and reuse base models found there "
                                  "(default: a temp dir, removed)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    over = {k: v for k, v in {"testbeds": tuple(args.testbeds) if args.testbeds else None,
                              "seeds": tuple(args.seeds) if args.seeds else None, "allocations": args.allocations,
                              "screen": args.screen, "finetune_epochs": args.finetune_epochs,
                              "finetune_lr": args.finetune_lr,
                              "base_epochs": args.base_epochs, "uniform_draws": args.uniform_draws,
                              "limit": args.limit, "budget": args.budget,
                              "workers": args.workers, "graded": args.graded,
                              "slopes": tuple(args.slopes) if args.slopes else None,
                              "slope_draws": args.slope_draws,
                              "profiles": _parse_profiles(p, args.profiles)}.items() if v is not None}
    s = replace(s, **over)
    if not 0 < s.budget < 1:
        p.error(f"--budget must be a fraction in (0, 1), got {s.budget:g}")
    _check_profiles(p, s)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    import shutil

    def show(bases: list[dict], rows: list[dict], wall: float) -> None:
        if args.slopes_only:
            report_slopes(s, rows, wall, args.title)
        else:
            report(s, bases, rows, wall, args.quick, args.title)

    if args.source and len(args.source) > 1:
        if not s.slopes:
            p.error("several --from DIRs compare depth slopes by finetune LR: give --slopes")
        report_by_lr(s, [read_rows(Path(d))[1] for d in args.source], args.title)
        return 0
    if args.source:
        show(*read_rows(Path(args.source[0])), 0.0)
        return 0
    if args.refine_epochs:
        if not args.keep:
            raise SystemExit("--refine-epochs needs --keep DIR of an earlier run")
        refine(s, Path(args.keep), args.refine_epochs)
        show(*read_rows(Path(args.keep)), 0.0)
        return 0
    root = Path(args.keep or tempfile.mkdtemp(prefix="ptheadroom-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    say(f"settings {asdict(s)}; work dir {root}")
    t0 = time.perf_counter()
    try:
        bases, rows = run(s, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    show(bases, rows, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
