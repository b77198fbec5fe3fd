import random

import pytest
import torch

from pruning.budget import MacsPolynomial, Projector, project_profile, random_profile, uniform_profile
from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.models import create_model
from pruning.surgery import GroupGraph, prune

SHAPE = (3, 16, 16)


def _setup(name: str, shape=SHAPE):
    torch.manual_seed(0)
    model = create_model(name, 10, in_channels=shape[0])
    graph = GroupGraph(model, torch.zeros(1, *shape))
    scores = {g.name: torch.rand(g.size) for g in graph.groups}
    return model, scores


@pytest.mark.parametrize("name", ["tiny_vgg", "tiny_resnet", "small_vgg"])
def test_polynomial_equals_counted_macs_at_random_widths(name):
    model, scores = _setup(name)
    poly = MacsPolynomial(model, SHAPE)
    assert poly.full == count_macs(model, SHAPE)
    rng = random.Random(1)
    for _ in range(4):
        widths = {g: rng.randint(1, c) for g, c in poly.sizes.items()}
        m = create_model(name, 10)
        m.load_state_dict(model.state_dict())
        prune(m, {g: list(range(w)) for g, w in widths.items()}, torch.zeros(1, *SHAPE))
        assert poly(widths) == count_macs(m, SHAPE), widths


def test_polynomial_counts_a_flattened_linear_and_a_depthwise_conv():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.c2 = torch.nn.Conv2d(8, 6, 1)
            self.fc1 = torch.nn.Linear(6 * 4 * 4, 12)
            self.fc2 = torch.nn.Linear(12, 10)

        def forward(self, x):
            x = torch.relu(self.c2(torch.relu(self.dw(torch.relu(self.c1(x))))))
            return self.fc2(torch.relu(self.fc1(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 4), 1))))

    model = Net()
    poly = MacsPolynomial(model, (3, 8, 8))
    assert poly.full == count_macs(model, (3, 8, 8))
    widths = {"c1": 3, "c2": 2, "fc1": 5}
    assert set(poly.sizes) == set(widths)
    prune(model, {g: list(range(w)) for g, w in widths.items()}, torch.zeros(1, 3, 8, 8))
    assert poly(widths) == count_macs(model, (3, 8, 8))


@pytest.mark.parametrize("name", ["tiny_vgg", "tiny_resnet", "small_vgg"])
@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5])
def test_projection_lands_within_one_percent(name, frac):
    model, scores = _setup(name)
    projector = Projector(model, scores, SHAPE)
    target = int(frac * projector.full_macs)
    for profile in (uniform_profile(scores), random_profile(scores, random.Random(3))):
        p = projector.project(profile, target, verify=True)  # verify: the counted MACs of the cut model
        assert p.within_tol and abs(p.macs - target) <= 0.01 * target, (p.macs, target, p.widths)
        assert {g: len(k) for g, k in p.keep.items()} == p.widths
        # the cut keeps each group's top-scoring channels
        for g, k in p.keep.items():
            rest = sorted(set(range(len(scores[g]))) - set(k))
            if rest:
                assert scores[g][k].min() >= scores[g][rest].max()


def test_project_profile_counts_the_pruned_model():
    model, scores = _setup("small_vgg")
    target = int(0.1 * count_macs(model, SHAPE))
    p = project_profile(model, scores, uniform_profile(scores), target, SHAPE)
    m = create_model("small_vgg", 10)
    m.load_state_dict(model.state_dict())
    prune(m, p.keep, torch.zeros(1, *SHAPE))
    assert count_macs(m, SHAPE) == p.macs and p.within_tol
    # a uniform profile keeps (nearly) one ratio: widths track the group sizes
    ratios = [p.widths[g] / len(scores[g]) for g in scores]
    assert max(ratios) - min(ratios) < 0.1


def test_profile_proportions_are_followed():
    model, scores = _setup("small_vgg")
    projector = Projector(model, scores, SHAPE)
    groups = list(scores)
    profile = {g: (1.0 if i < 2 else 0.3) for i, g in enumerate(groups)}
    p = projector.project(profile, int(0.3 * projector.full_macs))
    r = {g: p.widths[g] / len(scores[g]) for g in groups}
    assert min(r[g] for g in groups[:2]) > 2 * max(r[g] for g in groups[2:])


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_and_min_channels_are_respected(round_to):
    model, scores = _setup("small_vgg")
    projector = Projector(model, scores, SHAPE, round_to=round_to, min_channels=6)
    for frac in (0.1, 0.3, 0.5):
        target = int(frac * projector.full_macs)
        got = projector.sample(target, 5, seed=round(100 * frac))
        assert len(got) == 5
        for p in got:
            for g, w in p.widths.items():
                size = len(scores[g])
                assert w % round_to == 0 or w == size, (g, w)
                assert w >= 6
            assert abs(p.macs - target) <= 0.01 * target


def test_min_channels_floor_holds_at_a_tight_target():
    model, scores = _setup("tiny_vgg")
    projector = Projector(model, scores, SHAPE, min_channels=4)
    lowest = {g: 0.05 for g in scores}
    lowest[next(iter(scores))] = 1.0
    p = projector.project(lowest, int(0.1 * projector.full_macs))
    assert min(p.widths.values()) >= 4


def test_sample_is_seeded_distinct_and_budget_exact():
    model, scores = _setup("tiny_resnet")
    projector = Projector(model, scores, SHAPE)
    target = int(0.3 * projector.full_macs)
    a = projector.sample(target, 6, seed=7)
    b = projector.sample(target, 6, seed=7)
    assert [p.widths for p in a] == [p.widths for p in b]
    assert len({tuple(p.widths.values()) for p in a}) == len(a) == 6
    assert all(p.within_tol for p in a)
    assert [p.widths for p in projector.sample(target, 6, seed=8)] != [p.widths for p in a]


def test_target_below_the_smallest_network_is_a_usage_error():
    model, scores = _setup("tiny_vgg")
    projector = Projector(model, scores, SHAPE, min_channels=2)
    with pytest.raises(UsageError, match=rf"MACs target 10 is below .*\({projector.min_macs} MACs with min_channels=2"):
        projector.project(uniform_profile(scores), 10)
    with pytest.raises(UsageError, match="MACs target 10 is below"):
        project_profile(model, scores, uniform_profile(scores), 10, SHAPE)


def test_target_above_the_dense_model_keeps_everything():
    model, scores = _setup("tiny_vgg")
    projector = Projector(model, scores, SHAPE)
    p = projector.project(uniform_profile(scores), 2 * projector.full_macs)
    assert p.widths == {g: len(s) for g, s in scores.items()} and p.macs == projector.full_macs


@pytest.mark.parametrize(
    ("kwargs", "profile", "match"),
    [
        ({}, {"nope": 0.5}, "unknown group 'nope'"),
        ({}, {"features.0": 0.0}, r"\(0, 1\]"),
        ({}, {"features.0": 1.5}, r"\(0, 1\]"),
        ({"round_to": 0}, None, "round_to must be >= 1, got 0"),
        ({"min_channels": 0}, None, "min_channels must be >= 1, got 0"),
        ({"tol": 0.0}, None, r"tol must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_values_are_one_line_usage_errors(kwargs, profile, match):
    model, scores = _setup("tiny_vgg")
    with pytest.raises(UsageError, match=match) as e:
        Projector(model, scores, SHAPE, **kwargs).project(profile or {}, int(0.3 * count_macs(model, SHAPE)))
    assert "\n" not in str(e.value)
