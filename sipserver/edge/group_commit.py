"""Group commit of binding changes: the asyncio adapter between the store and its writer thread.

The registrar and the router stay sans-I/O: they change bindings in memory and hold each
REGISTER's 200 until the change is committed (:mod:`sipserver.edge.held`). This module does the
I/O. When the store reports a change (:attr:`~sipserver.registrar.bindings.SqliteStore.on_change`),
:class:`GroupCommitter` waits out the commit window (a few milliseconds, so that every change
arriving meanwhile joins the batch), takes the dirty AORs as one batch on the event loop, writes
the batch in **one** transaction on the writer thread and reports back on the loop:
``on_committed(seq)`` releases every 200 that waited for changes up to ``seq``; a failed write
rolls the store back to what the database holds and ``on_failed`` refuses every 200 still
waiting. Changes made while a batch is being written form the next batch, so under load batches
grow instead of queueing: the cost of a transaction is shared by everything that arrived during
the previous one (group commit, as databases do it for their logs).

The event loop never waits on SQLite: only :meth:`CommitStore.write_changes` touches the
database, and it runs on the executor. One batch is in flight at a time (the store's
single-writer rule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from sipserver.observability import get_logger
from sipserver.registrar.bindings import Binding, ChangeBatch

__all__ = ["DEFAULT_COMMIT_WINDOW", "CommitStore", "GroupCommitter"]

log = get_logger(__name__)

DEFAULT_COMMIT_WINDOW = 0.020
"""Seconds a change waits for others to join its transaction (``server.store_commit_ms``)."""


class CommitStore(Protocol):
    """What :class:`GroupCommitter` needs of a store (:class:`SqliteStore` has it)."""

    def take_changes(self) -> ChangeBatch:
        """The dirty AORs as one batch (event-loop thread)."""
        ...

    def write_changes(self, changes: Sequence[tuple[str, tuple[Binding, ...]]]) -> None:
        """Write a batch in one transaction (writer thread); raise when it is not written."""
        ...

    def committed(self, batch: ChangeBatch) -> None:
        """The batch is written (event-loop thread)."""
        ...

    def rollback(self) -> list[str]:
        """The write failed: undo every uncommitted change (event-loop thread)."""
        ...


class GroupCommitter:
    """Commits a store's changes in batches on one writer thread; see the module docstring.

    Args:
        store: the store; set its ``on_change`` to :meth:`wake`.
        executor: runs :meth:`CommitStore.write_changes`; one thread (the store's single writer).
        on_committed: called on the loop with the batch's ``seq`` after a commit.
        on_failed: called on the loop with the error after a failed write and the rollback.
        window: seconds from the first change of a batch until the batch is taken.
    """

    def __init__(
        self,
        store: CommitStore,
        executor: Executor,
        *,
        on_committed: Callable[[int], None],
        on_failed: Callable[[BaseException], None],
        window: float = DEFAULT_COMMIT_WINDOW,
    ) -> None:
        self._store = store
        self._executor = executor
        self._on_committed = on_committed
        self._on_failed = on_failed
        self.window = window
        """Seconds from the first change of a batch until it is taken (may change live)."""
        self._wake = asyncio.Event()
        self._first: float | None = None
        self._stopping = False
        self._nap: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A change was made (loop thread): commit it within the window."""
        if self._first is None:
            try:
                self._first = asyncio.get_running_loop().time()
            except RuntimeError:  # not on a running loop: no window to wait, commit at once
                self._first = 0.0
        self._wake.set()

    def start(self) -> None:
        """Start committing (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bindings-group-commit")

    async def stop(self) -> None:
        """Commit what is pending, report it, and stop. Idempotent."""
        self._stopping = True
        self._wake.set()
        if self._nap is not None and not self._nap.done():
            self._nap.set_result(None)  # cut the window short
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._wake.is_set():
                if self._stopping:
                    return
                await self._wake.wait()
            first = self._first
            if first is not None and not self._stopping:
                delay = first + self.window - loop.time()
                if delay > 0:
                    # Like asyncio.sleep(delay), but stop() can end it.
                    self._nap = nap = loop.create_future()
                    timer = loop.call_later(delay, _finish, nap)
                    await nap
                    timer.cancel()
                    self._nap = None
            self._wake.clear()
            self._first = None
            await self._commit(loop)

    async def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        store = self._store
        batch = store.take_changes()
        if not batch.changes:
            return
        failure: Exception | None = None
        try:
            await loop.run_in_executor(self._executor, store.write_changes, batch.changes)
        except Exception as exc:
            store.rollback()
            failure = exc
        else:
            store.committed(batch)
        try:
            if failure is None:
                self._on_committed(batch.seq)
            else:
                self._on_failed(failure)
        except Exception:  # a bug in sending must not stop the commits
            log.exception("bindings_commit_report_failed", seq=batch.seq)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
