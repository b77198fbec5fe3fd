"""Export a search trial's pruned model (``prunetune export``): from its checkpoint, or by
running the trial again locally. No Ray: the driver's ledger row says everything."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pruning.errors import UsageError
from pruning.export import check_writable, export_model
from search import tuner
from search.config import ExperimentConfig
from search.results import expdir
from search.trial import run as trial_mod
from search.results.ledger import is_missing, params_of
from search.trial.materialize import experiment_data
from search.results.storage import Store, as_store

__all__ = ["export_trial", "load_trial_model"]

logger = logging.getLogger(__name__)

_METRIC_KEYS = ("trial_id", "experiment", "mode", "criterion", "val_acc", "test_acc", "macs", "params", "latency_ms",
                "macs_ratio", "base_val_acc", "epochs", "wall_s", "seed", "git_sha", "prunetune_version")


def load_trial_model(cfg: ExperimentConfig, row: Mapping[str, Any], trial_fn: Any = None) -> Any:
    """The pruned model of a finished trial: from its checkpoint, else by running the
    trial again locally (same params and seed; the base model comes from the cache)."""
    ckpt = row.get("checkpoint")
    if isinstance(ckpt, str) and "://" in ckpt:  # a checkpoint on object storage
        try:
            data = Store.from_uri(ckpt).read_bytes("model.pt")
        except FileNotFoundError:
            data = None
        if data is not None:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)["model"]
    elif isinstance(ckpt, str) and (Path(ckpt) / "model.pt").is_file():
        return torch.load(Path(ckpt) / "model.pt", map_location="cpu", weights_only=False)["model"]
    logger.info("trial %s has no saved model; running it again to export it", row.get("trial_id"))
    fn = trial_fn or trial_mod.run_trial
    last: list[Any] = [None]
    result = fn(cfg, params_of(row), lambda _row, model=None: last.__setitem__(0, model),
                base=_base(cfg))
    model = result.get("model", last[0]) if isinstance(result, Mapping) else last[0]
    if model is None:
        raise UsageError(f"trial {row.get('trial_id')} has no saved model and re-running it gave none")
    return model.cpu()


def _base(cfg: ExperimentConfig) -> Any:
    """The base model from the cache (an experiment on object storage keeps it there)."""
    return tuner.prepare_base(cfg, expdir.experiment_store(cfg))


def _json_safe(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return None if is_missing(v) else v


def export_trial(cfg: ExperimentConfig, exp_dir: Store | Path, row: Mapping[str, Any],
                 out: Path | None) -> dict[str, Path | str]:
    """Write a finished trial's model with ``pruning.export.export_model`` (model.pt, model.pt2,
    widths.json, metrics.json) into ``out``, by default ``export/TRIAL`` of the experiment
    (on object storage: written to a local temp dir, then uploaded as plain objects);
    returns the written paths (or URIs)."""
    exp = as_store(exp_dir)
    name = f"export/{row['trial_id']}"
    if out is None and exp.local_path() is not None:
        out = exp.local_path(name)
    if out is not None:
        check_writable(out)
        return dict(_export(cfg, row, out))
    with tempfile.TemporaryDirectory(prefix="prunetune-export-") as tmp:
        paths = _export(cfg, row, Path(tmp))
        exp.upload_dir(tmp, name)
        return {k: exp.uri(f"{name}/{Path(p).relative_to(tmp).as_posix()}") for k, p in paths.items()}


def _export(cfg: ExperimentConfig, row: Mapping[str, Any], out: Path) -> dict[str, Path]:
    model = load_trial_model(cfg, row)
    names = [str(g) for g in (row.get("group_names") if row.get("group_names") is not None else [])]
    widths = [int(w) for w in (row.get("widths") if row.get("widths") is not None else [])]
    metrics = {k: _json_safe(row.get(k)) for k in _METRIC_KEYS}
    metrics["params_sampled"] = params_of(row)
    metrics["model"] = cfg.model.name
    metrics["data"] = cfg.data.name
    input_shape = tuple(experiment_data(cfg).input_shape)
    return export_model(model, out, input_shape, dict(zip(names, widths, strict=False)), metrics)
