"""The experiment directory: its file names, find / prepare / wipe, Ray sessions, the
saved config, ``base.json`` and the run metadata.

Layout of ``cfg.exp_dir`` (``results/NAME``)::

    config.yaml      the resolved config (``resume`` compares its search hash)
    base.json        the unpruned model's metrics and widths
    trials.parquet   epochs.parquet   pareto.parquet   (search.ledger)
    pareto.png       the accuracy-vs-MACs plot (search.report)
    optuna.journal   the Optuna study (``optuna-dashboard optuna.journal``)
    progress.json    what the running driver is doing (for ``prunetune status``)
    ray/session-NNN  Ray Tune's experiment state and trial checkpoints, one per session
    export/TRIAL     models written by ``prunetune export``
    base-HASH.pt     cached base models (kept by ``--fresh``: the name is their recipe)

Everything ``status`` and ``pareto`` need is here; this module imports neither Ray nor
Optuna (``prunetune status`` must start fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pruning import __version__
from pruning.atomic import atomic_write, write_json
from pruning.errors import UsageError
from pruning.export import check_writable
from search import ledger
from search.report import plot_pareto
from search.config import ExperimentConfig, load_config
from search.samplers import check_available
from search.storage import ensure_private_dir

__all__ = [
    "BASE_FILE", "CONFIG_FILE", "JOURNAL_FILE", "PARETO_PNG", "PROGRESS_FILE", "RAY_DIR",
    "absolute", "base_summary", "experiment_files", "find_experiment", "ledger_counts", "load_saved_config",
    "next_session_name", "prepare_experiment_dir", "read_base", "restorable", "run_meta", "save_config", "sessions",
    "study_name", "wipe", "write_base", "write_pareto_png",
]

CONFIG_FILE = "config.yaml"
BASE_FILE = "base.json"
PROGRESS_FILE = "progress.json"
JOURNAL_FILE = "optuna.journal"
PARETO_PNG = "pareto.png"
RAY_DIR = "ray"
EXPORT_DIR = "export"
_SESSION_PREFIX = "session-"


# --------------------------------------------------------------------------- find, prepare, wipe


def experiment_files(exp_dir: Path) -> list[Path]:
    """The files and dirs a search writes in ``exp_dir`` (``--fresh`` deletes them; cached
    base models ``base-*.pt`` are kept because their name is a hash of their recipe)."""
    names = [CONFIG_FILE, BASE_FILE, PROGRESS_FILE, JOURNAL_FILE, PARETO_PNG, RAY_DIR, EXPORT_DIR,
             ledger.TRIALS_FILE, ledger.EPOCHS_FILE, ledger.PARETO_FILE]
    return [exp_dir / n for n in names]


def find_experiment(name_or_path: str | os.PathLike[str]) -> Path:
    """``results/NAME`` or ``NAME`` (under ./results) -> the experiment directory.

    Raises UsageError when it is not a directory holding a ``config.yaml``.
    """
    p = Path(name_or_path)
    candidates = [p] if p.is_absolute() or len(p.parts) > 1 else [p, Path("results") / p]
    for c in candidates:
        if (c / CONFIG_FILE).is_file():
            return c
    raise UsageError(f"{str(name_or_path)!r} is not an experiment directory (no {CONFIG_FILE}; "
                     f"start one with `prunetune run CONFIG`)")


def prepare_experiment_dir(cfg: ExperimentConfig, fresh: bool) -> Path:
    """Validate that the experiment can start in ``cfg.exp_dir`` (nothing is written here).

    An existing experiment is an error unless ``fresh`` (then its files are removed by
    ``run_search`` just before it starts).
    """
    exp_dir = cfg.exp_dir
    check_available(cfg.sampler.name)  # a sampler whose package is missing fails here, before any file
    check_writable(exp_dir, "results directory")
    if exp_dir.exists() and not exp_dir.is_dir():
        raise UsageError(f"results path {str(exp_dir)!r} exists and is not a directory")
    existing = [f for f in experiment_files(exp_dir) if f.exists()]
    if existing and not fresh:
        raise UsageError(f"{str(exp_dir)!r} already holds an experiment; continue it with "
                         f"`prunetune resume {exp_dir}` or start over with --fresh")
    return exp_dir


def wipe(exp_dir: Path) -> None:
    """Remove what :func:`experiment_files` lists (``--fresh``)."""
    for f in experiment_files(exp_dir):
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()


# --------------------------------------------------------------------------- the saved config


def absolute(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its paths made absolute (trials on other nodes or in other dirs)."""
    exp = cfg.experiment.model_copy(update={"results_dir": str(Path(cfg.experiment.results_dir).resolve())})
    data = cfg.data
    if data.root is not None:
        data = data.model_copy(update={"root": str(Path(data.root).expanduser().resolve())})
    model = cfg.model
    if model.checkpoint is not None:
        model = model.model_copy(update={"checkpoint": str(Path(model.checkpoint).expanduser().resolve())})
    return cfg.model_copy(update={"experiment": exp, "data": data, "model": model})


def save_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    """Write ``config.yaml`` (atomically; creates ``exp_dir`` user-only, 0700, with its missing parents)."""
    ensure_private_dir(exp_dir)
    text = cfg.to_yaml()
    atomic_write(exp_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def load_saved_config(exp_dir: Path) -> ExperimentConfig:
    """The config an experiment was started (or last resumed) with."""
    return load_config(exp_dir / CONFIG_FILE)


def study_name(cfg: ExperimentConfig) -> str:
    """The Optuna study's name in ``optuna.journal``: a changed search space is a new study."""
    return f"{cfg.experiment.name}-{cfg.search_hash()}"


# --------------------------------------------------------------------------- Ray sessions


def sessions(exp_dir: Path) -> list[Path]:
    """The Ray session dirs ``ray/session-NNN``, oldest first."""
    root = exp_dir / RAY_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_SESSION_PREFIX))


def next_session_name(exp_dir: Path) -> str:
    existing = sessions(exp_dir)
    n = int(existing[-1].name.removeprefix(_SESSION_PREFIX)) + 1 if existing else 1
    return f"{_SESSION_PREFIX}{n:03d}"


def restorable(session_dir: Path) -> bool:
    """Whether ``Tuner.restore`` can read ``session_dir`` (Ray wrote its state there)."""
    return (session_dir / "tuner.pkl").is_file() and any(session_dir.glob("experiment_state-*.json"))


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


def write_base(exp_dir: Path, base: Any) -> Path:
    """Write ``base.json`` (:func:`base_summary` of ``base``)."""
    return write_json(exp_dir / BASE_FILE, base_summary(base))


def read_base(exp_dir: Path) -> dict[str, Any] | None:
    """``base.json`` as a dict, None before the base model is ready."""
    p = exp_dir / BASE_FILE
    return json.loads(p.read_text()) if p.is_file() else None


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


def ledger_counts(exp_dir: Path) -> tuple[int, int, int, int]:
    """(trials, errored, stopped, on the front) of the ledger."""
    df = ledger.read_trials(exp_dir)
    front = ledger.pareto_front(df)
    return len(df), int((df["status"] == "ERROR").sum()), int((df["status"] == "STOPPED").sum()), len(front)


def write_pareto_png(exp_dir: Path, cfg: ExperimentConfig) -> Path:
    """Redraw ``pareto.png`` from the ledger."""
    trials = ledger.read_trials(exp_dir)
    front = ledger.pareto_front(trials)
    return plot_pareto(trials, front, exp_dir / PARETO_PNG, base=read_base(exp_dir),
                       title=f"{cfg.experiment.name}: {cfg.model.name} on {cfg.data.name}",
                       macs_budget=cfg.objectives.macs_budget)
