"""The Ray Tune trainable (``run_one``: a few lines around ``run_trial``) and replay of
ledger trials (the early-stopping scheduler is in ``search._ray.schedulers``).

``run_one`` speaks the protocol of :class:`search.result.TrialResult`. Ray workers import
this module to unpickle ``run_one``; it imports neither pandas nor pyarrow (they would
add ~1 s to every worker's start).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from pruning.errors import TrialError
from search import trial as trial_mod
from search.config import ExperimentConfig
from search.result import EPOCH_KEYS, OBJECTIVE_KEYS, RUNG_KEYS, TRIAL_KEYS, TrialResult, plain

logger = logging.getLogger(__name__)

TrialFn = Callable[..., Mapping[str, Any]]  # run_trial(cfg, params, reporter=None, *, base=None)


def now() -> str:
    """The current UTC time, ISO 8601 (``started_at``/``finished_at`` of a result)."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _trial_resources_cpu() -> int:
    try:
        res = tune.get_context().get_trial_resources().required_resources
        return max(1, int(res.get("CPU", 1)))
    except Exception:  # noqa: BLE001 - outside Tune or an old API: one thread
        return 1


def _with_objectives(metrics: dict[str, Any]) -> TrialResult:
    """Every result carries every objective key (Tune checks that the searcher's metrics are
    present), NaN when unknown: ASHA multiplies the value, so None would break it."""
    for key in OBJECTIVE_KEYS:
        if metrics.get(key) is None:
            metrics[key] = float("nan")
    return metrics  # type: ignore[return-value]


def _report_final(result: Mapping[str, Any], metrics: TrialResult, config: dict, model: Any) -> None:
    """The final result, with the pruned model as a checkpoint when there is one."""
    if model is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="prunetune-ckpt-") as d:
        widths = dict(zip(result.get("group_names") or [], result.get("widths") or [], strict=False))
        torch.save({"model": model.cpu(), "widths": {k: int(v) for k, v in widths.items()},
                    "params": config}, Path(d) / "model.pt")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_one(config: dict, *, cfg: ExperimentConfig, base: Any, trial_fn: TrialFn | None,
            replay: Mapping[str, Mapping[str, Any]]) -> None:
    """The Ray Tune trainable: a few lines around ``run_trial``.

    Reports every epoch (for the scheduler and the epochs ledger), then one final result with
    ``final=True`` and the pruned model as a checkpoint (keys: :class:`TrialResult`). A
    trial that raises is reported as a final result with ``error`` (recorded as ERROR, no
    retry: the same params and seed would fail again); only a CUDA out-of-memory error is
    raised to Ray, which retries it (``resources.max_failures``). A trial the ledger
    already holds (it finished after Ray's last snapshot before the driver died) is
    replayed, not re-run.
    """
    trial_id = tune.get_context().get_trial_id()
    if trial_id in replay:
        tune.report(_with_objectives({**replay[trial_id], "final": True, "replayed": True}))
        return
    torch.set_num_threads(_trial_resources_cpu())
    trial_fn = trial_fn or trial_mod.run_trial
    started_at = now()
    last_model: list[Any] = [None]

    def reporter(row: Mapping[str, Any], model: Any = None) -> None:
        last_model[0] = model
        tune.report(_with_objectives({**{k: plain(row.get(k)) for k in (*EPOCH_KEYS, *RUNG_KEYS)}, "final": False}))

    try:
        result = dict(trial_fn(cfg, config, reporter, base=base))
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's error
        kind = "TrialError" if isinstance(exc, TrialError) else type(exc).__name__
        logger.info("trial %s failed: %s: %s", trial_id, kind, exc)
        tune.report(_with_objectives({"final": True, "error": f"{kind}: {exc}"[:2000], "started_at": started_at,
                                      "finished_at": now()}))
        return
    metrics = _with_objectives({**{k: plain(result.get(k)) for k in TRIAL_KEYS}, "final": True,
                                "started_at": started_at, "finished_at": now()})
    _report_final(result, metrics, config, result.get("model", last_model[0]))


def make_trainable(cfg: ExperimentConfig, base: Any, trial_fn: TrialFn | None,
                   replay: Mapping[str, Any]) -> Any:
    """``run_one`` bound to the config, the base model (object store) and the replay table."""
    fn = tune.with_parameters(run_one, cfg=cfg, base=base, trial_fn=trial_fn, replay=dict(replay))
    return tune.with_resources(fn, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})


def trial_dirname(trial: Any) -> str:
    """Trial directories named by trial id (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"

