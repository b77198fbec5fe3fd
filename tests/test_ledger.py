"""The ledger: schema round-trip, atomic writes, unique trial ids, resume, Pareto front."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search.results import ledger as ledger_mod
from search.results.ledger import (
    EPOCHS_FILE,
    EPOCHS_SCHEMA,
    PARETO_FILE,
    PARETO_SCHEMA,
    TRIALS_FILE,
    TRIALS_SCHEMA,
    Ledger,
    non_dominated_ranks,
    pareto_front,
    read_epochs,
    read_pareto,
    read_trials,
)
from pruning.errors import UsageError

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)


def good_row(trial_id: str = "t0001", **kw: object) -> dict:
    row = dict(
        trial_id=trial_id,
        status="TERMINATED",
        mode="prune",
        criterion="l1",
        params_json='{"ratio": 0.5}',
        widths=[16, 32, 32],
        group_names=["conv1", "conv2", "conv3"],
        base_val_acc=0.95,
        val_acc=0.93,
        test_acc=0.925,
        macs=3_470_000,
        params=120_000,
        latency_ms=1.25,
        macs_ratio=0.5,
        epochs=3,
        wall_s=12.5,
        seed=7,
        git_sha="abc123",
        prunetune_version="0.1.0",
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=12),
        checkpoint="ckpt/t0001",
        error=None,
    )
    row.update(kw)
    return row


def error_row(trial_id: str = "t0002") -> dict:
    return dict(trial_id=trial_id, status="ERROR", mode="prune", criterion="taylor", error="NaN loss at epoch 1")


def tmp_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- schema


def test_schema_round_trip(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    led.add_trial(good_row())
    led.add_trial(error_row())
    led.add_epochs([
        dict(
            trial_id="t0001", epoch=0, train_loss=1.5, val_acc=0.5, macs=3_470_000, widths=[16, 32, 32], lr=0.1,
            wall_s=1.0,
        ),
        dict(trial_id="t0001", epoch=1, train_loss=0.7),
    ])
    led.flush()

    # The files carry exactly the documented schema (modulo pandas metadata).
    assert pq.read_schema(tmp_path / TRIALS_FILE).remove_metadata().equals(TRIALS_SCHEMA)
    assert pq.read_schema(tmp_path / EPOCHS_FILE).remove_metadata().equals(EPOCHS_SCHEMA)
    assert pq.read_schema(tmp_path / PARETO_FILE).remove_metadata().equals(PARETO_SCHEMA)

    df = pd.read_parquet(tmp_path / TRIALS_FILE)
    assert list(df.columns) == TRIALS_SCHEMA.names
    assert str(df["macs"].dtype) == "Int64" and str(df["params"].dtype) == "Int64"
    assert str(df["epochs"].dtype) == "Int32"
    assert df["val_acc"].dtype == np.float64
    assert str(df["started_at"].dtype) == "datetime64[us, UTC]"
    assert pd.api.types.is_string_dtype(df["trial_id"])

    ok, err = df.iloc[0], df.iloc[1]
    assert ok["experiment"] == "exp" and ok["trial_id"] == "t0001"
    assert list(ok["widths"]) == [16, 32, 32] and ok["widths"].dtype == np.int32
    assert list(ok["group_names"]) == ["conv1", "conv2", "conv3"]
    assert ok["macs"] == 3_470_000 and ok["val_acc"] == 0.93 and ok["epochs"] == 3
    assert ok["started_at"] == pd.Timestamp(T0) and ok["finished_at"] == pd.Timestamp(T0) + pd.Timedelta(seconds=12)
    assert pd.isna(ok["error"])
    # The ERROR row: nulls, not zeros.
    assert err["status"] == "ERROR" and err["error"] == "NaN loss at epoch 1"
    assert err["widths"] is None and err["group_names"] is None
    for col in ("val_acc", "test_acc", "macs", "params", "latency_ms", "epochs", "started_at", "seed"):
        assert pd.isna(err[col]), col

    ep = pd.read_parquet(tmp_path / EPOCHS_FILE)
    assert list(ep.columns) == EPOCHS_SCHEMA.names
    assert ep["epoch"].dtype == np.int32  # required column: plain numpy int
    assert list(ep["epoch"]) == [0, 1]
    assert list(ep.iloc[0]["widths"]) == [16, 32, 32] and pd.isna(ep.iloc[1]["lr"])

    # The library readers give the same frames as plain pandas.
    pd.testing.assert_frame_equal(read_trials(tmp_path), df)
    pd.testing.assert_frame_equal(read_epochs(tmp_path), ep)
    pd.testing.assert_frame_equal(led.trials(), df)


def test_readers_on_empty_experiment(tmp_path: Path) -> None:
    for reader, schema in ((read_trials, TRIALS_SCHEMA), (read_epochs, EPOCHS_SCHEMA), (read_pareto, PARETO_SCHEMA)):
        df = reader(tmp_path / "nothing-here")
        assert len(df) == 0 and list(df.columns) == schema.names
    assert str(read_trials(tmp_path)["macs"].dtype) == "Int64"
    # An empty ledger flushes valid, empty files.
    Ledger(tmp_path, "exp").flush()
    assert len(pd.read_parquet(tmp_path / TRIALS_FILE)) == 0
    assert list(pd.read_parquet(tmp_path / PARETO_FILE).columns) == PARETO_SCHEMA.names


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        (dict(bogus=1), "bogus"),
        (dict(macs=3.5), "macs"),
        (dict(macs="3M"), "macs"),
        (dict(epochs=True), "epochs"),
        (dict(epochs=2**31), "epochs"),
        (dict(val_acc="0.9"), "val_acc"),
        (dict(val_acc=93.2), "val_acc"),  # a percentage where a fraction belongs
        (dict(widths=[16, 2.5]), "widths[1]"),
        (dict(widths="16-32"), "widths"),
        (dict(group_names=[1, 2]), "group_names[0]"),
        (dict(status="DONE"), "status"),
        (dict(status=None), "status"),
        (dict(trial_id=None), "trial_id"),
        (dict(started_at=dt.datetime(2025, 1, 1)), "started_at"),  # naive: ambiguous
        (dict(started_at="2025-01-01"), "started_at"),
        (dict(experiment="other"), "experiment"),
    ],
)
def test_add_trial_rejects_bad_rows_naming_the_key(tmp_path: Path, patch: dict, key: str) -> None:
    led = Ledger(tmp_path, "exp")
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        led.add_trial(good_row(**patch))
    assert len(led) == 0


def test_add_trial_normalises_values(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    plus2 = dt.timezone(dt.timedelta(hours=2))
    led.add_trial(good_row(
        macs=np.int64(5), epochs=np.int32(2), val_acc=np.float32(0.5), latency_ms=float("nan"),
        widths=np.array([4, 8]), started_at=dt.datetime(2025, 1, 1, 14, tzinfo=plus2),
    ))
    row = led.trials().iloc[0]
    assert row["macs"] == 5 and row["epochs"] == 2 and row["val_acc"] == 0.5
    assert pd.isna(row["latency_ms"])  # NaN is stored as null
    assert list(row["widths"]) == [4, 8]
    assert row["started_at"] == pd.Timestamp("2025-01-01 12:00", tz="UTC")


def test_add_epochs_validates_all_before_adding(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    with pytest.raises(ValueError, match="epoch"):
        led.add_epochs([dict(trial_id="a", epoch=0), dict(trial_id="a")])
    assert len(led.epochs()) == 0
    # A restarted trial re-reports epoch 1: replaced, not duplicated.
    led.add_epochs([dict(trial_id="a", epoch=0, val_acc=0.1), dict(trial_id="a", epoch=1, val_acc=0.2)])
    led.add_epochs([dict(trial_id="a", epoch=1, val_acc=0.3)])
    ep = led.epochs()
    assert list(ep["epoch"]) == [0, 1] and list(ep["val_acc"]) == [0.1, 0.3]


# ----------------------------------------------------------------------------- atomicity


def test_flush_leaves_no_temp_files(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "new" / "dir", "exp")
    led.add_trial(good_row())
    led.flush()
    led.add_trial(good_row("t2", macs=10))
    led.flush()
    d = tmp_path / "new" / "dir"
    assert sorted(p.name for p in d.iterdir()) == sorted([TRIALS_FILE, EPOCHS_FILE, PARETO_FILE])
    assert len(read_trials(d)) == 2


def test_failed_write_keeps_previous_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    led = Ledger(tmp_path, "exp")
    led.add_trial(good_row("a"))
    led.flush()
    before = {name: (tmp_path / name).read_bytes() for name in (TRIALS_FILE, EPOCHS_FILE, PARETO_FILE)}

    created: list[Path] = []
    real_fdopen = os.fdopen

    def dying_fdopen(fd: int, mode: str = "r", *args: object) -> object:
        # The temp file is open; write half a file to it, then the disk is full.
        created.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        f = real_fdopen(fd, mode, *args)
        f.write(b"PAR1 half a parquet file")
        f.close()
        raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", dying_fdopen)
    led.add_trial(good_row("b"))
    with pytest.raises(OSError, match="disk full"):
        led.flush()
    monkeypatch.undo()

    assert created and created[0].parent == tmp_path  # the temp file was in the same directory
    assert not created[0].exists() and tmp_files(tmp_path) == []
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content, name
    assert list(read_trials(tmp_path)["trial_id"]) == ["a"]

    # Once the disk recovers, the next flush writes everything.
    monkeypatch.undo()
    led.flush()
    assert sorted(read_trials(tmp_path)["trial_id"]) == ["a", "b"]


def test_failure_after_temp_is_complete_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kill between writing the temp file and os.replace: the old file is intact.
    led = Ledger(tmp_path, "exp")
    led.add_trial(good_row("a"))
    led.flush()

    def no_replace(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ledger_mod.os, "replace", no_replace)
    led.add_trial(good_row("b"))
    with pytest.raises(KeyboardInterrupt):
        led.flush()
    monkeypatch.undo()
    assert tmp_files(tmp_path) == []
    assert list(read_trials(tmp_path)["trial_id"]) == ["a"]


# ----------------------------------------------------------------------------- uniqueness / resume


def test_readding_a_trial_replaces_it_and_reload_restores(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    led.add_trial(error_row("t1"))
    led.add_trial(good_row("t2"))
    led.add_trial(good_row("t1", val_acc=0.9))  # the retry succeeded
    assert len(led) == 2
    df = led.trials()
    assert df["trial_id"].is_unique
    assert df.set_index("trial_id").loc["t1", "status"] == "TERMINATED"
    led.add_epochs([dict(trial_id="t1", epoch=0, val_acc=0.5)])
    led.flush()
    assert read_trials(tmp_path)["trial_id"].is_unique

    again = Ledger(tmp_path, "exp")
    assert len(again) == 2 and "t1" in again
    pd.testing.assert_frame_equal(again.trials(), led.trials())
    pd.testing.assert_frame_equal(again.epochs(), led.epochs())
    assert set(again.trials()["trial_id"]) == {"t1", "t2"}
    assert not (again.trials()["status"] == "ERROR").any()
    # Adding after reload still replaces rather than duplicates.
    again.add_trial(good_row("t2", val_acc=0.1))
    again.flush()
    back = read_trials(tmp_path).set_index("trial_id")
    assert len(back) == 2 and back.loc["t2", "val_acc"] == 0.1


def test_ledger_refuses_another_experiments_dir(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    led.add_trial(good_row())
    led.flush()
    with pytest.raises(UsageError, match="exp"):
        Ledger(tmp_path, "other")


def test_ledger_on_object_storage_round_trips_and_reloads(s3_uri: str) -> None:
    led = Ledger(s3_uri, "exp")
    led.add_trial(good_row("a"))
    led.add_epochs([dict(trial_id="a", epoch=1, val_acc=0.5)])
    led.flush()
    led.add_trial(good_row("b", val_acc=0.99))
    led.flush()
    assert sorted(read_trials(s3_uri)["trial_id"]) == ["a", "b"]
    again = Ledger(s3_uri, "exp")
    pd.testing.assert_frame_equal(again.trials(), led.trials())
    pd.testing.assert_frame_equal(again.epochs(), led.epochs())
    from search.results.storage import Store

    assert Store.from_uri(s3_uri).list() == sorted([TRIALS_FILE, EPOCHS_FILE, PARETO_FILE])
    with pytest.raises(UsageError, match="exp"):
        Ledger(s3_uri, "other")


def test_old_file_missing_a_nullable_column_loads(tmp_path: Path) -> None:
    # Forward compatibility: a ledger written before a nullable column existed.
    table = pa.table({"experiment": ["exp"], "trial_id": ["x"], "status": ["TERMINATED"], "macs": [5]})
    pq.write_table(table, tmp_path / TRIALS_FILE)
    df = Ledger(tmp_path, "exp").trials()
    assert list(df.columns) == TRIALS_SCHEMA.names and df.loc[0, "macs"] == 5 and pd.isna(df.loc[0, "latency_ms"])


# ----------------------------------------------------------------------------- Pareto


def dominates(a: np.ndarray, b: np.ndarray, senses: list[str]) -> bool:
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    ca, cb = a * sign, b * sign
    return bool(np.all(ca <= cb) and np.any(ca < cb))


def random_trials(n: int, seed: int) -> pd.DataFrame:
    """n random trials plus an exact twin (same objectives, new id) of each."""
    rng = np.random.default_rng(seed)
    # Accuracy grows with MACs, plus noise, on coarse grids: a front of a useful size,
    # and ties in single objectives.
    macs = rng.integers(1, 200, n) * 10_000
    val_acc = np.clip(np.round(0.5 + 0.4 * np.sqrt(macs / macs.max()) + rng.normal(0, 0.05, n), 2), 0, 1)
    latency = rng.integers(1, 20, n) / 4
    status = rng.choice(["TERMINATED", "STOPPED", "ERROR"], n, p=[0.7, 0.2, 0.1])
    df = pd.DataFrame({
        "trial_id": [f"t{i:04d}" for i in range(n)],
        "status": status,
        "val_acc": val_acc,
        "macs": pd.array(macs, dtype="Int64"),
        "latency_ms": latency,
    })
    df.loc[rng.random(n) < 0.05, "val_acc"] = np.nan  # missing objectives are ignored
    df.loc[df["status"] == "ERROR", ["val_acc", "macs"]] = [np.nan, pd.NA]
    twins = df.assign(trial_id=df["trial_id"] + "b")
    return pd.concat([df, twins], ignore_index=True).sample(frac=1.0, random_state=seed, ignore_index=True)


def brute_force_front(df: pd.DataFrame, cols: list[str], senses: list[str]) -> set[str]:
    eligible = df[(df["status"] == "TERMINATED") & df[cols].notna().all(axis=1)]
    costs = eligible[cols].to_numpy(dtype=float) * np.array([-1.0 if s == "max" else 1.0 for s in senses])
    front = set()
    for tid, c in zip(eligible["trial_id"], costs, strict=True):
        dominated_by_any = np.any(np.all(costs <= c, axis=1) & np.any(costs < c, axis=1))
        if not dominated_by_any:
            front.add(tid)
    return front


@pytest.mark.parametrize(
    "objectives",
    [
        (("val_acc", "max"), ("macs", "min")),
        (("val_acc", "max"), ("macs", "min"), ("latency_ms", "min")),
    ],
)
def test_pareto_front_matches_brute_force(objectives: tuple) -> None:
    df = random_trials(300, seed=3)
    cols, senses = [c for c, _ in objectives], [s for _, s in objectives]
    front = pareto_front(df, objectives)

    expected = brute_force_front(df, cols, senses)
    assert len(expected) >= 8  # the data make a front worth testing
    assert set(front["trial_id"]) == expected
    assert len(front) == len(expected)  # each row once
    # Every front row is non-dominated by any eligible row (pairwise, the definition).
    pts = front[cols].to_numpy(dtype=float)
    for p in pts:
        assert not any(dominates(q, p, senses) for q in pts)
    assert (front["rank"] == 1).all()
    assert set(front["status"]) == {"TERMINATED"}
    assert list(front["macs"]) == sorted(front["macs"])
    # Each trial has an exact twin: both are kept, neither dominates the other.
    assert front.duplicated(subset=cols, keep=False).all()
    if len(objectives) == 2:
        assert front["val_acc"].is_monotonic_increasing  # more accuracy costs more MACs


def test_stopped_and_error_rows_never_on_front() -> None:
    df = pd.DataFrame({
        "trial_id": ["ok", "stopped", "error", "null"],
        "status": ["TERMINATED", "STOPPED", "ERROR", "TERMINATED"],
        "val_acc": [0.5, 0.99, 0.99, np.nan],
        "macs": [100, 1, 1, 1],
    })
    front = pareto_front(df)
    assert list(front["trial_id"]) == ["ok"]


def test_pareto_front_rejects_unknown_columns_and_senses() -> None:
    df = random_trials(5, seed=0)
    with pytest.raises(ValueError, match="params"):
        pareto_front(df, (("val_acc", "max"), ("params", "min")))
    with pytest.raises(ValueError, match="maximise"):
        pareto_front(df, (("val_acc", "maximise"),))


def test_non_dominated_ranks_peels_fronts() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 8, size=(200, 3)).astype(float)
    senses = ["max", "min", "min"]
    ranks = non_dominated_ranks(values, senses)
    assert ranks.min() == 1 and ranks.dtype == np.int32
    for i, j in itertools.product(range(len(values)), repeat=2):
        if dominates(values[i], values[j], senses):
            assert ranks[i] < ranks[j]
    # Every point of rank r > 1 is dominated by some point of rank r - 1.
    for j in np.flatnonzero(ranks > 1):
        assert any(dominates(values[i], values[j], senses) for i in np.flatnonzero(ranks == ranks[j] - 1))
    assert non_dominated_ranks(np.empty((0, 2)), ["max", "min"]).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        non_dominated_ranks(np.array([[np.nan, 1.0]]), ["max", "min"])


def test_pareto_max_rank_returns_later_fronts() -> None:
    df = pd.DataFrame({
        "trial_id": ["a", "b", "c"], "status": ["TERMINATED"] * 3,
        "val_acc": [0.9, 0.8, 0.7], "macs": [10, 20, 30],
    })
    assert list(pareto_front(df)["trial_id"]) == ["a"]
    two = pareto_front(df, max_rank=3)
    assert list(two["trial_id"]) == ["a", "b", "c"] and list(two["rank"]) == [1, 2, 3]


def test_flush_writes_the_front(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "exp")
    led.add_trial(good_row("small", val_acc=0.80, macs=1_000))
    led.add_trial(good_row("big", val_acc=0.90, macs=9_000))
    led.add_trial(good_row("worse", val_acc=0.70, macs=5_000))
    led.add_trial(good_row("stopped", status="STOPPED", val_acc=0.99, macs=10))
    led.add_trial(error_row("err"))
    led.flush()
    front = read_pareto(tmp_path)
    assert list(front["trial_id"]) == ["small", "big"]
    assert list(front["rank"]) == [1, 1] and front["rank"].dtype == np.int32
    pd.testing.assert_frame_equal(front, led.pareto())
