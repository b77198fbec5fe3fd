"""The ledger of ``prunetune finalize``: ``final.parquet`` and ``final_epochs.parquet``.

The trials schema plus ``source_trial_id`` (:data:`SOURCE_KEY`, the search trial a final run
was made from) and the candidate columns of finalize's pick (:data:`FINAL_EXTRA_FIELDS`, all
nullable: files of older finalizes read with nulls), one row per candidate. A candidate's run
carries its columns in its params (the ``final_*`` keys, :func:`final_columns`). Read by
``pareto --final`` without Ray or Optuna.
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
from search.results.schema import params_of, validate_row
from search.results.storage import Store, as_store

__all__ = ["FINAL_EPOCHS_FILE", "FINAL_EXTRA_FIELDS", "FINAL_FILE", "FINAL_SCHEMA", "FinalLedger", "SOURCE_KEY",
           "final_columns", "read_final"]

#: The params key (and column) naming the search trial a final run was made from.
SOURCE_KEY = "source_trial_id"
#: Params keys a finalize run carries (besides ``source_trial_id``), copied into the final row's columns.
P_CANDIDATE, P_VARIANT, P_TARGET, P_TARGET_LABEL, P_UNIFORM = (
    "final_candidate", "final_variant", "final_macs_target", "final_target_label", "final_uniform")

#: Columns ``final.parquet`` adds to the trials schema (all nullable: files of older
#: finalizes read with nulls). ``macs_target`` is left out when the trials schema has it.
FINAL_EXTRA_FIELDS = (
    pa.field("candidate", pa.string()),  # unique key: source trial id or uniform@<target>, + variant suffix
    pa.field("variant", pa.string()),  # finetune | finetune+distill | scratch | scratch+distill
    pa.field("target_label", pa.string()),  # the target the candidate competes in, as printed
    pa.field("macs_target", pa.float64()),  # that target, fraction of the base MACs
    pa.field("is_uniform", pa.bool_()),  # the uniform L1 baseline of its target
    pa.field("select_acc", pa.float64()),  # accuracy on the selection split (fraction)
    pa.field("picked", pa.bool_()),  # the model finalize handed back for its target
    # per example of the selection split, in order, whether the candidate was right (numpy packbits)
    pa.field("select_hits", pa.binary()),
    # one-sided exact McNemar p-value of "better than its target's uniform baseline" on select
    pa.field("select_p", pa.float64()),
)
FINAL_SCHEMA = pa.schema([*TRIALS_SCHEMA, pa.field(SOURCE_KEY, pa.string()),
                          *(f for f in FINAL_EXTRA_FIELDS if f.name not in TRIALS_SCHEMA.names)])


def final_columns(params: Mapping[str, Any]) -> dict[str, Any]:
    """The final row's candidate columns, from the params of its run."""
    if P_CANDIDATE not in params:
        return {}
    return {"candidate": params.get(P_CANDIDATE), "variant": params.get(P_VARIANT),
            "target_label": params.get(P_TARGET_LABEL), "macs_target": params.get(P_TARGET),
            "is_uniform": bool(params.get(P_UNIFORM))}


def read_final(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """``final.parquet`` as a DataFrame with the columns of :data:`FINAL_SCHEMA` (empty if absent)."""
    return ledger._to_frame(ledger._read_table(as_store(exp_dir), FINAL_FILE, FINAL_SCHEMA))


class FinalLedger(Ledger):
    """The :class:`~search.results.ledger.Ledger` of ``final.parquet``/``final_epochs.parquet``.

    Rows are unique by ``candidate`` (else, in files of older finalizes, ``source_trial_id``;
    both taken from the row, else from its params): a candidate recorded again replaces its
    row. ``flush`` writes no Pareto file. Epoch rows of a run without a final row (a
    finalize killed while it trained; the rerun trains that candidate again under a new
    trial id) are dropped when the ledger is opened, before any run starts.
    """

    trials_file = FINAL_FILE
    epochs_file = FINAL_EPOCHS_FILE
    pareto_file = None
    schema = FINAL_SCHEMA
    row_kind = "final trial"

    def __init__(self, exp_dir: Store | str | os.PathLike[str], experiment: str) -> None:
        super().__init__(exp_dir, experiment)
        finished = {row["trial_id"] for row in self._trials.values()}
        self._epochs = {k: row for k, row in self._epochs.items() if k[0] in finished}
        for key, row in self._trials.items():
            row["candidate"] = key  # a row of an older finalize: its source is its candidate key

    def _key(self, row: Mapping[str, Any]) -> str:
        return row.get("candidate") or row[SOURCE_KEY] or row["trial_id"]

    def add_trial(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        params = params_of(row)
        row.setdefault(SOURCE_KEY, params.get(SOURCE_KEY))
        for k, v in final_columns(params).items():
            if row.get(k) is None:  # (a trials column such as macs_target may come unset from the result)
                row[k] = v
        super().add_trial(row)

    def update(self, key: str, **columns: Any) -> None:
        """Set ``columns`` of the row of candidate ``key`` (scores and picks, after the runs)."""
        self._trials[key] = validate_row({**self._trials[key], **columns}, self.schema, self.row_kind)

    def keys(self) -> list[str]:
        """The candidate keys recorded, in the order first added."""
        return list(self._trials)

    def __contains__(self, trial_id: object) -> bool:
        return any(r["trial_id"] == trial_id for r in self._trials.values())
