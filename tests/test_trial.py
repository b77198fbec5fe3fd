"""run_trial without Ray: tiny VGG on digits, one base model shared by the module."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import pruning.basemodel
from pruning.errors import TrialError
from search.study import space
from search.trial.params import ratios_from_params
from search.trial import modes as trial_modes
from search.trial import base as trial_base
from search.config import ExperimentConfig, config_from_dict
from search.trial.run import BaseArtifacts, prepare_base, run_trial

RESULT_KEYS = {"val_acc", "test_acc", "macs", "params", "latency_ms", "macs_ratio", "widths", "group_names", "epochs",
               "wall_s", "mode", "criterion", "base_val_acc", "val_acc_pruned", "stop_step", "stop_reason",
               "train_macs", "teacher_macs"}  # fmt: skip
ROW_KEYS = {"epoch", "train_loss", "val_acc", "macs", "widths", "lr", "wall_s", "rung_epoch", "rung_epochs"}


def make_cfg(results_dir: Path, **search: Any) -> ExperimentConfig:
    return config_from_dict({
        "experiment": {"name": "trial-test", "results_dir": str(results_dir)},
        "model": {"name": "tiny_vgg"},
        "data": {"name": "digits", "limit": 200, "image_size": 8},
        "train": {"epochs": 2, "lr": 0.1, "batch_size": 50, "latency_batch": 4, "calib_batches": 2, "device": "cpu"},
        "search": {"finetune_epochs": [1, 1], "finetune_lr": [0.02, 0.02], **search},
    })  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    return make_cfg(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def base(cfg: ExperimentConfig) -> BaseArtifacts:
    return prepare_base(cfg)


def prune_params(ratios: dict[str, float], **kw: Any) -> dict[str, Any]:
    params = {"mode": "prune", "criterion": "l1", "steps": 1, "finetune_epochs": 1, "finetune_lr": 0.02}
    params.update({space.ratio_key(g): r for g, r in ratios.items()})
    return {**params, **kw}


def test_prepare_base_trains_measures_and_caches(cfg: ExperimentConfig, base: BaseArtifacts) -> None:
    assert base.group_names == ["features.0", "features.4", "features.8"]
    assert base.widths == [16, 32, 32]
    assert set(base.metrics) == {"val_acc", "test_acc", "macs", "params", "latency_ms"}
    assert base.metrics["val_acc"] > 0.3  # learned something in 2 epochs (chance is 0.1)
    assert base.metrics["macs"] > 0 and base.metrics["latency_ms"] > 0
    assert base.checkpoint == str(trial_base.base_cache_path(cfg)) and Path(base.checkpoint).is_file()
    assert Path(base.checkpoint).parent == cfg.exp_dir and Path(base.checkpoint).name.startswith("base-")
    assert next(base.model.parameters()).device.type == "cpu"
    again = pickle.loads(pickle.dumps(base))  # what ray.put does
    assert again.group_names == base.group_names
    assert torch.equal(again.model.features[0].weight, base.model.features[0].weight)


def test_second_prepare_base_loads_the_cache(
    cfg: ExperimentConfig, base: BaseArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    mtime = Path(base.checkpoint).stat().st_mtime_ns

    def no_training(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the base model was trained again")

    monkeypatch.setattr(pruning.basemodel, "train", no_training)
    lines: list[str] = []
    again = prepare_base(cfg, log_progress=lines.append)
    assert again.checkpoint == base.checkpoint and Path(base.checkpoint).stat().st_mtime_ns == mtime
    assert any("using cached" in line for line in lines)
    assert torch.equal(again.model.features[4].weight, base.model.features[4].weight)
    assert again.metrics["val_acc"] == base.metrics["val_acc"]

    # A different training recipe is a different cache entry.
    other = config_from_dict({**cfg.model_dump(mode="json"), "train": {**cfg.train.model_dump(), "epochs": 1}})
    assert trial_base.base_cache_path(other) != trial_base.base_cache_path(cfg)


def test_prune_trial_reports_every_epoch_and_returns_documented_metrics(
    cfg: ExperimentConfig, base: BaseArtifacts
) -> None:
    rows: list[dict] = []
    models: list[torch.nn.Module] = []
    ratios = {"features.0": 0.5, "features.4": 0.75, "features.8": 0.25}
    params = prune_params(ratios, steps=2, finetune_epochs=2)
    result = run_trial(cfg, params, lambda row, model: (rows.append(row), models.append(model)), base=base)

    assert set(result) == RESULT_KEYS
    json.dumps(result)
    assert result["mode"] == "prune" and result["criterion"] == "l1"
    assert result["widths"] == [8, 24, 8]  # round(ratio * dense width) per group
    assert result["group_names"] == base.group_names
    assert result["macs"] < base.metrics["macs"] and result["params"] < base.metrics["params"]
    assert result["macs_ratio"] == pytest.approx(result["macs"] / base.metrics["macs"])
    assert 0.0 <= result["test_acc"] <= 1.0 and 0.0 <= result["val_acc"] <= 1.0
    assert result["latency_ms"] > 0 and result["wall_s"] > 0
    assert result["base_val_acc"] == base.metrics["val_acc"]

    # One step epoch between the two pruning steps, then two finetune epochs.
    assert result["epochs"] == 3 and len(rows) == 3
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # Only the final step's finetune epochs are comparable across trials (the scheduler's rungs).
    assert [r["rung_epoch"] for r in rows] == [None, 1, 2] and [r["rung_epochs"] for r in rows] == [None, 2, 2]
    for row, model in zip(rows, models):
        assert set(row) == ROW_KEYS
        assert isinstance(model, torch.nn.Module)
        assert math.isfinite(row["train_loss"]) and row["wall_s"] > 0 and len(row["widths"]) == 3
    assert rows[0]["widths"] != rows[-1]["widths"]  # halfway after step 1, at the target after step 2
    assert rows[-1]["widths"] == result["widths"] and rows[-1]["macs"] == result["macs"]
    assert rows[-1]["val_acc"] == pytest.approx(result["val_acc"])
    assert base.widths == [16, 32, 32] and base.model.features[0].out_channels == 16  # base untouched


def test_suggested_params_run(cfg: ExperimentConfig, base: BaseArtifacts) -> None:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    params = space.suggest(study.ask(), cfg, base.group_names)
    result = run_trial(cfg, params, base=base)
    expected = [round(ratios_from_params(params, base.group_names)[g] * w) for g, w in
                zip(base.group_names, base.widths)]  # fmt: skip
    assert result["widths"] == [max(1, e) for e in expected]


@pytest.mark.parametrize("ranking", ["uniform", "global"])
def test_baseline_params_run_as_ordinary_trials(tmp_path: Path, base: BaseArtifacts, ranking: str) -> None:
    cfg = make_cfg(tmp_path, baselines=[{"ranking": ranking, "ratio": 0.5, "criterion": "l1"}])
    (params,) = space.baseline_params(cfg, base.group_names)
    result = run_trial(cfg, params, base=base)
    assert result["criterion"] == "l1" and result["epochs"] == 1
    if ranking == "uniform":
        assert result["widths"] == [8, 16, 16]
    else:  # one ranking over all channels: half of all 80 survive, spread by score
        assert sum(result["widths"]) == 40
    assert result["macs"] < base.metrics["macs"]


def test_ratio_above_one_grows_the_group(tmp_path: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(tmp_path, ratio_max=2.0, grow=True)
    params = prune_params({"features.0": 1.5, "features.4": 0.5, "features.8": 1.0}, grow_method="split")
    result = run_trial(cfg, params, base=base)
    assert result["widths"] == [24, 16, 32]


def test_nan_loss_fails_the_trial(cfg: ExperimentConfig, base: BaseArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(logits: torch.Tensor, *_a: Any, **_k: Any) -> torch.Tensor:
        return logits.sum() * float("nan")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_loss)
    with pytest.raises(TrialError, match="loss became nan"):
        run_trial(cfg, prune_params({"features.0": 0.5, "features.4": 0.5, "features.8": 0.5}), base=base)


@pytest.mark.parametrize(
    "params, message",
    [
        (prune_params({"features.0": 0.0, "features.4": 0.5, "features.8": 0.5}),  # keep nothing
         "keep ratio for group 'features.0' must be in (0, 1], got 0.0"),
        (prune_params({"features.0": 0.5, "features.4": 0.5, "features.8": 1.5}),  # widen without growth
         "ratio 1.5 > 1 for group 'features.8' needs search.grow: true"),
        (prune_params({"features.0": 0.5}, criterion="tayler"),  # a criterion pruning rejects
         "unknown criterion 'tayler'; choose one of: attribution, attribution_iba, bn_scale"),
        ({"mode": "prune", "criterion": "l1"},  # no ratios at all
         "params give no keep ratio for group 'features.0': expected 'r_features.0' or 'r_all'"),
    ],
    ids=["ratio-0", "grow-disabled", "bad-criterion", "no-ratios"],
)
def test_rejected_targets_become_trial_errors(
    cfg: ExperimentConfig, base: BaseArtifacts, params: dict, message: str
) -> None:
    with pytest.raises(TrialError, match=re.escape(message)):
        run_trial(cfg, params, base=base)


def test_adaptive_trial_finds_its_own_widths(tmp_path: Path, base: BaseArtifacts) -> None:
    import optuna

    cfg = make_cfg(tmp_path, modes=["adaptive"], adaptive={"epochs": 2, "eval_every_steps": [2], "patience": [1],
                                                            "prune_threshold": [0.6, 0.7]})  # fmt: skip
    params = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), cfg,
                           base.group_names)  # fmt: skip
    rows: list[dict] = []
    result = run_trial(cfg, params, lambda row, _model: rows.append(row), base=base)
    assert set(result) == RESULT_KEYS and result["mode"] == "adaptive" and result["criterion"] == "profit"
    assert result["epochs"] == len(rows) == 3  # 2 search epochs (4 steps each, an evaluation every 2) + 1 finetune
    assert all(set(r) == ROW_KEYS for r in rows) and rows[-1]["widths"] == result["widths"]
    # The search epochs are not comparable with other trials' epochs; the finetune epoch is.
    assert [r["rung_epoch"] for r in rows] == [None, None, 1] and [r["rung_epochs"] for r in rows] == [None, None, 1]
    assert result["widths"] != base.widths  # the loop pruned or grew something
    assert result["macs_ratio"] == pytest.approx(result["macs"] / base.metrics["macs"])


def test_missing_optional_params_take_the_baseline_defaults(cfg: ExperimentConfig, base: BaseArtifacts) -> None:
    result = run_trial(cfg, {"r_all": 0.5}, base=base)
    assert result["mode"] == "prune" and result["criterion"] == cfg.search.criteria[0]
    assert result["epochs"] == cfg.search.finetune_epochs[1] and result["widths"] == [8, 16, 16]


def test_latency_backend_reaches_the_measurement(
    cfg: ExperimentConfig, base: BaseArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pruning.measure

    backends: list[str] = []
    real = pruning.measure.measure_latency_ms

    def spy(*args: Any, **kwargs: Any) -> float:
        backends.append(kwargs["backend"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pruning.measure, "measure_latency_ms", spy)
    ort_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"latency_backend": "onnxruntime"})})
    result = run_trial(ort_cfg, {"r_all": 0.5, "finetune_epochs": 0}, base=base)
    assert backends == ["onnxruntime"] and result["latency_ms"] > 0


@pytest.mark.parametrize("eval_every", [2, 1000])  # the loop prunes to the budget itself / never evaluates
def test_adaptive_trial_ends_within_its_sampled_macs_budget(tmp_path: Path, base: BaseArtifacts,
                                                            eval_every: int) -> None:
    import optuna

    cfg = make_cfg(tmp_path, modes=["adaptive"], ratio_min=0.3, adaptive={"epochs": 1, "eval_every_steps": [eval_every],
                                                                         "patience": [1], "max_width_mult": 2.0})
    low, high = space.macs_budget_range(cfg, base.group_names)
    params = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), cfg,
                           base.group_names)  # fmt: skip
    assert low <= params[space.BUDGET_KEY] <= high <= 1.0
    params[space.BUDGET_KEY] = low  # the hardest budget: the smallest prune trial's MACs
    budget = trial_modes.adaptive_budget(cfg, params, base.metrics["macs"])
    assert budget == math.floor(low * base.metrics["macs"])
    result = run_trial(cfg, params, base=base)
    # Exact, no tolerance: every cut (the loop's and the final one) counts the pruned model's
    # MACs as measure() does, and the budget is rounded down.
    assert result["macs"] <= budget
    assert result["macs"] >= 0.5 * budget  # cut to the budget, not far below it
    capped = cfg.model_copy(update={"objectives": cfg.objectives.model_copy(update={"macs_budget": budget // 2})})
    assert trial_modes.adaptive_budget(capped, params, base.metrics["macs"]) == budget // 2


def _copied(state: dict) -> dict:
    """A resume state as a retried trial reads it back (torch.save/torch.load: a deep copy)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_a_trial_resumed_from_its_checkpoint_runs_only_the_rest_and_ends_the_same(tmp_path: Path,
                                                                                 base: BaseArtifacts) -> None:
    cfg = make_cfg(tmp_path, ratio_max=2.0, grow=True)  # growth then pruning: the checkpoint holds new shapes
    params = prune_params({"features.0": 1.5, "features.4": 0.5, "features.8": 0.75}, grow_method="split", steps=2,
                          finetune_epochs=3)
    states: list[dict] = []
    rows: list[dict] = []
    full = run_trial(cfg, params, lambda row, _m: rows.append(row), base=base,
                     checkpoint=lambda s: states.append(_copied(s)))
    assert [s["epoch"] for s in states] == [1, 2, 3, 4] == [r["epoch"] for r in rows]  # checkpoint_every: 1
    again: list[dict] = []
    resumed = run_trial(cfg, params, lambda row, _m: again.append(row), base=base, resume=states[1])
    assert [r["epoch"] for r in again] == [3, 4]  # the final step's finetune continues at its 2nd epoch
    assert resumed["epochs"] == full["epochs"] == 4 and resumed["widths"] == full["widths"]
    assert resumed["widths"][0] == 24  # grown 16 -> 24 before the checkpoint, kept after the resume
    assert resumed["val_acc"] == pytest.approx(full["val_acc"]) and again[-1]["train_loss"] == pytest.approx(
        rows[-1]["train_loss"], rel=1e-5)

    sparse = make_cfg(tmp_path, ratio_max=2.0, grow=True).model_copy(
        update={"resources": cfg.resources.model_copy(update={"checkpoint_every": 3})})
    saved: list[dict] = []
    run_trial(sparse, params, base=base, checkpoint=saved.append)
    assert [s["epoch"] for s in saved] == [3]
    off = sparse.model_copy(update={"resources": cfg.resources.model_copy(update={"checkpoint_every": 0})})
    saved.clear()
    run_trial(off, params, base=base, checkpoint=saved.append)
    assert saved == []
