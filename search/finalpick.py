"""Finalize's fair pick (issue 17): per target, the top K trials *and* the uniform baseline,
retrained alike, picked on the selection split.

A search ranks its trials on val, so the best of them on val is biased upwards (the
winner's curse): on fresh data it may lose to the uniform baseline it was meant to beat.
Finalize therefore retrains, per MACs target,

- the ``top`` trials of that target best on val, each a different cut and none the search's
  own uniform L1 baseline trial (:func:`choose_target_sources`), and
- the *uniform baseline* at the same target: every group the same keep ratio, L1, the
  all-ones profile projected onto the target's MACs as a search trial's profile is
  (:func:`search.trial.targets.project_widths`),

all with the same epochs and the same training variant (finetuned or from scratch, with
or without distillation of the base model), scores every one on ``DataBundle.select``
(carved from train by ``data.select_fraction``: no trial trained on it, the search never
ranked on it) and *picks* the most accurate there. The pick is what finalize hands back.
Val, select and test are reported for every candidate; test decides nothing.

Targets: trials carrying ``macs_target`` (a fraction of the base MACs) are grouped by it;
without that column, all trials are one target whose MACs are those of the best trial.
Without a selection split (an experiment started before it, or ``select_fraction: null``)
the pick falls back to val, and the summary says so.

This module imports neither Ray nor Optuna (``pareto --final`` reads
:mod:`search.results.final`, not this module).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pruning.budget import uniform_profile
from pruning.train import hits, resolve_device
from search.report.table import human_count
from search.results.final import (FINAL_EXTRA_FIELDS, P_CANDIDATE, P_TARGET, P_TARGET_LABEL, P_UNIFORM, P_VARIANT,
                                  SOURCE_KEY)
from search.results.ledger import pareto_front
from search.results.schema import is_missing, params_of
from search.trial.materialize import experiment_data
from search.trial.params import baseline_defaults, ratio_key
from search.trial.targets import project_widths

__all__ = ["FINAL_EXTRA_FIELDS", "UNIFORM", "Candidate", "Target", "Variant", "asked_epochs", "candidate_params", "candidates",
           "choose_sources", "choose_target_sources", "compare_variants", "final_params", "mcnemar_p", "p_values", "pick_rows", "plan_targets", "reference_variant", "score_select",
           "summary_text", "uniform_widths"]

log = logging.getLogger(__name__)

#: The ``candidate`` key prefix of a uniform baseline (``uniform@<target>``).
UNIFORM = "uniform"
@dataclasses.dataclass(frozen=True)
class Variant:
    """How a candidate is trained: finetuned from the pruned base or from scratch, distilled or not."""

    from_scratch: bool = False
    distill: bool = False

    @property
    def name(self) -> str:
        return ("scratch" if self.from_scratch else "finetune") + ("+distill" if self.distill else "")

    @property
    def suffix(self) -> str:
        """Appended to a candidate's key; the plain finetune has none (keys of older finalizes)."""
        return "" if self == Variant() else "+" + self.name.removeprefix("finetune+")


@dataclasses.dataclass(frozen=True)
class Target:
    """One MACs target: its label, its MACs (a fraction of the base, or absolute) and its top trials."""

    label: str
    fraction: float | None  # macs_target of its trials (fraction of the base MACs); None: ``macs`` is absolute
    macs: int | None  # absolute MACs of the target (the best trial's) when ``fraction`` is None
    sources: pd.DataFrame  # the top trials' rows, best val first

    def target_macs(self, base_macs: float) -> int:
        return int(math.floor(self.fraction * base_macs)) if self.fraction is not None else int(self.macs or 0)

    @property
    def key(self) -> str:
        return f"{self.fraction:g}" if self.fraction is not None else f"{self.macs}macs"

    def macs_target(self) -> float | None:
        """The target as a fraction of the base MACs (the best trial's ``macs_ratio`` without ``fraction``)."""
        if self.fraction is not None:
            return float(self.fraction)
        ratio = self.sources["macs_ratio"].iloc[0] if "macs_ratio" in self.sources else None
        return None if is_missing(ratio) else float(ratio)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One finalize run: a search trial's widths (``row``) or the uniform baseline, in a variant."""

    target: Target
    variant: Variant
    row: Mapping[str, Any] | None  # the trials row; None for the uniform baseline

    @property
    def uniform(self) -> bool:
        return self.row is None

    @property
    def base_key(self) -> str:
        return f"{UNIFORM}@{self.target.key}" if self.row is None else str(self.row["trial_id"])

    @property
    def key(self) -> str:
        return self.base_key + self.variant.suffix


# --------------------------------------------------------------------------- what to run


#: Params of a trial that the from-scratch run keeps (distillation); the widths come from the row.
_SCRATCH_KEEPS = ("distill", "distill_alpha", "distill_temperature")


def choose_sources(trials: pd.DataFrame, top: int, macs_budget: int | None = None) -> pd.DataFrame:
    """The ``top`` front trials (val_acc max, MACs min) with the highest val accuracy
    (ties: fewer MACs, then trial id), best first. With ``macs_budget`` (the search's
    ``objectives.macs_budget``) the front is that of the trials within the budget: the
    others were infeasible for the search, and the most accurate of them would otherwise
    fill the top K."""
    if macs_budget is not None:
        trials = trials[trials["macs"] <= macs_budget]
    return _best_val_first(pareto_front(trials)).head(top).reset_index(drop=True)


def _best_val_first(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` by val accuracy, best first (ties: fewer MACs, then trial id)."""
    return trials.sort_values(["val_acc", "macs", "trial_id"], ascending=[False, True, True], kind="mergesort")


def final_params(row: Mapping[str, Any], epochs: int, from_scratch: bool, group_names: Sequence[str],
                 base_widths: Sequence[int]) -> dict[str, Any]:
    """The params of the final run of the trials row ``row`` (see the module docstring)."""
    params = params_of(row)
    if from_scratch:
        widths = dict(zip(row["group_names"], (int(w) for w in row["widths"])))
        out: dict[str, Any] = {"mode": "scratch", "scratch_epochs": int(epochs)}
        out.update({k: params[k] for k in _SCRATCH_KEEPS if k in params})
        out.update({ratio_key(g): widths[g] / bw for g, bw in zip(group_names, base_widths)})
    else:
        out = dict(params)
        out[_epochs_key(params)] = int(epochs)
    out[SOURCE_KEY] = str(row["trial_id"])
    return out


def _epochs_key(params: Mapping[str, Any]) -> str:
    return "scratch_epochs" if params.get("mode") == "scratch" else "finetune_epochs"


def asked_epochs(row: Mapping[str, Any]) -> int | None:
    """The epochs a ``final.parquet`` row's run was asked to train (from its params; None if unset)."""
    params = params_of(row)
    value = params.get(_epochs_key(params))
    return None if value is None else int(value)


def choose_target_sources(trials: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` finished trials of one MACs target with the highest val accuracy (ties: fewer MACs,
    then trial id), best first, each a different cut: not the search's uniform L1 baseline
    trial (finalize retrains the uniform baseline anyway) and no two with the same widths
    and criterion (the better on val stays). Budget-exact trials all sit within ~1% of the
    target, so their Pareto front would rank MACs noise: every trial of the target competes."""
    done = trials[(trials["status"] == "TERMINATED") & trials["val_acc"].notna() & trials["macs"].notna()]
    order = _best_val_first(done)
    keep, seen = [], set()
    for i, row in zip(order.index, order.to_dict("records")):
        params = params_of(row)
        cut = (tuple(int(w) for w in row["widths"]), str(row.get("criterion")))
        if (params.get("baseline") == UNIFORM and cut[1] == "l1") or cut in seen:
            continue
        seen.add(cut)
        keep.append(i)
        if len(keep) == top:
            break
    return order.loc[keep].reset_index(drop=True)


def plan_targets(trials: pd.DataFrame, top: int, macs_budget: int | None = None) -> list[Target]:
    """The targets of a search and the ``top`` trials of each (see the module docstring), in
    increasing MACs; empty when no trial finished."""
    if "macs_target" in trials.columns and trials["macs_target"].notna().any():
        targets = []
        for fraction in sorted(trials["macs_target"].dropna().unique()):
            chosen = choose_target_sources(trials[trials["macs_target"] == fraction], top)
            if not chosen.empty:
                targets.append(Target(f"{100 * fraction:g}% MACs", float(fraction), None, chosen))
        return targets
    chosen = choose_sources(trials, top, macs_budget)
    if chosen.empty:
        return []
    best = chosen.iloc[0]
    ratio = best.get("macs_ratio")
    share = "" if is_missing(ratio) else f" = {100 * float(ratio):.1f}%"
    return [Target(f"{int(best['macs']):,} MACs (best trial{share})", None, int(best["macs"]), chosen)]


def candidates(targets: Sequence[Target], variant: Variant) -> list[Candidate]:
    """Per target: its top trials, then its uniform baseline, all in ``variant``."""
    out = []
    for t in targets:
        out += [Candidate(t, variant, row) for row in t.sources.to_dict("records")]
        out.append(Candidate(t, variant, None))
    return out


def reference_variant(main: Variant, competing: Sequence[Variant], epochs_of: Mapping[Variant, int]) -> Variant:
    """The variant whose uniform baseline is a target's reference (``--pick-alpha`` keeps it
    unless a search candidate beats it significantly; every ``select_p`` is against it): of
    ``main`` and the ``competing`` variants, the one trained the most epochs (``epochs_of``),
    ``main`` on ties. With ``--with-scratch`` that is usually the uniform from scratch: the
    longest-trained uniform is the strongest default a search has to beat (measured in the
    README's search_vs_baselines blocks: with the finetuned uniform as the reference, the
    safe pick fell below the uniform trained from scratch)."""
    return max([main, *competing], key=lambda v: (epochs_of.get(v, 0), v == main))


def compare_variants(main: Variant) -> list[Variant]:
    """What ``--compare`` adds for a pick: of {finetune, finetune + distillation, from scratch
    (distilled if ``main`` distils)}, those that are not ``main``."""
    wanted = [Variant(False, False), Variant(False, True), Variant(True, main.distill)]
    return [v for v in wanted if v != main]


def uniform_widths(base: Any, target_macs: int, input_shape: Sequence[int], min_channels: int,
                   round_to: int) -> list[int]:
    """Per base group, the widths of the uniform cut (the same keep ratio in every group) at
    ``target_macs``: the all-ones profile projected onto it exactly as a budget-exact search
    trial's profile is (``trial.targets.project_widths``: in about [0.99, 1] x the target,
    never above it), so finalize's uniform baseline is the search's uniform baseline trial."""
    widths = {g: int(w) for g, w in zip(base.group_names, base.widths)}
    kept = project_widths(base.model, widths, uniform_profile(widths), int(target_macs), input_shape,
                          min_channels=min_channels, round_to=round_to)
    return [kept[g] for g in base.group_names]


def candidate_params(cand: Candidate, epochs: int, cfg: Any, base: Any, input_shape: Sequence[int]) -> dict[str, Any]:
    """The trial params of ``cand``'s run: the source trial's params (or, for the uniform
    baseline, an L1 one-step prune at the bisected widths) with ``epochs`` epochs, trained
    as its variant says, distillation forced on or off alike for every candidate."""
    names, widths = list(base.group_names), [int(w) for w in base.widths]
    row: Mapping[str, Any]
    if cand.row is None:
        target_macs = cand.target.target_macs(float(base.metrics["macs"]))
        kept = uniform_widths(base, target_macs, input_shape, cfg.search.min_channels, cfg.search.round_to)
        params = {"mode": "prune", "criterion": "l1", "steps": 1, **{ratio_key(g): k / w for g, k, w in
                                                                     zip(names, kept, widths)}}
        row = {"trial_id": cand.base_key, "group_names": names, "widths": kept, "params_json": json.dumps(params)}
    else:
        row = cand.row
    out = final_params(row, epochs, cand.variant.from_scratch, names, widths)
    for k in ("distill", "distill_alpha", "distill_temperature"):
        out.pop(k, None)
    if cand.variant.distill:  # the middle of the search space's ranges, as a trial without those params gets
        default = baseline_defaults(cfg)
        out.update(distill=True, distill_alpha=default["distill_alpha"],
                   distill_temperature=default["distill_temperature"])
    out[SOURCE_KEY] = None if cand.uniform else str(cand.row["trial_id"])  # type: ignore[index]
    out.update({P_CANDIDATE: cand.key, P_VARIANT: cand.variant.name, P_TARGET: cand.target.macs_target(),
                P_TARGET_LABEL: cand.target.label, P_UNIFORM: cand.uniform})
    return out


# --------------------------------------------------------------------------- scoring and the pick


def score_select(cfg: Any, final: pd.DataFrame, load_model: Any) -> dict[str, dict[str, Any]]:
    """``{candidate key: {select_acc, select_hits}}`` of the finished rows of ``final`` that
    lack ``select_acc`` (``load_model(row)`` gives a row's model; ``select_hits``: which
    examples of the selection split it got right, packed bits); empty without a selection split."""
    data = experiment_data(cfg)
    if data.select is None:
        return {}
    device = resolve_device(cfg.train.device)
    out = {}
    for row in final.to_dict("records"):
        if row["status"] != "TERMINATED" or not is_missing(row.get("select_acc")) or is_missing(row.get("candidate")):
            continue
        right = hits(load_model(row).to(device), data.select, batch_size=cfg.train.latency_batch * 8, device=device)
        out[str(row["candidate"])] = {"select_acc": int(right.sum()) / max(1, len(right)),
                                      "select_hits": np.packbits(right.numpy()).tobytes()}
    return out


def mcnemar_p(better: bytes, than: bytes) -> float:
    """One-sided exact McNemar p-value that the model of ``better`` is more accurate than that
    of ``than`` on the same examples (packed hits as :func:`score_select` stores them): of the
    examples exactly one of them got right, the chance of ``better`` winning at least as many
    under a fair coin. 1.0 when they never disagree."""
    a = np.unpackbits(np.frombuffer(better, dtype=np.uint8)).astype(bool)
    b = np.unpackbits(np.frombuffer(than, dtype=np.uint8)).astype(bool)
    if len(a) != len(b):
        raise ValueError(f"hits of {len(a)} and {len(b)} examples: not the same split")
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    n = wins + losses
    return 1.0 if n == 0 else sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def _reference(rows: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """The reference row among ``rows``: the candidate ``reference``, else the uniform baseline."""
    if reference is not None:
        return rows[rows["candidate"] == reference].head(1)
    return rows[rows["is_uniform"] == True].head(1)  # noqa: E712 (nullable column)


def p_values(final: pd.DataFrame, keys: Sequence[str], reference: str | None = None) -> dict[str, float]:
    """``{candidate: select_p}`` for the finished rows among ``keys`` (one target's candidates)
    other than the reference: :func:`mcnemar_p` against the reference, the candidate
    ``reference`` (with several variants competing: :func:`reference_variant`'s uniform baseline),
    else the uniform baseline among ``keys``. Empty without that row or without hits (no
    selection split, an older finalize)."""
    rows = final[final["candidate"].isin(list(keys)) & (final["status"] == "TERMINATED")]
    ref = _reference(rows, reference)
    if ref.empty or is_missing(ref.iloc[0].get("select_hits")):
        return {}
    base, ref_key = ref.iloc[0]["select_hits"], ref.iloc[0]["candidate"]
    return {str(r["candidate"]): mcnemar_p(r["select_hits"], base) for r in rows.to_dict("records")
            if r["candidate"] != ref_key and not is_missing(r.get("select_hits"))}


def pick_rows(final: pd.DataFrame, keys: Sequence[str], alpha: float | None = None,
              reference: str | None = None) -> pd.DataFrame:
    """The pick among the finished rows whose candidate is in ``keys`` (one target's
    candidates): the best select accuracy; ties (or no selection split): the best val
    accuracy, then fewer MACs, then the candidate key. With ``alpha``, the reference (the
    candidate ``reference``, else the uniform baseline among ``keys``) stays the pick unless
    that best candidate beats it on select with ``select_p`` (:func:`p_values`) at most
    ``alpha``. Empty if none finished."""
    rows = final[final["candidate"].isin(list(keys)) & (final["status"] == "TERMINATED")]
    if rows.empty:
        return rows
    order = rows.assign(_sel=rows["select_acc"].fillna(-1.0)).sort_values(
        ["_sel", "val_acc", "macs", "candidate"], ascending=[False, False, True, True], kind="mergesort")
    best = order.head(1).drop(columns="_sel")
    ref = _reference(rows, reference)
    p = best.iloc[0].get("select_p")
    if alpha is not None and not ref.empty and best.iloc[0]["candidate"] != ref.iloc[0]["candidate"] \
            and not is_missing(p) and float(p) > alpha:
        return ref
    return best


# --------------------------------------------------------------------------- the report


def _true(v: Any) -> bool:
    """A nullable flag as read back (Python, numpy or pandas bool; null is False)."""
    return not is_missing(v) and bool(v)


def _or(v: Any, default: float) -> float:
    return default if is_missing(v) else float(v)


def _pct(v: Any) -> str:
    return "-" if is_missing(v) else f"{100 * float(v):.2f}"


def _diff(a: Any, b: Any) -> str:
    return "n/a" if is_missing(a) or is_missing(b) else f"{100 * (float(a) - float(b)):+.2f} pt"


def summary_text(final: pd.DataFrame, targets: Sequence[Target], main: Variant, shown_variants: Sequence[Variant],
                 select_size: int | None, competing: Sequence[Variant] = (), reference: Variant | None = None) -> str:
    """One table per target (candidate, variant, widths, MACs, val, select, test, ``*`` = the
    pick) and the line ``search pick vs uniform at target T: +x.xx pt on select (McNemar p = P), +y.yy pt on
    test`` (the best search candidate on select, in ``main`` or a ``competing`` variant, against
    the uniform baseline in ``reference``, default ``main``: :func:`reference_variant`) naming
    what was handed back."""
    reference = reference or main
    lines = []
    how = f"select ({select_size} samples)" if select_size else "val (no selection split: data.select_fraction is null)"
    picked_among = [main, *competing]
    for t in targets:
        keys = {Candidate(t, v, row).key: v for v in shown_variants
                for row in [*t.sources.to_dict("records"), None]}
        rows = final[final["candidate"].isin(list(keys))]
        n = len(t.sources)
        variants = " and ".join(v.name for v in picked_among)
        lines.append(f"\ntarget {t.label}: {n} search trial{'s' if n > 1 else ''} + uniform L1, {variants}, "
                     f"picked on {how}")
        cells = [["", "candidate", "variant", "widths", "MACs", "val", "select", "test"]]
        order = sorted(rows.to_dict("records"), key=lambda r: (r["variant"] != main.name, str(r["variant"]),
                                                               -_or(r["select_acc"], -1.0)))
        for r in order:
            widths = "-".join(str(int(w)) for w in r["widths"]) if r["widths"] is not None else "-"
            cells.append(["*" if _true(r.get("picked")) else "", str(r["candidate"]), str(r["variant"]), widths,
                          human_count(r["macs"]), _pct(r["val_acc"]), _pct(r["select_acc"]), _pct(r["test_acc"])])
        width = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(cell, width)).rstrip() for cell in cells]
        ranked = rows[rows["variant"].isin([v.name for v in picked_among])]
        search = pick_rows(ranked[ranked["is_uniform"] != True], list(keys))  # noqa: E712 (nullable)
        uniform = rows[rows["candidate"] == Candidate(t, reference, None).key]
        if not search.empty and not uniform.empty:
            s, u = search.iloc[0], uniform.iloc[0]
            picked = ranked[ranked["picked"] == True]  # noqa: E712 (nullable)
            vs = "uniform" if reference == main else f"uniform ({reference.name})"
            handed = vs
            if not picked.empty and picked.iloc[0]["candidate"] != u["candidate"]:
                key = str(picked.iloc[0]["candidate"])
                handed = key if _true(picked.iloc[0]["is_uniform"]) else f"search trial {key}"
            p = "" if is_missing(s.get("select_p")) else f" (McNemar p = {float(s['select_p']):.2f})"
            lines.append(f"  search pick vs {vs} at target {t.label}: {_diff(s['select_acc'], u['select_acc'])} on "
                         f"select{p}, {_diff(s['test_acc'], u['test_acc'])} on test (handed back: {handed})")
    return "\n".join(lines)
