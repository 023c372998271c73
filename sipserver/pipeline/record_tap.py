"""The session side of call records: a call's session, watched, turned into record events.

:class:`RecordedSession` wraps any :class:`~sipserver.pipeline.session.CallSession` (a voice
session, the echo test line) and passes every call straight through to it: the call behaves
exactly as without it. On the side it counts ticks, watches what the session publishes
(:meth:`RecordedSession.on_event`, given to the voice session as its event callback) and what the
transport tells it (DTMF, the hang-up), and turns that into :class:`RecordEvent` s of
:mod:`sipserver.pipeline.call_record`, handed to ``emit`` in one batch per tick at most.

Offsets are seconds of call media: tick ``n`` (the ``n``-th ``next_frame`` call, from 0) is
``n x 0.020`` s, the first frame is the recording's time 0. An event raised during tick ``n``
(inside ``on_audio`` or ``next_frame``) gets offset ``n x 0.020``; one raised by a model task
between two ticks gets the next tick's. A past moment an event names on the session clock (when
speech started, when the turn's silence began) is placed relative to it: ``offset_now - (at -
moment)``.

What becomes what:

=============================================  ==================================================
session event / call                           record event
=============================================  ==================================================
final ``TranscriptReceived``                   ``transcript`` speaker ``caller``: offset = when the
                                               speech began (else the arrival), ``end`` = when it
                                               ended, ``received`` = offset of the arrival
``AgentText`` pieces of one reply              ONE ``transcript`` speaker ``agent`` when the reply
                                               ends (its audio played out, it was cut, the next
                                               turn, the hang-up): offset = its first audio,
                                               ``end``, ``interrupted``; a cut reply keeps only
                                               the words the caller heard
``TurnCommitted`` + ``TurnLatency``            ``turn``: offset = the turn's speech end (else the
                                               commit); ``stages`` in ms per :data:`TURN_STAGES`
``Interruption``                               ``interruption`` (``kind``)
``ProviderFailed``                             ``error`` (``stage``, ``error``)
``on_dtmf``                                    ``dtmf`` (``digit``)
the session asked to end the call              ``end`` at the hang-up: ``ended_by`` ``dtmf`` when
                                               it asked while handling a key press, else
                                               ``agent``; nothing when it did not ask (the main
                                               process knows who hung up)
=============================================  ==================================================

Speculative replies (``preemptive_generation``) publish their text before the turn is
committed: those pieces count only when :class:`~sipserver.pipeline.events.TurnCommitted` says
the speculative reply is used, and pieces of replies that never played are never emitted.

Bounded: at most ``max_events`` events per call; past it events are dropped and counted
(:attr:`RecordedSession.dropped`), and one ``error`` event (stage ``record``) saying how many
goes out at the hang-up. Optionally a :class:`Recorder` gets every tick's caller frames and agent
frame (``add``) and is closed at the hang-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sipserver.observability import get_logger
from sipserver.pipeline.call_record import TURN_STAGES, RecordEvent
from sipserver.pipeline.events import (
    AgentState,
    AgentText,
    CallEndRequested,
    Interruption,
    ProviderFailed,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
)
from sipserver.pipeline.session import FRAME_MS, CallInfo, CallSession

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "RECORD_EVENT_TYPES",
    "EventSink",
    "RecordEmitter",
    "RecordEventsHook",
    "RecordedSession",
    "Recorder",
    "record_batch",
]

log = get_logger(__name__)

DEFAULT_MAX_EVENTS = 5000
"""Record events one call may produce (about 700 turns); more are dropped and counted."""

_TICK = FRAME_MS / 1000.0
_NO_FRAMES: tuple[bytes, ...] = ()

RecordEmitter = Callable[[list[RecordEvent]], None]
"""Receives a batch of record events (in the order they happened; the list is the callee's)."""

EventSink = Callable[[SessionEvent], None]
"""Receives a session's events."""

RECORDING_EVENT = "record_recording"
"""The ``type`` of the EVENT payload that tells main about a call's recording file (the
:class:`~sipserver.pipeline.call_record.RecordingInfo` JSON with this ``type``), sent when the
call ends, before its CALL_ENDED (sipserver/rtp/recordings.py)."""

RECORD_EVENT_TYPES = frozenset({"record", "record_media", RECORDING_EVENT})
"""The ``type`` of the frame link EVENT payloads that carry record data to the main process
(docs/framelink.md, "Call records"): ``record`` (:func:`record_batch`), ``record_media``
(a SIP call's media counters and codec, sent by the call worker before its CALL_ENDED) and
``record_recording`` (:data:`RECORDING_EVENT`)."""

RecordEventsHook = Callable[[str, int, Mapping[str, Any]], None]
"""Where the main process takes record payloads: ``(worker_id, call, payload)`` with the
worker's id, the call number on that worker's link (a worker-local SIP call number, or a
relayed call's number ``>= 0x8000_0000``) and the EVENT payload (``type`` in
:data:`RECORD_EVENT_TYPES`)."""


def record_batch(events: Sequence[RecordEvent]) -> dict[str, Any]:
    """The EVENT payload of a batch of record events:
    ``{"type": "record", "events": [RecordEvent.to_json()...]}``."""
    return {"type": "record", "events": [e.to_json() for e in events]}


class Recorder(Protocol):
    """What records a call's audio (:mod:`sipserver.media.recording`'s ``CallRecording``)."""

    def add(self, caller_frames: Sequence[bytes], agent_frame: bytes) -> None:
        """One tick: the caller frames received in it (0, 1 or more) and the agent frame sent.
        The sequence is not reused by the caller after the call."""
        ...

    def close(self) -> None:
        """The call ended: finish the file (no call follows)."""
        ...


class RecordedSession:
    """A call's session, passed through, whose events become record events.

    Args:
        inner: the session that handles the call.
        emit: receives the record events, one batch per tick at most (and one at the hang-up).
        recorder: records the call's audio, or None.
        on_event: another receiver of the session's events (chained: called with every event
            :meth:`on_event` gets, after it was converted).
        max_events: record events kept for this call at most (see the module doc).
    """

    __slots__ = (
        "_active",
        "_caller_frames",
        "_chain",
        "_closed",
        "_emit",
        "_end",
        "_in_dtmf",
        "_inner",
        "_line_start",
        "_max_events",
        "_paused",
        "_pending",
        "_pieces",
        "_recorder",
        "_sent",
        "_ticks",
        "_turn",
        "_turns",
        "dropped",
    )

    def __init__(
        self,
        inner: CallSession,
        emit: RecordEmitter,
        *,
        recorder: Recorder | None = None,
        on_event: EventSink | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        self._inner = inner
        self._emit = emit
        self._recorder = recorder
        self._chain = on_event
        self._max_events = max_events
        self._ticks = 0
        self._pending: list[RecordEvent] = []
        self._sent = 0  # events accepted so far (pending included)
        self.dropped = 0
        """Record events dropped because the call reached ``max_events``."""
        self._caller_frames: list[bytes] = []
        self._closed = False
        self._in_dtmf = False
        self._end: tuple[str, str] | None = None  # (reason, ended_by) once the session asked
        # The agent's reply being spoken: its pieces, the offset of its first audio, whether a
        # committed reply is in progress and whether the caller paused it.
        self._pieces: list[str] = []
        self._line_start: float | None = None
        self._active = False
        self._paused = False
        self._turn: dict[str, Any] | None = None  # committed, waiting for its latencies
        self._turns = 0

    @classmethod
    def build(
        cls,
        factory: Callable[[EventSink], CallSession | None],
        emit: RecordEmitter,
        *,
        recorder: Recorder | None = None,
        on_event: EventSink | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> RecordedSession | None:
        """Build a session whose event callback is the new wrapper's :meth:`on_event`.

        Args:
            factory: builds the inner session from the event callback it should use (None:
                no session for this call; a ``recorder`` given is then closed).
            emit, recorder, on_event, max_events: as for the constructor.
        """
        box: list[RecordedSession] = []

        def forward(event: SessionEvent) -> None:
            if box:
                box[0].on_event(event)
            elif on_event is not None:
                on_event(event)

        inner = factory(forward)
        if inner is None:
            if recorder is not None:
                recorder.close()
            return None
        box.append(cls(inner, emit, recorder=recorder, on_event=on_event, max_events=max_events))
        return box[0]

    # ------------------------------------------------------------------ CallSession protocol

    @property
    def inner(self) -> CallSession:
        """The wrapped session."""
        return self._inner

    @property
    def recorder(self) -> Recorder | None:
        """What records the call's audio (None: nothing). Set it before the first tick: the
        recording's time 0 is the first frame."""
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: Recorder | None) -> None:
        self._recorder = recorder

    @property
    def hangup_requested(self) -> str | None:
        """The inner session's."""
        return self._inner.hangup_requested

    @hangup_requested.setter
    def hangup_requested(self, reason: str | None) -> None:
        self._inner.hangup_requested = reason

    @property
    def offset(self) -> float:
        """Seconds of call media so far: the offset of an event raised now."""
        return self._ticks * _TICK

    def on_start(self, info: CallInfo) -> None:
        """Passed through."""
        self._inner.on_start(info)

    def on_audio(self, frame: bytes) -> None:
        """Passed through; the frame is kept for this tick's recording."""
        self._inner.on_audio(frame)
        if self._recorder is not None:
            self._caller_frames.append(frame)

    def on_dtmf(self, digit: str) -> None:
        """Passed through; a ``dtmf`` event. A hang-up the session asks for now is ``dtmf``'s."""
        self._add("dtmf", self.offset, {"digit": digit})
        self._in_dtmf = True
        try:
            self._inner.on_dtmf(digit)
        finally:
            self._in_dtmf = False
        self._check_hangup("dtmf")

    def next_frame(self) -> bytes:
        """Passed through; ends the tick: the recorder gets its frames, the batch goes out."""
        frame = self._inner.next_frame()
        recorder = self._recorder
        if recorder is not None:
            frames = self._caller_frames
            if frames:
                self._caller_frames = []
            try:
                recorder.add(frames or _NO_FRAMES, frame)
            except Exception:
                log.exception("call_recording_failed")
                self._recorder = None
                self._close_recorder(recorder)
        self._ticks += 1
        if self._end is None and self._inner.hangup_requested is not None:
            self._check_hangup("agent")
        if self._pending:
            self._flush()
        return frame

    def rewind(self, ms: int) -> int:
        """Passed through to the inner session's ``rewind`` (0 when it has none)."""
        rewind = getattr(self._inner, "rewind", None)
        return int(rewind(ms)) if rewind is not None else 0

    def on_hangup(self, reason: str) -> None:
        """Passed through; the last events (the open reply, the pending turn, ``end`` when the
        session asked for it) go out and the recorder is closed."""
        if self._closed:
            return
        self._closed = True
        try:
            self._inner.on_hangup(reason)
        finally:
            now = self.offset
            self._check_hangup("agent")
            self._end_line(now, None)
            self._flush_turn()
            if self._end is not None:
                self._add("end", now, {"reason": self._end[0], "ended_by": self._end[1]})
            if self.dropped:
                # Past the cap on purpose: the one event that says the record is incomplete.
                self._pending.append(
                    RecordEvent(
                        "error",
                        now,
                        {"stage": "record", "error": f"{self.dropped} record events dropped"},
                    )
                )
            if self._pending:
                self._flush()
            recorder, self._recorder = self._recorder, None
            if recorder is not None:
                self._close_recorder(recorder)

    # ------------------------------------------------------------------------ session events

    def on_event(self, event: SessionEvent) -> None:
        """A session event (the voice session's ``on_event``): converted, then given to the
        chained receiver (whose errors reach the caller as they would without this wrapper; a
        failure to convert is logged and never reaches the call)."""
        if not self._closed:
            try:
                self._convert(event)
            except Exception:
                log.exception("record_event_failed", session_event=type(event).__name__)
        if self._chain is not None:
            self._chain(event)

    def _convert(self, event: SessionEvent) -> None:
        now = self.offset
        if isinstance(event, StateChanged):
            self._state_changed(event, now)
        elif isinstance(event, AgentText):
            self._pieces.append(event.text)
        elif isinstance(event, TranscriptReceived):
            if event.final:
                self._caller_line(event, now)
        elif isinstance(event, TurnCommitted):
            self._committed(event, now)
        elif isinstance(event, TurnLatency):
            self._latency(event, now)
        elif isinstance(event, Interruption):
            self._interruption(event, now)
        elif isinstance(event, ProviderFailed):
            self._add("error", now, {"stage": event.stage, "error": event.error})
        elif isinstance(event, CallEndRequested) and self._end is None:
            self._end = (event.reason, "dtmf" if self._in_dtmf else "agent")

    def _state_changed(self, event: StateChanged, now: float) -> None:
        new, old = event.new, event.old
        if new is AgentState.SPEAKING:
            self._active = True
            self._paused = False
            if self._line_start is None:
                self._line_start = now
            return
        if new is AgentState.THINKING:
            if old is AgentState.SPEAKING:
                self._end_line(now, None)  # a new reply replaces the one that played
            self._active = True
            return
        # LISTENING or USER_SPEAKING: the reply ended, unless the caller only paused it.
        if old in (AgentState.SPEAKING, AgentState.THINKING) and not self._paused:
            self._end_line(now, None)

    def _caller_line(self, event: TranscriptReceived, now: float) -> None:
        if not self._active:
            # A new final transcript outside a reply: any speculative reply started on the
            # previous one was dropped; the next pieces are a new speculative reply's.
            self._pieces.clear()
        data: dict[str, Any] = {"speaker": "caller", "text": event.text}
        offset = now
        if event.speech_start is not None:
            offset = self._past(now, event.at, event.speech_start)
            data["received"] = round(now, 3)
        if event.speech_end is not None:
            data["end"] = round(self._past(now, event.at, event.speech_end), 3)
        self._add("transcript", offset, data)

    def _committed(self, event: TurnCommitted, now: float) -> None:
        if self._line_start is not None:
            self._end_line(now, None)  # a reply still playing ends here (not expected)
        self._flush_turn()
        if not event.preemptive:
            self._pieces.clear()  # a dropped speculative reply's text was never spoken
        self._turn = {
            "index": self._turns,
            "text": event.text,
            "preemptive": event.preemptive,
            "_offset": now,
        }
        self._turns += 1

    def _latency(self, event: TurnLatency, now: float) -> None:
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        stages: dict[str, float | None] = dict.fromkeys(TURN_STAGES)
        speech_end, committed = event.speech_end, event.end_of_turn
        voice_to_voice = None
        if committed is not None:
            if speech_end is not None:
                stages["end_of_turn"] = _ms(committed - speech_end)
                if event.transcript_at is not None:
                    stages["stt"] = _ms(event.transcript_at - speech_end)
            previous = committed
            for name, at in (
                ("llm", event.llm_first_token),
                ("tts", event.tts_first_audio),
                ("transport", event.first_frame),
            ):
                if at is not None:
                    at = max(at, previous)
                    stages[name] = _ms(at - previous)
                    previous = at
            if speech_end is not None and event.first_frame is not None:
                voice_to_voice = _ms(max(previous, speech_end) - speech_end)
        if event.turn_model_ms is not None:
            stages["turn_model"] = round(max(0.0, event.turn_model_ms), 1)
        anchor = speech_end if speech_end is not None else committed
        if anchor is not None:
            turn["_offset"] = self._past(now, event.at, anchor)
        turn["preemptive"] = event.preemptive
        turn["stages"] = stages
        turn["voice_to_voice"] = voice_to_voice
        self._add_turn(turn)

    def _interruption(self, event: Interruption, now: float) -> None:
        self._add("interruption", now, {"kind": event.kind})
        if event.kind == "paused":
            self._paused = True
        elif event.kind == "resumed":
            self._paused = False
        else:  # "interrupted" or "false": the reply stopped; the caller heard `heard`
            self._paused = False
            self._end_line(now, event.heard)

    # ------------------------------------------------------------------------------ helpers

    def _end_line(self, now: float, heard: str | None) -> None:
        """The agent's reply ended; its line goes out if any of its audio played.

        Args:
            heard: the words the caller heard when the reply was cut; None: it was not cut.
        """
        start = self._line_start
        if start is not None:
            text = " ".join(self._pieces) if heard is None else heard
            data = {"speaker": "agent", "text": text, "end": round(now, 3)}
            data["interrupted"] = heard is not None
            self._add("transcript", start, data)
        self._pieces.clear()
        self._line_start = None
        self._active = False
        self._paused = False

    def _flush_turn(self) -> None:
        """A committed turn whose reply never played (no latencies): out with what is known."""
        turn, self._turn = self._turn, None
        if turn is not None:
            turn["stages"] = dict.fromkeys(TURN_STAGES)
            turn["voice_to_voice"] = None
            self._add_turn(turn)

    def _add_turn(self, turn: dict[str, Any]) -> None:
        offset = turn.pop("_offset")
        self._add("turn", offset, turn)

    def _check_hangup(self, ended_by: str) -> None:
        if self._end is None:
            reason = self._inner.hangup_requested
            if reason is not None:
                self._end = (reason, ended_by)

    @staticmethod
    def _past(now: float, at: float, moment: float) -> float:
        """The offset of ``moment`` (session clock) given that ``at`` is ``now``."""
        return max(0.0, now - max(0.0, at - moment))

    def _add(self, kind: str, offset: float, data: dict[str, Any]) -> None:
        if self._sent >= self._max_events:
            self.dropped += 1
            return
        self._sent += 1
        self._pending.append(RecordEvent(kind, offset, data))

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            self._emit(batch)
        except Exception:
            log.exception("record_events_emit_failed", events=len(batch))

    @staticmethod
    def _close_recorder(recorder: Recorder) -> None:
        try:
            recorder.close()
        except Exception:
            log.exception("call_recording_close_failed")


def _ms(seconds: float) -> float:
    """Non-negative milliseconds, to 0.1 ms."""
    return round(max(0.0, seconds) * 1000.0, 1)
