"""The ledger's rows: the Parquet schemas, row validation, and rows built from trial results.

:data:`TRIALS_SCHEMA` (one row per finished trial), :data:`EPOCHS_SCHEMA` (one row per
trial and epoch) and :data:`PARETO_SCHEMA` (the trials columns plus ``rank``) are the one
definition of the ledger's columns; :func:`validate_row` checks a row against them and
:func:`trial_row` / :func:`epoch_row` turn a ``search.trial.result.TrialResult`` into rows.
Reading and writing the files is :mod:`search.results.ledger`'s (which re-exports these names).

Units: accuracies are fractions in [0, 1]; ``macs`` are multiply-accumulates of one
forward pass on one sample (FLOPs would be 2·MACs); ``params`` is a count;
``latency_ms`` milliseconds; ``wall_s`` seconds; ``macs_ratio`` is macs / base macs;
timestamps are UTC. ``train_macs``/``teacher_macs`` are total MACs over the trial's
training (forward + backward counted as 3 forward passes; the teacher's forwards once).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from search.trial.result import EPOCH_KEYS, plain

__all__ = [
    "EPOCHS_SCHEMA",
    "PARETO_SCHEMA",
    "STATUSES",
    "TRIALS_SCHEMA",
    "epoch_row",
    "is_missing",
    "params_of",
    "trial_row",
    "validate_row",
]

#: Final states of a trial, as Ray Tune names them.
STATUSES = ("TERMINATED", "STOPPED", "ERROR")

_UTC_US = pa.timestamp("us", tz="UTC")

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("mode", pa.string()),  # prune | adaptive | baseline ...
        pa.field("criterion", pa.string()),
        pa.field("params_json", pa.string()),  # the sampled params, JSON
        pa.field("widths", pa.list_(pa.int32())),  # channels per prunable group, model order
        pa.field("group_names", pa.list_(pa.string())),
        pa.field("base_val_acc", pa.float64()),  # fraction
        pa.field("val_acc", pa.float64()),  # fraction
        pa.field("test_acc", pa.float64()),  # fraction
        pa.field("macs", pa.int64()),  # multiply-accumulates, one sample
        pa.field("params", pa.int64()),  # parameter count
        pa.field("latency_ms", pa.float64()),
        pa.field("macs_ratio", pa.float64()),  # macs / base macs
        pa.field("epochs", pa.int32()),
        pa.field("wall_s", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("git_sha", pa.string()),
        pa.field("prunetune_version", pa.string()),
        pa.field("started_at", _UTC_US),
        pa.field("finished_at", _UTC_US),
        pa.field("checkpoint", pa.string()),
        pa.field("error", pa.string()),
        pa.field("val_acc_pruned", pa.float64()),  # fraction, right after the last cut (+ BN recalibration)
        pa.field("stop_step", pa.int32()),  # last accepted pruning step (max_drop guard), prune mode
        pa.field("stop_reason", pa.string()),  # completed | max_drop, prune mode
        pa.field("train_macs", pa.int64()),  # MACs spent training: 3 x forward per sample, + teacher forwards
        pa.field("teacher_macs", pa.int64()),  # of which the distillation teacher's forward passes
        pa.field("retries", pa.int32()),  # times Ray restarted the trial after its worker or node died
        pa.field("node", pa.string()),  # Ray node id of the worker that ran the trial's last attempt
        pa.field("hostname", pa.string()),  # that worker's hostname
        pa.field("macs_target", pa.float64()),  # objectives.macs_targets: the trial's target, fraction of base MACs
    ]
)

EPOCHS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("train_loss", pa.float64()),
        pa.field("val_acc", pa.float64()),  # fraction
        pa.field("macs", pa.int64()),
        pa.field("widths", pa.list_(pa.int32())),
        pa.field("lr", pa.float64()),
        pa.field("wall_s", pa.float64()),
        pa.field("attempt", pa.int32()),  # 0 = first run; n = the n-th retry (an epoch re-run replaces its row)
        pa.field("node", pa.string()),  # Ray node id of the worker that ran the epoch
    ]
)

#: The trials columns plus ``rank`` (1 = the Pareto front, 2 = the front of the rest, ...).
PARETO_SCHEMA = TRIALS_SCHEMA.append(pa.field("rank", pa.int32(), nullable=False))

_ACCURACY_FIELDS = frozenset({"base_val_acc", "val_acc", "test_acc", "val_acc_pruned"})
_INT_BOUNDS = {
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


# --------------------------------------------------------------------------- row checks


def _check_int(key: str, value: Any, typ: pa.DataType) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"field {key!r} must be an integer ({typ}), got {type(value).__name__} {value!r}")
    lo, hi = _INT_BOUNDS[typ]
    if not lo <= int(value) <= hi:
        raise ValueError(f"field {key!r} = {value!r} is out of range for {typ}")
    return int(value)


def _check_value(key: str, value: Any, typ: pa.DataType) -> Any:
    """Return ``value`` converted to the plain Python value pyarrow stores for ``typ``."""
    if pa.types.is_string(typ):
        if not isinstance(value, str):
            raise ValueError(f"field {key!r} must be a string, got {type(value).__name__} {value!r}")
        return str(value)
    if pa.types.is_integer(typ):
        return _check_int(key, value, typ)
    if pa.types.is_boolean(typ):  # final.parquet's candidate flags
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"field {key!r} must be true or false, got {type(value).__name__} {value!r}")
        return bool(value)
    if pa.types.is_floating(typ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"field {key!r} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
        return None if math.isnan(value) else value
    if pa.types.is_list(typ):
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                raise ValueError(f"field {key!r} must be 1-D, got an array of shape {value.shape}")
            value = value.tolist()
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"field {key!r} must be a list of {typ.value_type}, got {type(value).__name__} {value!r}")
        return [_check_value(f"{key}[{i}]", v, typ.value_type) for i, v in enumerate(value)]
    if pa.types.is_binary(typ):  # final.parquet's packed per-example hits
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"field {key!r} must be bytes, got {type(value).__name__}")
        return bytes(value)
    if pa.types.is_timestamp(typ):
        if not isinstance(value, dt.datetime):
            raise ValueError(f"field {key!r} must be a datetime, got {type(value).__name__} {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"field {key!r} must be timezone-aware (e.g. datetime.now(timezone.utc)), got {value!r}")
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        return value.astimezone(dt.timezone.utc)
    raise TypeError(f"no validator for {typ} (field {key!r})")  # a schema edit without a validator


def validate_row(row: Mapping[str, Any], schema: pa.Schema, what: str) -> dict[str, Any]:
    """Check ``row`` against ``schema``; return it complete (missing nullable keys -> None)."""
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; the schema has: {', '.join(schema.names)}")
    out: dict[str, Any] = {}
    for field in schema:
        value = row.get(field.name)
        if value is None:
            if not field.nullable:
                raise ValueError(f"{what} field {field.name!r} is required")
            out[field.name] = None
            continue
        out[field.name] = _check_value(field.name, value, field.type)
    if out.get("status") is not None and out["status"] not in STATUSES:
        raise ValueError(f"field 'status' = {out['status']!r}; choose one of: {', '.join(STATUSES)}")
    for key in _ACCURACY_FIELDS & set(out):
        acc = out[key]
        if acc is not None and not 0.0 <= acc <= 1.0:
            raise ValueError(f"field {key!r} = {acc!r} must be a fraction in [0, 1], not a percentage")
    return out


# --------------------------------------------------------------------------- rows from results


def is_missing(v: Any) -> bool:
    """None, NaN or pandas' NA (ledger frames use nullable integer columns); never a list/array/str."""
    if v is None or v is pd.NA:
        return True
    if isinstance(v, (list, tuple, dict, str)) or hasattr(v, "__len__"):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _int_or_none(v: Any) -> int | None:
    return None if is_missing(v) else int(v)


def _float_or_none(v: Any) -> float | None:
    return None if is_missing(v) else float(v)


def _timestamp(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def params_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled params of a trials row ({} when missing)."""
    text = row.get("params_json")
    return json.loads(text) if isinstance(text, str) and text else {}


def epoch_row(trial_id: str, result: Mapping[str, Any], attempt: int | None = 0) -> dict[str, Any]:
    """An :data:`EPOCHS_SCHEMA` row from a per-epoch result (``search.trial.result.TrialResult``);
    ``attempt``: 0 for the trial's first run, n for its n-th retry, None when unknown (an
    epoch a resumed trial re-sent from its checkpoint after the driver restarted)."""
    row = {k: result.get(k) for k in EPOCH_KEYS}
    row["attempt"] = None if attempt is None else int(attempt)
    row["node"] = result.get("node") if isinstance(result.get("node"), str) and result.get("node") else None
    row["trial_id"] = trial_id
    row["epoch"] = int(row["epoch"])
    row["macs"] = _int_or_none(row["macs"])
    row["widths"] = [int(w) for w in row["widths"]] if row.get("widths") is not None else None
    for k in ("train_loss", "val_acc", "lr", "wall_s"):
        row[k] = _float_or_none(row[k])
    return row


def trial_row(trial_id: str, status: str, params: Mapping[str, Any], result: Mapping[str, Any], *, seed: int,
              meta: Mapping[str, Any], checkpoint: str | None = None, error: str | None = None,
              retries: int = 0) -> dict[str, Any]:
    """A :data:`TRIALS_SCHEMA` row (without ``experiment``) from a trial's last result.

    ``result`` is a ``search.trial.result.TrialResult``: the final one, or the last epoch's when
    the trial was stopped early or died (then ``mode``/``criterion`` come from ``params``
    and ``epochs``/``wall_s`` from the epoch and Ray's ``time_total_s``). ``meta`` holds
    ``git_sha`` and ``prunetune_version``. ``retries``: how often Ray restarted the trial.
    """
    final = bool(result.get("final"))
    widths = result.get("widths")
    mode = result.get("mode") if final else params.get("mode")
    criterion = result.get("criterion") if final else params.get("criterion")
    return {
        "trial_id": trial_id,
        "status": status,
        "mode": mode if isinstance(mode, str) else None,
        "criterion": criterion if isinstance(criterion, str) else None,
        "params_json": json.dumps(plain(params), sort_keys=True, default=str),
        "widths": [int(w) for w in widths] if widths is not None else None,
        "group_names": list(result.get("group_names") or []) or None,
        "base_val_acc": _float_or_none(result.get("base_val_acc")),
        "val_acc": _float_or_none(result.get("val_acc")),
        "test_acc": _float_or_none(result.get("test_acc")),
        "macs": _int_or_none(result.get("macs")),
        "params": _int_or_none(result.get("params")),
        "latency_ms": _float_or_none(result.get("latency_ms")),
        "macs_ratio": _float_or_none(result.get("macs_ratio")),
        "epochs": _int_or_none(result.get("epochs") if final else result.get("epoch")),
        "wall_s": _float_or_none(result.get("wall_s") if final else result.get("time_total_s")),
        "seed": seed,
        "git_sha": meta.get("git_sha"),
        "prunetune_version": meta.get("prunetune_version"),
        "started_at": _timestamp(result.get("started_at")),
        "finished_at": _timestamp(result.get("finished_at")) or dt.datetime.now(dt.timezone.utc),
        "checkpoint": checkpoint,
        "error": error,
        "val_acc_pruned": _float_or_none(result.get("val_acc_pruned")),
        "stop_step": _int_or_none(result.get("stop_step")),
        "stop_reason": result.get("stop_reason") if isinstance(result.get("stop_reason"), str) else None,
        "train_macs": _int_or_none(result.get("train_macs")),
        "teacher_macs": _int_or_none(result.get("teacher_macs")),
        "retries": int(retries),
        "node": result.get("node") if isinstance(result.get("node"), str) else None,
        "hostname": result.get("hostname") if isinstance(result.get("hostname"), str) else None,
        "macs_target": _float_or_none(params.get("macs_target")),
    }

