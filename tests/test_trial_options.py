"""run_trial's issue-10 options without Ray: scratch mode, BN recalibration, distillation,
the max-drop guard, and the config keys behind them (tiny VGG on a slice of digits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from pruning.errors import UsageError
from search.study import space
from search.config import ExperimentConfig, config_from_dict
from search.trial.materialize import data_key, experiment_data
from search.trial.run import BaseArtifacts, prepare_base, run_trial
from search.trial.epochs import TRAIN_STEP_FORWARDS


#: Training samples of make_cfg's data: the limit of 200 minus the 10% selection split (data.select_fraction).
TRAIN = 180


def make_cfg(results_dir: Path, data: dict | None = None, **search: Any) -> ExperimentConfig:
    return config_from_dict({
        "experiment": {"name": "options-test", "results_dir": str(results_dir)},
        "model": {"name": "tiny_vgg"},
        "data": {"name": "digits", "limit": 200, "image_size": 8, **(data or {})},
        "train": {"epochs": 3, "lr": 0.1, "batch_size": 50, "latency_batch": 4, "calib_batches": 2, "device": "cpu"},
        "search": {"finetune_epochs": [1, 1], "finetune_lr": [0.02, 0.02], "scratch_epochs": 2, **search},
    })  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def base(results: Path) -> BaseArtifacts:
    return prepare_base(make_cfg(results))


RATIOS = {"r_features.0": 0.5, "r_features.4": 0.25, "r_features.8": 0.5}


def test_scratch_trial_trains_the_sampled_widths_from_new_weights(results: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(results, modes=["scratch"])
    rows: list[dict] = []
    models: list[torch.nn.Module] = []
    result = run_trial(cfg, {"mode": "scratch", **RATIOS}, lambda r, m: (rows.append(r), models.append(m)), base=base)
    assert result["mode"] == "scratch" and result["criterion"] == "none"
    assert result["widths"] == [8, 8, 16]
    assert result["epochs"] == 2 and [r["epoch"] for r in rows] == [1, 2]  # search.scratch_epochs
    assert rows[0]["lr"] > 0 and rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine from train.lr to 0
    assert result["val_acc_pruned"] is None and result["stop_step"] is None and result["stop_reason"] is None
    assert result["train_macs"] == TRAIN_STEP_FORWARDS * result["macs"] * TRAIN * 2 and result["teacher_macs"] == 0
    model = models[-1]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16]
    # Not a slice of the trained base: the first kept filters differ from the base's first filters.
    base_conv = base.model.features[0].weight
    assert not torch.allclose(convs[0].weight.detach().cpu(), base_conv[:8], atol=1e-3)
    assert base.model.features[0].out_channels == 16  # base untouched


def test_scratch_weights_are_reinitialised_before_training(results: Path, base: BaseArtifacts,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import search.trial.modes as trial_modes

    seen: list[torch.nn.Module] = []
    monkeypatch.setattr(trial_modes, "train", lambda model, *a, **k: seen.append(model) or [])
    cfg = make_cfg(results, modes=["scratch"])
    params = {"mode": "scratch", **RATIOS, "scratch_epochs": 1}
    run_trial(cfg, params, base=base)
    run_trial(cfg, params, base=base)
    first, second = seen
    w0 = first.features[0].weight.detach()
    assert w0.shape == (8, 1, 3, 3)
    assert torch.equal(w0, second.features[0].weight.detach())  # seeded by experiment.seed
    assert not torch.allclose(w0, base.model.features[0].weight[:8].detach())
    bn = first.features[1]
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.weight.detach(), torch.ones(8))


def test_scratch_grows_a_group_above_ratio_one(results: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(results, modes=["scratch"], ratio_max=2.0, grow=True)
    result = run_trial(cfg, {"mode": "scratch", "r_features.0": 1.5, "r_features.4": 0.5, "r_features.8": 1.0,
                             "scratch_epochs": 1}, base=base)
    assert result["widths"] == [24, 16, 32]


def test_recalibration_gives_val_acc_pruned(results: Path, base: BaseArtifacts) -> None:
    params = {"mode": "prune", "criterion": "l1", "steps": 1, **RATIOS, "finetune_epochs": 1, "finetune_lr": 0.02}
    on = run_trial(make_cfg(results, recalib_batches=4), params, base=base)
    assert on["val_acc_pruned"] is not None and 0.0 <= on["val_acc_pruned"] <= 1.0
    assert on["val_acc_pruned"] > 0.15  # recalibrated BN: well above chance (0.1) right after the cut
    assert on["stop_step"] == 1 and on["stop_reason"] == "completed"
    off = run_trial(make_cfg(results, recalib_batches=0), params, base=base)
    assert off["val_acc_pruned"] is not None and off["val_acc_pruned"] != on["val_acc_pruned"]


def test_distilled_trial_counts_teacher_compute(results: Path, base: BaseArtifacts) -> None:
    params = {"mode": "prune", "criterion": "l1", "steps": 1, **RATIOS, "finetune_epochs": 2, "finetune_lr": 0.02}
    plain = run_trial(make_cfg(results), params, base=base)
    distilled = run_trial(make_cfg(results, distill=[False, True]),
                          {**params, "distill": True, "distill_alpha": 0.7, "distill_temperature": 3.0}, base=base)
    assert plain["teacher_macs"] == 0
    assert plain["train_macs"] == TRAIN_STEP_FORWARDS * plain["macs"] * TRAIN * 2
    assert distilled["teacher_macs"] == base.metrics["macs"] * TRAIN * 2  # one teacher forward per sample
    assert distilled["train_macs"] == plain["train_macs"] + distilled["teacher_macs"]
    assert distilled["val_acc"] != plain["val_acc"] or distilled["test_acc"] != plain["test_acc"]


def test_max_drop_guard_is_recorded(results: Path, base: BaseArtifacts) -> None:
    tight = {"mode": "prune", "criterion": "l1", "steps": 2, "r_all": 0.1, "finetune_epochs": 0, "finetune_lr": 0.02}
    result = run_trial(make_cfg(results, max_drop_pts=0.0, ratio_min=0.1), tight, base=base)
    assert result["stop_reason"] == "max_drop" and result["stop_step"] in (0, 1)
    if result["stop_step"] == 0:  # the dense model was kept
        assert result["widths"] == base.widths and result["val_acc_pruned"] is None


def test_suggest_covers_scratch_and_distill(results: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(results, modes=["scratch", "prune"], distill=[True], distill_alpha=[0.2, 0.8],
                   criteria=["l1", "attribution_iba"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(12):
        p = space.suggest(study.ask(), cfg, base.group_names)
        seen[p["mode"]] = p
        assert p["distill"] is True and 0.2 <= p["distill_alpha"] <= 0.8 and p["distill_temperature"] == 4.0
    scratch = seen["scratch"]
    assert "criterion" not in scratch and "finetune_epochs" not in scratch and "r_features.4" in scratch
    assert space.param_distributions(cfg, base.group_names, scratch)["distill"].choices == (True,)


def test_baselines_stay_points_of_a_distill_space(results: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(results, distill=[False, True], baselines=[{"ratio": 0.5}])
    (params,) = space.baseline_params(cfg, base.group_names)
    assert params["distill"] is False
    space.param_distributions(cfg, base.group_names, params)  # no missing parameter


def test_config_rejects_bad_option_values(results: Path) -> None:
    with pytest.raises(UsageError, match="distill lists no value"):
        make_cfg(results, distill=[])
    with pytest.raises(UsageError, match="distill_alpha range"):
        make_cfg(results, distill_alpha=[0.5, 1.5])
    with pytest.raises(UsageError, match="modes"):
        make_cfg(results, modes=["bogus"])
    with pytest.raises(UsageError, match="recalib_batches"):
        make_cfg(results, recalib_batches=-1)


def test_val_limit_reaches_the_data_and_the_cache_key(results: Path) -> None:
    cfg = make_cfg(results, data={"val_limit": 30})
    assert len(experiment_data(cfg).val) == 30
    assert data_key(cfg)["val_limit"] == 30 and "val_limit" not in data_key(make_cfg(results))


def test_fashion_mnist_from_a_config(results: Path) -> None:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cfg = make_cfg(results, data={"name": "fashion_mnist", "limit": 100, "val_limit": 50, "image_size": None})
    data = experiment_data(cfg)
    # data.select_fraction (default 0.1) carves the selection split out of the limited train
    assert (len(data.train), len(data.select), len(data.val), len(data.test)) == (90, 10, 50, 10000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_attribution_iba_runs_as_a_search_criterion(results: Path, base: BaseArtifacts) -> None:
    cfg = make_cfg(results, criteria=["attribution_iba"])
    params = {"mode": "prune", "criterion": "attribution_iba", "steps": 1, **RATIOS, "finetune_epochs": 0,
              "finetune_lr": 0.02}
    result = run_trial(cfg, params, base=base)
    assert result["criterion"] == "attribution_iba" and result["widths"] == [8, 8, 16]
