"""Adaptive BN: recalibrated statistics equal an independent computation, and they matter after a cut."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pruning.data import load_data
from pruning.errors import UsageError
from pruning.iterative import PruneSpec, prune_iteratively
from pruning.models import create_model
from pruning.recalibrate import recalibrate_bn
from pruning.train import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_data("digits", limit=300)
    model = create_model("tiny_vgg", 10, in_channels=1)
    train(model, data, TrainConfig(epochs=5, lr=0.1, batch_size=32))
    return data, model


def _reference_stats(model: nn.Module, batches: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per BN: the average over batches of each batch's per-channel mean and unbiased variance of its input.

    Computed on a copy whose BN layers normalise with batch statistics (train mode), as
    they do while being recalibrated, and every other module in eval mode.
    """
    ref = copy.deepcopy(model).eval()
    norms = [m for m in ref.modules() if isinstance(m, _BatchNorm)]
    seen: dict[int, list[Tensor]] = {i: [] for i in range(len(norms))}
    for i, bn in enumerate(norms):
        bn.train()
        bn.register_forward_pre_hook(lambda _m, inp, i=i: seen[i].append(inp[0].detach().clone()))
    with torch.no_grad():
        for x in batches:
            ref(x)
    dims = lambda t: [d for d in range(t.ndim) if d != 1]  # noqa: E731  (all but channels)
    return [
        (torch.stack([a.mean(dims(a)) for a in seen[i]]).mean(0),
         torch.stack([a.var(dims(a), unbiased=True) for a in seen[i]]).mean(0))
        for i in range(len(norms))
    ]  # fmt: skip


def _norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def test_recalibrated_stats_are_the_average_batch_statistics_of_the_pruned_model(trained) -> None:
    data, base = trained
    model = copy.deepcopy(base)
    prune_iteratively(model, data, PruneSpec(criterion="l1", ratio=0.5), TrainConfig(epochs=0, batch_size=32))
    batches = [x for x, _ in data.train.batches(32, shuffle=True, seed=5)][:4]
    want = _reference_stats(model, batches)
    model.train()
    model.features[1].eval()  # a frozen BN: its mode must come back too
    modes = {n: m.training for n, m in model.named_modules()}
    momenta = [m.momentum for m in _norms(model)]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    stale = [bn.running_mean.clone() for bn in _norms(model)]

    used = recalibrate_bn(model, iter([(x, torch.zeros(len(x))) for x in batches] * 3), num_batches=4)

    assert used == 4
    for bn, (mean, var), old in zip(_norms(model), want, stale, strict=True):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(bn.running_mean, old)  # the statistics did move
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [m.momentum for m in _norms(model)] == momenta
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_recalibration_restores_accuracy_after_a_cut(trained) -> None:
    """The dense model's BN statistics do not fit the pruned one: near-chance accuracy until recalibrated."""
    data, base = trained
    model = copy.deepcopy(base)
    prune_iteratively(model, data, PruneSpec(criterion="l1", ratio=0.7), TrainConfig(epochs=0, batch_size=32))
    before = evaluate(model, data.val)
    recalibrate_bn(model, data.train.batches(64, shuffle=True, seed=1), num_batches=10)
    after = evaluate(model, data.val)
    assert evaluate(base, data.val) > 0.8
    assert after > before + 0.2, (before, after)


def test_dropout_is_off_and_only_batch_inputs_count() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.9), nn.Flatten(), nn.LazyLinear(5),
                          nn.BatchNorm1d(5))  # fmt: skip
    batches = [torch.randn(16, 3, 6, 6) for _ in range(3)]
    model(batches[0])  # materialise the lazy layer
    want = _reference_stats(model, batches)  # reference runs Dropout in eval mode
    assert recalibrate_bn(model, batches, num_batches=50) == 3  # plain tensors work; fewer batches than asked
    for bn, (mean, var) in zip(_norms(model), want, strict=True):
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)


def test_no_batches_is_a_usage_error_and_keeps_the_old_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    with pytest.raises(UsageError, match="no batches"):
        recalibrate_bn(model, [])
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.5)) and model[1].momentum == 0.1
    with pytest.raises(UsageError, match="num_batches must be >= 1"):
        recalibrate_bn(model, [torch.randn(2, 3, 5, 5)], num_batches=0)
