"""AI Listens ingress: the Twilio webhook, the fork websocket and the receive-only SIP session.

- ``POST /listens/<slug>/<secret>``: the voice webhook of a monitored number. When ``To`` is one
  of the agent's ``listens.numbers`` it answers TwiML that starts a unidirectional fork of the
  call (``<Start><Stream track=…>``, the track from ``listens.channel``) and ``<Dial>``\\ s the
  human agent (``listens.forward_to``); any other number gets ``<Reject/>``.
  ``X-Twilio-Signature`` is checked as for ``/incoming-call`` (``websocket.twilio_auth_token``).
- ``GET /listens/<slug>/<secret>/stream``: the fork, Twilio Media Streams. Nothing is ever sent
  back: each transcribed track's mu-law audio goes to a
  :class:`~sipserver.listens.transcriber.ListenedCall`.
- :class:`ListenSession`: a SIP call from the agent's PBX to a listens number, answered
  silently (the session's frames are silence); its one audio stream is transcribed as
  ``listens.channel`` says (the caller, the human agent, or both mixed: see
  :func:`~sipserver.listens.transcriber.sip_speakers_for`).

A wrong slug or secret is 403 without saying which; listens disabled is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from sipserver.admission import RETRY_AFTER, CallLedger, Reservation
from sipserver.config import Agent, Config, called_number, is_listens_number
from sipserver.gateway import twilio
from sipserver.gateway.twilio import decode_payload, secret_matches, signed
from sipserver.listens.monitor import CallSummary, ListensHub, MonitoredCall
from sipserver.listens.transcriber import ListenedCall, speakers_for
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.pipeline.listening import SipListenSession
from sipserver.pipeline.runtime import ListenParts
from sipserver.pipeline.session import CallInfo

__all__ = [
    "TRACK_OF_CHANNEL",
    "ListenSession",
    "ListensFork",
    "called_number",
    "is_listens_number",
]

log = get_logger(__name__)

TRACK_OF_CHANNEL: Final = {
    "inbound": "inbound_track",
    "outbound": "outbound_track",
    "both_tracks": "both_tracks",
}
"""``listens.channel`` -> the ``track`` attribute of TwiML ``<Stream>``."""

PartsFor = Callable[[Agent], ListenParts | None]
"""The listens parts of an agent (see :meth:`VoiceRuntime.listen_parts`)."""


class ForkRelay(Protocol):
    """A fork transcribed in a call worker (``server.media.engine: native``): main only relays
    each transcribed track's frames (``sipserver.rtp.relay.RemoteFork``)."""

    @property
    def ended(self) -> str | None:
        """Why the worker ended the fork (or lost it); None while it runs."""

    def start(self, info: CallInfo) -> None:
        """Tell the worker the fork started."""

    def push(self, track: str, pcm: bytes) -> None:
        """One frame of a track (s16le at the fork's rate)."""

    def close(self, reason: str) -> None:
        """The fork ended here."""


class ForkRelays(Protocol):
    """Where forks are transcribed when not here (see :class:`ForkRelay`)."""

    def active(self) -> bool:
        """True when forks are relayed to call workers (main runs no model)."""

    def open(self, agent: Agent, tracks: tuple[str, ...]) -> ForkRelay | None:
        """A fork transcribed by the least loaded ready call worker (None: none up, or all
        full)."""


class ListenSession(SipListenSession):
    """A receive-only SIP call to a listens number, monitored in this process (the pjsua2
    engine: :class:`~sipserver.pipeline.listening.SipListenSession`).

    Args:
        fork: The listens service (hub, parts, metrics).
        agent: The agent whose number was called.
        parts: That agent's listens parts.
    """

    refused_reason = "too many monitored calls"

    def __init__(self, fork: ListensFork, agent: Agent, parts: ListenParts) -> None:
        super().__init__(agent, parts)
        self._fork = fork

    def _open(self, info: CallInfo, summary: dict[str, Any]) -> ListenedCall | None:
        return self._fork.open_call(
            CallSummary(**summary), self._parts, self._speakers, info.sample_rate
        )

    def _close(self, call: ListenedCall, reason: str) -> None:
        self._fork.close_later(call, reason)


class ListensFork:
    """The listens routes and the monitored calls they feed.

    Args:
        config: Returns the configuration in force.
        parts_for: The listens parts of an agent.
        hub: Where monitored calls are published.
        metrics: Counters and gauges.
        ledger: Admission control: a fork holds a place of its agent's and of the server's
            capacity; past either the fork websocket gets HTTP 503 before the upgrade, and the
            webhook dials the human agent without a fork.
        refusals: Where those refusals are counted and logged.
        relays: Call workers that transcribe forks (``server.media.engine: native``): then
            main only relays each track's frames (docs/listens.md "Where it runs").
    """

    def __init__(
        self,
        config: Callable[[], Config],
        parts_for: PartsFor,
        hub: ListensHub,
        metrics: Metrics,
        *,
        ledger: CallLedger | None = None,
        refusals: RefusalLog | None = None,
        relays: ForkRelays | None = None,
    ) -> None:
        self._config = config
        self._relays = relays
        self._ledger = ledger
        self._refusals = refusals
        self._parts_for = parts_for
        self.hub = hub
        self.metrics = metrics
        self._closing: set[asyncio.Task[None]] = set()
        self._sockets: set[web.WebSocketResponse] = set()

    def add_routes(self, app: web.Application) -> None:
        """Register the webhook and the fork websocket."""
        app.router.add_post("/listens/{slug}/{secret}", self.webhook)
        app.router.add_get("/listens/{slug}/{secret}/stream", self.stream)

    # --------------------------------------------------------------------------- calls

    def open_call(
        self, summary: CallSummary, parts: ListenParts, speakers: dict[str, str], rate: int
    ) -> ListenedCall | None:
        """Start monitoring a call; None when the hub is full."""
        monitored = self.hub.open(summary)
        if monitored is None:
            log.warning("listens_call_refused", call_id=summary.call_id, reason="hub full")
            return None
        self.metrics.listens_calls_active.inc()
        log.info(
            "listens_call_started",
            call_id=summary.call_id,
            agent=summary.agent,
            number=summary.number,
            channel=summary.channel,
            transport=summary.transport,
        )
        try:
            return ListenedCall(parts, monitored, speakers, input_rate=rate, metrics=self.metrics)
        except Exception:
            log.exception("listens_call_failed", call_id=summary.call_id)
            monitored.end("error")
            self.metrics.listens_calls_active.dec()
            return None

    async def close_call(self, call: ListenedCall, reason: str) -> None:
        """Transcribe what is left, then end the monitored call."""
        try:
            await call.close()
        finally:
            monitored = call.monitored
            assert isinstance(monitored, MonitoredCall)  # open_call built it on the hub
            monitored.end(reason)
            self.metrics.listens_calls_active.dec()
            log.info(
                "listens_call_ended",
                call_id=call.monitored.summary.call_id,
                reason=reason,
                lines=call.lines,
                dropped=call.dropped,
                suggestions_skipped=dict(call.engine.skipped),
            )

    def close_later(self, call: ListenedCall, reason: str) -> None:
        """:meth:`close_call` in a task (from synchronous session code)."""
        task = asyncio.get_running_loop().create_task(self.close_call(call, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def sip_session(self, agent: Agent) -> ListenSession | None:
        """The receive-only session of a SIP call to one of ``agent``'s listens numbers."""
        parts = self._parts_for(agent)
        return None if parts is None else ListenSession(self, agent, parts)

    async def close_all(self) -> None:
        """Server shutdown: close the forks (1001), finish the SIP calls' transcriptions, end
        every monitored call and dashboard stream."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        for _ in range(100):  # let the handlers finish their teardown
            if not self._sockets:
                break
            await asyncio.sleep(0.02)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5)
        self.hub.end_all()

    # --------------------------------------------------------------------------- HTTP

    def _authorize(self, request: web.Request) -> Agent:
        config = self._config()
        agent = config.agent_by_slug(request.match_info["slug"])
        expected = agent.websocket.secret if agent is not None else None
        if agent is None or not secret_matches(request.match_info["secret"], expected):
            self.metrics.ws_rejected.labels("403").inc()
            raise web.HTTPForbidden(text="forbidden")
        if not agent.listens.enabled:
            self.metrics.ws_rejected.labels("404").inc()
            raise web.HTTPNotFound(text="not found")
        return agent

    async def webhook(self, request: web.Request) -> web.Response:
        """Twilio's voice webhook for a monitored number: fork, then dial the human agent."""
        agent = self._authorize(request)
        config = self._config()
        form = await request.post()
        params = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        token = agent.websocket.twilio_auth_token
        if token is not None and not signed(request, token, params, config):
            self.metrics.listens_webhooks.labels("bad_signature").inc()
            log.warning("twilio_bad_signature", agent=agent.slug, route="listens")
            raise web.HTTPForbidden(text="invalid signature")
        called = params.get("To", "")
        if not is_listens_number(config, agent, called):
            self.metrics.listens_webhooks.labels("not_monitored").inc()
            log.info("listens_not_monitored", agent=agent.slug, called=called)
            return _twiml(twilio.reject_twiml())
        forward_to = agent.listens.forward_to
        if forward_to is None:
            self.metrics.listens_webhooks.labels("no_forward_to").inc()
            log.error("listens_without_forward_to", agent=agent.slug)
            return _twiml(twilio.reject_twiml())
        refusal = self._ledger.refusal(agent.slug) if self._ledger is not None else None
        if refusal is not None:
            # Monitoring is full, the call is not: the caller still reaches the human agent.
            self._refuse(refusal, agent, request)
            self.metrics.listens_webhooks.labels("busy").inc()
            return _twiml(twilio.dial_twiml(forward_to))
        twiml = twilio.fork_twiml(
            agent.urls(config.server.public_url)["listens_stream"],
            TRACK_OF_CHANNEL[agent.listens.channel],
            forward_to,
            {
                "caller": params.get("From", ""),
                "called": called,
                "callSid": params.get("CallSid", ""),
            },
        )
        self.metrics.listens_webhooks.labels("forked").inc()
        log.info("listens_webhook", agent=agent.slug, call_sid=params.get("CallSid"))
        return _twiml(twiml)

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        """The fork: Twilio Media Streams in, nothing out."""
        agent = self._authorize(request)
        relays = self._relays if self._relays is not None and self._relays.active() else None
        parts = None if relays is not None else self._parts_for(agent)
        if relays is None and parts is None:
            raise web.HTTPServiceUnavailable(text="listens model unavailable")
        settings = self._config().server.media_streams
        ws = web.WebSocketResponse(max_msg_size=4 * settings.max_message_bytes, timeout=2.0)
        reservation = self._admit(request, agent)
        try:
            await ws.prepare(request)
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        self._sockets.add(ws)
        call: ListenedCall | ForkRelay | None = None
        reason = "client_closed"
        try:
            call, reason = await self._read(ws, agent, parts, relays, settings.stall_timeout)
        finally:
            if reservation is not None:
                reservation.release()
            self._sockets.discard(ws)
            if isinstance(call, ListenedCall):
                await self.close_call(call, reason)
            elif call is not None:
                call.close(reason)  # the worker finishes the transcription and ends it
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    def _refuse(self, reason: str, agent: Agent, request: web.Request) -> None:
        if self._refusals is not None:
            self._refusals.refuse("listens", reason, agent=agent.slug, source=request.remote)

    def _admit(self, request: web.Request, agent: Agent) -> Reservation | None:
        """The fork's place in admission control, or HTTP 503 with Retry-After."""
        if self._ledger is None:
            return None
        reason = self._ledger.admit(agent.slug, "listens")
        if isinstance(reason, Reservation):
            return reason
        self._refuse(reason, agent, request)
        self.metrics.ws_rejected.labels("503").inc()
        raise web.HTTPServiceUnavailable(
            text=f"at capacity ({reason}): retry later",
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    async def _read(
        self,
        ws: web.WebSocketResponse,
        agent: Agent,
        parts: ListenParts | None,
        relays: ForkRelays | None,
        stall: float,
    ) -> tuple[ListenedCall | ForkRelay | None, str]:
        """Read the fork until it stops; returns its call (if it started) and why it ended."""
        call: ListenedCall | ForkRelay | None = None
        fmt = twilio.MULAW_8K
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=stall)
            except TimeoutError:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"stalled: no media")
                return call, "stalled"
            if msg.type is not WSMsgType.TEXT:
                return call, "client_closed"
            ended = getattr(call, "ended", None)  # a relayed fork the worker ended or lost
            if ended is not None:
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=ended[:120].encode())
                return call, "worker_ended"
            try:
                event = twilio.parse_message(msg.data)
                if isinstance(event, twilio.Media) and call is not None:
                    call.push(event.track, decode_payload(fmt, event.payload))
                elif isinstance(event, twilio.Start) and call is None:
                    fmt = event.media_format
                    if event.call_sid:  # the fork's record names the Twilio call
                        self.hub.note_call_sid(event.stream_sid, event.call_sid)
                    call = self._start(agent, parts, relays, event)
                    if call is None:
                        raise twilio.ProtocolError(WSCloseCode.TRY_AGAIN_LATER, "too many calls")
                elif isinstance(event, twilio.Stop):
                    await ws.close(code=WSCloseCode.OK, message=b"stream stopped")
                    return call, "stop"
            except twilio.ProtocolError as exc:
                await ws.close(code=exc.code, message=exc.reason[:120].encode())
                return call, "protocol_error"
        return call, "client_closed"

    def _start(
        self,
        agent: Agent,
        parts: ListenParts | None,
        relays: ForkRelays | None,
        start: twilio.Start,
    ) -> ListenedCall | ForkRelay | None:
        params = start.custom_parameters
        channel = agent.listens.channel
        if relays is not None:
            relay = relays.open(agent, tuple(speakers_for(channel)))
            if relay is not None:
                relay.start(
                    CallInfo(
                        call_id=start.stream_sid,
                        agent=agent.slug,
                        caller=params.get("caller", ""),
                        called=params.get("called", ""),
                        sample_rate=start.media_format.sample_rate,
                        transport="twilio",
                    )
                )
            return relay
        assert parts is not None  # stream() checked
        summary = CallSummary(
            call_id=start.stream_sid,
            agent=agent.slug,
            number=params.get("called", ""),
            caller=params.get("caller", ""),
            channel=channel,
            transport="twilio",
            started_at=time.time(),
        )
        return self.open_call(summary, parts, speakers_for(channel), start.media_format.sample_rate)


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/xml")
