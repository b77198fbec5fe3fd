"""The local (POSIX / NFS) side of a store: user-only directories and atomic file replace.

On a local or NFS disk, ``Store.write_bytes_atomic`` (:func:`write_local_atomic`) writes a
temporary file in the same directory, fsyncs it, ``os.replace``-s it over the old file and
fsyncs the directory. The rename is atomic in the file system: at every instant the name points to the old or the new complete
file, for every reader, and the directory entry itself is durable after the fsync.

A temporary file is named ``.NAME.<pid>.<random>.tmp``, so a listing can hide one left by a
killed writer (:func:`is_temp_name`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pruning.errors import UsageError

__all__ = ["ensure_private_dir", "is_temp_name", "write_local_atomic"]


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and any missing parents readable by the user only (0700).

    A directory that already exists keeps its mode: a results tree the user shared on
    purpose (a group-writable NFS dir) stays shared. Returns ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{str(path)!r} exists and is not a directory")
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, 0o700)  # mkdir's mode is masked by the umask, and parents get the default
    return path


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_local_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Temp file in the same dir, fsync, ``os.replace``, fsync the dir; the temp is removed on error."""
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)  # 0o666 & ~umask: the user's usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a path with ``/``) is a temp file of :func:`write_local_atomic`."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".tmp")
