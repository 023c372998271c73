"""Websocket and Twilio calls whose session runs in a call worker, relayed over the frame link.

The main process terminates the media stream (:mod:`sipserver.gateway.websocket`) and keeps its
20 ms tick, jitter buffer, marks and ``clear``; the session (VAD, turns, STT/LLM/TTS) runs in the
call worker that hosts it. Both ends are sans-I/O and exchange frame link records
(docs/framelink.md, "Relayed calls"):

* Main side, :class:`RemoteSession`: the :class:`~sipserver.pipeline.session.CallSession` the
  gateway drives. ``on_start`` sends CALL_STARTED (a :class:`RelayedCallStarted`); each tick's
  ``next_frame`` sends one AUDIO record holding the caller frames of that tick (or one empty frame
  when the jitter buffer had none) and returns the oldest reply frame received from the worker.
  :class:`RemoteSessions` allocates call numbers (``>= RELAY_CALL_BASE``) and routes the worker's
  records back to the right session.
* Worker side, :class:`RelayedCalls`: builds each call's session through a factory and answers
  every tick record at once: ``on_audio`` per caller frame, then exactly one ``next_frame``, so
  the session sees the gateway's tick order unchanged. Session events go back as EVENT records
  (before the AUDIO reply of the tick that raised them), a session hangup as CALL_ENDED. With
  call records on, each session is wrapped in a
  :class:`~sipserver.pipeline.record_tap.RecordedSession` whose record events go back as EVENT
  records ``{"type": "record", ...}`` the same way (the last ones with the CALL_ENDED, or in
  answer to main's CALL_ENDED).

The reply to tick ``n`` is played at tick ``n + 1``: the relay adds one frame (20 ms) of latency
as long as the round trip takes less than a tick (docs/websocket.md, "Where the session runs").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sipserver.observability import get_logger
from sipserver.pipeline.call_record import RecordEvent
from sipserver.pipeline.events import SessionEvent, event_from_json, event_to_json
from sipserver.pipeline.record_tap import RecordedSession, record_batch
from sipserver.pipeline.session import CallInfo, CallSession, frame_bytes
from sipserver.rtp.framelink import (
    RELAY_CALL_BASE,
    Audio,
    AudioFrame,
    CallEnded,
    Dtmf,
    Event,
    LinkRecord,
    RelayedCallStarted,
)
from sipserver.rtp.recordings import RecorderFactory, SendPayload

__all__ = [
    "RelayedCalls",
    "RelayedSessionFactory",
    "RemoteFork",
    "RemoteSession",
    "RemoteSessions",
    "is_relayed",
]

log = get_logger(__name__)

RelayedSessionFactory = Callable[[CallInfo, Callable[[SessionEvent], None]], CallSession | None]
"""Builds a relayed call's session; the callable it gets receives the session's events. None:
no agent takes the call (it is ended with status 404)."""

_U32_MAX = 0xFFFF_FFFF


def is_relayed(record: LinkRecord) -> bool:
    """True for a record of a relayed call (call number ``>= RELAY_CALL_BASE``).

    An AUDIO record is judged by its first frame: the two ends never mix relayed and SIP
    calls' frames in one record.
    """
    if isinstance(record, RelayedCallStarted | Event):
        return True
    if isinstance(record, Audio):
        return bool(record.frames) and record.frames[0].call >= RELAY_CALL_BASE
    if isinstance(record, CallEnded | Dtmf):
        return record.call >= RELAY_CALL_BASE
    return False


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Hosted:
    session: CallSession
    info: CallInfo
    frame_bytes: int
    events: deque[Event]
    seq: int = 0
    timestamp: int = 0


@dataclass(slots=True)
class RelayCounters:
    """What :class:`RelayedCalls` counted since it was built."""

    started: int = 0
    """Relayed calls whose session started."""
    refused: int = 0
    """CALL_STARTED answered with CALL_ENDED at once (no agent, or the session failed)."""
    bad_frames: int = 0
    """Caller frames of the wrong length (not given to the session)."""
    events_dropped: int = 0
    """Events dropped because a call had too many waiting (oldest first)."""
    session_errors: int = 0
    """Calls ended because their session raised."""
    unknown_call: int = 0
    """Records for a call number not (or no longer) hosted here."""

    def as_dict(self) -> dict[str, int]:
        """The counters, prefixed ``relay_`` (for the worker's STATS record)."""
        return {
            "relay_started": self.started,
            "relay_refused": self.refused,
            "relay_bad_frames": self.bad_frames,
            "relay_events_dropped": self.events_dropped,
            "relay_session_errors": self.session_errors,
            "relay_unknown_call": self.unknown_call,
        }


class RelayedCalls:
    """The relayed calls a call worker hosts (sans-I/O).

    Feed it every record from the main process for which :func:`is_relayed` is true; send back
    what :meth:`handle` returns, in order. No clock: main's gateway tick drives each session.

    Args:
        factory: builds a call's session.
        max_events: events a call may have waiting for its next tick before the oldest are
            dropped (an event raised outside a tick, e.g. by an STT task, waits for the next).
        records: says, when a call starts, whether its session is recorded (call records on);
            None: never.
        recorders: builds the recorder of a recorded call (None: no recordings).
    """

    def __init__(
        self,
        factory: RelayedSessionFactory,
        *,
        max_events: int = 64,
        records: Callable[[CallInfo], bool] | None = None,
        recorders: RecorderFactory | None = None,
    ) -> None:
        self._factory = factory
        self._max_events = max_events
        self._records = records
        self._recorders = recorders
        self._calls: dict[int, _Hosted] = {}
        self.counters = RelayCounters()

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def calls(self) -> list[int]:
        """Call numbers hosted now."""
        return list(self._calls)

    def handle(self, record: LinkRecord) -> list[LinkRecord]:
        """Process one record from main; return the records to send back to it.

        Args:
            record: a record of a relayed call (see :func:`is_relayed`); others are ignored.

        Returns:
            The replies, in order: EVENT records, then one AUDIO record answering an AUDIO
            record, then CALL_ENDED for calls that ended.
        """
        if isinstance(record, Audio):
            return self._tick(record.frames)
        if isinstance(record, RelayedCallStarted):
            return self._start(record)
        if isinstance(record, CallEnded):
            entry = self._calls.pop(record.call, None)
            if entry is None:
                return []
            self._hang_up(entry, record.reason)
            return list(entry.events)  # what the session raised since (its last records)
        if not isinstance(record, Dtmf | Event):
            return []
        entry = self._calls.get(record.call)
        if entry is None:
            self.counters.unknown_call += 1
            return []
        if isinstance(record, Dtmf):
            return self._guarded(record.call, entry, lambda: entry.session.on_dtmf(record.digit))
        if isinstance(record, Event) and record.event.get("type") == "rewind":
            rewind = getattr(entry.session, "rewind", None)
            ms = record.event.get("ms")
            if rewind is not None and isinstance(ms, int) and not isinstance(ms, bool):
                return self._guarded(record.call, entry, lambda: rewind(ms))
        return []

    def __call__(self, record: LinkRecord) -> list[LinkRecord]:
        """Same as :meth:`handle` (the call worker's relay hook is a callable)."""
        return self.handle(record)

    def stats(self) -> dict[str, int]:
        """Counters for the worker's STATS: ``relay_calls`` (hosted now) and
        :meth:`RelayCounters.as_dict`."""
        return {"relay_calls": len(self._calls), **self.counters.as_dict()}

    def take_events(self) -> list[LinkRecord]:
        """Events waiting since the last tick of their call (the adapter may flush these
        between ticks; :meth:`handle` sends them with the next tick anyway)."""
        out: list[LinkRecord] = []
        for entry in self._calls.values():
            out.extend(entry.events)
            entry.events.clear()
        return out

    def end_all(self, reason: str) -> list[LinkRecord]:
        """Hang every session up (the worker stops); return the records for main: each call's
        last EVENT records, then its CALL_ENDED."""
        calls, self._calls = self._calls, {}
        out: list[LinkRecord] = []
        for call, entry in calls.items():
            self._hang_up(entry, reason)
            out.extend(entry.events)
            out.append(CallEnded(call, reason, 0))
        return out

    # ------------------------------------------------------------------------------ internals

    def _start(self, record: RelayedCallStarted) -> list[LinkRecord]:
        old = self._calls.pop(record.call, None)
        if old is not None:  # main reused a number it thinks is free: the old call is over
            self._hang_up(old, "replaced")
        info = CallInfo(
            call_id=record.call_id,
            agent=record.agent,
            caller=record.caller,
            called=record.called,
            sample_rate=record.sample_rate,
            transport=record.transport,
        )
        events: deque[Event] = deque()
        counters = self.counters
        limit = self._max_events
        call = record.call

        def push(event: Event) -> None:
            if len(events) >= limit:
                events.popleft()
                counters.events_dropped += 1
            events.append(event)

        def on_event(event: SessionEvent) -> None:
            push(Event(call, event_to_json(event)))

        def on_records(batch: list[RecordEvent]) -> None:
            push(Event(call, record_batch(batch)))

        def on_payload(payload: Mapping[str, Any]) -> None:
            push(Event(call, dict(payload)))

        try:
            session = self._new_session(info, on_event, on_records, on_payload)
            if session is not None:
                session.on_start(info)
        except Exception:
            log.exception("relayed_session_failed", call_id=info.call_id, agent=info.agent)
            counters.refused += 1
            return [CallEnded(call, "session failed to start", 500)]
        if session is None:
            log.warning("relayed_call_without_session", call_id=info.call_id, agent=info.agent)
            counters.refused += 1
            return [CallEnded(call, "no agent for this call", 404)]
        self._calls[call] = _Hosted(session, info, frame_bytes(info.sample_rate), events)
        counters.started += 1
        log.info("relayed_call_started", call_id=info.call_id, agent=info.agent, call=call)
        return []

    def _new_session(
        self,
        info: CallInfo,
        on_event: Callable[[SessionEvent], None],
        on_records: Callable[[list[RecordEvent]], None],
        on_payload: SendPayload,
    ) -> CallSession | None:
        """The call's session; with call records on, wrapped (its events go to both)."""
        if self._records is None or not self._records(info):
            return self._factory(info, on_event)
        factory = self._factory
        session = RecordedSession.build(
            lambda sink: factory(info, sink), on_records, on_event=on_event
        )
        if session is not None and self._recorders is not None:
            try:
                session.recorder = self._recorders(info, on_payload)
            except Exception:  # the call goes on unrecorded
                log.exception("call_recording_failed_to_start", call_id=info.call_id)
        return session

    def _tick(self, frames: Iterable[AudioFrame]) -> list[LinkRecord]:
        by_call: dict[int, list[bytes]] = {}
        for frame in frames:
            by_call.setdefault(frame.call, []).append(frame.pcm)
        events: list[LinkRecord] = []
        out: list[AudioFrame] = []
        ended: list[LinkRecord] = []
        calls = self._calls
        counters = self.counters
        for call, pcms in by_call.items():
            entry = calls.get(call)
            if entry is None:
                counters.unknown_call += 1
                continue
            session = entry.session
            try:
                for pcm in pcms:
                    if len(pcm) == entry.frame_bytes:
                        session.on_audio(pcm)
                    elif pcm:
                        counters.bad_frames += 1
                reply = session.next_frame()
            except Exception:
                ended.extend(self._failed(call, entry))
                continue
            events.extend(entry.events)
            entry.events.clear()
            out.append(AudioFrame(call, entry.seq, entry.timestamp, reply))
            entry.seq = (entry.seq + 1) & _U32_MAX
            entry.timestamp = (entry.timestamp + len(reply) // 2) & _U32_MAX
            ended.extend(self._hangup_if_requested(call, entry))
        if out:
            events.append(Audio(tuple(out)))
        events.extend(ended)
        return events

    def _guarded(self, call: int, entry: _Hosted, action: Callable[[], object]) -> list[LinkRecord]:
        try:
            action()
        except Exception:
            return self._failed(call, entry)
        return self._hangup_if_requested(call, entry)

    def _failed(self, call: int, entry: _Hosted) -> list[LinkRecord]:
        log.exception("relayed_session_error", call_id=entry.info.call_id)
        self.counters.session_errors += 1
        del self._calls[call]
        self._hang_up(entry, "session error")
        return [*entry.events, CallEnded(call, "session error", 500)]

    def _hangup_if_requested(self, call: int, entry: _Hosted) -> list[LinkRecord]:
        reason = entry.session.hangup_requested
        if reason is None:
            return []
        del self._calls[call]
        self._hang_up(entry, reason)
        log.info("relayed_call_hangup", call_id=entry.info.call_id, reason=reason)
        return [*entry.events, CallEnded(call, reason, 0)]

    @staticmethod
    def _hang_up(entry: _Hosted, reason: str) -> None:
        try:
            entry.session.on_hangup(reason)
        except Exception:
            log.exception("relayed_session_hangup_failed", call_id=entry.info.call_id)


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------


class RemoteSession:
    """A call's session that runs in a call worker, seen from the gateway (main side).

    Implements :class:`~sipserver.pipeline.session.CallSession`. Sends through ``send`` (the
    worker's ``FrameLink.send``: never blocks); :class:`RemoteSessions` feeds the worker's
    records back through :meth:`receive_frame`, :meth:`receive_event` and :meth:`receive_ended`.

    Args:
        call: the relayed call number (``>= RELAY_CALL_BASE``).
        send: queues a record for the worker.
        on_event: receives the session's events (the gateway's clear and browser feed).
        on_closed: called once with ``call`` when the gateway hung the session up.
        worker_id: the worker that hosts the session (logs, routing).
        max_frames: reply frames kept waiting at most; beyond, the oldest are dropped (counted
            in :attr:`overflow`) so a burst after a stall cannot add lasting latency.
    """

    def __init__(
        self,
        call: int,
        send: Callable[[LinkRecord], None],
        *,
        on_event: Callable[[SessionEvent], None] | None = None,
        on_closed: Callable[[int], None] | None = None,
        worker_id: str = "",
        max_frames: int = 4,
    ) -> None:
        if not RELAY_CALL_BASE <= call <= _U32_MAX:
            raise ValueError(f"relayed call number {call:#x} outside {RELAY_CALL_BASE:#x}..")
        self.call = call
        self.worker_id = worker_id
        self._send = send
        self._on_event = on_event
        self._on_closed = on_closed
        self._frames: deque[bytes] = deque(maxlen=max_frames)
        self._pending: list[bytes] = []
        self._silence = b""
        self._seq = 0
        self._timestamp = 0
        self._ended: str | None = None  # the worker ended the call (its reason)
        self._closed = False  # on_hangup ran
        self.lost = False
        """The worker went away: nothing is sent any more (the server closes the socket)."""
        self.info: CallInfo | None = None
        self.ticks = 0
        """``next_frame`` calls so far."""
        self.underflows = 0
        """Ticks with no reply frame from the worker (silence played; the first tick always)."""
        self.overflow = 0
        """Reply frames dropped because ``max_frames`` were already waiting."""
        self.received_frames = 0
        """Reply frames received from the worker."""

    # ------------------------------------------------------------------------- CallSession

    @property
    def hangup_requested(self) -> str | None:
        """The worker's hangup reason once every reply frame before it was played."""
        return self._ended if not self._frames else None

    @hangup_requested.setter
    def hangup_requested(self, reason: str | None) -> None:
        self._ended = reason

    def on_start(self, info: CallInfo) -> None:
        """Send CALL_STARTED: the worker builds the session."""
        self.info = info
        self._silence = bytes(frame_bytes(info.sample_rate))
        self._send_if_up(
            RelayedCallStarted(
                self.call,
                info.call_id,
                info.agent,
                info.caller,
                info.called,
                info.transport,
                info.sample_rate,
            )
        )

    def on_audio(self, frame: bytes) -> None:
        """Keep a caller frame for this tick's AUDIO record (sent by :meth:`next_frame`)."""
        if len(self._pending) < 8:  # the gateway gives 0, 1 or 2 per tick
            self._pending.append(frame)

    def on_dtmf(self, digit: str) -> None:
        """Forward a key press (DTMF record, method ``stream``)."""
        self._send_if_up(Dtmf(self.call, digit, 0, "stream"))

    def next_frame(self) -> bytes:
        """Send this tick (its caller frames, or one empty frame); return the oldest reply
        received (silence, counted in :attr:`underflows`, when none is waiting)."""
        self.ticks += 1
        if self._ended is None:
            pending, self._pending = self._pending, []
            if not pending:
                pending = [b""]
            frames = []
            for pcm in pending:
                frames.append(AudioFrame(self.call, self._seq, self._timestamp, pcm))
                self._seq = (self._seq + 1) & _U32_MAX
                self._timestamp = (self._timestamp + len(pcm) // 2) & _U32_MAX
            self._send_if_up(Audio(tuple(frames)))
        if self._frames:
            return self._frames.popleft()
        self.underflows += 1
        return self._silence

    def rewind(self, ms: int) -> int:
        """Forward the gateway's rewind (a ``clear`` threw away ``ms`` of reply audio) to the
        worker's session; returns 0 because what it takes back is known there, not here."""
        self._send_if_up(Event(self.call, {"type": "rewind", "ms": int(ms)}))
        return 0

    def on_hangup(self, reason: str) -> None:
        """The call ended: tell the worker (unless it ended the call itself or is gone)."""
        if self._closed:
            return
        if self._ended is None:
            self._send_if_up(CallEnded(self.call, reason, 0))
        self._closed = True
        if self._on_closed is not None:
            self._on_closed(self.call)

    # --------------------------------------------------------------------- from the worker

    def receive_frame(self, pcm: bytes) -> None:
        """A reply frame from the worker."""
        frames = self._frames
        if len(frames) == frames.maxlen:
            self.overflow += 1
        frames.append(pcm)
        self.received_frames += 1

    def receive_event(self, obj: Mapping[str, Any]) -> None:
        """An EVENT from the worker: decoded and given to ``on_event`` (unknown types and
        malformed events are logged and ignored: they must not end the call)."""
        try:
            event = event_from_json(obj)
        except ValueError as exc:
            log.warning("relayed_event_invalid", call=self.call, error=str(exc))
            return
        if event is not None and self._on_event is not None:
            self._on_event(event)

    def receive_ended(self, reason: str) -> None:
        """The worker ended the call (session hangup, failure, no agent)."""
        if self._ended is None:
            self._ended = reason or "ended"

    def worker_lost(self) -> None:
        """The worker went away: stop sending; the caller of this marks the call for closing."""
        self.lost = True

    def _send_if_up(self, record: LinkRecord) -> None:
        if not self.lost and not self._closed:
            self._send(record)


@dataclass(slots=True)
class _Route:
    worker_id: str
    session: RemoteSession


class RemoteFork:
    """An AI Listens fork (Twilio ``<Start><Stream>``) transcribed in a call worker (main side).

    Main terminates the fork's websocket and relays each transcribed track's frames under the
    track's own relayed call number (the first track's is :attr:`call`); the worker answers
    nothing but EVENT records (listens items) and, when it ends the fork, CALL_ENDED.

    Args:
        numbers: relayed call number of each track (``{"inbound": n, "outbound": m}``).
        send: queues a record for the worker.
        on_closed: called once with :attr:`call` when main closed the fork.
        worker_id: the worker that transcribes it.
    """

    def __init__(
        self,
        numbers: Mapping[str, int],
        send: Callable[[LinkRecord], None],
        *,
        on_closed: Callable[[int], None] | None = None,
        worker_id: str = "",
    ) -> None:
        self.tracks = dict(numbers)
        self.call = next(iter(self.tracks.values()))
        self.worker_id = worker_id
        self._send = send
        self._on_closed = on_closed
        self._seq = dict.fromkeys(self.tracks.values(), 0)
        self._timestamp = dict.fromkeys(self.tracks.values(), 0)
        self.ended: str | None = None
        """Why the worker ended the fork (or ``call worker lost``); None while it runs."""
        self._closed = False

    def start(self, info: CallInfo) -> None:
        """Send the fork's CALL_STARTED (``listens`` names each track's number)."""
        self._send_if_up(
            RelayedCallStarted(
                call=self.call,
                call_id=info.call_id,
                agent=info.agent,
                caller=info.caller,
                called=info.called,
                transport=info.transport,
                sample_rate=info.sample_rate,
                listens={"tracks": dict(self.tracks)},
            )
        )

    def push(self, track: str, pcm: bytes) -> None:
        """One frame of ``track`` (s16le at the fork's rate); tracks not transcribed are not
        sent."""
        number = self.tracks.get(track)
        if number is None or not pcm:
            return
        seq, timestamp = self._seq[number], self._timestamp[number]
        self._send_if_up(Audio((AudioFrame(number, seq, timestamp, pcm),)))
        self._seq[number] = (seq + 1) & _U32_MAX
        self._timestamp[number] = (timestamp + len(pcm) // 2) & _U32_MAX

    def close(self, reason: str) -> None:
        """Main ends the fork (CALL_ENDED to the worker, unless the worker ended it)."""
        if self._closed:
            return
        self._closed = True
        self._send_if_up(CallEnded(self.call, reason, 0))
        if self._on_closed is not None:
            self._on_closed(self.call)

    def receive_ended(self, reason: str) -> None:
        """The worker ended the fork (no agent, transcription failed, the hub was full)."""
        if self.ended is None:
            self.ended = reason or "ended by the call worker"

    def worker_lost(self) -> None:
        """The worker went away: nothing is sent any more."""
        self.ended = "call worker lost"

    def _send_if_up(self, record: LinkRecord) -> None:
        if self.ended is None:
            self._send(record)


class RemoteSessions:
    """Main side: the relayed calls in progress, their numbers and the worker of each.

    Args:
        on_closed: called with ``(worker_id, call)`` when a call's session was hung up (the
            dispatcher stops counting it against the worker).
    """

    def __init__(self, on_closed: Callable[[str, int], None] | None = None) -> None:
        self._on_closed = on_closed
        self._routes: dict[int, _Route] = {}
        self._forks: dict[int, RemoteFork] = {}
        """AI Listens forks by their first track's number."""
        self._fork_numbers: dict[int, str] = {}
        """Every fork track's number -> the worker (numbers in use)."""
        self._next = RELAY_CALL_BASE

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def forks(self) -> int:
        """AI Listens forks relayed now (not counted in ``len``: those are the sessions)."""
        return len(self._forks)

    def open(
        self,
        worker_id: str,
        send: Callable[[LinkRecord], None],
        *,
        on_event: Callable[[SessionEvent], None] | None = None,
    ) -> RemoteSession:
        """A new session hosted by ``worker_id`` (its CALL_STARTED goes out at ``on_start``)."""
        call = self._allocate()
        session = RemoteSession(
            call, send, on_event=on_event, on_closed=self._closed, worker_id=worker_id
        )
        self._routes[call] = _Route(worker_id, session)
        return session

    def open_fork(
        self, worker_id: str, send: Callable[[LinkRecord], None], tracks: Iterable[str]
    ) -> RemoteFork:
        """A new AI Listens fork transcribed by ``worker_id``: one relayed call number per
        track (its CALL_STARTED goes out at :meth:`RemoteFork.start`)."""
        numbers: dict[str, int] = {}
        for track in tracks:
            numbers[track] = number = self._allocate()
            self._fork_numbers[number] = worker_id  # reserved until the fork closes
        fork = RemoteFork(numbers, send, on_closed=self._fork_closed, worker_id=worker_id)
        self._forks[fork.call] = fork
        return fork

    def forks_of(self, worker_id: str) -> list[RemoteFork]:
        """The forks a worker transcribes."""
        return [f for f in self._forks.values() if f.worker_id == worker_id]

    def _fork_closed(self, call: int) -> None:
        fork = self._forks.pop(call, None)
        if fork is None:
            return
        for number in fork.tracks.values():
            self._fork_numbers.pop(number, None)
        if self._on_closed is not None:
            self._on_closed(fork.worker_id, call)

    def calls_of(self, worker_id: str) -> list[RemoteSession]:
        """The sessions a worker hosts."""
        return [r.session for r in self._routes.values() if r.worker_id == worker_id]

    def handle(self, worker_id: str, record: LinkRecord) -> None:
        """Route a relayed call's record from ``worker_id`` to its session (others ignored)."""
        if isinstance(record, Audio):
            routes = self._routes
            for frame in record.frames:
                route = routes.get(frame.call)
                if route is not None and route.worker_id == worker_id:
                    route.session.receive_frame(frame.pcm)
            return
        number = getattr(record, "call", -1)
        fork = self._forks.get(number)
        if fork is not None and fork.worker_id == worker_id:
            if isinstance(record, CallEnded):
                fork.receive_ended(record.reason)
            return
        route = self._routes.get(number)
        if route is None or route.worker_id != worker_id:
            return
        if isinstance(record, Event):
            route.session.receive_event(record.event)
        elif isinstance(record, CallEnded):
            route.session.receive_ended(record.reason)

    def worker_lost(self, worker_id: str) -> list[RemoteSession]:
        """Mark every session of a lost worker; return them (their sockets must be closed)."""
        lost = self.calls_of(worker_id)
        for session in lost:
            session.worker_lost()
        for fork in self.forks_of(worker_id):
            fork.worker_lost()
        return lost

    def _allocate(self) -> int:
        call = self._next
        while call in self._routes or call in self._fork_numbers:
            call = call + 1 if call < _U32_MAX else RELAY_CALL_BASE
        self._next = call + 1 if call < _U32_MAX else RELAY_CALL_BASE
        return call

    def _closed(self, call: int) -> None:
        route = self._routes.pop(call, None)
        if route is None:
            return
        session = route.session
        log.info(
            "relayed_call_ended",
            call_id=session.info.call_id if session.info is not None else "",
            worker=route.worker_id,
            ticks=session.ticks,
            replies=session.received_frames,
            underflows=session.underflows,
            overflow=session.overflow,
            worker_lost=session.lost,
        )
        if self._on_closed is not None:
            self._on_closed(route.worker_id, call)
