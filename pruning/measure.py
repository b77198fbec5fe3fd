"""One record of how good and how costly a model is: accuracies, MACs, params, latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pruning.cost import count_macs, count_params, measure_latency_ms
from pruning.train import evaluate


@dataclass(frozen=True)
class Measurement:
    val_acc: float  # top-1 in [0, 1]
    test_acc: float
    macs: int  # per sample
    params: int
    latency_ms: float | None  # median CPU ms per batch of `latency_batch` (1 thread); None if not measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    model: nn.Module,
    data: Any,
    *,
    device: str | torch.device = "cpu",
    latency: bool = True,
    latency_batch: int = 64,
    latency_runs: int = 10,
    latency_backend: str = "torch",
) -> Measurement:
    """Evaluate on val and test, count MACs/params, and time CPU latency (on a CPU copy if needed).

    ``latency_backend``: ``torch`` or ``onnxruntime`` (``pruning.cost.LATENCY_BACKENDS``).
    """
    latency_ms = None
    if latency:
        on_cpu = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
        latency_ms = measure_latency_ms(on_cpu, data.input_shape, batch_size=latency_batch, runs=latency_runs,
                                        backend=latency_backend)
    return Measurement(
        val_acc=evaluate(model, data.val, device=device),
        test_acc=evaluate(model, data.test, device=device),
        macs=count_macs(model, data.input_shape),
        params=count_params(model),
        latency_ms=latency_ms,
    )


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu()
