"""Finalize's settings and its printed report, shared by ``prunetune finalize`` and by ``run``
and ``resume``, which finalize at their end when the config's ``finalize.top`` is set."""

from __future__ import annotations

from typing import Any

from pruning.errors import UsageError
from search.cli._print import progress_to_stdout
from search.finalize import finalize
from search.options import SearchOptions
from search.results.expdir import open_store
from search.results.final import FINAL_FILE


def finalize_settings(cfg: Any, top: int | None = None, epochs: int | None = None, from_scratch: bool = False,
                      distill: bool = False, compare: bool = False, pick_alpha: float | None = None,
                      with_scratch: bool = False, scratch_epochs: int | None = None) -> dict[str, Any]:
    """Finalize's settings: the arguments given, else the config's ``finalize`` section
    (epochs: as long as a search trial trains; scratch_epochs: ``search.scratch_epochs``)."""
    f = cfg.finalize
    top = top if top is not None else f.top
    if top is None:
        raise UsageError("--top is required (or set finalize.top in the experiment's config)")
    scratch = from_scratch or f.from_scratch
    epochs = epochs if epochs is not None else f.epochs
    if epochs is None:
        epochs = cfg.search.scratch_epochs if scratch else cfg.search.finetune_epochs[1]
    return {"top": top, "epochs": epochs, "from_scratch": scratch, "distill": distill or f.distill,
            "compare": compare or f.compare, "pick_alpha": pick_alpha if pick_alpha is not None else f.pick_alpha,
            "with_scratch": with_scratch or f.with_scratch,
            "scratch_epochs": next(e for e in (scratch_epochs, f.scratch_epochs, cfg.search.scratch_epochs)
                                   if e is not None)}


def run_finalize(experiment: Any, s: dict[str, Any], *, address: str | None = None, verbose: bool = False,
                 fresh: bool = False, export: bool = True, quiet: bool = False) -> int:
    """Run :func:`search.finalize.finalize` with settings ``s`` (:func:`finalize_settings`) and
    print its report."""
    progress_to_stdout(quiet)
    how = f"{s['epochs']} epochs from scratch" if s["from_scratch"] else f"{s['epochs']} finetune epochs"
    how += " with distillation" if s["distill"] else ""
    if s["with_scratch"]:
        how += f", and {s['scratch_epochs']} epochs from scratch"
    summary = finalize(experiment, s["top"], s["epochs"], from_scratch=s["from_scratch"], distill=s["distill"],
                       compare=s["compare"], fresh=fresh, export=export, pick_alpha=s["pick_alpha"],
                       with_scratch=s["with_scratch"], scratch_epochs=s["scratch_epochs"],
                       options=SearchOptions(address=address, verbose=verbose))
    print(f"finalize {summary.exp_dir.name}: {len(summary.sources)} candidates ({how}): {len(summary.ran)} run now, "
          f"{len(summary.skipped)} already done, in {summary.wall_s:.0f} s")
    print(summary.report)
    for label, path in summary.exported.items():
        print(f"picked for target {label}: {summary.picks[label]} -> {path}")
    print(f"wrote {summary.exp_dir / FINAL_FILE}")
    return 0


def finalize_at_end(cfg: Any, summary: Any, address: str | None, verbose: bool, quiet: bool) -> int:
    """With ``finalize.top`` set, finalize the search that just ended (``run``/``resume``)."""
    if cfg.finalize.top is None or summary.done < 1:
        return 0
    print()
    exp = open_store(summary.exp_dir)
    return run_finalize(exp.local_path() or exp.uri(), finalize_settings(cfg), address=address, verbose=verbose,
                        quiet=quiet)
