"""What the user sees of a search in a terminal: the Pareto table and the number formats.

Inputs are DataFrames with the ledger's columns (:data:`search.results.ledger.TRIALS_SCHEMA`):
accuracies are fractions and are shown as percentages; MACs are multiply-accumulates
of one forward pass on one sample (FLOPs would be 2·MACs). A ``base`` dict describes
the unpruned model: ``val_acc``, ``test_acc``, ``macs``, ``params`` and optionally
``latency_ms`` and ``widths``.

The accuracy-vs-MACs plot is :mod:`search.report.png`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from search.results.ledger import is_missing as _is_missing

__all__ = ["human_count", "pareto_table", "tick_label"]


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
