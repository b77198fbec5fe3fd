import copy

import pytest

from pruning.cost import count_macs
from pruning.data import load_data
from pruning.errors import UsageError
from pruning.iterative import PruneSpec, prune_iteratively
from pruning.models import create_model
from pruning.surgery import widths
from pruning.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained():
    data = load_data("digits", limit=300)
    model = create_model("tiny_vgg", 10, in_channels=1)
    train(model, data, TrainConfig(epochs=2, batch_size=32))
    return data, model


def _ft(epochs=1):
    return TrainConfig(epochs=epochs, lr=0.01, batch_size=32)


def test_iterative_steps_shrink_monotonically_and_record(trained):
    data, base = trained
    model = copy.deepcopy(base)
    dense_macs = count_macs(model, data.input_shape)
    epochs = []
    res = prune_iteratively(model, data, PruneSpec(criterion="taylor", ratio=0.4, steps=3, step_epochs=1), _ft(1),
                            on_epoch=lambda m, _: epochs.append(m.epoch))
    macs = [s.macs for s in res.steps]
    assert len(res.steps) == 3 and macs == sorted(macs, reverse=True) and macs[-1] < 0.5 * dense_macs
    assert epochs == [1, 2, 3]  # 1 epoch after steps 1 and 2, then the final finetune epoch
    assert list(res.steps[-1].widths.values()) == [round(0.4 * c) for c in (16, 32, 32)]


def test_global_ranking_and_per_group_ratios(trained):
    data, base = trained
    m1 = copy.deepcopy(base)
    prune_iteratively(m1, data, PruneSpec(criterion="l1", ratio=0.5, ranking="global"), _ft(0))
    assert sum(widths(m1, data.example_input()).values()) == 40  # half of 80 channels overall
    m2 = copy.deepcopy(base)
    prune_iteratively(m2, data, PruneSpec(criterion="fpgm", ratios={"features.4": 0.25}), _ft(0))
    assert widths(m2, data.example_input()) == {"features.0": 16, "features.4": 8, "features.8": 32}


def test_macs_target_is_met(trained):
    data, base = trained
    model = copy.deepcopy(base)
    target = count_macs(model, data.input_shape) // 3
    prune_iteratively(model, data, PruneSpec(criterion="taylor_fo", target_macs=target, steps=2, step_epochs=0),
                      _ft(0))
    assert count_macs(model, data.input_shape) <= target


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.5}, r"\(0, 1\]"),
        ({}, "exactly one of"),
        ({"ratio": 0.5, "target_macs": 10}, "exactly one of"),
        ({"ratio": 0.5, "criterion": "tayler"}, "choose one of: .*taylor"),
        ({"ratio": 0.5, "ranking": "best"}, "choose one of: uniform, global"),
        ({"ratio": 0.5, "steps": 0}, "steps must be"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(UsageError, match=match):
        PruneSpec(**kwargs)


def test_unknown_group_in_ratios(trained):
    data, base = trained
    with pytest.raises(UsageError, match="unknown group 'conv9'"):
        prune_iteratively(copy.deepcopy(base), data, PruneSpec(ratios={"conv9": 0.5}), _ft(0))
