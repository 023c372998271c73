"""Events a voice session publishes: what logs, metrics, the dashboard and the demo consume.

Frozen, slotted dataclasses on an empty :class:`SessionEvent` base, each with ``at``: the
session clock's time when it happened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "AgentState",
    "AgentText",
    "CallEndRequested",
    "Interruption",
    "ProviderFailed",
    "SessionEvent",
    "StateChanged",
    "TranscriptReceived",
    "TurnCommitted",
    "TurnLatency",
]


class AgentState(enum.Enum):
    """Who holds the floor."""

    LISTENING = "listening"
    """Nobody speaks; the agent waits for the caller."""
    USER_SPEAKING = "user_speaking"
    """The caller speaks (or paused briefly, the turn not yet over)."""
    THINKING = "thinking"
    """The caller's turn is over; the agent prepares its reply (no reply audio yet)."""
    SPEAKING = "speaking"
    """Reply audio is playing."""


class SessionEvent:
    """Base of the session's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StateChanged(SessionEvent):
    """The session moved from one state to another."""

    at: float
    old: AgentState
    new: AgentState


@dataclass(frozen=True, slots=True)
class TranscriptReceived(SessionEvent):
    """STT recognised caller speech."""

    at: float
    text: str
    final: bool
    """False for an interim result (used for interruption word counts)."""


@dataclass(frozen=True, slots=True)
class TurnCommitted(SessionEvent):
    """The caller's turn is over; this text goes to the LLM."""

    at: float
    text: str
    probability: float | None
    """End-of-turn probability from the turn model (None: silence or STT decided)."""


@dataclass(frozen=True, slots=True)
class AgentText(SessionEvent):
    """A piece of the agent's reply handed to TTS."""

    at: float
    text: str


@dataclass(frozen=True, slots=True)
class Interruption(SessionEvent):
    """Caller speech and the agent's reply collided."""

    at: float
    kind: str
    """``paused`` (agent audio stopped), ``resumed`` (false interruption, playback continues),
    ``false`` (false interruption, agent stays stopped: resume_false_interruption off) or
    ``interrupted`` (real: the reply is cancelled)."""
    heard: str = ""
    """For ``interrupted``: the part of the reply the caller heard (what history keeps)."""


@dataclass(frozen=True, slots=True)
class TurnLatency(SessionEvent):
    """Timings of one reply, each measured on the session clock (None: did not happen)."""

    at: float
    speech_end: float | None
    """Last voiced caller audio (start of the silence that ended the turn)."""
    end_of_turn: float | None
    """The turn was committed."""
    llm_first_token: float | None
    tts_first_audio: float | None
    first_frame: float | None
    """The first reply frame left the session (``next_frame``)."""
    preemptive: bool
    """The reply was generated speculatively before the turn was committed, and used."""


@dataclass(frozen=True, slots=True)
class CallEndRequested(SessionEvent):
    """The session asks the transport to end the call."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ProviderFailed(SessionEvent):
    """A model stage failed; the session carries on (the turn gets a spoken apology)."""

    at: float
    stage: str
    """``stt``, ``llm``, ``tts`` or ``turn``."""
    error: str
