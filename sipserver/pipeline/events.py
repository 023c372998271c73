"""Events a voice session publishes: what logs, metrics, the dashboard and the demo consume.

Frozen, slotted dataclasses on an empty :class:`SessionEvent` base, each with ``at``: the
session clock's time when it happened. :func:`event_to_json` and :func:`event_from_json` give each
a stable JSON form (the frame link's EVENT record carries them from a call worker to the process
that terminates the call's websocket: docs/framelink.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    "TurnPrediction",
    "event_from_json",
    "event_to_json",
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
    speech_start: float | None = None
    """Clock time the transcribed speech began (final results; None: not known)."""
    speech_end: float | None = None
    """Clock time the transcribed speech ended: its closing silence began (final results;
    None: not known)."""


@dataclass(frozen=True, slots=True)
class TurnCommitted(SessionEvent):
    """The caller's turn is over; this text goes to the LLM."""

    at: float
    text: str
    probability: float | None
    """End-of-turn probability from the turn model (None: no model answer decided it: silence
    only, the STT's verdict, or a pause the model was not asked about, see
    :class:`TurnPrediction`)."""
    preemptive: bool = False
    """The speculative reply started on this text is used (its pieces, already published as
    :class:`AgentText`, belong to this turn's reply); False: any speculative reply is dropped."""


@dataclass(frozen=True, slots=True)
class TurnPrediction(SessionEvent):
    """A pause that can end the caller's turn, and whether the turn model was asked about it.

    Only sessions with a turn model publish it, and not when the STT gives its own verdict.
    """

    at: float
    outcome: str
    """``run``: the model was asked. Skipped because its answer could not change when the turn
    ends: ``skipped_question`` (the transcript ends in "?" and ``question_ends_turn`` is on: the
    turn is done whatever the model says), ``skipped_delays`` (``min_endpointing_delay`` equals
    ``max_endpointing_delay``: both verdicts give one deadline), ``skipped_late`` (the silence
    already outlasted ``max_endpointing_delay`` when the transcript came)."""


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
    transcript_at: float | None = None
    """The final transcript that completed the turn's text arrived."""
    turn_model_ms: float | None = None
    """Milliseconds (session clock) the turn model took for the prediction that ended the turn
    (None: no model prediction decided it)."""


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


def event_to_json(event: SessionEvent) -> dict[str, Any]:
    """The JSON form of an event: an object with a ``"type"`` tag and the event's fields.

    Tags: ``state`` (``old``, ``new``: state values), ``transcript`` (``text``, ``final``,
    ``speech_start``, ``speech_end``), ``turn`` (``text``, ``probability``, ``preemptive``),
    ``turn_prediction`` (``outcome``), ``agent_text`` (``text``), ``interruption`` (``kind``,
    ``heard``), ``latency`` (the timings, ``preemptive``, ``transcript_at``,
    ``turn_model_ms``), ``end_requested`` (``reason``), ``provider_failed`` (``stage``,
    ``error``); every one has ``at``. Keys added after the first version (``speech_start``,
    ``speech_end``, ``preemptive`` of ``turn``, ``transcript_at``, ``turn_model_ms``) are
    optional in :func:`event_from_json`.

    Raises:
        TypeError: not one of this module's events.
    """
    if isinstance(event, StateChanged):
        return {"type": "state", "at": event.at, "old": event.old.value, "new": event.new.value}
    if isinstance(event, TranscriptReceived):
        return {
            "type": "transcript",
            "at": event.at,
            "text": event.text,
            "final": event.final,
            "speech_start": event.speech_start,
            "speech_end": event.speech_end,
        }
    if isinstance(event, TurnCommitted):
        return {
            "type": "turn",
            "at": event.at,
            "text": event.text,
            "probability": event.probability,
            "preemptive": event.preemptive,
        }
    if isinstance(event, TurnPrediction):
        return {"type": "turn_prediction", "at": event.at, "outcome": event.outcome}
    if isinstance(event, AgentText):
        return {"type": "agent_text", "at": event.at, "text": event.text}
    if isinstance(event, Interruption):
        return {"type": "interruption", "at": event.at, "kind": event.kind, "heard": event.heard}
    if isinstance(event, TurnLatency):
        return {
            "type": "latency",
            "at": event.at,
            "speech_end": event.speech_end,
            "end_of_turn": event.end_of_turn,
            "llm_first_token": event.llm_first_token,
            "tts_first_audio": event.tts_first_audio,
            "first_frame": event.first_frame,
            "preemptive": event.preemptive,
            "transcript_at": event.transcript_at,
            "turn_model_ms": event.turn_model_ms,
        }
    if isinstance(event, CallEndRequested):
        return {"type": "end_requested", "at": event.at, "reason": event.reason}
    if isinstance(event, ProviderFailed):
        return {
            "type": "provider_failed",
            "at": event.at,
            "stage": event.stage,
            "error": event.error,
        }
    raise TypeError(f"not a session event: {event!r}")


def _num(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{obj.get('type')} event: {key!r} must be a number")
    return float(value)


def _opt_num(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _num(obj, key)


def _text(obj: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{obj.get('type')} event: {key!r} must be a string")
    return value


def _flag(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{obj.get('type')} event: {key!r} must be true or false")
    return value


def _state(obj: Mapping[str, Any], key: str) -> AgentState:
    try:
        return AgentState(_text(obj, key))
    except ValueError:
        raise ValueError(f"state event: unknown {key} state {obj.get(key)!r}") from None


def event_from_json(obj: Mapping[str, Any]) -> SessionEvent | None:
    """The event of :func:`event_to_json`'s form.

    Returns:
        The event; None for a ``type`` this version does not know (a newer peer's event:
        ignored, not an error).

    Raises:
        ValueError: a known type with a missing or mistyped field.
    """
    kind = obj.get("type")
    at = _num(obj, "at") if kind in _KNOWN else 0.0
    if kind == "state":
        return StateChanged(at, _state(obj, "old"), _state(obj, "new"))
    if kind == "transcript":
        return TranscriptReceived(
            at,
            _text(obj, "text"),
            _flag(obj, "final"),
            _opt_num(obj, "speech_start"),
            _opt_num(obj, "speech_end"),
        )
    if kind == "turn":
        return TurnCommitted(
            at,
            _text(obj, "text"),
            _opt_num(obj, "probability"),
            obj.get("preemptive") is not None and _flag(obj, "preemptive"),
        )
    if kind == "turn_prediction":
        return TurnPrediction(at, _text(obj, "outcome"))
    if kind == "agent_text":
        return AgentText(at, _text(obj, "text"))
    if kind == "interruption":
        return Interruption(at, _text(obj, "kind"), _text(obj, "heard", ""))
    if kind == "latency":
        return TurnLatency(
            at,
            _opt_num(obj, "speech_end"),
            _opt_num(obj, "end_of_turn"),
            _opt_num(obj, "llm_first_token"),
            _opt_num(obj, "tts_first_audio"),
            _opt_num(obj, "first_frame"),
            _flag(obj, "preemptive"),
            _opt_num(obj, "transcript_at"),
            _opt_num(obj, "turn_model_ms"),
        )
    if kind == "end_requested":
        return CallEndRequested(at, _text(obj, "reason"))
    if kind == "provider_failed":
        return ProviderFailed(at, _text(obj, "stage"), _text(obj, "error"))
    return None


_KNOWN = frozenset(
    {
        "state",
        "transcript",
        "turn",
        "turn_prediction",
        "agent_text",
        "interruption",
        "latency",
        "end_requested",
        "provider_failed",
    }
)
