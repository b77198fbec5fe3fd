"""A real 2-node Ray cluster on loopback with token auth, joined by ``prunetune run --address``.

The head node gets no CPUs, so every trial must be scheduled on the second node (and
fetch the base model from the head's object store). Ray 2.60 clusters use token auth:
``ray start``, the worker node and the driver all need ``RAY_AUTH_MODE=token`` and the
same token (here ``RAY_AUTH_TOKEN``; ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` also
work). The test never runs ``ray stop`` (it would stop every Ray on the machine): it kills
the processes it started, found by an environment tag and their working directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from test_cli_search import TINY, assert_usage_error, kill_ours

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """Head (0 CPUs) + worker node (2 CPUs) on 127.0.0.1; yields (address, env, workdir)."""
    if not Path(RAY).exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    work = Path(tempfile.mkdtemp(prefix="ptc", dir="/tmp"))  # short: Ray's socket paths live under it
    tag = uuid.uuid4().hex
    env = {**os.environ, "PRUNETUNE_TEST_TAG": tag, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_TMPDIR": str(work), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(work / "ray"), "--disable-usage-stats",
              "--include-log-monitor", "false"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "0", "--num-gpus", "0",
                        "--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port()), *common],
                       cwd=work, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--num-gpus", "0",
                        "--dashboard-agent-listen-port", str(free_port()), *common],
                       cwd=work, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env, work
    finally:
        kill_ours(tag, work)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_search_runs_on_a_two_node_cluster_with_token_auth(tmp_path, cluster):
    import pandas as pd

    address, env, work = cluster
    cfg = {**TINY, "num_samples": 3, "experiment": {"name": "cl", "results_dir": str(tmp_path / "results")},
           "search": {**TINY["search"], "baselines": []}}
    config = tmp_path / "cl.yaml"
    config.write_text(yaml.safe_dump(cfg))
    prunetune = [sys.executable, "-m", "search.cli"]

    # No token anywhere (HOME without ~/.ray/auth_token): refused in one line, nothing written.
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"} | {"HOME": str(tmp_path)}
    proc = subprocess.run([*prunetune, "run", str(config), "--address", address], cwd=work, env=no_token,
                          capture_output=True, text=True, timeout=180)
    assert_usage_error(proc, f"cannot join the Ray cluster at '{address}'", "RAY_AUTH_TOKEN")
    assert not (tmp_path / "results").exists()

    proc = subprocess.run([*prunetune, "run", str(config), "--address", address], cwd=work, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "results" / "cl"
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert trials["node"].notna().all() and trials["hostname"].notna().all()  # provenance of each row
    # The token is never written down: no file of the experiment (ledger, config.yaml,
    # progress.json, journal, Ray's state and logs) nor the driver's output holds it.
    token = env["RAY_AUTH_TOKEN"]
    files = [p for p in exp.rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if token.encode() in p.read_bytes()]
    assert token not in proc.stdout + proc.stderr
    assert exp.stat().st_mode & 0o777 == 0o700 and (exp / "optuna.journal").stat().st_mode & 0o777 == 0o600
    # The cluster outlives the driver: the driver disconnected without stopping it.
    status = subprocess.run([RAY, "status", "--address", address], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and "/2.0 CPU" in status.stdout, status.stdout + status.stderr
