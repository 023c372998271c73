"""Connection limits of the stream listeners (SIP over TCP/TLS, HTTP): caps, deadlines, accept.

A flood of connections must not take the process's file descriptors, and a connection that
trickles bytes must not live for ever. Three pieces, shared by the SIP edge and HTTP:

- :class:`ConnectionLimits` (pure): connections open in total and per source address; a new
  one past either cap is refused (closed at once, counted in ``sipserver_refusals_total``).
- :class:`StreamDeadlines` (pure): when a SIP stream connection is closed, for silence (no
  complete message nor keepalive for ``idle_timeout``) or for a message started and left
  incomplete (``message_timeout``, the slowloris defence). Partial bytes never refresh it.
- :class:`StreamAcceptor` (I/O): the accept loop of one listening socket. It replaces
  asyncio's, which logs a traceback for every failed ``accept()`` when the process is out of
  file descriptors (EMFILE) and leaves the connection in the backlog. Here the pending
  connection is shed with a spare descriptor (accepted and closed at once), the event is
  counted as a refusal (``reason=out_of_files``) and logged once per interval, and accepting
  pauses briefly when even that fails.

:func:`raise_open_file_limit` raises ``RLIMIT_NOFILE`` to its hard limit at start;
:func:`auto_max_connections` derives the default caps from that limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import resource
import socket
import struct
from collections.abc import Callable

from sipserver.observability import RefusalLog, get_logger

__all__ = [
    "ConnectionLimits",
    "ConnectionSlot",
    "StreamAcceptor",
    "StreamDeadlines",
    "auto_max_connections",
    "listening_sockets",
    "open_file_limit",
    "raise_open_file_limit",
    "source_key",
]

log = get_logger(__name__)

#: File descriptors kept out of the automatic connection caps: the bindings database, worker
#: links, log files, model files, sockets of the media workers' control links.
RESERVED_FILES = 256

#: Errors of ``accept()`` that mean "out of descriptors or kernel memory", not a bad peer.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Connections accepted per readiness event (as asyncio does), so one listener cannot starve
#: the loop.
ACCEPT_BATCH = 100

#: Seconds accepting pauses when the process is out of descriptors and no spare one is left.
ACCEPT_RETRY_DELAY = 0.5


def open_file_limit() -> int:
    """The process's soft ``RLIMIT_NOFILE`` (``RLIM_INFINITY`` read as 1,048,576)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1_048_576 if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (connections are file descriptors;
    distributions start processes at a soft 1,024).

    Returns:
        ``(soft before, soft now, hard)``; unchanged when the raise is not permitted.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(now), int(hard)


def auto_max_connections(share: float, limit: int | None = None) -> int:
    """A connection cap that leaves descriptors for everything else: ``share`` of the open-file
    limit past :data:`RESERVED_FILES`, at least 64 and at most 10,000.

    The SIP stream listeners take half (``share=0.5``), HTTP a quarter: a flood at one door
    leaves the other, the bindings database and the worker links their descriptors.
    """
    files = open_file_limit() if limit is None else limit
    return max(64, min(10_000, int((files - RESERVED_FILES) * share)))


def source_key(host: str) -> str:
    """The address a per-source cap counts by: an IPv4 address as it is (an IPv4-mapped IPv6
    address as its IPv4 form), an IPv6 address by its /64 (one subscriber's network: a host
    there can take any of its 2^64 addresses)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionLimits:
    """Connections open at one kind of door, in total and per source; admits or refuses a new
    one. Pure: the acceptor asks, counts and releases.

    Args:
        max_total: connections open at once, all sources together.
        max_per_source: connections open at once from one :func:`source_key`.
    """

    __slots__ = ("_per_source", "max_per_source", "max_total", "open")

    def __init__(self, max_total: int, max_per_source: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.open = 0
        """Connections admitted and not released."""
        self._per_source: dict[str, int] = {}

    def configure(self, max_total: int, max_per_source: int) -> None:
        """New caps (a reload); open connections are kept, new ones are judged by them."""
        self.max_total, self.max_per_source = max_total, max_per_source

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source`` (a :func:`source_key`) and return None, or
        return why it is refused (``max_connections``, ``per_source_limit``) and count nothing."""
        if self.open >= self.max_total:
            return "max_connections"
        count = self._per_source.get(source, 0)
        if count >= self.max_per_source:
            return "per_source_limit"
        self._per_source[source] = count + 1
        self.open += 1
        return None

    def release(self, source: str) -> None:
        """A connection from ``source`` admitted earlier has closed."""
        count = self._per_source.get(source, 0)
        if count <= 0:
            return
        self.open -= 1
        if count == 1:
            del self._per_source[source]
        else:
            self._per_source[source] = count - 1

    def from_source(self, source: str) -> int:
        """Connections open from ``source``."""
        return self._per_source.get(source, 0)


class ConnectionSlot:
    """One admitted connection's place in :class:`ConnectionLimits`; released once, by the
    connection when it closes (or by the acceptor when it never opened)."""

    __slots__ = ("_limits", "host", "key")

    def __init__(self, limits: ConnectionLimits, host: str, key: str) -> None:
        self._limits: ConnectionLimits | None = limits
        self.host = host
        """The peer's address."""
        self.key = key
        """The :func:`source_key` it is counted under."""

    def release(self) -> None:
        """Give the place back (idempotent)."""
        if self._limits is not None:
            self._limits.release(self.key)
            self._limits = None


class StreamDeadlines:
    """When a stream connection of the SIP edge is to be closed. Pure: the adapter reports what
    each read did and asks :meth:`expired` on its periodic tick.

    - Idle: no complete message and no keepalive ping (RFC 5626 §4.4.1) for ``idle_timeout``.
      Bytes of an incomplete message do not count: a byte every few seconds is not activity.
    - Partial: a message whose first byte arrived ``message_timeout`` ago is still incomplete
      (slowloris). A new connection's first message counts from the connection: a connection
      that says nothing is closed as soon as one that trickles.

    Args:
        now: when the connection was made.
    """

    __slots__ = ("last_message", "partial_since")

    def __init__(self, now: float) -> None:
        self.last_message = now
        """When the last complete message or keepalive arrived (the connection, at first)."""
        self.partial_since: float | None = now
        """When the pending incomplete message began; None when nothing is pending."""

    def received(self, now: float, *, completed: bool, pending: bool) -> None:
        """One read: ``completed`` when it finished a message or a ping, ``pending`` when bytes
        of an unfinished message are left over."""
        if completed:
            self.last_message = now
            self.partial_since = now if pending else None
        elif pending and self.partial_since is None:
            self.partial_since = now

    def expired(
        self, now: float, *, idle_timeout: float, message_timeout: float, in_use: bool = False
    ) -> str | None:
        """``message_timeout`` or ``idle_timeout`` (why to close now), or None.

        Args:
            in_use: the connection carries a call in progress: the idle limit does not apply
                (the BYE of a long call must find its way back, RFC 3261 §18.2.2), the partial
                limit does.
        """
        if self.partial_since is not None and now - self.partial_since > message_timeout:
            return "message_timeout"
        if not in_use and now - self.last_message > idle_timeout:
            return "idle_timeout"
        return None


ProtocolFactory = Callable[[ConnectionSlot], asyncio.BaseProtocol]
"""Builds the protocol of an admitted connection; it releases the slot in ``connection_lost``."""


class _SpareDescriptor:
    """One descriptor held in reserve: when ``accept()`` fails for want of descriptors, it is
    closed so that the pending connection can be accepted and closed (refused at once, rather
    than left to hang in the backlog), then opened again."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.take()

    def take(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = None

    def give_up(self) -> bool:
        """Close the spare; False when there is none."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


_spare: _SpareDescriptor | None = None


def _spare_descriptor() -> _SpareDescriptor:
    global _spare
    if _spare is None:
        _spare = _SpareDescriptor()
    return _spare


def _abort(conn: socket.socket) -> None:
    """Close a refused connection at once with a reset (no TIME_WAIT kept for it here)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class StreamAcceptor:
    """The accept loop of one listening stream socket, with :class:`ConnectionLimits`.

    Each accepted connection is admitted or refused (closed with a reset and counted in
    ``sipserver_refusals_total{ingress,reason}`` through ``refusals``); an admitted one gets a
    :class:`ConnectionSlot` and its transport is built with ``loop.connect_accepted_socket``
    (a TLS listener's protocol runs its own handshake: the SIP edge's reads the context in force
    for each connection, which a reload swaps). Out of descriptors: see the module doc.

    Args:
        sock: a bound, listening socket (made non-blocking here).
        factory: builds the protocol of an admitted connection.
        limits: the caps this listener counts against (shared by listeners of one kind).
        refusals: where refusals are counted and logged.
        ingress: the refusal metric's ``ingress`` label (``sip_tcp``, ``sip_tls``, ``http``).
    """

    def __init__(
        self,
        sock: socket.socket,
        factory: ProtocolFactory,
        limits: ConnectionLimits,
        refusals: RefusalLog,
        ingress: str,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._factory = factory
        self.limits = limits
        self._refusals = refusals
        self.ingress = ingress
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def port(self) -> int:
        """The port the socket is bound to."""
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        """Start accepting (call on the running loop)."""
        self._loop = asyncio.get_running_loop()
        _spare_descriptor()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections are not touched)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        for task in self._opening:
            task.cancel()
        self.sock.close()

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    # ECONNABORTED and friends: that peer gave up; the next may be fine.
                    log.debug("accept_failed", ingress=self.ingress, error=str(exc))
                    continue
                shed = self._shed()
                if shed is None:
                    return  # nothing was pending after all
                self._refusals.refuse(self.ingress, "out_of_files", error=exc.strerror or "")
                if not shed:
                    self._pause()
                    return
                continue
            self._admit(conn, str(addr[0]))

    def _admit(self, conn: socket.socket, host: str) -> None:
        key = source_key(host)
        reason = self.limits.admit(key)
        if reason is not None:
            _abort(conn)
            self._refusals.refuse(
                self.ingress,
                reason,
                source=host,
                open=self.limits.open,
                max_connections=self.limits.max_total,
                max_per_source=self.limits.max_per_source,
            )
            return
        slot = ConnectionSlot(self.limits, host, key)
        assert self._loop is not None
        task = self._loop.create_task(self._open(conn, slot))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket, slot: ConnectionSlot) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(slot),
                conn,
            )
        except asyncio.CancelledError:
            slot.release()
            conn.close()
            raise
        except Exception as exc:  # a peer gone before we began
            slot.release()
            conn.close()
            # Counted and logged once per interval: a flood must not log per attempt.
            self._refusals.refuse(self.ingress, "setup_failed", source=slot.host, error=repr(exc))

    def _shed(self) -> bool | None:
        """Out of descriptors: accept the pending connection with the spare one and close it.
        True when one was shed, None when none was pending, False when that failed too."""
        spare = _spare_descriptor()
        if not spare.give_up():
            return False
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            spare.take()
            return None
        except OSError:
            spare.take()
            return False
        _abort(conn)
        spare.take()  # the number the shed connection had
        return True

    def _pause(self) -> None:
        """Stop watching the socket for a moment: the kernel keeps reporting it readable while
        the process has no descriptor to accept with, and polling it would spin a core."""
        assert self._loop is not None
        _spare_descriptor().take()
        self._loop.remove_reader(self.sock.fileno())
        self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)


def listening_sockets(host: str, port: int, *, backlog: int = 1024) -> list[socket.socket]:
    """Listening TCP sockets on ``host:port``: one for an address, one per address a name
    resolves to (``localhost``: 127.0.0.1 and ::1), as ``loop.create_server`` binds. IPv6
    sockets are IPv6-only (``[::]`` and ``0.0.0.0`` are two listeners). With port 0 every
    socket gets the first one's port.

    Raises:
        OSError: an address cannot be resolved or bound (every socket made is closed).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
