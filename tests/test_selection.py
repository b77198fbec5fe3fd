import pytest
import torch

from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.models import create_model
from pruning.selection import keep_by_ratios, keep_for_macs, keep_global, normalize
from pruning.surgery import GroupGraph, prune


def test_keep_by_ratio_takes_top_scores_sorted():
    s = {"a": torch.tensor([0.1, 0.9, 0.5, 0.7]), "b": torch.tensor([3.0, 1.0])}
    keep = keep_by_ratios(s, {"a": 0.5})
    assert keep == {"a": [1, 3], "b": [0, 1]}


def test_min_channels_and_round_to():
    s = {"a": torch.arange(20.0)}
    assert len(keep_by_ratios(s, 0.05, min_channels=3)["a"]) == 3
    assert len(keep_by_ratios(s, 0.3, round_to=8)["a"]) == 8  # 6 rounds up to 8
    assert len(keep_by_ratios(s, 0.9, round_to=8)["a"]) == 20  # never above the group size


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_rejected(bad):
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        keep_by_ratios({"a": torch.ones(4)}, bad)


def test_ratios_naming_unknown_group():
    with pytest.raises(UsageError, match="unknown group 'zz'; choose one of: a"):
        keep_by_ratios({"a": torch.ones(4)}, {"zz": 0.5})


def test_global_ranking_uses_per_group_normalisation():
    # Group b has 100x larger raw scores; without normalisation it would keep everything.
    s = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([100.0, 200.0, 300.0, 400.0])}
    keep = keep_global(s, 0.5)
    assert len(keep["a"]) == len(keep["b"]) == 2
    assert keep["a"] == [2, 3] and keep["b"] == [2, 3]
    assert torch.isclose(torch.linalg.vector_norm(normalize(s["b"])), torch.tensor(1.0, dtype=torch.float64))


def test_global_ranking_enforces_min_channels():
    s = {"a": torch.tensor([1e-6, 2e-6, 1.0]), "b": torch.ones(10)}
    keep = keep_global(s, 0.3, min_channels=2)
    # 4 of 13 channels by normalised score: a's largest, then b's first three (equal scores: by
    # index); a gets 1 of them and min_channels lifts it to its 2 best
    assert keep == {"a": [1, 2], "b": [0, 1, 2]}


def test_keep_for_macs_meets_budget_and_is_tight():
    model = create_model("tiny_vgg", 10)
    x = torch.zeros(1, 3, 16, 16)
    graph = GroupGraph(model, x)
    scores = {g.name: torch.rand(g.size) for g in graph.groups}
    dense = count_macs(model, (3, 16, 16))
    for ranking in ("uniform", "global"):
        keep = keep_for_macs(model, scores, dense // 2, (3, 16, 16), ranking=ranking)
        m = create_model("tiny_vgg", 10)
        m.load_state_dict(model.state_dict())
        prune(m, keep, x)
        macs = count_macs(m, (3, 16, 16))
        assert 0.35 * dense < macs <= dense // 2


def test_budget_below_smallest_network_is_usage_error():
    model = create_model("tiny_vgg", 10)
    graph = GroupGraph(model, torch.zeros(1, 3, 16, 16))
    scores = {g.name: torch.rand(g.size) for g in graph.groups}
    with pytest.raises(UsageError, match="below the smallest network"):
        keep_for_macs(model, scores, 100, (3, 16, 16), min_channels=4)
