"""search.tuner on a real local Ray, real Optuna and real Parquet, with fixed-cost fake trials.

The fake trial follows ``search.trial.run.run_trial``'s contract (params from the real search
space, one reporter row per epoch, the same result keys) but sleeps instead of training,
so these tests exercise the orchestration: errors, ASHA, fractional GPUs, resume with a
changed config. ``test_cli_search.py`` runs the real trials end to end through the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from pruning.errors import TrialError, UsageError
from search.config import load_config
from search.results.ledger import STATUSES, read_epochs, read_trials

ray = pytest.importorskip("ray")


def _cfg(tmp_path: Path, *overrides: str):
    base = [
        "experiment.name=t", f"experiment.results_dir={tmp_path / 'results'}", "model.name=tiny_vgg",
        "data.limit=120", "train.epochs=0", "train.device=cpu", "search.criteria=[l1]", "search.finetune_epochs=[3, 3]",
        "sampler.name=random", "resources.cpu=1", "resources.max_failures=0",
    ]
    return load_config(None, base + list(overrides))


def fake_trial(cfg, params, reporter=None, *, base=None, resume=None, checkpoint=None, record_dir=None, barrier=0,
               epoch_s=0.05):
    """A fixed-cost stand-in for ``run_trial``: val_acc grows with the mean keep ratio."""
    from search.trial.params import ratios_from_params

    ratios = ratios_from_params(params, base.group_names)
    if params.get("baseline") == "uniform" and abs(float(params["ratio"]) - 0.3) < 1e-9:
        raise TrialError("group features.0 pruned to nothing (test)")
    r = sum(ratios.values()) / len(ratios)
    widths = [max(1, round(w * ratios[g])) for g, w in zip(base.group_names, base.widths)]
    macs = int(base.metrics["macs"] * r * r)
    record = {"start": time.time(), "pid": os.getpid()}
    if record_dir is not None:
        from ray import tune

        record["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        record["resources"] = dict(tune.get_context().get_trial_resources().required_resources)
        Path(record_dir, f"{tune.get_context().get_trial_id()}.start").write_text("")
        deadline = time.time() + 120
        while len(list(Path(record_dir).glob("*.start"))) < barrier and time.time() < deadline:
            time.sleep(0.05)
        record["all_started"] = len(list(Path(record_dir).glob("*.start"))) >= barrier
    epochs = int(params["finetune_epochs"])
    for e in range(1, epochs + 1):
        time.sleep(epoch_s)
        if reporter is not None:
            reporter({"epoch": e, "train_loss": 1.0 / e, "val_acc": r * e / epochs, "macs": macs, "widths": widths,
                      "lr": 0.01, "wall_s": epoch_s}, None)
    if record_dir is not None:
        from ray import tune

        record["end"] = time.time()
        Path(record_dir, f"{tune.get_context().get_trial_id()}.json").write_text(json.dumps(record))
    return {"val_acc": r, "test_acc": r, "macs": macs, "params": int(base.metrics["params"] * r), "latency_ms": 1.0,
            "macs_ratio": r * r, "widths": widths, "group_names": list(base.group_names), "epochs": epochs,
            "wall_s": epochs * epoch_s, "mode": "prune", "criterion": params.get("criterion"),
            "base_val_acc": base.metrics["val_acc"]}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module: 4 logical CPUs and one declared (fake) GPU."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _options(**kw):
    from search.tuner import SearchOptions

    return SearchOptions(trial_fn=partial(fake_trial, **kw))


def _study(exp_dir: Path, cfg):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search.results.expdir import JOURNAL_FILE, study_name

    storage = JournalStorage(JournalFileBackend(str(exp_dir / JOURNAL_FILE)))
    return optuna.load_study(study_name=study_name(cfg), storage=storage)


# --------------------------------------------------------------------------- without Ray


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random", "cmaes"])
def test_every_sampler_builds_and_proposes_in_the_space(tmp_path, name):
    import optuna

    from search.study import space
    from search.study.samplers import make_sampler

    objectives = ["objectives.objectives=[{metric: val_acc, mode: max}]"] if name == "cmaes" else []
    cfg = _cfg(tmp_path, f"sampler.name={name}", "objectives.macs_budget=200000", "sampler.n_startup_trials=2",
               "sampler.population_size=2", *objectives)
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        with pytest.raises(UsageError, match=r"needs the 'cmaes' package \(pip install cmaes\)"):
            make_sampler(**cfg.sampler.model_dump(), seed=cfg.experiment.seed)
        return
    sampler = make_sampler(**cfg.sampler.model_dump(), seed=cfg.experiment.seed)
    directions = ["maximize"] if name == "cmaes" else ["maximize", "minimize"]
    study = optuna.create_study(directions=directions, sampler=sampler)
    groups = space.group_names(cfg)
    for i in range(6):  # past the startup trials / first generation: the model-based proposals run too
        t = study.ask()
        params = space.suggest(t, cfg, groups)
        assert all(cfg.search.ratio_min <= params[k] <= cfg.search.ratio_max for k in params if k.startswith("r_"))
        macs = 100_000 * (i + 1)
        if name != "cmaes":
            t.set_constraint("macs_budget", macs - 200_000)
        study.tell(t, [0.9 - 0.01 * i] if name == "cmaes" else [0.9 - 0.01 * i, macs])
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 6


def test_find_experiment_rejects_a_directory_without_config(tmp_path):
    from search.results.expdir import find_experiment

    with pytest.raises(UsageError, match="not an experiment directory"):
        find_experiment(tmp_path)


def test_the_search_scheduler_is_mo_asha_for_several_objectives_and_asha_for_one(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from search._ray.fit import make_search_scheduler
    from search._ray.schedulers import RUNG_EPOCH, MOASHAScheduler

    asha = ["scheduler.name=asha", "search.finetune_epochs=[2, 8]", "scheduler.reduction_factor=3"]
    assert make_search_scheduler(_cfg(tmp_path)) is None
    mo = make_search_scheduler(_cfg(tmp_path, *asha))
    assert isinstance(mo, MOASHAScheduler) and mo.milestones == [1, 3]  # below max_t = 8 finetune epochs
    one = make_search_scheduler(_cfg(tmp_path, *asha, "objectives.objectives=[{metric: macs, mode: min}]"))
    assert isinstance(one, AsyncHyperBandScheduler) and not isinstance(one, MOASHAScheduler)
    assert (one._metric, one._mode, one._time_attr) == ("macs", "min", RUNG_EPOCH)
    # Latency and params are measured once per trial, not per epoch: MACs ranks for them at a rung.
    three = "objectives.objectives=[{metric: val_acc, mode: max}, {metric: macs, mode: min}, " \
            "{metric: latency_ms, mode: min}]"
    flowers = make_search_scheduler(_cfg(tmp_path, *asha, three))
    assert isinstance(flowers, MOASHAScheduler) and flowers._metrics == ["val_acc", "macs"]
    params = make_search_scheduler(_cfg(tmp_path, *asha, "objectives.objectives=[{metric: val_acc, mode: max}, "
                                                        "{metric: params, mode: min}]"))
    assert params._metrics == ["val_acc", "macs"] and params._modes == ["max", "min"]


# --------------------------------------------------------------------------- with Ray


@pytest.mark.slow
def test_failing_trial_is_recorded_as_error_and_baselines_stay_out_of_the_study(tmp_path, local_ray):
    from search.tuner import run_search

    cfg = _cfg(
        tmp_path, "num_samples=5", "max_concurrent=1", "objectives.macs_budget=200000",
        "search.baselines=[{ranking: uniform, ratio: 0.9, criterion: l1}, {ranking: uniform, ratio: 0.3, criterion: l1}]",
    )
    summary = run_search(cfg, _options())
    trials = read_trials(summary.exp_dir)
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"TERMINATED", "ERROR"}
    errors = trials[trials["status"] == "ERROR"]
    assert len(errors) == 1  # the 0.3 baseline raised; the search went on
    assert "TrialError: group features.0 pruned to nothing" in errors.iloc[0]["error"]
    assert json.loads(errors.iloc[0]["params_json"])["ratio"] == 0.3
    ok = trials[trials["status"] == "TERMINATED"]
    assert json.loads(ok.iloc[0]["params_json"])["ratio"] == 0.9  # baselines run first, in config order
    assert ok["checkpoint"].isna().all()  # the fake trial gives no model
    epochs = read_epochs(summary.exp_dir)
    assert set(epochs["trial_id"]) == set(trials.loc[trials["status"] != "ERROR", "trial_id"])
    assert summary.done == 5 and summary.errored == 1 and summary.stopped == 0
    for f in ("config.yaml", "trials.parquet", "epochs.parquet", "pareto.parquet", "pareto.png", "optuna.journal"):
        assert (summary.exp_dir / f).is_file(), f
    # Optuna saw the sampled trials (COMPLETE with MACs and the constraint), never the baselines:
    # their params are not points of the sampler's space.
    import optuna

    states = {t.user_attrs["ray_trial_id"]: t for t in _study(summary.exp_dir, cfg).trials}
    sampled = [r for r in trials.to_dict("records") if "baseline" not in json.loads(r["params_json"])]
    assert len(sampled) == 3 and set(states) == {r["trial_id"] for r in sampled}
    for row in sampled:
        t = states[row["trial_id"]]
        assert t.state.name == "COMPLETE"
        assert t.values == pytest.approx([row["val_acc"], row["macs"]])
        assert t.user_attrs["macs"] == row["macs"]
        assert t.constraints == {"macs_budget": row["macs"] - 200_000}  # what TPE/NSGA-II read
    assert not [t for t in states.values() if t.state == optuna.trial.TrialState.RUNNING]


#: (val_acc, macs) of the synthetic MO-ASHA search, by baseline ratio, in running order: A is the
#: accuracy optimum, B the MACs optimum (with 0.30 val it is the worst on accuracy), D1 and D2 are
#: dominated by A (D2 also by D1).
MO_POINTS = {0.9: (0.90, 100_000), 0.2: (0.30, 10_000), 0.5: (0.60, 120_000), 0.6: (0.50, 130_000)}


def mo_trial(cfg, params, reporter=None, *, base=None, resume=None, checkpoint=None):
    """A synthetic trial: fixed (val_acc, macs) per baseline ratio, 3 finetune epochs, every one
    in the final step (``rung_epoch`` 1..3), as ``run_trial`` reports them."""
    val, macs = MO_POINTS[float(params["ratio"])]
    epochs = int(params["finetune_epochs"])
    for e in range(1, epochs + 1):
        time.sleep(0.05)
        reporter({"epoch": e, "train_loss": 1.0, "val_acc": val, "macs": macs, "widths": list(base.widths),
                  "lr": 0.01, "wall_s": 0.05, "rung_epoch": e, "rung_epochs": epochs}, None)
    return {"val_acc": val, "test_acc": val, "macs": macs, "params": 1, "latency_ms": 1.0,
            "macs_ratio": macs / base.metrics["macs"], "widths": list(base.widths),
            "group_names": list(base.group_names), "epochs": epochs, "wall_s": 0.15, "mode": "prune",
            "criterion": "l1", "base_val_acc": base.metrics["val_acc"]}


@pytest.mark.slow
def test_mo_asha_keeps_both_ends_of_the_front_and_stops_dominated_trials(tmp_path, local_ray):
    """Through the real search: rung 1 (grace 1, eta 2) keeps the best ceil(n/2) by
    non-dominated rank. Single-objective ASHA on val_acc would stop B, the MACs optimum."""
    from search.tuner import SearchOptions, run_search

    baselines = ", ".join(f"{{ranking: uniform, ratio: {r}, criterion: l1}}" for r in MO_POINTS)
    cfg = _cfg(tmp_path, "num_samples=4", "max_concurrent=1", "scheduler.name=asha", "scheduler.grace_period=1",
               "scheduler.reduction_factor=2", f"search.baselines=[{baselines}]")
    summary = run_search(cfg, SearchOptions(trial_fn=mo_trial))
    trials = read_trials(summary.exp_dir)
    status = {json.loads(r["params_json"])["ratio"]: r for r in trials.to_dict("records")}
    assert set(status) == set(MO_POINTS)
    assert status[0.9]["status"] == "TERMINATED" and status[0.2]["status"] == "TERMINATED"  # both ends survive
    assert status[0.9]["epochs"] == status[0.2]["epochs"] == 3
    for r in (0.5, 0.6):  # dominated at rung 1 (3 and 4 trials there, keeping 2): stopped after epoch 1
        assert status[r]["status"] == "STOPPED" and status[r]["epochs"] == 1, status[r]
    assert summary.stopped == 2
    epochs = read_epochs(summary.exp_dir)
    assert epochs.groupby("trial_id").size().sort_values().tolist() == [1, 1, 3, 3]


@pytest.mark.slow
def test_fractional_gpu_packs_four_trials_on_one_gpu(tmp_path, local_ray):
    from search.tuner import run_search

    record = tmp_path / "records"
    record.mkdir()
    cfg = _cfg(tmp_path, "num_samples=4", "max_concurrent=4", "resources.gpu=0.25", "search.finetune_epochs=[1, 1]")
    summary = run_search(cfg, _options(record_dir=str(record), barrier=4))
    rows = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert len(rows) == 4
    assert all(r["all_started"] for r in rows), "4 trials of gpu 0.25 did not run at the same time on 1 GPU"
    assert max(r["start"] for r in rows) < min(r["end"] for r in rows)
    assert {r["resources"].get("GPU") for r in rows} == {0.25}
    assert {tuple(r["gpu_ids"]) for r in rows} == {("0",)}
    assert len({r["pid"] for r in rows}) == 4
    assert summary.done == 4


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_with_force_ends_at_exactly_num_samples(tmp_path, local_ray):
    from search.tuner import resume_search, run_search

    cfg = _cfg(tmp_path, "num_samples=3", "max_concurrent=2", "search.finetune_epochs=[1, 1]")
    first = run_search(cfg, _options())
    assert first.done == 3
    bigger = _cfg(tmp_path, "num_samples=5", "max_concurrent=2", "search.finetune_epochs=[1, 1]")
    before = (first.exp_dir / "trials.parquet").read_bytes()
    with pytest.raises(UsageError, match="pass --force"):
        resume_search(first.exp_dir, _options(), cfg=bigger)
    assert (first.exp_dir / "trials.parquet").read_bytes() == before
    summary = resume_search(first.exp_dir, _options(), cfg=bigger, force=True)
    assert summary.resumed_from == "warm-start"
    trials = read_trials(first.exp_dir)
    assert len(trials) == 5 and trials["trial_id"].is_unique and trials["params_json"].is_unique
    assert (trials["status"] == "TERMINATED").all()
    # The new session's study was warm-started with the first session's 3 trials from the ledger.
    study = _study(first.exp_dir, bigger)
    complete = {t.user_attrs["ray_trial_id"] for t in study.trials if t.state.name == "COMPLETE"}
    assert complete == set(trials["trial_id"])
    assert sorted(p.name for p in (first.exp_dir / "ray").iterdir()) == ["session-001", "session-002"]
    # A finished experiment resumes to nothing.
    again = resume_search(first.exp_dir, _options(), cfg=bigger)
    assert again.done == 5 and again.fit_s == 0.0


DRIVER = """
import functools, sys
sys.path.insert(0, {tests!r})
import ray.cloudpickle, test_tuner
ray.cloudpickle.register_pickle_by_value(test_tuner)
from search.tuner import SearchOptions, run_search
cfg = test_tuner._cfg(__import__("pathlib").Path({root!r}), *{overrides!r})
run_search(cfg, SearchOptions(trial_fn=functools.partial(test_tuner.fake_trial, epoch_s=0.5)))
"""


def _kill_driver_after(tmp_path: Path, cfg, overrides: list[str], trials: int, poll_s: float,
                       settle_s: float = 0.0) -> None:
    """Run a search (DRIVER) in a subprocess and SIGKILL it once the ledger holds ``trials``
    trials (polled every ``poll_s``, then ``settle_s`` more); stop every process it left."""
    import signal
    import subprocess
    import uuid

    from test_cli_search import kill_ours

    tag = uuid.uuid4().hex
    code = DRIVER.format(tests=str(Path(__file__).parent), root=str(tmp_path), overrides=overrides)
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PRUNETUNE_TEST_TAG": tag})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None:
            try:
                if len(read_trials(cfg.exp_dir)) >= trials:
                    break
            except Exception:  # noqa: BLE001 - the file appears atomically; anything else: retry
                pass
            time.sleep(poll_s)
        time.sleep(settle_s)
        assert driver.poll() is None
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_ours(tag, tmp_path)


@pytest.mark.slow
def test_driver_killed_after_ray_snapshot_resumes_by_restore_and_replays_what_the_ledger_holds(tmp_path, local_ray):
    """Fake trials save no model, so Ray snapshots its state only every ~10 s: trials that
    finished after the last snapshot are in the ledger but RUNNING for Ray. The resumed
    search must not run them again, nor lose or repeat any trial."""
    import pandas as pd

    from search.tuner import resume_search

    n = 7
    overrides = [f"num_samples={n}", "max_concurrent=2", "resources.num_cpus=2", "search.finetune_epochs=[2, 2]"]
    cfg = _cfg(tmp_path, *overrides)
    _kill_driver_after(tmp_path, cfg, overrides, trials=3, poll_s=0.1)
    before = read_trials(cfg.exp_dir).set_index("trial_id")
    assert 3 <= len(before) < n
    summary = resume_search(cfg.exp_dir, _options(epoch_s=0.5))
    assert summary.resumed_from == "restore"
    trials = read_trials(cfg.exp_dir).set_index("trial_id")
    assert len(trials) == n and trials.index.is_unique and trials["params_json"].is_unique
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]].to_string()
    kept = trials.loc[before.index]
    assert (kept["finished_at"] == before["finished_at"]).all()  # replayed or skipped, never re-run
    epochs = pd.read_parquet(cfg.exp_dir / "epochs.parquet")
    assert set(epochs["trial_id"]) == set(trials.index) and not epochs.duplicated(["trial_id", "epoch"]).any()
    study = _study(cfg.exp_dir, cfg)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == n  # lost proposals are FAIL, not left running


@pytest.mark.slow
def test_uniform_and_global_baselines_each_run_once_across_a_driver_kill_and_a_warm_start(tmp_path, local_ray):
    """Two baselines that differ only in ranking are different trials: after the driver is
    killed while the second runs and Ray's state is lost (a warm start from the ledger),
    the second still runs, and neither runs twice."""
    from search.results import expdir
    from search.tuner import resume_search

    n = 4
    overrides = [f"num_samples={n}", "max_concurrent=1", "resources.num_cpus=2", "search.finetune_epochs=[2, 2]",
                 "search.baselines=[{ranking: uniform, ratio: 0.5, criterion: l1}, "
                 "{ranking: global, ratio: 0.5, criterion: l1}]"]
    cfg = _cfg(tmp_path, *overrides)
    # settle: the first baseline is told to Optuna too; the second runs for >= 1 s
    _kill_driver_after(tmp_path, cfg, overrides, trials=1, poll_s=0.05, settle_s=0.4)
    before = [json.loads(p).get("baseline") for p in read_trials(cfg.exp_dir)["params_json"]]
    assert before == ["uniform"]  # the global baseline was running (or about to) when the driver died
    for session in expdir.sessions(cfg.exp_dir):  # Ray's state is a cache: lose it, resume from the ledger
        (cfg.exp_dir / expdir.RAY_DIR / session / "tuner.pkl").unlink(missing_ok=True)
    summary = resume_search(cfg.exp_dir, _options(epoch_s=0.5))
    assert summary.resumed_from == "warm-start"
    trials = read_trials(cfg.exp_dir)
    assert len(trials) == n and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    rankings = sorted(str(json.loads(p).get("baseline")) for p in trials["params_json"])
    assert rankings == ["None", "None", "global", "uniform"]
    states = [t.state.name for t in _study(cfg.exp_dir, cfg).trials]
    assert states.count("COMPLETE") == n - 2 and "RUNNING" not in states  # the sampled trials only
