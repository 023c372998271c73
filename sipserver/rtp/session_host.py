"""Runs the per-call sessions of SIP calls in the main process, fed by the frame link.

Sans-I/O: :meth:`SessionHost.handle` takes one record from a worker and returns the records to
send back. The worker's media clock is the master clock: pjsua2 delivers a frame of every call
every 20 ms whether or not RTP arrived (silence or concealment fills the gaps), so each AUDIO
record received is answered by one AUDIO record with the next outbound frame of the same calls.
No timer in the main process, no drift between the two directions.

Call records: when :attr:`SessionHost.on_record_events` is set (and ``records_on`` says records
are kept), each call's session is wrapped in a
:class:`~sipserver.pipeline.record_tap.RecordedSession` and its record payloads go to that hook
as ``(worker_id, call, {"type": "record", "events": [...]})``, the same form a call worker sends
in EVENT records, so main takes both kinds of call through one seam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sipserver.observability import get_logger
from sipserver.pipeline.call_record import RecordEvent
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.record_tap import (
    RecordedSession,
    RecordEventsHook,
    record_batch,
)
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.rtp.framelink import (
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Dtmf,
    LinkRecord,
    Ping,
    Pong,
    Stats,
)
from sipserver.rtp.recordings import RecorderFactory
from sipserver.sip.headers import AGENT_HEADER

__all__ = ["EventSessionFactory", "SessionFactory", "SessionHost"]

log = get_logger(__name__)

SessionFactory = Callable[[CallInfo], CallSession | None]
"""Builds the session of a call (None: no agent takes it; the call is ended)."""

EventSessionFactory = Callable[[CallInfo, Callable[[SessionEvent], None]], CallSession | None]
"""Builds the session of a call whose events go to the callable given (recorded calls)."""


@dataclass(slots=True)
class _Call:
    session: CallSession
    info: CallInfo
    seq: int = 0
    timestamp: int = 0


class SessionHost:
    """The sessions of every SIP call, keyed by (worker, worker-local call number).

    Args:
        factory: builds a session for a started call.
        sample_rate: the workers' PCM sample rate (frames are 20 ms at this rate).
        event_factory: builds a recorded call's session with an event callback (None: with
            ``factory``, and the record has no transcript or turns, only DTMF and the end).
        records_on: says whether call records are kept now (read at each call's start; None:
            whenever :attr:`on_record_events` is set).
    """

    def __init__(
        self,
        factory: SessionFactory,
        *,
        sample_rate: int = 8000,
        event_factory: EventSessionFactory | None = None,
        records_on: Callable[[], bool] | None = None,
    ) -> None:
        self._factory = factory
        self._event_factory = event_factory
        self._records_on = records_on
        self.on_record_events: RecordEventsHook | None = None
        """Main's record seam: when set, sessions are recorded and their record payloads go
        here (see the module doc)."""
        self.recorders: RecorderFactory | None = None
        """Builds the recorder of a recorded call (None: no recordings)."""
        self._rate = sample_rate
        self._samples = sample_rate // 50
        self._calls: dict[tuple[str, int], _Call] = {}
        self.worker_stats: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def calls_of(self, worker_id: str) -> list[int]:
        """Call numbers in progress on a worker."""
        return [call for (wid, call) in self._calls if wid == worker_id]

    def handle(self, worker_id: str, record: LinkRecord) -> list[LinkRecord]:
        """Process one record from ``worker_id``; return the records to send back to it."""
        if isinstance(record, Audio):
            return self._audio(worker_id, record)
        if isinstance(record, CallStarted):
            return self._started(worker_id, record)
        if isinstance(record, CallEnded):
            call = self._calls.pop((worker_id, record.call), None)
            if call is not None:
                call.session.on_hangup(record.reason)
            return []
        if isinstance(record, Dtmf):
            entry = self._calls.get((worker_id, record.call))
            if entry is not None:
                entry.session.on_dtmf(record.digit)
                return self._hangup_if_requested(worker_id, record.call, entry)
            return []
        if isinstance(record, Ping):
            return [Pong(record.nonce)]
        if isinstance(record, Stats):
            self.worker_stats[worker_id] = dict(record.counters)
        return []

    def worker_lost(self, worker_id: str) -> int:
        """End every session of a worker that went away; return how many."""
        keys = [key for key in self._calls if key[0] == worker_id]
        for key in keys:
            self._calls.pop(key).session.on_hangup("media worker lost")
        return len(keys)

    def _started(self, worker_id: str, record: CallStarted) -> list[LinkRecord]:
        info = CallInfo(
            call_id=record.sip_call_id,
            agent=record.headers.get(AGENT_HEADER, ""),
            caller=record.from_uri,
            called=record.to_uri,
            sample_rate=self._rate,
            transport="sip",
        )
        session = self._new_session(worker_id, record.call, info)
        if session is None:
            log.warning("call_without_session", call_id=info.call_id, called=info.called)
            return [CallEnded(record.call, "no agent for this call", 404)]
        session.on_start(info)
        self._calls[(worker_id, record.call)] = _Call(session, info)
        log.info("call_session_started", call_id=info.call_id, agent=info.agent, codec=record.codec)
        return []

    def _new_session(self, worker_id: str, call: int, info: CallInfo) -> CallSession | None:
        hook = self.on_record_events
        if hook is None or (self._records_on is not None and not self._records_on()):
            return self._factory(info)

        def emit(events: list[RecordEvent]) -> None:
            hook(worker_id, call, record_batch(events))

        event_factory = self._event_factory
        if event_factory is not None:
            session = RecordedSession.build(lambda sink: event_factory(info, sink), emit)
        else:
            session = RecordedSession.build(lambda sink: self._factory(info), emit)
        if session is not None and self.recorders is not None:
            try:
                session.recorder = self.recorders(info, lambda p: hook(worker_id, call, p))
            except Exception:  # the call goes on unrecorded
                log.exception("call_recording_failed_to_start", call_id=info.call_id)
        return session

    def _audio(self, worker_id: str, record: Audio) -> list[LinkRecord]:
        out: list[AudioFrame] = []
        ended: list[LinkRecord] = []
        calls = self._calls
        for frame in record.frames:
            entry = calls.get((worker_id, frame.call))
            if entry is None:
                continue
            entry.session.on_audio(frame.pcm)
            pcm = entry.session.next_frame()
            out.append(AudioFrame(frame.call, entry.seq, entry.timestamp, pcm))
            entry.seq += 1
            entry.timestamp += self._samples
            ended.extend(self._hangup_if_requested(worker_id, frame.call, entry))
        result: list[LinkRecord] = []
        if out:
            result.append(Audio(tuple(out)))
        result.extend(ended)
        return result

    def _hangup_if_requested(self, worker_id: str, call: int, entry: _Call) -> list[LinkRecord]:
        reason = entry.session.hangup_requested
        if reason is None:
            return []
        del self._calls[(worker_id, call)]
        entry.session.on_hangup(reason)
        log.info("call_session_hangup", call_id=entry.info.call_id, reason=reason)
        return [CallEnded(call, reason, 0)]
