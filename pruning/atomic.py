"""The one atomic file writer: temp file in the same directory, fsync, ``os.replace``.

A kill at any moment leaves either the previous file or the new one, never a partial
file. The temp name is unique per call (pid + random), so two processes writing the
same path (two trials caching the same base model) do not clobber each other's temp.
Used by the ledger, the exporter, checkpoints and every JSON the search writes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pruning.errors import UsageError

__all__ = ["atomic_write", "check_writable", "write_json"]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], *, suffix: str = "") -> Path:
    """Create or replace the file ``path`` atomically; returns ``path``.

    ``write(tmp)`` writes the content to a temporary path in the same directory, named
    ``.NAME.PID.RANDOM.tmp`` plus ``suffix`` (for writers that check the extension); the
    temp file is fsynced and renamed over ``path``. If ``write`` raises, the temp file is
    removed and ``path`` is untouched. Creates the parent directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named by us rather than mkstemp: mkstemp creates the file 0600, and results on a
    # shared disk should get the user's usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        _fsync(path.parent)
    return path


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomic JSON write (indented, non-JSON values as ``str``)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_writable(path: str | Path, what: str = "output directory") -> None:
    """``UsageError`` unless ``path`` exists as a writable directory or could be created as one.

    Called before any work, so bad input writes nothing.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable (nearest existing: {str(probe)!r})")
