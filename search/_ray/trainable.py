"""The Ray Tune trainable (``run_one``: a few lines around ``run_trial``) and replay of
ledger trials (the early-stopping scheduler is in ``search._ray.schedulers``).

``run_one`` speaks the protocol of :class:`search.trial.result.TrialResult`. Ray workers import
this module to unpickle ``run_one``; it imports neither pandas nor pyarrow (they would
add ~1 s to every worker's start).
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pruning.errors import TrialError
from search.trial import run as trial_mod
from search.config import ExperimentConfig
from search.options import TrialFn
from search.trial.result import EPOCH_KEYS, OBJECTIVE_KEYS, RUNG_KEYS, TRIAL_KEYS, TrialResult, now, plain

logger = logging.getLogger(__name__)

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


#: The per-epoch checkpoint's file (the final checkpoint's is ``model.pt``).
RESUME_FILE = "resume.pt"


def _where() -> dict[str, str]:
    """The ``node`` (Ray node id) and ``hostname`` of this worker, for every result."""
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests calling run_one directly)
        node = None
    return {"node": node or "", "hostname": socket.gethostname()}


def _resume_state(trial_id: str) -> dict[str, Any] | None:
    """The resume state of this trial's last per-epoch checkpoint (Ray restored it after the
    trial's worker or node died), None on a first run or after a final checkpoint."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    try:
        with ckpt.as_directory() as d:
            path = Path(d) / RESUME_FILE
            if not path.is_file():
                return None
            state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - e.g. deleted by Ray after its last snapshot (not repaired on object storage)
        logger.warning("trial %s: its checkpoint cannot be read (%s); starting the trial over", trial_id, exc)
        return None
    logger.info("trial %s: resuming after epoch %s", trial_id, state.get("epoch"))
    return state


class _Reporter:
    """``run_trial``'s reporter and checkpointer inside the trainable.

    Each epoch's result goes to Tune; a resume state handed to :meth:`checkpoint` is saved
    with that epoch's result (:data:`RESUME_FILE`), together with the epoch results reported
    so far (``history``). A resumed run sends that history once, as ``resumed_epochs`` of
    its next result, so a driver restarted since then can still record those epochs.
    """

    def __init__(self, where: dict[str, str], resume: Mapping[str, Any] | None) -> None:
        self.where = where
        self.pending: dict | None = None
        # The model a resumed trial continues (run_trial trains it in place): the final model
        # even when the trial resumed after its last epoch and reports no epoch again.
        self.last_model: Any = getattr((resume or {}).get("point"), "model", None)
        self.history: list[dict[str, Any]] = list((resume or {}).get("history") or [])
        self._unsent = list(self.history)

    def extra(self) -> dict[str, Any]:
        """Keys every result carries: ``node``, ``hostname``; ``resumed_epochs`` once."""
        out: dict[str, Any] = dict(self.where)
        if self._unsent:
            out["resumed_epochs"], self._unsent = self._unsent, []
        return out

    def checkpoint(self, state: dict) -> None:
        self.pending = state

    def __call__(self, row: Mapping[str, Any], model: Any = None) -> None:
        self.last_model = model
        metrics = _with_objectives({**{k: plain(row.get(k)) for k in (*EPOCH_KEYS, *RUNG_KEYS)}, "final": False,
                                    **self.extra()})
        self.history.append({k: metrics.get(k) for k in (*EPOCH_KEYS, "node")})
        state, self.pending = self.pending, None
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="prunetune-resume-") as d:
            # The module itself (pruning changed its shapes) and the epochs reported up to here.
            torch.save({**state, "history": list(self.history)}, Path(d) / RESUME_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


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

    Every ``resources.checkpoint_every`` epochs an epoch's result carries a checkpoint
    (:data:`RESUME_FILE`: ``run_trial``'s resume state); a trial Ray retries after its
    worker or node died starts from the last one (``tune.get_checkpoint``). Every result
    carries the worker's ``node`` and ``hostname``.
    """
    trial_id = tune.get_context().get_trial_id()
    if trial_id in replay:
        tune.report(_with_objectives({**replay[trial_id], "final": True, "replayed": True}))
        return
    torch.set_num_threads(_trial_resources_cpu())
    trial_fn = trial_fn or trial_mod.run_trial
    started_at = now()
    resume = _resume_state(trial_id)
    reporter = _Reporter(_where(), resume)
    try:
        result = dict(trial_fn(cfg, config, reporter, base=base, resume=resume, checkpoint=reporter.checkpoint))
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's error
        kind = "TrialError" if isinstance(exc, TrialError) else type(exc).__name__
        logger.info("trial %s failed: %s: %s", trial_id, kind, exc)
        tune.report(_with_objectives({"final": True, "error": f"{kind}: {exc}"[:2000], "started_at": started_at,
                                      "finished_at": now(), **reporter.extra()}))
        return
    metrics = _with_objectives({**{k: plain(result.get(k)) for k in TRIAL_KEYS}, "final": True,
                                "started_at": started_at, "finished_at": now(), **reporter.extra()})
    _report_final(result, metrics, config, result.get("model", reporter.last_model))


def make_trainable(cfg: ExperimentConfig, base: Any, trial_fn: TrialFn | None,
                   replay: Mapping[str, Any]) -> Any:
    """``run_one`` bound to the config, the base model (object store) and the replay table."""
    fn = tune.with_parameters(run_one, cfg=cfg, base=base, trial_fn=trial_fn, replay=dict(replay))
    return tune.with_resources(fn, {**cfg.resources.custom, "cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})


def trial_dirname(trial: Any) -> str:
    """Trial directories named by trial id (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"

