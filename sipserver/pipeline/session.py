"""The session interface every ingress drives: 20 ms PCM frames in, 20 ms PCM frames out.

A transport adapter (the frame link of a SIP media worker, the websocket gateway, a test) owns
one :class:`CallSession` per call and drives it on a 20 ms tick:

1. :meth:`CallSession.on_start` once, with a :class:`CallInfo`.
2. Every tick, in this order: :meth:`CallSession.on_audio` with each caller frame received since
   the previous tick (zero, one, or several after a burst), then :meth:`CallSession.next_frame`
   exactly once, whose frame is sent to the caller. Tick ``n`` is the ``n``-th ``next_frame``
   call (from 0); a frame given to ``on_audio`` after ``n`` calls of ``next_frame`` arrived in
   tick ``n``.
3. :meth:`CallSession.on_dtmf` whenever the caller presses a key.
4. After each tick the adapter reads :attr:`CallSession.hangup_requested`; a string means "end
   the call" (SIP: BYE; websocket: close) with that reason.
5. :meth:`CallSession.on_hangup` once when the call ends, whoever ended it; no calls follow.

All methods are synchronous and must return quickly (they run on the event loop once per
20 ms per call); a session that needs slow work (STT, LLM, TTS) starts tasks of its own and
feeds their results into its outbound queue. Frames are signed 16-bit little-endian mono at
:attr:`CallInfo.sample_rate`, ``sample_rate // 50 * 2`` bytes each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sipserver.media.frames import FRAME_MS, frame_bytes

__all__ = ["FRAME_MS", "CallInfo", "CallSession", "frame_bytes"]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a session knows about its call when it starts."""

    call_id: str
    """Unique id of the call within the server (SIP: the edge's Call-ID; websocket: streamSid)."""
    agent: str
    """Slug of the agent that answers the call."""
    caller: str
    """Who calls (SIP: the From URI's user, e.g. ``+14155550123``; websocket: as given)."""
    called: str
    """Number or address called (SIP: the matched agent number)."""
    sample_rate: int
    """Sample rate of every frame in both directions, in Hz (8000 or 16000)."""
    transport: str
    """How the call arrived: ``"sip"``, ``"websocket"``, ``"twilio"`` or ``"test"``."""


class CallSession(Protocol):
    """One call's realtime session, driven by a transport adapter (see the module doc)."""

    hangup_requested: str | None
    """Set (to a short reason) when the session wants the call to end; None otherwise."""

    def on_start(self, info: CallInfo) -> None:
        """The call is up; called once before any other method."""
        ...

    def on_audio(self, frame: bytes) -> None:
        """One 20 ms frame of caller audio (s16le at the session's sample rate)."""
        ...

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key: one of ``0-9 * # A-D``."""
        ...

    def on_hangup(self, reason: str) -> None:
        """The call ended (``"bye"``, ``"cancel"``, ``"rtp-timeout"``, ``"session"``...)."""
        ...

    def next_frame(self) -> bytes:
        """The next 20 ms outbound frame (silence when there is nothing to say)."""
        ...
