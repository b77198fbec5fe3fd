"""Write a (pruned) model so that it loads without prunetune.

``model.pt`` is the full module (``torch.load(path, weights_only=False)``; needs the
model's class importable - torchvision's or ours), ``model.ts`` is TorchScript
(``torch.jit.load(path)``, needs only torch), ``widths.json`` the channels per group.
Every file is written to a temporary name and renamed, so a crash leaves no partial file.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _atomic_save(obj: Any, path: Path, saver: Any = torch.save) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        saver(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    input_shape: tuple[int, ...],
    widths: Mapping[str, int],
    metrics: Mapping[str, Any] | None = None,
    *,
    torchscript: bool = True,
) -> dict[str, Path]:
    """Write model.pt, model.ts (TorchScript, traced in eval mode on CPU), widths.json, metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).cpu().eval()
    paths = {"model": out / "model.pt", "widths": out / "widths.json"}
    _atomic_save(cpu_model, paths["model"])
    if torchscript:
        paths["torchscript"] = out / "model.ts"
        with torch.no_grad():
            traced = torch.jit.trace(cpu_model, torch.zeros(1, *input_shape))
        _atomic_save(traced, paths["torchscript"], saver=lambda m, p: torch.jit.save(m, str(p)))
    write_json(paths["widths"], dict(widths))
    if metrics is not None:
        paths["metrics"] = write_json(out / "metrics.json", dict(metrics))
    return paths
