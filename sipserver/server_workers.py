"""The server's side of its media workers: the pool, and what their frame links carry.

:class:`MediaWorkers` builds and runs the worker pool (pjsua2 media workers or native call
workers, docs/calls.md), hosts the sessions of a pjsua2 worker's calls (a native call worker
runs its own), relays websocket calls and AI Listens forks to call workers, sends call workers
the configuration (CONFIG), and keeps the reservation of each routed SIP call until its worker
reports it. :class:`~sipserver.server.Server` owns one; it hears back through three callbacks.

Call records: :attr:`MediaWorkers.on_record_events` is the main process's seam for the record
payloads of every call the workers serve (docs/framelink.md, "Call records"): a call worker's
``record``/``record_media`` EVENTs (its SIP calls and the websocket calls relayed to it) and the
record batches of the sessions a pjsua2 worker's calls run here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSCloseCode

from sipserver.admission import default_max_calls
from sipserver.config import Agent, Config
from sipserver.edge.dispatcher import FULL, MediaWorker, WorkerPool, WorkerPoolSettings
from sipserver.edge.proxy import Endpoint
from sipserver.gateway.websocket import CallRefused, MediaStreamGateway
from sipserver.listens.remote import RemoteListens
from sipserver.observability import RefusalLog, get_logger, log_settings
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.record_tap import RECORD_EVENT_TYPES, RecordEventsHook
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.rtp import framelink
from sipserver.rtp.recordings import RecorderFactory
from sipserver.rtp.relay import RemoteFork, RemoteSession, RemoteSessions, is_relayed
from sipserver.rtp.session_host import SessionHost
from sipserver.rtp.sessions import configuration_record
from sipserver.rtp.worker_metrics import PREFIX as PIPELINE_PREFIX
from sipserver.rtp.worker_metrics import ForwardedPipelineMetrics
from sipserver.rtp.worker_stats import MediaStatsMetrics

__all__ = ["MediaWorkers", "calls_per_worker"]

log = get_logger(__name__)


def _worker_pool(
    config: Config,
    on_record: Callable[[MediaWorker, framelink.LinkRecord], None],
    on_lost: Callable[[MediaWorker, set[int]], None],
    on_up: Callable[[MediaWorker], None],
) -> WorkerPool:
    """The media worker pool of ``config`` (``server.workers``, ``server.media``)."""
    media = config.server.media
    native = media.engine == "native"
    # Call workers all start at once, one per core: each holds many calls and warms models.
    max_workers = (
        config.server.max_workers if native else max(media.min_workers, config.server.max_workers)
    )
    log_format, log_level = log_settings()
    per_worker = (media.rtp_port_max - media.rtp_port_min + 1) // max_workers
    ports = per_worker - per_worker % 2
    return WorkerPool(
        WorkerPoolSettings(
            link_path=str(Path(config.server.data_dir).resolve() / "run" / "framelink.sock"),
            min_workers=max_workers if native else media.min_workers,
            max_workers=max_workers,
            sip_host=media.worker_host,
            rtp_host=media.rtp_host,
            rtp_port_start=media.rtp_port_min,
            rtp_ports_per_worker=ports,
            sample_rate=media.sample_rate,
            session_timers=media.session_timers,
            session_expires=media.session_expires,
            min_se=media.min_se,
            answer_delay=media.answer_delay,
            rtp_timeout=media.rtp_timeout,
            link_timeout=media.worker_timeout,
            log_format=log_format,
            log_level=log_level,
            engine=media.engine,
            capacity=calls_per_worker(config, max_workers, ports) if native else 0,
        ),
        on_record=on_record,
        on_worker_lost=on_lost,
        on_worker_up=on_up,
    )


def calls_per_worker(config: Config, workers: int, rtp_ports: int) -> int:
    """The capacity of each call worker (``server.media.calls_per_worker``).

    ``auto``: ``server.max_calls`` (itself ``auto``: :func:`default_max_calls`) divided among
    the workers, rounded up. Never more than the worker's RTP port slice holds (2 ports per
    call), never less than 1.

    Args:
        config: the configuration.
        workers: call workers that run.
        rtp_ports: RTP ports each worker gets.
    """
    setting = config.server.media.calls_per_worker
    if setting == "auto":
        total = config.server.max_calls
        total = default_max_calls(config) if total == "auto" else total
        setting = -(-total // workers)
    return max(1, min(setting, rtp_ports // 2))


class MediaWorkers:
    """The media worker pool and the calls, sessions and configuration it exchanges with main.

    Nothing runs until :meth:`build` (the first agent whose calls the workers answer) and
    :meth:`start`; until then :attr:`pool` and :attr:`sessions` are None.

    Args:
        config: the running configuration (read at each use: a reload replaces it).
        config_path: the file the configuration came from (sent along with CONFIG).
        new_session: builds the session of a call (a pjsua2 worker's calls run theirs here),
            optionally with a receiver of its events.
        media_stats: the workers' STATS counters as metrics.
        pipeline_metrics: the call workers' voice pipeline metrics (in their STATS), added to
            the main process's own.
        remote_listens: the AI Listens monitors transcribed in call workers.
        gateway: the websocket calls (those relayed to a lost worker are closed).
        refusals: counts the websocket calls and forks refused for want of a worker.
        on_change: called when readiness or the calls in progress may have changed.
        on_worker_lost: called with the id of a lost worker, after its bookkeeping here, to end
            the SIP calls the edge routed to it.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        config_path: str | os.PathLike[str] | None,
        new_session: Callable[
            [CallInfo, Callable[[SessionEvent], None] | None], CallSession | None
        ],
        media_stats: MediaStatsMetrics,
        pipeline_metrics: ForwardedPipelineMetrics,
        remote_listens: RemoteListens,
        gateway: MediaStreamGateway,
        refusals: RefusalLog,
        on_change: Callable[[], None],
        on_worker_lost: Callable[[str], None],
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._new_session = new_session
        self.media_stats = media_stats
        self.pipeline_metrics = pipeline_metrics
        self.remote_listens = remote_listens
        self.gateway = gateway
        self.refusals = refusals
        self._state_changed = on_change
        self._on_worker_lost = on_worker_lost
        self.pool: WorkerPool | None = None
        self.sessions: SessionHost | None = None
        """The sessions of the pool's calls (built with the pool, at its sample rate)."""
        self._pool_started = False
        self._config_sequence = 1
        """Sequence of the CONFIG records sent to call workers (+1 per reload applied)."""
        self.relayed = RemoteSessions(on_closed=self._relayed_closed)
        """Websocket calls whose session runs in a native call worker (docs/websocket.md)."""
        self._reserved: dict[str, MediaWorker] = {}
        self.on_call_started: Callable[[str, framelink.CallStarted], None] | None = None
        """Told of every CALL_STARTED (``worker_id, record``): the call's record learns its
        numbers, codec and worker call number."""
        self.on_call_ended: Callable[[str, framelink.CallEnded], None] | None = None
        """Told of every CALL_ENDED a worker sends (``worker_id, record``): the call's last
        record events are in."""
        self._on_record_events: RecordEventsHook | None = None
        self._recorders: RecorderFactory | None = None

    @property
    def on_record_events(self) -> RecordEventsHook | None:
        """Main's seam for call records: called ``(worker_id, call, payload)`` for every
        ``record``/``record_media`` payload (:data:`RECORD_EVENT_TYPES`), before anything else
        sees the EVENT (such EVENTs go nowhere else; None: they are dropped). ``call`` is the
        call number on that worker's link: a worker-local SIP call number (as in its
        CALL_STARTED, whose ``sip_call_id`` names the call) or a relayed call's number
        (:attr:`RemoteSession.call`). Set, it also makes the sessions of pjsua2 workers' calls
        (run here) recorded while ``server.records.store`` is not ``none``; their batches come
        through it synchronously, with the worker's id and call number likewise."""
        return self._on_record_events

    @on_record_events.setter
    def on_record_events(self, hook: RecordEventsHook | None) -> None:
        self._on_record_events = hook
        if self.sessions is not None:
            self.sessions.on_record_events = hook

    @property
    def recorders(self) -> RecorderFactory | None:
        """Builds the recorder of a recorded call whose session runs here (pjsua2 workers'
        calls; a call worker builds its own). None: no recordings."""
        return self._recorders

    @recorders.setter
    def recorders(self, factory: RecorderFactory | None) -> None:
        self._recorders = factory
        if self.sessions is not None:
            self.sessions.recorders = factory

    @property
    def config(self) -> Config:
        """The running configuration."""
        return self._config()

    def build(self, config: Config) -> None:
        """Build (not start) the media worker pool of ``config``; the frames of its calls go
        through a session host at its sample rate."""
        new_session = self._new_session
        self.sessions = SessionHost(
            lambda info: new_session(info, None),
            sample_rate=config.server.media.sample_rate,
            event_factory=new_session,
            records_on=lambda: self.config.server.records.store != "none",
        )
        self.sessions.on_record_events = self._on_record_events
        self.sessions.recorders = self._recorders
        self.pool = _worker_pool(config, self._worker_record, self._worker_lost, self._worker_up)

    async def start(self) -> None:
        """Start the pool once it is built (again: nothing)."""
        if self.pool is not None and not self._pool_started:
            self._pool_started = True
            await self.pool.start()

    async def stop(self) -> None:
        """Stop the pool's workers (they hang up their calls)."""
        if self.pool is not None and self._pool_started:
            await self.pool.stop()

    def up(self) -> int:
        """Workers up and ready to take calls."""
        pool = self.pool
        return sum(w.ready for w in pool.workers) if pool is not None else 0

    def status(self) -> list[dict[str, Any]]:
        """The workers as ``GET /status`` shows them (``media_workers``)."""
        stats = self.sessions.worker_stats if self.sessions is not None else {}
        return [
            {
                "id": w.worker_id,
                "pid": w.process.pid if w.process is not None else None,
                "up": w.up,
                "kind": w.hello.kind if w.hello is not None else None,
                "ready": w.ready,
                "sip_port": w.hello.sip_port if w.hello is not None else None,
                "capacity": w.capacity,
                "calls": w.load,
                "stats": {  # the pipeline's metrics are in /metrics
                    k: v
                    for k, v in stats.get(w.worker_id, {}).items()
                    if not k.startswith(PIPELINE_PREFIX)
                },
            }
            for w in (self.pool.workers if self.pool is not None else [])
        ]

    def fork_relays(self) -> _ForkRelays:
        """AI Listens forks relayed to call workers (``ListensFork``'s ``relays``)."""
        return _ForkRelays(self)

    def configuration_changed(self) -> None:
        """A reload was applied: every call worker up gets the new configuration (CONFIG)."""
        if self.pool is not None:
            self._config_sequence += 1
            for worker in self.pool.workers:
                if worker.up and worker.hello is not None and worker.hello.kind == "native":
                    self._send_config(worker)

    def _worker_up(self, worker: MediaWorker) -> None:
        """A worker said HELLO: a call worker gets the configuration (CONFIG) first."""
        if worker.hello is not None and worker.hello.kind == "native":
            self._send_config(worker)
        self._state_changed()

    def _send_config(self, worker: MediaWorker) -> None:
        if worker.link is not None:
            record = configuration_record(self.config, self._config_path, self._config_sequence)
            worker.link.send(record)

    # ------------------------------------------------------------------ SIP calls

    def choose_worker(
        self, agent: str, call_id: str
    ) -> tuple[str, Endpoint] | Literal["full"] | None:
        """The worker for a new SIP call (the router's ``choose_worker``): its id and SIP
        address, "full" when every worker is at capacity, None when none is up."""
        if self.pool is None:
            return None
        worker = self.pool.pick()
        if worker is None:
            return None
        if worker is FULL:
            return "full"
        assert isinstance(worker, MediaWorker) and worker.hello is not None
        # Reserved only when the proxy reports CallRouted: an INVITE it refuses (482, 483,
        # no Contact...) must not hold a call slot.
        return worker.worker_id, Endpoint("udp", worker.hello.sip_host, worker.hello.sip_port)

    def reserve(self, call_id: str, worker_id: str) -> None:
        """The edge routed SIP call ``call_id`` to ``worker_id``: count it in the worker's load
        until the worker reports the call (CALL_STARTED) or the call ends."""
        pool = self.pool
        worker = pool.by_id(worker_id) if pool is not None else None
        if pool is not None and worker is not None:
            pool.reserve(worker)
            self._reserved[call_id] = worker

    def release(self, call_id: str) -> None:
        """Drop the reservation of SIP call ``call_id`` (if it still holds one)."""
        worker = self._reserved.pop(call_id, None)
        if worker is not None and self.pool is not None:
            self.pool.release(worker)

    # ------------------------------------------------------------------ relayed calls

    def relayed_session(
        self, agent: str, on_event: Callable[[SessionEvent], None] | None
    ) -> RemoteSession | None:
        """With native call workers: a session hosted by the least loaded one. None: no native
        workers here, the session runs locally.

        Raises:
            CallRefused: none is up or all are full (counted as a ``websocket`` refusal); the
                gateway closes the socket 1013, try again later.
        """
        pool = self.pool
        if pool is None or self.config.server.media.engine != "native":
            return None
        worker = pool.pick()
        if not isinstance(worker, MediaWorker):
            full = worker is FULL
            self.refusals.refuse(
                "websocket", "workers_full" if full else "no_worker_up", agent=agent
            )
            raise CallRefused("call workers full" if full else "no call worker ready")
        link, hello = worker.link, worker.hello
        if link is None or hello is None or hello.kind != "native":
            return None  # a pjsua2 worker hosts no sessions
        session = self.relayed.open(worker.worker_id, link.send, on_event=on_event)
        worker.calls.add(session.call)  # counted in the worker's load until the call ends
        return session

    def _relayed_closed(self, worker_id: str, call: int) -> None:
        worker = self.pool.by_id(worker_id) if self.pool is not None else None
        if worker is not None:
            worker.calls.discard(call)

    def relayed_fork(self, agent: str, tracks: tuple[str, ...]) -> RemoteFork | None:
        """An AI Listens fork transcribed by the least loaded ready call worker (None: none up
        or all full: refused)."""
        worker = self.pool.pick() if self.pool is not None else None
        link = worker.link if isinstance(worker, MediaWorker) else None
        if not isinstance(worker, MediaWorker) or link is None:
            reason = "workers_full" if worker is FULL else "no_worker_up"
            self.refusals.refuse("listens", reason, agent=agent)
            return None
        fork = self.relayed.open_fork(worker.worker_id, link.send, tracks)
        worker.calls.add(fork.call)  # counted in the worker's load until the fork ends
        return fork

    # ------------------------------------------------------------------ frame links

    def _worker_record(self, worker: MediaWorker, record: framelink.LinkRecord) -> None:
        if isinstance(record, framelink.Event) and _is_record_payload(record.event):
            hook = self._on_record_events
            if hook is not None:
                try:
                    hook(worker.worker_id, record.call, record.event)
                except Exception:
                    log.exception("record_events_failed", worker=worker.worker_id, call=record.call)
            return
        if isinstance(record, framelink.Event):
            taken = self.remote_listens.handle(worker.worker_id, record.call, record.event)
            if taken is False and worker.link is not None:  # the hub is full: end that call
                ended = framelink.CallEnded(record.call, "too many monitored calls", 503)
                worker.link.send(ended)
                self.relayed.handle(worker.worker_id, ended)  # a relayed fork's socket closes
            if taken is not None:
                return
        if is_relayed(record):
            self.relayed.handle(worker.worker_id, record)
            return
        if isinstance(record, framelink.CallStarted):
            self.release(record.sip_call_id)
            worker.calls.add(record.call)
            if self.on_call_started is not None:
                self.on_call_started(worker.worker_id, record)
            if record.hosted:
                # A call worker runs this call's session itself: only the bookkeeping here.
                log.info("call_hosted", call_id=record.sip_call_id, worker=worker.worker_id)
                return
        elif isinstance(record, framelink.CallEnded):
            worker.calls.discard(record.call)
            self._state_changed()
            if self.on_call_ended is not None:
                self.on_call_ended(worker.worker_id, record)
        elif isinstance(record, framelink.Stats):
            kind = worker.hello.kind if worker.hello is not None else "pjsua2"
            self.media_stats.update(worker.worker_id, kind, record.counters)
            self.pipeline_metrics.update(worker.worker_id, record.counters)
            if record.counters.get("ready") == 1:
                self._state_changed()  # a call worker's models are warm: readiness may change
        assert self.sessions is not None  # built with the pool that calls this
        replies = self.sessions.handle(worker.worker_id, record)
        link = worker.link
        if link is None:
            return
        for reply in replies:
            if isinstance(reply, framelink.CallEnded):
                worker.calls.discard(reply.call)
            link.send(reply)

    def _worker_lost(self, worker: MediaWorker, calls: set[int]) -> None:
        assert self.sessions is not None  # built with the pool that calls this
        self.sessions.worker_lost(worker.worker_id)
        self.media_stats.forget(worker.worker_id)
        self.pipeline_metrics.forget(worker.worker_id)
        self.remote_listens.worker_lost(worker.worker_id)
        relayed = self.relayed.worker_lost(worker.worker_id)
        if relayed:
            closed = self.gateway.close_sessions(
                set(relayed), WSCloseCode.INTERNAL_ERROR, "call worker lost"
            )
            log.warning("relayed_calls_lost", worker=worker.worker_id, calls=closed)
        for call_id in [c for c, w in self._reserved.items() if w is worker]:
            del self._reserved[call_id]
        self._on_worker_lost(worker.worker_id)


def _is_record_payload(event: Mapping[str, Any]) -> bool:
    """A ``record``/``record_media`` EVENT payload (call records)."""
    kind = event.get("type")
    return isinstance(kind, str) and kind in RECORD_EVENT_TYPES


class _ForkRelays:
    """AI Listens forks relayed to call workers when they run the sessions (engine native)."""

    def __init__(self, workers: MediaWorkers) -> None:
        self._workers = workers

    def active(self) -> bool:
        workers = self._workers
        return workers.pool is not None and workers.config.server.media.engine == "native"

    def open(self, agent: Agent, tracks: tuple[str, ...]) -> RemoteFork | None:
        return self._workers.relayed_fork(agent.slug, tracks)
