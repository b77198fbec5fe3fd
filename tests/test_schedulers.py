"""search._ray.schedulers: non-dominated sorting, crowding distance, MO-ASHA's rung decisions
(driven directly with Ray's own ``Trial``), and one real Ray Tune run."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler  # noqa: E402

from search._ray.schedulers import (  # noqa: E402
    MOASHAScheduler,
    crowding_distances,
    is_in_top,
    make_scheduler,
    nondominated_ranks,
)

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP

# (val_acc, macs): A is the accuracy optimum, B the MACs optimum, C and M lie on the front
# between them; D1..D4 are each dominated by C and by M, and by each other in that order.
POINTS = {
    "A": (0.90, 100.0), "B": (0.50, 10.0), "C": (0.70, 40.0), "M": (0.80, 70.0),
    "D1": (0.65, 75.0), "D2": (0.60, 80.0), "D3": (0.55, 85.0), "D4": (0.45, 95.0),
}


# --------------------------------------------------------------------------- pure functions


def test_nondominated_ranks_peel_fronts():
    # minimised: (1,4) (2,2) (4,1) are non-dominated; (3,3) is dominated by (2,2); (4,4) by (3,3)
    points = [(1, 4), (3, 3), (2, 2), (4, 4), (4, 1), (5, 5)]
    assert nondominated_ranks(points).tolist() == [0, 1, 0, 2, 0, 3]


def test_nondominated_ranks_equal_points_share_a_front_and_one_objective_is_a_ranking():
    assert nondominated_ranks([(1, 1), (1, 1), (1, 2)]).tolist() == [0, 0, 1]
    assert nondominated_ranks([3.0, 1.0, 2.0, 1.0]).tolist() == [2, 0, 1, 0]
    assert nondominated_ranks([]).tolist() == []


def test_crowding_distance_by_hand():
    # one front of four points: extremes infinite; interior = sum over objectives of the
    # neighbours' gap / the front's range (6 and 10): (2,6): 4/6 + 7/10; (4,3): 4/6 + 6/10
    points = [(0, 10), (2, 6), (4, 3), (6, 0)]
    d = crowding_distances(points)
    assert math.isinf(d[0]) and math.isinf(d[3])
    assert d[1] == pytest.approx(4 / 6 + 0.7) and d[2] == pytest.approx(4 / 6 + 0.6)


def test_crowding_distance_is_per_front_and_ignores_flat_objectives():
    points = [(0, 2), (1, 1), (2, 0), (5, 5), (1, 9)]  # front 0: first three; front 1: (5,5), (1,9)
    ranks = nondominated_ranks(points)
    d = crowding_distances(points, ranks)
    assert ranks.tolist() == [0, 0, 0, 1, 1]
    assert d[1] == pytest.approx(2.0)  # (2/2 + 2/2), measured within front 0 only
    assert math.isinf(d[3]) and math.isinf(d[4])
    # a front equal on every objective has no extremes: nothing is lonelier than the rest
    assert crowding_distances([(1, 1), (1, 1), (1, 1)]).tolist() == [0.0, 0.0, 0.0]


def test_is_in_top_ranks_front_then_crowding_and_ties_count_for_the_point():
    points = [(0, 10), (2, 6), (4, 3), (6, 0), (5, 7)]  # last one dominated by (4,3)
    assert [is_in_top(points, i, 2) for i in range(5)] == [True, False, False, True, False]
    assert [is_in_top(points, i, 3) for i in range(5)] == [True, True, False, True, False]  # (2,6) is lonelier
    assert is_in_top(points, 4, 5) and not is_in_top(points, 4, 4)


# --------------------------------------------------------------------------- scheduler decisions


def _result(name: str, epoch: int | None, **extra) -> dict:
    acc, macs = POINTS[name]
    e = epoch or 1
    return {"val_acc": acc * e / 4, "macs": macs, "rung_epoch": epoch, **extra}


def _drive(scheduler, order, epoch=1, trials=None):
    trials = trials if trials is not None else {}
    decisions = {}
    for name in order:
        if name not in trials:
            trials[name] = Trial("fake", stub=True, trial_id=name)
            scheduler.on_trial_add(None, trials[name])
        decisions[name] = scheduler.on_trial_result(None, trials[name], _result(name, epoch))
    return decisions


def _moasha(**kw):
    return MOASHAScheduler(["val_acc", "macs"], ["max", "min"], max_t=kw.pop("max_t", 4), grace_period=1,
                           reduction_factor=2, **kw)


def test_moasha_keeps_both_extremes_and_stops_dominated_trials():
    decisions = _drive(_moasha(), ["A", "B", "C", "M", "D1", "D2", "D3", "D4"])
    assert decisions["A"] == CONTINUE and decisions["B"] == CONTINUE
    assert {decisions[d] for d in ("D1", "D2", "D3", "D4")} == {STOP}


@pytest.mark.parametrize("seed", range(6))
def test_moasha_never_stops_an_objective_optimum_whatever_the_arrival_order(seed):
    order = list(POINTS)
    np.random.default_rng(seed).shuffle(order)
    scheduler = _moasha()
    trials: dict = {}
    first = _drive(scheduler, order, epoch=1, trials=trials)
    survivors = [n for n in order if first[n] == CONTINUE]
    second = _drive(scheduler, survivors, epoch=2, trials=trials)
    assert first["A"] == first["B"] == second["A"] == second["B"] == CONTINUE
    assert STOP in first.values()  # 8 arrivals at a rung keeping half: someone is stopped
    assert first["D4"] == STOP or order.index("D4") < 2  # dominated by all but D-trials


def test_accuracy_only_asha_stops_the_cheap_end_that_moasha_keeps():
    """The bug of issue 9: ranked on val_acc alone, the MACs optimum is stopped."""
    order = ["A", "M", "C", "B"]
    asha = _drive(make_scheduler(["val_acc"], ["max"], max_t=4), order)
    moasha = _drive(make_scheduler(["val_acc", "macs"], ["max", "min"], max_t=4), order)
    assert asha["B"] == STOP and moasha["B"] == CONTINUE


def _asha():
    return make_scheduler(["val_acc"], ["max"], max_t=4)


@pytest.mark.parametrize("factory", [_moasha, _asha], ids=["moasha", "asha"])
def test_incomparable_results_are_never_stopped_nor_recorded(factory):
    scheduler = factory()
    trials: dict = {}
    _drive(scheduler, ["A", "M", "C"], trials=trials)
    bad = Trial("fake", stub=True, trial_id="bad")
    scheduler.on_trial_add(None, bad)
    awful = {"val_acc": 0.0, "macs": 1e12}
    incomparable = [{**awful, "rung_epoch": None}, dict(awful), {**awful, "rung_epoch": 1, "val_acc": float("nan")}]
    if factory is _moasha:  # for single-objective ASHA the MACs do not matter
        incomparable.append({**awful, "rung_epoch": 1, "macs": None})
    assert [scheduler.on_trial_result(None, bad, r) for r in incomparable] == [CONTINUE] * len(incomparable)
    # none took the rung: the first comparable result of "bad" is judged there, and stopped
    assert scheduler.on_trial_result(None, bad, {**awful, "rung_epoch": 1}) == STOP


def test_a_trial_at_its_last_epoch_is_recorded_but_not_stopped():
    scheduler = _moasha(max_t=8)
    trials: dict = {}
    _drive(scheduler, ["A", "B", "C", "M"], epoch=2, trials=trials)
    d4 = Trial("fake", stub=True, trial_id="D4")
    scheduler.on_trial_add(None, d4)
    assert scheduler.on_trial_result(None, d4, _result("D4", 2, rung_epochs=2)) == CONTINUE
    assert scheduler.debug_string().endswith("rung_epoch=1: 0 recorded | rung_epoch=2: 5 recorded | "
                                             "rung_epoch=4: 0 recorded")
    assert _drive(scheduler, ["D3"], epoch=2, trials=trials)["D3"] == STOP  # without rung_epochs


def test_rungs_sit_below_max_t_and_a_trial_is_decided_once_per_rung():
    scheduler = _moasha(max_t=4)
    assert scheduler.milestones == [1.0, 2.0]
    trials: dict = {}
    _drive(scheduler, ["A", "B", "C", "M"], epoch=1, trials=trials)
    _drive(scheduler, ["A", "B", "C", "M"], epoch=2, trials=trials)
    assert _drive(scheduler, ["D1"], epoch=1, trials=trials)["D1"] == STOP
    d1 = trials["D1"]
    # a later result at the same rung carries no new decision
    assert scheduler.on_trial_result(None, d1, {**_result("D1", 1), "rung_epoch": 1.5}) == CONTINUE
    # one at max_t is judged at the last rung (2) it has not been recorded at, once
    at_max_t = {**_result("D1", 2), "rung_epoch": 4}
    assert scheduler.on_trial_result(None, d1, at_max_t) == STOP
    assert scheduler.on_trial_result(None, d1, at_max_t) == CONTINUE


def test_make_scheduler_picks_by_objective_count_and_rejects_bad_modes():
    assert isinstance(make_scheduler(["val_acc"], ["max"], max_t=4), AsyncHyperBandScheduler)
    assert isinstance(make_scheduler(["val_acc", "macs"], ["max", "min"], max_t=4), MOASHAScheduler)
    assert type(make_scheduler(["val_acc"], ["max"], max_t=1)) is FIFOScheduler
    with pytest.raises(ValueError, match=r"unknown mode 'minimize'; choose one of: max, min"):
        make_scheduler(["val_acc", "macs"], ["max", "minimize"], max_t=4)
    with pytest.raises(ValueError, match="one mode per metric"):
        MOASHAScheduler(["val_acc", "macs"], ["max"], max_t=4)


def test_state_round_trips_through_save_and_restore(tmp_path):
    scheduler = _moasha()
    _drive(scheduler, ["A", "B", "C", "M"])
    scheduler.save(str(tmp_path / "s.pkl"))
    restored = _moasha()
    restored.restore(str(tmp_path / "s.pkl"))
    assert restored.debug_string() == scheduler.debug_string()
    assert "rung_epoch=1: 4 recorded" in restored.debug_string()
    assert _drive(restored, ["D1"])["D1"] == STOP


# --------------------------------------------------------------------------- a real Ray Tune run


def synthetic_trial(config: dict) -> None:
    """Two adaptive-search epochs (not comparable: no ``rung_epoch``, awful values), then four
    finetune epochs of the final step, then the final result."""
    import time

    from ray import tune

    acc, macs = POINTS[config["name"]]
    for _ in range(2):
        time.sleep(0.05)
        tune.report({"val_acc": 0.0, "macs": 1e12, "rung_epoch": None, "final": False})
    for epoch in range(1, 5):
        time.sleep(0.2)
        tune.report({"val_acc": acc * epoch / 4, "macs": macs, "rung_epoch": epoch, "rung_epochs": 4,
                     "final": False})
    tune.report({"val_acc": acc, "macs": macs, "final": True})


@pytest.fixture
def local_ray(tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_real_tune_run_keeps_both_extremes_and_stops_a_dominated_trial(local_ray, tmp_path):
    from ray import tune

    names = list(POINTS)  # front first, so the dominated trials meet a filled rung
    tuner = tune.Tuner(
        tune.with_resources(synthetic_trial, {"cpu": 1}),
        param_space={"name": tune.grid_search(names)},
        tune_config=tune.TuneConfig(scheduler=make_scheduler(["val_acc", "macs"], ["max", "min"], max_t=4,
                                                             grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="moasha", verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    last = {r.config["name"]: r.metrics for r in grid}
    assert set(last) == set(names)
    assert last["A"]["final"] and last["B"]["final"]  # ran all epochs and reported the final result
    stopped = [n for n, m in last.items() if not m["final"]]
    assert stopped and set(stopped) <= {"C", "M", "D1", "D2", "D3", "D4"}
    assert all(last[n]["rung_epoch"] in (1, 2) for n in stopped)  # stopped at a rung, not in the adaptive epochs
