"""Pareto fronts of trials: non-dominated sorting on any number of objectives.

Pure numpy/pandas, the one non-dominated sort of the project: ``search.results.ledger`` writes
the front to ``pareto.parquet`` on every flush (and re-exports these functions), ``report`` and
the CLI show it, and the MO-ASHA scheduler (``search._ray.schedulers``) ranks rung results with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["non_dominated_ranks", "pareto_front"]


def non_dominated_ranks(values: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting of ``values`` (n points × k objectives).

    ``senses[j]`` is ``"max"`` or ``"min"`` for objective j. Point a dominates b when it
    is at least as good on every objective and strictly better on one. Returns int32
    ranks of shape (n,): 1 for the non-dominated points, 2 for the non-dominated points
    of the rest, and so on. Points with identical values get the same rank.
    O(n²·k) time and O(n²) memory, meant for up to a few thousand points.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be a 2-D array (points × objectives), got shape {v.shape}")
    if v.shape[1] != len(senses):
        raise ValueError(f"{v.shape[1]} objective columns but {len(senses)} senses")
    bad = [s for s in senses if s not in ("max", "min")]
    if bad:
        raise ValueError(f"unknown sense(s) {bad}; choose 'max' or 'min'")
    if np.isnan(v).any():
        raise ValueError("values contain NaN; drop those points first")
    n = v.shape[0]
    ranks = np.zeros(n, dtype=np.int32)
    if n == 0:
        return ranks
    costs = v * np.array([-1.0 if s == "max" else 1.0 for s in senses])  # everything minimised
    no_worse = np.ones((n, n), dtype=bool)
    better = np.zeros((n, n), dtype=bool)
    for j in range(costs.shape[1]):
        col = costs[:, j]
        no_worse &= col[:, None] <= col[None, :]
        better |= col[:, None] < col[None, :]
    dominates = no_worse & better  # dominates[a, b]: a dominates b
    n_dominators = dominates.sum(axis=0)
    remaining = np.ones(n, dtype=bool)
    rank = 0
    while remaining.any():
        rank += 1
        front = remaining & (n_dominators == 0)
        if not front.any():  # cannot happen for a strict partial order; never loop forever
            raise RuntimeError("non-dominated sorting made no progress")
        ranks[front] = rank
        remaining &= ~front
        n_dominators -= dominates[front].sum(axis=0)
    return ranks


def pareto_front(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]] = (("val_acc", "max"), ("macs", "min")),
    max_rank: int = 1,
) -> pd.DataFrame:
    """The Pareto-optimal TERMINATED trials of ``df`` with a ``rank`` column.

    Only rows with status TERMINATED and no null/NaN objective take part. ``objectives``
    are (column, "max"|"min") pairs, any number of them (e.g. add ``("latency_ms", "min")``).
    Returns the rows of rank ≤ ``max_rank`` (1 = the non-dominated front), sorted by
    rank, then ``macs`` ascending, then ``val_acc`` descending. Rows with identical
    objective values are all kept: neither dominates the other.
    """
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    columns = [c for c, _ in objectives]
    missing = [c for c in [*columns, "status"] if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the frame; it has: {', '.join(map(str, df.columns))}")
    values = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        values[:, j] = pd.to_numeric(df[c]).to_numpy(dtype=np.float64, na_value=np.nan)
    keep = (df["status"].to_numpy(dtype=object) == "TERMINATED") & ~np.isnan(values).any(axis=1)
    ranks = non_dominated_ranks(values[keep], [s for _, s in objectives])
    front = df.loc[keep].copy()
    front["rank"] = ranks
    front = front.loc[front["rank"] <= max_rank]
    sort_by = ["rank"] + [c for c in ("macs", "val_acc", "trial_id") if c in front.columns]
    ascending = [True] + [c != "val_acc" for c in sort_by[1:]]
    return front.sort_values(sort_by, ascending=ascending, kind="mergesort", na_position="last").reset_index(drop=True)
