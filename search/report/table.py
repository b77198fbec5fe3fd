"""What the user sees of a search: the Pareto table and the accuracy-vs-MACs plot.

Inputs are DataFrames with the ledger's columns (:data:`search.ledger.TRIALS_SCHEMA`):
accuracies are fractions and are shown as percentages; MACs are multiply-accumulates
of one forward pass on one sample (FLOPs would be 2·MACs). A ``base`` dict describes
the unpruned model: ``val_acc``, ``test_acc``, ``macs``, ``params`` and optionally
``latency_ms`` and ``widths``.

The plot uses matplotlib's Agg canvas directly (no pyplot, no display, no global state).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.results.ledger import atomic_write
from search.results.ledger import is_missing as _is_missing

__all__ = ["human_count", "pareto_figure", "pareto_table", "plot_pareto", "tick_label"]

logger = logging.getLogger(__name__)

_UNITS = ("", "k", "M", "G", "T", "P")
_MISSING = "-"


def human_count(n: float | int | None) -> str:
    """A count in short form: 512 -> "512", 140_312 -> "140.3k", 7_251_000 -> "7.25M".

    Two decimals below 10 of a unit, one above; "-" for a missing value.
    """
    if _is_missing(n):
        return _MISSING
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 1000:
        return f"{sign}{value:.0f}" if value == int(value) else f"{sign}{value:.1f}"
    exp = min(int(math.log10(value) // 3), len(_UNITS) - 1)
    scaled = value / 1000**exp
    decimals = 2 if scaled < 10 else 1
    if round(scaled, decimals) >= 1000 and exp + 1 < len(_UNITS):  # 999.96k -> 1.00M
        exp += 1
        scaled = value / 1000**exp
        decimals = 2
    elif decimals == 2 and round(scaled, 2) >= 10:  # 9.999M -> 10.0M, not 10.00M
        decimals = 1
    return f"{sign}{scaled:.{decimals}f}{_UNITS[exp]}"


def _pct(fraction: Any) -> str:
    return _MISSING if _is_missing(fraction) else f"{100.0 * float(fraction):.2f}"


def _num(value: Any, fmt: str = ".2f") -> str:
    return _MISSING if _is_missing(value) else format(float(value), fmt)


def _widths(value: Any) -> str:
    if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and _is_missing(value)):
        return _MISSING
    return "-".join(str(int(w)) for w in value)


_COLUMNS: tuple[tuple[str, str], ...] = (  # (header, alignment)
    ("trial_id", "<"),
    ("mode", "<"),
    ("criterion", "<"),
    ("val_acc%", ">"),
    ("test_acc%", ">"),
    ("MACs", ">"),
    ("MACs_kept%", ">"),
    ("params", ">"),
    ("latency_ms", ">"),
    ("widths", "<"),
)


def _kept_pct(row: Mapping[str, Any], base_macs: Any) -> str:
    ratio = row.get("macs_ratio")
    if _is_missing(ratio) and not _is_missing(base_macs) and not _is_missing(row.get("macs")) and float(base_macs) > 0:
        ratio = float(row["macs"]) / float(base_macs)
    return _MISSING if _is_missing(ratio) else f"{100.0 * float(ratio):.2f}"


def pareto_table(front: pd.DataFrame, base: Mapping[str, Any] | None = None) -> str:
    """The Pareto front as a fixed-width text table, one trial per line, sorted by MACs.

    Columns: trial_id, mode, criterion, val and test accuracy (%, 2 decimals), MACs
    (short form), MACs kept (% of the base model, from ``macs_ratio``), params,
    latency (ms) and widths per group ("16-32-32"). With ``base``, the first line is
    the base model (trial_id "base"). Missing values show as "-".
    """
    cells: list[list[str]] = []
    base_macs = None if base is None else base.get("macs")
    if base is not None:
        cells.append(
            [
                "base",
                _MISSING,
                _MISSING,
                _pct(base.get("val_acc")),
                _pct(base.get("test_acc")),
                human_count(base.get("macs")),
                "100.00",
                human_count(base.get("params")),
                _num(base.get("latency_ms")),
                _widths(base.get("widths")),
            ]
        )
    if len(front):
        ordered = front.sort_values("macs", kind="mergesort", na_position="last") if "macs" in front else front
        for row in ordered.to_dict("records"):
            cells.append(
                [
                    str(row.get("trial_id", _MISSING)),
                    _MISSING if _is_missing(row.get("mode")) else str(row["mode"]),
                    _MISSING if _is_missing(row.get("criterion")) else str(row["criterion"]),
                    _pct(row.get("val_acc")),
                    _pct(row.get("test_acc")),
                    human_count(row.get("macs")),
                    _kept_pct(row, base_macs),
                    human_count(row.get("params")),
                    _num(row.get("latency_ms")),
                    _widths(row.get("widths")),
                ]
            )
    headers = [h for h, _ in _COLUMNS]
    sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, (value, (_, align)) in enumerate(zip(values, _COLUMNS, strict=True)):
            last = i == len(_COLUMNS) - 1
            parts.append(value if last and align == "<" else f"{value:{align}{sizes[i]}}")
        return "  ".join(parts).rstrip()

    lines = [line(headers), line(["-" * s for s in sizes])]
    lines += [line(r) for r in cells]
    if not len(front):
        lines.append("(no completed trials on the front yet)")
    return "\n".join(lines)


def tick_label(value: float) -> str:
    """A short axis label for a count: 500 -> "500", 2e6 -> "2M", 2.5e5 -> "250k", 1.5e9 -> "1.5G".

    At most three significant digits, no trailing zeros; one format for every tick.
    """
    if not math.isfinite(value):
        return ""
    exp = 0 if abs(value) < 1000 else min(int(math.log10(abs(value)) // 3), len(_UNITS) - 1)
    text = f"{value / 1000**exp:.3g}"
    if abs(float(text)) >= 1000 and exp + 1 < len(_UNITS):  # 999.99k rounds to 1e+03k: say 1M
        exp += 1
        text = f"{value / 1000**exp:.3g}"
    return f"{text}{_UNITS[exp]}"


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
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

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
    # Imported here: matplotlib is slow to import and only needed for the picture.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
