"""Registrar bindings (RFC 3261 §10) and the stores that hold them.

A :class:`Binding` maps an address-of-record (AOR) to one Contact URI until ``expires_at``. A
:class:`BindingStore` keeps the bindings of every AOR; the registrar
(:mod:`sipserver.registrar.registrar`) decides what goes in, the store only holds it.

Stores are driven by the event-loop thread and never read a clock: ``now`` is passed to
:meth:`BindingStore.expire`. Times are wall-clock epoch seconds in production so that persisted
bindings stay meaningful across a restart.

Expiry index: every AOR has at most one *live* entry ``(deadline, aor)`` in a min-heap, where the
deadline is the earliest ``expires_at`` of its bindings at the time the entry was pushed. A refresh
that moves the deadline later pushes nothing; the old entry pops at the old time, finds nothing
expired and re-schedules the AOR at its current earliest deadline. A change that moves the
deadline earlier pushes a new entry and the older one becomes stale; stale entries are recognised
on pop (their deadline is no longer the AOR's scheduled one) and skipped. ``expire(now)`` with
nothing due is a single comparison against the top of the heap.

:class:`SqliteStore` keeps every binding in memory too and persists changes by group commit:
each change is numbered and marks its AOR dirty; the adapter takes the dirty AORs as one
:class:`ChangeBatch` (:meth:`SqliteStore.take_changes`, event-loop thread), writes it in one
transaction on a writer thread (:meth:`SqliteStore.write_changes`) and reports the outcome
(:meth:`SqliteStore.committed` or :meth:`SqliteStore.rollback`, event-loop thread). A REGISTER's
200 waits until :meth:`BindingStore.pending_commit` no longer names a change made before it
(see :mod:`sipserver.edge.group_commit`), so every acknowledged binding is on disk. Until then
the change is visible to later REGISTERs of the AOR (their CSeq checks and their 200s, which
wait for it too) but not to :meth:`BindingStore.get_committed`, the view calls are routed on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sipserver.data_dir import make_private_file, make_private_if_present
from sipserver.registrar.binding import Binding
from sipserver.registrar.memory_store import MemoryStore

__all__ = [
    "Binding",
    "BindingStore",
    "ChangeBatch",
    "MemoryStore",
    "SqliteStore",
    "open_store",
]


class BindingStore(Protocol):
    """Bindings of every AOR. Used from one thread (the event loop); never reads a clock."""

    def get(self, aor: str) -> list[Binding]:
        """Bindings of ``aor`` (expired ones included until :meth:`expire` removed them)."""
        ...

    def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        """Make ``bindings`` the complete set for ``aor``; an empty sequence removes the AOR."""
        ...

    def aors(self) -> Iterator[str]:
        """Every AOR holding at least one binding."""
        ...

    def all(self) -> Iterator[Binding]:
        """Every binding of every AOR."""
        ...

    def count(self) -> int:
        """Number of bindings, in O(1)."""
        ...

    def expire(self, *, now: float) -> list[Binding]:
        """Remove and return the bindings with ``expires_at <= now``; O(1) when none is due."""
        ...

    def get_committed(self, aor: str) -> list[Binding]:
        """Bindings of ``aor`` as last committed: what every acknowledged REGISTER left (a
        store without commits returns :meth:`get`)."""
        ...

    def pending_commit(self) -> int | None:
        """Number of the newest change not yet committed, None when every change is (always
        None for a store without commits): a 200 that reflects it must wait for it."""
        ...

    def close(self) -> None:
        """Release resources (persist what is pending first)."""
        ...


_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL,
    position INTEGER NOT NULL,
    contact TEXT NOT NULL,
    expires_at REAL NOT NULL,
    registered_at REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    q REAL,
    agent TEXT NOT NULL,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    user_agent TEXT,
    instance TEXT,
    PRIMARY KEY (aor, position)
) WITHOUT ROWID
"""
_COLUMNS = (
    "aor, position, contact, expires_at, registered_at, call_id, cseq, q, agent, source, path,"
    " user_agent, instance"
)
_INSERT = f"INSERT INTO bindings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT = f"SELECT {_COLUMNS} FROM bindings ORDER BY aor, position"

_Row = tuple[
    str, int, str, float, float, str, int, float | None, str, str, str, str | None, str | None
]
"""One ``bindings`` table row."""
_Changes = Sequence[tuple[str, tuple[Binding, ...]]]


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """The changes :meth:`SqliteStore.take_changes` hands to the writer: one transaction."""

    seq: int
    """Number of the newest change included: once committed, every change up to it is."""
    changes: tuple[tuple[str, tuple[Binding, ...]], ...] = ()
    """``(aor, bindings)`` per changed AOR, its bindings when taken; ``()`` removes the AOR."""


class SqliteStore(MemoryStore):
    """SQLite persistence with group commit over :class:`MemoryStore`.

    Reads never touch SQLite: every binding is also in memory. A change (:meth:`replace`, or
    :meth:`expire` removing something) is applied in memory at once, gets the next change number
    and marks its AOR dirty; :attr:`on_change` is called when the first AOR becomes dirty. The
    adapter then, on the event-loop thread, takes the dirty AORs as a :class:`ChangeBatch`
    (:meth:`take_changes`), has **one** writer thread write it in one transaction
    (:meth:`write_changes`), and reports back on the loop thread: :meth:`committed` (the change
    numbers up to ``batch.seq`` are durable) or :meth:`rollback` (a failed write: memory goes
    back to what the database holds, every uncommitted change of every AOR is undone). Bindings
    are immutable tuples, so a batch is shared with the writer without copying.

    Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A commit writes the
    transaction's pages to the WAL file with ``write()`` but does not ``fsync`` it (SQLite syncs
    the WAL at checkpoints). What ``write()`` returned is in the kernel's page cache, which
    survives the death of the process (``kill -9``, an out-of-memory kill, a crash): every
    committed binding is there at the next start. A power loss or kernel crash can lose the
    commits since the last checkpoint; ``synchronous=FULL`` would ``fsync`` the WAL on every
    commit to cover that too, at one ``fsync`` per group commit.

    Threading: the connection is opened with ``check_same_thread=False`` because it is created on
    the loop thread and used by the writer thread. Only one thread may use it at a time: one writer
    thread calls :meth:`write_changes`, and :meth:`flush`/:meth:`close` are called (on any thread)
    only once that writer has stopped. A lock additionally serialises connection use, but cannot
    order batches: a batch written after a newer one would overwrite it, hence the single writer
    and at most one batch in flight. Everything but :meth:`write_changes` belongs to the loop
    thread.

    Args:
        path: database file; parent directories are created. ``":memory:"`` gives a private
            in-memory database (tests).
    """

    __slots__ = (
        "_closed",
        "_committed_seq",
        "_conn",
        "_dirty",
        "_durable",
        "_lock",
        "_seq",
        "on_change",
    )

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (or create) the database and load every row into memory."""
        super().__init__()
        self._dirty: set[str] = set()
        self._durable: dict[str, tuple[Binding, ...]] = {}
        """Committed bindings of every AOR changed since its last commit (``()``: none)."""
        self._seq = 0
        self._committed_seq = 0
        self.on_change: Callable[[], None] | None = None
        """Called (loop thread) when a change makes the first AOR dirty: time to commit."""
        self._lock = threading.Lock()
        self._closed = False
        if os.fspath(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _make_private(Path(path))
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            rows: list[_Row] = conn.execute(_SELECT).fetchall()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        # Expired rows are kept: removing (and reporting) them is the registrar's next expire().
        current_aor: str | None = None
        group: list[Binding] = []
        for row in rows:
            if row[0] != current_aor:
                if current_aor is not None:
                    MemoryStore.replace(self, current_aor, group)
                current_aor, group = row[0], []
            group.append(_binding_from_row(row))
        if current_aor is not None:
            MemoryStore.replace(self, current_aor, group)
        # What was loaded is what the database holds: nothing to commit.
        self._dirty.clear()
        self._durable.clear()
        self._seq = self._committed_seq = 0

    def _changing(self, aor: str, old: tuple[Binding, ...]) -> None:
        # Number the change, remember what the database holds for the AOR, mark it dirty.
        self._seq += 1
        if aor not in self._durable:
            self._durable[aor] = old
        notify = not self._dirty and self.on_change is not None
        self._dirty.add(aor)
        if notify:
            self.on_change()  # type: ignore[misc]

    def get_committed(self, aor: str) -> list[Binding]:
        """Bindings of ``aor`` as last committed (what acknowledged REGISTERs left).

        Args:
            aor: address-of-record key.

        Returns:
            A new list; changes not yet committed are left out.
        """
        durable = self._durable.get(aor)
        return list(self._by_aor.get(aor, ()) if durable is None else durable)

    def pending_commit(self) -> int | None:
        """Number of the newest change not yet committed, or None when all are."""
        return None if self._seq == self._committed_seq else self._seq

    def take_changes(self) -> ChangeBatch:
        """Snapshot the dirty AORs as one batch and clear the dirty set (loop thread; cheap).

        Take the next batch only after the previous one was reported (:meth:`committed` or
        :meth:`rollback`).

        Returns:
            The batch; its ``changes`` are empty when nothing changed.
        """
        if not self._dirty:
            return ChangeBatch(self._seq)
        dirty, self._dirty = self._dirty, set()
        by_aor = self._by_aor
        return ChangeBatch(self._seq, tuple((aor, by_aor.get(aor, ())) for aor in dirty))

    def committed(self, batch: ChangeBatch) -> None:
        """Record that ``batch`` is in the database (loop thread, after :meth:`write_changes`).

        Args:
            batch: the batch written.
        """
        durable, dirty = self._durable, self._dirty
        for aor, bindings in batch.changes:
            if aor in dirty:
                durable[aor] = bindings  # changed again since: the database holds the batch's
            else:
                durable.pop(aor, None)  # memory and database agree
        self._committed_seq = batch.seq

    def rollback(self) -> list[str]:
        """Undo every uncommitted change, after :meth:`write_changes` failed (loop thread).

        Memory goes back to what the database holds, for the failed batch's AORs and for AORs
        changed since it was taken (their changes were made on top of it). The REGISTERs whose
        200s waited must now be refused. Bindings whose expiry is undone are expired again by
        the next :meth:`expire`.

        Returns:
            The AORs restored.
        """
        durable, self._durable = self._durable, {}
        on_change, self.on_change = self.on_change, None  # restoring is no change to commit
        try:
            for aor, bindings in durable.items():
                MemoryStore.replace(self, aor, bindings)
        finally:
            self.on_change = on_change
        self._durable.clear()
        self._dirty.clear()
        self._committed_seq = self._seq
        return list(durable)

    def write_changes(self, changes: _Changes) -> None:
        """Persist a batch's changes in one transaction (writer thread).

        Each AOR's rows are deleted and its current bindings inserted. On error the transaction
        is rolled back and the exception propagates; call :meth:`rollback` on the loop thread.

        Args:
            changes: ``(aor, bindings)`` pairs; an empty tuple deletes the AOR.
        """
        if not changes:
            return
        rows = [
            _row_from_binding(aor, position, b)
            for aor, bindings in changes
            for position, b in enumerate(bindings)
        ]
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM bindings WHERE aor = ?", [(a,) for a, _ in changes])
            if rows:
                self._conn.executemany(_INSERT, rows)

    def flush(self) -> int:
        """Persist every pending change synchronously (shutdown, tests).

        Call it only when no writer thread is running (see the class docstring).

        Returns:
            Number of AORs written.

        Raises:
            sqlite3.Error: the write failed; the uncommitted changes were rolled back.
        """
        batch = self.take_changes()
        try:
            self.write_changes(batch.changes)
        except BaseException:
            self.rollback()
            raise
        self.committed(batch)
        return len(batch.changes)

    def close(self) -> None:
        """Flush pending changes and close the database; idempotent.

        The in-memory bindings stay readable; later changes are no longer persisted.
        """
        if self._closed:
            return
        self.flush()
        self._closed = True
        with self._lock:
            self._conn.close()


def _row_from_binding(aor: str, position: int, b: Binding) -> _Row:
    return (
        aor,
        position,
        b.contact,
        b.expires_at,
        b.registered_at,
        b.call_id,
        b.cseq,
        b.q,
        b.agent,
        b.source,
        json.dumps(list(b.path)),
        b.user_agent,
        b.instance,
    )


def _binding_from_row(row: _Row) -> Binding:
    aor, _, contact, expires_at, registered_at, call_id, cseq, q, agent, source, path = row[:11]
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        registered_at=registered_at,
        call_id=call_id,
        cseq=cseq,
        q=q,
        agent=agent,
        source=source,
        path=tuple(str(p) for p in json.loads(path)),
        user_agent=row[11],
        instance=row[12],
    )


def _make_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (its ``-wal`` and ``-shm`` files take
    the database's mode), and tighten the files of an older, world-readable database: they
    hold every registered PBX's contact and source address."""
    make_private_file(path)
    make_private_if_present(path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


def open_store(kind: str, path: str | None) -> BindingStore:
    """Open the binding store named by the configuration.

    Args:
        kind: ``"memory"`` or ``"sqlite"``.
        path: database file for ``"sqlite"``; ignored for ``"memory"``.

    Returns:
        The store.

    Raises:
        ValueError: unknown ``kind``, or ``"sqlite"`` without a path.
    """
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        if not path:
            raise ValueError("sqlite binding store needs a path")
        return SqliteStore(path)
    raise ValueError(f"unknown binding store kind {kind!r} (expected 'memory' or 'sqlite')")
