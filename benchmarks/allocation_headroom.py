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
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

DATASET = "fashion_mnist"


@dataclass(frozen=True)
class Testbed:
    model: str
    width_mult: float
    image_size: int
    base_epochs: int

    @property
    def label(self) -> str:
        w = "" if self.width_mult == 1.0 else f" ×{self.width_mult:g}"
        return f"{self.model}{w} @{self.image_size}px"


# cifar_vgg16 has 5 max-pools: it needs >= 32 px (28 px pools to 0x0). Narrowed to x0.25 so that
# its dense MACs (19.6M at 32 px, 1 channel) are within ~3x of small_vgg at 16 px.
TESTBEDS = {
    "small_vgg": Testbed("small_vgg", 1.0, 16, 15),
    "cifar_resnet20": Testbed("cifar_resnet20", 1.0, 16, 12),
    "cifar_vgg16": Testbed("cifar_vgg16", 0.25, 32, 10),
    "cifar_mobilenet": Testbed("cifar_mobilenet", 0.5, 32, 30),
}


@dataclass(frozen=True)
class Settings:
    testbeds: tuple[str, ...] = ("cifar_resnet20", "cifar_vgg16", "small_vgg")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 0.1
    limit: int = 4000
    val_limit: int = 1000
    lr: float = 0.05
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    batch_size: int = 64
    allocations: int = 16
    screen: int = 20
    screen_top: int = 2
    abn_batches: int = 20
    min_channels: int = 2
    workers: int = 2
    base_epochs: int | None = None  # None: the testbed's own
    graded: bool = True  # also the cost-graded profiles (GRADED)
    # uniform finetuned with this many data orders (at least 2: it and the noise floor's): the
    # best of N uniform draws by val is what the best of N random allocations by val must beat
    uniform_draws: int = 2
    slopes: tuple[float, ...] = ()  # depth-slope profiles (see the module docstring)
    slope_draws: int = 4  # data orders each depth slope is finetuned with


QUICK = Settings(seeds=(0,), limit=300, val_limit=200, finetune_epochs=2, allocations=3, screen=6, screen_top=1,
                 abn_batches=3, base_epochs=1)
#: Cost-graded profiles: p_g = (d_min / d_g)^beta ("cost-aware": channels that cost few MACs are kept
#: more) or (d_g / d_max)^beta ("cost-inverse"), d_g = the MACs one more channel of group g adds at
#: the uniform widths. Deterministic: one each per seed.
GRADED = (("cost-aware β=0.25", 0.25), ("cost-aware β=0.5", 0.5), ("cost-inverse β=0.25", -0.25))
NOISE_SEED = 1000  # the noise-floor finetune's data order: seed + NOISE_SEED


def slope_kind(slope: float) -> str:
    return f"depth slope {slope:g}"


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


def _epochs(s: Settings, tb: str) -> int:
    return s.base_epochs if s.base_epochs is not None else TESTBEDS[tb].base_epochs


def base_name(s: Settings, tb: str, seed: int) -> str:
    """File name of a base model: a hash of what determines it, so ``--keep DIR`` reuses it."""
    t = TESTBEDS[tb]
    recipe = [t.model, t.width_mult, t.image_size, DATASET, s.limit, s.val_limit, _epochs(s, tb), s.lr, s.batch_size,
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
        train(model, data, TrainConfig(epochs=_epochs(s, tb), lr=s.lr, batch_size=s.batch_size, seed=seed))
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
                             if a["kind"].startswith("depth slope") for k in range(1, s.slope_draws)]
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


REFINED = ("uniform, refined", "best random by val, refined")


def refine(s: Settings, root: Path, epochs: int) -> None:
    """Finetune uniform and the best-by-val random allocation (of the first ``s.allocations``) of each
    testbed and seed of ``root/rows.jsonl`` again for ``epochs`` epochs (same data order as before):
    does the headroom survive a longer finetune? Recorded in ``rows.jsonl`` (kinds ``REFINED``);
    finetunes already recorded with these epochs are not run again."""
    bases, rows = read_rows(root)
    rows = _first_random(s, bases, rows)
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


def _refined(s: Settings, rows: list[dict]) -> None:
    got = [r for r in rows if r["kind"] in REFINED and r.get("of_first") == s.allocations]
    if not got:
        return
    epochs = sorted({r["finetune_epochs"] for r in got})
    print(f"\n**Longer finetune** ({'/'.join(map(str, epochs))} epochs instead of {s.finetune_epochs}): uniform and "
          f"the random allocation that was best by val after {s.finetune_epochs} epochs, finetuned again from the base "
          f"model (same data order). Test accuracy %.\n")
    print("| testbed | seed | uniform | best random by val | Δ (pt) |")
    print("|---|---:|---:|---:|---:|")
    for tb in s.testbeds:
        ds = []
        for seed in s.seeds:
            u = next((r for r in got if r["tb"] == tb and r["seed"] == seed and r["kind"] == REFINED[0]), None)
            b = next((r for r in got if r["tb"] == tb and r["seed"] == seed and r["kind"] == REFINED[1]), None)
            if u and b:
                ds.append(b["test_acc"] - u["test_acc"])
                print(f"| {TESTBEDS[tb].label} | {seed} | {_pct(u['test_acc'])} | {_pct(b['test_acc'])} | "
                      f"{100 * ds[-1]:+.2f} |")
        if ds:
            print(f"| {TESTBEDS[tb].label} | **mean** | | | **{100 * statistics.mean(ds):+.2f}** |")


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


RANKED = ("uniform", "random", "abn-screened")  # the allocations the proxy correlations are over


def _graded(s: Settings, rows: list[dict]) -> None:
    kinds = [k for k, _ in GRADED if any(r["kind"] == k for r in rows)]
    if not kinds:
        return
    print("\n**Cost-graded profiles** (test accuracy, pt vs uniform of the same seed; per seed and mean): "
          "p_g = (d_min/d_g)^β (*cost-aware*: groups whose channels cost few MACs are kept wider) or "
          "(d_g/d_max)^β (*cost-inverse*), d_g = MACs of one more channel of group g at the uniform widths.\n")
    print("| testbed | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for tb in s.testbeds:
        cells = []
        for k in kinds:
            ds = []
            for seed in s.seeds:
                uni = next((r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] == "uniform"), None)
                got = next((r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] == k), None)
                if uni and got:
                    ds.append(100 * (got["test_acc"] - uni["test_acc"]))
            cells.append(f"{' / '.join(f'{x:+.2f}' for x in ds)} (mean {statistics.mean(ds):+.2f})" if ds else "-")
        print(f"| {TESTBEDS[tb].label} | " + " | ".join(cells) + " |")


UNIFORM_KINDS = ("uniform", "uniform, another seed", "uniform, draw")  # every finetune of the uniform cut


def _slopes(s: Settings, rows: list[dict]) -> None:
    """Per depth slope and seed: mean test over its draws minus the mean over uniform's draws; then
    the slope a search of this family would pick (best mean val over the draws) against uniform."""
    slopes = sorted(set(s.slopes) or {float(r["kind"].removeprefix("depth slope ")) for r in rows
                                      if r["kind"].startswith("depth slope")})  # --slopes, else all recorded
    if not slopes:
        return
    print("\n**Depth slopes** (p_g = exp(-S·i_g/(n-1)), i_g the group's index in model order, projected to the "
          "budget; S > 0 keeps the early, high-resolution groups wider): mean test accuracy over each slope's data "
          "orders minus the mean over uniform's, pt, per seed; *collapsed*: finetunes ending > 10 pt below "
          "uniform's mean; *picked by val*: the slope with the best mean val over its draws, per seed.\n")
    print("| testbed | slope S | widths (seed " + str(s.seeds[0]) + ") | draws | Δ mean test per seed (pt) | "
          "mean Δ (pt) | collapsed |")
    print("|---|---:|---|---:|---|---:|---:|")
    for tb in s.testbeds:
        picks = []
        uni_by_seed = {}
        for seed in s.seeds:
            uni = [r["test_acc"] for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] in UNIFORM_KINDS]
            if uni:
                uni_by_seed[seed] = statistics.mean(uni)
        by_seed: dict[int, dict[float, list[dict]]] = {}
        if uni_by_seed:
            n_uni = [sum(r["tb"] == tb and r["seed"] == seed and r["kind"] in UNIFORM_KINDS for r in rows)
                     for seed in uni_by_seed]
            u0 = next((r for r in rows if r["tb"] == tb and r["seed"] == s.seeds[0] and r["kind"] == "uniform"), None)
            widths = " ".join(str(w) for w in u0["widths"].values()) if u0 else ""
            print(f"| {TESTBEDS[tb].label} | uniform (reference, mean test %) | {widths} | {min(n_uni)}–{max(n_uni)} | "
                  f"{' / '.join(_pct(u) for u in uni_by_seed.values())} | | |")
        for sl in slopes:
            ds, draws, collapsed, widths = [], [], 0, "-"
            for seed, u in uni_by_seed.items():
                mine = [r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] == slope_kind(sl)]
                if not mine:
                    continue
                by_seed.setdefault(seed, {})[sl] = mine
                if seed == s.seeds[0]:
                    widths = " ".join(str(w) for w in mine[0]["widths"].values())
                ds.append(100 * (statistics.mean(r["test_acc"] for r in mine) - u))
                draws.append(len(mine))
                collapsed += sum(r["test_acc"] < u - 0.10 for r in mine)
            if ds:
                print(f"| {TESTBEDS[tb].label} | {sl:g} | {widths} | {min(draws)}–{max(draws)} | "
                      f"{' / '.join(f'{d:+.2f}' for d in ds)} | **{statistics.mean(ds):+.2f}** | {collapsed} |")
        for seed, got in by_seed.items():
            best = max(got, key=lambda sl: statistics.mean(r["val_acc"] for r in got[sl]))
            picks.append((best, 100 * (statistics.mean(r["test_acc"] for r in got[best]) - uni_by_seed[seed])))
        if picks:
            print(f"| {TESTBEDS[tb].label} | picked by val: {' / '.join(f'{b:g}' for b, _ in picks)} | | | "
                  f"{' / '.join(f'{d:+.2f}' for _, d in picks)} | **{statistics.mean(d for _, d in picks):+.2f}** | |")


def _first_random(s: Settings, bases: list[dict], rows: list[dict]) -> list[dict]:
    """``rows`` with only the first ``s.allocations`` random allocations of each base model's plan (the
    draws are sequential, so a run resumed with more allocations holds a report of fewer as a prefix)."""
    keep = {(b["tb"], b["seed"]): {json.dumps(a["widths"]) for a in [a for a in b["allocs"] if a["kind"] == "random"]
                                   [:s.allocations]} for b in bases}
    return [r for r in rows if r["kind"] != "random" or json.dumps(r["widths"]) in keep.get((r["tb"], r["seed"]), ())]


def _base_epochs_text(s: Settings) -> str:
    return ", ".join(f"{TESTBEDS[tb].label}: {_epochs(s, tb)} epochs" for tb in s.testbeds)


def _per_candidate(bases: list[dict]) -> str:
    """Mean ABN screening time per candidate over the base models that screened any."""
    screened = [b["screen_s"] / b["screen_n"] for b in bases if b["screen_n"]]
    return f"{statistics.mean(screened):.2f}" if screened else "-"


def _noise_matched(s: Settings, rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Best of N uniform finetunes (N data orders) by val against the best of the first N random
    allocations by val, both on test: a best-of-N pick also gains the luck of its finetune, so
    best random by val against a single uniform finetune overstates what the widths give.
    Returns {testbed: (mean Δ, seeds)}."""
    lines, out = [], {}
    for tb in s.testbeds:
        deltas = []
        for seed in s.seeds:
            mine = [r for r in rows if r["tb"] == tb and r["seed"] == seed]
            uni = sorted((r for r in mine if r["kind"] in UNIFORM_KINDS),
                         key=lambda r: r["train_seed"])
            rnd = [r for r in mine if r["kind"] == "random"]
            n = min(len(uni), len(rnd))
            uni, rnd = uni[:n], rnd[:n]
            if n < 3:
                continue
            bu = max(uni, key=lambda r: r["val_acc"])
            br = max(rnd, key=lambda r: (r["val_acc"], -r["macs"]))
            tests = [r["test_acc"] for r in uni]
            deltas.append(br["test_acc"] - bu["test_acc"])
            lines.append(f"| {TESTBEDS[tb].label} | {seed} | {len(uni)} | {_pct(statistics.mean(tests))} ± "
                         f"{100 * statistics.stdev(tests):.2f} | {_pct(bu['test_acc'])} | {_pct(br['test_acc'])} | "
                         f"{100 * deltas[-1]:+.2f} |")
        if deltas:
            out[tb] = (statistics.mean(deltas), len(deltas))
        if len(deltas) > 1:
            lines.append(f"| {TESTBEDS[tb].label} | **mean** | | | | | **{100 * statistics.mean(deltas):+.2f}** |")
    if not lines:
        return out
    print("\n**Noise-matched headroom** (best of N by val on both sides: N uniform finetunes with N data orders "
          "against the first N random allocations; test accuracy %):\n")
    print("| testbed | seed | N | uniform draws, test mean ± std | best uniform draw by val | best of N random by "
          "val | Δ (pt) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    return out


def _setup_text(s: Settings) -> str:
    return (f"Fashion-MNIST, {s.limit} training / {s.val_limit} validation images (seeded stratified subsets of the "
            f"official train set), the official 10,000 test images. Per testbed and seed one dense base model "
            f"({_base_epochs_text(s)}, LR {s.lr}, cosine); every allocation is cut from it by L1 to within ±1% of "
            f"{s.budget:.0%} of the dense MACs (`pruning.budget`, min {s.min_channels} channels per group) and "
            f"finetuned {s.finetune_epochs} epochs at LR {s.finetune_lr}.")


def report_slopes(s: Settings, rows: list[dict], wall: float, title: str | None) -> None:
    """``--slopes-only``: the depth-slope table alone (uniform's draws are its reference)."""
    print(f"### {title or f'Depth slopes at {s.budget:.0%} MACs'}\n")
    print(_setup_text(s) + f" Uniform: every finetune of the uniform cut in the run's rows (one per data order).")
    _slopes(s, rows)
    if wall:
        print(f"\nTotal benchmark wall time {wall / 60:.1f} min ({s.workers} worker processes of 1 thread; a shared "
              f"machine).")


def report_by_lr(s: Settings, sources: list[Path], title: str | None) -> None:
    """``--from DIR DIR ...``: runs that differ only in ``--finetune-lr``, side by side: per LR,
    uniform's and each depth slope's test accuracy (mean over its data orders, per seed) and the
    slope's gain over uniform. Rows recorded before ``--finetune-lr`` existed were trained at 0.01."""
    by_lr: dict[float, list[dict]] = {}
    for src in sources:
        for r in read_rows(src)[1]:
            by_lr.setdefault(r.get("finetune_lr", 0.01), []).append(r)
    tb = s.testbeds[0]
    print(f"### {title or f'Depth slopes by finetune LR at {s.budget:.0%} MACs: {TESTBEDS[tb].label}'}\n")
    print(_setup_text(s).removesuffix(f" at LR {s.finetune_lr}.") + " at the LR of each row. Mean test accuracy "
          "over each profile's data orders (finetunes), per seed; Δ: the slope's mean minus uniform's, pt.\n")
    print("| finetune LR | uniform: test % per seed | draws | slope S | slope: test % per seed | draws | "
          "Δ per seed (pt) | mean Δ (pt) |")
    print("|---:|---|---:|---:|---|---:|---|---:|")

    def per_seed(rows: list[dict], kinds: tuple[str, ...]) -> tuple[dict[int, float], int]:
        got = {seed: [r["test_acc"] for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] in kinds]
               for seed in s.seeds}
        got = {seed: xs for seed, xs in got.items() if xs}
        return {seed: statistics.mean(xs) for seed, xs in got.items()}, min(map(len, got.values()), default=0)

    for lr in sorted(by_lr):
        uni, n_uni = per_seed(by_lr[lr], UNIFORM_KINDS)
        for sl in s.slopes:
            mine, n = per_seed(by_lr[lr], (slope_kind(sl),))
            seeds = [seed for seed in mine if seed in uni]
            if not seeds:
                continue
            ds = [100 * (mine[seed] - uni[seed]) for seed in seeds]
            print(f"| {lr:g} | {' / '.join(_pct(uni[seed]) for seed in seeds)} | {n_uni} | {sl:g} | "
                  f"{' / '.join(_pct(mine[seed]) for seed in seeds)} | {n} | {' / '.join(f'{d:+.2f}' for d in ds)} | "
                  f"**{statistics.mean(ds):+.2f}** |")


def report(s: Settings, bases: list[dict], rows: list[dict], wall: float, quick: bool,
           title: str | None = None) -> None:
    rows = _first_random(s, bases, rows)
    title = title or f"Allocation headroom at {s.budget:.0%} MACs: uniform L1 vs budget-exact random allocations"
    print(f"### {title}{' — QUICK smoke run' if quick else ''}\n")
    print(_setup_text(s) + f" *random*: {s.allocations} random profiles per seed "
          f"(relative keep values uniform in [0.1, 1] or [0.4, 1], alternating); *best by val*: the random "
          f"allocation with the highest finetuned val accuracy, reported on test; "
          + (f"*ABN-screened*: the top {s.screen_top} of {s.screen} random profiles (low 0.1) by adaptive-BN val "
             f"accuracy (EagleEye), finetuned; " if s.screen else "no ABN screening (`--screen 0`); ")
          + f"*noise floor*: uniform finetuned again with another data order, |Δ test|. Test accuracy %.\n")
    print("| testbed | seed | dense | uniform | noise floor | best random by val | Δ vs uniform (pt) | max random "
          "(optimistic) | random mean ± std | ABN-screened best by val | Δ vs uniform (pt) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary: dict[str, dict[str, list[float]]] = {}
    for tb in s.testbeds:
        for seed in s.seeds:
            base = next((b for b in bases if b["tb"] == tb and b["seed"] == seed), None)
            mine = [r for r in rows if r["tb"] == tb and r["seed"] == seed]
            uni = next((r for r in mine if r["kind"] == "uniform"), None)
            rep = next((r for r in mine if r["kind"] == "uniform, another seed"), None)
            rnd = [r for r in mine if r["kind"] == "random"]
            scr = [r for r in mine if r["kind"] == "abn-screened"]
            if base is None and not mine:
                continue  # e.g. extra seeds run for one testbed only
            if base is None or uni is None or not rnd:
                print(f"| {TESTBEDS[tb].label} | {seed} | not run | | | | | | | | |")
                continue
            best = max(rnd, key=lambda r: (r["val_acc"], -r["macs"]))
            sbest = max(scr, key=lambda r: r["val_acc"]) if scr else None
            tests = [r["test_acc"] for r in rnd]
            d = summary.setdefault(tb, {"uniform": [], "best": [], "delta": [], "max": [], "noise": [], "sdelta": [],
                                        "mean": []})
            d.setdefault("gap", []).append(base["dense_test"] - uni["test_acc"])
            d["uniform"].append(uni["test_acc"])
            d["best"].append(best["test_acc"])
            d["delta"].append(best["test_acc"] - uni["test_acc"])
            d["max"].append(max(tests) - uni["test_acc"])
            d["mean"].append(statistics.mean(tests) - uni["test_acc"])
            if rep is not None:
                d["noise"].append(abs(rep["test_acc"] - uni["test_acc"]))
                d.setdefault("delta2", []).append(best["test_acc"] - (uni["test_acc"] + rep["test_acc"]) / 2)
            if sbest is not None:
                d["sdelta"].append(sbest["test_acc"] - uni["test_acc"])
            sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
            sdelta = f"{100 * (sbest['test_acc'] - uni['test_acc']):+.2f}" if sbest else "-"
            print(f"| {TESTBEDS[tb].label} | {seed} | {_pct(base['dense_test'])} | {_pct(uni['test_acc'])} | "
                  f"{_pct(abs(rep['test_acc'] - uni['test_acc'])) if rep else '-'} | {_pct(best['test_acc'])} | "
                  f"{100 * (best['test_acc'] - uni['test_acc']):+.2f} | {_pct(max(tests))} | "
                  f"{_pct(statistics.mean(tests))} ± {100 * sd:.2f} | {_pct(sbest['test_acc']) if sbest else '-'} | "
                  f"{sdelta} |")
    print("\n**Mean over seeds** (pt vs uniform on test):\n")
    print("| testbed | seeds | dense − uniform (pt) | uniform test % | best random by val | same, vs mean of both "
          "uniform "
          "finetunes | max random (optimistic) | random mean | ABN-screened best by val | noise floor (mean abs) | "
          "headroom ≥ 1 pt? |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    verdicts = []
    for tb, d in summary.items():
        m = {k: (statistics.mean(v) if v else float("nan")) for k, v in d.items()}
        ok = 100 * m["delta"] >= 1.0
        sdelta = "-" if m["sdelta"] != m["sdelta"] else f"{100 * m['sdelta']:+.2f}"  # NaN: nothing screened
        verdicts.append((tb, ok, m["delta"], len(d["delta"])))
        print(f"| {TESTBEDS[tb].label} | {len(d['delta'])} | {100 * m['gap']:.2f} | {_pct(m['uniform'])} | "
              f"{100 * m['delta']:+.2f} | {100 * m.get('delta2', float('nan')):+.2f} | {100 * m['max']:+.2f} | "
              f"{100 * m['mean']:+.2f} | {sdelta} | {100 * m['noise']:.2f} | "
              f"{'**yes**' if ok else 'no'} |")
    print("\n**Proxy rank correlations** (Spearman, per seed, over the finetuned uniform + random + ABN-screened "
          "allocations): adaptive-BN val accuracy before finetuning (`abn`) and val accuracy after the first "
          "finetune epoch (`ep1`), against the finetuned val and test accuracy.\n")
    print("| testbed | seed | n | abn ~ val | abn ~ test | ep1 ~ val | ep1 ~ test |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tb in s.testbeds:
        for seed in s.seeds:
            pts = [r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] in RANKED]
            if len(pts) < 3:
                continue
            c = [spearman([r[p] for r in pts], [r[t] for r in pts]) for p in ("abn_val", "ep1_val")
                 for t in ("val_acc", "test_acc")]
            print(f"| {TESTBEDS[tb].label} | {seed} | {len(pts)} | " + " | ".join(f"{x:+.2f}" for x in c) + " |")
        # all seeds together, each value centred on its seed's mean (seeds differ in base model and split)
        pooled: dict[str, list[float]] = {k: [] for k in ("abn_val", "ep1_val", "val_acc", "test_acc")}
        n_seeds = 0
        for seed in s.seeds:
            pts = [r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] in RANKED]
            if len(pts) < 3:
                continue
            n_seeds += 1
            for k, v in pooled.items():
                mean = statistics.mean(r[k] for r in pts)
                v += [r[k] - mean for r in pts]
        if n_seeds > 1:
            c = [spearman(pooled[p], pooled[t]) for p in ("abn_val", "ep1_val") for t in ("val_acc", "test_acc")]
            print(f"| {TESTBEDS[tb].label} | pooled ({n_seeds} seeds, centred) | {len(pooled['val_acc'])} | "
                  + " | ".join(f"{x:+.2f}" for x in c) + " |")
    _graded(s, rows)
    _slopes(s, rows)
    _refined(s, rows)
    matched = _noise_matched(s, rows)
    print("\n**Timings** (1 thread per worker, on a shared 2-core machine):\n")
    print("| testbed | base training s (mean) | one projection ms | ABN screen s per candidate | one finetune s "
          "(mean, incl. cut + ABN + test eval) |")
    print("|---|---:|---:|---:|---:|")
    for tb in s.testbeds:
        bs = [b for b in bases if b["tb"] == tb]
        trained = [b["base_s"] for b in bs if not b["reused"]]
        fs = [r["wall_s"] for r in rows if r["tb"] == tb and r["kind"] not in REFINED]  # the run's epochs
        if not bs or not fs:
            continue
        print(f"| {TESTBEDS[tb].label} | {f'{statistics.mean(trained):.0f}' if trained else 'reused'} | "
              f"{statistics.mean(b['projection_ms'] for b in bs):.1f} | "
              f"{_per_candidate(bs)} | {statistics.mean(fs):.1f} |")
    print()
    yes = [tb for tb, ok, _, _ in verdicts if ok]
    each = ", ".join(f"{TESTBEDS[tb].label} {100 * d:+.2f} pt ({n} seeds)" for tb, _, d, n in verdicts)
    if yes:
        print(f"Verdict: headroom ≥ 1 pt (best random allocation by val vs uniform, mean test over seeds) on "
              f"{', '.join(TESTBEDS[tb].label for tb in yes)}; per testbed: {each}.")
    else:
        print(f"Verdict: no testbed shows headroom ≥ 1 pt (best random allocation by val vs uniform, mean test over "
              f"seeds): {each}.")
    if matched:
        print("Noise-matched (best of N uniform finetunes by val against the best of N random allocations by val), "
              "which is what the widths themselves give: " + ", ".join(
                  f"{TESTBEDS[tb].label} {100 * d:+.2f} pt ({n} seeds{'' if 100 * d >= 1.0 else ', < 1 pt'})"
                  for tb, (d, n) in matched.items()) + ".")
    if wall:
        print(f"\nTotal benchmark wall time {wall / 60:.1f} min ({s.workers} worker processes of 1 thread; a shared "
              f"machine).")


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
    p.add_argument("--slopes-only", action="store_true", help="report only the depth slopes against uniform")
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
                              "slope_draws": args.slope_draws}.items() if v is not None}
    s = replace(s, **over)
    if not 0 < s.budget < 1:
        p.error(f"--budget must be a fraction in (0, 1), got {s.budget:g}")
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
        report_by_lr(s, [Path(d) for d in args.source], args.title)
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
