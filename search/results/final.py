"""The ledger of ``prunetune finalize``: ``final.parquet`` and ``final_epochs.parquet``.

The trials schema plus ``source_trial_id`` (:data:`SOURCE_KEY`, the search trial a final run
was made from), one row per source. Read by ``pareto --final`` without Ray or Optuna.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from search.results import ledger
from search.results.expdir import FINAL_EPOCHS_FILE, FINAL_FILE
from search.results.ledger import TRIALS_SCHEMA, Ledger
from search.results.schema import params_of
from search.results.storage import Store, as_store

__all__ = ["FINAL_EPOCHS_FILE", "FINAL_FILE", "FINAL_SCHEMA", "FinalLedger", "SOURCE_KEY", "read_final"]

#: The params key (and column) naming the search trial a final run was made from.
SOURCE_KEY = "source_trial_id"
FINAL_SCHEMA = TRIALS_SCHEMA.append(pa.field(SOURCE_KEY, pa.string()))


def read_final(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """``final.parquet`` as a DataFrame with the columns of :data:`FINAL_SCHEMA` (empty if absent)."""
    return ledger._to_frame(ledger._read_table(as_store(exp_dir), FINAL_FILE, FINAL_SCHEMA))


class FinalLedger(Ledger):
    """The :class:`~search.results.ledger.Ledger` of ``final.parquet``/``final_epochs.parquet``.

    Rows are unique by ``source_trial_id`` (taken from the row, else from its params):
    a source recorded again replaces its row. ``flush`` writes no Pareto file.
    """

    trials_file = FINAL_FILE
    epochs_file = FINAL_EPOCHS_FILE
    pareto_file = None
    schema = FINAL_SCHEMA
    row_kind = "final trial"

    def _key(self, row: Mapping[str, Any]) -> str:
        return row[SOURCE_KEY] or row["trial_id"]

    def add_trial(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        row.setdefault(SOURCE_KEY, params_of(row).get(SOURCE_KEY))
        super().add_trial(row)

    def __contains__(self, trial_id: object) -> bool:
        return any(r["trial_id"] == trial_id for r in self._trials.values())
