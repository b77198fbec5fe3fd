"""Worker and node deaths on a real 2-node Ray cluster (loopback, token auth).

Both nodes offer one CPU and one custom ``slot``; every trial needs a slot, so two
concurrent trials run on different nodes. One test SIGKILLs the worker process of a
running trial (``ray::ImplicitFunc.train``), the other the worker node's raylet (the
whole node). The search must end with ``num_samples`` distinct trials, the killed trial
continuing from its last per-epoch checkpoint (the epochs ledger's ``attempt`` column
shows which epochs ran again), with no epoch recorded twice and no token in any file.
The cluster's processes are found by an environment tag and working directory and
killed by pid at the end, pass or fail (never ``ray stop``, which stops every Ray here).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from test_cli_search import TINY, kill_ours, ours
from test_cluster import RAY, free_port

EPOCHS = 12  # finetune epochs per trial (800 digits): a kill after the first checkpoint lands mid-trial


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def raylets(tag: str, work: Path) -> set[int]:
    return {p for p in ours(tag, work) if "/raylet/raylet" in _cmdline(p)}


def trainables(tag: str, work: Path) -> list[int]:
    return [p for p in ours(tag, work) if _cmdline(p).startswith("ray::ImplicitFunc.train")]


@pytest.fixture
def slot_cluster():
    """Head and worker node, 1 CPU + 1 ``slot`` each; yields (address, env, workdir, worker raylet pid)."""
    if not Path(RAY).exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    work = Path(tempfile.mkdtemp(prefix="ptf", dir="/tmp"))  # short: Ray's socket paths live under it
    tag = uuid.uuid4().hex
    env = {**os.environ, "PRUNETUNE_TEST_TAG": tag, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_TMPDIR": str(work), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           # A dead node is noticed after ~3 s instead of ~30 s.
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_timeout_ms": "1000", "PYTHONFAULTHANDLER": "1"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(work / "ray"), "--disable-usage-stats",
              "--include-log-monitor", "false", "--num-cpus", "1", "--num-gpus", "0", "--resources", '{"slot": 1}']
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--dashboard-agent-listen-port", str(free_port()), *common],
                       cwd=work, env=env, check=True, capture_output=True, timeout=120)
        head = raylets(tag, work)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--dashboard-agent-listen-port",
                        str(free_port()), *common], cwd=work, env=env, check=True, capture_output=True, timeout=120)
        worker = raylets(tag, work) - head
        assert len(head) == 1 and len(worker) == 1, (head, worker)
        yield f"127.0.0.1:{port}", env, work, worker.pop()
    finally:
        kill_ours(tag, work)
        shutil.rmtree(work, ignore_errors=True)


def _config(tmp_path: Path, n: int) -> Path:
    cfg = {**TINY, "num_samples": n, "max_concurrent": 2, "data": {"name": "digits", "limit": 800},
           "experiment": {"name": "fault", "seed": 0, "results_dir": str(tmp_path / "results")},
           "search": {**TINY["search"], "baselines": [], "finetune_epochs": [EPOCHS, EPOCHS]},
           "resources": {"cpu": 1, "max_failures": 2, "checkpoint_every": 1, "custom": {"slot": 1}}}
    path = tmp_path / "fault.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _running_checkpointed_trials(exp: Path) -> int:
    """Trials not in the ledger yet (still running) whose driver holds an epoch checkpoint:
    a trial's report waits until the driver took the previous one, so a second checkpoint
    dir means the driver has the first (a dir alone may not have reached the driver)."""
    import pandas as pd

    def second(t: Path) -> bool:
        return any(int(p.name.rsplit("_", 1)[1]) >= 1 for p in t.glob("checkpoint_*"))

    saved = {t.name.removeprefix("trial_") for t in (exp / "ray").glob("session-*/trial_*") if second(t)}
    try:
        done = set(pd.read_parquet(exp / "trials.parquet")["trial_id"])
    except (OSError, ValueError):
        done = set()
    return len(saved - done)


def _run_and_kill(tmp_path: Path, address: str, env: dict, work: Path, kill) -> tuple[str, Path]:
    """Start the search, call ``kill()`` once two running trials (one per node) saved an
    epoch checkpoint, wait for the end; returns (driver output, experiment dir)."""
    exp = tmp_path / "results" / "fault"
    log = tmp_path / "driver.log"
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(_config(tmp_path, 3)), "--address",
                               address], cwd=work, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            if _running_checkpointed_trials(exp) >= 2:
                break
            time.sleep(0.05)
        assert driver.poll() is None, log.read_text()
        kill()
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = log.read_text()
    assert driver.returncode == 0, out
    return out, exp


def _assert_resumed(exp: Path, out: str, env: dict, moved: bool) -> None:
    import pandas as pd

    trials = pd.read_parquet(exp / "trials.parquet")
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all(), trials
    assert trials["node"].notna().all() and trials["hostname"].notna().all()
    assert epochs["node"].nunique() == 2  # trials ran on both nodes
    killed = trials[trials["retries"] > 0]
    assert len(killed) == 1 and killed["retries"].iloc[0] == 1, trials[["trial_id", "retries", "node"]]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for tid, rows in epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, EPOCHS + 1)), tid
    mine = epochs[epochs["trial_id"] == killed["trial_id"].iloc[0]]
    rerun = mine[mine["attempt"] == 1]["epoch"]
    assert len(rerun) and rerun.min() >= 2, mine  # resumed after epoch >= 1, not from epoch 0
    assert (mine[mine["epoch"] < rerun.min()]["attempt"] == 0).all()
    assert trials.set_index("trial_id").loc[killed["trial_id"].iloc[0], "node"] == mine["node"].iloc[-1]
    if moved:  # its node died: the retry ran on the other one
        assert mine[mine["attempt"] == 0]["node"].nunique() == 1 and set(mine[mine["attempt"] == 0]["node"]).isdisjoint(
            mine[mine["attempt"] == 1]["node"])
    # Our one line, not Ray's multi-line raylet text.
    assert f"trial {killed['trial_id'].iloc[0]}: worker died (node " in out and "retry 1/2 from epoch " in out, out
    assert "Worker ID" not in out and "A worker died or was killed" not in out, out
    # No secret in any file of the experiment (ledger, config, progress, journal, Ray state, logs).
    token = env["RAY_AUTH_TOKEN"].encode()
    files = [p for p in exp.rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if token in p.read_bytes()]
    assert token.decode() not in out


@pytest.mark.slow
def test_killed_trial_worker_resumes_from_its_last_epoch_checkpoint(tmp_path, slot_cluster):
    address, env, work, worker_raylet = slot_cluster

    def kill() -> None:
        procs = trainables(env["PRUNETUNE_TEST_TAG"], work)
        on_worker = [p for p in procs if _ppid(p) == worker_raylet] or procs
        assert on_worker, "no running trial process"
        os.kill(on_worker[0], signal.SIGKILL)

    out, exp = _run_and_kill(tmp_path, address, env, work, kill)
    _assert_resumed(exp, out, env, moved=False)
    assert oct((exp).stat().st_mode & 0o777) == "0o700"
    assert oct((exp / "optuna.journal").stat().st_mode & 0o777) == "0o600"
    assert json.loads((exp / "progress.json").read_text())["finished"] is True


@pytest.mark.slow
def test_killed_worker_node_moves_its_trial_to_the_other_node_and_resumes(tmp_path, slot_cluster):
    address, env, work, worker_raylet = slot_cluster

    def kill() -> None:  # the node's raylet and every process it started (its workers and agents)
        children = [p for p in ours(env["PRUNETUNE_TEST_TAG"], work) if _ppid(p) == worker_raylet]
        for pid in [worker_raylet, *children]:
            os.kill(pid, signal.SIGKILL)

    out, exp = _run_and_kill(tmp_path, address, env, work, kill)
    _assert_resumed(exp, out, env, moved=True)


# --------------------------------------------------------------------------- without a cluster


def test_recover_line_is_one_line_naming_node_retry_and_epoch():
    from search._ray.recorder import recover_line

    line = recover_line("3f2a0c1d", {"node": "0d14a06576b2ffff", "hostname": "gpu7"}, 1, 2, 4)
    assert line == "trial 3f2a0c1d: worker died (node 0d14a06576b2 on gpu7), retry 1/2 from epoch 5"
    assert recover_line("3f2a0c1d", {}, 2, 2, None).endswith("retry 2/2 from the start")


def test_quiet_mode_routes_raylet_messages_to_the_log_not_stdout(capsys, caplog):
    import logging

    from ray._private import worker as ray_worker

    from search._ray.session import _quiet_raylet_messages

    original = _quiet_raylet_messages()
    try:
        with caplog.at_level(logging.DEBUG, logger="search._ray.session"):
            ray_worker.print_to_stdstream({"lines": ["A worker died or was killed while executing a task.",
                                                     "Worker ID: abc"], "pid": "raylet", "is_err": False}, False)
    finally:
        ray_worker.print_to_stdstream = original
    assert capsys.readouterr().out == ""
    assert "A worker died or was killed while executing a task. Worker ID: abc" in caplog.text


def test_repair_recreates_the_checkpoint_rays_snapshot_names_from_the_newest_resume_state(tmp_path):
    from search._ray.fit import repair_checkpoints

    session = tmp_path / "session-001"
    trial = session / "trial_abc"
    for i, body in ((2, b"epoch 3"), (3, b"epoch 4")):  # Ray deleted checkpoint_000001 after the snapshot
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{i:06d}" / "resume.pt").write_bytes(body)
    meta = {"last_result": {"epoch": 2, "checkpoint_dir_name": "checkpoint_000001"}}
    (session / "experiment_state-x.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": "abc"}), json.dumps(meta)]]}))
    assert repair_checkpoints(session) == 1
    assert (trial / "checkpoint_000001" / "resume.pt").read_bytes() == b"epoch 4"
    assert repair_checkpoints(session) == 0  # present now: left alone


def test_error_text_reads_rays_local_copy_when_storage_has_none_yet(tmp_path):
    from search._ray.recorder import _error_text

    class Trial:  # Ray wrote error.txt in the trial's local dir; object storage has no copy yet
        error_file = str(tmp_path / "error.txt")

        def get_pickled_error(self):
            return None

        def get_error(self):
            return None

    (tmp_path / "error.txt").write_text("Failure # 1 (occurred at x)\nValueError: Could not recover from checkpoint\n")
    assert _error_text(Trial()) == "ValueError: Could not recover from checkpoint"
    Trial.error_file = None
    assert _error_text(Trial()) == "trial failed (no error recorded by Ray)"
