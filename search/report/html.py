"""``report.html``: one self-contained, interactive page about a search (opens offline).

Built with plotly, its JavaScript embedded once in the page (no CDN), because the page
must pan, zoom, hover and switch axes without a server; writing and testing that much
SVG and JavaScript ourselves would be a second plotting library to maintain. The price
is the size: about 5 MB per report, mostly plotly.js.

Sections: the Pareto scatter (val and test accuracy against MACs, latency or params,
chosen in a menu), the kept share of every group per front trial (a heatmap, base =
100%, growth > 100%), the learning curves of the front trials, and how often each
criterion and mode appears on the front versus among all trials.

Inputs are the ledger's DataFrames (:data:`search.results.ledger.TRIALS_SCHEMA`,
:data:`search.results.ledger.EPOCHS_SCHEMA`) and the ``base`` dict of the experiment
(``val_acc``, ``test_acc``, ``macs``, ``params``, ``latency_ms``, ``widths``,
``group_names``). Accuracies are shown in %, MACs per sample.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from search.results.ledger import atomic_write, is_missing, pareto_front
from search.report.table import _widths, human_count, pareto_table, tick_label

__all__ = ["ReportInputs", "build_html", "write_html_report"]

logger = logging.getLogger(__name__)

#: x-axis choices of the Pareto scatter: (column, axis title).
X_METRICS = (("macs", "MACs per sample"), ("latency_ms", "latency (ms)"), ("params", "parameters"))
PLOT_IDS = ("pareto", "widths", "curves", "counts")  # the plot divs, in page order
_TEMPLATE = "plotly_white"
_CONFIG = {"displaylogo": False, "responsive": True}
_FRONT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")


@dataclass(frozen=True)
class ReportInputs:
    """What the report shows: the ledger's frames, the base model, and a few labels."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    base: Mapping[str, Any] | None
    title: str
    subtitle: str = ""
    macs_budget: int | None = None


# --------------------------------------------------------------------------- hover text


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row.get("params_json") or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any, fmt: str = "") -> str:
    return "-" if is_missing(value) else format(value, fmt)


def _hover(row: Mapping[str, Any]) -> str:
    acc = [_text(None if is_missing(row.get(k)) else 100 * float(row[k]), ".2f") for k in ("val_acc", "test_acc")]
    return "<br>".join([
        f"<b>trial {html.escape(str(row.get('trial_id')))}</b>",
        f"mode {html.escape(_text(row.get('mode')))}, criterion {html.escape(_text(row.get('criterion')))}",
        f"widths {_widths(row.get('widths'))}",
        f"finetune epochs {_text(_params(row).get('finetune_epochs'))}",
        f"val {acc[0]}%, test {acc[1]}%",
        f"MACs {human_count(row.get('macs'))}, latency {_text(row.get('latency_ms'), '.2f')} ms, "
        f"params {human_count(row.get('params'))}",
    ])  # fmt: skip


def _base_hover(base: Mapping[str, Any]) -> str:
    return _hover({**base, "trial_id": "base model", "mode": "-", "criterion": "-"})


# --------------------------------------------------------------------------- Pareto scatter


def _numbers(df: pd.DataFrame | Mapping[str, Any], column: str) -> np.ndarray:
    if isinstance(df, pd.DataFrame):
        if column not in df:
            return np.full(len(df), np.nan)
        return pd.to_numeric(df[column]).to_numpy(dtype=np.float64, na_value=np.nan)
    value = df.get(column)
    return np.array([np.nan if is_missing(value) else float(value)])


def _axis_layout(values: Sequence[np.ndarray], metric: str) -> dict[str, Any]:
    """x-axis settings for ``metric``: log when the positive values span more than 10×, with
    ticks at 1-2-5 per decade labelled like pareto.png ("100k, 200k, 500k, 1M")."""
    v = np.concatenate([np.asarray(a, dtype=np.float64) for a in values]) if values else np.empty(0)
    v = v[np.isfinite(v) & (v > 0)]
    if not (v.size > 1 and v.max() / v.min() > 10.0):
        # Counts in k/M/G (d3's SI format); latency as plain milliseconds.
        return {"type": "linear", "tickmode": "auto", "tickvals": None, "ticktext": None,
                "tickformat": "" if metric == "latency_ms" else "~s"}
    lo, hi = int(np.floor(np.log10(v.min()))), int(np.ceil(np.log10(v.max())))
    subs = (1, 2, 5) if hi - lo <= 4 else (1,)
    ticks = [d * 10.0**k for k in range(lo, hi + 1) for d in subs if v.min() / 1.5 <= d * 10.0**k <= v.max() * 1.5]
    return {"type": "log", "tickmode": "array", "tickvals": ticks, "ticktext": [tick_label(t) for t in ticks],
            "tickformat": ""}


def _pareto_groups(inputs: ReportInputs, front: pd.DataFrame) -> list[tuple[str, Any, dict[str, Any]]]:
    """(legend name, rows or the base dict, marker style) for each group of points."""
    trials = inputs.trials
    done = trials[trials["status"].isin(["TERMINATED", "STOPPED"])]
    on_front = done["trial_id"].isin(set(front["trial_id"]))
    over = np.zeros(len(done), dtype=bool)
    if inputs.macs_budget is not None:
        over = np.nan_to_num(_numbers(done, "macs"), nan=-np.inf) > inputs.macs_budget
    groups: list[tuple[str, Any, dict[str, Any]]] = [
        ("trials", done[~on_front.to_numpy() & ~over], dict(color="#9a9a9a", size=7, opacity=0.75)),
        (f"Pareto front (val_acc, MACs): {len(front)}", front,
         dict(color="#1f77b4", size=10, line=dict(color="white", width=1))),
    ]
    if over.any():  # drawn over the front: a front trial can be over the budget too
        groups.append((f"infeasible: over MACs budget {human_count(inputs.macs_budget)}", done[over],
                       dict(color="#d62728", size=9, symbol="x-thin-open", line=dict(color="#d62728", width=2))))
    if inputs.base is not None:
        groups.append(("base model", inputs.base, dict(color="#d62728", size=18, symbol="star",
                                                       line=dict(color="black", width=1))))
    return groups


def pareto_scatter(inputs: ReportInputs, front: pd.DataFrame) -> go.Figure:
    """Val and test accuracy (%) against MACs; a menu switches x to latency or params."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("validation accuracy (%)", "test accuracy (%)"))
    groups = _pareto_groups(inputs, front)
    xs_by_metric: dict[str, list[np.ndarray]] = {m: [] for m, _ in X_METRICS}
    for col, acc in ((1, "val_acc"), (2, "test_acc")):
        for name, rows, marker in groups:
            is_base = not isinstance(rows, pd.DataFrame)
            hover = [_base_hover(rows)] if is_base else [_hover(r) for r in rows.to_dict("records")]
            for metric, _ in X_METRICS:
                xs_by_metric[metric].append(_numbers(rows, metric))
            fig.add_trace(go.Scatter(
                x=xs_by_metric["macs"][-1], y=100.0 * _numbers(rows, acc), mode="markers", name=name,
                marker=marker, text=hover, hovertemplate="%{text}<extra></extra>", legendgroup=name,
                showlegend=col == 1,
            ), row=1, col=col)  # fmt: skip
    if inputs.macs_budget is not None:  # a dashed line at the budget, shown while x is MACs
        for col in (1, 2):
            fig.add_vline(x=inputs.macs_budget, line=dict(color="#d62728", dash="dash", width=1), row=1, col=col)
    buttons, axes = [], {}
    for metric, label in X_METRICS:
        axes[metric] = {"title.text": label, **_axis_layout(xs_by_metric[metric], metric)}
        layout = {f"xaxis{i}.{k}": v for i in ("", "2") for k, v in axes[metric].items()}
        layout.update({f"shapes[{i}].visible": metric == "macs" for i in range(len(fig.layout.shapes))})
        buttons.append(dict(label=f"x: {label}", method="update", args=[{"x": xs_by_metric[metric]}, layout]))
    fig.update_layout(
        template=_TEMPLATE, height=520, margin=dict(t=90, l=60, r=20, b=60), hovermode="closest",
        legend=dict(orientation="h", y=-0.18),
        updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.22, yanchor="top")],
    )  # fmt: skip
    first = axes["macs"]
    fig.update_xaxes(title_text=first["title.text"], **{k: v for k, v in first.items() if k != "title.text"})
    return fig


# --------------------------------------------------------------------------- widths


def _kept_shares(front: pd.DataFrame, base: Mapping[str, Any]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Group names, row labels, widths and kept share (%) of each front trial (base first)."""
    names = [str(n) for n in base.get("group_names") or []]
    base_w = np.asarray(base.get("widths") or [], dtype=np.float64)
    if not names:
        names = [f"group {i}" for i in range(len(base_w))]
    labels, rows = ["base"], [base_w]
    for row in front.sort_values("macs", kind="mergesort").to_dict("records"):
        widths = row.get("widths")
        if widths is None:
            continue
        groups = row.get("group_names")
        by_name = dict(zip(groups, widths, strict=False)) if groups is not None and len(groups) else {}
        w = [by_name.get(n, np.nan) for n in names] if by_name else list(widths)[: len(names)]
        rows.append(np.asarray(w + [np.nan] * (len(names) - len(w)), dtype=np.float64))
        labels.append(f"{row['trial_id']} · {human_count(row.get('macs'))}")
    widths = np.vstack(rows) if rows else np.empty((0, len(names)))
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = 100.0 * widths / base_w
    return names, labels, widths, shares


def widths_heatmap(front: pd.DataFrame, base: Mapping[str, Any] | None) -> go.Figure:
    """Kept share of every group (columns, model order) per front trial (rows, by MACs)."""
    fig = go.Figure()
    if base is None or not base.get("widths"):
        return _empty(fig, "no base model widths recorded (base.json); the kept shares need them")
    names, labels, widths, shares = _kept_shares(front, base)
    base_w = widths[0]
    hover = [[f"{labels[i]}<br>{names[j]}: {_text(widths[i, j], '.0f')} of {base_w[j]:.0f} channels "
              f"({_text(shares[i, j], '.0f')}%)" for j in range(len(names))] for i in range(len(labels))]
    cells = [[_text(v, ".0f") for v in row] for row in widths] if shares.size <= 600 else None
    high = float(np.nanmax(shares)) if np.isfinite(shares).any() else 100.0
    fig.add_trace(go.Heatmap(
        z=shares, x=names, y=labels, zmin=0.0, zmax=max(200.0, high), zmid=100.0,
        colorscale=[[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]],
        colorbar=dict(title="kept %"), text=cells, texttemplate="%{text}" if cells else None,
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1,
    ))  # fmt: skip
    fig.update_layout(template=_TEMPLATE, height=max(260, 90 + 26 * len(labels)),
                      margin=dict(t=30, l=160, r=20, b=90))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-40)
    return fig


# --------------------------------------------------------------------------- curves, counts


def learning_curves(front: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure:
    """Val accuracy and training loss per epoch of each front trial (one colour per trial)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("validation accuracy (%) per epoch", "training loss per epoch"))
    ids = list(front.sort_values("macs", kind="mergesort")["trial_id"])
    rows = epochs[epochs["trial_id"].isin(set(ids))].sort_values(["trial_id", "epoch"])
    if rows.empty:
        return _empty(fig, "no per-epoch rows recorded for the front trials (epochs.parquet)")
    for k, tid in enumerate(ids):
        part = rows[rows["trial_id"] == tid]
        if part.empty:
            continue
        colour = _FRONT_COLOURS[k % len(_FRONT_COLOURS)]
        for col, column, scale in ((1, "val_acc", 100.0), (2, "train_loss", 1.0)):
            fig.add_trace(go.Scatter(
                x=part["epoch"].to_numpy(), y=scale * _numbers(part, column), mode="lines+markers", name=str(tid),
                legendgroup=str(tid), showlegend=col == 1, line=dict(color=colour, width=1.5), marker=dict(size=5),
                hovertemplate=f"trial {html.escape(str(tid))}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)  # fmt: skip
    fig.update_xaxes(title_text="epoch", dtick=1 if rows["epoch"].max() <= 20 else None)
    fig.update_layout(template=_TEMPLATE, height=420, margin=dict(t=50, l=60, r=20, b=50))
    return fig


def _counts(values: pd.Series) -> pd.Series:
    return values.astype("object").where(values.notna(), "(none)").astype(str).value_counts()


def choice_counts(trials: pd.DataFrame, front: pd.DataFrame) -> go.Figure:
    """How many trials used each criterion and each mode: all trials vs the Pareto front."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=("criterion", "mode"))
    for col, column in ((1, "criterion"), (2, "mode")):
        every, best = _counts(trials[column]), _counts(front[column])
        order = list(every.index)
        for name, counts, colour in ((f"all trials ({len(trials)})", every, "#9a9a9a"),
                                     (f"Pareto front ({len(front)})", best, "#1f77b4")):
            fig.add_trace(go.Bar(
                x=order, y=[int(counts.get(c, 0)) for c in order], name=name, marker_color=colour,
                legendgroup=name, showlegend=col == 1, hovertemplate="%{x}: %{y}<extra>" + name + "</extra>",
            ), row=1, col=col)  # fmt: skip
    fig.update_yaxes(title_text="trials", rangemode="tozero")
    fig.update_layout(template=_TEMPLATE, height=360, barmode="group", margin=dict(t=50, l=60, r=20, b=50))
    return fig


def _empty(fig: go.Figure, message: str) -> go.Figure:
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(template=_TEMPLATE, height=200, xaxis_visible=False, yaxis_visible=False)
    return fig


# --------------------------------------------------------------------------- the page


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 16px 24px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin: 1.6em 0 0.2em; }
p.note { color: #555; margin: 0.2em 0 0.6em; } pre { font-size: 12px; overflow-x: auto; background: #f6f6f6;
padding: 8px; } footer { color: #888; font-size: 0.85em; margin-top: 2em; }
"""

_SECTIONS = (
    ("pareto", "Accuracy against cost",
     "Every finished trial; the menu switches the x axis between MACs, latency and parameters. The front is the "
     "non-dominated set on (val accuracy, MACs). Hover a point for its trial, mode, criterion, widths and "
     "finetune epochs."),
    ("widths", "Channels kept per group",
     "One row per front trial (by MACs), one column per group in model order: the share of the base model's "
     "channels it kept. Blue: pruned, red: grown beyond the base (> 100%). Cells show the channel count."),
    ("curves", "Learning curves of the front trials", "Per-epoch rows of epochs.parquet."),
    ("counts", "Criteria and modes", "How often each choice appears among all recorded trials and on the front."),
)


def build_html(inputs: ReportInputs) -> str:
    """The whole report page as one HTML string (plotly.js inline)."""
    trials = inputs.trials
    front = pareto_front(trials)
    figures = {
        "pareto": pareto_scatter(inputs, front),
        "widths": widths_heatmap(front, inputs.base),
        "curves": learning_curves(front, inputs.epochs),
        "counts": choice_counts(trials, front),
    }
    counts = trials["status"].value_counts().to_dict()
    summary = (f"{len(trials)} trials: {counts.get('TERMINATED', 0)} completed, {counts.get('STOPPED', 0)} stopped "
               f"early, {counts.get('ERROR', 0)} errored; {len(front)} on the Pareto front")
    if inputs.macs_budget is not None:
        summary += f"; MACs budget {human_count(inputs.macs_budget)}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(inputs.title)} - prunetune report</title>", f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>{html.escape(inputs.title)}</h1>",
        f'<p class="note">{html.escape(inputs.subtitle)}</p>' if inputs.subtitle else "",
        f"<p>{html.escape(summary)}</p>",
        f"<pre>{html.escape(pareto_table(front, inputs.base))}</pre>",
    ]  # fmt: skip
    for div_id, heading, note in _SECTIONS:
        parts += [f"<h2>{html.escape(heading)}</h2>", f'<p class="note">{html.escape(note)}</p>',
                  figures[div_id].to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_CONFIG)]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [f"<footer>written by prunetune at {stamp}; MACs are multiply-accumulates per sample "
              "(FLOPs = 2·MACs).</footer>", "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_html_report(inputs: ReportInputs, path: str | os.PathLike[str]) -> Path:
    """Write :func:`build_html` to ``path`` atomically (temp file + ``os.replace``); returns it."""
    page = build_html(inputs)
    out = atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    logger.info("wrote %s (%.1f MB)", out, len(page) / 1e6)
    return out
