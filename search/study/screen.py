"""Screening (``search.screen``): many budget-exact candidates scored cheaply, the best finetuned.

Before the Ray Tune fit, for every target of ``objectives.macs_targets``, ``candidates``
width profiles are drawn at random (seeded by ``experiment.seed``, the target and the
candidate's index, so candidate ``i`` of a target is the same in every session), each in
the space's ratio-key parameterisation (``search.study.space.ratio_keys``, uniform in
``[ratio_min, ratio_max]``; with ``search.tie: slope`` one depth slope, uniform in
``slope_range``) with a criterion drawn from ``search.criteria``. Each is
projected onto its target (:mod:`search.trial.targets`), cut from the base model with its
criterion and scored by the proxy:

``abn``
    BN statistics re-estimated on ``batches`` train batches (EagleEye's adaptive BN,
    ``pruning.recalibrate``), then val accuracy.
``epochs1``
    the trial's own BN recalibration, one finetune epoch at the finetune LR, then val
    accuracy.

Every scored candidate is one row of ``screen.parquet`` (:data:`SCREEN_SCHEMA`), written
atomically after each result, so a resumed search screens only the candidates the file
lacks. The ``keep`` best of each target are enqueued into the Optuna study with the params
a sampled trial has (plus the marker ``screen_candidate``), so they run as full finetune
trials and the sampler learns from them. After the fit, :func:`proxy_correlation` is the
Spearman rank correlation between the proxy score and the finetuned val accuracy of the
candidates that were finetuned; below :data:`TRUST_RHO` the search warns.

The file is :mod:`search.results.screen`, one candidate's scoring :mod:`search.trial.screen`,
the Ray side (tasks spread over the cluster) :mod:`search._ray.screening`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from search.config import ExperimentConfig
from search.results.schema import params_of
from search.results.screen import candidate_key
from search.study.space import profile_space
from search.trial.params import SCREEN_KEY, TARGET_KEY, baseline_defaults

__all__ = ["best_candidates", "candidate_params", "enqueue_best", "requeue_lost", "screen_plan"]

log = logging.getLogger(__name__)


def _recipe(cfg: ExperimentConfig) -> dict[str, Any]:
    """The finetune recipe of an enqueued candidate: a baseline's (first ``steps``, the most
    finetune epochs, the geometric middle LR, no distillation unless it is the only choice),
    so that every finetuned candidate gets the same budget and its accuracy ranks the widths."""
    s, default = cfg.search, baseline_defaults(cfg)
    out: dict[str, Any] = {k: default[k] for k in ("steps", "finetune_epochs", "finetune_lr")}
    if True in s.distill:
        out["distill"] = s.distill[0] if len(s.distill) == 1 else False
        if out["distill"]:
            out["distill_alpha"] = default["distill_alpha"]
            out["distill_temperature"] = default["distill_temperature"]
    return out


def candidate_params(cfg: ExperimentConfig, keys: Mapping[str, tuple[float, float]], target: float,
                     index: int) -> dict[str, Any]:
    """Candidate ``index`` at ``target``: complete prune-mode params of the space (``mode``,
    ``criterion``, ``steps``, ``macs_target``, the ratio keys as a profile, the finetune recipe)
    plus the ``screen_candidate`` marker. Deterministic in (seed, target, index)."""
    s = cfg.search
    rng = np.random.default_rng([int(cfg.experiment.seed) & 0xFFFFFFFF, int(round(float(target) * 1e6)), int(index)])
    criterion = s.criteria[int(rng.integers(len(s.criteria)))]
    params: dict[str, Any] = {"mode": "prune", "criterion": criterion, TARGET_KEY: float(target)}
    params.update({k: float(rng.uniform(lo, hi)) for k, (lo, hi) in keys.items()})  # space.profile_space
    params.update(_recipe(cfg))
    params[SCREEN_KEY] = int(index)
    return params


def screen_plan(cfg: ExperimentConfig, groups: list[str]) -> list[dict[str, Any]]:
    """Every candidate of every target, targets in config order, indices ascending."""
    assert cfg.search.screen is not None and cfg.objectives.macs_targets
    keys = profile_space(cfg, groups)
    n = cfg.search.screen.candidates
    return [candidate_params(cfg, keys, t, i) for t in cfg.objectives.macs_targets for i in range(n)]


def _key(target: float, index: int) -> tuple[float, int]:
    return round(float(target), 9), int(index)


def best_candidates(screen: pd.DataFrame, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The ``keep`` best-scored candidates of each target (ties: lower index first), as params."""
    sc = cfg.search.screen
    assert sc is not None and cfg.objectives.macs_targets
    ok = screen[screen["score"].notna()]
    out = []
    for t in cfg.objectives.macs_targets:
        rows = ok[(ok["target"] - t).abs() < 1e-9].sort_values(["score", "candidate"], ascending=[False, True])
        out += [json.loads(p) for p in rows["params_json"].head(sc.keep)]
    return out


def enqueue_best(study: Any, screen: pd.DataFrame, cfg: ExperimentConfig) -> int:
    """Enqueue the best candidates (:func:`best_candidates`) into the Optuna ``study``; those it
    holds already (a resumed search) are skipped. Returns how many were enqueued now."""
    before = len(study.get_trials(deepcopy=False))
    for params in best_candidates(screen, cfg):
        study.enqueue_trial(params, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def requeue_lost(study: Any, trials: pd.DataFrame) -> int:
    """Enqueue again the screened candidates a killed driver lost; returns how many.

    A candidate the sampler handed to a trial that Ray never saved is left RUNNING in the
    study and marked FAIL at the next session start (the searcher's reconciliation), yet
    it never ran: its only study trials are FAIL and the ledger has no row of it. Called
    right after that reconciliation; a candidate that ran (any ledger status) or is still
    waiting or running stays as it is.
    """
    ran = {candidate_key(p[TARGET_KEY], p[SCREEN_KEY]) for p in map(params_of, trials.to_dict("records"))
           if p.get(SCREEN_KEY) is not None and p.get(TARGET_KEY) is not None}
    live: set[tuple[float, int]] = set()
    failed: dict[tuple[float, int], dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        fixed = t.system_attrs.get("fixed_params") or {}
        if fixed.get(SCREEN_KEY) is None or fixed.get(TARGET_KEY) is None:
            continue
        key = candidate_key(fixed[TARGET_KEY], fixed[SCREEN_KEY])
        if t.state == TrialState.FAIL:
            failed[key] = dict(fixed)
        else:
            live.add(key)
    lost = [p for k, p in failed.items() if k not in live and k not in ran]
    for params in lost:
        study.enqueue_trial(params)
    if lost:
        log.info("screening: %d enqueued candidate(s) lost with a killed driver enqueued again", len(lost))
    return len(lost)
