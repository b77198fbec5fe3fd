"""This machine's cache of prunetune (no dependencies: Ray workers import it via the config).

``$PRUNETUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/prunetune``, else ``~/.cache/prunetune``.
An experiment whose results live on object storage keeps here what must be a local file:
its Optuna journal (``journals/``) and its base model (``experiments/``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["cache_root", "remote_experiment_cache"]


def cache_root() -> Path:
    """The root of the local cache (see the module docstring)."""
    root = os.environ.get("PRUNETUNE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = os.path.join(xdg, "prunetune")
    return Path(root)


def remote_experiment_cache(uri: str) -> Path:
    """The local directory standing in for the remote experiment ``uri`` (``s3://b/p/NAME``):
    ``experiments/<hash of the URI>/NAME``, so two buckets' experiments of one name differ."""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / "experiments" / key / uri.rstrip("/").rsplit("/", 1)[-1]
