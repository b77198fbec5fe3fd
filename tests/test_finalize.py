"""``prunetune finalize`` and ``pareto --final``: choosing the sources, their params, bad
input (in process, no Ray), and real runs through the CLI (slow): end to end, from
scratch, and a driver SIGKILLed part-way then run again (no lost, no repeated row).

The experiment is a search's ledger written directly (three front trials with real
prune params, one dominated, one errored): finalize only reads ``trials.parquet``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from search.config import config_from_dict
from search.results.expdir import save_config
from search.finalize import check_finalize, choose_sources, final_params
from search.results.final import FINAL_SCHEMA, SOURCE_KEY, FinalLedger, read_final
from search.results.ledger import Ledger, read_trials
from test_cli_search import Cli, assert_usage_error, kill_ours, main_in_process

GROUPS = ["features.0", "features.4", "features.8"]
BASE_WIDTHS = [16, 32, 32]
CONFIG = {
    "experiment": {"name": "fin", "seed": 0},
    "model": {"name": "tiny_vgg"},
    "data": {"name": "digits", "limit": 200},
    "train": {"epochs": 1, "device": "cpu"},
    "search": {"criteria": ["l1"], "finetune_epochs": [1, 1], "finetune_lr": [0.01, 0.01]},
    "resources": {"cpu": 1, "num_cpus": 2, "max_failures": 0},
    "num_samples": 5,
    "max_concurrent": 1,
}
# (trial_id, val_acc, macs, keep ratio of every group): a, b, c are the front; d is dominated by a.
TRIALS = [("a", 0.90, 300_000, 0.75), ("b", 0.80, 200_000, 0.5), ("c", 0.70, 100_000, 0.25), ("d", 0.60, 350_000, 0.8)]


def make_experiment(results: Path, with_trials: bool = True) -> Path:
    cfg = config_from_dict({**CONFIG, "experiment": {**CONFIG["experiment"], "results_dir": str(results)}})
    save_config(cfg, cfg.exp_dir)
    led = Ledger(cfg.exp_dir, "fin")
    for tid, acc, macs, r in TRIALS if with_trials else []:
        params = {"mode": "prune", "criterion": "l1", "steps": 1, "finetune_epochs": 1, "finetune_lr": 0.01,
                  **{f"r_{g}": r for g in GROUPS}}
        led.add_trial({"trial_id": tid, "status": "TERMINATED", "mode": "prune", "criterion": "l1",
                       "params_json": json.dumps(params), "val_acc": acc, "macs": macs, "params": 1000,
                       "widths": [round(r * w) for w in BASE_WIDTHS], "group_names": GROUPS, "epochs": 1})
    led.add_trial({"trial_id": "e", "status": "ERROR", "params_json": "{}", "error": "TrialError: boom"})
    led.flush()
    return cfg.exp_dir


def test_sources_are_the_best_val_front_trials(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    chosen = choose_sources(read_trials(exp), 2)
    assert list(chosen["trial_id"]) == ["a", "b"]
    assert list(choose_sources(read_trials(exp), 10)["trial_id"]) == ["a", "b", "c"]  # the front only


def test_final_params_finetune_longer_or_from_scratch(tmp_path: Path) -> None:
    row = read_trials(make_experiment(tmp_path)).set_index("trial_id").loc["b"].to_dict() | {"trial_id": "b"}
    longer = final_params(row, 7, False, GROUPS, BASE_WIDTHS)
    assert longer["finetune_epochs"] == 7 and longer["mode"] == "prune" and longer["r_features.4"] == 0.5
    assert longer[SOURCE_KEY] == "b"
    scratch = final_params(row, 5, True, GROUPS, BASE_WIDTHS)
    assert scratch == {"mode": "scratch", "scratch_epochs": 5, "r_features.0": 0.5, "r_features.4": 0.5,
                       "r_features.8": 0.5, SOURCE_KEY: "b"}


def test_final_ledger_is_unique_by_source(tmp_path: Path) -> None:
    led = FinalLedger(tmp_path, "fin")
    for tid, acc in (("x1", 0.5), ("x2", 0.6)):  # the same source recorded twice (a rerun): one row
        led.add_trial({"trial_id": tid, "status": "TERMINATED", "val_acc": acc, "macs": 10,
                       "params_json": json.dumps({SOURCE_KEY: "a"})})
    led.flush()
    final = read_final(tmp_path)
    assert list(final["trial_id"]) == ["x2"] and list(final[SOURCE_KEY]) == ["a"]
    assert list(final.columns) == FINAL_SCHEMA.names


def test_final_ledger_drops_the_epochs_of_runs_killed_before_their_row(tmp_path: Path) -> None:
    led = FinalLedger(tmp_path, "fin")
    led.add_trial({"trial_id": "done", "status": "TERMINATED", "val_acc": 0.5, "macs": 10,
                   "params_json": json.dumps({SOURCE_KEY: "a"})})
    led.add_epochs([{"trial_id": tid, "epoch": e} for tid in ("done", "killed") for e in (1, 2)])
    led.flush()  # as a finalize killed while "killed" trained leaves the files
    again = FinalLedger(tmp_path, "fin")  # the rerun runs that candidate again under a new id
    assert sorted(again.epochs()["trial_id"]) == ["done", "done"]


@pytest.mark.parametrize("args, fragment", [
    (["--top", "0", "--epochs", "1"], "--top must be an integer >= 1, got 0"),
    (["--top", "2", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--top", "1", "--epochs", "1", "--pick-alpha", "0"], "--pick-alpha must be in (0, 1], got 0"),
    (["--top", "1", "--epochs", "1", "--pick-alpha", "1.5"], "--pick-alpha must be in (0, 1], got 1.5"),
])
def test_bad_numbers_are_one_line_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    exp = make_experiment(tmp_path)
    assert_usage_error(main_in_process("finalize", str(exp), *args), fragment)
    assert not (exp / "final.parquet").exists()


def test_a_candidate_trained_for_other_epochs_is_one_line_exit_2(tmp_path: Path) -> None:
    """Rows are skipped by candidate; one trained for other epochs must not be compared with
    rows trained for these: finalize refuses, before Ray starts, and writes nothing."""
    exp = make_experiment(tmp_path)
    led = FinalLedger(exp, "fin")
    led.add_trial({"trial_id": "f1", "status": "TERMINATED", "candidate": "a", "val_acc": 0.9, "macs": 300_000,
                   "params_json": json.dumps({"mode": "prune", "finetune_epochs": 2, SOURCE_KEY: "a"})})
    led.flush()
    before = (exp / "final.parquet").read_bytes()
    assert_usage_error(main_in_process("finalize", str(exp), "--top", "2", "--epochs", "3"),
                       "final.parquet has a trained 2 epochs, this finalize asks --epochs 3", "--fresh")
    assert (exp / "final.parquet").read_bytes() == before and not (exp / "ray").exists()


def test_unknown_experiment_is_one_line_exit_2(tmp_path: Path) -> None:
    assert_usage_error(main_in_process("finalize", str(tmp_path / "nope"), "--top", "1", "--epochs", "1"),
                       "nope", "is not an experiment directory")


def test_a_search_without_finished_trials_is_one_line_exit_2(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, with_trials=False)  # only an errored trial
    assert_usage_error(main_in_process("finalize", str(exp), "--top", "1", "--epochs", "1"),
                       "no finished (TERMINATED) trial to finalize")
    assert not (exp / "final.parquet").exists()
    assert_usage_error(main_in_process("pareto", str(exp), "--final"), "no final.parquet yet")


def test_pareto_final_shows_the_final_front_by_source(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    led = FinalLedger(exp, "fin")
    for tid, src, acc, macs in (("f1", "a", 0.95, 300_000), ("f2", "b", 0.97, 200_000)):
        led.add_trial({"trial_id": tid, "status": "TERMINATED", "val_acc": acc, "macs": macs, "mode": "prune",
                       "params_json": json.dumps({SOURCE_KEY: src}), "widths": [4, 4, 4]})
    led.flush()
    proc = main_in_process("pareto", str(exp), "--final")
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front: 1 of 2" in proc.stdout  # b dominates a after finalizing
    lines = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()]
    assert "b" in lines and "a" not in lines and "f2" not in lines


def test_pareto_final_and_bad_finalize_load_no_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    exp = make_experiment(tmp_path)
    FinalLedger(exp, "fin").flush()  # an empty final.parquet
    code = (f"import sys\nfrom search.cli import main\n"
            f"main(['finalize', {str(exp)!r}, '--top', '0', '--epochs', '1'])\n"
            f"main(['pareto', {str(exp)!r}, '--final'])\n"
            f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & {{'ray', 'optuna'}}))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr
    assert "--top must be" in proc.stderr and "has no final.parquet yet" in proc.stderr


# --------------------------------------------------------------------------- real runs (Ray)


@pytest.fixture
def cli(tmp_path: Path):
    c = Cli(tmp_path)
    yield c
    c.close()


@pytest.mark.slow
def test_finalize_end_to_end_then_rerun_skips_and_from_scratch(tmp_path: Path, cli: Cli) -> None:
    exp = make_experiment(tmp_path / "results")
    proc = cli("finalize", str(exp), "--top", "2", "--epochs", "2", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = read_final(exp)
    # the two best front trials and the uniform baseline at the best trial's MACs (issue 17)
    assert sorted(final["candidate"]) == ["a", "b", "uniform@300000macs"] and final["trial_id"].is_unique
    assert sorted(final[SOURCE_KEY].dropna()) == ["a", "b"]
    assert set(final["status"]) == {"TERMINATED"} and set(final["epochs"]) == {2}
    by_source = final.set_index("candidate")
    assert list(by_source.loc["a", "widths"]) == [12, 24, 24] and list(by_source.loc["b", "widths"]) == [8, 16, 16]
    assert json.loads(by_source.loc["a", "params_json"])["finetune_epochs"] == 2
    assert (final["train_macs"] > 0).all() and final["val_acc_pruned"].notna().all()
    assert (final["teacher_macs"] == 0).all()  # without --distill no candidate distils
    epochs = pd.read_parquet(exp / "final_epochs.parquet")
    assert sorted(epochs.groupby("trial_id").size()) == [2, 2, 2] and set(epochs["trial_id"]) == set(final["trial_id"])
    assert "3 run now, 0 already done" in proc.stdout
    assert "search pick vs uniform at target" in proc.stdout

    again = cli("finalize", str(exp), "--top", "2", "--epochs", "2", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 run now, 3 already done" in again.stdout
    assert not (exp / "ray" / "final-002").exists()  # Ray did not even start
    assert read_final(exp)["finished_at"].tolist() == final["finished_at"].tolist()

    scratch = cli("finalize", str(exp), "--top", "1", "--epochs", "1", "--from-scratch", "--fresh", timeout=600)
    assert scratch.returncode == 0, scratch.stdout + scratch.stderr
    row, uniform = read_final(exp).sort_values("candidate").to_dict("records")
    assert row[SOURCE_KEY] == "a" and row["mode"] == "scratch" and list(row["widths"]) == [12, 24, 24]
    assert json.loads(row["params_json"])["scratch_epochs"] == 1 and row["epochs"] == 1
    assert uniform["candidate"] == "uniform@300000macs+scratch" and uniform["mode"] == "scratch"


@pytest.mark.slow
def test_finalize_killed_part_way_reruns_without_lost_or_repeated_rows(tmp_path: Path, cli: Cli) -> None:
    exp = make_experiment(tmp_path / "results")
    driver = cli.start("finalize", str(exp), "--top", "3", "--epochs", "3", log=tmp_path / "final.log")
    deadline = time.time() + 400
    recorded = 0
    while time.time() < deadline and driver.poll() is None and recorded < 1:
        try:
            recorded = len(pd.read_parquet(exp / "final.parquet"))
        except (OSError, ValueError):
            recorded = 0
        time.sleep(0.2)
    assert driver.poll() is None, (tmp_path / "final.log").read_text()
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    kill_ours(cli.tag, cli.cwd)  # the Ray processes the killed driver left behind
    before = read_final(exp)  # still a valid file
    assert 1 <= len(before) < 4, before

    proc = cli("finalize", str(exp), "--top", "3", "--epochs", "3", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = read_final(exp)
    assert sorted(final["candidate"]) == ["a", "b", "c", "uniform@300000macs"] and final["candidate"].is_unique
    assert set(final["status"]) == {"TERMINATED"}
    kept = final.set_index("candidate").loc[list(before["candidate"])]
    assert (kept["finished_at"].values == before.set_index("candidate")["finished_at"].values).all()  # not re-run
    assert f"{4 - len(before)} run now, {len(before)} already done" in proc.stdout
    epochs = pd.read_parquet(exp / "final_epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and set(epochs["trial_id"]) == set(final["trial_id"])


def test_sources_respect_the_searchs_macs_budget(tmp_path: Path) -> None:
    """With ``objectives.macs_budget`` the top K come from the front of the feasible trials:
    trials a (300k MACs) and d (350k) are over a 250k budget, so b is the best and c comes next."""
    cfg = {**CONFIG, "experiment": {**CONFIG["experiment"], "results_dir": str(tmp_path)},
           "objectives": {"objectives": [{"metric": "val_acc", "mode": "max"}], "macs_budget": 250_000}}
    exp = make_experiment(tmp_path)
    save_config(config_from_dict(cfg), exp)
    assert list(choose_sources(read_trials(exp), 2, 250_000)["trial_id"]) == ["b", "c"]
    _, chosen = check_finalize(exp, 1, 1)
    assert list(chosen["trial_id"]) == ["b"]
    save_config(config_from_dict({**cfg, "objectives": {**cfg["objectives"], "macs_budget": 50_000}}), exp)
    assert_usage_error(main_in_process("finalize", str(exp), "--top", "1", "--epochs", "1"),
                       "no finished (TERMINATED) trial within the MACs budget of 50000")
