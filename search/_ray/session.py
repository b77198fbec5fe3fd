"""Ray's environment and ``ray_session``: start a local Ray or join a cluster, and stop it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray._private import worker as ray_worker  # its printer is replaced: the listener looks it up per message

from pruning.errors import UsageError
from search.config import ExperimentConfig

logger = logging.getLogger(__name__)

# Ray Tune knobs (read when a Tuner runs, so setting them before ray.init suffices; the
# workers of a local cluster inherit them): no per-trial CSV/JSON/TensorBoard loggers
# (files nobody reads, and per-result cost), and trials keep the driver's working
# directory so relative paths in a config stay valid.
_RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "60",
    "RAY_DEDUP_LOGS": "1",
}
# Quiet by default: Ray's new output engine prints its experiment banner at any verbosity;
# the legacy reporter honours verbose=0. Our Recorder prints one line per trial instead.
_QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}

# Loggers whose warnings are noise in the quiet default: the token-auth notice of every
# local ray.init (the README's cluster section explains token auth), and the result-file fetch warnings
# caused by disabling Tune's per-trial loggers (the ledger holds the results).
_QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.analysis.experiment_analysis",
                  "ray.tune.result_grid")


def _quiet_raylet_messages() -> Any:
    """Route the error messages Ray's raylet publishes to the driver (a worker died: its worker
    id, lease id, OOM advice, over many lines) to this module's logger instead of stdout,
    where they would land among the progress lines; the Recorder prints one line of its own
    (``on_trial_recover``). Returns the original printer, to restore it."""
    original = ray_worker.print_to_stdstream

    def printer(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            logger.debug("ray (raylet): %s", " ".join(" ".join(data.get("lines") or []).split()))
            return
        original(data, ignore_prefix)

    ray_worker.print_to_stdstream = printer
    return original


def _set_ray_env(verbose: bool) -> None:
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.update(_QUIET_ENV)
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def _join(address: str, verbose: bool, kwargs: dict[str, Any]) -> None:
    if not address.startswith("ray://"):
        kwargs["include_dashboard"] = False
    if not verbose:  # the core worker's C++ retry warnings; the error below says it in one line
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to join (address, token, version) is the user's to fix
        text = " ".join(str(exc).split()) or type(exc).__name__
        hint = ""
        if "auth" in text.lower() or "token" in text.lower():
            hint = " (token auth: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        raise UsageError(f"cannot join the Ray cluster at {address!r}: {text[:300]}{hint}") from None


@contextmanager
def ray_session(cfg: ExperimentConfig, address: str | None, verbose: bool) -> Iterator[Any]:
    """Start (and stop) a local Ray, or connect to ``address``. Reuses an
    already-initialised Ray (tests, notebooks) and leaves it running."""
    _set_ray_env(verbose)
    if ray.is_initialized():
        yield ray
        return
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    printer = None if verbose else _quiet_raylet_messages()
    try:
        if address:
            _join(address, verbose, kwargs)
        else:
            ray.init(num_cpus=cfg.resources.num_cpus, num_gpus=cfg.resources.num_gpus, include_dashboard=False,
                     **kwargs)
        logger.info("ray.init took %.1f s", time.perf_counter() - t0)
        try:
            yield ray
        finally:
            t1 = time.perf_counter()
            ray.shutdown()
            logger.info("ray.shutdown took %.1f s", time.perf_counter() - t1)
    finally:
        if printer is not None:
            ray_worker.print_to_stdstream = printer
