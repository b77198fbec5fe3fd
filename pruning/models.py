"""Model registry: tiny test nets, CIFAR VGG/ResNet, any torchvision CNN, user models.

``create_model(name, num_classes, in_channels)`` builds any of them. Names:

* registered here: ``tiny_vgg``, ``tiny_resnet`` (tests), ``small_vgg`` (the digits demo
  net, ``configs/demo.yaml``), ``cifar_vgg11/16/19`` (with BN), ``cifar_resnet20/56/110``,
  ``cifar_mobilenet`` (MobileNetV1, depthwise-separable);
* ``torchvision.<name>`` or a bare torchvision classification name (``resnet18``,
  ``vgg16_bn``, ``mobilenet_v2``...): built with random weights, first conv adapted to
  ``in_channels`` and the head resized to ``num_classes``;
* ``package.module:function``: a user factory called as ``function(num_classes=...,
  in_channels=...)``.

CIFAR ResNets use **option B** shortcuts (1x1 conv + BN projection when the shape
changes): option A's zero-padding shortcut is not a module and cannot be pruned or grown
by a dependency graph.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pruning.errors import UsageError
from pruning.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _scaled(widths: Sequence[int], width_mult: float) -> list[int]:
    return [max(1, int(round(w * width_mult))) for w in widths]


class VGG(nn.Module):
    """Conv-BN-ReLU stages with max-pooling ("M"), global average pool, linear head."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _vgg_cfg(widths: Sequence[int], pool_after: Sequence[int]) -> list[int | str]:
    cfg: list[int | str] = []
    for i, w in enumerate(widths):
        cfg.append(w)
        if i in pool_after:
            cfg.append("M")
    return cfg


_CIFAR_VGG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _cifar_vgg(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
        cfg = [v if v == "M" else max(1, int(round(int(v) * width_mult))) for v in _CIFAR_VGG[depth]]
        return VGG(cfg, num_classes, in_channels)

    build.__doc__ = f"CIFAR VGG-{depth} with BN (global average pool + one linear layer)."
    return build


for _d in (11, 16, 19):
    MODELS.register(f"cifar_vgg{_d}")(_cifar_vgg(_d))


@MODELS.register("tiny_vgg")
def tiny_vgg(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """3 convs (16, 32, 32) for tests; pools after the first two."""
    return VGG(_vgg_cfg(_scaled([16, 32, 32], width_mult), pool_after=(0, 1)), num_classes, in_channels)


@MODELS.register("small_vgg")
def small_vgg(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """5 convs (32, 32, 64, 64, 128): the digits net of the demo (7.25M MACs at 16x16)."""
    return VGG(_vgg_cfg(_scaled([32, 32, 64, 64, 128], width_mult), pool_after=(1, 3)), num_classes, in_channels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet (6n+2 layers), option-B shortcuts."""

    def __init__(self, blocks_per_stage: int, widths: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = (stages + [nn.Identity()] * 3)[:3]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    n = (depth - 2) // 6

    def build(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
        return CifarResNet(n, _scaled([16, 32, 64], width_mult), num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth} ({n} basic blocks per stage, option-B shortcuts)."
    return build


for _d in (20, 56, 110):
    MODELS.register(f"cifar_resnet{_d}")(_cifar_resnet(_d))


class DepthwiseSeparable(nn.Module):
    """A 3x3 depthwise conv + BN + ReLU, then a 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.pw(self.relu(self.bn1(self.dw(x))))))


#: MobileNetV1's 13 depthwise-separable blocks for 32x32 inputs: (pointwise width, stride).
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


class CifarMobileNet(nn.Module):
    """Howard et al. 2017 MobileNetV1 for 32x32 inputs: a 3x3 stem of 32 channels at stride 1,
    then :data:`_MOBILENET_BLOCKS` (the 1x1 convs hold ~93% of the MACs, the depthwise ones ~6%)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        c = _scaled([32], width_mult)[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        blocks = []
        for w, stride in zip(_scaled([w for w, _ in _MOBILENET_BLOCKS], width_mult), (s for _, s in _MOBILENET_BLOCKS)):
            blocks.append(DepthwiseSeparable(c, w, stride))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


@MODELS.register("cifar_mobilenet")
def cifar_mobilenet(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV1 for 32x32 inputs (:class:`CifarMobileNet`)."""
    return CifarMobileNet(num_classes, in_channels, width_mult)


@MODELS.register("tiny_resnet")
def tiny_resnet(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """Stem + two basic blocks (16 then 32 channels, the second strided with a projection)."""
    return CifarResNet(1, _scaled([16, 32], width_mult), num_classes, in_channels)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        first_name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        _replace(
            model,
            first_name,
            nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                      first.dilation, first.groups, first.bias is not None),
        )
    return model


def _user_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot import user model {spec!r}: {e}") from None
    return fn(num_classes=num_classes, in_channels=in_channels)


def create_model(
    name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, *, seed: int | None = None
) -> nn.Module:
    """Build a model with random weights. ``width_mult`` scales every width (own models only).

    With ``seed`` the initial weights depend on it alone: they are drawn from torch's CPU
    generator seeded inside ``torch.random.fork_rng``, so the caller's global RNG state is
    neither read nor changed. Without it they come from (and advance) the global RNG.
    """
    if seed is None:
        return _build(name, num_classes, in_channels, width_mult)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return _build(name, num_classes, in_channels, width_mult)


def _build(name: str, num_classes: int, in_channels: int, width_mult: float) -> nn.Module:
    if width_mult <= 0:
        raise UsageError(f"width multiplier must be > 0, got {width_mult}")
    if name in MODELS:
        return MODELS[name](num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)
    if width_mult != 1.0:
        raise UsageError(f"width_mult is supported only for {', '.join(MODELS.names())}; got model {name!r}")
    if ":" in name:
        return _user_model(name, num_classes, in_channels)
    tv_name = name.removeprefix("torchvision.")
    if tv_name in _torchvision_names():
        return _torchvision_model(tv_name, num_classes, in_channels)
    raise UsageError(
        MODELS.unknown_message(name, extra=", any torchvision classification model (e.g. resnet18, vgg16_bn,"
                               " mobilenet_v2), or 'package.module:function'")
    )


def model_names() -> list[str]:
    """Every name ``create_model`` accepts, except user factories."""
    return MODELS.names() + _torchvision_names()


def classifier_layer(model: nn.Module) -> nn.Module:
    """The output layer (last Linear, else last Conv2d): never pruned or grown."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if last is None:
        raise UsageError("model has no Linear or Conv2d layer to use as its classifier")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else last
