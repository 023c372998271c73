"""Clocks for the pipeline: real (the event loop's monotonic time) and virtual (tests).

Pipeline code never reads ``time.time()``; it takes a :class:`Clock`. Times are seconds as
floats on the clock's own monotonic scale, and deadlines are absolute (``sleep_until(t)``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "VirtualClock"]


class Clock(Protocol):
    """Source of monotonic time and of timed waits."""

    def now(self) -> float:
        """Current time in seconds (monotonic; the origin is arbitrary)."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return once :meth:`now` has reached ``t`` (at once when it already has)."""
        ...


class MonotonicClock:
    """The running event loop's clock (``loop.time()``, monotonic).

    Args:
        loop: the loop to read; by default the running loop at each call.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def now(self) -> float:
        """Current ``loop.time()``."""
        return self._get_loop().time()

    async def sleep_until(self, t: float) -> None:
        """Sleep until ``loop.time() >= t`` (timer-granularity late at most)."""
        loop = self._get_loop()
        while (delay := t - loop.time()) > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """Manually advanced clock for deterministic tests.

    Sleepers wait until :meth:`advance` moves time past their deadline. ``advance`` wakes them
    one at a time in deadline order (ties: the order they went to sleep), sets :meth:`now` to
    each sleeper's own deadline while it runs, and lets the event loop run the woken task before
    waking the next, so a task that sleeps again within the advanced span is woken again in the
    same ``advance``. Comparisons are exact: compute periodic deadlines as ``start + n * period``
    rather than by adding ``period`` repeatedly, which drifts past the advanced span.

    Args:
        start: initial time in seconds.
    """

    __slots__ = ("_counter", "_now", "_sleepers")

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        """Current virtual time."""
        return self._now

    @property
    def sleepers(self) -> int:
        """Tasks waiting in :meth:`sleep_until` (cancelled waits included until reached)."""
        return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """Earliest deadline of a waiting task, or None."""
        return self._sleepers[0][0] if self._sleepers else None

    async def sleep_until(self, t: float) -> None:
        """Wait until virtual time reaches ``t`` (returns at once when it already has)."""
        if t <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._counter), future))
        await future

    async def advance(self, dt: float, *, settle: int = 4) -> None:
        """Move time forward by ``dt`` seconds, waking every sleeper whose deadline is reached.

        Args:
            dt: seconds to advance (>= 0).
            settle: event loop iterations granted to each woken task (and once at the end) to
                run up to its next wait; raise it for tasks that hop through several futures.
        """
        if dt < 0:
            raise ValueError("a clock does not go backwards")
        target = self._now + dt
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(sleepers)
            if future.done():  # the sleeping task was cancelled
                continue
            self._now = deadline
            future.set_result(None)
            for _ in range(settle):
                await asyncio.sleep(0)
        self._now = target
        for _ in range(settle):
            await asyncio.sleep(0)
