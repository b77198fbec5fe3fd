"""``screen.parquet``: one row per screened candidate (``search.screen``), and what it says.

The file (:data:`SCREEN_SCHEMA`) is kept by :class:`ScreenLog`, written atomically after each
result, so a resumed search screens only the candidates it lacks. :func:`proxy_correlation` is
the Spearman rank correlation between the proxy score and the finetuned val accuracy of the
screened candidates that ran as trials; below :data:`TRUST_RHO` the search warns
(:func:`log_proxy_correlation`). How candidates are drawn and enqueued is
:mod:`search.study.screen`; how one is scored, :mod:`search.trial.screen`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from search.config import ExperimentConfig
from search.results.expdir import SCREEN_FILE
from search.results.ledger import _write_table_atomic, read_trials
from search.results.schema import params_of
from search.results.storage import Store, as_store
from search.trial.params import SCREEN_KEY, TARGET_KEY

__all__ = ["SCREEN_FILE", "SCREEN_SCHEMA", "TRUST_RHO", "ScreenLog", "candidate_key", "log_proxy_correlation",
           "proxy_correlation", "read_screen", "screen_frame"]

log = logging.getLogger(__name__)

#: Below this Spearman correlation between proxy and finetuned accuracy the proxy is not trusted.
TRUST_RHO = 0.3

SCREEN_SCHEMA = pa.schema(
    [
        pa.field("candidate", pa.int32(), nullable=False),  # index within its target, 0..candidates-1
        pa.field("target", pa.float64(), nullable=False),  # macs_target, fraction of the base MACs
        pa.field("criterion", pa.string()),
        pa.field("params_json", pa.string()),  # the candidate's params (profile ratio keys, criterion, target...)
        pa.field("widths", pa.list_(pa.int32())),  # channels per group after the cut, model order
        pa.field("macs", pa.int64()),
        pa.field("macs_ratio", pa.float64()),  # macs / base macs
        pa.field("proxy", pa.string()),  # abn | epochs1
        pa.field("score", pa.float64()),  # the proxy's val accuracy, fraction; null when the candidate failed
        pa.field("wall_s", pa.float64()),  # seconds to cut and score it (in the worker)
        pa.field("error", pa.string()),
    ]
)


def candidate_key(target: float, index: int) -> tuple[float, int]:
    """A screened candidate's identity: (target, index within the target)."""
    return round(float(target), 9), int(index)


def screen_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCREEN_SCHEMA} for r in rows], schema=SCREEN_SCHEMA)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def read_screen(exp_dir: Store | str) -> pd.DataFrame:
    """The rows of ``screen.parquet`` (columns of :data:`SCREEN_SCHEMA`; empty when absent)."""
    store = as_store(exp_dir)
    try:
        table = store.read_parquet(SCREEN_FILE)
    except FileNotFoundError:
        return screen_frame([])
    return screen_frame(table.to_pylist())


class ScreenLog:
    """``screen.parquet`` held in memory; :meth:`add` appends a row and rewrites the file
    atomically (``Store.write_bytes_atomic``), so a killed driver leaves a valid file and
    loses no finished result. On object storage, where every write is an upload of the
    whole file, it writes at most every ``REMOTE_EVERY_S`` seconds (a kill then loses the
    results of the last seconds, which a resume screens again); call :meth:`flush` at the
    end. Rows are unique by (target, candidate). One writer: the driver."""

    REMOTE_EVERY_S = 2.0

    def __init__(self, exp_dir: Store | str) -> None:
        self.store = as_store(exp_dir)
        self.rows: dict[tuple[float, int], dict[str, Any]] = {}
        self._written = time.monotonic()
        self._dirty = False
        for row in read_screen(self.store).to_dict("records"):
            self.rows[candidate_key(row["target"], row["candidate"])] = {k: (None if _missing(v) else v) for k, v in row.items()}

    def has(self, params: Mapping[str, Any]) -> bool:
        return candidate_key(params[TARGET_KEY], params[SCREEN_KEY]) in self.rows

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows[candidate_key(row["target"], row["candidate"])] = dict(row)
        self._dirty = True
        if self.store.is_local or time.monotonic() - self._written >= self.REMOTE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty, self._written = False, time.monotonic()
        ordered = sorted(self.rows.values(), key=lambda r: (float(r["target"]), int(r["candidate"])))
        rows = [{f.name: _plain(r.get(f.name)) for f in SCREEN_SCHEMA} for r in ordered]
        _write_table_atomic(self.store, SCREEN_FILE, pa.Table.from_pylist(rows, schema=SCREEN_SCHEMA))


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def _plain(v: Any) -> Any:
    if _missing(v):
        return None
    if isinstance(v, np.ndarray):
        return [int(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def proxy_correlation(screen: pd.DataFrame, trials: pd.DataFrame) -> tuple[float | None, int]:
    """(Spearman rank correlation between proxy score and finetuned val accuracy, pairs) over
    the screened candidates that ran as finished (TERMINATED) trials; None below 3 pairs or
    when either side is constant."""
    scores = {candidate_key(r["target"], r["candidate"]): r["score"] for r in screen.to_dict("records")
              if not _missing(r["score"])}
    pairs = []
    for row in trials[trials["status"] == "TERMINATED"].to_dict("records"):
        p = params_of(row)
        if p.get(SCREEN_KEY) is None or p.get(TARGET_KEY) is None or _missing(row.get("val_acc")):
            continue
        key = candidate_key(p[TARGET_KEY], p[SCREEN_KEY])
        if key in scores:
            pairs.append((scores[key], float(row["val_acc"])))
    if len(pairs) < 3:
        return None, len(pairs)
    a = pd.Series([p[0] for p in pairs])
    b = pd.Series([p[1] for p in pairs])
    if a.nunique() < 2 or b.nunique() < 2:
        return None, len(pairs)
    return float(a.rank().corr(b.rank())), len(pairs)


def log_proxy_correlation(cfg: ExperimentConfig, exp_dir: Store | str) -> float | None:
    """Print (``search.progress``) the proxy's rank correlation with the finetuned accuracy, and
    warn when it is below :data:`TRUST_RHO`; returns it (None: fewer than 3 finetuned candidates)."""
    progress = logging.getLogger("search.progress")
    proxy = cfg.search.screen.proxy if cfg.search.screen else "?"
    rho, n = proxy_correlation(read_screen(exp_dir), read_trials(exp_dir))
    if rho is None:
        progress.info("screening: %d screened candidate(s) finetuned; too few (or too alike) for a rank "
                      "correlation between proxy %s and val_acc", n, proxy)
        return None
    progress.info("screening: Spearman rank correlation between proxy %s and finetuned val_acc: %.2f over %d "
                  "candidates", proxy, rho, n)
    if rho < TRUST_RHO:
        progress.warning("warning: proxy %s ranks the finetuned candidates with Spearman %.2f < %.1f: the proxy is "
                         "not to be trusted on this setting", proxy, rho, TRUST_RHO)
    return rho
