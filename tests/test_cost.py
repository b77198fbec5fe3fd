from typing import get_args

import pytest
import torch
from torch import nn

from pruning.cost import LATENCY_BACKENDS, count_macs, count_params, measure_latency_ms
from pruning.errors import UsageError
from pruning.models import create_model


def test_macs_of_known_layers():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2), nn.Flatten(),
                      nn.Linear(4 * 4 * 4, 10))
    expected = 8 * 8 * 3 * 8 * 9 + 4 * 4 * 8 * 4 * 1 + 64 * 10
    assert count_macs(m, (3, 8, 8)) == expected


def test_depthwise_conv_counts_per_group():
    m = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(m, (8, 4, 4)) == 4 * 4 * 8 * 1 * 9


def test_params_and_mode_restored():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    m.train()
    assert count_params(m) == 4 * 3 + 3 + 3 + 3
    count_macs(m, (4,))
    assert m.training


class _ThreadProbe(nn.Conv2d):
    """A conv that records the torch thread count every forward pass runs with."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


def test_latency_is_positive_pins_and_restores_threads():
    # conftest pins 1 thread; start from 2 so "restored" and "pinned to 1" are distinguishable.
    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probe = _ThreadProbe()
        ms = measure_latency_ms(probe, (3, 8, 8), batch_size=2, runs=3, warmup=1, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(outer)
    assert ms > 0
    assert probe.seen == [1] * 4  # warmup + runs, all with the pinned count
    assert probe.training  # mode restored too


def test_onnxruntime_latency_is_positive_and_leaves_the_model_alone():
    model = create_model("tiny_vgg", 10, in_channels=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = measure_latency_ms(model, (1, 16, 16), batch_size=4, runs=3, warmup=1, backend="onnxruntime")
    assert ms > 0
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_latency_backend_names_the_choices():
    with pytest.raises(UsageError, match="unknown latency backend 'tensorrt'; choose one of: torch, onnxruntime"):
        measure_latency_ms(nn.Conv2d(3, 4, 3), (3, 8, 8), batch_size=2, runs=1, backend="tensorrt")


def test_config_offers_exactly_the_latency_backends():
    from search.config import TrainSection

    assert get_args(TrainSection.model_fields["latency_backend"].annotation) == LATENCY_BACKENDS
