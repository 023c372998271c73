"""Giving freed memory back to the system after calls end (glibc ``malloc_trim``).

Each call allocates and frees many small buffers (audio frames, JSON messages, numpy arrays of
the VAD and resamplers) on several threads. glibc keeps freed memory in its arenas for reuse,
so the resident size of a server that served many calls only ever grows, although nothing is
held: measured, 390 short websocket voice calls left the process 31 MB larger, and
``malloc_trim(0)`` gave it all back (8 MB under the size after the first ten calls).

:class:`HeapTrimmer` decides when to trim (sans-I/O: the caller passes ``now`` and runs the
trim, which takes a few milliseconds, on a thread): after the last call of a burst ended, or
after every ``every_calls`` call ends while calls go on, never more often than
``min_interval`` seconds. Elsewhere than glibc (musl, macOS) :func:`trim_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache

__all__ = ["HeapTrimmer", "trim_heap"]


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def trim_heap() -> bool:
    """Return freed heap memory to the system (``malloc_trim(0)``): True when some was
    released, False when none was or the C library has no ``malloc_trim``. Blocking: a few
    milliseconds for a heap of hundreds of MB; call it on a thread."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class HeapTrimmer:
    """When to trim the heap as calls end.

    Args:
        every_calls: trim after this many call ends even if calls go on.
        min_interval: seconds between two trims at least.
    """

    __slots__ = ("_ended", "_last", "_scheduled", "every_calls", "min_interval", "trims")

    def __init__(self, *, every_calls: int = 50, min_interval: float = 10.0) -> None:
        self.every_calls = every_calls
        self.min_interval = min_interval
        self._ended = 0
        self._last: float | None = None
        self._scheduled = False
        self.trims = 0
        """Trims done so far."""

    def call_ended(self, calls_in_progress: int, *, now: float) -> float | None:
        """A call ended, ``calls_in_progress`` are left: in how many seconds to trim (0: now),
        or None when no trim is due (or one is scheduled already). Call :meth:`trimmed` when
        the trim ran."""
        self._ended += 1
        if self._scheduled or (self._ended < self.every_calls and calls_in_progress > 0):
            return None
        self._scheduled = True
        self._ended = 0
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.min_interval - now)

    def trimmed(self, *, now: float) -> None:
        """The scheduled trim ran."""
        self._scheduled = False
        self._last = now
        self.trims += 1
