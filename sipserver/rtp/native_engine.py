"""The native media engine of a call worker: SIP over one UDP socket plus an RTP stream per call.

:class:`NativeEngine` is the asyncio adapter of the sans-I/O :class:`~sipserver.rtp.native_ua.
UserAgent`: every datagram of its SIP socket goes to :meth:`UserAgent.receive` with
``loop.time()``, every :class:`~sipserver.rtp.native_events.Send` goes out of the same socket,
and one timer is kept armed at :meth:`UserAgent.next_deadline`. Call events become media:

* :class:`IncomingCall`: the SDP offer is parsed and negotiated (:mod:`sipserver.rtp.sdp`;
  malformed: 400, nothing in common: 488), an :class:`RtpStream` opened from the port pool
  (none left: 503) and the answer sent (:meth:`UserAgent.answer`). An INVITE without SDP gets
  our offer and the ACK's answer is applied.
* :class:`CallConfirmed` (the ACK): the :class:`EngineCall` is handed to ``on_call_started``
  and appears in :attr:`NativeEngine.calls`, which the worker's media clock iterates.
* :class:`OfferReceived` (re-INVITE/UPDATE: hold, codec change): the stream is re-pointed
  (:meth:`RtpStream.apply`) and answered (488 when nothing fits; the call goes on).
* :class:`DtmfReceived` (SIP INFO) and the stream's RFC 4733 events go to ``on_dtmf``; the
  stream's RTP timeout hangs the call up (BYE, reason ``rtp-timeout``).
* :class:`CallTerminated`: the stream is closed and ``on_call_ended`` called.

The engine never reads or writes audio: the worker's clock calls ``call.stream.read_frame()``
and ``write_frame()`` for every call in :attr:`NativeEngine.calls`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipserver.observability import get_logger
from sipserver.rtp.native_events import (
    CallConfirmed,
    CallTerminated,
    DtmfReceived,
    IncomingCall,
    OfferReceived,
    Send,
    UaOutput,
    UaSettings,
)
from sipserver.rtp.native_ua import UserAgent
from sipserver.rtp.rtp_stream import NoPortsError, RtpPortPool, RtpStream
from sipserver.rtp.sdp import (
    Negotiated,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)
from sipserver.sip.headers import SRTP_HEADER

__all__ = ["EngineCall", "EngineSettings", "NativeEngine"]

log = get_logger(__name__)

STOP_GRACE = 2.0
"""Seconds :meth:`NativeEngine.stop` waits for the BYEs it sent to be answered."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Where the engine listens and how it answers (the call worker's command line)."""

    sip_host: str
    """Address of the SIP socket (loopback: the edge forwards calls there)."""
    sip_port: int
    """SIP port; 0 lets the OS choose (see :attr:`NativeEngine.sip_address`)."""
    rtp_host: str
    """Address RTP binds to and that goes into our SDP."""
    rtp_port_start: int
    """First RTP port of this worker's range (even; RTCP on port + 1)."""
    rtp_port_count: int
    """Ports in the range (two per call)."""
    sample_rate: int = 8000
    """PCM rate of the frames the streams give and take (8000 or 16000)."""
    session_timers: str = "optional"
    """RFC 4028: ``optional``, ``always`` or ``off``."""
    session_expires: int = 1800
    """Session interval of sessions we start, seconds."""
    min_se: int = 90
    """Smallest Session-Expires accepted (422 below)."""
    answer_delay: float = 0.0
    """Ring time before the 200 OK, seconds."""
    rtp_timeout: float = 60.0
    """Hang up after this many seconds without RTP (never while on hold); 0 never."""
    capacity: int = 500
    """Calls at once; one more gets 486."""


@dataclass(eq=False)
class EngineCall:
    """An answered call: what the worker reports to main and the stream its clock drives."""

    number: int
    """Call number (the worker's)."""
    sip_call_id: str
    """Call-ID of the INVITE."""
    from_uri: str
    """The caller (From, without tag)."""
    to_uri: str
    """The called party (To)."""
    request_uri: str
    """Request-URI of the INVITE."""
    headers: dict[str, str]
    """The INVITE's headers (``X-Sipserver-Agent``...)."""
    codec: str
    """Negotiated codec, ``NAME/rate`` (``PCMU/8000``, ``G722/16000``)."""
    remote_rtp: str
    """Where RTP goes, ``host:port`` (before latching)."""
    stream: RtpStream
    """The call's RTP stream: ``read_frame()`` / ``write_frame()`` every 20 ms."""
    session_id: int = 0
    """Our SDP ``o=`` session id."""
    session_version: int = 0
    """Our SDP ``o=`` version (+1 for each changed answer, RFC 3264 §8)."""
    offer: SessionDescription | None = field(default=None, repr=False)
    """The peer's last description."""
    srtp: str = "off"
    """The agent's SRTP policy (the edge's ``X-Sipserver-Srtp``): ``off``, ``optional``,
    ``required``."""


def srtp_policy(headers: dict[str, str]) -> str:
    """The ``X-Sipserver-Srtp`` policy of an INVITE: ``off`` (also when absent or unknown),
    ``optional`` or ``required``."""
    value = headers.get(SRTP_HEADER, "off").strip().lower()
    return value if value in ("optional", "required") else "off"


def _negotiate(offer: SessionDescription, policy: str) -> Negotiated | None:
    """RFC 3264 answer choice under the agent's SRTP policy, as the pjsua2 worker's accounts:
    ``off`` plain RTP only (an RTP/SAVP offer: None, 488), ``optional`` SRTP when the offer has
    a usable ``a=crypto``, ``required`` nothing without it."""
    negotiated = negotiate(offer, srtp=policy != "off")
    if policy == "required" and negotiated is not None and negotiated.crypto is None:
        return None
    return negotiated


def _codec_name(negotiated: Negotiated) -> str:
    codec = negotiated.codec
    rate = 16000 if codec.name == "G722" else codec.clock_rate  # G.722 samples at 16 kHz
    return f"{codec.name}/{rate}"


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: NativeEngine) -> None:
        self.engine = engine

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.engine._datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: the transaction timers handle it.
        log.debug("native_sip_socket_error", error=str(exc))


class NativeEngine:
    """SIP user agent + RTP streams of one call worker; see the module docstring."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        on_call_started: Callable[[EngineCall], None],
        on_call_ended: Callable[[EngineCall, str, int], None],
        on_dtmf: Callable[[EngineCall, str, int, str], None],
    ) -> None:
        self.settings = settings
        self._on_call_started = on_call_started
        self._on_call_ended = on_call_ended
        self._on_dtmf = on_dtmf
        self.calls: dict[int, EngineCall] = {}
        """Answered calls in progress (ACK received), by number."""
        self._answering: dict[int, EngineCall] = {}  # 200 sent (or held), no ACK yet
        self._setting_up: set[int] = set()  # IncomingCall whose stream is being opened
        self._ports = RtpPortPool(
            settings.rtp_host, settings.rtp_port_start, settings.rtp_port_count
        )
        self._ua: UserAgent | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.sip_address: tuple[str, int] = (settings.sip_host, settings.sip_port)
        """The bound SIP address (after :meth:`start`)."""
        self.counters = {"calls_total": 0, "calls_refused": 0, "ua_errors": 0}
        """Calls answered, refused (488/503/400), adapter errors caught."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the SIP socket and start answering."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        s = self.settings
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(s.sip_host, s.sip_port)
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.sip_address = (str(sockname[0]), int(sockname[1]))
        self._ua = UserAgent(
            UaSettings(
                host=s.sip_host,
                port=self.sip_address[1],
                session_timers=s.session_timers,
                session_expires=s.session_expires,
                min_se=s.min_se,
                answer_delay=s.answer_delay,
                capacity=s.capacity,
            )
        )
        log.info("native_engine_started", sip=f"{s.sip_host}:{self.sip_address[1]}")

    async def stop(self) -> None:
        """BYE every call (waiting up to :data:`STOP_GRACE` for the answers), close sockets."""
        ua = self._ua
        if ua is not None and self._transport is not None:
            for number in [*self.calls, *self._answering, *self._setting_up]:
                self.hangup(number, "shutdown")
            deadline = asyncio.get_running_loop().time() + STOP_GRACE
            while ua.requests_in_flight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for call in [*self.calls.values(), *self._answering.values()]:
            call.stream.close()
        self.calls.clear()
        self._answering.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def hangup(self, number: int, reason: str) -> None:
        """End a call (BYE; 487 while ringing); ``on_call_ended`` follows."""
        if self._ua is not None and self._loop is not None:
            self._feed(self._ua.hangup(number, reason, self._loop.time()))

    def stats(self) -> dict[str, int]:
        """Calls, capacity, RTP ports in use and the summed stream counters."""
        out: dict[str, int] = {
            "calls": len(self.calls),
            "capacity": self.settings.capacity,
            "rtp_ports_in_use": self._ports.in_use(),
            **self.counters,
        }
        for call in self.calls.values():
            for name, value in call.stream.stats().items():
                if name != "jitter_ms":
                    out[name] = out.get(name, 0) + value
        return out

    # ------------------------------------------------------------------ SIP in and out

    def _datagram(self, data: bytes, source: tuple[str, int]) -> None:
        ua, loop = self._ua, self._loop
        if ua is None or loop is None:
            return
        try:
            outputs = ua.receive(data, source, loop.time())
        except Exception:  # the user agent answers bad input itself; this is a bug of ours
            self.counters["ua_errors"] += 1
            log.exception("native_ua_receive_failed", source=f"{source[0]}:{source[1]}")
            return
        self._feed(outputs)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._ua is not None and self._loop is not None:
            self._feed(self._ua.tick(self._loop.time()))

    def _feed(self, outputs: list[UaOutput]) -> None:
        """Carry out the user agent's outputs, then re-arm the timer."""
        for output in outputs:
            try:
                self._handle(output)
            except Exception:  # a bug here must not take the worker's signalling down
                self.counters["ua_errors"] += 1
                log.exception("native_engine_output_failed", output=type(output).__name__)
        self._rearm()

    def _rearm(self) -> None:
        ua, loop = self._ua, self._loop
        if ua is None or loop is None:
            return
        deadline = ua.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_timer)

    def _handle(self, output: UaOutput) -> None:
        if isinstance(output, Send):
            if self._transport is not None:
                self._transport.sendto(output.data, output.destination)
        elif isinstance(output, IncomingCall):
            # Set up here, in this callback: a busy worker's loop passes wait behind slices of
            # the media tick, and the 200 must not wait for several of them.
            self._setting_up.add(output.call)
            self._set_up_or_refuse(output)
        elif isinstance(output, CallConfirmed):
            call = self._answering.pop(output.call, None)
            if call is not None:
                self.calls[call.number] = call
                self.counters["calls_total"] += 1
                self._on_call_started(call)
        elif isinstance(output, OfferReceived):
            self._offer(output)
        elif isinstance(output, DtmfReceived):
            call = self.calls.get(output.call)
            if call is not None:
                self._on_dtmf(call, output.digit, output.duration_ms, "info")
        elif isinstance(output, CallTerminated):
            self._terminated(output)

    # ------------------------------------------------------------------ calls

    def _refuse(self, number: int, status: int, reason: str) -> None:
        self.counters["calls_refused"] += 1
        assert self._ua is not None and self._loop is not None
        self._feed(self._ua.reject(number, status, reason, self._loop.time()))

    def _set_up_or_refuse(self, incoming: IncomingCall) -> None:
        """:meth:`_set_up`, and 500 if it failed: an INVITE is never left unanswered."""
        try:
            self._set_up(incoming)
        except Exception:
            log.exception("native_call_setup_failed", call=incoming.call)
            if incoming.call in self._setting_up:
                self._setting_up.discard(incoming.call)
                self._refuse(incoming.call, 500, "")

    def _set_up(self, incoming: IncomingCall) -> None:
        """Negotiate the offer, open the stream and answer (RFC 3264 §6)."""
        number = incoming.call
        s = self.settings
        offer: SessionDescription | None = None
        negotiated: Negotiated | None = None
        policy = srtp_policy(incoming.headers)
        try:
            if incoming.offer:
                try:
                    offer = parse_sdp(incoming.offer)
                except SdpError as exc:
                    self._setting_up.discard(number)
                    self._refuse(number, 400, f"Bad SDP: {exc}"[:80])
                    return
                negotiated = _negotiate(offer, policy)
                if negotiated is None:
                    self._setting_up.discard(number)
                    self._refuse(number, 488, "")  # RFC 3261 §13.3.1.3: nothing in common
                    return
            elif policy == "required":
                # Our offer would have to be RTP/SAVP, which build_offer does not write.
                self._setting_up.discard(number)
                self._refuse(number, 488, "SRTP Offer Required")
                return
            try:
                stream = self._ports.open_stream_now(
                    sample_rate=s.sample_rate, rtp_timeout=s.rtp_timeout
                )
            except NoPortsError:
                self._setting_up.discard(number)
                self._refuse(number, 503, "")
                return
        except BaseException:
            self._setting_up.discard(number)
            raise
        self._setting_up.discard(number)
        session_id = secrets.randbelow(2**31)
        call = EngineCall(
            number=number,
            sip_call_id=incoming.sip_call_id,
            from_uri=incoming.from_uri,
            to_uri=incoming.to_uri,
            request_uri=incoming.request_uri,
            headers=incoming.headers,
            codec="",
            remote_rtp="",
            stream=stream,
            session_id=session_id,
            session_version=session_id,
            offer=offer,
            srtp=policy,
        )
        if offer is not None and negotiated is not None:
            crypto = stream.srtp_answer(negotiated)  # RFC 4568 §7.1.2: our key, their suite
            self._apply(call, negotiated)
            sdp = build_answer(
                offer,
                negotiated,
                host=s.rtp_host,
                port=stream.local_port,
                session_id=session_id,
                session_version=call.session_version,
                crypto=crypto,
            )
        else:  # RFC 3261 §13.2.1: no offer in the INVITE: ours goes in the 200
            sdp = build_offer(
                host=s.rtp_host,
                port=stream.local_port,
                session_id=session_id,
                session_version=session_id,
            )
        self._wire_stream(call)
        self._answering[number] = call
        assert self._ua is not None and self._loop is not None
        self._feed(self._ua.answer(number, sdp, self._loop.time()))

    def _apply(self, call: EngineCall, negotiated: Negotiated) -> None:
        call.stream.apply(negotiated)
        call.codec = _codec_name(negotiated)
        call.remote_rtp = f"{negotiated.remote[0]}:{negotiated.remote[1]}"

    def _wire_stream(self, call: EngineCall) -> None:
        number = call.number

        def dtmf(digit: str, duration_ms: int) -> None:
            live = self.calls.get(number)
            if live is not None:
                self._on_dtmf(live, digit, duration_ms, "rfc4733")

        def timeout() -> None:
            log.info("native_rtp_timeout", call=number)
            self.hangup(number, "rtp-timeout")

        call.stream.on_dtmf = dtmf
        call.stream.on_timeout = timeout

    def _offer(self, event: OfferReceived) -> None:
        """A re-INVITE/UPDATE offer (hold, codec change), or the answer to our offer."""
        assert self._ua is not None and self._loop is not None
        call = self.calls.get(event.call) or self._answering.get(event.call)
        if call is None:
            return
        try:
            offer = parse_sdp(event.offer)
        except SdpError as exc:
            if not event.is_answer:
                reason = f"Bad SDP: {exc}"[:80]
                self._feed(self._ua.reject(event.call, 400, reason, self._loop.time()))
            return
        negotiated = _negotiate(offer, call.srtp)
        if event.is_answer:
            if negotiated is None:
                self.hangup(event.call, "no-common-codec")
            else:
                call.offer = offer
                self._apply(call, negotiated)
            return
        if negotiated is None:
            self._feed(self._ua.reject(event.call, 488, "", self._loop.time()))
            return
        changed = call.offer is None or offer != call.offer
        call.offer = offer
        crypto = call.stream.srtp_answer(negotiated)  # the same key for the same line (§7.1.4)
        self._apply(call, negotiated)
        if changed:
            call.session_version += 1  # RFC 3264 §8: a new answer, a new version
        sdp = build_answer(
            offer,
            negotiated,
            host=self.settings.rtp_host,
            port=call.stream.local_port,
            session_id=call.session_id,
            session_version=call.session_version,
            crypto=crypto,
        )
        self._feed(self._ua.answer_update(event.call, sdp, self._loop.time()))

    def _terminated(self, event: CallTerminated) -> None:
        number = event.call
        self._setting_up.discard(number)
        pending = self._answering.pop(number, None)
        if pending is not None:
            pending.stream.close()
        call = self.calls.pop(number, None)
        if call is None:
            return
        call.stream.close()
        self._on_call_ended(call, event.reason, event.status)
