"""allocation_headroom.py's Markdown reports: random allocations against uniform, the proxies'
rank correlations, the cost-graded profiles, the depth slopes (and by finetune LR)."""

from __future__ import annotations

import statistics

from headroom_settings import (GRADED, RANKED, REFINED, TESTBEDS, UNIFORM_KINDS, Settings, base_epochs, first_random,
                               profile_kind, slope_kind)


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
    _against_uniform(s, rows, "slope S", [(f"{sl:g}", slope_kind(sl)) for sl in slopes], pick=True)


def _profiles(s: Settings, rows: list[dict]) -> None:
    """``--profiles``: each named profile against uniform, as the depth slopes are."""
    if not s.profiles:
        return
    print("\n**Named profiles** (`--profiles NAME=p_1,...,p_n`: relative keep values per group in model order, "
          "projected to the budget): mean test accuracy over each profile's data orders minus the mean over "
          "uniform's, pt, per seed; *collapsed*: finetunes ending > 10 pt below uniform's mean.\n")
    _against_uniform(s, rows, "profile", [(f"{name} ({','.join(f'{v:g}' for v in values)})", profile_kind(name))
                                          for name, values in s.profiles], pick=False)


def _test_draws(s: Settings, rows: list[dict], tb: str, kinds: tuple[str, ...]) -> dict[int, list[float]]:
    """Per seed of ``s`` (those with any), the test accuracies of ``tb``'s finetunes of ``kinds``."""
    got = {seed: [r["test_acc"] for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] in kinds]
           for seed in s.seeds}
    return {seed: xs for seed, xs in got.items() if xs}


def _against_uniform(s: Settings, rows: list[dict], label: str, entries: list[tuple[str, str]], pick: bool) -> None:
    """The table of :func:`_slopes` and :func:`_profiles`: ``entries`` (shown name, row kind)."""
    print(f"| testbed | {label} | widths (seed {s.seeds[0]}) | draws | Δ mean test per seed (pt) | mean Δ (pt) | "
          f"collapsed |")
    print("|---|---:|---|---:|---|---:|---:|")
    for tb in s.testbeds:
        picks = []
        uni_draws = _test_draws(s, rows, tb, UNIFORM_KINDS)
        uni_by_seed = {seed: statistics.mean(xs) for seed, xs in uni_draws.items()}
        by_seed: dict[int, dict[str, list[dict]]] = {}
        if uni_by_seed:
            n_uni = [len(xs) for xs in uni_draws.values()]
            u0 = next((r for r in rows if r["tb"] == tb and r["seed"] == s.seeds[0] and r["kind"] == "uniform"), None)
            widths = " ".join(str(w) for w in u0["widths"].values()) if u0 else ""
            print(f"| {TESTBEDS[tb].label} | uniform (reference, mean test %) | {widths} | {min(n_uni)}–{max(n_uni)} | "
                  f"{' / '.join(_pct(u) for u in uni_by_seed.values())} | | |")
        for shown, kind in entries:
            ds, draws, collapsed, widths = [], [], 0, "-"
            for seed, u in uni_by_seed.items():
                mine = [r for r in rows if r["tb"] == tb and r["seed"] == seed and r["kind"] == kind]
                if not mine:
                    continue
                by_seed.setdefault(seed, {})[shown] = mine
                if seed == s.seeds[0]:
                    widths = " ".join(str(w) for w in mine[0]["widths"].values())
                ds.append(100 * (statistics.mean(r["test_acc"] for r in mine) - u))
                draws.append(len(mine))
                collapsed += sum(r["test_acc"] < u - 0.10 for r in mine)
            if ds:
                print(f"| {TESTBEDS[tb].label} | {shown} | {widths} | {min(draws)}–{max(draws)} | "
                      f"{' / '.join(f'{d:+.2f}' for d in ds)} | **{statistics.mean(ds):+.2f}** | {collapsed} |")
        for seed, got in by_seed.items():
            best = max(got, key=lambda k: statistics.mean(r["val_acc"] for r in got[k]))
            picks.append((best, 100 * (statistics.mean(r["test_acc"] for r in got[best]) - uni_by_seed[seed])))
        if pick and picks:
            print(f"| {TESTBEDS[tb].label} | picked by val: {' / '.join(b for b, _ in picks)} | | | "
                  f"{' / '.join(f'{d:+.2f}' for _, d in picks)} | **{statistics.mean(d for _, d in picks):+.2f}** | |")


def _base_epochs_text(s: Settings) -> str:
    return ", ".join(f"{TESTBEDS[tb].label}: {base_epochs(s, tb)} epochs" for tb in s.testbeds)


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
    _profiles(s, rows)
    if wall:
        print(f"\nTotal benchmark wall time {wall / 60:.1f} min ({s.workers} worker processes of 1 thread; a shared "
              f"machine).")


def report_by_lr(s: Settings, runs: list[list[dict]], title: str | None) -> None:
    """``--from DIR DIR ...``: the finetunes of runs that differ only in ``--finetune-lr``, side by side: per LR,
    uniform's and each depth slope's test accuracy (mean over its data orders, per seed) and the
    slope's gain over uniform. Rows recorded before ``--finetune-lr`` existed were trained at 0.01."""
    by_lr: dict[float, list[dict]] = {}
    for rows in runs:
        for r in rows:
            by_lr.setdefault(r.get("finetune_lr", 0.01), []).append(r)
    tb = s.testbeds[0]
    print(f"### {title or f'Depth slopes by finetune LR at {s.budget:.0%} MACs: {TESTBEDS[tb].label}'}\n")
    print(_setup_text(s).removesuffix(f" at LR {s.finetune_lr}.") + " at the LR of each row. Mean test accuracy "
          "over each profile's data orders (finetunes), per seed; Δ: the slope's mean minus uniform's, pt.\n")
    print("| finetune LR | uniform: test % per seed | draws | slope S | slope: test % per seed | draws | "
          "Δ per seed (pt) | mean Δ (pt) |")
    print("|---:|---|---:|---:|---|---:|---|---:|")

    def per_seed(rows: list[dict], kinds: tuple[str, ...]) -> tuple[dict[int, float], int]:
        got = _test_draws(s, rows, tb, kinds)
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
    rows = first_random(s, bases, rows)
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
    _profiles(s, rows)
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
