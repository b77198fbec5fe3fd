"""The Markdown report of ``search_vs_baselines.py``: one table per budget, the search's picks, its
ledger check and proxy correlation, the goals of issue 17 checked on mean test accuracy, and the
plot of proxy score against finetuned accuracy."""

from __future__ import annotations

import statistics

from pathlib import Path

from svb_settings import DISTILL_ALPHA, DISTILL_RANGES, DISTILL_T, TESTBEDS, ZHANG, Settings



ORDER = ["dense", "uniform l1", "uniform l1 + distill", "global Taylor (torch-pruning)", *(f"global {c}" for c in ZHANG),
         "adaptive grow/prune", "search, best trial", "search + finalize", "search + finalize --pick-alpha",
         "finalize: uniform at target", "search + finalize --distill", "search + finalize --distill --pick-alpha",
         "finalize --distill: uniform at target", *(f"search + finalize{d} --with-scratch{a}" for d in ("", " --distill")
                                                    for a in ("", " --pick-alpha")),
         "finalize --with-scratch: uniform from scratch", "finalize --distill --with-scratch: uniform from scratch",
         *(f"{a}{d} --long{b}" for d in ("", " --distill") for a, b in (("search + finalize", ""),
                                                                       ("search + finalize", " --pick-alpha"),
                                                                       ("finalize", ": uniform at target"))),
         "scratch, widths of (e)", "scratch, widths of (a)"]
LABEL = {"uniform l1": "(a) uniform L1", "uniform l1 + distill": "(a) uniform L1 + distillation", "global Taylor (torch-pruning)": "(b) global Taylor (torch-pruning)",
         **{f"global {c}": f"(c) iterative global {c}" for c in ZHANG}, "adaptive grow/prune": "(d) adaptive grow/prune",
         "search, best trial": "(e) search, best trial (short finetune)", "search + finalize":
         "(e) search + finalize (its pick)", "finalize: uniform at target": "(e) finalize's uniform L1 at the target",
         "search + finalize --distill": "(e) search + finalize --distill",
         "search + finalize --pick-alpha": "(e) search + finalize, read with --pick-alpha",
         "search + finalize --distill --pick-alpha": "(e) search + finalize --distill, read with --pick-alpha",
         "finalize --distill: uniform at target": "(e) finalize --distill's uniform L1 at the target", "scratch, widths of (e)": "(f) scratch, widths of (e)",
         "scratch, widths of (a)": "(f) scratch, widths of (a)", "dense": "dense",
         **{f"search + finalize{d} --with-scratch{a}": f"(e) search + finalize{d} --with-scratch{r}"
            for d in ("", " --distill") for a, r in (("", ""), (" --pick-alpha", ", read with --pick-alpha"))},
         **{f"finalize{d} --with-scratch: uniform from scratch": f"(e) finalize{d} --with-scratch's uniform L1 from "
            "scratch" for d in ("", " --distill")},
         **{f"search + finalize{d} --long{a}": f"(e) search + finalize{d}, long finetune{r}"
            for d in ("", " --distill") for a, r in (("", ""), (" --pick-alpha", ", read with --pick-alpha"))},
         **{f"finalize{d} --long: uniform at target": f"(e) finalize{d}'s uniform L1 at the target, long finetune"
            for d in ("", " --distill")}}


def _ms(xs: list[float]) -> str:
    xs = [100 * x for x in xs]
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def _span(xs: list[float]) -> str:
    """One value, or the range when the seeds differ (a pick finetuned on one seed, from scratch on another)."""
    return f"{min(xs):g}" if min(xs) == max(xs) else f"{min(xs):g}–{max(xs):g}"


def _mean(rows: list[dict], arm: str | None, key: str = "test_acc") -> float | None:
    xs = [r[key] for r in rows if r["arm"] == arm and "error" not in r]
    return statistics.mean(xs) if xs else None


def _paired(rows: list[dict], arm: str, rival: str | None) -> str:
    """Per seed, ``arm``'s test accuracy minus ``rival``'s (pt), and the standard error of their
    mean: how far the mean over so few seeds is from deciding a goal."""
    mine = {r.get("seed"): r["test_acc"] for r in rows if r["arm"] == arm and "error" not in r}
    theirs = {r.get("seed"): r["test_acc"] for r in rows if r["arm"] == rival and "error" not in r}
    d = [100 * (mine[k] - theirs[k]) for k in sorted(mine, key=str) if k in theirs]
    if len(d) < 2:
        return ""
    return (f"; per seed {', '.join(f'{x:+.2f}' for x in d)}, standard error of the mean "
            f"{statistics.stdev(d) / len(d) ** 0.5:.2f}")


def report(s: Settings, bases: dict[int, dict], rows: dict[float, list[dict]], wall: float, quick: bool,
           png: Path | None = None) -> None:
    dense_macs = statistics.mean(b["macs"] for b in bases.values())
    base_compute = statistics.mean(b["compute"] for b in bases.values())
    n_test = "10,000"
    train_n = s.limit - round(s.select_fraction * s.limit)
    tie = ", the search over depth slopes (`search.tie: slope`)" if s.tie == "slope" else ""
    print(f"### Search vs fixed pruning recipes (Fashion-MNIST, {s.label}{tie}){' — QUICK smoke run' if quick else ''}\n")
    print(f"Fashion-MNIST at {s.image_size}×{s.image_size}: {s.limit} training images of which a seeded stratified "
          f"{s.select_fraction:.0%} (~{s.limit - train_n}) is the selection split that no arm trains on (every arm, the "
          f"base model and the search train on the same ~{train_n}), {s.val_limit} validation images (seeded stratified "
          f"subsets of the official train set), the official {n_test} test images; `{s.label}` "
          f"({TESTBEDS[s.model].note}, {dense_macs / 1e6:.2f}M MACs). Dense: {s.base_epochs} epochs, LR {s.lr} (cosine). "
          f"Every pruning arm then gets {s.finetune_epochs} finetune epochs at LR {s.finetune_lr}; scratch arms train "
          f"{s.base_epochs + s.finetune_epochs} epochs at LR {s.lr}. Seeds {', '.join(map(str, s.seeds))} (each seed "
          f"its own split, base model and search); test accuracy mean ± std over seeds. The search: "
          f"{s.search_trials} trials per budget and seed on Ray (2 at a time), budget-exact "
          f"(`objectives.macs_targets: [budget]`: each trial's "
          + ("depth slope S in [-2, 2] (`search.tie: slope`) gives the profile exp(−S·i/(n−1)) over the groups in "
             "model order, scaled onto the budget" if s.tie == "slope" else
             "per-group keep ratios are a profile scaled onto the budget")
          + f"), TPE on val accuracy, criterion (l1 / taylor_fo) + distillation (off, or on "
          f"with α in {list(DISTILL_RANGES['distill_alpha'])} and T in {list(DISTILL_RANGES['distill_temperature'])}; "
          f"the fixed recipe (a) + distillation uses α={DISTILL_ALPHA:g}, T={DISTILL_T:g}), {s.search_epochs} finetune "
          f"epoch(s) per trial; `search.screen` scores {s.screen_candidates} random budget-exact profiles with the "
          f"`{s.screen_proxy}` proxy and enqueues the best {s.screen_keep} as trials; the uniform profile is enqueued "
          f"as a baseline trial. *Finalize* is `search.finalize` (`prunetune finalize NAME --top {s.finalize_top} "
          f"--epochs {s.finetune_epochs}`: the {s.finalize_top} best trials on val and the uniform L1 baseline at the "
          f"target, each finetuned {s.finetune_epochs} epochs from the base model, the pick made on the selection "
          f"split; `--distill`: every candidate distils the base model; *read with --pick-alpha*: the same "
          f"candidates, the pick kept at uniform unless the best on select beats it there with a one-sided exact "
          f"McNemar p ≤ {s.pick_alpha:g}, as `finalize --pick-alpha {s.pick_alpha:g}` picks"
          + (f"; `--with-scratch`: every candidate is also trained from scratch ({s.base_epochs + s.finetune_epochs} "
             f"epochs at LR {s.lr}, distilled with `--distill`, as `finalize --with-scratch --scratch-epochs "
             f"{s.base_epochs + s.finetune_epochs}`) and those runs compete for the pick; the reference of "
             f"--pick-alpha (and of every McNemar p) is then the uniform trained longest, from scratch"
             if s.finalize_scratch else "")
          + (f"; *long finetune*: the same finalize with every candidate finetuned "
             f"{s.base_epochs + s.finetune_epochs} epochs at LR {s.finetune_lr}, as long as the scratch arms train "
             f"(`finalize --epochs {s.base_epochs + s.finetune_epochs}`, in a copy of the experiment)"
             if s.finalize_long else "") + "). "
          f"Compute = training MACs (per-sample MACs × samples × 3, all epochs, + the teacher's forward passes when "
          f"distilling; base training included for arms "
          f"that start from the base model, every search trial included for (e); screening not counted) as a multiple "
          f"of the dense base training ({base_compute / 1e12:.2f} TMACs).\n")
    for frac in s.budgets:
        print(f"#### Budget {frac:.0%} of the dense MACs\n")
        print("| arm | MACs kept | test acc % | Δ vs dense (pt) | val acc % | training compute (× base) | epochs |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        dense = statistics.mean(b["test_acc"] for b in bases.values())
        for arm in ORDER:
            got = list(bases.values()) if arm == "dense" else [r for r in rows[frac] if r["arm"] == arm]
            ok = [r for r in got if "error" not in r]
            if not got and ("finalize" in arm or arm.startswith("global ") and not s.zhang_arms):
                continue  # a finalize variant or the (c) arms not run (--finalize-distill[-only], --no-zhang)
            if not ok:
                print(f"| {LABEL[arm]} | - | failed: {got[0]['error'] if got else 'not run'} | | | | |")
                continue
            # arms that never use the base model: no base training (a distilled one needs it as teacher)
            extra = 0 if arm.startswith(("scratch", "dense", "finalize --with-scratch")) else base_compute
            if arm.startswith("search + finalize"):  # finalizing comes after the whole search
                extra += _mean(rows[frac], "search, best trial", "compute") or 0
            compute = statistics.mean(r["compute"] for r in ok) + extra
            over = " (over budget)" if arm != "dense" and max(r["macs"] for r in ok) > frac * dense_macs else ""
            few = f" ({len(ok)} of {len(s.seeds)} seeds)" if len(ok) < len(s.seeds) else ""  # failed or not run yet
            print(f"| {LABEL[arm]} | {statistics.mean(r['macs'] for r in ok) / dense_macs:.1%}{over} | "
                  f"{_ms([r['test_acc'] for r in ok])}{few} | {100 * (statistics.mean(r['test_acc'] for r in ok) - dense):+.2f} | "
                  f"{_ms([r['val_acc'] for r in ok])} | {compute / base_compute:.2f} | "
                  f"{_span([r['epochs'] for r in ok])} |")
        print()
        for r in rows[frac]:
            if r["arm"] == "search, best trial" and "error" not in r:
                rho = "n/a (fewer than 3 pairs or constant)" if r["proxy_rho"] is None else f"{r['proxy_rho']:+.2f}"
                print(f"- seed {r['seed']}: search ran {r['trials']} trials ({r['finished']} finished, "
                      f"**{r['over_target']} over their target**); screened {r['screened']} candidates "
                      f"({r['screen_failed']} failed), proxy `{s.screen_proxy}` vs finetuned val accuracy: Spearman "
                      f"{rho} over {r['proxy_pairs']} finetuned candidates; best trial on val: "
                      f"{'the uniform baseline trial' if r['baseline_chosen'] else r['criterion']}"
                      f"{' (a screened candidate)' if r['screened_chosen'] else ''}"
                      f"{' + distillation' if r.get('distill') else ''} with widths "
                      f"{' '.join(map(str, r['widths'].values()))} (uniform by ratio: "
                      f"{' '.join(map(str, r['uniform_widths'].values()))}).")
        for r in rows[frac]:
            if r["arm"].startswith("search + finalize") and "error" not in r:
                vs = "uniform from scratch" if "--with-scratch" in r["arm"] else "uniform"  # the reference
                p = "" if r.get("select_p") is None else f", McNemar p vs {vs} {r['select_p']:.2f}"
                how = f" ({r['variant']})" if r.get("variant") else ""
                print(f"- seed {r['seed']}: `{r['arm']}` picked {'the uniform baseline' if r['pick_uniform'] else 'a search trial'}{how} "
                      f"(`{r['candidate']}`, of {r['candidates']} candidates; select {100 * (r['select_acc'] or 0):.2f}%{p}), "
                      f"MACs {r['macs'] / (r['macs_target'] * dense_macs):.2%} of its target, widths "
                      f"{' '.join(map(str, r['widths'].values()))}.")
        print()
    _summary(s, rows, dense_macs)
    _goals(s, bases, rows)
    if png is not None:
        print(f"\nProxy score against finetuned accuracy of the screened candidates that ran as trials: `{png}`.")
    if wall != wall:  # NaN: printed again by --report-from
        print("\n(Report regenerated from a kept run's arms.jsonl by --report-from.)")
        return
    print(f"\nTotal benchmark wall time {wall / 60:.1f} min ({s.workers} worker processes of 1 thread for the arms; "
          f"Ray with 2 one-CPU trials for the search; a shared machine).")


#: finalize's pick, plain and distilled, each also read with --pick-alpha (the same candidates)
FINALIZE_ARMS = ("search + finalize", "search + finalize --pick-alpha", "search + finalize --distill",
                 "search + finalize --distill --pick-alpha",
                 *(f"search + finalize{d} --with-scratch{a}" for d in ("", " --distill") for a in ("", " --pick-alpha")),
                 *(f"search + finalize{d} --long{a}" for d in ("", " --distill") for a in ("", " --pick-alpha")))


def _uniform_of(arm: str) -> str:
    """The uniform candidate of the finalize that made ``arm``'s pick."""
    return f"finalize{' --distill' * ('--distill' in arm)}{' --long' * ('--long' in arm)}: uniform at target"


def _scratch_uniform_of(arm: str) -> str | None:
    """The uniform candidate trained from scratch by the --with-scratch finalize that made ``arm``'s pick."""
    if "--with-scratch" not in arm:
        return None
    return arm.removeprefix("search + ").removesuffix(" --pick-alpha") + ": uniform from scratch"


def _summary(s: Settings, rows: dict[float, list[dict]], dense_macs: float) -> None:
    """The search's checks over every seed and budget: trials over target, the pick's distance to
    its target, how often finalize picked the uniform baseline, the proxy's correlation."""
    searches = [r for frac in s.budgets for r in rows[frac] if r["arm"] == "search, best trial" and "error" not in r]
    print("The search over every seed and budget:\n")
    print(f"- trials over their target (ledger: macs > macs_target × base MACs): "
          f"{sum(r['over_target'] for r in searches)} of {sum(r['finished'] for r in searches)} finished trials "
          f"in {len(searches)} searches")
    for arm in FINALIZE_ARMS:
        picks = [r for frac in s.budgets for r in rows[frac] if r["arm"] == arm and "error" not in r]
        if not picks:
            continue
        rel = [r["macs"] / (r["macs_target"] * dense_macs) for r in picks]
        print(f"- `{arm}` pick: MACs {min(rel):.2%} to {max(rel):.2%} of its target; the uniform baseline picked "
              f"{sum(r['pick_uniform'] for r in picks)} time(s), a search trial {sum(not r['pick_uniform'] for r in picks)} "
              f"time(s) of {len(picks)}")
        for rival in filter(None, (_uniform_of(arm), "uniform l1 + distill", _scratch_uniform_of(arm))):
            d = [100 * (r["test_acc"] - u["test_acc"]) for frac in s.budgets for r in rows[frac] if r["arm"] == arm
                 and "error" not in r for u in rows[frac] if u["arm"] == rival and "error" not in u
                 and u.get("seed") == r.get("seed")]
            if d:
                print(f"  - on test vs {LABEL.get(rival, rival)}: beat it in {sum(x > 0 for x in d)} of {len(d)} "
                      f"(seed, budget) runs (Δ pt: {', '.join(f'{x:+.2f}' for x in d)})")
    rhos = [r["proxy_rho"] for r in searches if r["proxy_rho"] is not None]
    if rhos:
        print(f"- proxy `{s.screen_proxy}` Spearman rank correlation with finetuned val accuracy: "
              f"{', '.join(f'{x:+.2f}' for x in rhos)} (mean {statistics.mean(rhos):+.2f})")
    else:
        print(f"- proxy `{s.screen_proxy}`: no rank correlation (fewer than 3 finetuned screened candidates per search)")
    print()


def _arm_goals(s: Settings, frac: float, arm: str) -> list[tuple[str, str, float, bool]]:
    """The goals the finalize arm ``arm`` is held to at budget ``frac``, in report order: (the
    rival arm, the goal's text, the margin in pt that ``arm``'s mean test accuracy must keep over
    the rival's, whether the line shows the per-seed differences). A goal whose rival was not run
    is skipped by the caller."""
    at, on = f"{frac:.0%}", f"{frac:.0%} ({s.label})"  # the +1.0 / 30% goals are the deeper testbed's
    ad, scratch_uni = "uniform l1 + distill", _scratch_uniform_of(arm)
    goals = [(ad, f"{at}: {arm} ≥ uniform L1 + distillation − 0.2 pt", -0.2, False),
             # the same trainer and epochs as the pick: the like-for-like baseline
             (_uniform_of(arm), f"{at}: {arm} ≥ finalize's own uniform L1 at the target − 0.2 pt", -0.2, False)]
    if abs(frac - 0.1) < 1e-9:
        goals += [(ad, f"{on}: {arm} ≥ uniform L1 + distillation + 1.0 pt", 1.0, True),
                  ("global Taylor (torch-pruning)", f"{on}: {arm} ≥ global Taylor (torch-pruning) + 1.0 pt", 1.0, True)]
        # (a) trains 5 epochs; the long and --with-scratch arms train far longer
        alike = _uniform_of(arm) if "--long" in arm else scratch_uni
        if alike is not None:
            goals.append((alike, f"{on}: {arm} ≥ uniform L1 trained alike (as long, the same way) + 1.0 pt, the goal "
                                 f"at equal training", 1.0, True))
    if abs(frac - 0.3) < 1e-9:
        goals.append((ad, f"{on}: {arm} ≥ uniform L1 + distillation", 0.0, False))
    if scratch_uni is not None:  # the same recipe at uniform widths: what the search's widths add
        goals.append((scratch_uni, f"{at}: {arm} ≥ its own uniform L1 from scratch, i.e. the widths add to the "
                                   f"recipe", 0.0, False))
    main = "search + finalize" if s.finalize_plain else "search + finalize --distill"
    if arm.removesuffix(" --pick-alpha") in (main, f"{main} --with-scratch", f"{main} --long"):
        # (f) trains the widths of the first finalize variant's pick; the longer-training and
        # --pick-alpha readings of that finalize are held to it too (the model a user would take)
        of = "" if arm == main else f", the widths of {main}'s pick"
        goals.append(("scratch, widths of (e)", f"{at}: {arm} ≥ the same widths from scratch (f){of}", 0.0, False))
    return goals


def _goals(s: Settings, bases: dict[int, dict], rows: dict[float, list[dict]]) -> None:
    """The goals of issue 17 ("Done when"), met or not, from the mean test accuracies. The deeper
    testbed's goals (+1.0 pt at 10%, >= uniform + distillation at 30%) are checked on any testbed
    but only count on the deeper one (the line says which testbed it ran on)."""
    dense = statistics.mean(b["test_acc"] for b in bases.values())
    dense_macs = statistics.mean(b["macs"] for b in bases.values())
    checks = []
    low = min(s.budgets)
    a = _mean(rows[low], "uniform l1")
    if a is not None:
        checks.append((f"design check: uniform L1 at {low:.0%} loses ≥ 2 pt vs dense ({100 * (a - dense):+.2f} pt)",
                       100 * (dense - a) >= 2.0))
    # Each finalize arm (plain, and --distill when run) is checked on its own: taking the better
    # of the two on test would be choosing on the test set.
    for frac in s.budgets:
        r = rows[frac]
        for arm in FINALIZE_ARMS:
            ef = _mean(r, arm)
            if ef is None:
                continue
            for rival, text, margin, paired in _arm_goals(s, frac, arm):
                other = _mean(r, rival)
                if other is not None:
                    d = 100 * (ef - other)
                    checks.append((f"{text} ({d:+.2f} pt{_paired(r, arm, rival) if paired else ''})", d >= margin))
    searches = [r for frac in s.budgets for r in rows[frac] if r["arm"] == "search, best trial" and "error" not in r]
    if searches:
        over = sum(r["over_target"] for r in searches)
        checks.append((f"0 trials over their target in every search ({over})", over == 0))
    picks = [r for frac in s.budgets for r in rows[frac] if r["arm"].startswith("search + finalize") and "error" not in r]
    if picks:
        worst = max(abs(1 - r["macs"] / (r["macs_target"] * dense_macs)) for r in picks)
        checks.append((f"the chosen model within 1% of its target (worst {worst:.2%})", worst <= 0.01))
    print(f"Goals of issue 17 on {s.label} (mean test accuracy over seeds; the +1.0 pt goals are set for the deeper "
          f"testbed)" + (f". (a) and (b) finetune {s.finetune_epochs} epochs; the --with-scratch and long-finetune arms "
                         f"train {s.base_epochs + s.finetune_epochs}, so their +1.0 pt against (a) and (b) is mostly "
                         f"training length: the line 'trained alike' is their like-for-like goal"
                         if s.finalize_scratch or s.finalize_long else "") + ":\n")
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")


def plot_proxy(s: Settings, rows: dict[float, list[dict]], out_dir: Path, quick: bool) -> Path | None:
    """Proxy score against finetuned val accuracy of the screened candidates that ran as trials,
    one colour per budget, Spearman per search in the legend; written to
    ``out_dir/svb_proxy_<model>[_slope][_b<budgets>][_s<seeds>][_quick].png`` (``_slope``: the search over
    depth slopes; ``_b10``: a run of other budgets than the default ones; ``_s0-5``: of other seeds). None when no search finetuned a screened candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searches = [(frac, r) for frac in s.budgets for r in rows[frac]
                if r["arm"] == "search, best trial" and "error" not in r and r["proxy_points"]]
    if not searches:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = "osd^v<>"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (frac, r) in enumerate(searches):
        pts = r["proxy_points"]
        rho = "n/a" if r["proxy_rho"] is None else f"{r['proxy_rho']:+.2f}"
        ax.scatter([100 * p[0] for p in pts], [100 * p[1] for p in pts], s=28,
                   color=colours[s.budgets.index(frac) % len(colours)], marker=markers[s.seeds.index(r["seed"]) % 7],
                   label=f"{frac:.0%}, seed {r['seed']}: Spearman {rho} (n={len(pts)})")
    ax.set_xlabel(f"proxy score `{s.screen_proxy}` (val acc %, before finetuning)")
    ax.set_ylabel(f"val acc % after the trial's {s.search_epochs} finetune epoch(s)")
    ax.set_title(f"Screening proxy vs finetuned accuracy, {s.label}{' (quick)' if quick else ''}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    only = "" if s.budgets == Settings.budgets else "_b" + "_".join(str(round(100 * f)) for f in s.budgets)
    if s.seeds != Settings.seeds and not quick:
        only += f"_s{min(s.seeds)}-{max(s.seeds)}" if len(s.seeds) > 1 else f"_s{s.seeds[0]}"
    path = out_dir / f"svb_proxy_{s.model}{'_slope' if s.tie == 'slope' else ''}{only}{'_quick' if quick else ''}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
