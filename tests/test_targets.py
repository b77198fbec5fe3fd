"""Budget-exact trials (objectives.macs_targets, search.targets): config, space, real trials, ledger, CLI."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from pruning.errors import UsageError
from search.config import load_config
from test_cli_search import cli  # noqa: F401 (the fixture)

# tiny_vgg x2 (32, 64, 64 channels): groups wide enough for every target to be reachable within 1%
TINY = ["model.name=tiny_vgg", "model.width_mult=2", "data.limit=120", "train.epochs=0", "train.device=cpu",
        "search.criteria=[l1, taylor_fo]", "search.round_to=2", "search.finetune_epochs=[0, 0]"]


def _cfg(tmp_path, *overrides: str):
    return load_config(None, [f"experiment.results_dir={tmp_path / 'results'}", *TINY, *overrides])


# --------------------------------------------------------------------------- config


def test_targets_read_as_fractions_or_percentages():
    cfg = load_config(None, ["objectives.macs_targets=['10%', 0.3, '50 %', 1]"])
    assert cfg.objectives.macs_targets == [0.1, 0.3, 0.5, 1.0]
    assert load_config(None).objectives.macs_targets is None


@pytest.mark.parametrize("value, fragment", [
    ("[0]", "'macs_targets'"), ("[1.5]", "in (0, 1]"), ("['ten%']", "'ten%' is not a fraction"),
    ("[]", "lists no target"), ("[0.1, '10%']", "names a target twice"),
])
def test_bad_targets_are_one_usage_error(value, fragment):
    with pytest.raises(UsageError, match="macs_targets") as err:
        load_config(None, [f"objectives.macs_targets={value}"])
    assert fragment.strip("'") in str(err.value) and "\n" not in str(err.value)


def test_targets_exclude_grow():
    with pytest.raises(UsageError, match="macs_targets and search.grow exclude each other"):
        load_config(None, ["objectives.macs_targets=[0.3]", "search.grow=true", "search.ratio_max=1.5"])


# --------------------------------------------------------------------------- the space


def test_every_mode_samples_a_target_and_adaptive_takes_it_as_its_budget(tmp_path):
    from search.study import space

    cfg = _cfg(tmp_path, "objectives.macs_targets=[0.3, 0.5]", "search.modes=[prune, adaptive, scratch]")
    groups = space.group_names(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        params = space.suggest(study.ask(), cfg, groups)
        seen.add(params["mode"])
        assert params["macs_target"] in (0.3, 0.5)
        if params["mode"] == "adaptive":
            assert params["macs_budget_ratio"] == params["macs_target"]
        else:
            assert all(cfg.search.ratio_min <= params[k] <= 1.0 for k in params if k.startswith("r_"))
        dists = space.param_distributions(cfg, groups, params)  # a warm start rebuilds the point
        assert "macs_target" in dists and "macs_budget_ratio" not in dists
    assert seen == {"prune", "adaptive", "scratch"}


def test_baselines_run_at_every_target_and_are_told_apart_by_it(tmp_path):
    from search.study import space

    cfg = _cfg(tmp_path, "objectives.macs_targets=[0.3, 0.5]",
               "search.baselines=[{ranking: uniform, criterion: l1}, {ranking: global, criterion: l1}]")
    points = space.baseline_params(cfg, space.group_names(cfg))
    assert [(p["baseline"], p["macs_target"], p["ratio"]) for p in points] == [
        ("uniform", 0.3, 1.0), ("global", 0.3, 1.0), ("uniform", 0.5, 1.0), ("global", 0.5, 1.0)]
    assert len({space.baseline_identity(p) for p in points}) == 4
    assert space.missing_baselines(points, points[:1]) == points[1:]


# --------------------------------------------------------------------------- real trials


def test_real_trials_land_within_one_percent_under_every_target_with_round_to(tmp_path):
    """Sampled profiles (prune and scratch) and a uniform baseline: every trial's model is at
    or below its target and within 1% of it (a global baseline: at or below); every cut width
    is a multiple of round_to."""
    from search.study import space
    from search.trial.base import prepare_base
    from search.trial.run import run_trial

    targets = [0.1, 0.3, 0.5]
    cfg = _cfg(tmp_path, f"objectives.macs_targets={targets}", "search.modes=[prune, scratch]",
               "search.scratch_epochs=1", "search.baselines=[{ranking: uniform, criterion: l1}, "
               "{ranking: global, criterion: l1}]")
    base = prepare_base(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    runs = space.baseline_params(cfg, base.group_names)[:2] + [space.suggest(study.ask(), cfg, base.group_names)
                                                               for _ in range(5)]
    reached = {}
    for params in runs:
        m = run_trial(cfg, params, base=base)
        budget = params["macs_target"] * base.metrics["macs"]
        # a global baseline bisects its global fraction (coarse steps): at or below, not within 1%
        low = 0.0 if params.get("baseline") == "global" else 0.99 * budget
        assert low <= m["macs"] <= budget, (params, m["macs"] / budget)
        for w, full in zip(m["widths"], base.widths):
            assert w % 2 == 0 or w == full, m["widths"]
        reached.setdefault(params["macs_target"], []).append(m["macs_ratio"])
    assert {p["mode"] for p in runs} == {"prune", "scratch"}
    assert len(reached) >= 2  # several targets, each hit


def test_a_target_of_the_whole_model_keeps_it_whole(tmp_path):
    from search.study import space
    from search.trial import targets
    from search.trial.base import prepare_base

    cfg = _cfg(tmp_path, "objectives.macs_targets=[1.0]")
    base = prepare_base(cfg)
    params = space.suggest(optuna.create_study().ask(), cfg, base.group_names)
    assert set(targets.trial_ratios(cfg, params, base).values()) == {1.0}


def test_a_trial_cuts_by_its_criterion_the_widths_of_its_projection(tmp_path):
    from search.study import space
    from search.trial import targets
    from search.trial.base import prepare_base
    from search.trial.run import run_trial

    cfg = _cfg(tmp_path, "objectives.macs_targets=[0.3]")
    base = prepare_base(cfg)
    keys = dict.fromkeys(space.ratio_keys(cfg, base.group_names).values())
    params = {"mode": "prune", "criterion": "taylor_fo", "steps": 1, "macs_target": 0.3,
              **dict(zip(keys, (0.9, 0.3, 0.6)))}
    ratios = targets.trial_ratios(cfg, params, base)
    m = run_trial(cfg, params, base=base)
    assert m["widths"] == [round(ratios[g] * w) for g, w in zip(base.group_names, base.widths)]
    assert m["widths"][0] / base.widths[0] > m["widths"][1] / base.widths[1]  # the profile's shape survives


# --------------------------------------------------------------------------- search.tie: slope


def test_depth_profile_is_monotone_in_depth_largest_one_and_uniform_at_zero():
    from search.trial.params import depth_profile

    groups = ["a", "b", "c", "d"]
    assert depth_profile(groups, 0.0) == dict.fromkeys(groups, 1.0)
    down, up = list(depth_profile(groups, 1.5).values()), list(depth_profile(groups, -1.5).values())
    assert down == sorted(down, reverse=True) and down[0] == 1.0
    assert up == sorted(up) and up[-1] == 1.0
    assert down[-1] == pytest.approx(math.exp(-1.5)) and up == pytest.approx(down[::-1])
    assert depth_profile(["only"], 3.0) == {"only": 1.0}
    for k in range(-40, 41):  # every value a keep ratio in (0, 1], the largest exactly 1 (no rounding above)
        p = depth_profile([f"g{i}" for i in range(13)], k / 20)
        assert max(p.values()) == 1.0 and min(p.values()) > 0.0


def test_slope_tie_samples_one_slope_whose_profile_keeps_early_groups_wider(tmp_path):
    """A prune trial of tie slope samples ``depth_slope`` in slope_range and no ratio keys; the
    trial scales its depth profile onto the target (within 1%) and keeps the early group wider
    than the late one for a positive slope; the uniform baseline's slope is 0."""
    from search.study import space
    from search.trial import targets
    from search.trial.base import prepare_base
    from search.trial.params import ratios_from_params
    from search.trial.run import run_trial

    cfg = _cfg(tmp_path, "objectives.macs_targets=[0.3]", "search.tie=slope", "search.slope_range=[0.5, 2.5]",
               "search.baselines=[{ranking: uniform, criterion: l1}]")
    base = prepare_base(cfg)
    groups = base.group_names
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = space.suggest(study.ask(), cfg, groups)
        assert 0.5 <= params["depth_slope"] <= 2.5 and not [k for k in params if k.startswith("r_")]
        assert "depth_slope" in space.param_distributions(cfg, groups, params)
    m = run_trial(cfg, params, base=base)
    assert 0.99 * 0.3 * base.metrics["macs"] <= m["macs"] <= 0.3 * base.metrics["macs"]
    keep = [w / full for w, full in zip(m["widths"], base.widths)]
    assert keep[0] > keep[-1], m["widths"]
    ratios = ratios_from_params(params, groups)
    assert list(ratios.values()) == pytest.approx([math.exp(-params["depth_slope"] * i / 2) for i in range(3)])
    (uniform,) = space.baseline_params(cfg, groups)
    assert uniform["depth_slope"] == 0.5  # 0 clipped into the range: a point of the space; the trial runs uniform
    assert set(ratios_from_params(uniform, groups).values()) == {1.0}
    cut = targets.trial_ratios(cfg, uniform, base)
    assert max(cut.values()) - min(cut.values()) < 0.1  # the same keep ratio everywhere, up to round_to


def test_slope_tie_screens_slopes(tmp_path):
    from search.study import screen, space

    cfg = _cfg(tmp_path, "objectives.macs_targets=[0.3]", "search.tie=slope", "search.screen={candidates: 4, keep: 1}")
    groups = space.group_names(cfg)
    plan = screen.screen_plan(cfg, groups)
    assert len({p["depth_slope"] for p in plan}) == 4
    assert all(-2.0 <= p["depth_slope"] <= 2.0 and not [k for k in p if k.startswith("r_")] for p in plan)
    for p in plan:  # a complete point of the sampler's space
        assert space.suggest(optuna.trial.FixedTrial(p), cfg, groups) == p


@pytest.mark.parametrize("overrides, fragment", [
    (["search.tie=slope"], "search.tie: slope needs objectives.macs_targets"),
    (["search.tie=slope", "objectives.macs_targets=[0.3]", "search.slope_range=[1, -1]"],
     "slope_range [1.0, -1.0] must satisfy min <= max"),
])
def test_bad_slope_settings_are_one_usage_error(overrides, fragment):
    with pytest.raises(UsageError) as err:
        load_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- ledger


def test_ledger_rows_carry_the_target_and_old_ledgers_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from search.results.ledger import TRIALS_FILE, TRIALS_SCHEMA, Ledger, read_trials, trial_row

    row = trial_row("t1", "TERMINATED", {"mode": "prune", "macs_target": 0.3}, {"final": True, "macs": 10},
                    seed=0, meta={})
    assert row["macs_target"] == 0.3
    assert trial_row("t2", "TERMINATED", {"mode": "prune"}, {"final": True}, seed=0, meta={})["macs_target"] is None
    ledger = Ledger(tmp_path, "e")
    ledger.add_trial(row)
    ledger.flush()
    assert read_trials(tmp_path)["macs_target"].tolist() == [0.3]
    old = pq.read_table(tmp_path / TRIALS_FILE).drop(["macs_target"])  # a ledger from before the column
    assert "macs_target" not in old.column_names and "macs_target" in TRIALS_SCHEMA.names
    pq.write_table(old, tmp_path / TRIALS_FILE)
    back = read_trials(tmp_path)
    assert len(back) == 1 and back["macs_target"].isna().all()
    assert isinstance(pa.Table.from_pandas(back), pa.Table)


# --------------------------------------------------------------------------- a target below the smallest network


def test_a_target_below_the_smallest_network_is_one_line_exit_2_and_writes_nothing(tmp_path):
    from test_cli_search import assert_usage_error, main_in_process, write_config

    config = write_config(tmp_path, **{"objectives.macs_targets": [0.3, 0.001], "search.min_channels": 4})
    proc = main_in_process("run", str(config))
    assert_usage_error(proc, "target 0.001", "below the smallest network", "min_channels=4")
    assert not (tmp_path / "results").exists()


def test_check_targets_accepts_the_smallest_network_itself(tmp_path):
    from search.trial.targets import check_targets, smallest_fraction

    cfg = _cfg(tmp_path)
    low, base_macs = smallest_fraction(cfg)
    assert 0 < low < 0.05 and base_macs > 0
    check_targets(_cfg(tmp_path, f"objectives.macs_targets=[{min(1.0, low * 1.001)}]"))
    with pytest.raises(UsageError, match="below the smallest network"):
        check_targets(_cfg(tmp_path, f"objectives.macs_targets=[{low * 0.9}]"))


# --------------------------------------------------------------------------- a real search (Ray)


@pytest.mark.slow
def test_a_search_with_targets_records_them_and_spends_no_trial_over_budget(tmp_path, cli):
    from test_cli_search import write_config

    from search.results.ledger import params_of, read_trials

    config = write_config(tmp_path, **{"objectives.macs_targets": ["30%", "50%"], "model.width_mult": 2,
                                        "search.round_to": 2, "num_samples": 5})
    proc = cli("run", str(config), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = read_trials(tmp_path / "results" / "tiny")
    assert len(trials) == 5 and (trials["status"] == "TERMINATED").all(), trials[["status", "error"]]
    assert set(trials["macs_target"]) <= {0.3, 0.5}
    for row in trials.to_dict("records"):
        assert params_of(row)["macs_target"] == row["macs_target"]
        assert 0.99 * row["macs_target"] <= row["macs_ratio"] <= row["macs_target"], row
    baselines = [json.loads(p).get("baseline") for p in trials["params_json"]]
    assert baselines.count("uniform") == 2  # the config's uniform baseline, once per target
