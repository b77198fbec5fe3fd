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


def arm_finalize(cfg: Any, s: Settings, distill: bool = False, kind: str = "") -> list[dict]:
    """(e) after finalize: ``search.finalize`` (``prunetune finalize NAME --top K --epochs E
    [--distill]``) on the search's experiment: the ``finalize_top`` best trials of the target on
    val and the uniform L1 baseline at the target, retrained alike, picked on the selection
    split. Returns the pick's row (the arm), the same candidates read with --pick-alpha, and the
    reference uniform candidate's row (reported beside them).

    ``kind`` "": the plain finalize; the distilled one runs after the plain one (its rows are
    another variant; finalize re-marks ``picked`` for the variants it runs, so each result is
    read right after its call). "scratch": ``finalize --with-scratch``, run after the plain
    finalize of the same ``distill`` (whose finetuned rows it reuses): every candidate also
    trained from scratch for base + finetune epochs (as (f)), all competing for the pick; the
    reference is the uniform trained longest (``finalpick.reference_variant``: from scratch).
    "long": every candidate finetuned base + finetune epochs (as long as the scratch arms
    train), in a copy of the experiment (:func:`_long_copy`). The arms end in the kind's flag
    (:func:`finalize_arm_name`)."""
    from search.finalize import finalize
    from search.finalpick import Variant, pick_rows, reference_variant
    from search.results.final import read_final
    from search.tuner import SearchOptions

    t0 = time.perf_counter()
    long_epochs = s.base_epochs + s.finetune_epochs  # as long as the scratch arms train
    exp_dir = _long_copy(cfg.exp_dir) if kind == "long" else cfg.exp_dir
    epochs = long_epochs if kind == "long" else s.finetune_epochs
    main, scratch = Variant(False, distill), Variant(True, distill)
    competing = [scratch] if kind == "scratch" else []
    finalize(exp_dir, top=s.finalize_top, epochs=epochs, distill=distill,
             fresh=kind == "" and distill == s.finalize_variants[0], with_scratch=bool(competing),
             scratch_epochs=long_epochs if competing else None, export=False, options=SearchOptions())
    final = read_final(exp_dir)
    ref = reference_variant(main, competing, {main: epochs, scratch: long_epochs})
    mine = final[final["variant"].isin([v.name for v in (main, *competing)])]
    bad = mine[mine["status"] != "TERMINATED"]
    arm = finalize_arm_name(distill, kind)
    if not bad.empty:
        raise RuntimeError(f"{arm} ended with errors: {list(bad['error'].dropna())}")
    picked = mine[mine["picked"] == True]  # noqa: E712 (nullable column)
    uni = mine[(mine["is_uniform"] == True) & (mine["variant"] == ref.name)]  # noqa: E712
    if picked.empty or uni.empty:
        raise RuntimeError(f"{arm} picked nothing among {list(mine['candidate'])}")
    compute = int(mine["train_macs"].sum())  # every candidate finalize trained, the uniform baseline too

    def read(row: Any, name: str) -> dict:
        shown = {"variant": str(row.variant)} if competing else {}
        return _final_row(row, name, compute, t0, candidates=len(mine), pick_uniform=bool(row.is_uniform),
                          select_p=_p(row), **shown)

    # The same candidates under finalize --pick-alpha (the reference unless beaten significantly on select).
    safe = pick_rows(mine, list(mine["candidate"]), s.pick_alpha, str(uni.iloc[0].candidate))
    label = ": uniform from scratch" if ref.from_scratch else ": uniform at target"
    return [read(picked.iloc[0], arm), read(safe.iloc[0], f"{arm} --pick-alpha"),
            _final_row(uni.iloc[0], arm.removeprefix("search + ") + label, int(uni.iloc[0].train_macs), t0)]


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
    """The rows of one extra finalize arm (:func:`arm_finalize` of ``kind`` "scratch" or
    "long"); a failure is the arm's error row."""
    arm = finalize_arm_name(distill, kind)
    try:
        return [dict(r, seed=seed) for r in arm_finalize(cfg, s, distill, kind)]
    except Exception as e:  # noqa: BLE001
        return [{"arm": arm, "seed": seed, "error": f"{type(e).__name__}: {e}"[:120]}]
