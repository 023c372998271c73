"""asyncio UDP and TCP listeners of the SIP edge: the I/O around :class:`SipRouter`.

UDP: one datagram is one message (RFC 3261 §18.3); CRLF keepalives are ignored. TCP: messages
are framed by Content-Length (:class:`StreamFramer`); a double-CRLF ping is answered with a CRLF
pong (RFC 5626 §3.5.1); a framing error gets a 400 when possible and closes the connection;
connections idle longer than ``idle_timeout`` are closed. TLS (RFC 3261 §26.2): the same stream
connection after a TLS handshake, with the transport named ``tls`` to the router; each accepted
connection takes the server context in force (:attr:`SipListeners.tls_context`, swapped by a
reload) through ``loop.start_tls``, within a handshake deadline. Every listener takes
``host:port`` with IPv4 or IPv6 (``[::]:5060``) addresses.

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
from collections.abc import Callable
from typing import cast

from sipserver.edge.router import Outgoing, Peer, SipRouter
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.sip.framing import FramingError, StreamFramer
from sipserver.tasks import cancel_and_wait

__all__ = ["SipListeners", "parse_host_port"]

log = get_logger(__name__)

Clock = Callable[[], float]
"""A time source: seconds as a float."""


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


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, listeners: SipListeners, index: int) -> None:
        # The router is looked up per datagram: a config reload swaps it on the listeners.
        self._listeners = listeners
        self._index = index  # in SipListeners._udp: where a held response goes out
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) <= 4 and not data.strip():
            return  # RFC 5626 §4.4.1 / common CRLF keepalives over UDP
        host, port = str(addr[0]), int(addr[1])
        listeners = self._listeners
        out = listeners.router.handle_message(
            data,
            Peer("udp", host, port, self._index),
            now=listeners.clock(),
            wall=listeners.wall_clock(),
        )
        transport = self.transport
        if transport is None:
            return
        for item in out:
            if item.transport in ("", "udp"):
                transport.sendto(item.data, (item.host, item.port))
            else:
                listeners.deliver(item)
        listeners.arm_proxy_timer()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the peer went away; nothing to do.
        log.debug("udp_error", error=str(exc))


class _TcpConnection(asyncio.Protocol):
    def __init__(self, listeners: SipListeners, transport_name: str = "tcp") -> None:
        self._listeners = listeners
        self._framer = StreamFramer(max_message_size=listeners.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._name = transport_name
        """``tcp`` or ``tls``: the router's name for the transport (Via, Record-Route)."""
        self._peer = Peer(transport_name, "", 0)
        self._last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        addr = self._transport.get_extra_info("peername")
        self._peer = Peer(self._name, str(addr[0]), int(addr[1]))
        self._last_activity = self._listeners.clock()
        self._listeners.connections.add(self)
        self._listeners.by_peer[(self._peer.host, self._peer.port)] = self
        self._listeners.metrics.tcp_connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._listeners.connections:
            self._listeners.connections.discard(self)
            self._listeners.by_peer.pop((self._peer.host, self._peer.port), None)
            self._listeners.metrics.tcp_connections.dec()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._last_activity = self._listeners.clock()
        try:
            messages = self._framer.feed(data)
        except FramingError as exc:
            log.info("sip_tcp_framing_error", source=self._peer.host, reason=str(exc))
            self._listeners.metrics.parse_errors.labels(self._name, "no").inc()
            transport.close()
            return
        listeners = self._listeners
        router = listeners.router
        for message in messages:
            if message == b"\r\n\r\n":
                transport.write(b"\r\n")
                continue
            out: list[Outgoing] = router.handle_message(
                message, self._peer, now=listeners.clock(), wall=listeners.wall_clock()
            )
            for item in out:
                if item.transport in ("", self._name) and (item.host, item.port) == (
                    self._peer.host,
                    self._peer.port,
                ):
                    transport.write(item.data)
                else:
                    self._listeners.deliver(item)
        self._listeners.arm_proxy_timer()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def idle_for(self, now: float) -> float:
        return now - self._last_activity

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _TlsAcceptor(asyncio.Protocol):
    """A TCP connection to a TLS listener until its handshake is done.

    Reading pauses at once (the ClientHello waits in the socket), then ``loop.start_tls`` runs
    the handshake with the context in force now and a deadline. Done, the connection becomes a
    :class:`_TcpConnection` named ``tls``; records decrypted before that (a request sent with
    the handshake's last flight) are kept and handed over first.
    """

    def __init__(self, listeners: SipListeners) -> None:
        self._listeners = listeners
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
            raise
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            raw.close()
            reason = "handshake_timeout" if isinstance(exc, TimeoutError) else "handshake_failed"
            # Counted and logged once per interval by the refusal log; the detail at debug.
            log.debug("sip_tls_handshake_failed", source=source, reason=reason, error=str(exc))
            if listeners.refusals is not None:
                listeners.refusals.refuse("sip_tls", reason, source=source)
            return
        if tls is None or self._lost:
            return
        if self._early_size > listeners.max_message_size:
            tls.close()  # more than a message before the handshake was even reported
            return
        conn = _TcpConnection(listeners, "tls")
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


class SipListeners:
    """The UDP and TCP listeners of the edge plus the router's periodic timer.

    Args:
        router: the sans-I/O request handler.
        metrics: metrics registry (TCP connection gauge, framing errors).
        clock: monotonic time for the router's timers, transactions, nonces and bans and for TCP
            idle times; None: the running event loop's ``loop.time()``.
        wall_clock: wall-clock time for binding expiry and the Date header (``time.time``).
        max_message_size: largest TCP message accepted.
        idle_timeout: close TCP connections idle for longer than this (seconds).
        refusals: counts and logs refused connections (failed TLS handshakes).
    """

    def __init__(
        self,
        router: SipRouter,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        wall_clock: Clock = time.time,
        max_message_size: int = 65535,
        idle_timeout: float = 600.0,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else _loop_time
        self.wall_clock = wall_clock
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.refusals = refusals
        self.tls_context: ssl.SSLContext | None = None
        """Server context of TLS connections accepted from now on (a reload swaps it)."""
        self.tls_handshake_timeout = 10.0
        """Seconds a TLS client has to finish its handshake."""
        self.handshakes: set[asyncio.Task[None]] = set()
        self.connections: set[_TcpConnection] = set()
        self.by_peer: dict[tuple[str, int], _TcpConnection] = {}
        """Open TCP connections by the peer's (host, port): requests towards a caller that
        reached the edge over TCP go back on its connection (RFC 3261 §18.2.2)."""
        self._proxy_timer: asyncio.TimerHandle | None = None
        self._proxy_timer_at: float | None = None
        self.bound: list[tuple[str, str, int]] = []
        """(transport, host, port) of every listener, with the real port when 0 was asked."""
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tls: list[asyncio.Server] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, udp: list[str], tcp: list[str], tls: list[str] | None = None) -> None:
        """Bind every listener; raises OSError naming the address that could not be bound.

        TLS listeners need :attr:`tls_context` set first.
        """
        loop = asyncio.get_running_loop()
        for spec in udp:
            host, port = parse_host_port(spec)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_UdpProtocol, self, len(self._udp)),
                    local_addr=(host, port),
                    family=family,
                )
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind SIP UDP {spec}: {exc.strerror}") from exc
            sock = transport.get_extra_info("socket")
            _grow_buffers(sock)
            self._udp.append(transport)
            self.bound.append(("udp", host, int(sock.getsockname()[1])))
        for spec in tcp:
            host, port = parse_host_port(spec)
            try:
                server = await loop.create_server(
                    lambda: _TcpConnection(self), host=host, port=port, reuse_address=True
                )
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind SIP TCP {spec}: {exc.strerror}") from exc
            self._tcp.append(server)
            self.bound.append(("tcp", host, int(server.sockets[0].getsockname()[1])))
        for spec in tls or ():
            host, port = parse_host_port(spec, 5061)
            try:
                server = await loop.create_server(
                    lambda: _TlsAcceptor(self), host=host, port=port, reuse_address=True
                )
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind SIP TLS {spec}: {exc.strerror}") from exc
            self._tls.append(server)
            self.bound.append(("tls", host, int(server.sockets[0].getsockname()[1])))
        self._ticker = asyncio.create_task(self._tick(), name="sip-edge-timer")
        for transport_name, host, port in self.bound:
            log.info("sip_listening", transport=transport_name, host=host, port=port)

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
        for transport in self._udp:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == family:
                transport.sendto(item.data, (item.host, item.port))
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
                for conn in list(self.connections):
                    if conn.idle_for(now) > self.idle_timeout:
                        conn.close()
            except Exception:  # keep the timer alive whatever one tick hit
                log.exception("sip_timer_failed")

    async def stop(self) -> None:
        """Close every listener and connection."""
        if self._ticker is not None:
            await cancel_and_wait(self._ticker)
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
        for transport in self._udp:
            transport.close()
        for server in [*self._tcp, *self._tls]:
            server.close()
        for task in list(self.handshakes):
            await cancel_and_wait(task)
        for conn in list(self.connections):
            conn.close()
        for server in [*self._tcp, *self._tls]:
            await server.wait_closed()


def _grow_buffers(sock: socket.socket) -> None:
    # Bursts of REGISTERs (a PBX restart re-registering thousands of phones) overflow the
    # default 208 KiB receive buffer; ask for more (the kernel caps it at rmem_max).
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
