"""Retention of call records: old records go, and the oldest go while the records take too much
disk (``server.records.retention_days`` and ``max_size_mb``; docs/records.md, "Retention").

A pass (:meth:`RecordRetention.run_once`, blocking: the task runs it in a thread) first deletes
the records that started more than ``retention_days`` ago, then, while the database's used
pages plus the files under ``<data_dir>/recordings/`` exceed ``max_size_mb``, the oldest
records. Each record goes with its events and its recording file (a file already gone is
fine; a path outside ``<data_dir>/recordings/`` is never touched). Each deletion is its own
short transaction and a pass deletes at most ``batch`` records, so the writer of live calls is
never held up for long; a pass that hit the limit is followed by the next one after
``backlog_interval`` instead of ``interval``, until the backlog is gone.

The database's size is its used pages (``page_count - freelist_count``): SQLite keeps the
pages of deleted rows in the file and reuses them for new ones, so the file itself does not
shrink after a delete and counting it would delete every record once the file reached the
cap. The recordings' size is what a walk of the directory finds, files of no record included
(they are not deleted here, but they count).

Counted in ``sipserver_records_retention_deleted_total{reason=age|size}``; a pass that fails
(the disk, the database) is logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from sipserver.config import Config
from sipserver.observability import get_logger
from sipserver.pipeline.call_record import CallRecord
from sipserver.records.api import RECORDINGS_DIR, recording_file
from sipserver.records.store import RecordStore
from sipserver.tasks import cancel_and_wait

__all__ = ["RecordRetention", "RetentionPass", "database_used_bytes", "directory_bytes"]

log = get_logger(__name__)

DAY: Final = 86_400.0
MB: Final = 1024 * 1024
INTERVAL: Final = 60.0
"""Seconds between two passes."""
BACKLOG_INTERVAL: Final = 1.0
"""Seconds before the next pass when the last one hit its batch limit."""
BATCH: Final = 500
"""Most records one pass deletes."""
_CHUNK: Final = 50
"""Records read (and sizes re-measured) at a time."""


@dataclass(frozen=True, slots=True)
class RetentionPass:
    """What one pass did."""

    expired: int
    """Records deleted for their age."""
    oversize: int
    """Records deleted for the size cap."""
    files_deleted: int
    """Recording files deleted."""
    files_missing: int
    """Records whose recording file was already gone (or outside the recordings directory)."""
    bytes_before: int
    """Database used bytes + recordings, before the pass."""
    bytes_after: int
    more: bool
    """The batch limit stopped the pass: more is due."""
    ids: tuple[str, ...] = ()
    """The records deleted (their webhook deliveries go too: ``on_deleted``)."""


def database_used_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the SQLite database's pages in use (the free pages of deleted rows left out);
    0 when there is no database. Blocking."""
    if not Path(path).exists():
        return 0
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    try:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()
    return max(0, pages - free) * size


def directory_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed); 0 when it does not
    exist. Blocking."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # missing, or removed meanwhile
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


class RecordRetention:
    """The periodic retention task (module doc).

    Args:
        store: The record store, or None while there is none (a pass then does nothing).
        config: The configuration in force (``server.records``, ``server.data_dir``).
        registry: Where the deletion counter is registered (None: not exported).
        wall_clock: Epoch seconds (records' start times are wall time).
        interval: Seconds between two passes.
        backlog_interval: Seconds before the next pass when one hit ``batch``.
        batch: Most records one pass deletes.
        on_deleted: awaited with the ids a pass deleted (their webhook deliveries go too).
    """

    def __init__(
        self,
        *,
        store: Callable[[], RecordStore | None],
        config: Callable[[], Config],
        registry: CollectorRegistry | None = None,
        wall_clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
        backlog_interval: float = BACKLOG_INTERVAL,
        batch: int = BATCH,
        on_deleted: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._on_deleted = on_deleted
        self._config = config
        self._wall_clock = wall_clock
        self.interval = interval
        self.backlog_interval = backlog_interval
        self.batch = batch
        self.deleted = Counter(
            "sipserver_records_retention_deleted_total",
            "Call records deleted by retention (age: older than retention_days; size: past "
            "max_size_mb, oldest first)",
            ["reason"],
            registry=registry,
        )
        self.last: RetentionPass | None = None
        """The last pass's outcome."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._pass_lock = threading.Lock()
        """Held by a pass in progress (:meth:`stop` waits for it)."""

    # -------------------------------------------------------------------- the task

    def start(self) -> None:
        """Run a pass now and then every ``interval`` seconds (on the running loop)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="records-retention"
            )

    async def stop(self) -> None:
        """End the task; a pass in progress stops after its current deletion, and this waits
        for it (the store may be closed afterwards)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await asyncio.to_thread(self._wait_for_pass)

    def _wait_for_pass(self) -> None:
        with self._pass_lock:
            pass

    async def _run(self) -> None:
        while True:
            delay = self.interval
            try:
                result = await asyncio.to_thread(self.run_once)
            except asyncio.CancelledError:
                raise
            except (OSError, sqlite3.Error) as exc:
                # The machine, not a bug: out of file descriptors (a connection flood), a full
                # or failing disk. One line without a stack; the next pass tries again.
                log.warning("records_retention_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("records_retention_failed")
            else:
                if result.more:
                    delay = self.backlog_interval
                if result.ids and self._on_deleted is not None:
                    await self._on_deleted(list(result.ids))
            await asyncio.sleep(delay)

    # -------------------------------------------------------------------- one pass

    def run_once(self) -> RetentionPass:
        """One pass (blocking: call it in a thread)."""
        with self._pass_lock:
            return self._pass()

    def _pass(self) -> RetentionPass:
        store = self._store()
        if store is None:
            return RetentionPass(0, 0, 0, 0, 0, 0, False)
        config = self._config()
        settings = config.server.records
        recordings = Path(config.server.data_dir) / RECORDINGS_DIR
        files_deleted = files_missing = 0
        recordings_bytes = directory_bytes(recordings)
        bytes_before = database_used_bytes(store.path) + recordings_bytes
        left = self.batch
        ids: list[str] = []

        def remove(record: CallRecord, reason: str) -> None:
            nonlocal files_deleted, files_missing, recordings_bytes, left
            path = recording_file(record, config.server.data_dir)
            store.delete(record.id)
            ids.append(record.id)
            left -= 1
            self.deleted.labels(reason).inc()
            if path is None:
                files_missing += record.recording is not None
                return
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                files_missing += 1
                return
            files_deleted += 1
            recordings_bytes -= size

        expired = 0
        cutoff = self._wall_clock() - settings.retention_days * DAY
        while left > 0 and not self._stopping.is_set():
            old = store.oldest(before=cutoff, limit=min(_CHUNK, left))
            for record in old:
                if self._stopping.is_set():
                    break
                remove(record, "age")
                expired += 1
            if len(old) < _CHUNK:
                break

        oversize = 0
        cap = int(settings.max_size_mb * MB)
        total = database_used_bytes(store.path) + recordings_bytes
        while left > 0 and total > cap and not self._stopping.is_set():
            oldest = store.oldest(limit=min(_CHUNK, left))
            if not oldest:
                break
            for record in oldest:
                if self._stopping.is_set():
                    break
                remove(record, "size")
                oversize += 1
                # Measured again after each deletion: no more records go than needed.
                if database_used_bytes(store.path) + recordings_bytes <= cap:
                    break
            total = database_used_bytes(store.path) + recordings_bytes
        more = left <= 0 and not self._stopping.is_set()
        result = RetentionPass(
            expired, oversize, files_deleted, files_missing, bytes_before, total, more, tuple(ids)
        )
        if expired or oversize:
            log.info(
                "records_retention",
                expired=expired,
                oversize=oversize,
                files_deleted=files_deleted,
                files_missing=files_missing,
                bytes_before=bytes_before,
                bytes_after=total,
                more=more,
            )
        self.last = result
        return result
