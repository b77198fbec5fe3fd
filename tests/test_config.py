"""Experiment config: YAML + --set overrides, and one UsageError line for every bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pruning.errors import UsageError
from search.config import config_from_dict, load_config, parse_set

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def assert_usage_error(raw: dict[str, Any], *fragments: str) -> str:
    """Assert ``raw`` is rejected with a one-line UsageError containing every fragment."""
    with pytest.raises(UsageError) as info:
        config_from_dict(raw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_defaults_are_a_valid_experiment() -> None:
    cfg = config_from_dict({})
    assert cfg.model.name == "small_vgg" and cfg.data.name == "digits"
    assert cfg.exp_dir == Path("results") / "demo"
    assert [o.metric for o in cfg.objectives.objectives] == ["val_acc", "macs"]


def test_config_is_frozen() -> None:
    cfg = config_from_dict({})
    with pytest.raises(Exception):
        cfg.num_samples = 3  # type: ignore[misc]


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict({"model": {"name": "tiny_resnet"}, "search": {"tie": "stage", "finetune_epochs": [1, 4]}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.search_hash() == cfg.search_hash()


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"modle": {}}, ["unknown key 'modle'", "valid keys: experiment, model, data"]),
        ({"model": {"nmae": "x"}}, ["unknown key 'model.nmae'", "name, width_mult, checkpoint"]),
        ({"search": {"adaptive": {"gama": [0, 1]}}}, ["'search.adaptive.gama'", "gamma"]),
        ({"search": {"baselines": [{"rank": "global"}]}}, ["'search.baselines.0.rank'", "ranking, ratio, criterion"]),
    ],
)
def test_unknown_keys_are_errors_naming_the_valid_ones(raw: dict, fragments: list[str]) -> None:
    assert_usage_error(raw, *fragments)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"model": {"name": "vgg_tiny"}}, ["unknown model 'vgg_tiny'", "tiny_vgg", "small_vgg", "torchvision"]),
        ({"data": {"name": "mnist"}}, ["unknown dataset 'mnist'", "digits", "cifar10"]),
        ({"search": {"criteria": ["l1", "tayler"]}}, ["unknown criterion 'tayler'", "taylor", "l1", "fpgm"]),
        ({"search": {"criteria": ["l1"], "baselines": [{"criterion": "fpgm"}]}},
         ["baseline criterion 'fpgm'", "choose one of: l1"]),
        ({"search": {"tie": "layer"}}, ["search.tie", "'layer'", "'stage'"]),
        ({"sampler": {"name": "grid"}}, ["sampler.name", "'grid'", "'tpe'"]),
        ({"train": {"latency_backend": "tensorrt"}}, ["train.latency_backend", "'tensorrt'", "'torch'", "'onnxruntime'"]),
    ],
)  # fmt: skip
def test_unknown_names_list_the_valid_ones(raw: dict, fragments: list[str]) -> None:
    assert_usage_error(raw, *fragments)


def test_torchvision_and_user_models_are_accepted() -> None:
    assert config_from_dict({"model": {"name": "resnet18"}}).model.name == "resnet18"
    assert config_from_dict({"model": {"name": "torchvision.mobilenet_v2"}}).model.name == "torchvision.mobilenet_v2"
    assert config_from_dict({"model": {"name": "mypkg.nets:build"}}).model.name == "mypkg.nets:build"


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"search": {"modes": []}}, ["search space is empty", "prune, adaptive"]),
        ({"search": {"criteria": []}}, ["search space is empty", "criteria"]),
        ({"search": {"steps": []}}, ["steps"]),
        ({"search": {"modes": ["adaptive"], "adaptive": {"patience": []}}}, ["patience lists no value"]),
        ({"search": {"modes": ["adaptive"], "baselines": [{}]}}, ["baselines are prune trials"]),
        ({"num_samples": 0}, ["num_samples", "greater than or equal to 1", "got 0"]),
        ({"max_concurrent": 0}, ["max_concurrent"]),
        ({"search": {"ratio_min": 0.8, "ratio_max": 0.5}}, ["ratio_min 0.8 > ratio_max 0.5"]),
        ({"search": {"ratio_min": 0}}, ["search.ratio_min", "got 0"]),
        ({"search": {"ratio_max": 1.5}}, ["ratio_max 1.5 > 1 needs grow: true"]),
        ({"search": {"finetune_epochs": [3, 1]}}, ["finetune_epochs", "[3, 1]"]),
        ({"search": {"finetune_lr": [0, 0.1]}}, ["finetune_lr"]),
        ({"search": {"steps": [0, 2]}}, ["steps", ">= 1", "[0, 2]"]),
        ({"search": {"baselines": [{"ratio": 1.5}]}}, ["search.baselines.0.ratio", "1.5"]),
        ({"search": {"adaptive": {"gamma": [0.9, 0.1]}}}, ["gamma", "0.9", "0.1"]),
        ({"search": {"adaptive": {"prune_threshold": [0.5, 1.5]}}}, ["prune_threshold", "[0, 1]"]),
        ({"sampler": {"name": "cmaes"}}, ["cmaes is single-objective", "tpe"]),
        ({"objectives": {"objectives": []}}, ["objectives is empty"]),
        ({"objectives": {"objectives": [{"metric": "macs", "mode": "min"}, {"metric": "macs", "mode": "min"}]}},
         ["twice"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "'many'"]),
        ({"experiment": {"name": "a/b"}}, ["experiment.name"]),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_usage_errors(raw: dict, fragments: list[str]) -> None:
    assert_usage_error(raw, *fragments)


def test_growth_and_single_objective_cmaes_are_valid() -> None:
    cfg = config_from_dict({"search": {"ratio_max": 1.5, "grow": True}})
    assert cfg.search.ratio_max == 1.5
    cfg = config_from_dict({"sampler": {"name": "cmaes"}, "objectives": {"objectives": [{"metric": "val_acc",
                                                                                          "mode": "max"}]}})
    assert cfg.sampler.name == "cmaes"


def test_parse_set_builds_nested_typed_values() -> None:
    assert parse_set(["num_samples=8", "search.criteria=[l1, fpgm]", "search.adaptive.gamma=[0.2, 0.4]",
                      "train.momentum=0.5", "model.checkpoint=", "experiment.name=x=y"]) == {
        "num_samples": 8,
        "search": {"criteria": ["l1", "fpgm"], "adaptive": {"gamma": [0.2, 0.4]}},
        "train": {"momentum": 0.5},
        "model": {"checkpoint": None},
        "experiment": {"name": "x=y"},
    }  # fmt: skip
    # YAML 1.1 reads 1e-3 as a string; the config coerces it to the float it means.
    assert load_config(None, ["train.lr=1e-3", "search.finetune_lr=[1e-4, 1e-2]"]).search.finetune_lr == (1e-4, 1e-2)


@pytest.mark.parametrize("item", ["num_samples", "=3", "search..tie=all", ".tie=all", "search.=1"])
def test_parse_set_rejects_malformed_items(item: str) -> None:
    with pytest.raises(UsageError, match="bad --set"):
        parse_set([item])


def test_parse_set_rejects_a_key_that_is_both_value_and_section() -> None:
    with pytest.raises(UsageError, match="set twice"):
        parse_set(["search=1", "search.tie=all"])


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("experiment:\n  name: base\nsearch:\n  tie: stage\n  criteria: [l1]\nnum_samples: 4\n")
    cfg = load_config(path, ["num_samples=9", "search.criteria=[l1, taylor]", "experiment.results_dir=/tmp/r"])
    assert cfg.num_samples == 9
    assert cfg.search.tie == "stage"  # untouched keys of an overridden section survive
    assert cfg.search.criteria == ["l1", "taylor"]
    assert cfg.exp_dir == Path("/tmp/r/base")
    assert load_config(None, ["model.name=tiny_vgg"]).model.name == "tiny_vgg"
    fails_from_set = pytest.raises(UsageError, match="unknown key 'search.tye'")
    with fails_from_set:
        load_config(path, ["search.tye=all"])
    with pytest.raises(UsageError, match="num_samples"):
        load_config(path, ["num_samples=0"])


def test_bad_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping of sections"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == config_from_dict({})


def test_search_hash_ignores_where_and_how_fast_only() -> None:
    cfg = config_from_dict({})
    assert config_from_dict({"max_concurrent": 7, "resources": {"cpu": 3}}).search_hash() == cfg.search_hash()
    assert config_from_dict({"experiment": {"results_dir": "/elsewhere"}}).search_hash() == cfg.search_hash()
    assert config_from_dict({"search": {"tie": "all"}}).search_hash() != cfg.search_hash()


def _differences(given: Any, loaded: Any, where: str = "") -> list[str]:
    """Where ``loaded`` (a config dumped as JSON) differs from what the YAML ``given`` sets."""
    if isinstance(given, dict):
        return [d for k, v in given.items() for d in _differences(v, loaded.get(k), f"{where}.{k}".lstrip("."))]
    if isinstance(given, list) and isinstance(loaded, list) and len(given) == len(loaded):
        return [d for i, (g, v) in enumerate(zip(given, loaded)) for d in _differences(g, v, f"{where}[{i}]")]
    return [] if given == loaded else [f"{where}: {given!r} -> {loaded!r}"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_with_every_value_they_set(path: Path) -> None:
    cfg = load_config(path)
    assert _differences(yaml.safe_load(path.read_text()), cfg.model_dump(mode="json")) == []


def test_data_val_limit_cuts_validation_and_enters_the_data_key():
    from search.trial.materialize import data_key, experiment_data

    cfg = load_config(None, ["data.name=digits", "data.val_limit=50"])
    assert len(experiment_data(cfg).val) == 50
    assert data_key(cfg)["val_limit"] == 50
    assert "val_limit" not in data_key(load_config(None, ["data.name=digits"]))  # old cache keys unchanged
