"""The finalize arms of search_vs_baselines.py: (e) after ``search.finalize`` (plain, with
distillation, ``--with-scratch``, long), each pick read as is and with ``--pick-alpha``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from svb_settings import Settings


def _final_row(row: Any, arm: str, compute: int, t0: float, **extra: Any) -> dict:
    return {"arm": arm, "test_acc": float(row.test_acc), "val_acc": float(row.val_acc),
            "select_acc": float(row.select_acc) if row.select_acc == row.select_acc else None,
            "macs": int(row.macs), "macs_target": float(row.macs_target), "compute": compute,
            "epochs": int(row.epochs), "widths": dict(zip(row.group_names, (int(w) for w in row.widths))),
            "candidate": str(row.candidate), "is_uniform": bool(row.is_uniform), "wall_s": time.perf_counter() - t0,
            **extra}


def _p(row: Any) -> float | None:
    p = row.get("select_p")
    return None if p is None or p != p else float(p)


def finalize_arm_name(distill: bool, kind: str = "") -> str:
    """The arm name of a finalize: ``search + finalize``, `` --distill``, then `` --with-scratch``
    (``kind`` "scratch") or `` --long`` ("long")."""
    return "search + finalize" + " --distill" * distill + {"": "", "scratch": " --with-scratch", "long": " --long"}[kind]


def arm_finalize(cfg: Any, s: Settings, distill: bool = False, long: bool = False) -> list[dict]:
    """(e) after finalize: ``search.finalize`` (``prunetune finalize NAME --top K --epochs E
    [--distill]``) on the search's experiment: the ``finalize_top`` best trials of the target on
    val and the uniform L1 baseline at the target, retrained alike, picked on the selection
    split. Returns the pick's row (the arm) and the uniform candidate's row (reported beside it).
    The distilled finalize runs after the plain one (its rows are another variant; finalize
    re-marks ``picked`` for the variant it runs, so each result is read right after its call).
    ``long``: every candidate finetuned base + finetune epochs (as long as the scratch arms
    train), in a copy of the experiment (:func:`_long_copy`); its arms end in `` --long``."""
    from search.finalize import finalize
    from search.finalpick import pick_rows
    from search.results.final import read_final
    from search.tuner import SearchOptions

    t0 = time.perf_counter()
    exp_dir = _long_copy(cfg.exp_dir) if long else cfg.exp_dir
    finalize(exp_dir, top=s.finalize_top, epochs=s.base_epochs + s.finetune_epochs if long else s.finetune_epochs,
             distill=distill, fresh=not long and distill == s.finalize_variants[0], export=False, options=SearchOptions())
    final = read_final(exp_dir)
    variant = "finetune+distill" if distill else "finetune"
    mine = final[final["variant"] == variant]
    bad = mine[mine["status"] != "TERMINATED"]
    if not bad.empty:
        raise RuntimeError(f"finalize ended with errors: {list(bad['error'].dropna())}")
    picked = mine[mine["picked"] == True]  # noqa: E712 (nullable column)
    if picked.empty:
        raise RuntimeError(f"finalize ({variant}) picked nothing among {list(mine['candidate'])}")
    compute = int(mine["train_macs"].sum())  # every candidate finalize trained, the uniform baseline too
    arm = finalize_arm_name(distill, "long" if long else "")
    rows = [_final_row(picked.iloc[0], arm, compute, t0, candidates=len(mine),
                       pick_uniform=bool(picked.iloc[0].is_uniform), select_p=_p(picked.iloc[0]))]
    # The same candidates under finalize --pick-alpha (uniform unless beaten significantly on select).
    safe = pick_rows(mine, list(mine["candidate"]), s.pick_alpha)
    rows.append(_final_row(safe.iloc[0], f"{arm} --pick-alpha", compute, t0, candidates=len(mine),
                           pick_uniform=bool(safe.iloc[0].is_uniform), select_p=_p(safe.iloc[0])))
    uni = mine[mine["is_uniform"] == True]  # noqa: E712
    if not uni.empty:
        rows.append(_final_row(uni.iloc[0], arm.removeprefix("search + ") + ": uniform at target",
                               int(uni.iloc[0].train_macs), t0))
    return rows


def arm_finalize_scratch(cfg: Any, s: Settings, distill: bool) -> list[dict]:
    """(e) after ``finalize --with-scratch``, run after :func:`arm_finalize` of the same
    ``distill`` (whose finetuned rows it reuses): every candidate also trained from scratch for
    base + finetune epochs (as (f)), all competing for the pick on the selection split. Returns
    the pick's row, the same read with --pick-alpha (the reference: the finetuned uniform) and
    the uniform baseline's from-scratch row."""
    from search.finalize import finalize
    from search.finalpick import pick_rows
    from search.results.final import read_final
    from search.tuner import SearchOptions

    t0 = time.perf_counter()
    finalize(cfg.exp_dir, top=s.finalize_top, epochs=s.finetune_epochs, distill=distill, with_scratch=True,
             scratch_epochs=s.base_epochs + s.finetune_epochs, export=False, options=SearchOptions())
    final = read_final(cfg.exp_dir)
    variants = ("finetune+distill", "scratch+distill") if distill else ("finetune", "scratch")
    mine = final[final["variant"].isin(variants)]
    bad = mine[mine["status"] != "TERMINATED"]
    if not bad.empty:
        raise RuntimeError(f"finalize --with-scratch ended with errors: {list(bad['error'].dropna())}")
    picked = mine[mine["picked"] == True]  # noqa: E712 (nullable column)
    ref = mine[(mine["is_uniform"] == True) & (mine["variant"] == variants[0])]  # noqa: E712
    if picked.empty or ref.empty:
        raise RuntimeError(f"finalize --with-scratch picked nothing among {list(mine['candidate'])}")
    compute = int(mine["train_macs"].sum())  # every candidate, finetuned and from scratch
    arm = finalize_arm_name(distill, "scratch")
    rows = [_final_row(picked.iloc[0], arm, compute, t0, candidates=len(mine),
                       pick_uniform=bool(picked.iloc[0].is_uniform), select_p=_p(picked.iloc[0]),
                       variant=str(picked.iloc[0].variant))]
    safe = pick_rows(mine, list(mine["candidate"]), s.pick_alpha, str(ref.iloc[0].candidate))
    rows.append(_final_row(safe.iloc[0], arm + " --pick-alpha", compute, t0, candidates=len(mine),
                           pick_uniform=bool(safe.iloc[0].is_uniform), select_p=_p(safe.iloc[0]),
                           variant=str(safe.iloc[0].variant)))
    uni = mine[(mine["is_uniform"] == True) & (mine["variant"] == variants[1])]  # noqa: E712
    if not uni.empty:
        rows.append(_final_row(uni.iloc[0], arm.removeprefix("search + ") + ": uniform from scratch",
                               int(uni.iloc[0].train_macs), t0))
    return rows


def _long_copy(exp_dir: Path) -> Path:
    """``exp_dir`` copied once to ``<name>-long`` without its finalize rows (nor Ray's files):
    ``final.parquet`` keeps one row per candidate and refuses rows trained for other epochs,
    so the long finalize needs an experiment of its own. Reused when it exists (its finalize
    then resumes)."""
    import shutil

    out = exp_dir.with_name(exp_dir.name + "-long")
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(exp_dir, tmp, ignore=shutil.ignore_patterns("final*.parquet", "ray"))
        tmp.rename(out)
    return out


def extra_finalize_rows(cfg: Any, s: Settings, seed: int, distill: bool, kind: str) -> list[dict]:
    """The rows of one extra finalize arm, ``kind`` "scratch" (:func:`arm_finalize_scratch`) or
    "long" (:func:`arm_finalize` with ``long``); a failure is the arm's error row."""
    arm = finalize_arm_name(distill, kind)
    try:
        got = arm_finalize_scratch(cfg, s, distill) if kind == "scratch" else arm_finalize(cfg, s, distill, long=True)
        return [dict(r, seed=seed) for r in got]
    except Exception as e:  # noqa: BLE001
        return [{"arm": arm, "seed": seed, "error": f"{type(e).__name__}: {e}"[:120]}]
