import copy

import pytest
import torch
from torch import nn

from pruning.cost import count_macs, count_params
from pruning.errors import TrialError, UsageError
from pruning.models import MODELS, create_model
from pruning.surgery import GroupGraph, prune, widths
from pruning.train import load_checkpoint, save_checkpoint

SIZE = {"cifar_vgg11": 32, "cifar_vgg16": 32, "cifar_vgg19": 32}


def _randomize_bn(model):
    # Fresh BNs are identities; random statistics make the equivalence tests meaningful.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _silence(group, channels):
    """Zero every consumer column of these group channels: they no longer affect the output."""
    with torch.no_grad():
        for mem in group.consumers:
            for idx, root in zip(mem.idxs, mem.root_idxs):
                if root in channels:
                    mem.module.weight[:, idx] = 0


@pytest.mark.parametrize("name", ["tiny_vgg", "tiny_resnet", "small_vgg", "cifar_resnet20", "cifar_mobilenet"])
def test_removing_channels_with_zero_outgoing_weights_keeps_outputs(name):
    model = create_model(name, 10).eval()
    _randomize_bn(model)
    x = torch.randn(4, 3, 16, 16)
    graph = GroupGraph(model, x[:1])
    keep = {}
    for g in graph.groups:
        drop = set(range(0, g.size, 3))  # a third of every group
        _silence(g, drop)
        keep[g.name] = [i for i in range(g.size) if i not in drop]
    with torch.no_grad():
        before = model(x)
    rec = graph.prune(keep)
    with torch.no_grad():
        after = model(x)
    assert (before - after).abs().max().item() < 1e-5
    assert all(rec.after[n] == len(keep[n]) for n in keep)
    assert widths(model, x[:1]) == rec.after


def _conv_linear_macs_by_hand_tiny_vgg(model, size=16):
    """Independent count for tiny_vgg: spatial sizes known from its design (pool after conv 1 and 2)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    spatial = [size, size // 2, size // 4]
    macs = sum(s * s * c.in_channels * c.out_channels * 9 for s, c in zip(spatial, convs))
    fc = model.classifier
    return macs + fc.in_features * fc.out_features


def test_pruned_macs_equal_independent_count():
    model = create_model("tiny_vgg", 10)
    x = torch.zeros(1, 3, 16, 16)
    dense = count_macs(model, (3, 16, 16))
    assert dense == _conv_linear_macs_by_hand_tiny_vgg(model)
    graph = GroupGraph(model, x)
    prune_plan = {g.name: list(range(g.size // 2 + 1)) for g in graph.groups}
    graph.prune(prune_plan)
    assert [c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d)] == [9, 17, 17]
    assert count_macs(model, (3, 16, 16)) == _conv_linear_macs_by_hand_tiny_vgg(model) < dense
    params_by_hand = sum(p.numel() for p in model.state_dict().values() if p.dtype.is_floating_point) - sum(
        m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    assert count_params(model) == params_by_hand


def test_residual_group_stays_consistent():
    model = create_model("cifar_resnet20", 10).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = GroupGraph(model, x[:1])
    stage2 = graph["layer2.0.conv2"]  # residual group of stage 2: every block's conv2 + the projection
    producers = {m.name for m in stage2.producers}
    assert {"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.downsample.0"} <= producers
    graph.prune({"layer2.0.conv2": list(range(0, 32, 2))})
    for name in ("layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.downsample.0"):
        assert model.get_submodule(name).out_channels == 16
    for name in ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.downsample.0"):
        assert model.get_submodule(name).in_channels == 16
    assert model(x).shape == (2, 10)


def test_group_names_are_stable_and_in_model_order():
    a = GroupGraph(create_model("tiny_resnet", 10), torch.zeros(1, 3, 16, 16)).names()
    b = GroupGraph(create_model("tiny_resnet", 10, width_mult=0.5), torch.zeros(1, 3, 16, 16)).names()
    assert a == b == ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2"]


def test_classifier_output_is_never_a_group():
    model = create_model("tiny_vgg", 10)
    graph = GroupGraph(model, torch.zeros(1, 3, 16, 16))
    assert all(m.module is not model.classifier or m.side == "in" for g in graph.groups for m in g.members)


@pytest.mark.parametrize("name", MODELS.names() + ["resnet18", "vgg16_bn", "mobilenet_v2"])
def test_surgery_works_on_every_model(name):
    size = SIZE.get(name, 32 if name in ("resnet18", "vgg16_bn", "mobilenet_v2") else 16)
    model = create_model(name, 10).eval()
    x = torch.randn(1, 3, size, size)
    dense = count_macs(model, (3, size, size))
    graph = GroupGraph(model, x)
    assert graph.groups
    graph.prune({g.name: list(range(max(1, g.size // 2))) for g in graph.groups})
    assert model(x).shape == (1, 10)
    assert count_macs(model, (3, size, size)) < 0.5 * dense


def test_bad_prune_requests():
    model = create_model("tiny_vgg", 10)
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(UsageError, match="unknown group 'nope'; choose one of: features.0"):
        GroupGraph(model, x).prune({"nope": [0]})
    with pytest.raises(TrialError, match="keep 0"):
        GroupGraph(model, x).prune({"features.0": []})
    graph = GroupGraph(model, x)
    graph.prune({"features.0": [0, 1]})
    with pytest.raises(RuntimeError, match="build a new one"):
        graph.prune({"features.0": [0]})


def test_pruned_model_trains_and_saves(tmp_path):
    model = create_model("tiny_resnet", 10)
    prune(model, {"conv1": [0, 1, 2, 3]}, torch.zeros(1, 3, 16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.conv1.weight, before["conv1.weight"])  # the step changed the pruned weights
    save_checkpoint(tmp_path / "pruned.pt", model, recipe="tiny_resnet")
    loaded = load_checkpoint(tmp_path / "pruned.pt")["model"]
    assert widths(loaded, x[:1]) == widths(model, x[:1]) and loaded.conv1.out_channels == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    clone = copy.deepcopy(loaded)  # deep copies (one per trial) keep the pruned shapes
    assert clone.conv1.weight.shape == (4, 3, 3, 3)
