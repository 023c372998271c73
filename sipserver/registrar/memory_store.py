"""The in-memory bindings store, compiled with mypyc (``native-modules`` in pyproject.toml).

:class:`MemoryStore` is the store of ``server.store: memory`` and the in-memory half of
:class:`~sipserver.registrar.bindings.SqliteStore`; the expiry index is described in
:mod:`sipserver.registrar.bindings`, which re-exports the class. It lives in a module of its
own so that it is compiled: interpreted, its ``get`` and ``replace`` were ~6 k instructions of
every registration (the rest of bindings.py, SQLite and threads, stays interpreted).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Final

from mypy_extensions import mypyc_attr

from sipserver.registrar.binding import Binding

__all__ = ["MemoryStore"]

# Rebuild the expiry heap when stale entries outnumber live ones by this factor.
_HEAP_COMPACT_FACTOR: Final = 4
_HEAP_COMPACT_MIN: Final = 1024


@mypyc_attr(allow_interpreted_subclasses=True)
class MemoryStore:
    """In-memory :class:`~sipserver.registrar.bindings.BindingStore`: ``dict`` AOR -> tuple of
    bindings plus an expiry heap. :class:`~sipserver.registrar.bindings.SqliteStore` (and
    tests) subclass it in interpreted code; its own methods run compiled."""

    __slots__ = ("_by_aor", "_count", "_heap", "_scheduled")

    def __init__(self) -> None:
        """Create an empty store."""
        self._by_aor: dict[str, tuple[Binding, ...]] = {}
        self._count = 0
        # Min-heap of (deadline, aor); an entry is live iff _scheduled[aor] == deadline.
        self._heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}

    def get(self, aor: str) -> list[Binding]:
        """Bindings of ``aor`` in insertion order (expired ones included until :meth:`expire`).

        Args:
            aor: address-of-record key.

        Returns:
            A new list; empty when the AOR is unknown.
        """
        return list(self._by_aor.get(aor, ()))

    def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        """Make ``bindings`` the complete set for ``aor``.

        The bindings are stored as given; their ``aor`` field is not checked against ``aor``.

        Args:
            aor: address-of-record key.
            bindings: the new bindings; empty removes the AOR.
        """
        new = tuple(bindings)
        old = self._by_aor.get(aor, ())
        self._changing(aor, old)
        self._count += len(new) - len(old)
        if not new:
            if old:
                del self._by_aor[aor]
            # Any heap entry of the AOR is now stale.
            self._scheduled.pop(aor, None)
            return
        self._by_aor[aor] = new
        deadline = min(b.expires_at for b in new) if len(new) > 1 else new[0].expires_at
        scheduled = self._scheduled.get(aor)
        # A later deadline needs no push: the scheduled entry pops first and re-schedules.
        if scheduled is None or deadline < scheduled:
            self._schedule(aor, deadline)

    def aors(self) -> Iterator[str]:
        """Every AOR holding at least one binding (a snapshot: safe to modify while iterating)."""
        return iter(tuple(self._by_aor))

    def all(self) -> Iterator[Binding]:
        """Every binding of every AOR (a snapshot: safe to modify while iterating)."""
        return iter([b for bindings in self._by_aor.values() for b in bindings])

    def count(self) -> int:
        """Number of bindings held, in O(1)."""
        return self._count

    def expire(self, *, now: float) -> list[Binding]:
        """Remove and return the bindings with ``expires_at <= now``.

        Args:
            now: current time, same clock as ``expires_at``.

        Returns:
            The removed bindings; empty (after one comparison) when nothing is due.
        """
        heap = self._heap
        if not heap or heap[0][0] > now:
            return []
        expired: list[Binding] = []
        scheduled = self._scheduled
        while heap and heap[0][0] <= now:
            deadline, aor = heapq.heappop(heap)
            if scheduled.get(aor) != deadline:
                continue  # stale: the AOR was removed or re-scheduled earlier and handled
            del scheduled[aor]
            bindings = self._by_aor[aor]
            keep = tuple(b for b in bindings if b.expires_at > now)
            if len(keep) != len(bindings):
                self._changing(aor, bindings)
                expired.extend(b for b in bindings if b.expires_at <= now)
                self._count -= len(bindings) - len(keep)
                if keep:
                    self._by_aor[aor] = keep
                else:
                    del self._by_aor[aor]
            if keep:
                self._schedule(aor, min(b.expires_at for b in keep))
        return expired

    def get_committed(self, aor: str) -> list[Binding]:
        """Same as :meth:`get`: a memory store has nothing to commit."""
        return list(self._by_aor.get(aor, ()))

    def pending_commit(self) -> int | None:
        """Always None: a memory store has nothing to commit."""
        return None

    def close(self) -> None:
        """Nothing to release; the bindings stay readable."""

    def _changing(self, aor: str, old: tuple[Binding, ...]) -> None:
        """Called before the bindings of ``aor`` change from ``old`` (a hook for subclasses)."""

    def _schedule(self, aor: str, deadline: float) -> None:
        self._scheduled[aor] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, aor))
        size = len(heap)
        if size > _HEAP_COMPACT_MIN and size > _HEAP_COMPACT_FACTOR * len(self._scheduled):
            # Drop the stale entries in one O(n) pass.
            self._heap = [(d, a) for a, d in self._scheduled.items()]
            heapq.heapify(self._heap)
