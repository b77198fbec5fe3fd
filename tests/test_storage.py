"""search.results.storage and search.study.journal on a local dir and on a real S3 server (moto, 127.0.0.1)."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pruning.errors import UsageError
from search.study.journal import SyncedJournalBackend, flush_journal, open_journal
from search.results.storage import Store, ensure_private_dir, parse_results_dir

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store.from_uri(tmp_path / "results" / "exp", create=True)
    return Store.from_uri(request.getfixturevalue("s3_uri"))


def _table(i: int, n: int = 50) -> pa.Table:
    return pa.table({"trial_id": [f"t{i}-{k}" for k in range(n)], "version": [i] * n})


def _versions(store: Store, name: str) -> list[str]:
    selector = pafs.FileSelector(store._path(name + ".v"), allow_not_found=True)
    return sorted(i.path.rsplit("/", 1)[-1] for i in store.fs.get_file_info(selector))


# --------------------------------------------------------------------------- both kinds


def test_bytes_round_trip_and_replace(store: Store) -> None:
    assert not store.exists("a.bin")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a.bin")
    store.write_bytes_atomic("a.bin", b"first")
    store.write_bytes_atomic("a.bin", b"second, longer")
    assert store.exists("a.bin")
    assert store.read_bytes("a.bin") == b"second, longer"
    store.write_bytes_atomic("sub/dir/b.json", b"{}")
    assert store.read_bytes("sub/dir/b.json") == b"{}"


def test_parquet_round_trip(store: Store) -> None:
    store.write_parquet_atomic("trials.parquet", _table(1))
    store.write_parquet_atomic("trials.parquet", _table(2))
    assert store.read_parquet("trials.parquet").equals(_table(2))


def test_list_names_each_file_once(store: Store) -> None:
    for name in ("trials.parquet", "epochs.parquet", "ray/session-001/state.json"):
        store.write_bytes_atomic(name, b"x")
    store.write_bytes_atomic("trials.parquet", b"y")  # a second version is not a second name
    assert store.list() == ["epochs.parquet", "ray/session-001/state.json", "trials.parquet"]
    assert store.list("ray") == ["ray/session-001/state.json"]
    assert store.list("nothing-here") == []


def test_delete_removes_file_and_versions(store: Store) -> None:
    store.write_bytes_atomic("trials.parquet", b"x")
    store.write_bytes_atomic("trials.parquet", b"y")
    store.write_bytes_atomic("ray/a", b"z")
    store.delete("trials.parquet")
    store.delete("ray")
    store.delete("never-written")
    assert store.list() == []
    assert not store.exists("trials.parquet")


def test_sync_up_and_down(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "cache" / "optuna.journal"
    src.parent.mkdir()
    src.write_bytes(b'{"op_code": 0}\n')
    dst = tmp_path / "elsewhere" / "optuna.journal"
    assert store.sync_down("optuna.journal", dst) is False
    assert not dst.exists()
    store.sync_up(src, "optuna.journal")
    assert store.sync_down("optuna.journal", dst) is True
    assert dst.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600


def test_upload_and_download_dir(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "export-src"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "sub" / "widths.json").write_bytes(b"[1, 2]")
    assert store.upload_dir(src, "export/t1") == ["export/t1/model.pt", "export/t1/sub/widths.json"]
    assert store.read_bytes("export/t1/model.pt") == b"weights"
    if not store.is_local:  # a plain object: readable without the manifest
        assert store._get(store._path("export/t1/model.pt")) == b"weights"
    got = store.download_dir("export/t1", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in got) == ["model.pt", "sub/widths.json"]
    assert (tmp_path / "back" / "sub" / "widths.json").read_bytes() == b"[1, 2]"


def test_store_pickles(store: Store) -> None:
    store.write_bytes_atomic("a", b"payload")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store
    assert clone.read_bytes("a") == b"payload"


def test_child_and_uri(store: Store) -> None:
    child = store.child("exp2")
    child.write_bytes_atomic("f", b"1")
    assert store.read_bytes("exp2/f") == b"1"
    assert child.uri("f") == store.uri("exp2/f")
    assert store.uri("f").startswith("s3://" if not store.is_local else "/")


@pytest.mark.parametrize("bad", ["", "/abs", "../up", "a/../b", "x.v/y", "trials.parquet.manifest.json"])
def test_bad_names_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(ValueError, match="store name"):
        store.write_bytes_atomic(bad, b"x")


# --------------------------------------------------------------------------- local only


def test_local_write_is_a_plain_file_without_leftovers(tmp_path: Path) -> None:
    store = Store.from_uri(f"file://{tmp_path}")
    assert store.is_local and store.local_path() == tmp_path
    store.write_parquet_atomic("trials.parquet", _table(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet"]  # no temp, no manifest
    assert pq.read_table(tmp_path / "trials.parquet").equals(_table(3))
    assert store.ray_storage() == (str(tmp_path / "ray"), None)


def test_local_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.from_uri(tmp_path)
    store.write_bytes_atomic("a", b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes_atomic("a", b"new")
    assert store.read_bytes("a") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_ensure_private_dir_makes_new_dirs_user_only(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    made = ensure_private_dir(shared / "results" / "exp")
    assert made.is_dir()
    assert stat.S_IMODE((shared / "results").stat().st_mode) == 0o700
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # existing dirs keep their mode
    Store.from_uri(tmp_path / "r2" / "exp", create=True)
    assert stat.S_IMODE((tmp_path / "r2" / "exp").stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        ensure_private_dir(tmp_path / "file")


def test_local_journal_is_user_only(tmp_path: Path) -> None:
    store = Store.from_uri(tmp_path / "exp", create=True)
    storage = open_journal(store)
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    journal = tmp_path / "exp" / "optuna.journal"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert len(optuna.load_study(study_name="s", storage=open_journal(store)).trials) == 2


# --------------------------------------------------------------------------- results_dir


@pytest.mark.parametrize(("value", "expected"), [
    ("results", "results"),
    ("/mnt/nfs/results/", "/mnt/nfs/results/"),
    ("file:///tmp/r", "/tmp/r"),
    ("s3://bucket/pre/fix/", "s3://bucket/pre/fix"),
    ("S3://bucket", "s3://bucket"),
    ("gs://bucket/p", "gs://bucket/p"),
])
def test_parse_results_dir_accepts(value: str, expected: str) -> None:
    assert parse_results_dir(value) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("hdfs://nn/x", "unsupported scheme 'hdfs'"),
    ("http://host/x", "unsupported scheme 'http'"),
    ("s3://", "names no bucket"),
    ("", "results_dir is empty"),
    ("s3://b/p?access_key=AK&secret_key=SK", "remove access_key, secret_key from the URI"),
])
def test_parse_results_dir_rejects_in_one_line(value: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        Store.from_uri(value)
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    assert "SK" not in msg  # a secret is not echoed
    if "scheme" in fragment:
        assert "s3://" in msg and "gs://" in msg and "file://" in msg, msg


# --------------------------------------------------------------------------- object storage


def test_s3_crash_before_manifest_keeps_previous_version(s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.from_uri(s3_uri)
    store.write_parquet_atomic("trials.parquet", _table(1))

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the driver dies after the new object, before the manifest

    with monkeypatch.context() as mp:
        mp.setattr(Store, "_put_manifest", killed)
        with pytest.raises(KeyboardInterrupt):
            store.write_parquet_atomic("trials.parquet", _table(2))
    assert len(_versions(store, "trials.parquet")) == 2  # the orphan is there ...
    reader = Store.from_uri(s3_uri)
    assert reader.read_parquet("trials.parquet").equals(_table(1))  # ... and nobody sees it
    assert reader.list() == ["trials.parquet"]
    store.write_parquet_atomic("trials.parquet", _table(3))
    manifest = store._manifest("trials.parquet")
    kept = {manifest["object"].rsplit("/", 1)[-1], manifest["previous"].rsplit("/", 1)[-1]}
    assert set(_versions(store, "trials.parquet")) == kept  # the orphan was collected
    assert reader.read_parquet("trials.parquet").equals(_table(3))


def test_s3_gc_keeps_current_and_previous(s3_uri: str) -> None:
    store = Store.from_uri(s3_uri)
    for i in range(5):
        store.write_bytes_atomic("f.bin", bytes([i]) * 10)
    versions = _versions(store, "f.bin")
    assert len(versions) == 2
    manifest = store._manifest("f.bin")
    assert manifest["object"].endswith(versions[1]) and manifest["previous"].endswith(versions[0])
    assert store.read_bytes("f.bin") == bytes([4]) * 10
    # a reader holding the old manifest can still read its version after one more write
    old = store._manifest("f.bin")
    store.write_bytes_atomic("f.bin", b"new")
    assert store._get(store._version_path("f.bin", old["object"])) == bytes([4]) * 10
    store.write_bytes_atomic("f.bin", b"newer")
    with pytest.raises(FileNotFoundError):
        store._get(store._version_path("f.bin", old["object"]))  # two writes later it is gone; read_bytes re-reads the manifest
    assert store.read_bytes("f.bin") == b"newer"


def test_s3_readers_see_whole_versions_during_writes(s3_uri: str) -> None:
    writer, reader = Store.from_uri(s3_uri), Store.from_uri(s3_uri)
    writer.write_parquet_atomic("trials.parquet", _table(0))
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_loop() -> None:
        try:
            while not done.is_set():
                versions = set(reader.read_parquet("trials.parquet").column("version").to_pylist())
                assert len(versions) == 1, versions  # never a mix of two writes
                seen.append(versions.pop())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for i in range(1, 16):
            writer.write_parquet_atomic("trials.parquet", _table(i, n=200))
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert seen == sorted(seen) and seen  # versions only move forward
    assert reader.read_parquet("trials.parquet").column("version")[0].as_py() == 15


def test_s3_manifest_size_is_fixed_and_torn_manifest_is_reread(s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.from_uri(s3_uri)
    sizes = set()
    for i in range(3):  # the first manifest has previous=None, the others a name
        store.write_bytes_atomic("trials.parquet", b"x" * i)
        sizes.add(store.fs.get_file_info(store._path("trials.parquet.manifest.json")).size)
    assert sizes == {1024}
    real_get, calls = Store._get, []

    def torn_once(self: Store, path: str) -> bytes:
        data = real_get(self, path)
        calls.append(path)
        return data[:40] if len(calls) == 1 else data  # the first manifest read is cut short

    monkeypatch.setattr(Store, "_get", torn_once)
    assert store.read_bytes("trials.parquet") == b"xx"
    assert len(calls) == 3  # torn manifest, manifest again, the version object


def test_s3_object_without_manifest_is_read_as_is(s3_uri: str) -> None:
    store = Store.from_uri(s3_uri)
    store._put(store._path("copied.parquet"), b"plain")
    assert store.exists("copied.parquet")
    assert store.read_bytes("copied.parquet") == b"plain"
    store.write_bytes_atomic("copied.parquet", b"versioned")  # the manifest now wins
    assert store.read_bytes("copied.parquet") == b"versioned"


def test_s3_version_objects_are_plain_parquet(s3_uri: str) -> None:
    store = Store.from_uri(s3_uri)
    store.write_parquet_atomic("trials.parquet", _table(7))
    obj = store._manifest("trials.parquet")["object"]
    assert obj.endswith(".parquet")
    assert pq.read_table(store._version_path("trials.parquet", obj), filesystem=store.fs).equals(_table(7))


def test_s3_ray_storage_is_a_path_in_the_store_filesystem(s3_uri: str) -> None:
    store = Store.from_uri(s3_uri)
    path, fs = store.ray_storage()
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == s3_uri.removeprefix("s3://") + "/ray"
    with fs.open_output_stream(f"{path}/session-001/x") as f:
        f.write(b"ray")
    assert store.list("ray") == ["ray/session-001/x"]
    assert store.local_path() is None and not store.is_local


def test_prunetune_s3_endpoint_wins(s3_server, s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("PRUNETUNE_S3_ENDPOINT", s3_server.endpoint)
    store = Store.from_uri(s3_uri)
    store.write_bytes_atomic("a", b"via PRUNETUNE_S3_ENDPOINT")
    assert store.read_bytes("a") == b"via PRUNETUNE_S3_ENDPOINT"


# --------------------------------------------------------------------------- the journal on S3


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


def test_s3_journal_round_trip_through_another_machine(s3_uri: str, tmp_path: Path) -> None:
    store = Store.from_uri(s3_uri)
    storage = open_journal(store, cache_dir=tmp_path / "driver1")
    optuna.create_study(storage=storage, study_name="s").optimize(_objective, n_trials=3)
    assert store.exists("optuna.journal")
    # a second driver on another machine (another cache) resumes the study from the store
    other = open_journal(store, cache_dir=tmp_path / "driver2")
    study = optuna.load_study(study_name="s", storage=other)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    study.optimize(_objective, n_trials=2)
    again = optuna.load_study(study_name="s", storage=open_journal(store, cache_dir=tmp_path / "driver3"))
    assert len(again.trials) == 5
    cache_file = other._backend.local_path
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_file.parent.stat().st_mode) == 0o700


def test_s3_journal_unuploaded_tail_is_kept_and_stale_cache_dropped(s3_uri: str, tmp_path: Path) -> None:
    store = Store.from_uri(s3_uri)
    storage = open_journal(store, cache_dir=tmp_path, min_interval_s=3600)  # uploads only on flush
    study = optuna.create_study(storage=storage, study_name="s")
    flush_journal(storage)
    study.optimize(_objective, n_trials=2)  # appended to the cache, not uploaded: the driver "dies" here
    assert store.read_bytes("optuna.journal") != storage._backend.local_path.read_bytes()
    resumed = open_journal(store, cache_dir=tmp_path)  # same machine: the cache extends the store
    assert len(optuna.load_study(study_name="s", storage=resumed).trials) == 2
    assert store.read_bytes("optuna.journal") == resumed._backend.local_path.read_bytes()  # uploaded on open
    store.delete("optuna.journal")  # --fresh: the cached journal of the old experiment must not come back
    fresh = open_journal(store, cache_dir=tmp_path)
    assert optuna.get_all_study_names(storage=fresh) == []


def test_s3_journal_survives_pickling_like_ray_restore(s3_uri: str, tmp_path: Path) -> None:
    store = Store.from_uri(s3_uri)
    storage = open_journal(store, cache_dir=tmp_path / "c")
    optuna.create_study(storage=storage, study_name="s").optimize(_objective, n_trials=2)
    blob = pickle.dumps(storage)
    optuna.load_study(study_name="s", storage=storage).optimize(_objective, n_trials=1)
    restored = pickle.loads(blob)  # the backend re-opens: downloads what the store holds now
    assert isinstance(restored._backend, SyncedJournalBackend)
    assert len(optuna.load_study(study_name="s", storage=restored).trials) == 3


def test_s3_journal_upload_failure_is_retried(s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.from_uri(s3_uri)
    storage = open_journal(store, cache_dir=tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    real_write = Store.write_bytes_atomic

    def store_down(self: Store, name: str, data: bytes) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(Store, "write_bytes_atomic", store_down)
    study.optimize(_objective, n_trials=1)  # the ask and tell succeed locally
    assert storage._backend._dirty
    monkeypatch.setattr(Store, "write_bytes_atomic", real_write)
    flush_journal(storage)
    other = open_journal(store, cache_dir=tmp_path / "other")
    assert len(optuna.load_study(study_name="s", storage=other).trials) == 1


# --------------------------------------------------------------------------- Ray on the S3 store


def _report_with_checkpoint(config: dict) -> None:
    import json
    import tempfile

    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        Path(d, "params.json").write_text(json.dumps(config))
        tune.report({"score": config["x"]}, checkpoint=tune.Checkpoint.from_directory(d))


@pytest.mark.slow
def test_ray_tune_checkpoints_and_restores_on_the_s3_store(s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import ray
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    store = Store.from_uri(s3_uri)
    path, fs = store.ray_storage()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        run = tune.RunConfig(name="session-001", storage_path=path, storage_filesystem=fs, verbose=0)
        results = tune.Tuner(_report_with_checkpoint, param_space={"x": tune.grid_search([1, 2])},
                             run_config=run).fit()
        assert sorted(r.metrics["score"] for r in results) == [1, 2]
        assert results[0].checkpoint.path.startswith(path)  # uploaded by the worker, not kept locally
        session = f"{path}/session-001"
        assert tune.Tuner.can_restore(session, storage_filesystem=fs)
        restored = tune.Tuner.restore(session, trainable=_report_with_checkpoint, storage_filesystem=fs)
        assert len(restored.get_results()) == 2
    finally:
        ray.shutdown()
    checkpoints = [n for n in store.list("ray") if n.endswith("/params.json")]
    assert len(checkpoints) == 2
