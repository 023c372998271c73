"""What a call leaves behind: its record and the time-ordered events in it ([5/7] call records).

This module is the vocabulary shared by every process that touches a record: the process that
hosts a call's session turns the session's events into :class:`RecordEvent` s (with the offset
into the call, aligned with the recording), the main process collects them with the signalling
facts into a :class:`CallRecord`, stores it (``sipserver.records``), serves it to the API and
pages, and posts it to webhooks. It lives in ``pipeline`` because the session side produces the
events and the import direction (``records`` -> ``rtp`` -> ``pipeline``) lets both sides read it.

JSON forms (:meth:`CallRecord.to_json`, :meth:`RecordEvent.to_json`) are what the store keeps,
the frame link carries, the API returns and webhooks post; they only ever gain keys.

Event types (``RecordEvent.type``) and their ``data`` keys:

===================  ===============================================================================
``transcript``       ``speaker`` (``caller``, ``agent``; listens: ``caller``/``agent``/``mixed``),
                     ``text``, ``end`` (offset when the line ended, s; optional), ``interrupted``
                     (agent lines: true when the caller cut in; ``text`` then keeps only what the
                     caller heard), ``received`` (caller lines whose offset is when the speech
                     began: offset the transcript arrived, s; optional)
``turn``             ``index`` (0, 1, ...), ``text`` (what went to the LLM), ``preemptive``,
                     ``stages``: a :data:`TURN_STAGES` -> milliseconds mapping (a stage that did not
                     happen is null), ``voice_to_voice`` (ms, speech end to first reply frame; null
                     when no reply frame left); the event's offset is the speech end (the start of
                     its stacked bar; the commit when unknown)
``interruption``     ``kind`` (``paused``, ``resumed``, ``false``, ``interrupted``)
``dtmf``             ``digit``
``tool_call``        ``name``, ``arguments`` (object), ``result`` (text; optional)
``suggestion``       ``text``, ``title`` (optional), ``source`` (optional) (AI Listens)
``error``            ``stage`` (``stt``, ``llm``, ``tts``, ``turn``, ``session``, ``media``...;
                     ``record``: events of this record were dropped past the per-call cap),
                     ``error``
``end``              ``reason``, ``ended_by`` (one of :data:`ENDED_BY`)
===================  ===============================================================================

Every event has ``offset``: seconds from the start of the call's media (the first frame of the
session; the recording's time 0), so clicking a transcript line seeks the recording there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ENDED_BY",
    "EVENT_TYPES",
    "INGRESSES",
    "TURN_STAGES",
    "CallBook",
    "CallRecord",
    "MediaQuality",
    "RecordEvent",
    "RecordingInfo",
    "new_record_id",
]

Ingress = Literal["sip", "websocket", "twilio", "listens_sip", "listens_twilio"]
INGRESSES: tuple[str, ...] = ("sip", "websocket", "twilio", "listens_sip", "listens_twilio")
"""How a call arrived: a SIP call, a websocket (browser/app) call, a Twilio Media Streams call,
an AI Listens fork of a SIP call (a PBX forks to a listens number) or of a Twilio call."""

ENDED_BY: tuple[str, ...] = ("caller", "agent", "dtmf", "timeout", "error", "refused", "server")
"""Who ended the call: the caller hung up; the agent (a tool or the session asked); a DTMF key;
a timeout (RTP, session timer, no answer); an error (a crashed worker or session); a capacity
refusal (the call was never answered); the server (shutdown, reload, an operator)."""

TURN_STAGES: tuple[str, ...] = ("end_of_turn", "stt", "turn_model", "llm", "tts", "transport")
"""The latency stages of a turn, in milliseconds.

- ``end_of_turn``: speech end (last voiced caller audio) -> the turn was committed; the
  endpointing wait, which contains ``stt`` and ``turn_model`` when they are on the critical path.
- ``stt``: speech end -> the final transcript arrived.
- ``turn_model``: the turn model's compute time for the prediction that ended the turn (null:
  not asked).
- ``llm``: turn committed -> the LLM's first token (0 when a preemptive reply had it already).
- ``tts``: the LLM's first token (or the commit, when later) -> the first TTS audio.
- ``transport``: the first TTS audio -> the first reply frame left the session.

``end_of_turn + llm + tts + transport`` is the voice-to-voice time: the stacked bar of a turn.
"""

EVENT_TYPES: tuple[str, ...] = (
    "transcript",
    "turn",
    "interruption",
    "dtmf",
    "tool_call",
    "suggestion",
    "error",
    "end",
)


def new_record_id(now: float | None = None) -> str:
    """A new record id: 26 lowercase hex digits that sort by creation time (12 of milliseconds
    since the epoch, 14 random), unique across processes without coordination."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{os.urandom(7).hex()}"


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """One thing that happened in a call, ``offset`` seconds into its media."""

    type: str
    """One of :data:`EVENT_TYPES` (a reader ignores types it does not know)."""
    offset: float
    data: Mapping[str, Any] = field(default_factory=dict)
    """The type's keys (module doc)."""

    def to_json(self) -> dict[str, Any]:
        """``{"type": ..., "offset": ..., **data}``."""
        return {"type": self.type, "offset": round(self.offset, 3), **self.data}

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> RecordEvent:
        """The event of :meth:`to_json`'s form.

        Raises:
            ValueError: ``type`` is not a string or ``offset`` not a number.
        """
        kind = obj.get("type")
        offset = obj.get("offset")
        if not isinstance(kind, str):
            raise ValueError("record event: 'type' must be a string")
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise ValueError(f"record event {kind!r}: 'offset' must be a number")
        data = {k: v for k, v in obj.items() if k not in ("type", "offset")}
        return RecordEvent(kind, float(offset), data)


@dataclass(frozen=True, slots=True)
class MediaQuality:
    """Media counters of the whole call (caller -> server direction)."""

    lost: int = 0
    """RTP packets lost (sequence gaps never filled)."""
    concealed: int = 0
    """Frames the jitter buffer concealed."""
    late: int = 0
    """Frames that arrived too late to play."""

    def to_json(self) -> dict[str, int]:
        return {"lost": self.lost, "concealed": self.concealed, "late": self.late}

    @staticmethod
    def from_json(obj: Mapping[str, Any] | None) -> MediaQuality:
        obj = obj or {}
        return MediaQuality(
            int(obj.get("lost", 0)), int(obj.get("concealed", 0)), int(obj.get("late", 0))
        )


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """The call's recording file."""

    path: str
    """Absolute path of the file (under ``<data_dir>/recordings/``, mode 0600)."""
    format: str
    """``opus`` (Ogg/Opus) or ``wav``."""
    channels: str
    """``stereo`` (caller left, agent right) or ``mixed`` (one channel)."""
    sample_rate: int
    duration: float
    """Seconds of audio."""
    bytes: int

    @property
    def media_type(self) -> str:
        """The HTTP Content-Type of the file."""
        return "audio/ogg" if self.format == "opus" else "audio/wav"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "duration": round(self.duration, 3),
            "bytes": self.bytes,
        }

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> RecordingInfo:
        return RecordingInfo(
            str(obj["path"]),
            str(obj["format"]),
            str(obj["channels"]),
            int(obj["sample_rate"]),
            float(obj["duration"]),
            int(obj["bytes"]),
        )


@dataclass(slots=True)
class CallRecord:
    """Everything kept about one call. Times are wall-clock seconds since the epoch (persisted
    and shown); event offsets are seconds into the call's media."""

    id: str
    """:func:`new_record_id`."""
    agent: str
    """The agent's slug."""
    ingress: str
    """One of :data:`INGRESSES`."""
    caller: str = ""
    """Caller number or URI user (websocket: as the client gave it)."""
    called: str = ""
    """Number called (websocket: the agent's slug)."""
    sip_call_id: str | None = None
    call_sid: str | None = None
    """Twilio CallSid (Twilio calls and forks)."""
    started_at: float = 0.0
    """The call arrived (INVITE, websocket start)."""
    answered_at: float | None = None
    """The call was answered (200 OK, websocket start); None: never answered (refused)."""
    ended_at: float | None = None
    """None while the call is in progress."""
    end_reason: str | None = None
    """What ended it, in the ingress's words (``caller_bye``, ``rtp-timeout``,
    ``workers_full``...)."""
    ended_by: str | None = None
    """One of :data:`ENDED_BY`."""
    codec: str | None = None
    """``PCMU``, ``PCMA``, ``G722``, ``audio/x-mulaw``, ``audio/l16``..."""
    media: MediaQuality = field(default_factory=MediaQuality)
    recording: RecordingInfo | None = None
    events: list[RecordEvent] = field(default_factory=list)
    webhook_status: dict[str, Any] = field(default_factory=dict)
    """Delivery status per webhook kind (``call_ended``...): filled by the webhook sender."""

    @property
    def duration(self) -> float | None:
        """Seconds from answer to end (None: never answered or still in progress)."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.answered_at)

    def transcript_text(self) -> str:
        """Every transcript line's text, one per line (what text search looks in)."""
        return "\n".join(str(e.data.get("text", "")) for e in self.events if e.type == "transcript")

    def voice_to_voice(self) -> list[float]:
        """The voice-to-voice times of the call's turns, in milliseconds."""
        return [
            float(e.data["voice_to_voice"])
            for e in self.events
            if e.type == "turn" and isinstance(e.data.get("voice_to_voice"), int | float)
        ]

    def to_json(self, *, events: bool = True) -> dict[str, Any]:
        """The JSON form (the API's and the webhooks'); ``events=False`` for list rows."""
        out: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "ingress": self.ingress,
            "caller": self.caller,
            "called": self.called,
            "sip_call_id": self.sip_call_id,
            "call_sid": self.call_sid,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration": None if self.duration is None else round(self.duration, 3),
            "end_reason": self.end_reason,
            "ended_by": self.ended_by,
            "codec": self.codec,
            "media": self.media.to_json(),
            "recording": None if self.recording is None else self.recording.to_json(),
            "webhooks": dict(self.webhook_status),
        }
        if events:
            out["events"] = [e.to_json() for e in self.events]
        return out

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> CallRecord:
        """The record of :meth:`to_json`'s form (``events`` optional).

        Raises:
            ValueError, KeyError, TypeError: a malformed record.
        """
        recording = obj.get("recording")
        events: Sequence[Mapping[str, Any]] = obj.get("events") or ()
        return CallRecord(
            id=str(obj["id"]),
            agent=str(obj["agent"]),
            ingress=str(obj["ingress"]),
            caller=str(obj.get("caller") or ""),
            called=str(obj.get("called") or ""),
            sip_call_id=obj.get("sip_call_id"),
            call_sid=obj.get("call_sid"),
            started_at=float(obj.get("started_at") or 0.0),
            answered_at=_opt_float(obj.get("answered_at")),
            ended_at=_opt_float(obj.get("ended_at")),
            end_reason=obj.get("end_reason"),
            ended_by=obj.get("ended_by"),
            codec=obj.get("codec"),
            media=MediaQuality.from_json(obj.get("media")),
            recording=None if not recording else RecordingInfo.from_json(recording),
            events=[RecordEvent.from_json(e) for e in events],
            webhook_status=dict(obj.get("webhooks") or {}),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


class CallBook(Protocol):
    """What an ingress tells about its calls (the main process's
    :class:`~sipserver.records.book.CallRecordBook`; ingresses never import it, the server
    passes it in).

    Keys are the ingress's own: ``("sip", Call-ID)`` for SIP calls (the edge, the call workers
    and AI Listens SIP calls share it), ``("ws", streamSid)`` for websocket and Twilio calls,
    ``("listens", streamSid)`` for AI Listens Twilio forks. Opening a key that is open merges
    the new facts into its record.
    """

    def open(
        self,
        key: Hashable,
        *,
        agent: str,
        ingress: str,
        caller: str = "",
        called: str = "",
        sip_call_id: str | None = None,
        call_sid: str | None = None,
        codec: str | None = None,
        answered: bool = True,
    ) -> CallRecord | None:
        """Open (or complete) the record of a call; None: not recorded (too many open)."""
        ...

    def add(self, key: Hashable, events: Sequence[RecordEvent]) -> None:
        """Append events to the call's record."""
        ...

    def offset(self, key: Hashable) -> float:
        """Seconds since the call's record started."""
        ...

    def close(self, key: Hashable, *, end_reason: str, ended_by: str) -> CallRecord | None:
        """The call ended (``ended_by``: one of :data:`ENDED_BY`)."""
        ...
