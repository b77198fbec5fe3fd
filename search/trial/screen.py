"""One screened candidate (``search.screen``), scored in a worker: cut from the base model onto
its target, then scored by the proxy (``abn``: BN statistics re-estimated on ``batches`` train
batches, EagleEye's adaptive BN; ``epochs1``: one finetune epoch), val accuracy."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pruning.cost import count_macs
from pruning.iterative import PruneSpec, prune_iteratively
from pruning.train import resolve_device
from search.config import ExperimentConfig
from search.trial.base import base_train_config
from search.trial.epochs import group_widths
from search.trial.materialize import experiment_data
from search.trial.params import SCREEN_KEY, TARGET_KEY
from search.trial.targets import trial_ratios

__all__ = ["score_candidate"]


def score_candidate(cfg: ExperimentConfig, base: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Cut ``params`` from a copy of the base model and score it by ``search.screen.proxy``;
    a row of ``screen.parquet`` (:data:`search.results.screen.SCREEN_SCHEMA`). Never raises for a failing candidate (the row carries
    the error, with no score): a failure is a result too, and is not screened again."""
    t0 = time.perf_counter()
    sc = cfg.search.screen
    assert sc is not None
    row: dict[str, Any] = {"candidate": int(params[SCREEN_KEY]), "target": float(params[TARGET_KEY]),
                           "criterion": str(params["criterion"]), "proxy": sc.proxy,
                           "params_json": json.dumps(dict(params), sort_keys=True)}
    try:
        s = cfg.search
        data = experiment_data(cfg)
        device = resolve_device(cfg.train.device)
        model = copy.deepcopy(base.model)
        ratios = trial_ratios(cfg, params, base)
        abn = sc.proxy == "abn"
        spec = PruneSpec(ratios={g: r for g, r in ratios.items() if r < 1.0}, criterion=str(params["criterion"]),
                         steps=1, min_channels=s.min_channels, round_to=s.round_to,
                         calib_batches=cfg.train.calib_batches, calib_batch_size=cfg.train.batch_size,
                         recalib_batches=sc.batches if abn else s.recalib_batches)
        finetune = replace(base_train_config(cfg), epochs=0 if abn else 1, lr=float(params["finetune_lr"]))
        result = prune_iteratively(model, data, spec, finetune, finetune_epochs=finetune.epochs)
        model.cpu()
        macs = count_macs(model, data.input_shape)
        row.update(score=float(result.steps[-1].val_acc), macs=int(macs),
                   macs_ratio=float(macs / base.metrics["macs"]),
                   widths=[int(w) for w in group_widths(model, data.example_input(), base.group_names)])
    except Exception as exc:  # noqa: BLE001 - recorded in the row: one bad candidate must not stop screening
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    row["wall_s"] = float(time.perf_counter() - t0)
    return row
