"""``Recorder``: the driver-side ``tune.Callback`` that writes the ledger, logs one progress
line per trial and keeps ``progress.json`` current.

It reads the result protocol :class:`search.trial.result.TrialResult`; rows are built by
:func:`search.results.ledger.trial_row` and :func:`search.results.ledger.epoch_row`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from search.results.expdir import write_progress
from search.results.ledger import Ledger, epoch_row, pareto_front, trial_row
from search.config import ExperimentConfig
from search.report.progress import SearchTally
from search.report.table import human_count
from search.trial.result import TrialResult, now
from search.results.storage import Store, as_store

logger = logging.getLogger(__name__)
#: Progress lines ("trial 5/16 <id>: val ... | front: ...") go to this logger; the CLI prints it to stdout.
progress_log = logging.getLogger("search.progress")


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001
        err = None
    if err is None:  # Ray writes error.txt locally and uploads it to object storage only later
        try:
            err = Path(trial.error_file).read_text() if trial.error_file else None
        except OSError:
            err = None
    if err is None:
        return "trial failed (no error recorded by Ray)"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:2000]


def _front_text(front: Any, limit: int = 4) -> str:
    if not len(front):
        return "-"
    rows = front.sort_values("macs").to_dict("records")
    if len(rows) > limit:  # the extremes and evenly spaced points between them
        step = (len(rows) - 1) / (limit - 1)
        rows = [rows[round(i * step)] for i in range(limit)]
    pts = [f"{100 * r['val_acc']:.1f}%@{human_count(r['macs'])}" for r in rows]
    more = f" (+{len(front) - len(pts)})" if len(front) > len(pts) else ""
    return " ".join(pts) + more


def progress_line(row: Mapping[str, Any], done: int, total: int, front: Any) -> str:
    """``trial 5/16 <id>: val 91.20% MACs 1.2M (40% of base) | front: ...`` for a ledger row."""
    if row["status"] == "ERROR":
        what = f"ERROR {row['error']}"
    else:
        kept = f" ({100 * row['macs_ratio']:.0f}% of base)" if row.get("macs_ratio") is not None else ""
        acc = f"{100 * row['val_acc']:.2f}%" if row.get("val_acc") is not None else "-"
        what = f"val {acc} MACs {human_count(row.get('macs'))}{kept}"
        if row["status"] == "STOPPED":
            what += " (stopped early)"
    return f"trial {done}/{total} {row['trial_id']}: {what} | front: {_front_text(front)}"


def _retries(trial: Any) -> int:
    """How often Ray restarted ``trial`` after its worker or node died (0 outside Tune)."""
    try:
        return int(trial.num_failures)
    except Exception:  # noqa: BLE001 - a stand-in trial (tests) or an older Ray
        return 0


def recover_line(trial_id: str, result: Mapping[str, Any], retry: int, max_failures: int, epoch: int | None) -> str:
    """``trial <id>: worker died (node <id> on <host>), retry 1/2 from epoch 4``: our one line
    for a trial Ray restarts (Ray's own multi-line text is shown with ``--verbose`` only)."""
    node = str(result.get("node") or "")[:12] or "?"
    host = f" on {result['hostname']}" if result.get("hostname") else ""
    start = f"from epoch {epoch + 1}" if epoch else "from the start"
    return f"trial {trial_id}: worker died (node {node}{host}), retry {retry}/{max_failures} {start}"


class Recorder(tune.Callback):
    """Ray Tune callback in the driver: ledger rows, progress lines, ``progress.json``.

    Created per session and picklable (Ray stores callbacks in ``tuner.pkl``): the ledger
    is opened in :meth:`setup`, so it also reloads what a killed driver left behind.

    A trial is recorded as soon as its outcome is known - at its final result, or once
    the checkpoint of that result is saved, or when ASHA stops it - which is before Ray
    tells the searcher (Optuna) that it completed: a driver killed in between leaves the
    trial in the ledger, not only in the Optuna journal.
    """

    def __init__(self, exp_dir: Store | Path, cfg: ExperimentConfig, meta: Mapping[str, Any]) -> None:
        self.exp_dir = as_store(exp_dir)
        self.cfg = cfg
        self.meta = dict(meta)
        self._ledger: Ledger | None = None
        # Epoch rows wait here until their trial is recorded, so epochs.parquet never holds
        # rows of a trial that a killed driver lost (it runs again, or is replaced).
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self._awaiting: dict[str, TrialResult] = {}  # final results whose model checkpoint is being saved
        self._recorded: set[str] = set()  # recorded in this session
        self._running: dict[str, str] = {}
        self._tally = SearchTally(cfg.num_samples)
        self._saved_epoch: dict[str, int] = {}  # the epoch of each trial's last resume checkpoint

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_ledger=None, _epochs={}, _awaiting={}, _recorded=set(), _running={}, _saved_epoch={})
        return state

    def setup(self, **info: Any) -> None:
        self._ledger = Ledger(self.exp_dir, self.cfg.experiment.name)
        self._tally = SearchTally(self.cfg.num_samples, held=len(self._ledger.trials()))  # this session's pace
        self._write_progress()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self.setup()
        assert self._ledger is not None
        return self._ledger

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running[trial.trial_id] = now()
        self._write_progress()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: TrialResult, **info: Any) -> None:
        tid = trial.trial_id
        for past in result.get("resumed_epochs") or []:  # epochs before the checkpoint a resumed trial ran from
            self._epochs.setdefault(tid, {}).setdefault(int(past["epoch"]), epoch_row(tid, past, attempt=None))
        if result.get("final"):
            if result.get("replayed"):
                return
            if result.get("should_checkpoint"):  # the model follows: record it with its path
                self._awaiting[tid] = dict(result)  # type: ignore[assignment]
            else:
                self._record_final(trial, result, None)
            return
        if result.get("epoch") is not None:
            row = epoch_row(tid, result, attempt=_retries(trial))
            self._epochs.setdefault(tid, {})[row["epoch"]] = row  # a retried trial reports its lost epochs again
            if result.get("should_checkpoint"):
                self._saved_epoch[tid] = int(result["epoch"])
            if self._tally.due():  # long trials: a tally line at least every minute
                self._log_tally(self.ledger.trials())
        if result.get("done"):  # the scheduler (ASHA) stops the trial after this result
            self._record(trial, result, "STOPPED", None, None)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        result = self._awaiting.pop(trial.trial_id, None)
        if result is not None:
            self._record_final(trial, result, self._checkpoint_uri(checkpoint))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._awaiting.pop(trial.trial_id, None)  # Ray runs it again: its next outcome counts
        self._recorded.discard(trial.trial_id)
        saved = self._saved_epoch.get(trial.trial_id)
        every = self.cfg.resources.checkpoint_every
        last = (trial.last_result or {}).get("epoch")
        if saved is None and every and last and getattr(trial, "checkpoint", None) is not None:
            saved = int(last) - int(last) % every  # saved before this driver started (a resumed search)
        progress_log.info("%s", recover_line(trial.trial_id, trial.last_result or {}, _retries(trial),
                                             self.cfg.resources.max_failures, saved))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self._running.pop(tid, None)
        result = trial.last_result or {}
        pending = self._awaiting.pop(tid, None)
        if pending is not None:  # a final result whose checkpoint never arrived
            self._record_final(trial, pending, None)
        elif tid not in self._recorded and not (result.get("replayed") and tid in self.ledger):
            if result.get("final"):
                self._record_final(trial, result, None)
            else:
                self._record(trial, result, "STOPPED", None, None)
        self._write_progress()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.pop(trial.trial_id, None)
        self._awaiting.pop(trial.trial_id, None)
        self._record(trial, trial.last_result or {}, "ERROR", _error_text(trial), None)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.ledger.flush()
        self._write_progress(finished=True)

    # -- internals
    def _checkpoint_uri(self, checkpoint: Any) -> str | None:
        """Where a checkpoint lives, for the ledger: a local path, or on object storage its
        ``s3://`` URI (Ray names it by the path inside the bucket)."""
        path = getattr(checkpoint, "path", None)
        name = self.exp_dir.name_of(path) if path is not None else None
        return self.exp_dir.uri(name) if name else path

    def _record_final(self, trial: Any, result: Mapping[str, Any], checkpoint: str | None) -> None:
        if result.get("error"):
            self._record(trial, result, "ERROR", str(result["error"]), None)
        else:
            self._record(trial, result, "TERMINATED", None, checkpoint)

    def _record(self, trial: Any, result: Mapping[str, Any], status: str, error: str | None,
                ckpt: str | None) -> None:
        self._recorded.add(trial.trial_id)
        row = trial_row(trial.trial_id, status, trial.config, result, seed=self.cfg.experiment.seed,
                        meta=self.meta, checkpoint=ckpt, error=error, retries=_retries(trial))
        epochs = self._epochs.pop(trial.trial_id, {})
        try:
            self.ledger.add_epochs(list(epochs.values()))
            self.ledger.add_trial(row)
        except ValueError as exc:  # a trial_fn returned something off-schema: keep the trial, as an error
            logger.warning("trial %s: result does not fit the ledger (%s); recorded as ERROR", trial.trial_id, exc)
            bad = {k: row[k] for k in ("trial_id", "params_json", "seed", "git_sha", "prunetune_version",
                                       "started_at", "finished_at")}
            self.ledger.add_trial({**bad, "status": "ERROR", "error": f"invalid result: {exc}"[:2000]})
        self.ledger.flush()
        trials = self.ledger.trials()
        progress_log.info("%s", progress_line(row, len(trials), self.cfg.num_samples, pareto_front(trials)))
        self._log_tally(trials)
        self._write_progress()

    def _log_tally(self, trials: Any) -> None:
        """``search: 5/16 done, 2 running, 0 errored, ETA 3m10s`` to the progress log."""
        running = len(set(self._running) - self._recorded)  # recorded trials may not have ended in Ray yet
        progress_log.info("%s", self._tally.line(len(trials), running, int((trials["status"] == "ERROR").sum())))

    def _write_progress(self, finished: bool = False) -> None:
        state = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated_at": now(),
            "finished": finished,
            "num_samples": self.cfg.num_samples,
            "running": sorted(self._running),
        }
        try:
            write_progress(self.exp_dir, state)
        except OSError as exc:  # progress is informative only
            logger.debug("could not write progress.json: %s", exc)
