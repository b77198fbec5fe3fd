"""The Markdown report of ``search_vs_baselines.py``: one table per budget, the search's picks,
and the goals of issue 10 checked on mean test accuracy."""

from __future__ import annotations

import statistics

from svb_settings import DISTILL_ALPHA, DISTILL_RANGES, DISTILL_T, MODEL, ZHANG, Settings



ORDER = ["dense", "uniform l1", "uniform l1 + distill", "global Taylor (torch-pruning)", *(f"global {c}" for c in ZHANG),
         "adaptive grow/prune", "search, best trial", "search, after finalize", "scratch, widths of (e)",
         "scratch, widths of (a)"]
LABEL = {"uniform l1": "(a) uniform L1", "uniform l1 + distill": "(a) uniform L1 + distillation", "global Taylor (torch-pruning)": "(b) global Taylor (torch-pruning)",
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
          f"budget as a constraint, per-group keep ratios + criterion (l1 / taylor_fo) + distillation (off, or on "
          f"with α in {list(DISTILL_RANGES['distill_alpha'])} and T in {list(DISTILL_RANGES['distill_temperature'])}; "
          f"the fixed recipe (a) + distillation uses α={DISTILL_ALPHA:g}, T={DISTILL_T:g}), {s.search_epochs} finetune "
          f"epoch(s) per trial; chosen on val, reported on test. *Finalize* is `search.finalize` (`prunetune "
          f"finalize NAME --top 1 --epochs {s.finetune_epochs}`: the best trial within the budget on val, "
          f"finetuned {s.finetune_epochs} epochs from the base model, on Ray). "
          f"Compute = training MACs (per-sample MACs × samples × 3, all epochs, + the teacher's forward passes when "
          f"distilling; base training included for arms "
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
                      f"{'the uniform baseline trial' if r['baseline_chosen'] else r['criterion']}"
                      f"{' + distillation' if r.get('distill') else ''} with widths "
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
