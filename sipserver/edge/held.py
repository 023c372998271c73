"""Responses that wait for the bindings they acknowledge to be committed: sans-I/O.

A REGISTER's 200 may go out only once its binding change is in the database (durable
registrations, see :class:`sipserver.registrar.bindings.SqliteStore`). The router holds such a
response here under a *ticket*, the store's number of the newest change it reflects
(:meth:`~sipserver.registrar.bindings.BindingStore.pending_commit`); when the adapter reports that
the changes up to ``seq`` are committed, :meth:`HeldResponses.release` hands back every response
whose ticket is at most ``seq``, in arrival order. A failed commit undoes every uncommitted
change, so :meth:`HeldResponses.take_all` hands back all of them to be refused.

The queue is bounded: when it is :attr:`~HeldResponses.full` (the disk stalls), the router
refuses new registrations at once instead of holding more.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["HeldResponses"]

T = TypeVar("T")

DEFAULT_LIMIT = 10_000
"""Responses held at most: seconds of REGISTERs at the rate one core serves (bench/register.py)."""


class HeldResponses(Generic[T]):
    """Items (responses) held until the change numbered by their ticket is committed.

    Tickets must not decrease from one :meth:`hold` to the next (a store numbers its changes in
    order), so releasing is popping from the front.

    Args:
        limit: items held at most; :meth:`hold` past it raises.

    Raises:
        ValueError: ``limit < 1``.
    """

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"held responses need limit >= 1, got {limit}")
        self.limit = limit
        self._items: deque[tuple[int, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """True when :meth:`hold` would exceed :attr:`limit`."""
        return len(self._items) >= self.limit

    def hold(self, ticket: int, item: T) -> None:
        """Hold ``item`` until the changes up to ``ticket`` are committed.

        Raises:
            ValueError: the queue is full, or ``ticket`` is lower than the last one held.
        """
        items = self._items
        if len(items) >= self.limit:
            raise ValueError("held responses: queue full")
        if items and ticket < items[-1][0]:
            raise ValueError(f"held responses: ticket {ticket} after {items[-1][0]}")
        items.append((ticket, item))

    def release(self, seq: int) -> list[T]:
        """The items whose ticket is at most ``seq`` (their changes are committed), oldest first."""
        items = self._items
        out: list[T] = []
        while items and items[0][0] <= seq:
            out.append(items.popleft()[1])
        return out

    def take_all(self) -> list[T]:
        """Every held item, oldest first (a commit failed: they are to be refused)."""
        out = [item for _, item in self._items]
        self._items.clear()
        return out
