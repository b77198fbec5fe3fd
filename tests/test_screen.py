"""Screening (search.screen): candidates, the proxy, screen.parquet, enqueueing, the rank correlation,
bad values, and a driver killed mid-screening."""

from __future__ import annotations

import json
import logging
import signal
import time

import optuna
import pandas as pd
import pytest

from search.config import load_config
from search.results import screen as screen_file
from search.study import screen, space
from search.trial.screen import score_candidate

TINY = ["model.name=tiny_vgg", "model.width_mult=2", "data.limit=120", "train.epochs=0", "train.device=cpu",
        "search.criteria=[l1, taylor_fo]", "search.round_to=2", "search.finetune_epochs=[1, 1]",
        "objectives.macs_targets=[0.3, 0.5]"]


def _cfg(tmp_path, *overrides: str):
    return load_config(None, [f"experiment.results_dir={tmp_path / 'results'}", *TINY, *overrides])


# --------------------------------------------------------------------------- bad values


BAD = {
    "candidates 0": (["--set", "search.screen.candidates=0"],
                     ["search.screen.candidates", "greater than or equal to 1"]),
    "keep > candidates": (["--set", "search.screen={candidates: 3, keep: 4}"], ["keep 4 > candidates 3"]),
    "unknown proxy": (["--set", "search.screen.proxy=flops"], ["'flops'", "'abn' or 'epochs1'"]),
    "no targets": (["--set", "objectives.macs_targets=null", "--set", "search.screen.candidates=4"],
                   ["search.screen needs objectives.macs_targets"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_screen_values_are_one_line_exit_2_and_write_nothing(tmp_path, case):
    from test_cli_search import assert_usage_error, main_in_process, write_config

    args, fragments = BAD[case]
    config = write_config(tmp_path, **{"objectives.macs_targets": [0.5]})
    proc = main_in_process("run", str(config), *args)
    assert_usage_error(proc, *fragments)
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- candidates and the proxy


def test_candidates_are_deterministic_distinct_and_points_of_the_space(tmp_path):

    cfg = _cfg(tmp_path, "search.screen={candidates: 5, keep: 2}")
    groups = space.group_names(cfg)
    plan = screen.screen_plan(cfg, groups)
    assert [(p["macs_target"], p["screen_candidate"]) for p in plan] == [(t, i) for t in (0.3, 0.5) for i in range(5)]
    assert plan == screen.screen_plan(cfg, groups)  # a resumed search screens the same candidates
    assert len({json.dumps({k: v for k, v in p.items() if k.startswith("r_")}) for p in plan}) == 10
    assert screen.screen_plan(_cfg(tmp_path, "search.screen={candidates: 5, keep: 2}", "experiment.seed=1"),
                              groups) != plan
    for p in plan:  # what the enqueued trial will run: a complete point of the sampler's space
        fixed = optuna.trial.FixedTrial(p)
        assert space.suggest(fixed, cfg, groups) == p


@pytest.mark.parametrize("proxy", ["abn", "epochs1"])
def test_a_candidate_is_cut_onto_its_target_and_scored(tmp_path, proxy):
    from search.trial.base import prepare_base

    cfg = _cfg(tmp_path, f"search.screen={{candidates: 2, keep: 1, proxy: {proxy}, batches: 2}}")
    base = prepare_base(cfg)
    plan = screen.screen_plan(cfg, space.group_names(cfg))
    for params in (plan[0], plan[-1]):
        row = score_candidate(cfg, base, params)
        assert "error" not in row, row.get("error")
        assert 0.0 <= row["score"] <= 1.0 and row["proxy"] == proxy
        assert 0.99 * params["macs_target"] <= row["macs_ratio"] <= params["macs_target"]
        assert all(w % 2 == 0 for w in row["widths"])
        assert (row["target"], row["candidate"]) == (params["macs_target"], params["screen_candidate"])


def test_a_failing_candidate_is_a_row_with_its_error(tmp_path):
    from search.trial.base import prepare_base

    cfg = _cfg(tmp_path, "search.screen={candidates: 2, keep: 1}")
    row = score_candidate(cfg, prepare_base(cfg), {"mode": "prune", "criterion": "l1", "macs_target": 0.3,
                                                          "screen_candidate": 0, "finetune_lr": 0.01})
    assert row.get("score") is None and "r_features" in row["error"]


# --------------------------------------------------------------------------- screen.parquet


def _row(target: float, i: int, score: float | None, **extra) -> dict:
    return {"candidate": i, "target": target, "criterion": "l1", "params_json": json.dumps(
        {"mode": "prune", "criterion": "l1", "macs_target": target, "screen_candidate": i, "r_all": 0.5 + i / 100}),
        "widths": [2, 4], "macs": 10, "macs_ratio": target, "proxy": "abn", "score": score, "wall_s": 0.1, **extra}


def test_screen_log_writes_every_row_at_once_and_reads_back_unique(tmp_path):
    from search.results.screen import SCREEN_FILE, SCREEN_SCHEMA, ScreenLog, read_screen

    book = ScreenLog(tmp_path)
    book.add(_row(0.3, 1, 0.5))
    assert len(pd.read_parquet(tmp_path / SCREEN_FILE)) == 1  # on disk right away
    book.add(_row(0.3, 0, None, error="boom"))
    book.add(_row(0.3, 1, 0.6))  # the same candidate again replaces its row
    again = ScreenLog(tmp_path)
    assert again.has({"macs_target": 0.3, "screen_candidate": 0}) and not again.has(
        {"macs_target": 0.5, "screen_candidate": 0})
    frame = read_screen(tmp_path)
    assert list(frame.columns) == SCREEN_SCHEMA.names
    assert frame[["candidate", "score"]].values.tolist()[1] == [1, 0.6] and pd.isna(frame["score"][0])
    assert read_screen(tmp_path / "nothing").empty


def test_screen_log_on_object_storage_batches_its_uploads_and_flushes_at_the_end(s3_uri):
    from search.results.screen import ScreenLog, read_screen

    book = ScreenLog(s3_uri)
    book.REMOTE_EVERY_S = 3600.0  # no upload until the flush
    book.add(_row(0.3, 0, 0.5))
    book.add(_row(0.3, 1, 0.4))
    assert read_screen(s3_uri).empty
    book.flush()
    assert sorted(read_screen(s3_uri)["candidate"]) == [0, 1]
    assert len(ScreenLog(s3_uri).rows) == 2


def test_the_best_of_each_target_are_enqueued_once(tmp_path):

    cfg = _cfg(tmp_path, "search.screen={candidates: 4, keep: 2}")
    frame = pd.DataFrame([_row(0.3, i, s) for i, s in enumerate([0.2, 0.9, None, 0.5])]
                         + [_row(0.5, i, s) for i, s in enumerate([0.7, 0.1, 0.7, 0.3])])
    best = screen.best_candidates(frame, cfg)
    assert [(p["macs_target"], p["screen_candidate"]) for p in best] == [(0.3, 1), (0.3, 3), (0.5, 0), (0.5, 2)]
    study = optuna.create_study()
    assert screen.enqueue_best(study, frame, cfg) == 4
    assert screen.enqueue_best(study, frame, cfg) == 0  # a resumed search enqueues nothing twice
    assert [t.system_attrs["fixed_params"]["screen_candidate"] for t in study.trials] == [1, 3, 0, 2]


def test_a_candidate_lost_with_a_killed_driver_is_enqueued_again_once(tmp_path):
    from optuna.trial import TrialState

    from search.results.ledger import trial_row

    cfg = _cfg(tmp_path, "search.screen={candidates: 3, keep: 3}")
    frame = pd.DataFrame([_row(0.3, i, 0.5) for i in range(3)])
    study = optuna.create_study()
    screen.enqueue_best(study, frame, cfg)
    ran, lost, errored = study.ask(), study.ask(), study.ask()  # all three handed to trials
    study.tell(ran, 0.5)
    study._storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)  # what reconciliation does
    study.tell(errored, state=TrialState.FAIL)
    fixed = {t.number: study.trials[t.number].system_attrs["fixed_params"] for t in (ran, lost, errored)}
    ledger = pd.DataFrame([trial_row(f"t{t.number}", status, fixed[t.number], {"final": True}, seed=0, meta={})
                           for t, status in ((ran, "TERMINATED"), (errored, "ERROR"))])
    assert screen.requeue_lost(study, ledger) == 1
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [fixed[lost.number]]
    assert screen.requeue_lost(study, ledger) == 0  # once


def test_rank_correlation_pairs_screened_candidates_with_their_finetuned_trials_and_warns(tmp_path, caplog):
    from search.results.ledger import Ledger, read_trials, trial_row

    cfg = _cfg(tmp_path, "search.screen={candidates: 4, keep: 4}")
    book = screen_file.ScreenLog(tmp_path)
    for i, s in enumerate([0.1, 0.2, 0.3, 0.4]):
        book.add(_row(0.3, i, s))
    ledger = Ledger(tmp_path, "e")

    def finetuned(accs, statuses=None):
        for i, acc in enumerate(accs):
            params = json.loads(_row(0.3, i, None)["params_json"])
            status = (statuses or ["TERMINATED"] * 4)[i]
            ledger.add_trial({**trial_row(f"t{i}", status, params, {"final": True, "val_acc": acc}, seed=0, meta={}),
                              "experiment": "e"})
        ledger.add_trial({**trial_row("sampled", "TERMINATED", {"mode": "prune", "macs_target": 0.3},
                                      {"final": True, "val_acc": 0.99}, seed=0, meta={}), "experiment": "e"})
        ledger.flush()

    finetuned([0.5, 0.6, 0.7, 0.8])
    assert screen_file.proxy_correlation(screen_file.read_screen(tmp_path), read_trials(tmp_path)) == (1.0, 4)
    finetuned([0.8, 0.7, 0.6, 0.5])
    with caplog.at_level(logging.INFO, logger="search.progress"):
        rho = screen_file.log_proxy_correlation(cfg, tmp_path)
    assert rho == -1.0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not to be trusted on this setting" in warned[0].getMessage()
    finetuned([0.8, 0.7, 0.6, 0.5], ["TERMINATED", "ERROR", "ERROR", "TERMINATED"])
    assert screen_file.log_proxy_correlation(cfg, tmp_path) is None  # 2 pairs: too few


# --------------------------------------------------------------------------- a real search, killed mid-screening


@pytest.mark.slow
def test_screening_killed_mid_way_resumes_without_screening_any_candidate_twice(tmp_path):
    """The driver is SIGKILLed while candidates are screened: the resumed search screens only the
    missing ones (the rows written before the kill are kept as they were), and the best of each
    target then run as trials, with the rank correlation printed at the end."""
    from test_cli_search import Cli, kill_ours, write_config

    from search.results.ledger import params_of, read_trials
    from search.results.screen import SCREEN_FILE, read_screen

    n_cand, keep, n = 15, 2, 5
    config = write_config(tmp_path, num_samples=n, **{
        "objectives.macs_targets": [0.3, 0.5], "model.width_mult": 2, "search.round_to": 2, "search.baselines": [],
        "search.screen": {"candidates": n_cand, "keep": keep, "proxy": "epochs1"}, "max_concurrent": 1})
    exp = tmp_path / "results" / "tiny"
    cli = Cli(tmp_path)
    try:
        driver = cli.start("run", str(config), log=tmp_path / "run.log")
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            try:
                if len(pd.read_parquet(exp / SCREEN_FILE)) >= 4:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "run.log").read_text()
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        kill_ours(cli.tag, cli.cwd)
        before = read_screen(exp).set_index(["target", "candidate"])
        assert 4 <= len(before) < 2 * n_cand, (tmp_path / "run.log").read_text()
        assert not exp.joinpath("trials.parquet").exists()

        proc = cli("resume", str(exp), timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        cli.close()
    assert f"{len(before)} already screened, {2 * n_cand - len(before)} to go" in proc.stdout
    after = read_screen(exp).set_index(["target", "candidate"])
    assert after.index.is_unique and sorted(after.index) == [(t, i) for t in (0.3, 0.5) for i in range(n_cand)]
    assert after["error"].isna().all() and after["score"].notna().all()
    assert (after.loc[before.index, "wall_s"] == before["wall_s"]).all()  # not screened again
    trials = read_trials(exp)
    assert len(trials) == n and (trials["status"] == "TERMINATED").all()
    enqueued = {(params_of(r)["macs_target"], params_of(r)["screen_candidate"]) for r in trials.to_dict("records")
                if "screen_candidate" in params_of(r)}
    best = {(t, int(i)) for t in (0.3, 0.5)
            for i in after.loc[t].sort_values("score", ascending=False, kind="stable").index[:keep]}
    assert enqueued == best  # the best of each target ran as trials (the 5th trial is the sampler's)
    assert "Spearman rank correlation between proxy epochs1 and finetuned val_acc" in proc.stdout
