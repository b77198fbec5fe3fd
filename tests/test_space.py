"""The search space: real Optuna studies ask, ``suggest`` answers within the config's ranges."""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna
import pytest

from pruning.errors import UsageError
from search.study import space
from search.trial.params import ratios_from_params
from search.config import ExperimentConfig, config_from_dict
from search.trial.materialize import experiment_data, untrained_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

ADAPTIVE_KNOBS = set(space.ADAPTIVE_FLOAT_KNOBS) | set(space.ADAPTIVE_CHOICE_KNOBS)


def make_cfg(model: str = "tiny_vgg", **search: Any) -> ExperimentConfig:
    return config_from_dict({
        "model": {"name": model},
        "data": {"name": "digits", "limit": 100, "image_size": 8},
        "search": search,
    })  # fmt: skip


def ask(cfg: ExperimentConfig, n: int, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict]:
    """``n`` params dicts from a real study; each trial told a value so TPE leaves its startup phase."""
    groups = space.group_names(cfg)
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    out = []
    for i in range(n):
        trial = study.ask()
        params = space.suggest(trial, cfg, groups)
        assert {k: v for k, v in params.items() if k not in ("baseline", "ratio")} == trial.params
        study.tell(trial, float(i % 3))
        out.append(params)
    return out


def r_keys(params: dict) -> set[str]:
    return {k for k in params if k.startswith("r_")}


def test_group_names_are_in_model_order() -> None:
    assert space.group_names(make_cfg("tiny_vgg")) == ["features.0", "features.4", "features.8"]
    assert space.group_names(make_cfg("tiny_resnet")) == ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2"]


def test_stage_map_follows_resolution() -> None:
    cfg = make_cfg("small_vgg")  # pools after the 2nd and 4th conv
    data = experiment_data(cfg)
    stages = space.stage_map(untrained_model(cfg, data), space.group_names(cfg), data.example_input())
    assert stages == {"features.0": "s0", "features.3": "s0", "features.7": "s1", "features.10": "s1",
                      "features.14": "s2"}  # fmt: skip
    with pytest.raises(UsageError, match="unknown group 'nope'"):
        space.stage_map(untrained_model(cfg, data), ["nope"], data.example_input())


@pytest.mark.parametrize(
    ("model", "tie", "expected"),
    [
        ("small_vgg", "none", 5),
        ("small_vgg", "stage", 3),
        ("small_vgg", "all", 1),
        ("tiny_resnet", "none", 4),
        ("tiny_resnet", "stage", 2),  # stem + layer1 at 8x8, layer2 at 4x4
        ("tiny_resnet", "all", 1),
    ],
)
def test_tie_sets_the_number_of_ratio_params(model: str, tie: str, expected: int) -> None:
    cfg = make_cfg(model, tie=tie)
    groups = space.group_names(cfg)
    keys = space.ratio_keys(cfg, groups)
    assert list(keys) == groups
    assert len(set(keys.values())) == expected
    for params in ask(cfg, 3):
        assert len(r_keys(params)) == expected
        ratios = ratios_from_params(params, groups)
        assert list(ratios) == groups
        assert all(ratios[g] == params[keys[g]] for g in groups)


def test_stage_tie_shares_ratios_within_a_stage() -> None:
    cfg = make_cfg("tiny_resnet", tie="stage")
    groups = space.group_names(cfg)
    (params,) = ask(cfg, 1)
    ratios = ratios_from_params(params, groups)
    assert ratios["conv1"] == ratios["layer1.0.conv1"]
    assert ratios["layer2.0.conv1"] == ratios["layer2.0.conv2"]
    assert ratios["conv1"] != ratios["layer2.0.conv1"]
    assert r_keys(params) == {"r_conv1", "r_layer2.0.conv1"}


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_suggestions_stay_within_the_configured_ranges(sampler: str) -> None:
    cfg = make_cfg(
        "tiny_vgg", criteria=["l1", "fpgm", "taylor"], ratio_min=0.3, ratio_max=0.9, steps=[1, 3],
        finetune_epochs=[1, 4], finetune_lr=[1e-3, 1e-1],
    )  # fmt: skip
    samplers = {
        "random": optuna.samplers.RandomSampler(seed=1),
        "tpe": optuna.samplers.TPESampler(seed=1, n_startup_trials=3, multivariate=True),
        "nsga2": optuna.samplers.NSGAIISampler(seed=1, population_size=4),
    }
    for params in ask(cfg, 12, samplers[sampler]):
        assert params["mode"] == "prune"
        assert params["criterion"] in ("l1", "fpgm", "taylor")
        assert params["steps"] in (1, 3)
        assert all(0.3 <= params[k] <= 0.9 for k in r_keys(params))
        assert isinstance(params["finetune_epochs"], int) and 1 <= params["finetune_epochs"] <= 4
        assert 1e-3 <= params["finetune_lr"] <= 1e-1
        assert not ADAPTIVE_KNOBS & set(params)
        json.dumps(params)  # goes to the ledger as params_json


def test_conditional_params_per_mode() -> None:
    cfg = make_cfg("tiny_vgg", modes=["prune", "adaptive"])
    seen = {"prune": 0, "adaptive": 0}
    for params in ask(cfg, 16):
        seen[params["mode"]] += 1
        if params["mode"] == "prune":
            assert {"criterion", "steps"} <= set(params) and r_keys(params)
            assert not ADAPTIVE_KNOBS & set(params)
        else:
            a = cfg.search.adaptive
            assert ADAPTIVE_KNOBS <= set(params)
            assert not {"criterion", "steps"} & set(params) and not r_keys(params)
            assert a.gamma[0] <= params["gamma"] <= a.gamma[1]
            assert params["patience"] in a.patience and params["grow_method"] in a.grow_method
            assert ratios_from_params(params, space.group_names(cfg)) == {}
        assert {"finetune_epochs", "finetune_lr"} <= set(params)
    assert seen["prune"] and seen["adaptive"]


def test_growth_widens_the_ratio_range() -> None:
    cfg = make_cfg("tiny_vgg", ratio_min=0.5, ratio_max=2.0, grow=True)
    ratios = [params[k] for params in ask(cfg, 12) for k in r_keys(params)]
    assert all(0.5 <= r <= 2.0 for r in ratios) and max(ratios) > 1.0
    assert all("grow_method" in p for p in ask(cfg, 2))


@pytest.mark.parametrize("tie", ["none", "stage", "all"])
def test_baselines_are_complete_points_of_the_space(tie: str) -> None:
    baselines = [{"ranking": "uniform", "ratio": 0.5, "criterion": "l1"},
                 {"ranking": "global", "ratio": 0.1, "criterion": "taylor_fo"}]  # fmt: skip
    cfg = make_cfg("tiny_resnet", tie=tie, baselines=baselines, ratio_min=0.2, finetune_epochs=[1, 3],
                   finetune_lr=[0.001, 0.1])  # fmt: skip
    groups = space.group_names(cfg)
    points = space.baseline_params(cfg, groups)
    (sampled,) = ask(cfg, 1)
    assert len(points) == 2
    for point, b in zip(points, baselines):
        assert set(point) == set(sampled) | {"baseline", "ratio"}
        assert point["baseline"] == b["ranking"] and point["ratio"] == b["ratio"]
        assert point["criterion"] == b["criterion"] and point["finetune_epochs"] == 3
        assert all(point[k] == max(b["ratio"], 0.2) for k in r_keys(point))  # clipped into the space
        assert ratios_from_params(point, groups) == {g: b["ratio"] for g in groups}

    # Enqueued as Ray's points_to_evaluate are: the suggested dict is the point itself.
    study = optuna.create_study()
    for point in points:
        study.enqueue_trial(point)
    for point in points:
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "fixed parameter out of range" warning
            assert space.suggest(trial, cfg, groups) == point
        study.tell(trial, 0.0)
    trial = study.ask()  # the sampler's own trials carry no baseline marker
    assert "baseline" not in space.suggest(trial, cfg, groups)


class _Captor:
    """Ray's define-by-run wrapper in miniature: wraps suggest_*, forwards everything else."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial, self.captured = trial, {}

    def __getattr__(self, name: str) -> Any:
        item = getattr(self.trial, name)
        if not name.startswith("suggest_"):
            return item

        def wrapper(key: str, *args: Any, **kwargs: Any) -> Any:
            self.captured[key] = item(key, *args, **kwargs)
            return self.captured[key]

        return wrapper


def test_baseline_marker_reaches_the_trial_through_a_ray_style_wrapper() -> None:
    cfg = make_cfg("tiny_vgg", baselines=[{"ranking": "global", "ratio": 0.4}])
    groups = space.group_names(cfg)
    (point,) = space.baseline_params(cfg, groups)
    study = optuna.create_study()
    study.enqueue_trial(point)
    captor = _Captor(study.ask())
    returned = space.suggest(captor, cfg, groups)
    assert {**captor.captured, **returned} == point  # what Ray hands to the trainable


def test_ratios_from_params_needs_a_ratio_for_every_group() -> None:
    groups = ["a", "b"]
    assert ratios_from_params({"mode": "prune", "r_a": 0.5}, groups) == {"a": 0.5, "b": 0.5}
    assert ratios_from_params({"r_a": 0.5, "r_b": 0.7}, groups) == {"a": 0.5, "b": 0.7}
    with pytest.raises(UsageError, match="no keep ratio for group 'a'"):
        ratios_from_params({"mode": "prune", "r_b": 0.5}, groups)


def test_ratio_keys_are_safe_for_ray_configs() -> None:
    assert space.ratio_key("features.0") == "r_features.0"
    assert space.ratio_key("blocks/0:conv") == "r_blocks_0_conv"  # Ray splits config keys on "/"


def test_param_distributions_warm_start_a_study() -> None:
    cfg = make_cfg("tiny_vgg", criteria=["l1", "l2"], steps=[1, 2])
    groups = space.group_names(cfg)
    (params,) = ask(cfg, 1)
    dists = space.param_distributions(cfg, groups, params)
    assert set(dists) == set(params)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1))
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5))
    trial = study.ask()
    assert set(space.suggest(trial, cfg, groups)) == set(params)


def test_missing_baselines_tells_uniform_from_global_by_identity() -> None:
    cfg = make_cfg("tiny_vgg", baselines=[{"ranking": "uniform", "ratio": 0.5, "criterion": "l1"},
                                          {"ranking": "global", "ratio": 0.5, "criterion": "l1"},
                                          {"ranking": "global", "ratio": 0.5, "criterion": "l1"}])  # fmt: skip
    uniform, glob, _ = points = space.baseline_params(cfg, space.group_names(cfg))
    assert space.baseline_identity(uniform) == ("uniform", 0.5, "l1") != space.baseline_identity(glob)
    sampled = {k: v for k, v in uniform.items() if k not in ("baseline", "ratio")}  # same values, no markers
    assert space.baseline_identity(sampled) is None
    assert space.missing_baselines(points, [sampled, uniform]) == [glob, glob]
    assert space.missing_baselines(points, [glob, uniform]) == [glob]  # listed twice: runs twice
    assert space.missing_baselines(points, [glob, glob, uniform]) == []


@pytest.mark.parametrize("ratio_min, ratio_max, cap", [(0.3, 1.0, None), (0.25, 2.0, None), (0.3, 1.0, 0.5)])
def test_adaptive_budget_is_sampled_in_the_range_prune_trials_reach(ratio_min: float, ratio_max: float,
                                                                    cap: float | None) -> None:
    import copy

    from pruning.cost import count_macs
    from pruning.iterative import PruneSpec, prune_iteratively
    from pruning.surgery import GroupGraph, grow
    from pruning.train import TrainConfig

    cfg = make_cfg("tiny_vgg", modes=["prune", "adaptive"], ratio_min=ratio_min, ratio_max=ratio_max,
                   grow=ratio_max > 1)
    data = experiment_data(cfg)
    model = untrained_model(cfg, data)
    base = count_macs(model, data.input_shape)
    if cap is not None:
        cfg = cfg.model_copy(update={"objectives": cfg.objectives.model_copy(update={"macs_budget": int(cap * base)})})

    def prune_trial_macs(r: float) -> float:  # every group at keep ratio r, by the pruning code itself
        m = copy.deepcopy(model)
        if r < 1:
            prune_iteratively(m, data, PruneSpec(ratio=r), TrainConfig(epochs=0, device="cpu"), finetune_epochs=0)
        elif r > 1:
            widths = GroupGraph(m, data.example_input()).widths()
            grow(m, {g: round(r * n) - n for g, n in widths.items()}, data.example_input(), method="zero")
        return count_macs(m, data.input_shape) / base

    low, high = space.macs_budget_range(cfg, space.group_names(cfg))
    assert low == pytest.approx(prune_trial_macs(ratio_min))
    expected_high = prune_trial_macs(ratio_max) if cap is None else min(prune_trial_macs(ratio_max), cap)
    assert high == pytest.approx(expected_high, rel=1e-6) and low < high
    assert (high > 1) == (ratio_max > 1 and cap is None)
    budgets = [p[space.BUDGET_KEY] for p in ask(cfg, 24) if p["mode"] == "adaptive"]
    assert len(budgets) >= 4 and all(low <= b <= high for b in budgets)
    assert not [p for p in ask(cfg, 8) if p["mode"] == "prune" and space.BUDGET_KEY in p]
