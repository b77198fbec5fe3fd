"""Where an experiment's files live: a local (or NFS) directory or an object-store prefix.

A :class:`Store` is a directory-like root on a ``pyarrow.fs`` filesystem. ``Store.from_uri``
takes what ``experiment.results_dir`` may hold: a local path, ``file://``, ``s3://bucket/prefix``
or ``gs://bucket/prefix`` (:func:`parse_results_dir` lists the schemes). Files are named
relative to the root with ``/`` (``"trials.parquet"``, ``"ray/session-001"``).

Atomic replace, and how it differs between the two kinds of store:

*Local / NFS* (POSIX). A temporary file in the same directory, fsynced, then ``os.replace``-d
over the old file (:mod:`search.results.localfs`).

*Object storage* (S3, GCS). There is no rename, and an object overwritten in place can be
read torn; a write puts a new, never-reused version object and then a small manifest naming
it (the commit point), and readers follow the manifest. That protocol, and what it does not
give compared with POSIX, is :mod:`search.results.objstore`'s.

Endpoint: an S3-compatible server other than AWS (MinIO, moto, Ceph) is named by
``PRUNETUNE_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
(``http://host:port``); credentials and region come from the usual AWS variables or files,
as pyarrow reads them. Query options in the URI (``?endpoint_override=...``) take precedence.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pruning.errors import UsageError
from search.results.cachedir import REMOTE_SCHEMES, parse_results_dir
from search.results.localfs import ensure_private_dir, is_temp_name, write_local_atomic
from search.results.objstore import MANIFEST_SUFFIX, VERSIONS_SUFFIX, VersionedObjects

__all__ = ["REMOTE_SCHEMES", "Store", "as_store", "ensure_private_dir", "parse_results_dir"]

_ENDPOINT_VARS = ("PRUNETUNE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def as_store(where: Store | str | os.PathLike[str]) -> Store:
    """``where`` as a :class:`Store`: a Store as it is, else :meth:`Store.from_uri`."""
    return where if isinstance(where, Store) else Store.from_uri(where)


def _check_name(name: str) -> str:
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"store name {name!r} must be a relative path without '.' or '..'")
    if any(p.endswith((VERSIONS_SUFFIX, MANIFEST_SUFFIX)) for p in parts):
        raise ValueError(f"store name {name!r}: components ending in {VERSIONS_SUFFIX!r} or {MANIFEST_SUFFIX!r} are reserved")
    return "/".join(parts)


def _endpoint_query(uri: str) -> str:
    """``uri`` with ``endpoint_override``/``scheme`` from the environment added, unless it has options."""
    if not uri.startswith("s3://") or "?" in uri:
        return uri
    url = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    if url is None:
        return uri
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return f"{uri}?endpoint_override={parts.netloc}&scheme={parts.scheme}"


class Store(VersionedObjects):
    """A root directory on a pyarrow filesystem, with atomic whole-file replace (locally a
    renamed temp file; on object storage :class:`search.results.objstore.VersionedObjects`).

    Build one with :meth:`from_uri`. A Store is picklable (Ray ships it with the searcher).
    """

    def __init__(self, fs: pafs.FileSystem, root: str, display: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self._display = display.rstrip("/") or "/"
        self.is_local = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def from_uri(cls, uri_or_path: str | os.PathLike[str], *, create: bool = False) -> Store:
        """The store at a local path or ``s3://``/``gs://`` URI (see :func:`parse_results_dir`).

        ``create``: make a local root (user-only, :func:`ensure_private_dir`); object stores
        need no directories, and their bucket must exist.
        """
        text = parse_results_dir(uri_or_path)
        if "://" not in text:
            root = Path(text).expanduser().absolute()
            if create:
                ensure_private_dir(root)
            return cls(pafs.LocalFileSystem(), str(root), str(root))
        try:
            fs, path = pafs.FileSystem.from_uri(_endpoint_query(text))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise UsageError(f"results_dir {text!r}: cannot open it: {str(exc).splitlines()[0]}") from exc
        return cls(fs, path, text.split("?", 1)[0])

    def child(self, name: str) -> Store:
        """The store rooted at ``name`` below this one (the experiment dir below results_dir)."""
        name = _check_name(name)
        return Store(self.fs, self._path(name), f"{self._display}/{name}")

    # -- naming
    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def uri(self, name: str = "") -> str:
        """Where ``name`` lives, for messages and for tools: a local path or ``s3://bucket/...``."""
        return f"{self._display}/{_check_name(name)}" if name else self._display

    def name_of(self, path: str | os.PathLike[str]) -> str | None:
        """The name below the root of a path on this store's filesystem (as Ray reports a
        checkpoint: ``bucket/prefix/...``), or None when it is not below the root."""
        text = os.fspath(path).rstrip("/")
        root = self.root.rstrip("/")
        return text[len(root) + 1:] if text.startswith(root + "/") else None

    def local_path(self, name: str = "") -> Path | None:
        """The local path of ``name`` (or of the root), or None on object storage."""
        if not self.is_local:
            return None
        return Path(self._path(_check_name(name))) if name else Path(self.root)

    def check_reachable(self) -> None:
        """UsageError unless the bucket of an object store exists and can be listed (a local
        store: nothing to check). Called before a search writes anything."""
        if self.is_local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as exc:
            raise UsageError(f"cannot reach {self._display}: {' '.join(str(exc).split())[:300]}") from None
        if info.type != pafs.FileType.Directory:
            scheme = self._display.split("://", 1)[0]
            raise UsageError(f"bucket {bucket!r} of {self._display} does not exist (or is not visible with these "
                             f"credentials); create it first, e.g. `aws s3 mb {scheme}://{bucket}`")

    def ray_storage(self, name: str = "ray") -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray's ``RunConfig`` and ``Tuner.restore``.

        Local: an absolute path and None (Ray's default). Object storage: the path inside
        the bucket (``bucket/prefix/ray``) and this store's filesystem, as Ray asks when a
        custom filesystem is passed.
        """
        path = self._path(_check_name(name))
        return (path, None) if self.is_local else (path, self.fs)

    def _info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    # -- files
    def exists(self, name: str) -> bool:
        """Whether the file ``name`` exists (on object storage: its manifest or a plain object)."""
        path = self._path(_check_name(name))
        if self._info(path).type == pafs.FileType.File:
            return True
        return not self.is_local and self._info(path + MANIFEST_SUFFIX).type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes:
        """The current content of ``name``; FileNotFoundError if absent."""
        name = _check_name(name)
        if self.is_local:
            return Path(self._path(name)).read_bytes()
        return self._read_versioned(name)

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        """Create or replace ``name`` with ``data``: readers see the old or the new content, whole."""
        name = _check_name(name)
        if self.is_local:
            write_local_atomic(Path(self._path(name)), bytes(data))
            return
        self._write_versioned(name, bytes(data))

    def delete_old_versions(self, name: str) -> list[str]:
        """Delete the version objects of ``name`` other than the current and previous one
        (orphans of a crashed write included; none on a local store). Returns the deleted names."""
        return super().delete_old_versions(_check_name(name))

    def delete(self, name: str) -> None:
        """Remove the file or directory ``name`` (with its versions and manifest); absent is fine."""
        name = _check_name(name)
        path = self._path(name)
        for p in (path, path + MANIFEST_SUFFIX, path + VERSIONS_SUFFIX):
            info = self._info(p)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(p)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(p)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted names of the files below ``prefix`` (a directory, ``""`` for the root),
        relative to the root; a versioned file appears once under its own name."""
        base = self._path(_check_name(prefix)) if prefix else self.root
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        start = len(self.root.rstrip("/")) + 1
        names = set()
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[start:]
            parts = rel.split("/")
            if any(p.endswith(VERSIONS_SUFFIX) for p in parts[:-1]) or is_temp_name(rel):
                continue
            names.add(rel.removesuffix(MANIFEST_SUFFIX) if not self.is_local else rel)
        return sorted(names)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Sorted names of the directories directly below ``prefix`` (object stores: the
        common prefixes), relative to ``prefix``; version directories are hidden."""
        base = self._path(_check_name(prefix)) if prefix else self.root
        selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
        names = {info.path.rstrip("/").rsplit("/", 1)[-1] for info in self.fs.get_file_info(selector)
                 if info.type == pafs.FileType.Directory}
        return sorted(n for n in names if not n.endswith(VERSIONS_SUFFIX))

    # -- Parquet
    def read_parquet(self, name: str) -> pa.Table:
        """The Parquet table ``name`` (read whole, from one version)."""
        return pq.read_table(pa.BufferReader(self.read_bytes(name)))

    def write_parquet_atomic(self, name: str, table: pa.Table) -> None:
        """Write ``table`` as Parquet to ``name`` atomically (serialised in memory first)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes_atomic(name, sink.getvalue().to_pybytes())

    # -- a local file mirrored in the store (the Optuna journal)
    def sync_up(self, local_path: str | os.PathLike[str], name: str) -> None:
        """Replace ``name`` with the content of the local file ``local_path`` (atomically)."""
        local = Path(local_path)
        target = self.local_path(name)
        if target is not None and target.resolve() == local.resolve():
            return  # the file already lives in the store
        self.write_bytes_atomic(name, local.read_bytes())

    def sync_down(self, name: str, local_path: str | os.PathLike[str], mode: int = 0o600) -> bool:
        """Copy ``name`` to ``local_path`` atomically, user-only by default.

        Returns False (and leaves ``local_path`` alone) when ``name`` does not exist.
        """
        local = Path(local_path)
        target = self.local_path(name)
        if target is not None and target.resolve() == local.resolve():
            return local.exists()
        try:
            data = self.read_bytes(name)
        except FileNotFoundError:
            return False
        write_local_atomic(local, data, mode)
        os.chmod(local, stat.S_IMODE(mode))  # os.open's mode was masked by the umask
        return True

    # -- write-once artefacts (export, cached base model): plain objects any tool can read
    def upload_dir(self, local_dir: str | os.PathLike[str], name: str) -> list[str]:
        """Copy the files below ``local_dir`` to ``name/...`` as plain objects (no manifest:
        ``torch.load`` or ``aws s3 cp`` read them directly). Each object appears whole, but a
        reader of a file being replaced may see it torn, so use this for files written once.
        Returns the names written."""
        local, name = Path(local_dir), _check_name(name)
        written = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = f"{name}/{path.relative_to(local).as_posix()}"
            if self.is_local:
                write_local_atomic(Path(self._path(_check_name(rel))), path.read_bytes())
            else:
                self._put(self._path(_check_name(rel)), path.read_bytes())
            written.append(rel)
        return written

    def upload_file(self, local_path: str | os.PathLike[str], name: str) -> None:
        """Copy one local file to ``name`` as a plain object (see :meth:`upload_dir`)."""
        data = Path(local_path).read_bytes()
        if self.is_local:
            write_local_atomic(Path(self._path(_check_name(name))), data)
        else:
            self._put(self._path(_check_name(name)), data)

    def download_dir(self, name: str, local_dir: str | os.PathLike[str]) -> list[Path]:
        """Copy the files below ``name`` to ``local_dir`` (current versions); returns the paths."""
        out = []
        for rel in self.list(name):
            dest = Path(local_dir, rel[len(_check_name(name)) + 1:])
            write_local_atomic(dest, self.read_bytes(rel))
            out.append(dest)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and (self._display, self.is_local) == (other._display, other.is_local)

    def __hash__(self) -> int:
        return hash(self._display)

    def __repr__(self) -> str:
        return f"Store({self._display!r})"

    def __str__(self) -> str:
        return self._display
