"""Call worker: answers SIP calls with the native engine and runs their sessions itself.

Run as a process (the dispatcher starts one per core with ``server.media.engine: native``)::

    python -m sipserver.rtp.call_worker --link PATH --worker-id w1 --sip-host 127.0.0.1 \
        --sip-port 0 --rtp-port 20000 --rtp-port-count 500 --capacity 150 [--sample-rate 8000]

The pjsua2 worker's options plus ``--capacity``. The process:

1. starts a :class:`~sipserver.rtp.native_engine.NativeEngine` (SIP UA on loopback + RTP port
   range), connects the frame link and says HELLO (``kind: native``, its capacity);
2. waits for the configuration from main (a CONFIG record, sent after HELLO and after every
   reload that applied): validates it again, builds one
   :class:`~sipserver.pipeline.runtime.VoiceRuntime` on a thread (so one VAD batcher per rate
   for every call of the process), warms its models, then reports ``ready: 1`` in STATS; a later
   CONFIG prepares the new parts on a thread and swaps them for new calls;
3. runs ONE :class:`~sipserver.rtp.rtp_stream.MediaClock` for every call it holds: each 20 ms
   tick reads a frame of each call's RTP stream, feeds its session, and writes the session's next
   frame back (no per-call timer, no drift between the directions); it stops itself on a tick
   without a hosted call and the next hosted call starts it again (an idle worker sleeps);
4. tells main what happens: CALL_STARTED with ``hosted: true`` (main builds no session), DTMF,
   CALL_ENDED, STATS; a CALL_ENDED from main hangs the call up.

With call records on (``server.records.store`` not ``none``) every hosted voice or echo session
is wrapped in a :class:`~sipserver.pipeline.record_tap.RecordedSession`: its record events go to
main as EVENT records ``{"type": "record", "events": [...]}`` of the call, and the end of every
hosted SIP call sends ``{"type": "record_media", ...}`` (the stream's counters and codec) before
its CALL_ENDED (docs/framelink.md, "Call records").

AI Listens calls are hosted too (:mod:`sipserver.rtp.listens_host`): a SIP call to a listens
number gets a receive-only :class:`~sipserver.rtp.listens_host.ListenSession`, a Twilio fork
main relays (a CALL_STARTED with ``listens``) goes to :class:`~.listens_host.ListensForks`; what
their transcription publishes goes to main's dashboard hub in EVENT records.

Records from main that are not for this module (websocket calls relayed to the worker: main's
CALL_STARTED, their AUDIO and CALL_ENDED, call numbers >= :data:`RELAYED_CALLS_BASE`, and any
newer record type) go to :attr:`CallWorker.relay` when one is plugged in (see
``relay_factory``), else are counted in ``records_unhandled``.

SIGTERM/SIGINT hang every call up (BYE) and exit 0; the link dropping hangs up and exits 1 (the
pool restarts the worker); an engine that cannot start exits 2. Same contract as
:mod:`sipserver.rtp.pjsua2_worker`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from sipserver.config import Agent, Config, ConfigError
from sipserver.observability import LogFormat, Metrics, configure_logging, get_logger
from sipserver.pipeline.call_record import RecordEvent
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.record_tap import RecordedSession, Recorder, record_batch
from sipserver.pipeline.runtime import ListenParts, VoiceRuntime
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.rtp.framelink import (
    CallEnded,
    CallStarted,
    Configuration,
    Dtmf,
    Event,
    FrameLink,
    Hello,
    LinkRecord,
    Ping,
    Pong,
    Stats,
    open_link,
)
from sipserver.rtp.listens_host import ListenSession, ListensForks, ListensHost
from sipserver.rtp.native_engine import EngineSettings, NativeEngine
from sipserver.rtp.recordings import CallRecorders, RecorderFactory, SendPayload
from sipserver.rtp.relay import RelayedCalls
from sipserver.rtp.rtp_stream import MediaClock
from sipserver.rtp.sessions import CallSessions, config_from_record
from sipserver.rtp.worker_args import common_options, worker_parser
from sipserver.rtp.worker_metrics import pipeline_totals
from sipserver.rtp.worker_stats import MediaTotals
from sipserver.sip.headers import AGENT_HEADER

__all__ = [
    "RELAYED_CALLS_BASE",
    "CallWorker",
    "CallWorkerOptions",
    "MainRecordHandler",
    "main",
    "parse_args",
    "relayed_calls",
]

log = get_logger("sipserver.rtp.call_worker")  # not "__main__" when run with -m

RELAYED_CALLS_BASE = 0x8000_0000
"""Call numbers main allocates for the calls it relays to a worker start here (the engine's
own numbers stay below)."""

PIPELINE_METRICS_INTERVAL = 1.0
"""Seconds: a change of the voice pipeline's metrics goes to main in a STATS this soon."""

MainRecordHandler = Callable[[LinkRecord], Iterable[LinkRecord]]
"""Takes a record from main this module does not handle; returns the records to send back."""


# ------------------------------------------------------------------------------------------------
# What the worker needs of the engine (sipserver/rtp/native_engine.py, rtp_stream.py)
# ------------------------------------------------------------------------------------------------


class _Stream(Protocol):
    def read_frame(self) -> bytes: ...

    def write_frame(self, pcm: bytes) -> None: ...

    def stats(self) -> dict[str, int]: ...

    @property
    def sample_rate(self) -> int: ...


class _Call(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def sip_call_id(self) -> str: ...

    @property
    def from_uri(self) -> str: ...

    @property
    def to_uri(self) -> str: ...

    @property
    def request_uri(self) -> str: ...

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def codec(self) -> str: ...

    @property
    def remote_rtp(self) -> str: ...

    @property
    def stream(self) -> _Stream: ...


class _Engine(Protocol):
    @property
    def sip_address(self) -> tuple[str, int]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def hangup(self, number: int, reason: str) -> None: ...

    def stats(self) -> dict[str, int]: ...


class _Clock(Protocol):
    late_ticks: int
    ticks: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


EngineFactory = Callable[
    ["CallWorkerOptions", "CallWorker"],
    _Engine,
]
"""Builds the engine of a worker (tests may pass another); calls back the worker's
``on_call_started``, ``on_call_ended`` and ``on_dtmf``."""


def _native_engine(options: CallWorkerOptions, worker: CallWorker) -> _Engine:
    settings = EngineSettings(
        sip_host=options.sip_host,
        sip_port=options.sip_port,
        rtp_host=options.rtp_host,
        rtp_port_start=options.rtp_port,
        rtp_port_count=options.rtp_port_count,
        sample_rate=options.sample_rate,
        session_timers=options.session_timers,
        session_expires=options.session_expires,
        min_se=options.min_se,
        answer_delay=options.answer_delay,
        rtp_timeout=options.rtp_timeout,
        capacity=options.capacity,
    )
    return NativeEngine(
        settings,
        on_call_started=worker.on_call_started,
        on_call_ended=worker.on_call_ended,
        on_dtmf=worker.on_dtmf,
    )


# ------------------------------------------------------------------------------------------------
# The worker
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallWorkerOptions:
    """The command line of a call worker."""

    link: str
    worker_id: str
    sip_host: str = "127.0.0.1"
    sip_port: int = 0
    rtp_host: str = "127.0.0.1"
    rtp_port: int = 20000
    rtp_port_count: int = 500
    capacity: int = 100
    sample_rate: int = 8000
    session_timers: str = "optional"
    session_expires: int = 1800
    min_se: int = 90
    answer_delay: float = 0.0
    rtp_timeout: float = 60.0
    stats_interval: float = 5.0
    log_format: LogFormat = "auto"
    log_level: str = "info"


#: Calls played per pass of the event loop. A tick costs ~20 us per call (~10 ms at 500
#: calls); run in one callback it made a SIP message, or a call set-up step between two
#: awaits, wait for the whole tick (INVITE->200 p99 23.5 ms at 500 calls, bench/media_load.py).
#: Chained slices (each schedules the next with ``call_soon``) let the I/O that arrived run
#: between them: asyncio runs a callback scheduled during a pass after the next select, and
#: appends the I/O callbacks that select found after it, so they wait for one slice at most.
TICK_SLICE = 64


@dataclass(slots=True)
class _Hosted:
    """A call whose session runs here."""

    call: _Call
    session: CallSession
    info: CallInfo
    ending: bool = False
    """Hung up here, waiting for the engine's end: no longer fed."""
    recorded: bool = False
    """Call records were on when it started: ``record_media`` goes out before CALL_ENDED."""


class CallWorker:
    """The worker process's state: engine, clock, sessions and the link to main.

    Args:
        options: the command line.
        engine_factory: builds the SIP/RTP engine (the native engine by default).
        clock_factory: builds the media clock from a tick callback (the 20 ms MediaClock).
        relay_factory: builds the handler of records from main this module does not handle
            (relayed websocket calls); it may read :attr:`sessions` when a call starts.
    """

    def __init__(
        self,
        options: CallWorkerOptions,
        *,
        engine_factory: EngineFactory = _native_engine,
        clock_factory: Callable[[Callable[[], None]], _Clock] = MediaClock,
        relay_factory: Callable[[CallWorker], MainRecordHandler] | None = None,
    ) -> None:
        self.options = options
        self._samples = options.sample_rate // 50
        self.engine = engine_factory(options, self)
        self.clock = clock_factory(self.tick)
        self.relay: MainRecordHandler | None = (
            relay_factory(self) if relay_factory is not None else None
        )
        self.link: FrameLink | None = None
        self.config: Config | None = None
        self.voice: VoiceRuntime | None = None
        self.sessions: CallSessions | None = None
        """Builds each call's session (None until the first CONFIG is applied)."""
        self.config_sequence = 0
        self.call_recorders = CallRecorders(lambda: self.config)
        """Records the calls of agents with ``recording.enabled`` (one encoder thread)."""
        self.recorders: RecorderFactory | None = self.call_recorders
        """Builds the recorder of a call whose session is recorded (None: no recordings);
        called only when call records are on."""
        self._hosted: dict[int, _Hosted] = {}
        self.listens = ListensHost(self._listen_parts)
        """The AI Listens calls monitored here (SIP calls to listens numbers, Twilio forks)."""
        self.forks = ListensForks(self.listens, self._agent_of, self._send)
        self._config_lock = asyncio.Lock()
        self._config_tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.metrics = Metrics()
        """What this worker's voice pipeline observes (turn latencies...): forwarded to main in
        STATS (:mod:`sipserver.rtp.worker_metrics`), never served here."""
        self.media = MediaTotals()
        """Frames played, late frames and the RTP counters of ended calls (running totals)."""
        self._late_ticks_seen = 0
        self._clock_wanted = False
        """The worker runs (:meth:`run`): the clock ticks while a call is hosted."""
        self._stats_sent = 0
        """STATS records sent so far (``stats_sent``: tells a newer STATS from an older one
        while the idle clock's ``ticks`` stand still)."""
        self.counters: dict[str, int] = {
            "calls_started": 0,
            "calls_ended": 0,
            "calls_without_session": 0,
            "session_errors": 0,
            "dtmf": 0,
            "config_errors": 0,
            "records_unhandled": 0,
        }

    @property
    def ready(self) -> bool:
        """True once a configuration is applied and its models are warm."""
        return self.sessions is not None

    # -- engine callbacks ---------------------------------------------------------------------

    def _send(self, record: LinkRecord) -> None:
        if self.link is not None:
            self.link.send(record)

    def on_call_started(self, call: _Call) -> None:
        """The engine answered a call: give it a session here, or relay it to main."""
        self.counters["calls_started"] += 1
        info = CallInfo(
            call_id=call.sip_call_id,
            agent=_header(call.headers, AGENT_HEADER),
            caller=call.from_uri,
            called=call.to_uri,
            sample_rate=call.stream.sample_rate,
            transport="sip",
        )
        sessions = self.sessions
        started = CallStarted(
            call=call.number,
            sip_call_id=call.sip_call_id,
            from_uri=call.from_uri,
            to_uri=call.to_uri,
            request_uri=call.request_uri,
            codec=call.codec,
            remote_rtp=call.remote_rtp,
            headers=dict(call.headers),
        )
        if sessions is not None and sessions.is_listens(info):
            self._start_listens(call, info, started)
            return
        recorded = self.records_on
        if sessions is None:
            session = None
        elif recorded:
            session = self._recorded_session(sessions, info, call.number)
        else:
            session = sessions.new_session(info)
        if session is None:
            self.counters["calls_without_session"] += 1
            why = "no agent for this call" if sessions is not None else "not configured yet"
            log.warning("call_without_session", call_id=info.call_id, called=info.called, why=why)
            self.engine.hangup(call.number, why)
            return
        session.on_start(info)
        self._hosted[call.number] = _Hosted(call, session, info, recorded=recorded)
        self._resume_clock()
        self._send(replace(started, hosted=True))
        log.info("call_session_started", call_id=info.call_id, agent=info.agent, codec=call.codec)

    @property
    def records_on(self) -> bool:
        """Call records are kept (``server.records.store`` is not ``none``)."""
        return self.config is not None and self.config.server.records.store != "none"

    def _recorded_session(
        self, sessions: CallSessions, info: CallInfo, number: int
    ) -> CallSession | None:
        """The call's session wrapped so that its record events go to main (EVENT records)."""

        def emit(events: list[RecordEvent]) -> None:
            self._send(Event(number, record_batch(events)))

        session = RecordedSession.build(lambda on_event: sessions.new_session(info, on_event), emit)
        if session is not None and self.recorders is not None:
            try:
                session.recorder = self.recorders(info, lambda p: self._send(Event(number, p)))
            except Exception:  # the call goes on unrecorded
                log.exception("call_recording_failed_to_start", call_id=info.call_id)
        return session

    def _start_listens(self, call: _Call, info: CallInfo, started: CallStarted) -> None:
        """A PBX forks a call to a listens number: answered silently, transcribed here; its
        CALL_STARTED goes first, then the session's ``listens_started`` EVENT."""
        agent = self._agent_of(info.agent)
        parts = self.listens.parts_for(agent) if agent is not None else None
        if agent is None or parts is None:
            self.counters["calls_without_session"] += 1
            log.warning("call_without_session", call_id=info.call_id, why="no listens parts")
            self.engine.hangup(call.number, "listens unavailable")
            return
        number = call.number

        def send(item: dict[str, object]) -> None:
            self._send(Event(number, item))

        session = ListenSession(self.listens, agent, parts, send)
        self._hosted[number] = hosted = _Hosted(call, session, info, recorded=self.records_on)
        self._resume_clock()
        self._send(replace(started, hosted=True))
        session.on_start(info)
        self._hangup_if_requested(hosted)
        log.info("listens_call_hosted", call_id=info.call_id, agent=info.agent)

    def _listen_parts(self, agent: Agent) -> ListenParts | None:
        return self.voice.listen_parts(agent) if self.voice is not None else None

    def _agent_of(self, slug: str) -> Agent | None:
        return self.config.agent_by_slug(slug) if self.config is not None and slug else None

    def on_call_ended(self, call: _Call, reason: str, status: int) -> None:
        """The call is over (BYE, CANCEL, RTP timeout, our hang-up...)."""
        self.media.call_ended(call.stream)
        hosted = self._hosted.pop(call.number, None)
        if hosted is None:
            return  # never reported to main (hung up at start)
        self._end_session(hosted, reason)
        self.counters["calls_ended"] += 1
        self._send_media(hosted)
        self._send(CallEnded(call.number, reason, status))

    def on_dtmf(self, call: _Call, digit: str, duration_ms: int, method: str) -> None:
        """A digit from the caller (RFC 4733 or SIP INFO)."""
        self.counters["dtmf"] += 1
        hosted = self._hosted.get(call.number)
        if hosted is None:
            return
        self._send(Dtmf(call.number, digit, duration_ms, "info" if method == "info" else "rfc4733"))
        try:
            hosted.session.on_dtmf(digit)
        except Exception:
            self._session_failed(hosted)
            return
        self._hangup_if_requested(hosted)

    # -- the media clock ------------------------------------------------------------------------

    def tick(self) -> None:
        """One 20 ms tick: every call's frame in, its session's frame out (in slices of
        :data:`TICK_SLICE` calls, see there)."""
        if not self._hosted:
            # Idle: no 50 Hz wake-ups without a call (they cost ~1% of a core per worker);
            # the next hosted call starts the clock again (_resume_clock).
            self.clock.stop()
            return
        late_ticks = self.clock.late_ticks
        late = late_ticks != self._late_ticks_seen  # the clock counted this tick late
        self._late_ticks_seen = late_ticks
        self._play(list(self._hosted.values()), 0, late)

    def _resume_clock(self) -> None:
        """A call is hosted: make sure the clock ticks (it stops itself when idle)."""
        if self._clock_wanted:
            self.clock.start()

    def _play(self, calls: list[_Hosted], start: int, late: bool) -> None:
        """Play ``calls[start:start + TICK_SLICE]``; chain the next slice with ``call_soon``."""
        end = start + TICK_SLICE
        hosted_now = self._hosted
        played = 0
        for hosted in calls[start:end]:
            if hosted.ending or hosted_now.get(hosted.call.number) is not hosted:
                continue  # hung up, or ended between two slices
            stream = hosted.call.stream
            session = hosted.session
            try:
                session.on_audio(stream.read_frame())
                stream.write_frame(session.next_frame())
            except Exception:
                self._session_failed(hosted)
                continue
            played += 1
            if session.hangup_requested is not None:
                self._hangup_if_requested(hosted)
        self.media.frames_played(played, late=late)
        if end < len(calls):
            asyncio.get_running_loop().call_soon(self._play, calls, end, late)

    def _hangup_if_requested(self, hosted: _Hosted) -> None:
        reason = hosted.session.hangup_requested
        if reason is None:
            return
        if hosted.ending:
            return
        hosted.ending = True
        log.info("call_session_hangup", call_id=hosted.info.call_id, reason=reason)
        self.engine.hangup(hosted.call.number, reason)  # on_call_ended follows

    def _session_failed(self, hosted: _Hosted) -> None:
        self.counters["session_errors"] += 1
        log.exception("call_session_failed", call_id=hosted.info.call_id)
        self.engine.hangup(hosted.call.number, "session error")
        # Never fed again, even if the engine reports the end later.
        if self._hosted.pop(hosted.call.number, None) is not None:
            self._end_session(hosted, "session error")
            self.counters["calls_ended"] += 1
            self._send_media(hosted)
            self._send(CallEnded(hosted.call.number, "session error", 0))

    def _send_media(self, hosted: _Hosted) -> None:
        """A recorded call's ``record_media`` EVENT: what its RTP stream counted, its codec."""
        if not hosted.recorded:
            return
        call = hosted.call
        stats = call.stream.stats()
        media = {
            "type": "record_media",
            "lost": int(stats.get("lost", 0)),
            "concealed": int(stats.get("concealed_frames", 0)),
            "late": int(stats.get("late", 0)),
            "codec": call.codec,
        }
        self._send(Event(call.number, media))

    def _end_session(self, hosted: _Hosted, reason: str) -> None:
        try:
            hosted.session.on_hangup(reason)
        except Exception:
            log.exception("call_session_close_failed", call_id=hosted.info.call_id)

    # -- records from main ----------------------------------------------------------------------

    def on_record(self, record: LinkRecord) -> None:
        """One record from main."""
        if isinstance(record, Configuration):
            task = asyncio.get_running_loop().create_task(self._configure(record))
            self._config_tasks.add(task)
            task.add_done_callback(self._config_tasks.discard)
        elif isinstance(record, CallEnded) and record.call in self._hosted:
            self.engine.hangup(record.call, record.reason or "hung up by the server")
        elif isinstance(record, (Ping, Pong)):
            pass  # the link answers PINGs itself
        elif self.forks.handle(record):
            pass  # an AI Listens fork main relays
        else:
            self._to_relay(record)

    def _to_relay(self, record: LinkRecord) -> None:
        if self.relay is None:
            self.counters["records_unhandled"] += 1
            return
        for reply in self.relay(record):
            self._send(reply)

    async def _configure(self, record: Configuration) -> None:
        async with self._config_lock:
            try:
                config = config_from_record(record)
            except ConfigError as exc:
                # main validated it: a mismatch of versions between main and this worker.
                self.counters["config_errors"] += 1
                log.error("worker_config_invalid", errors=exc.errors, sequence=record.sequence)
                return
            try:
                if self.voice is None:
                    voice = await asyncio.to_thread(
                        VoiceRuntime, config, config_path=record.config_path, metrics=self.metrics
                    )
                    self.voice = voice
                else:
                    voice = self.voice
                    voice.apply(await asyncio.to_thread(voice.prepare, config))
                await voice.start()  # loads what is new; loaded models are kept
            except Exception as exc:
                self.counters["config_errors"] += 1
                log.error("worker_config_failed", error=repr(exc), sequence=record.sequence)
                return
            self.config = config
            if self.sessions is None:
                self.sessions = CallSessions(self._current_config, voice)
            self.config_sequence = record.sequence
            log.info("worker_configured", sequence=record.sequence, agents=len(config.agents))
            self._send_stats()  # says ready at once

    def _current_config(self) -> Config:
        assert self.config is not None
        return self.config

    # -- stats and lifecycle --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters for STATS: the engine's (RTP streams summed), the clock's, the sessions'.

        ``calls``/``capacity``: calls held now and the limit; ``ready``: 1 once the models of
        the configuration are warm; ``config``: the CONFIG sequence in use; ``late_ticks``:
        media clock ticks run more than 20 ms late; ``hosted``: SIP calls whose session runs
        here (every one, AI Listens calls included); ``listens_*``: the monitored calls.
        """
        out = self.media.totals(self.engine.stats(), self._streams())
        out.update(self.counters)
        out["calls"] = len(self._hosted)
        out["hosted"] = len(self._hosted)
        out["listens_forks"] = len(self.forks)
        out["listens_bad_frames"] = self.forks.bad_frames
        out.update(self.listens.counters)
        out["capacity"] = self.options.capacity
        out["ready"] = int(self.ready)
        out["config"] = self.config_sequence
        out["ticks"] = self.clock.ticks
        out["stats_sent"] = self._stats_sent
        out["late_ticks"] = self.clock.late_ticks
        relay_stats = getattr(self.relay, "stats", None)  # relayed websocket calls
        if relay_stats is not None:
            out.update(relay_stats())
        if self.link is not None:
            out["dropped_frames"] = self.link.dropped_frames
            out["lost_frames"] = self.link.lost_frames
        out.update(pipeline_totals(self.metrics))
        return out

    def _streams(self) -> list[_Stream]:
        return [hosted.call.stream for hosted in self._hosted.values()]

    def _send_stats(self) -> None:
        self._stats_sent += 1
        self._send(Stats(self.stats()))

    async def _stats_loop(self) -> None:
        """STATS every ``stats_interval``, and within a second when the pipeline's metrics
        changed (a turn's latencies reach main's /metrics quickly; never per frame)."""
        loop = asyncio.get_running_loop()
        sent_at, sent = loop.time(), pipeline_totals(self.metrics)
        while True:
            await asyncio.sleep(min(PIPELINE_METRICS_INTERVAL, self.options.stats_interval))
            pipeline = pipeline_totals(self.metrics)
            if pipeline == sent and loop.time() - sent_at < self.options.stats_interval - 0.01:
                continue
            self._send_stats()
            sent_at, sent = loop.time(), pipeline

    async def _read_link(self, link: FrameLink) -> None:
        async for record in link.records():
            self.on_record(record)

    async def run(self) -> int:
        """Run until SIGTERM (returns 0) or until the link drops (returns 1); 2: no engine."""
        loop = asyncio.get_running_loop()
        try:
            await self.engine.start()
        except Exception as exc:
            log.error("worker_start_failed", error=repr(exc))
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            link = await open_link(self.options.link)
        except OSError as exc:
            log.error("worker_link_failed", link=self.options.link, error=str(exc))
            await self.engine.stop()
            return 1
        self.link = link
        sip_host, sip_port = self.engine.sip_address
        link.send(
            Hello(
                worker_id=self.options.worker_id,
                pid=os.getpid(),
                kind="native",
                sip_host=sip_host,
                sip_port=sip_port,
                capacity=self.options.capacity,
                sample_rate=self.options.sample_rate,
            )
        )
        log.info("worker_ready", sip=f"{sip_host}:{sip_port}", capacity=self.options.capacity)
        self._clock_wanted = True
        self.clock.start()
        reader = asyncio.create_task(self._read_link(link), name="link-reader")
        stats = asyncio.create_task(self._stats_loop(), name="stats")
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        status = 1
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                status = 0
            else:
                log.warning("worker_link_closed", action="hanging up")
                error = reader.exception()
                if error is not None:
                    log.error("worker_link_error", error=repr(error))
        finally:
            await self.engine.stop()  # BYE every call; their CALL_ENDED go out first
            self.forks.end_all("call worker stopping")
            await self.listens.wait_closed()  # their listens_ended go out before the link closes
            end_relayed = getattr(self.relay, "end_all", None)  # relayed websocket calls
            if end_relayed is not None:
                for record in end_relayed("call worker stopping"):
                    self._send(record)
            self._clock_wanted = False
            self.clock.stop()
            if status == 0:
                self._send_stats()
            tasks = [reader, stats, stopper, *self._config_tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.voice is not None:
                await self.voice.close()
            await asyncio.to_thread(self.call_recorders.stop)  # the files are finished
            await link.close(flush_timeout=1.0)
        return status


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, its name matched case-insensitively (RFC 3261 §7.3.1); "" if absent."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), "")


def parse_args(argv: list[str] | None = None) -> CallWorkerOptions:
    """Parse the worker's command line (the options of both workers: :mod:`.worker_args`)."""
    p = worker_parser(
        "python -m sipserver.rtp.call_worker",
        "call worker: native SIP UA + RTP engine, and the sessions of its calls",
    )
    p.add_argument("--capacity", type=int, default=100, help="calls held at once (503 beyond)")
    a = p.parse_args(argv)
    if a.capacity < 1:
        p.error("--capacity must be >= 1")
    return CallWorkerOptions(**common_options(a), capacity=a.capacity)


def relayed_calls(worker: CallWorker) -> MainRecordHandler:
    """The handler of the websocket calls main relays to this worker (:mod:`sipserver.rtp.relay`):
    their sessions are built like the worker's own calls' (None until the first CONFIG), and
    recorded like them when call records are on."""

    def factory(info: CallInfo, on_event: Callable[[SessionEvent], None]) -> CallSession | None:
        sessions = worker.sessions
        return sessions.new_session(info, on_event) if sessions is not None else None

    def records(info: CallInfo) -> bool:
        return worker.records_on

    def recorders(info: CallInfo, send: SendPayload) -> Recorder | None:
        return worker.recorders(info, send) if worker.recorders is not None else None

    return RelayedCalls(factory, records=records, recorders=recorders)


def main(argv: list[str] | None = None) -> int:
    """Process entry: run the worker, return its exit status."""
    options = parse_args(argv)
    configure_logging(options.log_format, options.log_level)
    # Every line of this process says which worker wrote it (they share main's log stream).
    structlog.contextvars.bind_contextvars(worker=options.worker_id)

    async def run() -> int:
        return await CallWorker(options, relay_factory=relayed_calls).run()

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
