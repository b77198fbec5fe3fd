"""The accuracy-vs-MACs plot of a search, ``pareto.png``: every trial, the front, the base model.

Inputs are DataFrames with the ledger's columns (see :mod:`search.report.table`). The plot
uses matplotlib's Agg canvas directly (no pyplot, no display, no global state).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from search.config import ExperimentConfig
from search.report.table import human_count, tick_label
from search.results.expdir import PARETO_PNG, open_store, read_base
from search.results.ledger import atomic_write, pareto_front, read_trials
from search.results.ledger import is_missing as _is_missing
from search.results.storage import Store

__all__ = ["pareto_figure", "plot_pareto", "write_pareto_png"]

logger = logging.getLogger(__name__)


def _use_log_x(macs: np.ndarray) -> bool:
    """Log-scale the MACs axis when the points span more than a factor of 10."""
    positive = macs[np.isfinite(macs) & (macs > 0)]
    return positive.size > 1 and positive.max() / positive.min() > 10.0


def _xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = pd.to_numeric(df["macs"]).to_numpy(dtype=np.float64, na_value=np.nan)
    y = 100.0 * pd.to_numeric(df["val_acc"]).to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _format_macs_axis(ax: Any, log: bool, decades: float) -> None:
    """One label format on the MACs axis ("1M, 2M, 5M"): major ticks only, few enough not to overlap."""

    if log:
        ax.set_xscale("log")
        # 1-2-5 per decade while that leaves room for the labels, else one tick per decade.
        subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=10))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=10))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, min_n_ticks=3))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick_label(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw_trials(ax: Any, trials: pd.DataFrame, macs_budget: int | None) -> list[np.ndarray]:
    """Scatter the finished trials (feasible grey, over the budget red crosses); their MACs."""
    drawn: list[np.ndarray] = []
    status = trials["status"] if "status" in trials else pd.Series(["TERMINATED"] * len(trials), index=trials.index)
    over = np.zeros(len(trials), dtype=bool)
    if macs_budget is not None and "macs" in trials:
        macs = pd.to_numeric(trials["macs"]).to_numpy(dtype=np.float64, na_value=np.nan)
        over = np.nan_to_num(macs, nan=-np.inf) > macs_budget
    for state, style in (
        ("TERMINATED", dict(marker="o", s=16, color="0.6", alpha=0.7, label="trials")),
        ("STOPPED", dict(marker="o", s=16, facecolors="none", edgecolors="0.7", label="stopped early")),
    ):
        x, y = _xy(trials[(status == state).to_numpy(dtype=bool, na_value=False) & ~over])
        if x.size:
            ax.scatter(x, y, zorder=2, **style)
            drawn.append(x)
    finished = status.isin(["TERMINATED", "STOPPED"]).to_numpy(dtype=bool, na_value=False)
    x, y = _xy(trials[finished & over])
    if x.size:
        ax.scatter(x, y, marker="x", s=28, color="tab:red", linewidths=1.2, zorder=4.5,  # over the front too
                   label=f"infeasible: over MACs budget ({x.size})")
        drawn.append(x)
    return drawn


def pareto_figure(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    base: Mapping[str, Any] | None = None,
    title: str = "",
    macs_budget: int | None = None,
) -> Any:
    """The accuracy-vs-MACs figure of :func:`plot_pareto` (a matplotlib ``Figure`` on an Agg canvas)."""

    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_x = _draw_trials(ax, trials, macs_budget)

    fx, fy = _xy(front)
    if fx.size:
        order = np.argsort(fx, kind="stable")
        fx, fy = fx[order], fy[order]
        ax.step(fx, fy, where="post", color="tab:blue", linewidth=1.5, zorder=3)
        ax.scatter(fx, fy, s=36, color="tab:blue", edgecolors="white", linewidths=0.6, zorder=4,
                   label=f"Pareto front ({fx.size})")
        all_x.append(fx)

    if base is not None and not _is_missing(base.get("macs")) and not _is_missing(base.get("val_acc")):
        bx, by = float(base["macs"]), 100.0 * float(base["val_acc"])
        ax.scatter([bx], [by], marker="*", s=220, color="tab:red", edgecolors="black", linewidths=0.6, zorder=5,
                   label="base model")
        ax.annotate(f"base {by:.2f}% @ {human_count(bx)}", (bx, by), textcoords="offset points", xytext=(-8, 8),
                    ha="right", fontsize=8)
        all_x.append(np.array([bx]))
    has_points = bool(all_x)
    if macs_budget is not None:
        ax.axvline(macs_budget, color="tab:red", linestyle="--", linewidth=1.0, zorder=1,
                   label=f"MACs budget {tick_label(macs_budget)}")
        all_x.append(np.array([float(macs_budget)]))

    xs = np.concatenate(all_x) if all_x else np.empty(0)
    positive = xs[np.isfinite(xs) & (xs > 0)]
    decades = float(np.log10(positive.max() / positive.min())) if positive.size else 0.0
    _format_macs_axis(ax, _use_log_x(xs), decades)
    ax.set_xlabel("MACs per sample (multiply-accumulates)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "accuracy vs MACs")
    ax.grid(True, which="major", alpha=0.3)
    if all_x:
        ax.legend(loc="lower right", fontsize=8)
    if not has_points:
        ax.text(0.5, 0.5, "no completed trials yet", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_pareto(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    path: str | os.PathLike[str],
    base: Mapping[str, Any] | None = None,
    title: str = "",
    macs_budget: int | None = None,
) -> Path:
    """Plot val accuracy (%) against MACs and write a PNG to ``path`` atomically.

    TERMINATED trials are grey dots, STOPPED (early-stopped) trials grey rings, ERROR
    trials are not drawn. With ``macs_budget`` (the config's ``objectives.macs_budget``)
    the trials above it are red crosses ("infeasible") and the budget is a dashed line.
    The ``front`` is highlighted and joined by a step line (the best accuracy reachable
    within a MACs budget); ``base`` is a labelled star. The x axis is logarithmic when the
    MACs span more than 10×; its labels read "1M, 2M, 5M". Returns the path.
    """
    fig = pareto_figure(trials, front, base, title, macs_budget)
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    logger.debug("wrote %s", out)
    return out


def write_pareto_png(exp: Store | str | os.PathLike[str], cfg: ExperimentConfig) -> Path | str:
    """Redraw ``pareto.png`` from the ledger; returns its path (or URI on object storage)."""
    exp = open_store(exp)
    trials = read_trials(exp)
    front = pareto_front(trials)

    def plot(path: Path) -> Path:
        return plot_pareto(trials, front, path, base=read_base(exp),
                           title=f"{cfg.experiment.name}: {cfg.model.name} on {cfg.data.name}",
                           macs_budget=cfg.objectives.macs_budget)

    local = exp.local_path(PARETO_PNG)
    if local is not None:
        return plot(local)
    with tempfile.TemporaryDirectory(prefix="prunetune-png-") as tmp:
        exp.write_bytes_atomic(PARETO_PNG, plot(Path(tmp) / PARETO_PNG).read_bytes())
    return exp.uri(PARETO_PNG)
