"""The call worker's one 20 ms media clock (re-exported by :mod:`sipserver.rtp.rtp_stream`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from sipserver.observability import get_logger

__all__ = ["MediaClock"]

log = get_logger(__name__)


class MediaClock:
    """One drift-free 20 ms clock per process (``loop.call_at`` on absolute deadlines).

    Tick ``k`` is due at ``start + k * interval`` whatever the previous ticks cost, so the
    clock never drifts. A tick that runs more than one interval after its deadline counts as
    late; ticks missed while the loop was busy run back to back, at most 5, and the rest are
    skipped (counted in ``skipped_ticks``) so a stall does not turn into a burst.

    Args:
        on_tick: called once per tick (an exception is logged and the clock goes on).
        interval: seconds between ticks.
        loop: the loop to tick on (default: the running loop at :meth:`start`); anything with
            ``time()`` and ``call_at()`` (tests step a fake one).
    """

    MAX_CATCH_UP: Final = 5

    def __init__(
        self,
        on_tick: Callable[[], None],
        *,
        interval: float = 0.02,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._on_tick = on_tick
        self.interval = interval
        self.ticks = 0
        """Ticks run."""
        self.late_ticks = 0
        """Ticks that ran more than one interval after their deadline."""
        self.skipped_ticks = 0
        """Ticks not run at all (more than :attr:`MAX_CATCH_UP` behind)."""
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop = loop

    @property
    def running(self) -> bool:
        """Whether the clock is started."""
        return self._handle is not None

    def start(self) -> None:
        """Start ticking (the first tick one interval from now); needs a running loop."""
        if self._handle is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._deadline, self._run)

    def stop(self) -> None:
        """Stop ticking (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        interval = self.interval
        due = self._deadline
        runs = 0
        while due <= now and runs <= self.MAX_CATCH_UP:
            if now - due > interval:
                self.late_ticks += 1
            self.ticks += 1
            runs += 1
            try:
                self._on_tick()
            except Exception:
                log.exception("media_clock_tick_failed")
            due += interval
            if self._handle is None:  # stopped by the tick
                return
        if due <= now:
            behind = int((now - due) / interval) + 1
            self.skipped_ticks += behind
            due += behind * interval
        self._deadline = due
        self._handle = loop.call_at(due, self._run)
