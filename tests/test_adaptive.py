"""The online grow/prune loop: decisions, budget, optimizer state, and the ``prunetune grow`` CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from pruning.adaptive import AdaptiveConfig, SearchState, check_budget, run_adaptive, smallest_macs
from pruning.cost import count_macs
from pruning.data import load_data
from pruning.errors import UsageError
from pruning.models import create_model
from pruning.surgery import GroupGraph, widths
from pruning.train import TrainConfig, make_optimizer, train_step
from search.cli import main as cli_main

TRAIN = TrainConfig(lr=0.05, batch_size=32, seed=0, device="cpu")
FAST = AdaptiveConfig(eval_every_steps=2, patience=1, grow_top_q=0.5, stop_after=100, max_epochs=2,
                      finetune_epochs=1, calib_batches=1)


@pytest.fixture(scope="module")
def data():
    return load_data("digits", limit=192)  # 6 steps of 32 per epoch


def _model(width_mult: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_vgg", num_classes=10, in_channels=1, width_mult=width_mult)


@pytest.mark.parametrize("bad", [
    {"gamma": 1.5}, {"gamma": -0.1}, {"grow_method": "net2deeper"}, {"max_width_mult": 0.0}, {"patience": 0},
    {"eval_every_steps": 0}, {"prune_threshold": 2.0}, {"ema": 1.0}, {"budget_macs": 0}, {"min_channels": 0},
])
def test_config_rejects_bad_values(bad: dict) -> None:
    (name, value), = bad.items()
    with pytest.raises(UsageError, match=re.escape(str(value))):
        AdaptiveConfig(**bad)


def test_narrow_start_grows_and_records_history(data) -> None:
    model = _model(0.5)
    start = widths(model, data.example_input())
    epochs = []
    result = run_adaptive(model, data, TRAIN, FAST, on_epoch=lambda m, _net: epochs.append(m.epoch))
    assert epochs == [1, 2, 3] and result.epochs == 3 and result.search_epochs == 2
    assert result.initial_widths == start
    assert result.widths == widths(model, data.example_input())
    assert len(result.history) == 6  # 12 search steps / eval_every 2
    assert any(h["grown"] for h in result.history)
    prev = start
    for h in result.history:  # every width change is explained by the record
        for g in start:
            assert h["widths"][g] == prev[g] + h["grown"].get(g, 0) - h["pruned"].get(g, 0)
            assert FAST.min_channels <= h["widths"][g] <= int(FAST.max_width_mult * start[g])
        prev = h["widths"]
    assert prev == result.widths
    assert result.history[-1]["macs"] == count_macs(model, data.input_shape)
    # Compute: at least forward+backward of the narrow start over every training sample seen.
    assert result.train_macs >= 3 * count_macs(_model(0.5), data.input_shape) * len(data.train) * 3
    assert model(data.example_input(2)).shape == (2, 10)


def test_budget_from_above_prunes_until_met_and_never_grows_over_it(data) -> None:
    model = _model()
    budget = int(0.4 * count_macs(model, data.input_shape))
    cfg = replace(FAST, budget_macs=budget, max_epochs=4, grow_top_q=1.0)
    result = run_adaptive(model, data, TRAIN, cfg)
    assert count_macs(model, data.input_shape) <= budget
    assert "budget" in result.stop_reason
    assert result.search_epochs < 4
    over = [h for h in result.history if h["over_budget"]]
    assert over and all(not h["grown"] and h["pruned"] for h in over)


def test_budget_below_the_smallest_network_is_refused_before_training(data) -> None:
    model = _model()
    floor = smallest_macs(model, data.input_shape, 2)
    check_budget(model, data.input_shape, replace(FAST, budget_macs=floor))  # exactly the floor is fine
    called = []
    with pytest.raises(UsageError, match="below the smallest network"):
        run_adaptive(model, data, TRAIN, replace(FAST, budget_macs=floor - 1), on_epoch=lambda *a: called.append(1))
    assert not called


def test_budget_between_the_min_channels_and_round_to_floors_is_refused_up_front(data) -> None:
    model = _model()
    cfg = replace(FAST, min_channels=2, round_to=8, max_epochs=4, finetune_epochs=0, grow_top_q=1.0)
    loose, rounded = smallest_macs(model, data.input_shape, 2), smallest_macs(model, data.input_shape, 2, 8)
    assert loose < rounded  # 8 channels per group cost more than 2
    between = (loose + rounded) // 2
    with pytest.raises(UsageError, match=rf"MACs budget {between} is below .* min_channels=2, round_to=8\)"):
        check_budget(model, data.input_shape, replace(cfg, budget_macs=between))
    called = []
    with pytest.raises(UsageError, match="round_to=8"):
        run_adaptive(model, data, TRAIN, replace(cfg, budget_macs=between), on_epoch=lambda *a: called.append(1))
    assert not called
    # Exactly the rounded floor is reachable: the loop prunes down to it without raising.
    result = run_adaptive(model, data, TRAIN, replace(cfg, budget_macs=rounded))
    assert count_macs(model, data.input_shape) <= rounded and "budget" in result.stop_reason
    assert all(w % 8 == 0 for w in result.widths.values())


def _momentum(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    return opt.state[p]["momentum_buffer"].clone()


def _trained_loop(data, cfg: AdaptiveConfig) -> tuple[nn.Module, SearchState, torch.optim.Optimizer]:
    model = _model()
    opt = make_optimizer(model, TRAIN)
    for x, y in data.train.batches(32):
        train_step(model, opt, x, y, TRAIN)
    return model, SearchState(model, data, TRAIN, cfg, torch.device("cpu")), opt


def test_growth_keeps_momentum_of_old_channels_and_zeroes_new_ones(data) -> None:
    model, loop, opt = _trained_loop(data, replace(FAST, prune_threshold=0.0, grow_top_q=1.0))
    loop.quiet = dict.fromkeys(loop.quiet, 5)  # every group is eligible to grow now
    conv, consumer, head = model.features[0], model.features[4], model.classifier
    old = {k: _momentum(opt, p) for k, p in (("conv", conv.weight), ("cons", consumer.weight), ("head", head.bias))}
    opt, record = loop.evaluate(opt, step=6, epoch=1)
    assert record["grown"]["features.0"] == 4 and not record["pruned"]
    assert torch.equal(_momentum(opt, conv.weight)[:16], old["conv"])
    assert (_momentum(opt, conv.weight)[16:] == 0).all()
    assert record["grown"]["features.4"] == 8  # the consumer grew its own outputs too: [32 + 8, 16 + 4]
    assert torch.equal(_momentum(opt, consumer.weight)[:32, :16], old["cons"])
    assert (_momentum(opt, consumer.weight)[:, 16:] == 0).all() and (_momentum(opt, consumer.weight)[32:] == 0).all()
    assert torch.equal(_momentum(opt, head.bias), old["head"])  # untouched tensor keeps its state
    assert {id(p) for p in model.parameters()} == {id(p) for g in opt.param_groups for p in g["params"]}


def test_a_split_does_not_change_which_channels_fall_below_the_prune_threshold(data) -> None:
    cfg = replace(FAST, noise=0.0, grow_top_q=1.0, prune_threshold=0.9)
    model, loop, _opt = _trained_loop(data, cfg)
    before, _ = loop._profit(GroupGraph(model, loop.example))
    loop._smooth(before)
    low_before = {g: before[g] < cfg.prune_threshold * loop.mean_profit(g) for g in before}
    assert all(low.any() and not low.all() for low in low_before.values())
    # Split the weakest channels that are still above the threshold (most at risk), and the best one.
    sources = {}
    for g, p in before.items():
        above = sorted((k for k in range(len(p)) if not low_before[g][k]), key=lambda k: float(p[k]))
        sources[g] = [above[0], above[1], above[-1], above[2]]
    for g, src in sources.items():  # the loop splits its highest-EMA channels: rank the chosen first
        rank = torch.zeros(len(before[g]), dtype=torch.float64)
        rank[src] = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
        loop.ema[g] = rank
    loop._grow({g: 4 for g in sources}, state={})  # no training in between
    after, _ = loop._profit(GroupGraph(model, loop.example))
    loop.ema = {g: v.double() for g, v in after.items()}
    for g, p in after.items():
        origin = torch.tensor([*range(len(before[g])), *sources[g]])
        torch.testing.assert_close(p, before[g][origin], rtol=1e-4, atol=1e-6)  # each half scores its source
        low_after = p < cfg.prune_threshold * loop.mean_profit(g)
        assert torch.equal(low_after, low_before[g][origin])


def test_pruning_slices_momentum_of_kept_channels(data) -> None:
    model, loop, opt = _trained_loop(data, replace(FAST, prune_threshold=1.0, grow_fraction=0.0))
    conv = model.features[0]
    old_w, old_m = conv.weight.detach().clone(), _momentum(opt, conv.weight)
    opt, record = loop.evaluate(opt, step=6, epoch=1)
    assert record["pruned"].get("features.0", 0) > 0
    kept = [i for i in range(16) if any(torch.equal(old_w[i], w) for w in conv.weight.detach())]
    assert len(kept) == conv.out_channels
    assert torch.equal(_momentum(opt, conv.weight), old_m[kept])


@pytest.mark.slow  # two fresh processes (torch + sklearn imports): ~10-30 s on a busy 2-core machine
def test_cli_grow_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "search.cli", "grow", "--model", "tiny_vgg", "--data", "digits", "--from-scratch",
           "--width-mult", "0.5", "--epochs", "2", "--finetune-epochs", "1", "--limit", "160", "--eval-every", "2",
           "--patience", "1", "--calib-batches", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    for text in ("start widths: features.0 8", "widths: features.0 8->", "test_acc", "training compute", "GMACs"):
        assert text in proc.stdout
    model = torch.load(out / "model.pt", weights_only=False)
    assert isinstance(model, nn.Module)
    saved = json.loads((out / "widths.json").read_text())
    assert saved == widths(model, torch.zeros(1, 1, 16, 16))
    history = json.loads((out / "history.json").read_text())
    assert history and history[-1]["widths"] == saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_macs"] > 0 and metrics["start_widths"]["features.0"] == 8

    never = tmp_path / "never"
    bad = [*cmd[:-1], str(never), "--grow-method", "net2deeper"]
    proc = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "prunetune: error: unknown grow method 'net2deeper'; choose one of: split, zero"]
    assert not never.exists()


@pytest.mark.parametrize("flags, message", [
    (["--grow-method", "net2deeper"], "unknown grow method 'net2deeper'; choose one of: split, zero"),
    (["--gamma", "1.5"], "gamma must be in [0, 1], got 1.5"),
    (["--width-mult", "0"], "width multiplier must be > 0, got 0.0"),
    (["--budget-macs", "1000"], "below the smallest network"),
])
def test_cli_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    out = tmp_path / "never"
    code = cli_main(["grow", "--model", "tiny_vgg", "--data", "digits", "--from-scratch", "--limit", "64",
                     "--out", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


def test_cli_continues_from_an_exported_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = _model(0.5)
    torch.save(start, tmp_path / "model.pt")  # what `prunetune grow/prune` export: a bare module
    out = tmp_path / "again"
    code = cli_main(["grow", "--model", "tiny_vgg", "--data", "digits", "--checkpoint", str(tmp_path / "model.pt"),
                     "--limit", "64", "--epochs", "1", "--finetune-epochs", "0", "--eval-every", "1",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "start widths: features.0 8, features.4 16, features.8 16" in printed
    assert "grow: epoch 1/1  loss " in printed and " s/epoch  ETA 0s  MACs " in printed  # with MACs and widths
    assert (out / "model.pt").is_file() and (out / "history.json").is_file()
