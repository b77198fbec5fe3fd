"""What a model costs: MACs, parameters and measured CPU latency.

MACs are multiply-accumulates of Conv2d and Linear layers for one sample (FLOPs would be
2·MACs; we never say FLOPs). BatchNorm, activations and pooling are not counted: they are
cheap, and counting them would make "MACs" disagree with the usual published numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on one sample of shape ``input_shape`` (C, H, W)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; BN running statistics excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def measure_latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
) -> float:
    """Median CPU wall time in milliseconds of one eval-mode forward pass of a batch.

    The thread count is pinned for the measurement (and restored after) so numbers from
    different models are comparable.
    """
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model_cpu = model if next(model.parameters()).device.type == "cpu" else None
    if model_cpu is None:
        raise ValueError("latency is measured on CPU; move the model to CPU first")
    x = torch.randn(batch_size, *input_shape)
    times = []
    try:
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return float(statistics.median(times))
