"""Where results live: the ``results_dir`` locations (:func:`parse_results_dir`) and this
machine's cache of prunetune (no dependencies: Ray workers import it via the config).

``$PRUNETUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/prunetune``, else ``~/.cache/prunetune``.
An experiment whose results live on object storage keeps here what must be a local file:
its Optuna journal (``journals/``) and its base model (``experiments/``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pruning.errors import UsageError

__all__ = ["REMOTE_SCHEMES", "cache_root", "parse_results_dir", "remote_experiment_cache"]

#: URI schemes a results_dir may use besides a plain local path (gcs:// is pyarrow's alias of gs://).
REMOTE_SCHEMES = ("gcs", "gs", "s3")
_SCHEMES = ("file", *REMOTE_SCHEMES)
_SECRET_OPTIONS = ("access_key", "secret_key", "session_token")


def parse_results_dir(value: str | os.PathLike[str]) -> str:
    """``value`` checked as a results location: a local path (returned as given, ``file://``
    stripped) or ``s3://bucket[/prefix]`` / ``gs://bucket[/prefix]`` (returned without a
    trailing ``/``). Raises UsageError naming the valid schemes for anything else."""
    text = os.fspath(value)
    if "://" not in text:
        if not text:
            raise UsageError("results_dir is empty; give a local path or an s3://, gs:// URI")
        return text
    scheme, rest = text.split("://", 1)
    if scheme.lower() not in _SCHEMES:
        valid = ", ".join(f"{s}://" for s in _SCHEMES)
        raise UsageError(f"results_dir {text!r}: unsupported scheme {scheme!r}; use a local path or one of: {valid}")
    if scheme.lower() == "file":
        return rest or "/"
    bucket = rest.split("/", 1)[0].split("?", 1)[0]
    secrets = sorted(k for k in _SECRET_OPTIONS if f"{k}=" in rest.partition("?")[2])
    if secrets:
        # results_dir is saved in config.yaml and pickled into Ray's state: no place for keys.
        raise UsageError(f"results_dir {scheme}://{bucket}/...: remove {', '.join(secrets)} from the URI; "
                         f"give credentials in AWS_* variables or ~/.aws (gs: GOOGLE_APPLICATION_CREDENTIALS)")
    if not bucket:
        raise UsageError(f"results_dir {text!r} names no bucket; write {scheme}://BUCKET/PREFIX")
    return f"{scheme.lower()}://{rest.rstrip('/')}"


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
