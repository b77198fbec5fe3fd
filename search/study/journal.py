"""The Optuna journal of an experiment, kept in a :class:`~search.results.storage.Store`.

Optuna's ``JournalFileBackend`` needs a POSIX file (appends and a lock file), which an
object store is not. On a local or NFS store the journal is that file, in the experiment
dir, created user-only (0600). On an object store :class:`SyncedJournalBackend` keeps the
journal in a local cache file on the driver and uploads the whole file through
``Store.write_bytes_atomic`` after every append (or at most every ``min_interval_s``
seconds, and on :meth:`~SyncedJournalBackend.flush`). Opening it downloads the current
journal; a cached copy that extends the stored one (this machine's driver was killed before
its last upload) is kept and uploaded, any other cached copy is replaced.

Trade-offs. Each upload sends the whole journal (a few kB per trial), so uploading after
every append costs O(trials²) bytes over a search: fine for hundreds of trials; throttle
with ``min_interval_s`` for thousands, or give Optuna an RDB URL instead. A driver killed
between an append and its upload loses those journal entries. The ledger is the source of
truth: at session start the searcher marks trials the journal holds as RUNNING but Ray does
not know as FAIL and adds every ledger trial the study lacks (``_reconcile`` in the
searcher), so the lost tells come back from the ledger. A restored Ray session also
restores the searcher's own trial objects, which must exist in the journal: call
:meth:`~SyncedJournalBackend.flush` before Ray snapshots the searcher (in its ``save``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from search.results.cachedir import cache_root
from search.results.expdir import JOURNAL_FILE
from search.results.storage import Store, ensure_private_dir

__all__ = ["JOURNAL_FILE", "SyncedJournalBackend", "flush_journal", "journal_cache_dir", "open_journal"]

logger = logging.getLogger(__name__)



def journal_cache_dir() -> Path:
    """Where journals of remote experiments are cached: ``$PRUNETUNE_CACHE_DIR/journals``,
    else ``$XDG_CACHE_HOME/prunetune/journals``, else ``~/.cache/prunetune/journals``."""
    return cache_root() / "journals"


def _touch_private(path: Path) -> None:
    """Create ``path`` empty and user-only if it does not exist (Optuna would create it 0644)."""
    ensure_private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class SyncedJournalBackend(BaseJournalBackend):
    """A journal in a local cache file, mirrored to ``store/name`` with atomic writes.

    The cache path depends only on the stored journal's URI, so a restarted driver (and a
    searcher unpickled by ``Tuner.restore``) finds it again. One driver writes a journal.
    """

    def __init__(self, store: Store, name: str = JOURNAL_FILE, *, cache_dir: str | os.PathLike[str] | None = None,
                 min_interval_s: float = 0.0) -> None:
        self.store = store
        self.name = name
        self.min_interval_s = float(min_interval_s)
        key = hashlib.sha256(store.uri(name).encode()).hexdigest()[:16]
        self.local_path = Path(cache_dir or journal_cache_dir()) / key / Path(name).name
        self._open()

    def _open(self) -> None:
        ensure_private_dir(self.local_path.parent)
        self._dirty = self._sync_down()
        _touch_private(self.local_path)
        self._backend = JournalFileBackend(str(self.local_path))
        self._last_upload = time.monotonic()
        if self._dirty:
            self.flush()

    def _sync_down(self) -> bool:
        """Make the cache match the store; True when the cache is newer and must be uploaded."""
        try:
            remote = self.store.read_bytes(self.name)
        except FileNotFoundError:
            remote = None
        local = self.local_path.read_bytes() if self.local_path.exists() else None
        if remote is None:
            # A new experiment (or one started over with --fresh) at this URI: an old cache is stale.
            self.local_path.unlink(missing_ok=True)
            return False
        if local is not None and len(local) > len(remote) and local.startswith(remote):
            logger.info("journal %s: the local cache has %d bytes not uploaded yet; uploading them",
                        self.store.uri(self.name), len(local) - len(remote))
            return True
        if local != remote:
            self.store.sync_down(self.name, self.local_path)
        return False

    def read_logs(self, log_number_from: int) -> Any:
        return self._backend.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._backend.append_logs(logs)
        self._dirty = True
        if time.monotonic() - self._last_upload >= self.min_interval_s:
            try:
                self.flush()
            except OSError as exc:  # a transient store error must not fail Optuna's ask/tell
                logger.warning("journal %s: upload failed, retried at the next change or flush: %s",
                               self.store.uri(self.name), exc)

    def flush(self) -> None:
        """Upload the journal if it changed since the last upload."""
        if not self._dirty:
            return
        self.store.sync_up(self.local_path, self.name)
        self._dirty = False
        self._last_upload = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "name": self.name, "local_path": self.local_path,
                "min_interval_s": self.min_interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()


def open_journal(store: Store, name: str = JOURNAL_FILE, *, cache_dir: str | os.PathLike[str] | None = None,
                 min_interval_s: float = 0.0) -> JournalStorage:
    """An Optuna ``JournalStorage`` for the journal ``name`` of ``store``.

    Local store: the file itself (created 0600). Object store: a :class:`SyncedJournalBackend`
    (upload pending changes with :func:`flush_journal`).
    """
    path = store.local_path(name)
    if path is not None:
        _touch_private(path)
        return JournalStorage(JournalFileBackend(str(path)))
    return JournalStorage(SyncedJournalBackend(store, name, cache_dir=cache_dir, min_interval_s=min_interval_s))


def flush_journal(storage: Any) -> None:
    """Upload what a synced journal has not uploaded yet; a no-op for any other storage.

    Call it before Ray snapshots the searcher (``Searcher.save``) and when a session ends.
    """
    backend = getattr(storage, "_backend", None)  # JournalStorage keeps its backend there
    if isinstance(backend, SyncedJournalBackend):
        backend.flush()
