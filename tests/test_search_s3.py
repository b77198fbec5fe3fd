"""A search whose results_dir is ``s3://`` (a real S3 server: moto on 127.0.0.1): the driver
is SIGKILLed part-way, resumed on a "new machine" (an empty local cache), and ends with
exactly num_samples trials read back from the bucket; status, pareto and export work on
the ``s3://`` experiment. Real Ray, real trials (tiny VGG, a slice of digits).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from test_cli_search import Cli, kill_ours, write_config


@pytest.fixture
def s3_cli(tmp_path, s3_server):
    c = Cli(tmp_path)
    c.env.update(s3_server.env)
    yield c
    c.close()


def _with_cache(cli: Cli, cache: Path) -> None:
    cli.env["PRUNETUNE_CACHE_DIR"] = str(cache)


def _finished_without_epoch_checkpoint(exp) -> bool:
    """Whether some trial has its final checkpoint and none of its per-epoch ones."""
    names = exp.list("ray")
    finals = {n.rsplit("/", 2)[0] for n in names if n.endswith("/model.pt")}
    epochs = {n.rsplit("/", 2)[0] for n in names if n.endswith("/resume.pt")}
    return bool(finals - epochs)


@pytest.mark.slow
def test_search_on_s3_killed_part_way_resumes_to_exactly_num_samples(tmp_path, s3_cli, s3_uri):
    from search.results.ledger import read_epochs, read_trials
    from search.results.storage import Store

    n = 4
    exp_uri = f"{s3_uri}/tiny"
    config = write_config(tmp_path, num_samples=n, **{"experiment.results_dir": s3_uri,
                                                      "search.finetune_epochs": [2, 2]})
    _with_cache(s3_cli, tmp_path / "cache-a")
    driver = s3_cli.start("run", str(config), log=tmp_path / "run.log")
    exp = Store.from_uri(exp_uri)
    # Kill when a trial is recorded and Ray has just deleted its per-epoch checkpoint (its final
    # one replaced it): Ray's last uploaded state (every >= 10 s) still names the deleted one,
    # which failed that trial on restore until resume repaired it on S3 too (issue 11).
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        try:
            recorded = len(read_trials(exp_uri))
        except OSError:
            recorded = 0
        if recorded >= 1 and _finished_without_epoch_checkpoint(exp):
            break
        time.sleep(0.05)
    assert driver.poll() is None, (tmp_path / "run.log").read_text()
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    kill_ours(s3_cli.tag, s3_cli.cwd)  # the Ray processes the killed driver left behind
    before = read_trials(exp_uri)  # a whole file: the manifest names one complete version
    assert 1 <= len(before) < n, (tmp_path / "run.log").read_text()
    names = exp.list()
    assert {"config.yaml", "base.json", "trials.parquet", "optuna.journal"} <= set(names), names
    assert any(n.startswith("base-") and n.endswith(".pt") for n in names), names  # the base model, for others
    assert not (tmp_path / "results").exists()  # nothing of the experiment on the local disk

    # Resume on "another machine": an empty local cache, so the base model and the journal
    # come from the bucket.
    _with_cache(s3_cli, tmp_path / "cache-b")
    proc = s3_cli("resume", exp_uri, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "base model: using cached" in proc.stdout  # fetched from the bucket, not trained again
    trials = read_trials(exp_uri)
    assert len(trials) == n, trials[["trial_id", "status"]]
    assert trials["trial_id"].is_unique and trials["params_json"].is_unique
    assert set(trials["status"]) == {"TERMINATED"}, trials[["trial_id", "status", "error"]].to_string()
    assert set(before["trial_id"]) <= set(trials["trial_id"])  # nothing lost
    kept = trials.set_index("trial_id").loc[list(before["trial_id"])]
    assert (kept["finished_at"].values == before.set_index("trial_id")["finished_at"].values).all()  # nor re-run
    epochs = read_epochs(exp_uri)
    assert set(epochs["trial_id"]) == set(trials["trial_id"]) and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert f"{n}/{n} trials" in proc.stdout and exp_uri in proc.stdout
    assert "(resumed: Ray state restored)" in proc.stdout  # Tuner.restore from the bucket, not the fallback
    assert all(str(c).startswith(f"{exp_uri}/ray/") for c in trials["checkpoint"]), list(trials["checkpoint"])

    status = s3_cli("status", exp_uri)
    assert status.returncode == 0, status.stderr
    assert f"{n}/{n} trials recorded" in status.stdout and "search finished" in status.stdout
    exp.delete("pareto.png")
    table = s3_cli("pareto", exp_uri)
    assert table.returncode == 0, table.stderr
    assert f"wrote {exp_uri}/pareto.png" in table.stdout
    assert exp.read_bytes("pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"

    best = trials.sort_values("val_acc").iloc[-1]
    out = s3_cli("export", exp_uri, "--trial", best["trial_id"])
    assert out.returncode == 0, out.stdout + out.stderr
    widths = json.loads(exp.read_bytes(f"export/{best['trial_id']}/widths.json"))
    assert list(widths.values()) == list(best["widths"])
    report = s3_cli("report", exp_uri)
    assert report.returncode == 0 and f"wrote {exp_uri}/report.html" in report.stdout, report.stderr
    assert exp.read_bytes("report.html").lstrip().lower().startswith(b"<!doctype html")
    assert not (tmp_path / "results").exists()


def test_repair_recreates_deleted_checkpoints_rays_s3_snapshot_names(tmp_path, s3_uri) -> None:
    """On S3 too, a checkpoint Ray deleted after its last (uploaded) snapshot is recreated
    before Tuner.restore, which would otherwise fail the trial before it runs (issue 11)."""
    from search._ray.fit import repair_checkpoints
    from search.results.storage import Store

    session = Store.from_uri(f"{s3_uri}/ray/session-001")
    session.upload_file(__file__, "trial_abc/checkpoint_000002/resume.pt")  # the newest; 000001 was deleted
    session.upload_file(__file__, "trial_fin/checkpoint_000003/model.pt")  # finished after the snapshot
    session.upload_file(__file__, "trial_ok/checkpoint_000002/resume.pt")
    trials = [("abc", "checkpoint_000001"), ("fin", "checkpoint_000002"), ("none", "checkpoint_000000"),
              ("ok", "checkpoint_000002")]
    state = {"trial_data": [[json.dumps({"trial_id": t}), json.dumps({"last_result": {"checkpoint_dir_name": c}})]
                            for t, c in trials]}
    session.write_bytes_atomic("experiment_state-2026-01-01_00-00-00.json", b"{}")  # older: not the one Ray reads
    (tmp_path / "state.json").write_text(json.dumps(state))
    session.upload_file(tmp_path / "state.json", "experiment_state-2026-01-01_00-00-09.json")  # a plain object, as Ray's
    assert repair_checkpoints(session) == 3
    names = set(session.list())
    assert session.read_bytes("trial_abc/checkpoint_000001/resume.pt") == Path(__file__).read_bytes()
    assert "trial_fin/checkpoint_000002/model.pt" in names  # replayed from the ledger (or started over)
    assert [n for n in names if n.startswith("trial_none/checkpoint_000000/")]  # exists: the trial starts over
    assert not [n for n in names if n.startswith("trial_ok/") and "000002" not in n]  # present: left alone
    assert repair_checkpoints(session) == 0


def test_results_dir_must_be_a_path_or_an_object_store_uri() -> None:
    from pruning.errors import UsageError
    from search.config import load_config

    with pytest.raises(UsageError, match=r"unsupported scheme 'ftp'.*s3://"):
        load_config(None, ["experiment.results_dir=ftp://host/x"])
    cfg = load_config(None, ["experiment.results_dir=s3://bucket/runs/", "experiment.name=e"])
    assert cfg.experiment.results_dir == "s3://bucket/runs"
    assert "s3:" not in str(cfg.exp_dir) and cfg.exp_dir.name == "e"  # a local cache dir, not a mangled URI


def test_run_into_a_missing_bucket_is_one_line_and_writes_nothing(tmp_path, s3_server, monkeypatch) -> None:
    from search.results.storage import Store
    from test_cli_search import assert_usage_error, main_in_process

    monkeypatch.setenv("PRUNETUNE_CACHE_DIR", str(tmp_path / "cache"))
    config = write_config(tmp_path, **{"experiment.results_dir": "s3://no-such-bucket/runs"})
    assert_usage_error(main_in_process("run", str(config)), "bucket 'no-such-bucket'", "does not exist")
    assert not (tmp_path / "cache").exists()
    # An experiment URI that holds no experiment: the same one line as for a local dir.
    empty = s3_server.uri("nothing-here")
    for cmd in ("status", "pareto", "resume"):
        assert_usage_error(main_in_process(cmd, empty), "not an experiment directory")
    assert Store.from_uri(empty).list() == []


def test_status_and_pareto_of_an_s3_experiment_load_no_ray(tmp_path, s3_server, s3_uri) -> None:
    import os
    import subprocess
    import sys
    import textwrap

    from search.config import load_config
    from search.results.expdir import experiment_store, save_config, write_base
    from search.results.ledger import Ledger

    cfg = load_config(None, ["experiment.name=tiny", f"experiment.results_dir={s3_uri}", "num_samples=3"])
    exp = experiment_store(cfg)
    save_config(cfg, exp)
    write_base(exp, type("Base", (), {"metrics": {"val_acc": 0.9, "macs": 1000}, "widths": [8, 8],
                                      "group_names": ["a", "b"]})())
    led = Ledger(exp, "tiny")
    for i, (acc, macs) in enumerate([(0.85, 500), (0.80, 300), (0.70, 400)]):
        led.add_trial({"trial_id": f"t{i}", "status": "TERMINATED", "val_acc": acc, "macs": macs, "params": 50,
                       "macs_ratio": macs / 1000, "widths": [4, 4], "group_names": ["a", "b"]})
    led.flush()
    env = {**os.environ, **s3_server.env, "PRUNETUNE_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    for command, expected in (("status", "3/3 trials recorded"), ("pareto", f"wrote {exp.uri('pareto.png')}")):
        code = textwrap.dedent(f"""
            import sys
            from search.cli import main
            rc = main([{command!r}, {exp.uri()!r}])
            print("LOADED", sorted({{m.split(".")[0] for m in sys.modules}} & {{"ray", "optuna"}}))
            sys.exit(rc)
        """)
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "LOADED []" in proc.stdout and expected in proc.stdout, proc.stdout
    assert exp.read_bytes("pareto.png")[:4] == b"\x89PNG"
    assert not (tmp_path / "cache").exists()  # status and pareto need no local copy
