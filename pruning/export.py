"""Write a (pruned) model so that it loads without prunetune.

``model.pt`` is the full module (``torch.load(path, weights_only=False)``; needs the
model's class importable - torchvision's or ours), ``model.pt2`` is a ``torch.export``
program with a dynamic batch dimension (``torch.export.load(path).module()``, needs only
torch; TorchScript is deprecated in torch 2.14), ``model.onnx`` the same program as ONNX
(input ``input``, output ``logits``, dynamic batch axis; runs in onnxruntime without torch),
``widths.json`` the channels per group.
Every file is written to a temporary name and renamed, so a crash leaves no partial file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pruning.atomic import atomic_write, check_writable, write_json

__all__ = ["check_writable", "export_model", "write_json"]


def _atomic_save(obj: Any, path: Path, saver: Any = torch.save) -> None:
    # The temporary name keeps the suffix: torch.export.save warns about a non-.pt2 name.
    atomic_write(path, lambda tmp: saver(obj, tmp), suffix=path.suffix)


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    input_shape: tuple[int, ...],
    widths: Mapping[str, int],
    metrics: Mapping[str, Any] | None = None,
    *,
    exported: bool = True,
) -> dict[str, Path]:
    """Write model.pt, model.pt2 (torch.export, eval mode, CPU), model.onnx, widths.json, metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).cpu().eval()
    paths = {"model": out / "model.pt", "widths": out / "widths.json"}
    _atomic_save(cpu_model, paths["model"])
    if exported:
        paths["exported"] = out / "model.pt2"
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad():
            program = torch.export.export(cpu_model, (torch.zeros(2, *input_shape),), dynamic_shapes=({0: batch},))
        _atomic_save(program, paths["exported"], saver=torch.export.save)
        paths["onnx"] = export_onnx(cpu_model, out / "model.onnx", input_shape)
    write_json(paths["widths"], dict(widths))
    if metrics is not None:
        paths["metrics"] = write_json(out / "metrics.json", dict(metrics))
    return paths


def to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The eval-mode CPU ``model`` as a checked ONNX model with a dynamic batch axis.

    Uses torch.onnx's ``torch.export``-based exporter (``dynamo=True``, needs onnxscript):
    the TorchScript-based one is deprecated in torch 2.14. Input ``input``, output ``logits``.
    """
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (torch.zeros(2, *input_shape),), dynamo=True, dynamic_shapes=({0: batch},),
            input_names=["input"], output_names=["logits"], verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Write ``to_onnx(model)`` to ``path`` atomically (one file: weights inside, no external data)."""
    path = Path(path)
    proto = to_onnx(copy.deepcopy(model).cpu().eval(), input_shape)
    _atomic_save(proto, path, saver=lambda p, f: onnx.save_model(p, f, save_as_external_data=False))
    return path
