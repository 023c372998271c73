"""The media-stream gateway: Twilio's webhook and ``/ws/<slug>/<secret>`` media streams.

:class:`MediaStreamGateway` adds two routes to the server's aiohttp application:

- ``POST /incoming-call/<slug>/<secret>``: Twilio's voice webhook, answered with TwiML that
  connects the call to the agent's media stream (:mod:`sipserver.gateway.twilio`);
- ``GET /ws/<slug>/<secret>``: a websocket speaking Twilio Media Streams (plus 16 kHz L16 for
  browsers), one call per socket.

Each call runs a :class:`~sipserver.pipeline.session.CallSession` on a 20 ms tick of its own
(:class:`StreamCall`): caller audio goes through a :class:`~sipserver.media.jitter.JitterBuffer`
into ``on_audio``, then ``next_frame`` gives the frame sent back. The tick runs ``lead_ms`` ahead
of real time, so the far side holds about that much agent audio: enough to ride over network
jitter, little for a ``clear`` (sent when the session interrupts the agent) to throw away. Marks
follow the media every ``mark_interval_ms``; their echoes say how much the caller has heard.

Failures stay inside their socket: a malformed message closes that socket with a close code
and a reason (RFC 6455 1007 invalid data, 1009 too big, 1003 unsupported), a silent far side
ends its call after ``stall_timeout``, and whatever ends a call, the session's ``on_hangup``
runs once and the call's task is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from sipserver.admission import RETRY_AFTER, CallLedger, Reservation
from sipserver.config import Agent, Config
from sipserver.gateway import twilio
from sipserver.media.jitter import JitterBuffer
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.pipeline.call_record import CallBook
from sipserver.pipeline.events import (
    AgentText,
    Interruption,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
)
from sipserver.pipeline.session import FRAME_MS, CallInfo, CallSession
from sipserver.tasks import cancel_and_wait

__all__ = [
    "CallRefused",
    "MediaStreamGateway",
    "SessionFactory",
    "StreamCall",
]

log = get_logger(__name__)

SessionFactory = Callable[[CallInfo, Callable[[SessionEvent], None]], CallSession | None]
"""Builds a call's session; the callable it gets receives the session's events. None: the agent
cannot take calls (closed 1011); raises :class:`CallRefused` when it could take the call later."""


class CallRefused(Exception):
    """Raised by a :data:`SessionFactory` that has no room for the call now but may later (no
    call worker ready, every one full; the factory has counted the refusal). The socket closes
    with 1013 "try again later" (RFC 6455 §7.4.1, the IANA WebSocket close code registry) and
    the exception's text as the reason; 1011 stays for a server fault, such as a call worker
    that crashes mid-call.

    Args:
        reason: the close reason the client reads (short: a close frame holds 123 bytes).
    """


_TICK = FRAME_MS / 1000
_MAX_BEHIND = 0.5  # a tick loop further behind than this skips ticks instead of bursting
_HANGUP_DRAIN_EXTRA = 0.5  # after a session hangup: wait for the last mark this much past lead
_CLEAR_KINDS = frozenset({"paused", "interrupted"})


class StreamCall:
    """One media stream: the socket, the session, the jitter buffer and the tick task.

    Args:
        ws: the prepared websocket.
        agent: the agent the stream reaches.
        gateway: the owning gateway (settings, metrics, session factory).
    """

    def __init__(self, ws: web.WebSocketResponse, agent: Agent, gateway: MediaStreamGateway):
        self.ws = ws
        self.agent = agent
        self.gateway = gateway
        settings = gateway.config.server.media_streams
        self.lead_ticks = settings.lead_ms // FRAME_MS
        self.mark_every = max(1, settings.mark_interval_ms // FRAME_MS)
        self.jitter_ms = settings.jitter_ms
        self.session: CallSession | None = None
        self.info: CallInfo | None = None
        self.format = twilio.MULAW_8K
        self.jitter: JitterBuffer | None = None
        self.sid_json = '""'
        self.events_wanted = False
        self.ticker: asyncio.Task[None] | None = None
        self.end_reason: str | None = None
        self.last_media = 0.0
        self.session_reason = "client_closed"
        self.ticks = 0
        self.clear_pending = False
        self.pending_marks: deque[int] = deque(maxlen=256)
        self.heard_ticks = 0
        self.late_ticks = 0
        self._hangup_mark: asyncio.Future[None] | None = None
        self._outbox: deque[str] = deque(maxlen=64)

    # ------------------------------------------------------------------------------ inbound

    async def run(self, stall_timeout: float, max_bytes: int) -> None:
        """Read messages until the socket closes, the stream stops or the far side stalls
        (no media, or nothing at all before the first media, for ``stall_timeout`` seconds)."""
        ws = self.ws
        metrics = self.gateway.metrics
        loop = asyncio.get_running_loop()
        self.last_media = loop.time()
        while not ws.closed:
            remaining = self.last_media + stall_timeout - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                await self.close("stalled", WSCloseCode.GOING_AWAY, "stalled: no media")
                return
            if msg.type is WSMsgType.TEXT and len(msg.data) > max_bytes:
                metrics.ws_message("in", "too_big")
                reason = f"message too big ({len(msg.data)} > {max_bytes} bytes)"
                await self.close("too_big", WSCloseCode.MESSAGE_TOO_BIG, reason)
                return
            if msg.type is WSMsgType.TEXT:
                try:
                    event = twilio.parse_message(msg.data)
                except twilio.ProtocolError as exc:
                    metrics.ws_message("in", "invalid")
                    await self.close(_close_label(exc.reason), exc.code, exc.reason)
                    return
                metrics.ws_message("in", _event_label(event))
                try:
                    if not await self.handle(event):
                        return
                except twilio.ProtocolError as exc:
                    await self.close(_close_label(exc.reason), exc.code, exc.reason)
                    return
            elif msg.type is WSMsgType.BINARY:
                metrics.ws_message("in", "binary")
                await self.close(
                    "binary", WSCloseCode.UNSUPPORTED_DATA, "binary messages are not supported"
                )
                return
            elif msg.type is WSMsgType.ERROR:
                # aiohttp already closed the socket (1009 for a message over its hard limit).
                too_big = getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                metrics.ws_message("in", "too_big" if too_big else "error")
                await self.close(
                    "too_big" if too_big else "socket_error",
                    WSCloseCode.MESSAGE_TOO_BIG if too_big else WSCloseCode.PROTOCOL_ERROR,
                    "message too big" if too_big else "websocket protocol error",
                )
                return
            else:  # CLOSE, CLOSING, CLOSED: the far side (or our tick task) is closing
                self._end("client_closed")
                return

    async def handle(self, event: twilio.StreamEvent) -> bool:
        """Apply one inbound event; False when the stream is over."""
        if isinstance(event, twilio.Media):
            self.last_media = asyncio.get_running_loop().time()
            if self.jitter is None:
                return True  # media before start: ignored (counted as received)
            pcm = self._decode(event.payload)
            try:
                self.jitter.push(pcm, event.chunk)
            except ValueError as exc:
                raise twilio.ProtocolError(twilio.CLOSE_INVALID_DATA, f"bad media: {exc}") from None
            return True
        if isinstance(event, twilio.Start):
            if self.session is None:
                self._start(event)
            return True
        if isinstance(event, twilio.Mark):
            self._mark_played(event.name)
            return True
        if isinstance(event, twilio.Dtmf):
            if self.session is not None and self.end_reason is None:
                self.session.on_dtmf(event.digit)
            return True
        if isinstance(event, twilio.Stop):
            await self.close("stop", WSCloseCode.OK, "stream stopped")
            return False
        return True  # connected, unknown: nothing to do

    def _decode(self, payload: bytes) -> bytes:
        return twilio.decode_payload(self.format, payload)

    def _encode(self, pcm: bytes) -> bytes:
        return twilio.encode_payload(self.format, pcm)

    def _start(self, start: twilio.Start) -> None:
        params = start.custom_parameters
        self.format = start.media_format
        self.sid_json = json.dumps(start.stream_sid)
        self.events_wanted = (
            self.format is twilio.L16_16K or params.get("sipserver_events", "") == "true"
        )
        transport = "twilio" if start.call_sid.startswith("CA") else "websocket"
        info = CallInfo(
            call_id=start.stream_sid,
            agent=self.agent.slug,
            caller=params.get("caller") or params.get("From", ""),
            called=params.get("called") or params.get("To", ""),
            sample_rate=self.format.sample_rate,
            transport=transport,
        )
        ledger = self.gateway.ledger
        if ledger is not None and ledger.over_limit(self.agent.slug):
            # Upgraded when there was room, but a reload has lowered the agent's limit since.
            self.gateway.refuse(
                "websocket",
                "agent_full",
                self.agent,
                None,
                caller=info.caller,
                called=info.called,
                call_sid=start.call_sid,
            )
            raise twilio.ProtocolError(WSCloseCode.TRY_AGAIN_LATER, "agent at capacity")
        try:
            session = self.gateway.session_factory(info, self._on_event)
        except CallRefused as exc:
            raise twilio.ProtocolError(WSCloseCode.TRY_AGAIN_LATER, str(exc)) from None
        if session is None:
            raise twilio.ProtocolError(WSCloseCode.INTERNAL_ERROR, "agent unavailable")
        self.info = info
        self.jitter = JitterBuffer(info.sample_rate, target_ms=self.jitter_ms)
        records = self.gateway.records
        if records is not None:
            # Before on_start: the session's first events (a greeting) find the record open.
            records.open(
                ("ws", info.call_id),
                agent=info.agent,
                ingress=transport,
                caller=info.caller,
                called=info.called or info.agent,
                call_sid=start.call_sid or None,
                codec=self.format.encoding,
            )
        session.on_start(info)
        self.session = session
        self.ticker = asyncio.get_running_loop().create_task(
            self._tick_loop(), name=f"ws-call-{start.stream_sid[:40]}"
        )
        log.info(
            "ws_call_started",
            call_id=info.call_id,
            agent=info.agent,
            transport=transport,
            encoding=self.format.encoding,
            call_sid=start.call_sid or None,
        )

    def _mark_played(self, name: str) -> None:
        if not name.startswith("t"):
            self.gateway.metrics.ws_message("in", "mark_foreign")
            return
        tick = int(name[1:]) if name[1:].isdigit() else -1
        while self.pending_marks and self.pending_marks[0] <= tick:
            self.pending_marks.popleft()
        self.heard_ticks = max(self.heard_ticks, tick)
        if name == "tend" and self._hangup_mark is not None and not self._hangup_mark.done():
            self._hangup_mark.set_result(None)

    def _on_event(self, event: SessionEvent) -> None:
        """Session events (sync, inside on_audio/next_frame): clears and the browser feed."""
        if isinstance(event, Interruption) and event.kind in _CLEAR_KINDS:
            self.clear_pending = True
        if not self.events_wanted:
            return
        body: dict[str, Any] | None = None
        if isinstance(event, StateChanged):
            body = {"type": "state", "state": event.new.value}
        elif isinstance(event, TranscriptReceived):
            body = {"type": "transcript", "text": event.text, "final": event.final}
        elif isinstance(event, AgentText):
            body = {"type": "agent_text", "text": event.text}
        elif isinstance(event, Interruption):
            body = {"type": "interruption", "kind": event.kind, "heard": event.heard}
        if body is not None:
            self._outbox.append(twilio.event_message(self.sid_json, body))

    # ----------------------------------------------------------------------------- outbound

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # Every call ticks on one 20 ms grid: the calls' timers fire in the same loop iteration,
        # so the frames of calls relayed to a call worker leave in one write and come back in
        # one read (4x cheaper per frame than staggered ticks: docs/websocket.md).
        start = math.ceil(loop.time() / _TICK) * _TICK
        try:
            while self.end_reason is None:
                due = start + (self.ticks - self.lead_ticks) * _TICK
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                if now - due > _MAX_BEHIND:
                    skipped = int((now - due) / _TICK)
                    start += skipped * _TICK
                    self.late_ticks += skipped
                    self.gateway.metrics.ws_late_ticks.inc(skipped)
                await self._tick()
                # Sending rarely suspends: a loop catching up on late ticks would run them
                # back to back and hold the event loop (SIP, HTTP, every other call) meanwhile.
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError) as exc:
            self._end("socket_error")
            log.info("ws_send_failed", call_id=self._call_id, error=repr(exc))
        except Exception:
            log.exception("ws_tick_failed", call_id=self._call_id)
            await self.close("error", WSCloseCode.INTERNAL_ERROR, "internal error")

    async def _tick(self) -> None:
        session, jitter, ws = self.session, self.jitter, self.ws
        assert session is not None and jitter is not None
        metrics = self.gateway.metrics
        for frame in jitter.pop():
            session.on_audio(frame)
        pcm = session.next_frame()
        self.ticks += 1
        if self.clear_pending:
            self.clear_pending = False
            await ws.send_str(twilio.clear_message(self.sid_json))
            metrics.ws_message("out", "clear")
            # The peer drops what it had queued: about the lead we keep ahead of real time.
            rewind = getattr(session, "rewind", None)
            if rewind is not None:
                rewind(self.lead_ticks * FRAME_MS)
        while self._outbox:
            await ws.send_str(self._outbox.popleft())
            metrics.ws_message("out", "sipserver")
        await ws.send_str(twilio.media_message(self.sid_json, self._encode(pcm)))
        metrics.ws_message("out", "media")
        if self.ticks % self.mark_every == 0:
            await self._send_mark(f"t{self.ticks}")
            self.pending_marks.append(self.ticks)
        reason = session.hangup_requested
        if reason is not None:
            await self._session_hangup(reason)

    async def _send_mark(self, name: str) -> None:
        await self.ws.send_str(twilio.mark_message(self.sid_json, name))
        self.gateway.metrics.ws_message("out", "mark")

    async def _session_hangup(self, reason: str) -> None:
        """The session ends the call: let the audio already sent play out, then close."""
        self._end("hangup", session_reason=reason)
        self._hangup_mark = asyncio.get_running_loop().create_future()
        if self.events_wanted:
            body = {"type": "hangup", "reason": reason}
            await self.ws.send_str(twilio.event_message(self.sid_json, body))
        await self._send_mark("tend")
        wait = self.lead_ticks * _TICK + _HANGUP_DRAIN_EXTRA
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._hangup_mark, wait)
        await self.ws.close(code=WSCloseCode.OK, message=f"call ended: {reason}"[:120].encode())

    # ------------------------------------------------------------------------------ teardown

    def _end(self, label: str, *, session_reason: str | None = None) -> None:
        if self.end_reason is None:
            self.end_reason = label
            self.session_reason = session_reason or label

    async def close(self, label: str, code: int, reason: str) -> None:
        """End the call (first reason wins) and close the socket with ``code`` and ``reason``."""
        self._end(label)
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, message=reason[:120].encode())

    async def finish(self) -> None:
        """Stop the tick task and hang the session up (exactly once)."""
        self._end("client_closed")
        ticker = self.ticker
        if ticker is not None and not ticker.done():
            if self.end_reason == "hangup":  # the tick task is closing the socket itself
                await asyncio.wait({ticker}, timeout=self.lead_ticks * _TICK + 3.0)
            await cancel_and_wait(ticker)
        if self.session is not None:
            try:
                self.session.on_hangup(self.session_reason)
            except Exception:
                log.exception("session_hangup_failed", call_id=self._call_id)
        records = self.gateway.records
        if records is not None and self.info is not None:
            # After on_hangup: the session's last events (the agent's last line) are in.
            label = self.end_reason or "client_closed"
            reason = self.session_reason if label == "hangup" else label
            records.close(("ws", self.info.call_id), end_reason=reason, ended_by=_ended_by(label))
        jitter = self.jitter
        if jitter is not None:
            self.gateway.metrics.ws_jitter_counts(jitter.stats.as_dict())
        if self.info is not None:
            log.info(
                "ws_call_ended",
                call_id=self._call_id,
                reason=self.end_reason,
                ticks=self.ticks,
                heard_ms=self.heard_ticks * FRAME_MS,
                late_ticks=self.late_ticks,
                **({} if jitter is None else jitter.stats.as_dict()),
            )

    @property
    def _call_id(self) -> str:
        return self.info.call_id if self.info is not None else ""


def _event_label(event: twilio.StreamEvent) -> str:
    if isinstance(event, twilio.Unknown):
        return "unknown"
    return type(event).__name__.lower()


def _ended_by(label: str) -> str:
    """Who ended a stream call (a call record's ``ended_by``), from its end label."""
    if label in ("client_closed", "stop"):
        return "caller"
    if label == "hangup":
        return "agent"  # the record book takes the session's word for a DTMF hang-up
    if label == "stalled":
        return "timeout"
    if label == "server_shutdown":
        return "server"
    return "error"  # worker_lost, socket_error, protocol errors, an internal error


def _close_label(reason: str) -> str:
    for key, label in (
        ("JSON", "invalid_json"),
        ("base64", "bad_base64"),
        ("media", "bad_media"),
        ("mediaFormat", "unsupported_format"),
        ("unavailable", "no_session"),
        ("capacity", "at_capacity"),
        ("no call worker", "no_worker_up"),
        ("workers full", "workers_full"),
    ):
        if key in reason:
            return label
    return "protocol_error"


class MediaStreamGateway:
    """The Twilio webhook and websocket routes, and the calls in progress on them.

    Args:
        config: returns the current configuration (a reload applies to new requests).
        session_factory: builds each call's session.
        metrics: where calls, messages and closes are counted.
        on_call_ended: called when a call has left :attr:`calls` (a stop waits for the last).
        ledger: admission control: a call is refused (HTTP 503 before the upgrade, TwiML
            ``<Reject reason="busy"/>`` at the webhook) past the server's or the agent's limit,
            and holds its place from the upgrade until its handler ends.
        refusals: where those refusals are counted and logged.
        records: where each call's record goes (None: not recorded; assignable later).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        session_factory: SessionFactory,
        metrics: Metrics,
        *,
        on_call_ended: Callable[[], None] | None = None,
        ledger: CallLedger | None = None,
        refusals: RefusalLog | None = None,
        records: CallBook | None = None,
    ) -> None:
        self._config = config
        self.session_factory = session_factory
        self.records = records
        self.metrics = metrics
        self._on_call_ended = on_call_ended
        self.ledger = ledger
        self._refusals = refusals
        self.calls: set[StreamCall] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config()

    def add_routes(self, app: web.Application) -> None:
        """Register the routes and a shutdown hook that closes every stream."""
        app.router.add_post("/incoming-call/{slug}/{secret}", self.incoming_call)
        app.router.add_get("/ws/{slug}/{secret}", self.media_stream)
        app.on_shutdown.append(self._shutdown)

    def close_sessions(self, sessions: Collection[object], code: int, reason: str) -> int:
        """Close the streams whose session is one of ``sessions`` (their call worker went away:
        1011), through each stream's own close path; returns how many."""
        closing = [call for call in self.calls if call.session in sessions]
        for call in closing:
            task = asyncio.get_running_loop().create_task(call.close("worker_lost", code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return len(closing)

    async def close_all(self) -> None:
        """End every stream in progress (server shutdown): close code 1001."""
        for call in list(self.calls):
            await call.close("server_shutdown", WSCloseCode.GOING_AWAY, "server shutting down")
        for _ in range(100):  # let the handlers finish their teardown
            if not self.calls:
                break
            await asyncio.sleep(0.02)

    def _authorize(self, request: web.Request) -> Agent:
        """The agent of ``/<slug>/<secret>``; 403 (wrong slug or secret), 404 (disabled)."""
        slug = request.match_info["slug"]
        secret = request.match_info["secret"]
        agent = self.config.agent_by_slug(slug)
        expected = agent.websocket.secret if agent is not None else None
        if agent is None or not twilio.secret_matches(secret, expected):
            self.metrics.ws_rejected.labels("403").inc()
            raise web.HTTPForbidden(text="forbidden")
        if not agent.websocket.enabled:
            self.metrics.ws_rejected.labels("404").inc()
            raise web.HTTPNotFound(text="not found")
        return agent

    def refuse(
        self,
        ingress: str,
        reason: str,
        agent: Agent,
        request: web.Request | None,
        *,
        caller: str = "",
        called: str = "",
        call_sid: str = "",
    ) -> None:
        """Count and log one refusal at capacity; what is known of the call (the caller, the
        number called, Twilio's CallSid) goes into its log line and its call record."""
        if self._refusals is not None:
            source = request.remote if request is not None else None
            call = {"caller": caller, "called": called, "call_sid": call_sid}
            self._refusals.refuse(
                ingress,
                reason,
                agent=agent.slug,
                source=source,
                **{k: v for k, v in call.items() if v},
            )

    def _admit(self, request: web.Request, agent: Agent) -> Reservation | None:
        """Reserve the call's place, or raise HTTP 503 with Retry-After (before any upgrade:
        RFC 6455 §4.1 lets the client see a non-101 status as a refused handshake)."""
        if self.ledger is None:
            return None
        reason = self.ledger.admit(agent.slug, "websocket")
        if isinstance(reason, Reservation):
            return reason
        self.refuse("websocket", reason, agent, request)
        self.metrics.ws_rejected.labels("503").inc()
        raise web.HTTPServiceUnavailable(
            text=f"at capacity ({reason}): retry later",
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    async def incoming_call(self, request: web.Request) -> web.Response:
        """Twilio's voice webhook: TwiML that connects the call to the agent's stream."""
        agent = self._authorize(request)
        form = await request.post()
        params = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        token = agent.websocket.twilio_auth_token
        if token is not None and not twilio.signed(request, token, params, self.config):
            self.metrics.twilio_webhooks.labels("bad_signature").inc()
            log.warning("twilio_bad_signature", agent=agent.slug)
            raise web.HTTPForbidden(text="invalid signature")
        refusal = self.ledger.refusal(agent.slug) if self.ledger is not None else None
        if refusal is not None:
            # Twilio plays a busy signal and does not bill the call; it is not retried.
            self.refuse(
                "twilio",
                refusal,
                agent,
                request,
                caller=params.get("From", ""),
                called=params.get("To", ""),
                call_sid=params.get("CallSid", ""),
            )
            self.metrics.twilio_webhooks.labels("busy").inc()
            return web.Response(text=twilio.busy_twiml(), content_type="application/xml")
        stream_url = agent.urls(self.config.server.public_url)["websocket"]
        twiml = twilio.connect_twiml(
            stream_url,
            {
                "caller": params.get("From", ""),
                "called": params.get("To", ""),
                "callSid": params.get("CallSid", ""),
            },
        )
        self.metrics.twilio_webhooks.labels("ok").inc()
        log.info("twilio_call", agent=agent.slug, call_sid=params.get("CallSid"))
        return web.Response(text=twiml, content_type="application/xml")

    async def media_stream(self, request: web.Request) -> web.WebSocketResponse:
        """One call over a websocket (Twilio Media Streams, or a browser)."""
        agent = self._authorize(request)
        settings = self.config.server.media_streams
        # aiohttp's own limit is a hard cap (it closes with 1009 and no reason); messages between
        # the configured limit and the cap get a close reason from StreamCall.run.
        ws = web.WebSocketResponse(max_msg_size=4 * settings.max_message_bytes, timeout=2.0)
        reservation = self._admit(request, agent)
        try:
            await ws.prepare(request)
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        call = StreamCall(ws, agent, self)
        self.calls.add(call)
        self.metrics.ws_calls_active.inc()
        try:
            await call.run(settings.stall_timeout, settings.max_message_bytes)
        finally:
            try:
                await call.finish()
            finally:
                if reservation is not None:
                    reservation.release()
                self.calls.discard(call)
                self.metrics.ws_calls_active.dec()
                self.metrics.ws_closes.labels(call.end_reason or "unknown").inc()
                if self._on_call_ended is not None:
                    self._on_call_ended()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _shutdown(self, _: web.Application) -> None:
        await self.close_all()
