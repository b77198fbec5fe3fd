"""Screening (``search.screen``): many budget-exact candidates scored cheaply, the best finetuned.

Before the Ray Tune fit, for every target of ``objectives.macs_targets``, ``candidates``
width profiles are drawn at random (seeded by ``experiment.seed``, the target and the
candidate's index, so candidate ``i`` of a target is the same in every session), each in
the space's ratio-key parameterisation (``search.space.ratio_keys``, uniform in
``[ratio_min, ratio_max]``) with a criterion drawn from ``search.criteria``. Each is
projected onto its target (:mod:`search.targets`), cut from the base model with its
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

The Ray side (tasks spread over the cluster) is :mod:`search._ray.screening`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from search.config import ExperimentConfig
from search.expdir import SCREEN_FILE
from search.space import SCREEN_KEY, TARGET_KEY, ratio_keys
from search.storage import Store, as_store

__all__ = ["SCREEN_FILE", "SCREEN_SCHEMA", "TRUST_RHO", "ScreenLog", "best_candidates", "candidate_params",
           "enqueue_best", "log_proxy_correlation", "proxy_correlation", "read_screen", "requeue_lost",
           "score_candidate", "screen_plan"]

log = logging.getLogger(__name__)

#: Below this Spearman correlation between proxy and finetuned accuracy the proxy is not trusted.
TRUST_RHO = 0.3

SCREEN_SCHEMA = pa.schema(
    [
        pa.field("candidate", pa.int32(), nullable=False),  # index within its target, 0..candidates-1
        pa.field("target", pa.float64(), nullable=False),  # macs_target, fraction of the base MACs
        pa.field("criterion", pa.string()),
        pa.field("params_json", pa.string()),  # the candidate's params (profile ratio keys, criterion, target...)
        pa.field("widths", pa.list_(pa.int32())),  # channels per group after the cut, model order
        pa.field("macs", pa.int64()),
        pa.field("macs_ratio", pa.float64()),  # macs / base macs
        pa.field("proxy", pa.string()),  # abn | epochs1
        pa.field("score", pa.float64()),  # the proxy's val accuracy, fraction; null when the candidate failed
        pa.field("wall_s", pa.float64()),  # seconds to cut and score it (in the worker)
        pa.field("error", pa.string()),
    ]
)


# --------------------------------------------------------------------------- candidates


def _recipe(cfg: ExperimentConfig) -> dict[str, Any]:
    """The finetune recipe of an enqueued candidate: a baseline's (first ``steps``, the most
    finetune epochs, the geometric middle LR, no distillation unless it is the only choice),
    so that every finetuned candidate gets the same budget and its accuracy ranks the widths."""
    s = cfg.search
    out: dict[str, Any] = {"steps": s.steps[0], "finetune_epochs": s.finetune_epochs[1],
                           "finetune_lr": math.sqrt(s.finetune_lr[0] * s.finetune_lr[1])}
    if True in s.distill:
        out["distill"] = s.distill[0] if len(s.distill) == 1 else False
        if out["distill"]:
            out["distill_alpha"] = sum(s.distill_alpha) / 2
            out["distill_temperature"] = sum(s.distill_temperature) / 2
    return out


def candidate_params(cfg: ExperimentConfig, keys: Sequence[str], target: float, index: int) -> dict[str, Any]:
    """Candidate ``index`` at ``target``: complete prune-mode params of the space (``mode``,
    ``criterion``, ``steps``, ``macs_target``, the ratio keys as a profile, the finetune recipe)
    plus the ``screen_candidate`` marker. Deterministic in (seed, target, index)."""
    s = cfg.search
    rng = np.random.default_rng([int(cfg.experiment.seed) & 0xFFFFFFFF, int(round(float(target) * 1e6)), int(index)])
    criterion = s.criteria[int(rng.integers(len(s.criteria)))]
    params: dict[str, Any] = {"mode": "prune", "criterion": criterion, TARGET_KEY: float(target)}
    params.update({k: float(rng.uniform(s.ratio_min, s.ratio_max)) for k in keys})
    params.update(_recipe(cfg))
    params[SCREEN_KEY] = int(index)
    return params


def screen_plan(cfg: ExperimentConfig, groups: list[str]) -> list[dict[str, Any]]:
    """Every candidate of every target, targets in config order, indices ascending."""
    assert cfg.search.screen is not None and cfg.objectives.macs_targets
    keys = list(dict.fromkeys(ratio_keys(cfg, groups).values()))
    n = cfg.search.screen.candidates
    return [candidate_params(cfg, keys, t, i) for t in cfg.objectives.macs_targets for i in range(n)]


def _key(target: float, index: int) -> tuple[float, int]:
    return round(float(target), 9), int(index)


# --------------------------------------------------------------------------- one candidate (a worker)


def score_candidate(cfg: ExperimentConfig, base: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Cut ``params`` from a copy of the base model and score it by ``search.screen.proxy``;
    a :data:`SCREEN_SCHEMA` row. Never raises for a failing candidate (the row carries
    the error, with no score): a failure is a result too, and is not screened again."""
    from dataclasses import replace

    from pruning.cost import count_macs
    from pruning.iterative import PruneSpec, prune_iteratively
    from pruning.train import resolve_device
    from search.materialize import experiment_data
    from search.targets import trial_ratios
    from search.trial_base import base_train_config
    from search.trial_epochs import group_widths

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


# --------------------------------------------------------------------------- screen.parquet


def _frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCREEN_SCHEMA} for r in rows], schema=SCREEN_SCHEMA)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def read_screen(exp_dir: Store | str) -> pd.DataFrame:
    """The rows of ``screen.parquet`` (columns of :data:`SCREEN_SCHEMA`; empty when absent)."""
    store = as_store(exp_dir)
    try:
        table = store.read_parquet(SCREEN_FILE)
    except FileNotFoundError:
        return _frame([])
    return _frame(table.to_pylist())


class ScreenLog:
    """``screen.parquet`` held in memory; :meth:`add` appends a row and rewrites the file
    atomically (``Store.write_bytes_atomic``), so a killed driver leaves a valid file and
    loses no finished result. On object storage, where every write is an upload of the
    whole file, it writes at most every ``REMOTE_EVERY_S`` seconds (a kill then loses the
    results of the last seconds, which a resume screens again); call :meth:`flush` at the
    end. Rows are unique by (target, candidate). One writer: the driver."""

    REMOTE_EVERY_S = 2.0

    def __init__(self, exp_dir: Store | str) -> None:
        self.store = as_store(exp_dir)
        self.rows: dict[tuple[float, int], dict[str, Any]] = {}
        self._written = time.monotonic()
        self._dirty = False
        for row in read_screen(self.store).to_dict("records"):
            self.rows[_key(row["target"], row["candidate"])] = {k: (None if _missing(v) else v) for k, v in row.items()}

    def has(self, params: Mapping[str, Any]) -> bool:
        return _key(params[TARGET_KEY], params[SCREEN_KEY]) in self.rows

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows[_key(row["target"], row["candidate"])] = dict(row)
        self._dirty = True
        if self.store.is_local or time.monotonic() - self._written >= self.REMOTE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        from search.ledger import _write_table_atomic

        if not self._dirty:
            return
        self._dirty, self._written = False, time.monotonic()
        ordered = sorted(self.rows.values(), key=lambda r: (float(r["target"]), int(r["candidate"])))
        rows = [{f.name: _plain(r.get(f.name)) for f in SCREEN_SCHEMA} for r in ordered]
        _write_table_atomic(self.store, SCREEN_FILE, pa.Table.from_pylist(rows, schema=SCREEN_SCHEMA))


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def _plain(v: Any) -> Any:
    if _missing(v):
        return None
    if isinstance(v, np.ndarray):
        return [int(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------- after screening


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
    from optuna.trial import TrialState

    from search.ledger import params_of

    ran = {_key(p[TARGET_KEY], p[SCREEN_KEY]) for p in map(params_of, trials.to_dict("records"))
           if p.get(SCREEN_KEY) is not None and p.get(TARGET_KEY) is not None}
    live: set[tuple[float, int]] = set()
    failed: dict[tuple[float, int], dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        fixed = t.system_attrs.get("fixed_params") or {}
        if fixed.get(SCREEN_KEY) is None or fixed.get(TARGET_KEY) is None:
            continue
        key = _key(fixed[TARGET_KEY], fixed[SCREEN_KEY])
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


def proxy_correlation(screen: pd.DataFrame, trials: pd.DataFrame) -> tuple[float | None, int]:
    """(Spearman rank correlation between proxy score and finetuned val accuracy, pairs) over
    the screened candidates that ran as finished (TERMINATED) trials; None below 3 pairs or
    when either side is constant."""
    from search.ledger import params_of

    scores = {_key(r["target"], r["candidate"]): r["score"] for r in screen.to_dict("records")
              if not _missing(r["score"])}
    pairs = []
    for row in trials[trials["status"] == "TERMINATED"].to_dict("records"):
        p = params_of(row)
        if p.get(SCREEN_KEY) is None or p.get(TARGET_KEY) is None or _missing(row.get("val_acc")):
            continue
        key = _key(p[TARGET_KEY], p[SCREEN_KEY])
        if key in scores:
            pairs.append((scores[key], float(row["val_acc"])))
    if len(pairs) < 3:
        return None, len(pairs)
    a = pd.Series([p[0] for p in pairs])
    b = pd.Series([p[1] for p in pairs])
    if a.nunique() < 2 or b.nunique() < 2:
        return None, len(pairs)
    return float(a.rank().corr(b.rank())), len(pairs)


def log_proxy_correlation(cfg: ExperimentConfig, exp_dir: Store | str) -> float | None:
    """Print (``search.progress``) the proxy's rank correlation with the finetuned accuracy, and
    warn when it is below :data:`TRUST_RHO`; returns it (None: fewer than 3 finetuned candidates)."""
    from search.ledger import read_trials

    progress = logging.getLogger("search.progress")
    proxy = cfg.search.screen.proxy if cfg.search.screen else "?"
    rho, n = proxy_correlation(read_screen(exp_dir), read_trials(exp_dir))
    if rho is None:
        progress.info("screening: %d screened candidate(s) finetuned; too few (or too alike) for a rank "
                      "correlation between proxy %s and val_acc", n, proxy)
        return None
    progress.info("screening: Spearman rank correlation between proxy %s and finetuned val_acc: %.2f over %d "
                  "candidates", proxy, rho, n)
    if rho < TRUST_RHO:
        progress.warning("warning: proxy %s ranks the finetuned candidates with Spearman %.2f < %.1f: the proxy is "
                         "not to be trusted on this setting", proxy, rho, TRUST_RHO)
    return rho
