"""Structured logging (structlog) and the Prometheus metrics of the server.

Logs are rendered for people on a TTY and as one JSON object per line otherwise (or as chosen with
``--log-format``); records of the standard library's logging (aiohttp, asyncio, warnings) go
through the same renderer, so no plain-text line lands in a JSON log. Metrics live in one
:class:`Metrics` object built on its own :class:`prometheus_client.CollectorRegistry`, so tests
can build as many servers as they like in one process. Hot-path counters are pre-bound to their
label values once, because ``labels()`` is a dictionary lookup under a lock on every call; the
per-message SIP counters are :class:`sipserver.counters.LoopCounter` s, whose increment is one
compiled dictionary update, called by the edge directly.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sipserver.counters import LoopCounter

__all__ = [
    "CONTENT_TYPE_LATEST",
    "LogFormat",
    "LogRateLimit",
    "LoopCounter",
    "Metrics",
    "RefusalLog",
    "configure_logging",
    "debug_logged",
    "get_logger",
    "info_logged",
    "log_settings",
]

LogFormat = Literal["auto", "console", "json"]


_RECORD_ATTRIBUTES: frozenset[str] = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
_RESERVED_FIELDS = frozenset({"event", "level", "exc_info", "module"})
"""Field names the forwarding call passes itself (structlog's event, level, exc_info, and the
logger's bound module)."""


class _StdlibToStructlog(logging.Handler):
    """Standard-library log records as structlog events (one line each, the chosen format).

    The record's message is the event, extra attributes become fields and an exception is
    rendered by structlog's ``format_exc_info`` (inside the one JSON object).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # A library's extra= may use a name structlog's call takes itself: keep it, renamed.
            fields = {
                (f"{key}_" if key in _RESERVED_FIELDS else key): value
                for key, value in vars(record).items()
                if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
            }
            exc_info = record.exc_info if record.exc_info and record.exc_info[0] else None
            logger = structlog.get_logger(module=record.name)
            logger.log(record.levelno, record.getMessage(), exc_info=exc_info, **fields)
        except Exception:
            self.handleError(record)


class LogRateLimit:
    """A structlog processor that bounds how many lines each event kind may write.

    Every event name has a token bucket: ``burst`` lines at once, refilled at ``per_second``.
    Lines past it are dropped and counted; the next line of that kind that passes carries
    ``suppressed=N`` (how many were dropped since the last one written), so nothing is hidden,
    only folded. This is what keeps a flood (a connection storm, a scanner) from filling a disk:
    a kind writes at most ``per_second`` lines a second however fast it is raised. Thread-safe
    (media worker threads and the standard library's handlers log too).

    Args:
        per_second: lines per second each event kind may write, sustained.
        burst: lines a kind may write at once after being quiet.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        per_second: float = 20.0,
        burst: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        # event -> [tokens, last refill time, dropped since the last line written]
        self._buckets: dict[str, list[float]] = {}

    def configure(self, per_second: float, burst: int) -> None:
        """Change the limits (the server applies ``server.log_rate_limit`` at start and reload)."""
        with self._lock:
            self.per_second, self.burst = per_second, burst

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        kind = str(event_dict.get("event", ""))[:80]
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(kind)
            if bucket is None:
                if len(self._buckets) >= 10_000:  # bounded: forget the idle kinds
                    self._buckets.clear()
                bucket = self._buckets[kind] = [float(self.burst), now, 0.0]
            tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                bucket[2] += 1
                raise structlog.DropEvent
            bucket[0] = tokens - 1.0
            dropped, bucket[2] = int(bucket[2]), 0.0
        if dropped:
            event_dict["suppressed"] = dropped
        return event_dict


#: The process's log limiter (one per process: structlog's configuration is global).
log_rate_limit = LogRateLimit()


class RefusalLog:
    """Counts every refusal in ``sipserver_refusals_total{ingress,reason}`` and logs each
    ``(ingress, reason)`` once per ``interval`` at warning level, with how many there were.

    The door that refuses (SIP 503, websocket 503/1013, a TCP connection over its cap, a login
    throttled ...) calls :meth:`refuse`; the operator sees one ``refused`` line per kind per
    interval (``count`` since the previous line, ``example`` fields of the newest) instead of a
    line per attempt, and the exact totals in the metric.

    Args:
        metrics: the server's metrics (its ``refusals`` counter).
        interval: seconds between two lines of the same kind.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        metrics: Metrics,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], list[float]] = {}  # key -> [last line time, count]
        self._log = get_logger("sipserver.refusals")
        self.on_refused: Callable[[str, str, dict[str, object]], None] | None = None
        """Also told of every refusal (ingress, reason, fields): the server turns capacity
        refusals of a known agent into call records. Must not raise or block."""

    def refuse(self, ingress: str, reason: str, **fields: object) -> None:
        """Count one refusal at ``ingress`` (``sip``, ``sip_tcp``, ``websocket``, ``twilio``,
        ``listens``, ``http``, ``login`` ...) for ``reason`` (a short fixed word such as
        ``server_full``, ``agent_full``, ``per_source_limit``); ``fields`` describe the newest
        one in the log line (source address, agent)."""
        self._metrics.refusal(ingress, reason)
        if self.on_refused is not None:
            self.on_refused(ingress, reason, fields)
        now = self._clock()
        key = (ingress, reason)
        with self._lock:
            state = self._state.get(key)
            if state is None:
                if len(self._state) >= 1000:
                    self._state.clear()
                state = self._state[key] = [now - self.interval, 0.0]
            state[1] += 1
            if now - state[0] < self.interval:
                return
            count, state[0], state[1] = int(state[1]), now, 0.0
        self._log.warning("refused", ingress=ingress, reason=reason, count=count, **fields)


_settings: dict[str, str] = {"format": "console", "level": "info"}


def debug_logged() -> bool:
    """Whether debug lines are logged: a caller on the per-message path asks before it builds
    a debug line's fields (structlog drops the line cheaply, not the work of its arguments)."""
    return _settings["level"] == "debug"


def info_logged() -> bool:
    """Whether info lines are logged (level ``debug`` or ``info``): see :func:`debug_logged`."""
    return _settings["level"] in ("debug", "info")


def log_settings() -> tuple[Literal["console", "json"], str]:
    """The rendering (``console`` or ``json``, ``auto`` resolved) and the level name set by
    :func:`configure_logging`: what child processes (media workers) are started with, so that
    their lines join the same log in the same format."""
    return ("json" if _settings["format"] == "json" else "console"), _settings["level"]


def configure_logging(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog, and route the standard library's logging through it.

    Args:
        fmt: ``console`` (coloured key=value lines), ``json`` (one object per line) or ``auto``
            (console when stderr is a TTY, JSON otherwise).
        level: minimum level name (``debug``, ``info``, ``warning``, ``error``).
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibToStructlog())
    root.setLevel(numeric)
    logging.captureWarnings(True)
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    _settings.update(format="console" if use_console else "json", level=level.lower())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            log_rate_limit,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a structlog logger whose events carry ``module=name``.

    The logger is a lazy proxy: it picks up :func:`configure_logging` even when it was created
    at import time, before logging was configured.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(module=name)
    return logger


class Metrics:
    """Every Prometheus metric of the server, registered on one registry.

    Attributes are the metric objects; the ``*_by_*`` dictionaries hold pre-bound children for
    label values used on the hot path.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.registrations_active = Gauge(
            "sipserver_registrations_active",
            "Current registrar bindings (registered contacts).",
            registry=r,
        )
        self.register_requests = LoopCounter(
            "sipserver_register_requests",
            "REGISTER requests handled, by result.",
            ("result",),
            registry=r,
        )
        self.auth_failures = Counter(
            "sipserver_auth_failures",
            "Digest authentication failures, by reason.",
            ["reason"],
            registry=r,
        )
        self.bans = Counter(
            "sipserver_bans",
            "Source addresses banned after repeated authentication failures.",
            registry=r,
        )
        self.banned_sources = Gauge(
            "sipserver_banned_sources",
            "Source addresses currently banned.",
            registry=r,
        )
        self.banned_requests = Counter(
            "sipserver_banned_requests",
            "Requests refused because their source address is banned.",
            registry=r,
        )
        self.messages_in = LoopCounter(
            "sipserver_sip_messages_in",
            "SIP messages received, by method (responses count as method RESPONSE).",
            ("transport", "method"),
            registry=r,
        )
        self.messages_out = LoopCounter(
            "sipserver_sip_messages_out",
            "SIP responses sent, by status code.",
            ("transport", "status"),
            registry=r,
        )
        self.parse_errors = Counter(
            "sipserver_sip_parse_errors",
            "SIP messages that could not be parsed, by whether a 400 could be sent back.",
            ["transport", "answered"],
            registry=r,
        )
        self.send_errors = Counter(
            "sipserver_sip_send_errors",
            "SIP datagrams the UDP socket refused to send (a full send buffer, an unreachable "
            "address): dropped, as the network would; the peer retransmits.",
            registry=r,
        )
        self.retransmissions = Counter(
            "sipserver_sip_retransmissions",
            "Request retransmissions answered from the transaction layer (RFC 3261 17.2.2); a "
            "REGISTER without credentials is answered statelessly (8.2.7) and not counted.",
            registry=r,
        )
        self.internal_errors = Counter(
            "sipserver_sip_internal_errors",
            "Requests answered 500 because handling them raised an unexpected error.",
            registry=r,
        )
        self.call_attempts = Counter(
            "sipserver_call_attempts",
            "Dialog-creating INVITEs, by routing result (routed, no_such_number, challenged, "
            "auth_failed, acl_denied, banned, starting, not_ready, draining, no_worker, "
            "overloaded).",
            ["result"],
            registry=r,
        )
        self.media_workers_up = Gauge(
            "sipserver_media_workers_up", "Media worker processes up (said HELLO).", registry=r
        )
        self.ready = Gauge(
            "sipserver_ready",
            "1 when the server takes new calls (GET /readyz answers 200), else 0.",
            registry=r,
        )
        self.calls_active = Gauge(
            "sipserver_calls_active", "Calls in progress through the edge.", registry=r
        )
        self.calls_admitted = Gauge(
            "sipserver_calls_admitted",
            "Calls holding a place in admission control: every door (SIP, websocket, listens).",
            registry=r,
        )
        self.calls_capacity = Gauge(
            "sipserver_calls_capacity",
            "Calls in progress the server takes (server.max_calls); past it calls are refused.",
            registry=r,
        )
        self.voice_sessions_active = Gauge(
            "sipserver_voice_sessions_active", "Calls talking to a voice agent now.", registry=r
        )
        self.voice_turn_latency = Histogram(
            "sipserver_voice_turn_latency_seconds",
            "Time from the caller's last voiced audio to each stage of the agent's reply.",
            ["stage"],
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0),
            registry=r,
        )
        self.voice_interruptions = Counter(
            "sipserver_voice_interruptions",
            "Caller speech that stopped the agent, by kind (paused, resumed, false, interrupted).",
            ["kind"],
            registry=r,
        )
        self.voice_provider_errors = Counter(
            "sipserver_voice_provider_errors",
            "Model stage failures during calls, by stage (stt, llm, tts, turn).",
            ["stage"],
            registry=r,
        )
        self.voice_turn_predictions = Counter(
            "sipserver_voice_turn_predictions",
            "Pauses that can end a caller's turn, by whether the turn model ran on them "
            "(run, skipped_question, skipped_delays, skipped_late).",
            ["outcome"],
            registry=r,
        )
        self.calls_ended = Counter(
            "sipserver_calls_ended", "Calls that ended, by reason.", ["reason"], registry=r
        )
        self.config_reloads = Counter(
            "sipserver_config_reloads",
            "Configuration reloads (SIGHUP / sipserver reload), by result (ok, invalid).",
            ["result"],
            registry=r,
        )
        self.tcp_connections = Gauge(
            "sipserver_sip_tcp_connections",
            "Open SIP TCP connections.",
            registry=r,
        )
        self.ws_calls_active = Gauge(
            "sipserver_ws_calls_active",
            "Calls in progress over media-stream websockets.",
            registry=r,
        )
        self.ws_messages = Counter(
            "sipserver_ws_messages",
            "Media-stream websocket messages, by direction (in, out) and type (media, mark, "
            "start, unknown, invalid ...).",
            ["direction", "type"],
            registry=r,
        )
        self.ws_closes = Counter(
            "sipserver_ws_closes",
            "Media-stream calls ended, by reason (stop, hangup, client_closed, stalled, "
            "invalid_json, bad_base64, bad_media, too_big, binary, no_session, workers_full, "
            "error ...).",
            ["reason"],
            registry=r,
        )
        self.ws_rejected = Counter(
            "sipserver_ws_rejected",
            "Websocket and webhook requests refused, by HTTP status (403 wrong slug or secret, "
            "404 websocket disabled).",
            ["status"],
            registry=r,
        )
        self.ws_jitter = Counter(
            "sipserver_ws_jitter_events",
            "Inbound jitter buffer events of ended media-stream calls, by kind (late, lost, "
            "duplicates, concealed_frames, overflow_frames, underruns, catchup_frames).",
            ["kind"],
            registry=r,
        )
        self.ws_late_ticks = Counter(
            "sipserver_ws_late_ticks",
            "Media-stream ticks skipped because a call's tick task fell more than 0.5 s behind.",
            registry=r,
        )
        self.twilio_webhooks = Counter(
            "sipserver_twilio_webhooks",
            "Twilio voice webhooks answered, by result (ok, bad_signature).",
            ["result"],
            registry=r,
        )
        self.listens_calls_active = Gauge(
            "sipserver_listens_calls_active",
            "Calls monitored by AI Listens now (fork websockets and SIP).",
            registry=r,
        )
        self.listens_webhooks = Counter(
            "sipserver_listens_webhooks",
            "AI Listens webhooks answered, by result (forked, not_monitored, no_forward_to, "
            "bad_signature).",
            ["result"],
            registry=r,
        )
        self.listens_suggestions = Counter(
            "sipserver_listens_suggestions",
            "Suggestions sent to the dashboard, by mode (passage, llm).",
            ["mode"],
            registry=r,
        )
        self.listens_utterances_dropped = Counter(
            "sipserver_listens_utterances_dropped",
            "Monitored utterances dropped untranscribed because the STT fell behind.",
            registry=r,
        )
        self.dashboard_logins = Counter(
            "sipserver_dashboard_logins",
            "Dashboard login attempts, by result "
            "(ok, bad_credentials, bad_origin, throttled, busy).",
            ["result"],
            registry=r,
        )
        self.refusals = Counter(
            "sipserver_refusals",
            "Requests, connections and calls refused at a door, by ingress and reason "
            "(server_full, agent_full, connection caps, rate limits ...).",
            ["ingress", "reason"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "sipserver_webhook_deliveries",
            "Webhook delivery outcomes, by kind (call_started, call_ended, transcript) and"
            " outcome: delivered; retry (an attempt failed, another follows); failed (given up:"
            " a 4xx answer or retry_for passed); queue_full (dropped unsent, the queue was full).",
            ["kind", "outcome"],
            registry=r,
        )
        self.webhook_queue_depth = Gauge(
            "sipserver_webhook_queue_depth",
            "Webhook deliveries waiting to be delivered (pending).",
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "sipserver_event_loop_tasks",
            "asyncio tasks alive on the server's event loop, counted when /metrics is read "
            "(a line that keeps rising under steady load is a task leak).",
            registry=r,
        )
        self._refusals: dict[tuple[str, str], Counter] = {}
        self._ws: dict[tuple[str, str], Counter] = {}

    def call_result(self, result: str) -> None:
        """Count one INVITE routing outcome."""
        self.call_attempts.labels(result).inc()

    def ws_message(self, direction: str, kind: str) -> None:
        """Count one media-stream websocket message (hot path: children are cached)."""
        key = (direction, kind)
        child = self._ws.get(key)
        if child is None:
            child = self._ws[key] = self.ws_messages.labels(direction, kind)
        child.inc()

    def ws_jitter_counts(self, counts: dict[str, int]) -> None:
        """Add an ended call's jitter buffer counters (``received`` is left out)."""
        for kind, value in counts.items():
            if value and kind != "received":
                self.ws_jitter.labels(kind).inc(value)

    def refusal(self, ingress: str, reason: str) -> None:
        """Count one refusal (use :class:`RefusalLog`, which also logs it)."""
        key = (ingress, reason)
        child = self._refusals.get(key)
        if child is None:
            child = self._refusals[key] = self.refusals.labels(ingress, reason)
        child.inc()

    def count_tasks_of(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the tasks alive on ``loop`` as ``sipserver_event_loop_tasks``.

        Counted at each scrape (one pass over the loop's task set), nothing on the hot path.
        """
        self.event_loop_tasks.set_function(lambda: float(len(asyncio.all_tasks(loop))))

    def render(self) -> bytes:
        """Return the registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
