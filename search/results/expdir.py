"""The experiment directory: its file names, find / prepare / wipe, Ray sessions, the
saved config, ``base.json`` and the run metadata.

Layout of the experiment (``results/NAME``, or ``s3://bucket/prefix/NAME``; every file is
read and written through its :class:`~search.results.storage.Store`, :func:`experiment_store`)::

    config.yaml      the resolved config (``resume`` compares its search hash)
    base.json        the unpruned model's metrics and widths
    trials.parquet   epochs.parquet   pareto.parquet   (search.results.ledger)
    pareto.png       the accuracy-vs-MACs plot (search.report.table)
    optuna.journal   the Optuna study (``optuna-dashboard optuna.journal``)
    progress.json    what the running driver is doing (for ``prunetune status``)
    ray/session-NNN  Ray Tune's experiment state and trial checkpoints, one per session
    export/TRIAL     models written by ``prunetune export``
    final.parquet    final_epochs.parquet   ``prunetune finalize`` (search.finalize)
    base-HASH.pt     cached base models (kept by ``--fresh``: the name is their recipe)

Everything ``status`` and ``pareto`` need is here; this module imports neither Ray nor
Optuna (``prunetune status`` must start fast).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pruning import __version__
from pruning.errors import UsageError
from pruning.atomic import check_writable
from search.results import ledger
from search.config import ExperimentConfig, config_from_dict, load_config
from search.results.storage import Store, as_store, ensure_private_dir
from search.study.samplers import check_available

__all__ = [
    "BASE_FILE", "CONFIG_FILE", "EXPERIMENT_FILES", "JOURNAL_FILE", "PARETO_PNG", "PROGRESS_FILE", "RAY_DIR",
    "absolute", "base_summary", "experiment_files", "fetch_cached", "find_experiment", "keep_cached", "ledger_counts",
    "load_saved_config", "next_session_name", "open_store", "prepare_experiment_dir", "read_base", "read_progress",
    "restorable", "results_dir_of", "run_meta", "save_config", "sessions", "shown", "experiment_store", "study_name", "wipe",
    "write_base", "write_progress",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
BASE_FILE = "base.json"
PROGRESS_FILE = "progress.json"
JOURNAL_FILE = "optuna.journal"
PARETO_PNG = "pareto.png"
RAY_DIR = "ray"
EXPORT_DIR = "export"
FINAL_FILE = "final.parquet"  # prunetune finalize (search.finalize)
FINAL_EPOCHS_FILE = "final_epochs.parquet"
SCREEN_FILE = "screen.parquet"  # search.screen (screening of many candidates before the trials)
_SESSION_PREFIX = "session-"


# --------------------------------------------------------------------------- where it lives


def experiment_store(cfg: ExperimentConfig) -> Store:
    """The experiment's :class:`~search.results.storage.Store`: ``<results_dir>/<name>`` on a local
    (or NFS) disk or an object store (``s3://``, ``gs://``). Every experiment file goes
    through it; ``cfg.exp_dir`` is the local directory (or, for object storage, the local
    cache of what must be a file)."""
    return Store.from_uri(cfg.experiment.results_dir).child(cfg.experiment.name)


def open_store(exp: Store | str | os.PathLike[str]) -> Store:
    """``exp`` as a Store: a Store, a local path or an ``s3://``/``gs://`` URI."""
    return as_store(exp)


def shown(exp: Store | str | os.PathLike[str]) -> str:
    """How to name the experiment to the user: its URI, or its local path relative to the
    working directory when it lies below it."""
    exp = open_store(exp)
    local = exp.local_path()
    if local is None:
        return exp.uri()
    rel = os.path.relpath(local)
    return str(local) if rel.startswith("..") else rel


# --------------------------------------------------------------------------- find, prepare, wipe

#: The files and dirs a search writes in the experiment (``--fresh`` deletes them; cached
#: base models ``base-*.pt`` are kept because their name is a hash of their recipe).
EXPERIMENT_FILES = (CONFIG_FILE, BASE_FILE, PROGRESS_FILE, JOURNAL_FILE, PARETO_PNG, RAY_DIR, EXPORT_DIR,
                    ledger.TRIALS_FILE, ledger.EPOCHS_FILE, ledger.PARETO_FILE, FINAL_FILE, FINAL_EPOCHS_FILE,
                    SCREEN_FILE)


def experiment_files(exp: Store | str | os.PathLike[str]) -> list[str]:
    """The names of :data:`EXPERIMENT_FILES` that exist in ``exp``."""
    exp = open_store(exp)
    top = {n.split("/", 1)[0] for n in exp.list()}
    return [n for n in EXPERIMENT_FILES if n in top]


def find_experiment(name_or_path: Store | str | os.PathLike[str]) -> Store:
    """``results/NAME``, ``NAME`` (under ./results) or ``s3://bucket/prefix/NAME`` (or its
    Store) -> its Store. Raises UsageError when it holds no ``config.yaml``.
    """
    if isinstance(name_or_path, Store):
        if _reachable(name_or_path, CONFIG_FILE):
            return name_or_path
        name_or_path = name_or_path.uri()
    text = os.fspath(name_or_path)
    if "://" in text:
        exp = Store.from_uri(text)
        if _reachable(exp, CONFIG_FILE):
            return exp
    else:
        p = Path(text)
        candidates = [p] if p.is_absolute() or len(p.parts) > 1 else [p, Path("results") / p]
        for c in candidates:
            if (c / CONFIG_FILE).is_file():
                return Store.from_uri(c)
    raise UsageError(f"{text!r} is not an experiment directory (no {CONFIG_FILE}; "
                     f"start one with `prunetune run CONFIG`)")


def _reachable(exp: Store, name: str) -> bool:
    """Whether ``name`` exists; an unreachable store (no bucket, no credentials) is a UsageError."""
    try:
        return exp.exists(name)
    except OSError as exc:
        raise UsageError(f"cannot read {exp.uri()}: {' '.join(str(exc).split())[:300]}") from None


def prepare_experiment_dir(cfg: ExperimentConfig, fresh: bool) -> Store:
    """Validate that the experiment can start in :func:`experiment_store` (nothing is written here).

    An existing experiment is an error unless ``fresh`` (then its files are removed by
    ``run_search`` just before it starts).
    """
    exp = experiment_store(cfg)
    check_available(cfg.sampler.name)  # a sampler whose package is missing fails here, before any file
    local = exp.local_path()
    if local is not None:
        check_writable(local, "results directory")
        if local.exists() and not local.is_dir():
            raise UsageError(f"results path {str(local)!r} exists and is not a directory")
    else:
        exp.check_reachable()
    if experiment_files(exp) and not fresh:
        raise UsageError(f"{shown(exp)!r} already holds an experiment; continue it with "
                         f"`prunetune resume {shown(exp)}` or start over with --fresh")
    return exp


def wipe(exp: Store | str | os.PathLike[str]) -> None:
    """Remove what :data:`EXPERIMENT_FILES` names (``--fresh``)."""
    exp = open_store(exp)
    for name in EXPERIMENT_FILES:
        exp.delete(name)


# --------------------------------------------------------------------------- the saved config


def absolute(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its paths made absolute (trials on other nodes or in other dirs); an
    object-store ``results_dir`` is kept as it is."""
    results_dir = cfg.experiment.results_dir
    if "://" not in results_dir:
        results_dir = str(Path(results_dir).resolve())
    exp = cfg.experiment.model_copy(update={"results_dir": results_dir})
    data = cfg.data
    if data.root is not None:
        data = data.model_copy(update={"root": str(Path(data.root).expanduser().resolve())})
    model = cfg.model
    if model.checkpoint is not None:
        model = model.model_copy(update={"checkpoint": str(Path(model.checkpoint).expanduser().resolve())})
    return cfg.model_copy(update={"experiment": exp, "data": data, "model": model})


def results_dir_of(exp: Store | str | os.PathLike[str]) -> str:
    """The ``results_dir`` that holds the experiment ``exp`` (its parent path or URI)."""
    exp = open_store(exp)
    local = exp.local_path()
    return str(local.resolve().parent) if local is not None else exp.uri().rsplit("/", 1)[0]


def save_config(cfg: ExperimentConfig, exp: Store | str | os.PathLike[str]) -> None:
    """Write ``config.yaml`` (atomically; creates a local experiment dir user-only, 0700)."""
    exp = open_store(exp)
    local = exp.local_path()
    if local is not None:
        ensure_private_dir(local)
    exp.write_bytes_atomic(CONFIG_FILE, cfg.to_yaml().encode())


def load_saved_config(exp: Store | str | os.PathLike[str]) -> ExperimentConfig:
    """The config an experiment was started (or last resumed) with (its registry names are
    not looked up again: that would import torch into ``status`` and ``pareto``)."""
    exp = open_store(exp)
    local = exp.local_path(CONFIG_FILE)
    if local is not None:
        return load_config(local, saved=True)
    try:
        raw = yaml.safe_load(exp.read_bytes(CONFIG_FILE)) or {}
    except FileNotFoundError:
        raise UsageError(f"{exp.uri(CONFIG_FILE)} does not exist") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{exp.uri(CONFIG_FILE)} is not valid YAML: {str(e).splitlines()[0]}") from None
    return config_from_dict(raw, saved=True)


def study_name(cfg: ExperimentConfig) -> str:
    """The Optuna study's name in ``optuna.journal``: a changed search space is a new study."""
    return f"{cfg.experiment.name}-{cfg.search_hash()}"


# --------------------------------------------------------------------------- Ray sessions


def sessions(exp: Store | str | os.PathLike[str]) -> list[str]:
    """The names of the Ray sessions ``ray/session-NNN``, oldest first."""
    return [d for d in open_store(exp).list_dirs(RAY_DIR) if d.startswith(_SESSION_PREFIX)]


def next_session_name(exp: Store | str | os.PathLike[str]) -> str:
    existing = sessions(exp)
    n = int(existing[-1].removeprefix(_SESSION_PREFIX)) + 1 if existing else 1
    return f"{_SESSION_PREFIX}{n:03d}"


def restorable(exp: Store | str | os.PathLike[str], session: str) -> bool:
    """Whether ``Tuner.restore`` can read the session ``session`` (Ray wrote its state there)."""
    exp = open_store(exp)
    names = exp.list(f"{RAY_DIR}/{session}")
    prefix = f"{RAY_DIR}/{session}/"
    return f"{prefix}tuner.pkl" in names and any(
        n.startswith(f"{prefix}experiment_state-") and n.endswith(".json") and "/" not in n[len(prefix):]
        for n in names)


# --------------------------------------------------------------------------- base model and metadata


def base_summary(base: Any) -> dict[str, Any]:
    """The base model's metrics as the plain dict ``report`` expects (val_acc, test_acc,
    macs, params, latency_ms, widths, group_names, checkpoint)."""
    metrics = dict(getattr(base, "metrics", {}) or {})
    out = {k: metrics.get(k) for k in ("val_acc", "test_acc", "macs", "params", "latency_ms")}
    widths = getattr(base, "widths", None)
    if isinstance(widths, Mapping):
        widths = list(widths.values())
    out["widths"] = [int(w) for w in widths] if widths is not None else None
    out["group_names"] = list(getattr(base, "group_names", []) or [])
    ckpt = getattr(base, "checkpoint", None)
    out["checkpoint"] = str(ckpt) if ckpt is not None else None
    return out


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()


def _read_json(exp: Store, name: str) -> Any:
    try:
        return json.loads(exp.read_bytes(name))
    except FileNotFoundError:
        return None


def write_base(exp: Store | str | os.PathLike[str], base: Any) -> None:
    """Write ``base.json`` (:func:`base_summary` of ``base``)."""
    open_store(exp).write_bytes_atomic(BASE_FILE, _json_bytes(base_summary(base)))


def read_base(exp: Store | str | os.PathLike[str]) -> dict[str, Any] | None:
    """``base.json`` as a dict, None before the base model is ready."""
    return _read_json(open_store(exp), BASE_FILE)


def write_progress(exp: Store | str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``progress.json`` (what the running driver is doing)."""
    open_store(exp).write_bytes_atomic(PROGRESS_FILE, _json_bytes(dict(state)))


def read_progress(exp: Store | str | os.PathLike[str]) -> dict[str, Any] | None:
    """``progress.json`` as a dict, None when absent."""
    return _read_json(open_store(exp), PROGRESS_FILE)


def fetch_cached(exp: Store | str | os.PathLike[str], local: Path) -> None:
    """Copy the file ``local.name`` of a remote experiment (a cached base model) to the
    local cache path ``local`` unless it is there already; a no-op on a local store."""
    exp = open_store(exp)
    if exp.local_path() is None and not local.is_file() and exp.sync_down(local.name, local):
        logger.info("fetched %s to %s", exp.uri(local.name), local)


def keep_cached(exp: Store | str | os.PathLike[str], local: Path) -> None:
    """Upload the local file ``local`` (a base model cached by this driver) to a remote
    experiment as a plain object, unless it is there already; a no-op on a local store."""
    exp = open_store(exp)
    if exp.local_path() is None and local.is_file() and not exp.exists(local.name):
        exp.upload_file(local, local.name)  # a plain object: torch.load reads it from the bucket as is
        logger.info("uploaded %s to %s", local, exp.uri(local.name))


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_meta() -> dict[str, Any]:
    """What every trial row records about the code: ``git_sha`` and ``prunetune_version``."""
    return {"git_sha": _git_sha(), "prunetune_version": str(__version__)}


# --------------------------------------------------------------------------- ledger views


def ledger_counts(exp: Store | str | os.PathLike[str]) -> tuple[int, int, int, int]:
    """(trials, errored, stopped, on the front) of the ledger."""
    df = ledger.read_trials(exp)
    front = ledger.pareto_front(df)
    return len(df), int((df["status"] == "ERROR").sum()), int((df["status"] == "STOPPED").sum()), len(front)
