"""The results ledger: the three Parquet files of an experiment, their atomic writes, and :class:`Ledger`.

An experiment directory holds three files, all written by :class:`Ledger`:

``trials.parquet``
    One row per finished trial (status TERMINATED, STOPPED or ERROR), unique by
    ``trial_id``. This is the source of truth of a search: ``resume`` reads it back.
``epochs.parquet``
    One row per (trial, epoch) reported while a trial trains.
``pareto.parquet``
    The non-dominated TERMINATED trials on (val_acc max, macs min) plus ``rank``.
    Derived: it is recomputed from the trials on every flush.

Their columns, units and row builders live in :mod:`search.results.schema`; this module
re-exports them, so ``search.results.ledger`` stays the ledger's one public entry point.

The experiment lives in a :class:`search.results.storage.Store`: a local (or NFS) directory or an
``s3://``/``gs://`` prefix. Every write is :meth:`Store.write_bytes_atomic` (locally a
temporary file in the same directory, fsynced, then renamed over the old file with
``os.replace``; on object storage a new version object and then a manifest naming it), so
a kill at any moment leaves the previous valid file. The ledger has a single writer (the
driver); it takes no lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pruning.atomic import atomic_write
from pruning.errors import UsageError
from search.results.schema import (
    EPOCHS_SCHEMA,
    PARETO_SCHEMA,
    STATUSES,
    TRIALS_SCHEMA,
    epoch_row,
    is_missing,
    params_of,
    trial_row,
    validate_row,
)
from search.results.pareto import non_dominated_ranks, pareto_front
from search.results.storage import Store, as_store

__all__ = [
    "EPOCHS_FILE",
    "EPOCHS_SCHEMA",
    "Ledger",
    "PARETO_FILE",
    "PARETO_SCHEMA",
    "STATUSES",
    "TRIALS_FILE",
    "TRIALS_SCHEMA",
    "atomic_write",
    "epoch_row",
    "is_missing",
    "non_dominated_ranks",
    "params_of",
    "pareto_front",
    "read_epochs",
    "read_pareto",
    "read_trials",
    "trial_row",
]

logger = logging.getLogger(__name__)

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
PARETO_FILE = "pareto.parquet"


# --------------------------------------------------------------------------- tables <-> frames


def _conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """``table`` with exactly the columns of ``schema``: missing nullable ones filled with nulls."""
    extra = sorted(set(table.column_names) - set(schema.names))
    if extra:
        raise UsageError(f"{source} has columns {extra} that this prunetune does not know; is it from a newer version?")
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise UsageError(f"{source} lacks the required column {field.name!r}")
    return pa.Table.from_arrays(columns, schema=schema)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """DataFrame of a ledger table: nullable integer columns become ``Int64``/``Int32``.

    Non-nullable integers stay numpy ints; floats use NaN for null; strings are pandas
    strings; timestamps ``datetime64[us, UTC]``; lists are object columns of arrays.
    """
    mapper = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}
    df = table.to_pandas(types_mapper=mapper.get)
    for field in table.schema:
        if pa.types.is_integer(field.type) and not field.nullable:
            df[field.name] = df[field.name].astype(field.type.to_pandas_dtype())
    return df


def _to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Arrow table of ``df`` with ``schema``; keeps pandas metadata so that a plain
    ``pd.read_parquet`` gives back the same dtypes as :func:`_to_frame`."""
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


# --------------------------------------------------------------------------- file I/O


def _write_parquet(table: pa.Table, sink: Any) -> None:
    """Serialise ``table`` as Parquet into ``sink`` (the one Parquet writer; tests patch it to inject failures)."""
    pq.write_table(table, sink)


def _write_table_atomic(store: Store, name: str, table: pa.Table) -> None:
    """Replace ``name`` in ``store`` with ``table``, atomically (:meth:`Store.write_bytes_atomic`:
    a renamed temp file on a local disk, a new version object plus its manifest on S3/GCS)."""
    sink = pa.BufferOutputStream()
    _write_parquet(table, sink)
    store.write_bytes_atomic(name, sink.getvalue().to_pybytes())


def _read_table(store: Store, name: str, schema: pa.Schema) -> pa.Table:
    """The table ``name`` of ``store`` conformed to ``schema``; an empty table if it is absent."""
    try:
        table = store.read_parquet(name)
    except FileNotFoundError:
        return schema.empty_table()
    return _conform(table, schema, store.uri(name))


def read_trials(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """The trials of an experiment (a dir, an ``s3://``/``gs://`` URI or a Store) as a DataFrame
    with the columns of :data:`TRIALS_SCHEMA` (empty, with those columns and dtypes, if
    nothing was written yet)."""
    return _to_frame(_read_table(as_store(exp_dir), TRIALS_FILE, TRIALS_SCHEMA))


def read_epochs(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """The per-epoch rows of an experiment, columns of :data:`EPOCHS_SCHEMA`."""
    return _to_frame(_read_table(as_store(exp_dir), EPOCHS_FILE, EPOCHS_SCHEMA))


def read_pareto(exp_dir: Store | str | os.PathLike[str]) -> pd.DataFrame:
    """The stored Pareto front of an experiment, columns of :data:`PARETO_SCHEMA`."""
    return _to_frame(_read_table(as_store(exp_dir), PARETO_FILE, PARETO_SCHEMA))


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """The trials and epochs of one experiment, held in memory and flushed to Parquet.

    On construction the existing files of ``exp_dir`` are loaded, so a resumed search
    continues the same ledger. Rows are unique by ``trial_id`` (a retried trial replaces
    its row) and epochs by (``trial_id``, ``epoch``). Nothing reaches disk until
    :meth:`flush`.

    Its files and its trials schema are class attributes, so that a subclass keeps another
    ledger of the same experiment (``search.results.final.FinalLedger``); a subclass with no
    ``pareto_file`` writes no front.
    """

    trials_file: str = TRIALS_FILE
    epochs_file: str = EPOCHS_FILE
    pareto_file: str | None = PARETO_FILE
    schema: pa.Schema = TRIALS_SCHEMA
    row_kind: str = "trial"  # names the row in validation errors

    def __init__(self, exp_dir: Store | str | os.PathLike[str], experiment: str) -> None:
        if not experiment:
            raise ValueError("experiment name must be a non-empty string")
        self.store = as_store(exp_dir)
        self.exp_dir = self.store.local_path()  # None on object storage
        self.experiment = experiment
        self._trials: dict[str, dict[str, Any]] = {}
        self._epochs: dict[tuple[str, int], dict[str, Any]] = {}
        trials = _read_table(self.store, self.trials_file, self.schema)
        others = sorted(set(trials.column("experiment").to_pylist()) - {experiment})
        if others:
            raise UsageError(f"{self.store.uri(self.trials_file)} belongs to experiment(s) {others}, not {experiment!r}")
        for row in trials.to_pylist():
            self._trials[self._key(row)] = row
        for row in _read_table(self.store, self.epochs_file, EPOCHS_SCHEMA).to_pylist():
            self._epochs[(row["trial_id"], row["epoch"])] = row
        if self._trials or self._epochs:
            logger.info(
                "ledger %s: loaded %d trials, %d epoch rows", self.store, len(self._trials), len(self._epochs)
            )

    def _key(self, row: Mapping[str, Any]) -> str:
        """What makes a row unique in this ledger: its ``trial_id``."""
        return row["trial_id"]

    def add_trial(self, row: Mapping[str, Any]) -> None:
        """Record one finished trial (keys of :data:`TRIALS_SCHEMA`; ``experiment`` may be
        omitted). Replaces an existing row with the same ``trial_id``.

        Raises ValueError naming the key for an unknown key, a wrong type, a missing
        required key (``trial_id``, ``status``) or an accuracy outside [0, 1].
        """
        row = dict(row)
        row.setdefault("experiment", self.experiment)
        if row["experiment"] != self.experiment:
            raise ValueError(f"field 'experiment' = {row['experiment']!r} but this ledger is {self.experiment!r}")
        checked = validate_row(row, self.schema, self.row_kind)
        if self._key(checked) in self._trials:
            logger.info("trial %s recorded again (%s); replacing its row", self._key(checked), checked["status"])
        self._trials[self._key(checked)] = checked

    def add_epochs(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record per-epoch rows (keys of :data:`EPOCHS_SCHEMA`). A row for an existing
        (trial_id, epoch) replaces it, so a trial restarted from a checkpoint does not
        duplicate epochs. All rows are validated before any is added."""
        checked = [validate_row(r, EPOCHS_SCHEMA, "epoch") for r in rows]
        for r in checked:
            self._epochs[(r["trial_id"], r["epoch"])] = r

    def trials(self) -> pd.DataFrame:
        """All trial rows, columns of :attr:`schema` (:data:`TRIALS_SCHEMA`), in the order first added."""
        return _to_frame(pa.Table.from_pylist(list(self._trials.values()), schema=self.schema))

    def epochs(self) -> pd.DataFrame:
        """All epoch rows, columns of :data:`EPOCHS_SCHEMA`."""
        return _to_frame(pa.Table.from_pylist(list(self._epochs.values()), schema=EPOCHS_SCHEMA))

    def pareto(self, objectives: Sequence[tuple[str, str]] = (("val_acc", "max"), ("macs", "min"))) -> pd.DataFrame:
        """The Pareto front of the current trials (see :func:`pareto_front`)."""
        return pareto_front(self.trials(), objectives)

    def flush(self) -> None:
        """Write epochs.parquet, trials.parquet and pareto.parquet, in that order.

        Each file is replaced atomically; the three together are not one transaction.
        pareto.parquet is derived from the trials and written last, so a kill between
        files leaves at worst a stale front that the next flush recomputes.
        """
        trials = self.trials()
        _write_table_atomic(self.store, self.epochs_file, _to_table(self.epochs(), EPOCHS_SCHEMA))
        _write_table_atomic(self.store, self.trials_file, _to_table(trials, self.schema))
        if self.pareto_file is None:
            return
        front = pareto_front(trials)
        _write_table_atomic(self.store, self.pareto_file, _to_table(front, PARETO_SCHEMA))
        logger.debug("ledger %s: flushed %d trials, %d on the front", self.store, len(trials), len(front))

    def __len__(self) -> int:
        return len(self._trials)

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._trials

    def __repr__(self) -> str:
        return f"Ledger({str(self.store)!r}, experiment={self.experiment!r}, trials={len(self)})"
