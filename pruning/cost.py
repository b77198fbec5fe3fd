"""What a model costs: MACs, parameters and measured CPU latency (eager torch or onnxruntime).

MACs are multiply-accumulates of Conv2d and Linear layers for one sample (FLOPs would be
2·MACs; we never say FLOPs). BatchNorm, activations and pooling are not counted: they are
cheap, and counting them would make "MACs" disagree with the usual published numbers.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, get_args

import onnxruntime as ort
import torch
from torch import nn

from pruning.errors import UsageError
from pruning.export import to_onnx


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


#: Where latency is measured: eager PyTorch, or the model exported to ONNX and run by
#: onnxruntime's CPU execution provider (which fuses Conv+BN+ReLU, as a deployment would).
LatencyBackend = Literal["torch", "onnxruntime"]
LATENCY_BACKENDS: tuple[str, ...] = get_args(LatencyBackend)


def check_backend(backend: str) -> None:
    """``UsageError`` unless ``backend`` is one of ``LATENCY_BACKENDS``."""
    if backend not in LATENCY_BACKENDS:
        raise UsageError(f"unknown latency backend {backend!r}; choose one of: {', '.join(LATENCY_BACKENDS)}")


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def session_options(threads: int) -> ort.SessionOptions:
    """onnxruntime settings that match the torch path: ``threads`` intra-op threads, sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def latency_runner(model: nn.Module, x: torch.Tensor, backend: str = "torch", threads: int = 1) -> Callable[[], Any]:
    """A no-argument callable running one inference forward pass of the batch ``x`` on ``backend``.

    ``model`` must be on CPU and in eval mode. For ``torch`` the caller pins the thread
    count (``pinned_threads``); for ``onnxruntime`` the model is exported once here
    (``pruning.export.to_onnx``) and the session gets ``threads`` intra-op threads and
    sequential execution, the same settings as the torch path.
    """
    check_backend(backend)
    if backend == "torch":

        def run_torch() -> Any:
            with torch.inference_mode():
                return model(x)

        return run_torch
    proto = to_onnx(model, tuple(x.shape[1:]))
    session = ort.InferenceSession(proto.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def measure_latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
    backend: str = "torch",
) -> float:
    """Median CPU wall time in milliseconds of one eval-mode forward pass of a batch.

    ``backend`` is ``torch`` (eager) or ``onnxruntime`` (CPU execution provider, same batch
    and thread count). The thread count is pinned for the measurement (and restored after)
    so numbers from different models are comparable.
    """
    check_backend(backend)
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("latency is measured on CPU; move the model to CPU first")
    was_training = model.training
    x = torch.randn(batch_size, *input_shape)
    times = []
    try:
        model.eval()
        with pinned_threads(threads):
            run = latency_runner(model, x, backend, threads)
            for _ in range(warmup):
                run()
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    return float(statistics.median(times))
