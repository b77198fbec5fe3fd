"""Atomic whole-file replace on object storage: versioned objects plus a manifest.

:class:`VersionedObjects` is the object-store half of :class:`search.results.storage.Store` (which
mixes it in and keeps the local, POSIX half: temp file, fsync, ``os.replace``).

On S3 and GCS there is no rename: a "rename" is a copy plus a delete. And a
pyarrow reader fetches one object with a HEAD (its size) and then ranged GETs (for Parquet:
footer, then column chunks), so an object overwritten in place can be read torn: truncated
at the old size, or mixing two versions (against moto, 125 of 745 reads of an object that
was being rewritten with alternating sizes came back truncated).
Instead a write

1. PUTs the content as a new, never-reused object ``NAME.v/<time_ns>-<random><ext>``;
2. PUTs a small manifest ``NAME.manifest.json`` naming that object (and the previous one).
   This single-object PUT is the commit point: S3 and GCS make a PUT atomic and
   read-after-write consistent. The manifest is padded to a fixed size so that the HEAD and
   the GET of a reader agree even when it is replaced in between, and a torn manifest is
   never valid JSON, so a reader that gets one reads it again;
3. deletes the versions other than the current and the previous one.

Readers read the manifest first, then the object it names; version objects never change, so
one read is always of one complete version. What this does *not* give, unlike POSIX:

- no directory atomicity and no multi-file transaction (neither does the local store; the
  ledger already orders its writes so that a partial flush is harmless);
- last writer wins on the manifest: there is no compare-and-swap, so two concurrent writers
  can lose each other's update. A single writer per experiment (the driver) is assumed;
- a crash between steps 1 and 2 leaves an orphan version that no manifest names; readers
  still see the previous version, and the next write of that name deletes the orphan;
- the previous version is kept so that a reader that fetched the old manifest just before a
  write can still read its object; a reader slower than two writes re-reads the manifest
  (up to three times) and then fails;
- ``list`` is strongly consistent on S3 (since 2020) and GCS, but it lists *names*: the
  logical file ``NAME`` is listed once, its version objects and manifest are hidden.

An object without a manifest (copied there by hand, or by another tool) is read as is.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from pathlib import PurePosixPath

import pyarrow.fs as pafs

__all__ = ["MANIFEST_SUFFIX", "READ_ATTEMPTS", "VERSIONS_SUFFIX", "VersionedObjects"]

logger = logging.getLogger(__name__)

#: ``NAME`` + this is the manifest of the logical file ``NAME``.
MANIFEST_SUFFIX = ".manifest.json"
#: ``NAME`` + this is the directory of its version objects.
VERSIONS_SUFFIX = ".v"
#: Reads of a manifest (torn) or of a version (collected meanwhile) before giving up.
READ_ATTEMPTS = 3


class VersionedObjects:
    """The manifest protocol, as methods of a store on an object-store filesystem.

    The class it is mixed into provides ``fs`` (a ``pyarrow.fs`` filesystem), ``root``,
    ``is_local``, ``_path(name)`` (the filesystem path of a checked name) and ``uri(name)``
    (for messages). Names given here are already checked (``search.results.storage._check_name``).
    """

    fs: pafs.FileSystem
    root: str
    is_local: bool

    def _path(self, name: str) -> str:  # provided by the store
        raise NotImplementedError

    def uri(self, name: str = "") -> str:  # provided by the store
        raise NotImplementedError

    def _get(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _put(self, path: str, data: bytes) -> None:
        # One write of the complete bytes: pyarrow's S3 stream completes the upload on close,
        # even after an exception, so a partial write must never reach the stream.
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _put_manifest(self, name: str, manifest: dict) -> None:
        """The commit point of a remote write (tests patch it to simulate a crash before it).

        Padded with spaces to a multiple of 1 KiB, so successive manifests of a name have
        the same size: pyarrow reads an object with a HEAD (size) and then ranged GETs, and
        a manifest replaced between the two must not be read truncated.
        """
        text = json.dumps(manifest, sort_keys=True).encode()
        self._put(self._path(name) + MANIFEST_SUFFIX, text.ljust(-(-len(text) // 1024) * 1024))

    def _version_path(self, name: str, obj: str) -> str:
        """The filesystem path of version ``obj`` (as a manifest names it) of ``name``."""
        return f"{self._path(name).rsplit('/', 1)[0]}/{obj}"

    def _manifest(self, name: str) -> dict | None:
        """The manifest of ``name`` or None. A torn read (a manifest replaced while pyarrow
        read it) is not valid JSON, since no prefix of a JSON object is: it is read again."""
        path = self._path(name) + MANIFEST_SUFFIX
        for attempt in range(READ_ATTEMPTS):
            try:
                return json.loads(self._get(path))
            except FileNotFoundError:
                return None
            except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
                logger.debug("store %s: manifest read torn (attempt %d): %s", self.uri(name), attempt, exc)
                time.sleep(0.05 * (attempt + 1))
        raise OSError(f"{self.uri(name)}: cannot read a whole manifest in {READ_ATTEMPTS} attempts")

    def _read_versioned(self, name: str) -> bytes:
        """The current version of ``name`` (a plain object when it has no manifest)."""
        for attempt in range(READ_ATTEMPTS):
            manifest = self._manifest(name)
            if manifest is None:
                try:
                    return self._get(self._path(name))
                except FileNotFoundError:
                    raise FileNotFoundError(f"{self.uri(name)} does not exist") from None
            try:
                data = self._get(self._version_path(name, manifest["object"]))
            except FileNotFoundError:  # collected by a writer two versions ahead: read the new manifest
                logger.debug("store %s: version %s vanished (attempt %d)", self.uri(name), manifest["object"], attempt)
                continue
            if len(data) != manifest["size"]:
                raise OSError(f"{self.uri(name)}: version {manifest['object']} has {len(data)} bytes, "
                              f"the manifest says {manifest['size']}")
            return data
        raise OSError(f"{self.uri(name)}: the current version changed {READ_ATTEMPTS} times during the read")

    def _write_versioned(self, name: str, data: bytes) -> None:
        """Steps 1-3: a new version object, the manifest naming it, then the old versions collected."""
        previous = self._manifest(name)
        base = PurePosixPath(name)
        # Relative to the manifest's directory, so a parent or child Store reads it the same.
        obj = f"{base.name}{VERSIONS_SUFFIX}/{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{base.suffix}"
        self._put(self._version_path(name, obj), bytes(data))
        self._put_manifest(name, {
            "format": 1, "object": obj, "size": len(data),
            "previous": previous["object"] if previous else None,
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        })
        self.delete_old_versions(name)

    def delete_old_versions(self, name: str) -> list[str]:
        """Delete the version objects of ``name`` other than the current and previous one
        (orphans of a crashed write included). Returns the deleted names."""
        if self.is_local:
            return []
        manifest = self._manifest(name)
        keep = {manifest["object"], manifest.get("previous")} if manifest else set()
        selector = pafs.FileSelector(self._path(name + VERSIONS_SUFFIX), allow_not_found=True)
        deleted = []
        keep_paths = {self._version_path(name, k) for k in keep if k}
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path not in keep_paths:
                self.fs.delete_file(info.path)
                deleted.append(info.path[len(self.root.rstrip("/")) + 1:])
        return deleted
