"""Growth surgery: function preservation, trainability, round trips, optimizer index maps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning.cost import count_macs
from pruning.errors import UsageError
from pruning.models import create_model
from pruning.surgery import GROW_METHODS, GroupGraph, grow, param_index_maps, prune, widths

SHAPE = (1, 16, 16)
MODELS = ("tiny_vgg", "tiny_resnet", "cifar_resnet20")


class FlattenNet(nn.Module):
    """conv-BN-ReLU, conv, pool to 4x4, flatten, Linear: the Linear has 16 columns per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.hidden = nn.Linear(3 * 4 * 4, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c1(x)))
        x = nn.functional.max_pool2d(self.c2(x), 4)
        return self.fc(torch.relu(self.hidden(x.flatten(1))))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = FlattenNet() if name == "flatten" else create_model(name, num_classes=10, in_channels=1)
    # Non-trivial BN statistics and affine parameters, so copying BN is really tested.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _x(n: int = 8) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def _check_sizes(model: nn.Module) -> None:
    """Every layer's size attributes agree with its tensors (a stale attribute breaks export and MACs)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels, name
            assert m.weight.shape[1] * m.groups == m.in_channels, name
        elif isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features), name
        elif isinstance(m, nn.BatchNorm2d):
            assert m.weight.shape[0] == m.running_mean.shape[0] == m.running_var.shape[0] == m.num_features, name


@pytest.mark.parametrize("method", GROW_METHODS)
@pytest.mark.parametrize("name", (*MODELS, "flatten"))
def test_growth_preserves_function(name: str, method: str) -> None:
    model, x = _model(name), _x()
    with torch.no_grad():
        before = model(x)
    w0 = widths(model, x[:1])
    add = {g: 1 + i % 3 for i, g in enumerate(w0)}
    rec = grow(model, add, x[:1], method=method, noise=0.0, seed=3)
    assert rec.after == {g: w0[g] + add[g] for g in w0}
    assert rec.changed == {g: list(range(w0[g], w0[g] + add[g])) for g in w0}
    assert widths(model, x[:1]) == rec.after
    _check_sizes(model)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() < 1e-4
    assert count_macs(model, SHAPE) > 0


def test_split_preserves_function_in_train_mode() -> None:
    """Copies see the same batch statistics as their source, so train-mode BN agrees too."""
    model, x = _model("tiny_resnet"), _x()
    model.train()
    ref = copy.deepcopy(model)
    grow(model, {g: 2 for g in widths(model, x[:1])}, x[:1], method="split")
    model.train()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() < 1e-4


def test_split_shares_are_uneven_and_sum_to_one() -> None:
    model, x = _model("tiny_vgg"), _x()
    w_before = model.features[4].weight.detach().clone()  # consumer of group features.0 (16 channels)
    grow(model, {"features.0": 1}, x[:1], sources={"features.0": [5]})
    w = model.features[4].weight.detach()
    original, copy_ = w[:, 5], w[:, 16]
    assert torch.allclose(original + copy_, w_before[:, 5], atol=1e-6)
    assert not torch.allclose(original, copy_)  # uneven: the two get different gradients
    assert torch.equal(model.features[0].weight[16], model.features[0].weight[5])  # incoming copied, noise=0
    assert torch.equal(model.features[1].running_var[16], model.features[1].running_var[5])


def test_noise_is_small_seeded_and_only_on_copies() -> None:
    x = _x()
    runs = []
    for seed in (0, 0, 1):
        model = _model("tiny_vgg")
        grow(model, {"features.4": 4}, x[:1], noise=0.01, seed=seed)
        runs.append(model)
    w = [m.features[4].weight.detach() for m in runs]
    assert torch.equal(w[0], w[1])
    assert not torch.equal(w[0][32:], w[2][32:])
    assert torch.equal(w[0][:32], _model("tiny_vgg").features[4].weight.detach())
    with torch.no_grad():
        rel = (runs[0](x) - _model("tiny_vgg")(x)).abs().max() / _model("tiny_vgg")(x).abs().max()
    assert 0 < rel.item() < 0.05


@pytest.mark.parametrize("method", GROW_METHODS)
def test_grown_model_trains_and_new_weights_get_gradients(method: str) -> None:
    model, x = _model("tiny_resnet"), _x(32)
    y = torch.arange(32) % 10
    grow(model, {"layer1.0.conv1": 4, "layer2.0.conv2": 4}, x[:1], method=method, seed=0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, grads = [], []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append((
            model.layer1[0].conv1.weight.grad[16:].abs().sum().item(),  # new incoming rows
            model.layer1[0].conv2.weight.grad[:, 16:].abs().sum().item(),  # new outgoing columns
            model.fc.weight.grad[:, 32:].abs().sum().item(),  # residual group's new fc columns
        ))
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert grads[0][1] > 0 and grads[0][2] > 0  # outgoing weights learn from the first step
    if method == "split":
        assert grads[0][0] > 0
    else:
        assert grads[0][0] == 0  # zero outgoing weights block the incoming gradient at first
    assert grads[-1][0] > 0


@pytest.mark.parametrize("name", MODELS)
def test_prune_after_grow_round_trips(name: str) -> None:
    model, x = _model(name), _x()
    with torch.no_grad():
        before = model(x)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    w0 = widths(model, x[:1])
    grow(model, {g: 3 for g in w0}, x[:1], method="zero")
    prune(model, {g: list(range(w0[g])) for g in w0}, x[:1])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    _check_sizes(model)
    with torch.no_grad():  # zero-outgoing channels removed again: exactly the old function
        assert (model(x) - before).abs().max().item() < 1e-5


def test_param_index_maps_for_grow_and_prune() -> None:
    model, x = _model("flatten"), _x()
    graph = GroupGraph(model, x[:1])
    maps = param_index_maps(graph, {"c2": [0, 1, 2, -1]})
    assert maps["c2.weight"] == {0: [0, 1, 2, -1]}
    assert maps["c2.bias"] == {0: [0, 1, 2, -1]}
    assert maps["hidden.weight"] == {1: list(range(48)) + [-1] * 16}  # 16 columns per channel
    assert "hidden.bias" not in maps
    maps = param_index_maps(graph, {"c1": [0, 3]})
    assert maps["c1.weight"] == {0: [0, 3]} and maps["bn.weight"] == {0: [0, 3]}
    assert maps["c2.weight"] == {1: [0, 3]}
    grow(model, {"c2": 1}, x[:1])
    assert tuple(model.hidden.weight.shape) == (12, 64)


def test_growth_respects_concatenation_offsets() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 5, 3, padding=1)
            self.c = nn.Conv2d(8, 4, 1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(self.c(h).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Cat().eval(), _x()
    with torch.no_grad():
        before = model(x)
    grow(model, {"a": 2, "b": 1}, x[:1])
    assert model.c.in_channels == 11
    with torch.no_grad():
        assert (model(x) - before).abs().max().item() < 1e-5


def test_bad_growth_requests() -> None:
    model, x = _model("tiny_vgg"), _x()
    with pytest.raises(UsageError, match="unknown grow method 'net2deeper'; choose one of: split, zero"):
        grow(model, {"features.0": 1}, x[:1], method="net2deeper")
    with pytest.raises(UsageError, match="unknown group 'nope'"):
        grow(model, {"nope": 1}, x[:1])
    with pytest.raises(UsageError, match="integer >= 0"):
        grow(model, {"features.0": -2}, x[:1])
    with pytest.raises(UsageError, match="out of range"):
        grow(model, {"features.0": 1}, x[:1], sources={"features.0": [16]})
    with pytest.raises(UsageError, match="noise"):
        grow(model, {"features.0": 1}, x[:1], noise=-1.0)
    assert widths(model, x[:1]) == {"features.0": 16, "features.4": 32, "features.8": 32}


def test_grouped_conv_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(10))
    x = _x()
    model(x)
    with pytest.raises(UsageError, match="grouped convolution"):
        grow(model, {"0": 2}, x[:1])


@pytest.mark.parametrize("name", ["flatten", *MODELS])
def test_profit_terms_of_a_split_family_equal_the_source(name: str) -> None:
    """P_self and P_next with split families: every member scores what its source scored.

    Without families each half of a split scores about a quarter of its source (both
    terms are squared), and the online loop would prune what it just grew.
    """
    from pruning.criteria import p_next, p_self

    model = _model(name)
    x = _x()
    batches = [(x, torch.arange(len(x)) % 10)]
    groups = GroupGraph(model, x[:1]).groups
    before_next, before_self = p_next(groups), p_self(model, groups, batches)
    sources = {g.name: [g.size - 1, 0, 0] for g in groups}  # two copies of channel 0: a family of three
    grow(model, {g: 3 for g in sources}, x[:1], method="split", sources=sources, noise=0.0, seed=3)
    groups = GroupGraph(model, x[:1]).groups
    family = {g.name: torch.tensor([*range(g.size - 3), *sources[g.name]]) for g in groups}
    after_next, after_self = p_next(groups, family), p_self(model, groups, batches, family)
    for g in groups:
        want = family[g.name]
        torch.testing.assert_close(after_next[g.name], before_next[g.name][want], rtol=1e-5, atol=0)
        torch.testing.assert_close(after_self[g.name], before_self[g.name][want], rtol=1e-3, atol=1e-12)
        naive = p_next(groups)[g.name]  # without families: the members' squares, a quarter or less
        assert (naive[want == 0] < 0.5 * before_next[g.name][0]).all()
