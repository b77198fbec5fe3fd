import pytest
import torch
from torch import nn

from pruning.errors import UsageError
from pruning.models import MODELS, classifier_layer, create_model

# Input size per model family: CIFAR VGGs pool five times and need 32x32.
SIZE = {"cifar_vgg11": 32, "cifar_vgg16": 32, "cifar_vgg19": 32}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_and_runs(name):
    size = SIZE.get(name, 16)
    for in_ch in (1, 3):
        m = create_model(name, num_classes=7, in_channels=in_ch).eval()
        assert m(torch.randn(2, in_ch, size, size)).shape == (2, 7)
        assert classifier_layer(m).out_features == 7


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "torchvision.resnet18"])
def test_torchvision_models_get_resized_head_and_input(name):
    m = create_model(name, num_classes=5, in_channels=1).eval()
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_cifar_resnet_depths_and_option_b_shortcut():
    for depth, blocks in ((20, 3), (56, 9)):
        m = create_model(f"cifar_resnet{depth}", 10)
        convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
        # 6n+1 convs on the main path plus two 1x1 projection shortcuts (option B)
        assert len(convs) == 6 * blocks + 1 + 2
        assert sum(1 for x in convs if x.kernel_size == (1, 1)) == 2


def test_cifar_mobilenet_is_depthwise_separable_and_its_groups_take_the_depthwise_conv():
    from pruning.surgery import GroupGraph

    m = create_model("cifar_mobilenet", 10, in_channels=1, width_mult=0.25)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    depthwise = [x for x in convs if x.groups > 1]
    assert len(convs) == 27 and len(depthwise) == 13 and all(x.groups == x.in_channels == x.out_channels
                                                               for x in depthwise)
    graph = GroupGraph(m, torch.randn(1, 1, 32, 32))
    assert len(graph.groups) == 14  # the stem and the 13 pointwise convs; each depthwise conv follows its input
    graph.prune({g.name: list(range(g.size // 2)) for g in graph.groups})
    assert all(x.groups == x.in_channels == x.out_channels for x in m.modules()
               if isinstance(x, nn.Conv2d) and x.groups > 1)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_width_mult_scales_channels():
    m = create_model("tiny_vgg", 10, width_mult=0.5)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [8, 16, 16]


def test_user_model_by_module_path():
    m = create_model("pruning.models:tiny_resnet", num_classes=3, in_channels=1)
    assert m(torch.randn(1, 1, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("bad", ["vgg99", "nosuch.module:fn", "pruning.models:nosuch"])
def test_unknown_model_is_a_usage_error_listing_names(bad):
    with pytest.raises(UsageError) as e:
        create_model(bad, 10)
    if ":" not in bad:
        assert "tiny_vgg" in str(e.value) and "resnet18" in str(e.value)
    assert "\n" not in str(e.value)


def test_width_mult_must_be_positive():
    with pytest.raises(UsageError, match="width multiplier"):
        create_model("tiny_vgg", 10, width_mult=0)
