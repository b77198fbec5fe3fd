"""The trial-result protocol: what a search trial reports to Ray Tune, written down once.

The Ray trainable (:func:`search._ray.trainable.run_one`) calls ``tune.report`` with a
:class:`TrialResult` after every epoch and once at the end. Two readers in the driver act
on its keys: the :class:`~search._ray.recorder.Recorder` (ledger rows, progress lines) and
:class:`~search._ray.searcher.LedgerSearch` (what Optuna is told). Each cites this class;
a new key is documented here first. The ledger turns results into rows with
:func:`search.results.ledger.trial_row` and :func:`search.results.ledger.epoch_row`.

This module imports neither Ray nor pandas: Ray workers import it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = ["EPOCH_KEYS", "OBJECTIVE_KEYS", "RUNG_KEYS", "TRIAL_KEYS", "TrialResult", "plain"]


class TrialResult(TypedDict, total=False):
    """One ``tune.report`` of a search trial. Every key is optional except ``final``.

    Protocol keys (set by ``run_one`` or by Ray):

    - ``final``: False for a per-epoch result, True for the trial's last result (a trial
      reports exactly one final result, unless Ray retries it after a worker died).
    - ``replayed``: on a final result, the trial is already in the ledger (it finished
      after Ray's last snapshot and the driver died); the Recorder does not record it
      again, the searcher tells Optuna only if the journal lacks it.
    - ``error``: on a final result, ``"Kind: message"`` of a trial that raised; recorded
      as status ERROR and told to Optuna as FAIL (no retry: it would fail again).
    - ``should_checkpoint``: set by Ray when the result carries a checkpoint (the final
      model); the Recorder waits for ``on_checkpoint`` to record the trial with its path.
    - ``done``: set by Ray when the scheduler (ASHA) stops the trial after this result;
      the Recorder records it as STOPPED, the searcher tells Optuna PRUNED.
    - ``should_checkpoint`` on a per-epoch result: it carries the trial's resume state
      (``resources.checkpoint_every``); a retried trial continues from the last one.
    - ``node``, ``hostname``: the Ray node id and hostname of the worker that produced the
      result (every result; the ledger's ``node``/``hostname`` columns).
    - ``resumed_epochs``: on the first result of a trial resumed from a checkpoint, the
      per-epoch results (:data:`EPOCH_KEYS` and ``node``) it had reported up to that
      checkpoint; the Recorder adds the ones it lacks (a driver restarted in between).

    Metrics: every result carries every :data:`OBJECTIVE_KEYS` key, NaN when unknown
    (Tune checks that the searcher's metrics are present; ASHA multiplies them). A
    per-epoch result adds :data:`EPOCH_KEYS`; a final one :data:`TRIAL_KEYS` and the
    ISO-8601 UTC ``started_at``/``finished_at``. Units as in ``search.results.ledger``.

    Final-result keys of pruning options (None when they do not apply): ``val_acc_pruned``
    (val accuracy right after the last cut and its BN recalibration, before finetuning;
    prune mode), ``stop_step``/``stop_reason`` (the max-drop guard: last accepted step,
    ``"completed"`` or ``"max_drop"``; prune mode), ``train_macs`` (MACs spent training the
    trial: 3 x the student's per-sample forward MACs x samples per epoch, plus
    ``teacher_macs``, the distillation teacher's forward MACs; every mode).

    Rung keys (per-epoch results only; read by the early-stopping scheduler,
    ``search._ray.schedulers``, not written to the ledger):

    - ``rung_epoch``: the epoch's index, from 1, within the finetune of the trial's
      *final* pruning step; None for epochs that are not comparable across trials (the
      finetune between iterative steps, the adaptive loop's search epochs). An adaptive
      trial's final finetune counts like a prune trial's. The scheduler's ``time_attr``.
    - ``rung_epochs``: the number of epochs of that final finetune (None with
      ``rung_epoch``); the scheduler never stops a trial at its last epoch.
    """

    final: bool
    replayed: bool
    error: str
    should_checkpoint: bool
    done: bool
    epoch: int
    train_loss: float
    val_acc: float
    test_acc: float
    macs: float
    params: float
    latency_ms: float
    macs_ratio: float
    widths: list[int]
    group_names: list[str]
    lr: float
    epochs: int
    wall_s: float
    mode: str
    criterion: str
    base_val_acc: float
    started_at: str
    finished_at: str
    val_acc_pruned: float
    stop_step: int
    stop_reason: str
    train_macs: int
    teacher_macs: int
    rung_epoch: int | None
    rung_epochs: int | None
    node: str
    hostname: str
    resumed_epochs: list[dict[str, Any]]


#: What a final result copies from ``run_trial``'s return value.
TRIAL_KEYS = ("val_acc", "test_acc", "macs", "params", "latency_ms", "macs_ratio", "widths", "group_names",
              "epochs", "wall_s", "mode", "criterion", "base_val_acc",
              "val_acc_pruned", "stop_step", "stop_reason", "train_macs", "teacher_macs")
#: What a per-epoch result copies from ``run_trial``'s reporter rows (the epochs ledger columns).
EPOCH_KEYS = ("epoch", "train_loss", "val_acc", "macs", "widths", "lr", "wall_s")
#: What a per-epoch result copies from the reporter rows for the scheduler (None when not comparable).
RUNG_KEYS = ("rung_epoch", "rung_epochs")
#: Present in every result (NaN when unknown).
OBJECTIVE_KEYS = ("val_acc", "macs", "params", "latency_ms")


def plain(v: Any) -> Any:
    """Make a value safe for a Ray result or JSON (numpy/torch scalars and lists to Python)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    return v


def now() -> str:
    """The current UTC time, ISO 8601 (a result's ``started_at``/``finished_at``, a trial's start)."""
    return dt.datetime.now(dt.timezone.utc).isoformat()
