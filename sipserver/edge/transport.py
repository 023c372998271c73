"""asyncio UDP, TCP and TLS listeners of the SIP edge: the I/O around :class:`SipRouter`.

UDP: one datagram is one message (RFC 3261 §18.3); CRLF keepalives are ignored. TCP: messages
are framed by Content-Length (:class:`StreamFramer`); a double-CRLF ping is answered with a CRLF
pong (RFC 5626 §3.5.1); a framing error gets a 400 when possible and closes the connection.
Every listener takes ``host:port`` with IPv4 or IPv6 (``[::]:5060``) addresses.

Stream listeners (TCP, and TLS on the same connection class) share one
:class:`~sipserver.connections.ConnectionLimits`: a connection past the total or per-source cap
is closed as it is accepted and counted (``sipserver_refusals_total{ingress="sip_tcp"}``). Each
connection has :class:`~sipserver.connections.StreamDeadlines`: closed when no complete message
nor keepalive came for ``idle_timeout`` (not while it carries a call in progress), or when a
message stays incomplete for ``message_timeout`` (slowloris; counted as a refusal).

TLS (RFC 3261 §26.2): an accepted connection holds its place under the caps from the start;
its handshake runs with the server context in force at that moment (:attr:`SipListeners.
tls_context`, which a reload swaps) within ``tls_handshake_timeout``, and then it is the same
stream connection with its transport named ``tls`` to the router.

Time: the router gets the event loop's monotonic ``loop.time()`` for its timers, transactions,
nonces and bans, and the wall clock only for binding expiry and the Date header (see
:mod:`sipserver.edge.router`); TCP idle times are on the loop clock too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Callable, Collection
from typing import cast

from sipserver.connections import (
    ConnectionLimits,
    ConnectionSlot,
    StreamAcceptor,
    StreamDeadlines,
    listening_sockets,
)
from sipserver.edge.router import Outgoing, Peer, SipRouter
from sipserver.edge.udp_read import drain
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.sip.framing import PING, FramingError, StreamFramer
from sipserver.tasks import cancel_and_wait

__all__ = ["SipListeners", "parse_host_port"]

log = get_logger(__name__)

Clock = Callable[[], float]
"""A time source: seconds as a float."""

Flow = tuple[str, str, int]
"""(transport, host, port) of a peer's connection."""


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def parse_host_port(value: str, default_port: int = 5060) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``host`` into (host without brackets, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    if value.count(":") == 1:
        host, _, port_s = value.partition(":")
        return host, int(port_s)
    return value, default_port


_READS_PER_WAKE = 32
"""Datagrams one wake-up of a UDP listener reads at most before the loop runs other work."""


class _UdpListener:
    """One SIP UDP socket, read with ``loop.add_reader`` and written with ``sendto``.

    Not an asyncio datagram transport: that reads one datagram per loop pass (a select call
    and a callback handle each) and adds its checks to every send. Here a wake-up drains up to
    :data:`_READS_PER_WAKE` waiting datagrams in the compiled :func:`~sipserver.edge.udp_read.
    drain`, the clocks are read once per wake-up, and the answers go to ``sendto`` after its
    reads; a full send buffer drops the datagram (counted in
    ``sipserver_sip_send_errors_total``), as the network would: SIP over UDP retransmits (RFC
    3261 §17).
    """

    def __init__(
        self, listeners: SipListeners, index: int, sock: socket.socket, max_size: int
    ) -> None:
        # The router is looked up per wake-up: a config reload swaps it on the listeners.
        self._listeners = listeners
        self._index = index  # in SipListeners._udp: where a held response goes out
        self.sock = sock
        self._max_size = max_size
        self._closed = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_ready)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram now; a refused send is counted and dropped."""
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            self._send_failed(exc, addr[0], addr[1])

    def _send_failed(self, exc: OSError, host: str, port: int) -> None:
        self._listeners.metrics.send_errors.inc()
        log.debug("udp_send_failed", host=host, port=port, error=str(exc))

    @staticmethod
    def _receive_failed(exc: OSError) -> None:
        # ICMP port unreachable and friends, queued on the socket: the peer went away.
        log.debug("udp_error", error=str(exc))

    def _read_ready(self) -> None:
        listeners = self._listeners
        sock = self.sock
        handled = drain(
            sock.recvfrom,
            sock.sendto,
            listeners.router.handle_message,
            listeners.deliver,
            self._receive_failed,
            self._send_failed,
            listener=self._index,
            max_size=self._max_size,
            reads=_READS_PER_WAKE,
            now=listeners.clock(),
            wall=listeners.wall_clock(),
        )
        if handled:
            listeners.arm_proxy_timer()

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class _TcpConnection(asyncio.Protocol):
    """One SIP stream connection (TCP; TLS through the same class, its transport named)."""

    def __init__(
        self,
        listeners: SipListeners,
        *,
        transport: str = "tcp",
        slot: ConnectionSlot | None = None,
    ) -> None:
        self._listeners = listeners
        self._framer = StreamFramer(max_message_size=listeners.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._peer = Peer(transport, "", 0)
        self._slot = slot
        self.deadlines = StreamDeadlines(listeners.clock())

    @property
    def flow(self) -> Flow:
        """(transport, host, port) of the peer."""
        return self._peer.transport, self._peer.host, self._peer.port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        addr = self._transport.get_extra_info("peername")
        self._peer = Peer(self._peer.transport, str(addr[0]), int(addr[1]))
        self.deadlines = StreamDeadlines(self._listeners.clock())
        self._listeners.connections.add(self)
        self._listeners.by_peer[(self._peer.host, self._peer.port)] = self
        self._listeners.metrics.tcp_connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot is not None:
            self._slot.release()
        if self in self._listeners.connections:
            self._listeners.connections.discard(self)
            self._listeners.by_peer.pop((self._peer.host, self._peer.port), None)
            self._listeners.metrics.tcp_connections.dec()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        listeners = self._listeners
        try:
            messages = self._framer.feed(data)
        except FramingError as exc:
            log.info("sip_tcp_framing_error", source=self._peer.host, reason=str(exc))
            listeners.metrics.parse_errors.labels(self._peer.transport, "no").inc()
            transport.close()
            return
        # Only a complete message or a ping is activity (RFC 5626 §4.4.1); stray bytes are not.
        self.deadlines.received(
            listeners.clock(), completed=bool(messages), pending=self._framer.buffered > 0
        )
        router = listeners.router
        for message in messages:
            if message == PING:
                transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
                continue
            out: list[Outgoing] = router.handle_message(
                message, self._peer, now=listeners.clock(), wall=listeners.wall_clock()
            )
            for item in out:
                if item.transport in ("", self._peer.transport) and (item.host, item.port) == (
                    self._peer.host,
                    self._peer.port,
                ):
                    transport.write(item.data)
                else:
                    listeners.deliver(item)
        listeners.arm_proxy_timer()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _tcp_connection(
    listeners: SipListeners, transport: str, slot: ConnectionSlot
) -> _TcpConnection:
    return _TcpConnection(listeners, transport=transport, slot=slot)


class _TlsAcceptor(asyncio.Protocol):
    """A TCP connection to a TLS listener until its handshake is done.

    Reading pauses at once (the ClientHello waits in the socket), then ``loop.start_tls`` runs
    the handshake with the context in force now and a deadline. Done, the connection becomes a
    :class:`_TcpConnection` named ``tls``; records decrypted before that (a request sent with
    the handshake's last flight) are kept and handed over first.
    """

    def __init__(self, listeners: SipListeners, slot: ConnectionSlot | None = None) -> None:
        self._listeners = listeners
        self._slot = slot
        """The connection's place under the stream caps: a handshake in progress holds one
        (handed to the :class:`_TcpConnection`, or given back when the handshake fails)."""
        self._conn: _TcpConnection | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        raw.pause_reading()
        task = asyncio.create_task(self._handshake(raw), name="sip-tls-handshake")
        self._listeners.handshakes.add(task)
        task.add_done_callback(self._listeners.handshakes.discard)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        listeners = self._listeners
        context = listeners.tls_context
        peer = raw.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if context is None:
            raw.close()
            self._release()
            return
        timeout = listeners.tls_handshake_timeout
        try:
            # Our own deadline (asyncio's ssl_handshake_timeout, a second later, is a backstop:
            # it reports ConnectionAbortedError, which cannot be told from a peer's abort).
            async with asyncio.timeout(timeout):
                tls = await asyncio.get_running_loop().start_tls(
                    raw, self, context, server_side=True, ssl_handshake_timeout=timeout + 1
                )
        except asyncio.CancelledError:
            raw.close()
            self._release()
            raise
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            raw.close()
            self._release()
            reason = "handshake_timeout" if isinstance(exc, TimeoutError) else "handshake_failed"
            # Counted and logged once per interval by the refusal log; the detail at debug.
            log.debug("sip_tls_handshake_failed", source=source, reason=reason, error=str(exc))
            listeners.refusals.refuse("sip_tls", reason, source=source)
            return
        if tls is None or self._lost:
            self._release()
            return
        if self._early_size > listeners.max_message_size:
            tls.close()  # more than a message before the handshake was even reported
            self._release()
            return
        conn = _TcpConnection(listeners, transport="tls", slot=self._slot)
        self._slot = None
        self._conn = conn
        conn.connection_made(tls)
        for data in self._early:
            conn.data_received(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn.data_received(data)
        else:
            self._early_size += len(data)
            if self._early_size <= self._listeners.max_message_size:
                self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._conn is not None:
            self._conn.connection_lost(exc)
        else:
            self._release()

    def _release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None


class SipListeners:
    """The UDP and TCP listeners of the edge plus the router's periodic timer.

    Args:
        router: the sans-I/O request handler.
        metrics: metrics registry (TCP connection gauge, framing errors).
        clock: monotonic time for the router's timers, transactions, nonces and bans and for TCP
            idle times; None: the running event loop's ``loop.time()``.
        wall_clock: wall-clock time for binding expiry and the Date header (``time.time``).
        max_message_size: largest TCP message accepted.
        limits: the caps of every stream listener (TCP, TLS) together; None: 10,000 in
            total, 256 per source.
        refusals: where refused connections are counted (a new log on ``metrics`` if None).
        idle_timeout: seconds a stream connection may go without a complete message or a
            keepalive ping (not applied while it carries a call in progress).
        message_timeout: seconds a message may take from its first byte to its last (a new
            connection's first message counts from the connection).
        calls_on: the flows (transport, host, port) that calls in progress came in on.
    """

    def __init__(
        self,
        router: SipRouter,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        wall_clock: Clock = time.time,
        max_message_size: int = 65535,
        limits: ConnectionLimits | None = None,
        refusals: RefusalLog | None = None,
        idle_timeout: float = 300.0,
        message_timeout: float = 20.0,
        calls_on: Callable[[], Collection[Flow]] | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else _loop_time
        self.wall_clock = wall_clock
        self.max_message_size = max_message_size
        self.limits = limits if limits is not None else ConnectionLimits(10_000, 256)
        self.refusals = refusals if refusals is not None else RefusalLog(metrics)
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self._calls_on = calls_on
        self.tls_context: ssl.SSLContext | None = None
        """Server context of TLS connections accepted from now on (a reload swaps it)."""
        self.tls_handshake_timeout = 10.0
        """Seconds a TLS client has to finish its handshake."""
        self.handshakes: set[asyncio.Task[None]] = set()
        """TLS handshakes in progress (each holds a place under :attr:`limits`)."""
        self.connections: set[_TcpConnection] = set()
        self.by_peer: dict[tuple[str, int], _TcpConnection] = {}
        """Open TCP connections by the peer's (host, port): requests towards a caller that
        reached the edge over TCP go back on its connection (RFC 3261 §18.2.2)."""
        self._proxy_timer: asyncio.TimerHandle | None = None
        self._proxy_timer_at: float | None = None
        self.bound: list[tuple[str, str, int]] = []
        """(transport, host, port) of every listener, with the real port when 0 was asked."""
        self._udp: list[_UdpListener] = []
        self._streams: list[StreamAcceptor] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, udp: list[str], tcp: list[str], tls: list[str] | None = None) -> None:
        """Bind every listener; raises OSError naming the address that could not be bound.

        TLS listeners need :attr:`tls_context` set first.
        """
        for spec in udp:
            host, port = parse_host_port(spec)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"cannot bind SIP UDP {spec}: {exc.strerror}") from exc
            _grow_buffers(sock)
            self._udp.append(_UdpListener(self, len(self._udp), sock, _MAX_DATAGRAM))
            self.bound.append(("udp", host, int(sock.getsockname()[1])))
        for spec in tcp:
            self.start_stream(spec, "tcp")
        for spec in tls or ():
            self.start_stream(spec, "tls")
        self._ticker = asyncio.create_task(self._tick(), name="sip-edge-timer")
        for transport_name, host, port in self.bound:
            log.info("sip_listening", transport=transport_name, host=host, port=port)
        if self._streams:
            log.info(
                "sip_connection_limits",
                max_connections=self.limits.max_total,
                max_connections_per_source=self.limits.max_per_source,
                idle_timeout=self.idle_timeout,
                message_timeout=self.message_timeout,
            )

    def start_stream(self, spec: str, transport: str) -> None:
        """Bind one stream listener (``tcp``, or ``tls``: then :attr:`tls_context` must be set)
        on ``spec``; its connections (a TLS one from the start of its handshake) count against
        :attr:`limits` and have the stream deadlines.

        Raises:
            OSError: naming the address that could not be bound.
        """
        host, port = parse_host_port(spec, 5061 if transport == "tls" else 5060)
        try:
            sockets = listening_sockets(host, port)
        except OSError as exc:
            name = transport.upper()
            raise OSError(exc.errno, f"cannot bind SIP {name} {spec}: {exc.strerror}") from exc
        factory: Callable[[ConnectionSlot], asyncio.Protocol]
        if transport == "tls":
            factory = functools.partial(_TlsAcceptor, self)
        else:
            factory = functools.partial(_tcp_connection, self, transport)
        for sock in sockets:
            acceptor = StreamAcceptor(sock, factory, self.limits, self.refusals, f"sip_{transport}")
            acceptor.start()
            self._streams.append(acceptor)
            self.bound.append((transport, str(sock.getsockname()[0]), acceptor.port))

    def configure_connections(
        self, *, max_total: int, max_per_source: int, idle_timeout: float, message_timeout: float
    ) -> None:
        """New caps and deadlines (start and reload); open connections are kept and judged by
        the new deadlines from the next tick."""
        self.limits.configure(max_total, max_per_source)
        self.idle_timeout, self.message_timeout = idle_timeout, message_timeout

    def expire_connections(self, now: float) -> None:
        """Close the stream connections past a deadline (:class:`StreamDeadlines`)."""
        expired: list[tuple[_TcpConnection, str]] = []
        idle: list[_TcpConnection] = []
        for conn in self.connections:
            reason = conn.deadlines.expired(
                now, idle_timeout=self.idle_timeout, message_timeout=self.message_timeout
            )
            if reason == "idle_timeout":
                idle.append(conn)
            elif reason is not None:
                expired.append((conn, reason))
        if idle:
            # Asked only when some connection is idle: a call's BYE must be able to go back.
            in_use = set(self._calls_on()) if self._calls_on is not None else set()
            expired += [(c, "idle_timeout") for c in idle if c.flow not in in_use]
        for conn, reason in expired:
            transport, host, port = conn.flow
            if reason == "idle_timeout":
                log.debug("sip_stream_idle_closed", transport=transport, host=host, port=port)
            else:
                self.refusals.refuse(f"sip_{transport}", reason, source=host)
            conn.close()

    def deliver(self, item: Outgoing) -> None:
        """Send a message that does not simply go back the way its trigger came."""
        if item.transport in ("tcp", "tls"):
            conn = self.by_peer.get((item.host, item.port))
            if conn is None:
                # Opening connections towards callers is not supported: they keep theirs open.
                log.info("sip_tcp_peer_gone", host=item.host, port=item.port)
                return
            conn.write(item.data)
            return
        if not self._udp:
            log.warning("sip_no_udp_listener", host=item.host, port=item.port)
            return
        if 0 <= item.listener < len(self._udp):
            # A response sent later (a REGISTER 200 released by the commit): from the socket
            # its request came in on, like an immediate answer.
            self._udp[item.listener].sendto(item.data, (item.host, item.port))
            return
        family = socket.AF_INET6 if ":" in item.host else socket.AF_INET
        for listener in self._udp:
            if listener.sock.family == family:
                listener.sendto(item.data, (item.host, item.port))
                return
        self._udp[0].sendto(item.data, (item.host, item.port))

    def arm_proxy_timer(self) -> None:
        """(Re)arm the one timer of the call proxy at its next deadline."""
        due = self.router.proxy_timer()
        if due is None or (self._proxy_timer_at is not None and self._proxy_timer_at <= due):
            return
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
        loop = asyncio.get_running_loop()
        self._proxy_timer_at = due
        self._proxy_timer = loop.call_later(max(0.0, due - self.clock()), self._fire_proxy_timer)

    def _fire_proxy_timer(self) -> None:
        self._proxy_timer = None
        self._proxy_timer_at = None
        try:
            for item in self.router.handle_proxy_timer(now=self.clock()):
                self.deliver(item)
        except Exception:
            log.exception("sip_proxy_timer_failed")
        self.arm_proxy_timer()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                now = self.clock()
                self.router.handle_timer(now=now, wall=self.wall_clock())
                self.expire_connections(now)
            except Exception:  # keep the timer alive whatever one tick hit
                log.exception("sip_timer_failed")

    async def stop(self) -> None:
        """Close every listener and connection."""
        if self._ticker is not None:
            await cancel_and_wait(self._ticker)
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
        for listener in self._udp:
            listener.close()
        for acceptor in self._streams:
            acceptor.close()
        for task in list(self.handshakes):
            await cancel_and_wait(task)
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)  # let the transports call connection_lost


_MAX_DATAGRAM = 65535
"""Largest UDP datagram read (the IPv4/IPv6 payload limit)."""


def _grow_buffers(sock: socket.socket) -> None:
    # Bursts of REGISTERs (a PBX restart re-registering thousands of phones) overflow the
    # default 208 KiB receive buffer; ask for more (the kernel caps it at rmem_max).
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
