"""The running server: wires the configuration to the SIP edge, the registrar and HTTP.

``sipserver run`` builds one :class:`Server` and awaits :meth:`Server.run`. Tests start it in a
subprocess the same way, on ports they choose.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sipserver.admission import CallLedger, Reservation
from sipserver.config import Config, ConfigError, load_config
from sipserver.connections import ConnectionLimits, auto_max_connections
from sipserver.console.agent_pages import AgentPages
from sipserver.console.api import ConsoleApi
from sipserver.console.audit import AUDIT_FILE, AuditLog
from sipserver.console.document import ConfigDocument
from sipserver.console.live import LiveViews
from sipserver.console.model_pages import ModelPages
from sipserver.console.pages import read_only_banner
from sipserver.console.user_pages import UserPages
from sipserver.console.users import UsersApi, admin_links
from sipserver.data_dir import make_private_dir, make_private_file
from sipserver.edge.build import (
    build_authenticator,
    build_call_proxy,
    build_failure_tracker,
    build_registrar,
)
from sipserver.edge.dispatcher import WorkerPool
from sipserver.edge.group_commit import GroupCommitter
from sipserver.edge.held import HeldResponses
from sipserver.edge.proxy import (
    CallAnswered,
    CallEnded,
    CallRouted,
    ProxyEvent,
)
from sipserver.edge.router import HeldRegister, SipRouter, server_names
from sipserver.edge.transport import SipListeners
from sipserver.gateway.websocket import MediaStreamGateway
from sipserver.heap import HeapTrimmer, trim_heap
from sipserver.listens.dashboard import Dashboard
from sipserver.listens.fork import ListensFork
from sipserver.listens.monitor import ListensHub
from sipserver.listens.passwords import hash_password
from sipserver.listens.remote import RemoteListens
from sipserver.observability import (
    Metrics,
    RefusalLog,
    get_logger,
    log_rate_limit,
)
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.model_cache import loaded_models
from sipserver.pipeline.runtime import VoiceRuntime
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.readiness import Readiness, ReadinessReport
from sipserver.registrar.auth import NonceManager
from sipserver.registrar.bindings import BindingStore, MemoryStore, SqliteStore, open_store
from sipserver.reload import ReloadResult, plan_reload, result_path, write_result
from sipserver.rtp.relay import RemoteSessions
from sipserver.rtp.session_host import SessionHost
from sipserver.rtp.sessions import CallSessions
from sipserver.rtp.worker_metrics import ForwardedPipelineMetrics
from sipserver.rtp.worker_stats import MediaStatsMetrics
from sipserver.server_records import ServerRecords
from sipserver.server_workers import MediaWorkers, calls_per_worker
from sipserver.sip.transaction import ServerTransactions
from sipserver.tasks import cancel_and_wait
from sipserver.web.app import build_admin_app, build_app
from sipserver.web.demo import add_demo_routes
from sipserver.web.listener import HttpDeadlines, HttpSite

__all__ = ["Server", "calls_per_worker", "needs_call_workers", "pid_file_path", "takes_sip_calls"]

log = get_logger(__name__)

#: Connections the admin listener (``server.admin_http``) takes at once.
ADMIN_MAX_CONNECTIONS = 64

#: Seconds start-up waits for every call worker's models to be warm before it says ready with
#: the warm ones (a worker that keeps failing must not hold readiness back for ever).
CALL_WORKERS_WARM_TIMEOUT = 120.0


def pid_file_path(config: Config) -> Path:
    """``<data_dir>/sipserver.pid``: the process id of the server running ``config``."""
    return Path(config.server.data_dir) / "sipserver.pid"


def _apply_log_rate_limit(config: Config) -> None:
    limit = config.server.log_rate_limit
    log_rate_limit.configure(limit.per_second, limit.burst)


def _connection_caps(config: Config) -> tuple[int, int]:
    """(SIP stream, HTTP) connection caps of ``config``, ``auto`` from the open-file limit."""
    sip, http = config.server.sip.max_connections, config.server.http_limits.max_connections
    return (
        auto_max_connections(0.5) if sip == "auto" else sip,
        auto_max_connections(0.25) if http == "auto" else http,
    )


def takes_sip_calls(config: Config) -> bool:
    """True when some agent takes SIP calls (on its numbers or its AI Listens numbers): they are
    answered by media workers, so the worker pool must run."""
    return any(
        a.sip.enabled and (a.sip.numbers or (a.listens.enabled and a.listens.numbers))
        for a in config.agents
    )


def needs_call_workers(config: Config) -> bool:
    """True when the worker pool must run: some agent takes SIP calls, or the workers are native
    call workers and some agent takes websocket calls or AI Listens forks (their sessions run
    in the workers)."""
    return takes_sip_calls(config) or (
        config.server.media.engine == "native"
        and any(a.websocket.enabled or a.listens.enabled for a in config.agents)
    )


class Server:
    """One sipserver process: SIP edge (UDP/TCP), registrar, bindings store and HTTP.

    Args:
        config: validated configuration.
        metrics: metrics registry (a fresh one by default).
        config_path: the file ``config`` came from (None: the embedded default); SIGHUP
            re-reads it (:meth:`reload`).
    """

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.media_stats = MediaStatsMetrics(self.metrics.registry)
        self.pipeline_metrics = ForwardedPipelineMetrics(self.metrics)
        """Call workers' voice pipeline metrics (in their STATS) added to ours."""
        self.refusals = RefusalLog(self.metrics)
        """Every door's refusals: counted, and logged once per interval per reason."""
        sip = config.server.sip
        self.store: BindingStore = MemoryStore()
        """The bindings. Opening a database is I/O (its directory is made, its rows read), so
        :meth:`start` opens the configured one; until then an empty memory store stands in
        (nothing is served before :meth:`start`), which is the store itself for ``memory``."""
        self.nonces = NonceManager(secrets.token_bytes(32), ttl=sip.nonce_ttl)
        self.tracker = build_failure_tracker(config)
        self.proxy = build_call_proxy(config)
        self.voice = VoiceRuntime(config, config_path=config_path, metrics=self.metrics)
        self._sip_calls = needs_call_workers(config)
        self.ledger = CallLedger(config)
        """Calls in progress per agent and in total, at every door, and their limits."""
        self._sip_reservations: dict[str, Reservation] = {}
        self._trimmer = HeapTrimmer()
        self._trims: set[asyncio.Task[bool]] = set()
        self.metrics.calls_capacity.set_function(lambda: float(self.ledger.max_calls))
        self.metrics.calls_admitted.set_function(lambda: float(self.ledger.total))
        self.records = ServerRecords(
            lambda: self.config, self.metrics, max_calls=lambda: self.ledger.max_calls
        )
        """Call records (docs/records.md): opened at start, fed by every ingress."""
        self.refusals.on_refused = self.records.refused
        self.gateway = MediaStreamGateway(
            lambda: self.config,
            self._new_session,
            self.metrics,
            on_call_ended=self._call_finished,
            ledger=self.ledger,
            refusals=self.refusals,
            records=self.records,
        )
        self.listens_hub = ListensHub(records=self.records)
        self.remote_listens = RemoteListens(self.listens_hub, self.metrics)
        """Monitored calls transcribed in call workers (engine native), on the hub here."""
        self.media_workers = MediaWorkers(
            config=lambda: self.config,
            config_path=config_path,
            new_session=self._new_session,
            media_stats=self.media_stats,
            pipeline_metrics=self.pipeline_metrics,
            remote_listens=self.remote_listens,
            gateway=self.gateway,
            refusals=self.refusals,
            on_change=self._state_changed,
            on_worker_lost=self._worker_lost,
        )
        """The media worker pool (built once an agent takes calls the workers answer)."""
        self.media_workers.on_record_events = self.records.record_events
        self.media_workers.on_call_started = self.records.call_started
        self.media_workers.on_call_ended = self.records.call_ended
        self.media_workers.recorders = self.records.recorders
        if self._sip_calls:
            self.media_workers.build(config)
        self.listens = ListensFork(
            lambda: self.config,
            self.voice.listen_parts,
            self.listens_hub,
            self.metrics,
            ledger=self.ledger,
            refusals=self.refusals,
            relays=self.media_workers.fork_relays(),
        )
        self.call_sessions = CallSessions(
            lambda: self.config, self.voice, listens=self.listens.sip_session
        )
        """Builds each call's session here (websocket calls, pjsua2 workers' calls)."""
        self.dashboard = Dashboard(
            lambda: self.config, self.listens_hub, self.metrics, self.refusals
        )
        self.console = ConsoleApi(
            document=ConfigDocument(config_path),
            audit=AuditLog(Path(config.server.data_dir) / AUDIT_FILE),
            gate=self.dashboard,
            config=lambda: self.config,
            reload=self._console_reload,
            bindings=lambda: self.store,
            ledger=self.ledger,
            wall_clock=lambda: self.listeners.wall_clock(),
        )
        """The console's JSON API over the configuration file (docs/console.md)."""
        self.model_pages = ModelPages(gate=self.dashboard, document=self.console.document)
        self.dashboard.read_only_banner = lambda: read_only_banner(
            self.console.document.read_only_reason
        )
        """The console's model and credential pages."""
        self.held: HeldResponses[HeldRegister] = HeldResponses()
        """REGISTER 200s waiting for their bindings to be committed (kept across reloads)."""
        self.committer: GroupCommitter | None = None
        """Commits the SQLite store's changes and releases the 200s (None for ``memory``)."""
        self.readiness = Readiness()
        self.metrics.media_workers_up.set_function(self.media_workers.up)
        self.metrics.ready.set_function(lambda: float(self.readiness_report().ready))
        self.router = self._build_router(config, transactions=None)
        self.listeners = SipListeners(
            self.router,
            self.metrics,
            max_message_size=sip.max_message_size,
            limits=ConnectionLimits(1, 1),  # set by _configure_connections
            refusals=self.refusals,
            calls_on=self._call_flows,
        )
        self.http_limits = ConnectionLimits(1, 1)
        self.http_deadlines = HttpDeadlines()
        self._configure_connections(config)
        self._http: HttpSite | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bindings-writer")
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()
        """Set when readiness or the calls in progress may have changed (a start-up step, a
        worker up or lost, a reload, a call ended, a stop request): see :meth:`_wait_until`."""
        self._stop_now = asyncio.Event()
        self._start_done = asyncio.Event()
        self._call_workers_warmed = config.server.media.engine != "native"
        """Start-up saw every call worker warm (or gave up waiting); pjsua2: always."""
        self._commit_failing = False
        self._reload_lock = asyncio.Lock()
        self._reloads = 0
        self._tasks: set[asyncio.Task[ReloadResult]] = set()
        self.http_port: int | None = None
        self._admin_http: HttpSite | None = None
        self.admin_port: int | None = None
        """The admin listener's port once bound (``server.admin_http``)."""

    @property
    def pool(self) -> WorkerPool | None:
        """The media worker pool (None until an agent takes calls the workers answer)."""
        return self.media_workers.pool

    @property
    def sessions(self) -> SessionHost | None:
        """The sessions of the pool's calls (built with the pool, at its sample rate)."""
        return self.media_workers.sessions

    @property
    def relayed(self) -> RemoteSessions:
        """Websocket calls whose session runs in a native call worker (docs/websocket.md)."""
        return self.media_workers.relayed

    def _configure_connections(self, config: Config) -> None:
        """Apply the connection caps and deadlines of ``config`` (start and reload)."""
        sip, http = config.server.sip, config.server.http_limits
        sip_cap, http_cap = _connection_caps(config)
        self.listeners.configure_connections(
            max_total=sip_cap,
            max_per_source=min(sip.max_connections_per_source, sip_cap),
            idle_timeout=sip.connection_idle_timeout,
            message_timeout=sip.message_timeout,
        )
        self.http_limits.configure(http_cap, min(http.max_connections_per_source, http_cap))
        deadlines = self.http_deadlines
        deadlines.header_timeout, deadlines.body_timeout = http.header_timeout, http.body_timeout
        deadlines.keepalive_timeout = http.keepalive_timeout

    def _call_flows(self) -> set[tuple[str, str, int]]:
        return self.proxy.caller_flows() if self.proxy is not None else set()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: one structured line per error (rate-limited
        per kind like every log line), never a plain traceback per failed accept."""
        message = str(context.get("message", ""))
        exc = context.get("exception")
        if message.startswith("socket.accept() out of system resource"):
            # An asyncio server's accept (not ours: ours shed and count): count it, quietly.
            self.refusals.refuse("accept", "out_of_files", error=repr(exc))
            return
        log.error(
            "event_loop_error",
            message=message,
            error=repr(exc) if exc is not None else None,
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    def _build_router(
        self, config: Config, *, transactions: ServerTransactions | None
    ) -> SipRouter:
        """The edge's request handling for ``config``, over this server's store, nonces and
        bans (which outlive a reload)."""
        # One set of names for both: a Request-URI the router serves and a digest uri the
        # authenticator accepts are judged alike.
        names = server_names(config)
        return SipRouter(
            config,
            registrar=build_registrar(config, self.store),
            authenticator=build_authenticator(config, self.nonces, names),
            tracker=self.tracker,
            metrics=self.metrics,
            names=names,
            force_rport=config.server.sip.force_rport,
            transactions=transactions,
            proxy=self.proxy,
            choose_worker=self.media_workers.choose_worker,
            on_call_event=self._call_event,
            admission=self._admission,
            held=self.held,
            capacity=self.ledger.refusal,
            refusals=self.refusals,
        )

    # ------------------------------------------------------------------ readiness

    def _state_changed(self) -> None:
        self._changed.set()

    def _call_finished(self) -> None:
        """A call (SIP or websocket) ended: readiness waiters look again, and the heap is
        trimmed when the calls of a burst are over (:class:`~sipserver.heap.HeapTrimmer`)."""
        self._state_changed()
        loop = asyncio.get_running_loop()
        delay = self._trimmer.call_ended(self.ledger.total, now=loop.time())
        if delay is not None:
            loop.call_later(delay, self._trim_heap)

    def _trim_heap(self) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(asyncio.to_thread(trim_heap), name="heap-trim")
        self._trims.add(task)

        def done(task: asyncio.Task[bool]) -> None:
            self._trims.discard(task)
            self._trimmer.trimmed(now=loop.time())

        task.add_done_callback(done)

    async def _wait_until(
        self, condition: Callable[[], bool], timeout: float | None = None
    ) -> bool:
        """Wait until ``condition()`` holds, re-checking it whenever :meth:`_state_changed` is
        called (no polling); False when ``timeout`` seconds passed first. Several waiters may
        wait at once: each clears the event before it checks, so none misses a change."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._changed.clear()
            if condition():
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _call_workers_warm(self) -> bool:
        """Every call worker started has its models warm (``engine: native``)."""
        pool = self.pool
        return pool is None or all(w.ready for w in pool.workers)

    def readiness_report(self) -> ReadinessReport:
        """Whether new calls are taken now, and what is still missing (``GET /readyz``)."""
        # At start-up, call workers count once all of them are warm (see start()).
        up = self.media_workers.up() if self._call_workers_warmed else 0
        return self.readiness.report(media_workers_needed=self._sip_calls, media_workers_up=up)

    def _readyz(self) -> tuple[bool, dict[str, Any]]:
        report = self.readiness_report()
        body = report.as_json()
        body["media_workers_up"] = self.media_workers.up()
        body["calls"] = self.calls_in_progress()
        return report.ready, body

    def _admission(self) -> str | None:
        report = self.readiness_report()
        return None if report.ready else report.status

    def calls_in_progress(self) -> int:
        """Calls a caller is on: SIP calls through the edge and websocket calls. AI Listens
        forks are not counted: they are side streams of calls carried elsewhere, and ending one
        cuts nobody off (a stop ends them at once)."""
        sip = self.proxy.active_calls() if self.proxy is not None else 0
        return sip + len(self.gateway.calls)

    # ------------------------------------------------------------------ calls

    def _call_event(self, event: ProxyEvent) -> None:
        metrics = self.metrics
        # The record's bookkeeping after this step's datagrams are sent: the router reports
        # the events before it returns them, and a call's set-up waits for those datagrams.
        # In order: callbacks run first-in first-out, before the next I/O callbacks.
        try:
            asyncio.get_running_loop().call_soon(self.records.proxy_event, event)
        except RuntimeError:  # no running loop (a test driving the router by hand)
            self.records.proxy_event(event)
        if isinstance(event, CallRouted):
            # Checked against the limits by the router in the same step (no await between).
            stale = self._sip_reservations.pop(event.call_id, None)
            if stale is not None:  # a Call-ID routed again: never count one call twice
                stale.release()
            self._sip_reservations[event.call_id] = self.ledger.reserve(
                event.agent, "sip", event.call_id
            )
            metrics.calls_active.inc()
            self.media_workers.reserve(event.call_id, event.worker_id)
            log.info(
                "call_routed", call_id=event.call_id, agent=event.agent, worker=event.worker_id
            )
        elif isinstance(event, CallAnswered):
            log.info("call_answered", call_id=event.call_id, setup_ms=round(event.setup_time * 1e3))
        elif isinstance(event, CallEnded):
            reservation = self._sip_reservations.pop(event.call_id, None)
            if reservation is not None:
                reservation.release()
            metrics.calls_active.dec()
            metrics.calls_ended.labels(str(event.reason.value)).inc()
            self.media_workers.release(event.call_id)
            self._call_finished()
            log.info(
                "call_ended",
                call_id=event.call_id,
                reason=str(event.reason.value),
                status=event.status,
                duration=event.duration,
            )

    def _new_session(
        self, info: CallInfo, on_event: Callable[[SessionEvent], None] | None = None
    ) -> CallSession | None:
        """The session of a new call (SIP or websocket); None when no agent takes it.

        Args:
            info: the call.
            on_event: receives the session's events (voice sessions only).

        Raises:
            CallRefused: a websocket call no call worker can take now (see
                :meth:`MediaWorkers.relayed_session`).
        """
        if info.transport in ("websocket", "twilio") and info.agent:
            relayed = self.media_workers.relayed_session(info.agent, on_event)
            if relayed is not None:
                self.records.relayed_call(relayed.worker_id, relayed.call, ("ws", info.call_id))
                return relayed
            if self.records.book is not None:  # the session runs here: recorded here
                return self.records.local_session(info, on_event, self.call_sessions.new_session)
        return self.call_sessions.new_session(info, on_event)

    def _worker_lost(self, worker_id: str) -> None:
        """A media worker went away (its bookkeeping is done): end the SIP calls routed to it."""
        self.records.worker_lost(worker_id)
        now = self.listeners.clock()
        for item in self.router.end_calls_of_worker(worker_id, now=now):
            self.listeners.deliver(item)
        # RFC 3261 §17.1.2.2: those BYEs run Timers E/F from now on; a quiet edge (no message
        # arriving) must still retransmit them, or a lost datagram leaves the caller's leg up.
        self.listeners.arm_proxy_timer()
        self._state_changed()

    async def reload(self, config: Config | None = None) -> ReloadResult:
        """Apply a new configuration to the running server: the one entry point of every reload
        (SIGHUP, ``sipserver reload``, the console).

        Args:
            config: an already validated configuration; None re-reads :attr:`config_path`
                (an invalid file changes nothing; the errors name the key paths).

        Agents, credentials, models, users and the ``server.`` keys classified ``live`` (see
        :mod:`sipserver.reload`) take effect at once; bindings, outstanding nonces and
        transactions are kept, calls in progress continue. The first agent that takes SIP
        calls gets the media worker pool built and started. Keys bound at start-up are not
        applied: the result names them in ``restart_needed`` (and the log says so); the server
        keeps their old values until it is restarted. The result is also written to
        ``<data_dir>/reload-result.json`` for ``sipserver reload``.

        Reloads run one at a time, after :meth:`start` finished. The file is read and the voice
        models and knowledge bases are built on a thread: the event loop keeps answering SIP
        meanwhile.
        """
        async with self._reload_lock:
            await self._start_done.wait()
            source = str(self.config_path or "embedded default") if config is None else "caller"
            try:
                new = config if config is not None else await self._read_config()
            except ConfigError as exc:
                result = self._reload_failed(exc.errors)
            else:
                result = await self._apply(new)
            if result.applied and not self.readiness.draining:
                await self.media_workers.start()
                self.media_workers.configuration_changed()
            self._reloads += 1
            try:
                write_result(
                    result_path(self.config),
                    result,
                    pid=os.getpid(),
                    sequence=self._reloads,
                    source=source,
                )
            except OSError as exc:
                log.error("reload_result_not_written", error=str(exc))
            return result

    async def _console_reload(self, config: Config) -> dict[str, Any]:
        """The console saved the file: reload with the configuration it validated."""
        return asdict(await self.reload(config))

    async def _read_config(self) -> Config:
        # YAML parsing and file checks: on a thread, off the loop that answers SIP.
        return await asyncio.to_thread(load_config, self.config_path)

    async def _apply(self, new: Config) -> ReloadResult:
        if self.readiness.draining:
            return self._reload_failed(["the server is stopping; nothing reloaded"])
        pool_runs = self.pool is not None
        plan = plan_reload(self.config, new, pool_runs=pool_runs)
        # From here on only the plan's config: the new file with every key that is not
        # applied (restart keys, settings of a running worker pool) at its running value.
        config = plan.config
        changed, restart = list(plan.changed), list(plan.restart_needed)
        try:
            voice = await asyncio.to_thread(self.voice.prepare, config)
        except Exception as exc:
            # The file is valid but its models or knowledge bases cannot be built: keep the
            # running configuration whole rather than half of each.
            return self._reload_failed([f"cannot build the voice models: {exc!r}"])
        tls = config.server.sip.tls
        tls_context = None
        if tls.listen:
            # Read the certificate files again, even under the same names: a renewed
            # certificate is picked up by new connections; connections up keep theirs.
            try:
                tls_context = await asyncio.to_thread(tls.server_context)
            except ValueError as exc:
                return self._reload_failed([f"server.sip.tls.{exc}"])
        if self.readiness.draining:  # a stop came while the models were built
            return self._reload_failed(["the server is stopping; nothing reloaded"])
        # Nothing awaits from here on: the swap is atomic for the requests the loop serves.
        self.voice.apply(voice)
        notes: list[str] = []
        sip_calls = needs_call_workers(config)
        if sip_calls and not pool_runs:
            self.media_workers.build(config)
            notes.append("media worker pool started: an agent takes calls the workers answer now")
        elif pool_runs and not sip_calls:
            notes.append("no agent takes calls the workers answer now; they keep running idle")
        self._sip_calls = sip_calls
        self._state_changed()
        if self.proxy is not None and "server.public_host" in changed:
            self.proxy.set_outside_host(config.server.public_host)
        self.ledger.configure(config)
        self.router = self._build_router(config, transactions=self.router.transactions)
        self.listeners.router = self.router
        if tls_context is not None:
            self.listeners.tls_context = tls_context
            self.listeners.tls_handshake_timeout = tls.handshake_timeout
        self.config = config
        _apply_log_rate_limit(config)
        if self.committer is not None:
            self.committer.window = config.server.store_commit_ms / 1000
        self._configure_connections(config)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config_reloaded", agents=len(config.agents), changed=changed, notes=notes)
        if restart:
            log.warning("config_reload_needs_restart", restart_needed_for=restart)
        return ReloadResult(
            applied=True, changed=tuple(changed), restart_needed=tuple(restart), notes=tuple(notes)
        )

    def _reload_failed(self, errors: list[str]) -> ReloadResult:
        self.metrics.config_reloads.labels("invalid").inc()
        log.error("config_reload_failed", source=str(self.config_path), errors=errors)
        return ReloadResult(applied=False, errors=tuple(errors))

    def _on_reload_signal(self) -> None:
        task = asyncio.create_task(self.reload(), name="config-reload")
        self._tasks.add(task)
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[ReloadResult]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a bad file (that is a result): logged, the server keeps running.
            log.error("config_reload_crashed", error=repr(task.exception()))

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows."""
        return {
            "readiness": self.readiness_report().as_json(),
            "listeners": [
                {"transport": t, "host": h, "port": p} for t, h, p in self.listeners.bound
            ],
            "registrations": self.store.count(),
            "agents": [a.slug for a in self.config.agents],
            "calls": self.proxy.active_calls() if self.proxy is not None else 0,
            "websocket_calls": len(self.gateway.calls),
            "websocket_calls_in_workers": len(self.relayed),
            "listens_forks_in_workers": self.relayed.forks,
            "monitored_calls": self.listens_hub.active,
            "monitored_calls_in_workers": len(self.remote_listens),
            "models_loaded": loaded_models(),
            "media_engine": self.config.server.media.engine,
            "sessions_in_main": len(self.sessions) if self.sessions is not None else 0,
            "media_workers": self.media_workers.status(),
        }

    async def start(self) -> None:
        """Bind the SIP listeners and HTTP, start the media workers, load the voice models.

        Returns when the models are loaded; the workers come up on their own (a few seconds:
        :meth:`readiness_report` says when). An INVITE arriving before then gets 503 with
        Retry-After; ``GET /readyz`` answers 503 naming what is still starting.
        """
        sip = self.config.server.sip
        _apply_log_rate_limit(self.config)
        asyncio.get_running_loop().set_exception_handler(self._loop_exception)
        self.metrics.count_tasks_of(asyncio.get_running_loop())
        self._open_state()
        await self.records.start()
        if self.committer is not None:
            self.committer.start()
        # Drop the bindings that expired while the server was down (their expiry is wall time).
        self.router.handle_timer(now=self.listeners.clock(), wall=self.listeners.wall_clock())
        if sip.tls.listen:
            self.listeners.tls_context = await asyncio.to_thread(sip.tls.server_context)
            self.listeners.tls_handshake_timeout = sip.tls.handshake_timeout
        await self.listeners.start(list(sip.udp), list(sip.tcp), list(sip.tls.listen))
        app = build_app(
            self.metrics,
            self.status,
            self._readyz,
            admin_token=lambda: self.config.server.admin_token,
        )
        self.gateway.add_routes(app)
        self.listens.add_routes(app)
        self.dashboard.add_routes(app)
        self.console.add_routes(app)
        AgentPages(gate=self.dashboard, document=self.console.document).add_routes(app)
        self.model_pages.add_routes(app)
        UsersApi(console=self.console, hash_password=hash_password).add_routes(app)
        UserPages(gate=self.dashboard, document=self.console.document).add_routes(app)
        LiveViews(
            gate=self.dashboard,
            workers=self.media_workers.status,
            engine=lambda: self.config.server.media.engine,
        ).add_routes(app)
        # After the console's GET /api/calls/active.
        self.records.add_routes(app, self.dashboard, top_links=admin_links)
        add_demo_routes(app, lambda: self.config)
        host, port = self.config.server.http_host_port
        self._http = HttpSite(app, self.http_limits, self.refusals, self.http_deadlines)
        self.http_port = await self._http.start(host, port, name="HTTP")
        log.info(
            "http_listening",
            host=host,
            port=self.http_port,
            max_connections=self.http_limits.max_total,
        )
        await self._start_admin_http()
        self.readiness.step_done("listeners")
        self._state_changed()
        # The workers boot (seconds each) while the models load.
        await self.media_workers.start()
        if self.config.server.media.engine == "native":
            # Every session (SIP, websocket, AI Listens) runs in a call worker, which loads and
            # warms the models: readiness waits for a ready worker instead (media_workers_up).
            log.info("voice_models_in_call_workers")
        else:
            await self.voice.start()
        # What is loaded now (modules, models, configuration) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it (one took 0.27 s
        # on the event loop at capacity, measured on a loaded 2-core VM).
        gc.collect()
        gc.freeze()
        self.readiness.step_done("voice_models")
        self._state_changed()
        if not self._call_workers_warmed:
            # Call workers all start at once: until each is warm, the cold ones refuse what is
            # routed to them (workers_full), so readiness waits for all of them at start-up.
            warm = await self._wait_until(self._call_workers_warm, CALL_WORKERS_WARM_TIMEOUT)
            if not warm:
                log.warning("call_workers_not_warm", timeout=CALL_WORKERS_WARM_TIMEOUT)
            self._call_workers_warmed = True
            self._state_changed()
        self._start_done.set()

    async def _start_admin_http(self) -> None:
        """The admin listener (``server.admin_http``): ``/status`` and ``/metrics`` off the
        public port."""
        if self.config.server.admin_http is None:
            return
        host, port = self.config.server.admin_host_port
        self._admin_http = HttpSite(
            build_admin_app(self.metrics, self.status, self._readyz),
            # Its own cap: a flood at the public port leaves the operator's door open.
            ConnectionLimits(ADMIN_MAX_CONNECTIONS, ADMIN_MAX_CONNECTIONS),
            self.refusals,
            self.http_deadlines,
            ingress="http_admin",
        )
        self.admin_port = await self._admin_http.start(host, port, name="server.admin_http")
        log.info("admin_http_listening", host=host, port=self.admin_port)

    def _open_state(self) -> None:
        """Make the data directory (0700) and open the bindings store, before anything is bound.

        Raises:
            DataDirError: a directory cannot be made; the message names the key.
        """
        server = self.config.server
        make_private_dir(server.data_dir, key="server.data_dir")
        kind, path = server.store_url
        if kind == "sqlite" and path is not None:
            make_private_dir(Path(path).parent, key="server.store")
            self.store = store = open_store(kind, path)
            assert isinstance(store, SqliteStore)
            self.committer = GroupCommitter(
                store,
                self._writer,
                on_committed=self._bindings_committed,
                on_failed=self._bindings_not_committed,
                window=server.store_commit_ms / 1000,
            )
            store.on_change = self.committer.wake
            self.router = self._build_router(self.config, transactions=self.router.transactions)
            self.listeners.router = self.router

    def _bindings_committed(self, seq: int) -> None:
        """The store committed its changes up to ``seq``: send the REGISTER 200s that waited."""
        if self._commit_failing:
            self._commit_failing = False
            log.info("bindings_commit_recovered")
        for item in self.router.release_committed(seq, now=self.listeners.clock()):
            self.listeners.deliver(item)

    def _bindings_not_committed(self, error: BaseException) -> None:
        """A commit failed (disk full, database locked ...); the store rolled back every
        uncommitted change: refuse the REGISTERs that waited (503, counted as refusals)."""
        refused = self.router.refuse_uncommitted(now=self.listeners.clock())
        for item in refused:
            self.listeners.deliver(item)
        if not self._commit_failing:
            # Logged when commits start failing; the refusals (and the recovery) say the rest.
            self._commit_failing = True
            log.error("bindings_commit_failed", error=repr(error), refused=len(refused))

    def request_stop(self) -> None:
        """Take no new calls from now on (``/readyz``: draining; INVITE: 503) and make
        :meth:`run` drain and stop. A second request ends the drain at once. Call on the loop
        (SIGTERM and SIGINT do)."""
        if self._stopped.is_set():
            if not self._stop_now.is_set():
                log.warning("stop_now", calls=self.calls_in_progress())
                self._stop_now.set()
                self._state_changed()
            return
        self.readiness.drain()
        self._state_changed()
        log.info(
            "stopping",
            calls=self.calls_in_progress(),
            drain_timeout=self.config.server.drain_timeout,
        )
        self._stopped.set()

    async def drain(self) -> None:
        """Wait until no call is in progress, at most ``server.drain_timeout`` seconds (or
        until a second stop request). New calls are refused meanwhile; calls in progress,
        registrations and in-dialog requests are served as usual."""
        self.readiness.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._wait_until(
            lambda: not self.calls_in_progress() or self._stop_now.is_set(),
            self.config.server.drain_timeout,
        )
        left = self.calls_in_progress()
        log.info("drained", seconds=round(loop.time() - started, 3), calls_left=left)

    async def stop(self) -> None:
        """End what is left: websocket calls, the media workers (they hang up their calls, the
        edge still relays the BYEs), then the listeners; flush the bindings, close the store."""
        self.readiness.drain()
        for task in list(self._tasks):
            await cancel_and_wait(task)
        await self.gateway.close_all()
        await self.listens.close_all()
        await self.media_workers.stop()
        if self.committer is not None:
            # Commit what is pending and send its 200s while the listeners are still open.
            await self.committer.stop()
        await self.listeners.stop()
        await self.records.stop()  # after every call ended: what is left is the server's
        await self.voice.close()
        if self._http is not None:
            await self._http.stop()
        if self._admin_http is not None:
            await self._admin_http.stop()
        if isinstance(self.store, SqliteStore):
            # Write what changed since (no 200 waits for it: the listeners are closed).
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.flush)
        self._writer.shutdown(wait=True)
        self.store.close()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, drain, then stop cleanly."""
        loop = asyncio.get_running_loop()
        begun = loop.time()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        await self.start()
        pid_file = self.pid_file
        make_private_file(pid_file)
        pid_file.write_text(f"{os.getpid()}\n")
        log.info(
            "started",
            agents=len(self.config.agents),
            registrations=self.store.count(),
            public_url=self.config.server.public_url,
        )
        watcher = asyncio.create_task(self._log_ready(begun), name="readiness-log")
        try:
            await self._stopped.wait()
            await self.drain()
        finally:
            await cancel_and_wait(watcher)
            await self.stop()
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()

    async def _log_ready(self, begun: float) -> None:
        """Log ``ready`` (with the seconds since :meth:`run` began) once calls are taken."""
        await self._wait_until(lambda: self.readiness.draining or self.readiness_report().ready)
        if not self.readiness.draining:
            log.info("ready", seconds=round(asyncio.get_running_loop().time() - begun, 3))

    @property
    def pid_file(self) -> Path:
        """Where ``run`` records its process id (``sipserver reload`` signals it)."""
        return pid_file_path(self.config)
