"""RFC 4733 telephone-events (DTMF in RTP): the receiver's de-duplication and the sender's
packet sequence. Pure: payloads and timestamps in, events and payloads out, ``now`` passed in.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["DTMF_EVENTS", "DtmfReceiver", "DtmfSender", "EventPacket", "event_code"]

DTMF_EVENTS: Final = "0123456789*#ABCD"
"""RFC 4733 §3.2 event codes 0-15, by code."""

_EVENT = struct.Struct("!BBH")
_END = 0x80
_VOLUME = 10  # -10 dBm0 (RFC 4733 §2.3.4)
_END_REPEATS = 3  # RFC 4733 §2.5.1.4
_STALE = 1.0  # seconds after its last packet an event without an end packet is reported
_MAX_DURATION = 0xFFFF  # the 16-bit duration field (8.19 s at 8000 Hz)


def event_code(digit: str) -> int:
    """The RFC 4733 §3.2 event code of a DTMF digit.

    Raises:
        ValueError: ``digit`` is not one of ``0-9 * # A-D`` (either case).
    """
    code = DTMF_EVENTS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    return code


class DtmfReceiver:
    """Turns received event packets into one ``(digit, duration_ms)`` per event.

    An event is identified by its RTP timestamp (RFC 4733 §2.5.2.1). It is reported when its
    end packet arrives; the end packet's repeats (three are sent, §2.5.1.4) are ignored. When
    every end packet was lost it is reported as soon as another event starts, or
    :meth:`expire` finds it stale.

    Args:
        clock_rate: the telephone-event RTP clock (durations are in its units).
    """

    __slots__ = ("_clock", "_current", "_ended", "reported")

    def __init__(self, clock_rate: int = 8000) -> None:
        self._clock = clock_rate
        self._current: tuple[int, int, int, float] | None = None  # ts, event, duration, seen
        self._ended: int | None = None
        self.reported = 0
        """Events reported."""

    def packet(self, payload: bytes, timestamp: int, now: float) -> list[tuple[str, int]]:
        """One event packet; returns the events it completes (0, 1 or 2)."""
        if len(payload) < 4:
            return []
        event, flags, duration = _EVENT.unpack_from(payload)
        if event >= len(DTMF_EVENTS) or timestamp == self._ended:
            return []  # not DTMF (§3.2 has more events), or a repeat of an ended one
        out: list[tuple[str, int]] = []
        current = self._current
        if current is not None and current[0] != timestamp:
            out.append(self._report(current[1], current[2]))  # its end packets were lost
        self._current = (timestamp, event, duration, now)
        if flags & _END:
            self._current = None
            self._ended = timestamp
            out.append(self._report(event, duration))
        return out

    def expire(self, now: float) -> list[tuple[str, int]]:
        """Report an event whose packets stopped without an end packet."""
        current = self._current
        if current is None or now - current[3] <= _STALE:
            return []
        self._current = None
        self._ended = current[0]
        return [self._report(current[1], current[2])]

    def _report(self, event: int, duration: int) -> tuple[str, int]:
        self.reported += 1
        return DTMF_EVENTS[event], duration * 1000 // self._clock


@dataclass(frozen=True, slots=True)
class EventPacket:
    """What to send in one packet slot instead of audio."""

    payload: bytes
    """The 4-byte event payload (RFC 4733 §2.3)."""
    timestamp: int
    """The event's start timestamp (the same in all its packets, §2.5.1.2)."""
    marker: bool
    """True on the event's first packet (§2.5.1.1)."""


class DtmfSender:
    """Queues digits and yields their packets, one per 20 ms slot (RFC 4733 §2.5.1): the
    duration grows by one slot per packet, the end packet goes three times.

    Args:
        step: RTP timestamp units per packet slot (160 at 8000 Hz).
    """

    __slots__ = ("_queue", "_state", "step")

    def __init__(self, step: int = 160) -> None:
        self.step = step
        self._queue: deque[tuple[int, int]] = deque(maxlen=32)
        self._state: list[int] | None = None  # event, start ts, duration, total, ends left

    def queue(self, digit: str, duration_ms: int) -> None:
        """Queue one digit (at most 32 wait; the oldest is dropped beyond).

        Raises:
            ValueError: ``digit`` is not one of ``0-9 * # A-D``.
        """
        code = event_code(digit)
        units = max(1, min(duration_ms, 8000)) * self.step // 20
        self._queue.append((code, min(units, _MAX_DURATION)))

    @property
    def busy(self) -> bool:
        """Whether an event is being sent or waits."""
        return self._state is not None or bool(self._queue)

    def next_packet(self, timestamp: int) -> EventPacket | None:
        """The packet for the slot whose audio timestamp is ``timestamp``, or None (audio)."""
        state = self._state
        marker = False
        if state is None:
            if not self._queue:
                return None
            code, total = self._queue.popleft()
            state = self._state = [code, timestamp, 0, total, _END_REPEATS]
            marker = True
        code, start, duration, total, ends = state
        duration = min(duration + self.step, total)
        end = duration >= total
        if end:
            state[4] = ends - 1
            if ends <= 1:
                self._state = None
        state[2] = duration
        flags = (_END if end else 0) | _VOLUME
        return EventPacket(_EVENT.pack(code, flags, duration), start, marker)
