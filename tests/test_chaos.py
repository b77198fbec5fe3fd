"""Driver chaos: SIGKILL the driver at three random points of one search and resume each time.

The points: during the base model's training, while trials run, and between a ledger
write and the Optuna tell of that trial (a driver whose Recorder kills it: ``_KILLING_DRIVER``). The
random delays and the trial count of the last kill come from a seeded RNG whose seed is
printed (``-s`` shows it; rerun with ``PRUNETUNE_CHAOS_SEED``). After each kill the test
kills what the driver left behind (its tagged local Ray processes), like a crashed machine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_search import cli, kill_ours, write_config  # noqa: F401 - cli is a fixture

N = 4

#: ``prunetune`` (argv after the first argument) with a Recorder that SIGKILLs its own driver
#: right after the ledger first holds ``argv[1]`` trials: after the ledger write of that trial,
#: before Ray tells the searcher (Optuna) that it completed.
_KILLING_DRIVER = """
import os, signal, sys
from search._ray.recorder import Recorder
from search.cli import main

at = int(sys.argv[1])
record = Recorder._record

def record_then_die(self, *args, **kwargs):
    record(self, *args, **kwargs)
    if len(self.ledger) == at:
        os.kill(os.getpid(), signal.SIGKILL)

Recorder._record = record_then_die
sys.exit(main(sys.argv[2:]))
"""


def _wait_for(pred, driver, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"never reached the kill point (driver exit {driver.poll()}):\n{log.read_text()}")


def _kill(driver, cli) -> None:
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    kill_ours(cli.tag, cli.cwd)


def _recorded(exp: Path) -> int:
    import pandas as pd

    try:
        return len(pd.read_parquet(exp / "trials.parquet"))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_driver_killed_at_three_random_points_resumes_to_a_consistent_experiment(tmp_path, cli):
    import optuna
    import pandas as pd

    from search.results.ledger import pareto_front

    seed = int(os.environ.get("PRUNETUNE_CHAOS_SEED", random.SystemRandom().randrange(10**6)))
    print(f"chaos seed {seed} (rerun with PRUNETUNE_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    config = write_config(tmp_path, num_samples=N, **{"train.epochs": 8, "search.finetune_epochs": [3, 3]})
    exp = tmp_path / "results" / "tiny"

    # 1. During base training: after its progress line, before base.json exists.
    log = tmp_path / "run1.log"
    driver = cli.start("run", str(config), log=log)
    _wait_for(lambda: "base model: training" in log.read_text(), driver, log)
    time.sleep(rng.uniform(0.0, 0.3))
    assert not (exp / "base.json").exists(), "base training ended before the kill"
    _kill(driver, cli)

    # 2. While trials run: once a trial has saved an epoch checkpoint, before all are recorded.
    log = tmp_path / "run2.log"
    driver = cli.start("resume", str(exp), log=log)
    _wait_for(lambda: any((exp / "ray").glob("session-*/trial_*/checkpoint_*")), driver, log)
    time.sleep(rng.uniform(0.0, 0.5))
    assert _recorded(exp) < N, log.read_text()
    _kill(driver, cli)

    # 3. Between a ledger write and the Optuna tell: the recorder kills its own driver.
    held = _recorded(exp)
    at = rng.randint(held + 1, N)
    log = tmp_path / "run3.log"
    driver = subprocess.Popen([sys.executable, "-c", _KILLING_DRIVER, str(at), "resume", str(exp)], cwd=cli.cwd,
                              env=cli.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    driver.wait(timeout=400)
    assert driver.returncode == -signal.SIGKILL, log.read_text()
    kill_ours(cli.tag, cli.cwd)
    assert _recorded(exp) == at

    proc = cli("resume", str(exp), timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == N and trials["trial_id"].is_unique and trials["params_json"].is_unique, trials
    assert set(trials["status"]) == {"TERMINATED"}
    epochs = pd.read_parquet(exp / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and set(epochs["trial_id"]) == set(trials["trial_id"])
    front = pd.read_parquet(exp / "pareto.parquet")
    assert sorted(front["trial_id"]) == sorted(pareto_front(trials)["trial_id"])
    # The Optuna journal agrees with the ledger: one COMPLETE trial per sampled ledger trial, same
    # value (baselines stay out of the study: README, search.baselines).
    trials = trials[[json.loads(p).get("baseline") is None for p in trials["params_json"]]]
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(journal)
    study = optuna.load_study(study_name=summary.study_name, storage=journal)
    done = {t.user_attrs.get("ray_trial_id"): t for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert set(done) == set(trials["trial_id"]) and len(trials) == N - 1, (sorted(done), sorted(trials["trial_id"]))
    for row in trials.itertuples():
        assert done[row.trial_id].values == pytest.approx([row.val_acc, row.macs])  # objectives: val_acc, macs
