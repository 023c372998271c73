"""Connection caps, stream deadlines and the accept loop (sipserver.connections), the HTTP
handler's deadlines, and their configuration and reload."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import socket
from typing import Any

import pytest
import yaml
from aiohttp import web

from sipserver.config import ConfigError, parse_config
from sipserver.connections import (
    ConnectionLimits,
    StreamAcceptor,
    StreamDeadlines,
    auto_max_connections,
    listening_sockets,
    raise_open_file_limit,
    source_key,
)
from sipserver.observability import Metrics, RefusalLog
from sipserver.reload import classify
from sipserver.server import Server
from sipserver.web.listener import GuardedRequestHandler


def refused(metrics: Metrics, ingress: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "sipserver_refusals_total", {"ingress": ingress, "reason": reason}
    )
    return value or 0.0


# ---------------------------------------------------------------------- ConnectionLimits


def test_limits_refuse_past_the_per_source_cap_then_the_total() -> None:
    limits = ConnectionLimits(max_total=3, max_per_source=2)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert limits.admit("a") == "per_source_limit"
    assert limits.admit("b") is None
    assert limits.admit("c") == "max_connections"
    assert limits.open == 3 and limits.from_source("a") == 2
    limits.release("a")
    assert limits.admit("c") is None  # a place came free
    assert limits.admit("a") == "max_connections"


def test_limits_release_is_bounded_and_forgets_sources() -> None:
    limits = ConnectionLimits(max_total=10, max_per_source=10)
    limits.admit("a")
    limits.release("a")
    limits.release("a")  # a second release of the same place changes nothing
    limits.release("never")
    assert limits.open == 0 and limits.from_source("a") == 0
    assert limits._per_source == {}


def test_limits_reconfigured_keep_open_connections() -> None:
    limits = ConnectionLimits(max_total=5, max_per_source=5)
    for _ in range(4):
        limits.admit("a")
    limits.configure(max_total=2, max_per_source=1)
    assert limits.open == 4
    assert limits.admit("b") == "max_connections"


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_source_key_counts_ipv6_by_its_64(host: str, key: str) -> None:
    assert source_key(host) == key


def test_auto_caps_leave_files_for_the_rest() -> None:
    assert auto_max_connections(0.5, limit=1024) == 384
    assert auto_max_connections(0.25, limit=1024) == 192
    assert auto_max_connections(0.5, limit=256) == 64  # never below 64
    assert auto_max_connections(0.5, limit=1_048_576) == 10_000  # never above 10,000


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    before, now, hard = raise_open_file_limit()
    assert before <= now == hard


# ---------------------------------------------------------------------- StreamDeadlines


def deadline(d: StreamDeadlines, now: float) -> str | None:
    return d.expired(now, idle_timeout=300, message_timeout=20)


def test_a_silent_new_connection_has_the_message_deadline() -> None:
    d = StreamDeadlines(now=0.0)
    assert deadline(d, 20.0) is None
    assert deadline(d, 20.5) == "message_timeout"


def test_partial_bytes_never_refresh_the_idle_deadline() -> None:
    d = StreamDeadlines(now=0.0)
    d.received(1.0, completed=True, pending=False)  # a REGISTER
    assert d.partial_since is None
    for t in range(2, 300, 5):
        d.received(float(t), completed=False, pending=False)  # stray line ends
    assert deadline(d, 300.5) is None
    assert deadline(d, 301.5) == "idle_timeout"


def test_a_message_trickling_in_hits_the_message_deadline() -> None:
    d = StreamDeadlines(now=0.0)
    d.received(1.0, completed=True, pending=False)
    d.received(50.0, completed=False, pending=True)  # its first byte
    for t in range(55, 70, 5):
        d.received(float(t), completed=False, pending=True)  # a byte every 5 s
    assert d.partial_since == 50.0
    assert deadline(d, 70.0) is None
    assert deadline(d, 70.5) == "message_timeout"


def test_keepalive_pings_and_messages_refresh_and_pipelining_restarts_the_clock() -> None:
    d = StreamDeadlines(now=0.0)
    for t in range(100, 1000, 100):
        d.received(float(t), completed=True, pending=False)  # RFC 5626 pings
    assert deadline(d, 1150.0) is None
    # A read that ends one message and starts the next: the new one's clock starts now.
    d.received(1200.0, completed=True, pending=True)
    assert d.partial_since == 1200.0
    assert deadline(d, 1219.0) is None


def test_a_connection_carrying_a_call_is_exempt_from_idle_only() -> None:
    d = StreamDeadlines(now=0.0)
    d.received(1.0, completed=True, pending=False)
    assert d.expired(5000.0, idle_timeout=300, message_timeout=20, in_use=True) is None
    d.received(5001.0, completed=False, pending=True)
    assert d.expired(5030.0, idle_timeout=300, message_timeout=20, in_use=True) == (
        "message_timeout"
    )


# ---------------------------------------------------------------------- StreamAcceptor


class _FakeListeningSocket:
    """accept() answers from a script: OSError instances are raised, sockets returned."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script

    def setblocking(self, flag: bool) -> None:
        pass

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if not self.script:
            raise BlockingIOError
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item, ("192.0.2.1", 5060)

    def fileno(self) -> int:
        return -1


async def test_out_of_files_sheds_the_pending_connection_and_counts_it() -> None:
    metrics = Metrics()
    a, b = socket.socketpair()
    b.close()
    emfile = OSError(errno.EMFILE, "Too many open files")
    fake = _FakeListeningSocket([emfile, a])  # then empty: BlockingIOError
    acceptor = StreamAcceptor(
        fake,  # type: ignore[arg-type]
        lambda slot: asyncio.Protocol(),
        ConnectionLimits(10, 10),
        RefusalLog(metrics),
        "sip_tcp",
    )
    acceptor._loop = asyncio.get_running_loop()
    acceptor._on_readable()
    assert refused(metrics, "sip_tcp", "out_of_files") == 1
    assert a.fileno() == -1  # accepted with the spare descriptor and closed at once
    assert acceptor.limits.open == 0 and acceptor._retry is None


async def test_out_of_files_without_a_pending_connection_counts_nothing() -> None:
    metrics = Metrics()
    emfile = OSError(errno.EMFILE, "Too many open files")
    fake = _FakeListeningSocket([emfile])
    acceptor = StreamAcceptor(
        fake,  # type: ignore[arg-type]
        lambda slot: asyncio.Protocol(),
        ConnectionLimits(10, 10),
        RefusalLog(metrics),
        "http",
    )
    acceptor._loop = asyncio.get_running_loop()
    acceptor._on_readable()
    assert refused(metrics, "http", "out_of_files") == 0


async def test_out_of_files_without_a_spare_pauses_accepting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sipserver import connections

    metrics = Metrics()
    fake = _FakeListeningSocket([OSError(errno.ENFILE, "Too many open files in system")])
    acceptor = StreamAcceptor(
        fake,  # type: ignore[arg-type]
        lambda slot: asyncio.Protocol(),
        ConnectionLimits(10, 10),
        RefusalLog(metrics),
        "sip_tcp",
    )
    monkeypatch.setattr(connections._SpareDescriptor, "give_up", lambda self: False)
    removed: list[int] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "remove_reader", lambda fd: removed.append(fd))
    acceptor._loop = loop
    acceptor._on_readable()
    assert refused(metrics, "sip_tcp", "out_of_files") == 1
    assert removed == [-1] and acceptor._retry is not None
    acceptor._retry.cancel()


async def test_the_acceptor_refuses_past_the_cap_and_releases_on_close() -> None:
    metrics = Metrics()
    opened: list[asyncio.Transport] = []
    lost = asyncio.Event()

    class Held(asyncio.Protocol):
        def __init__(self, slot: Any) -> None:
            self.slot = slot

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            self.slot.release()
            lost.set()

    limits = ConnectionLimits(max_total=2, max_per_source=2)
    acceptor = StreamAcceptor(
        listening_sockets("127.0.0.1", 0)[0], Held, limits, RefusalLog(metrics), "sip_tcp"
    )
    acceptor.start()
    clients = []
    try:
        for _ in range(2):
            clients.append(await asyncio.open_connection("127.0.0.1", acceptor.port))
        for _ in range(100):
            if len(opened) == 2:
                break
            await asyncio.sleep(0.02)
        try:
            third = await asyncio.open_connection("127.0.0.1", acceptor.port)
        except ConnectionResetError:
            third = None  # reset before connect() returned: refused all the same
        for _ in range(100):
            if len(opened) == 2 and refused(metrics, "sip_tcp", "max_connections") == 1:
                break
            await asyncio.sleep(0.02)
        assert len(opened) == 2 and limits.open == 2
        assert refused(metrics, "sip_tcp", "max_connections") == 1
        if third is not None:
            clients.append(third)
            with contextlib.suppress(ConnectionResetError):  # a reset: closed at once too
                assert await asyncio.wait_for(third[0].read(), 5) == b""
        opened[0].close()
        await asyncio.wait_for(lost.wait(), 5)
        assert limits.open == 1
    finally:
        for _, writer in clients:
            writer.close()
        acceptor.close()


# ---------------------------------------------------------------------- HTTP handler


def test_the_aiohttp_internals_the_http_handler_reads_still_exist() -> None:
    """GuardedRequestHandler reads these attributes of aiohttp's RequestHandler; an aiohttp
    release that renames one must fail here."""
    names = set(web.RequestHandler.__slots__) | set(
        getattr(web.RequestHandler.__mro__[1], "__slots__", ())
    )
    for name in ("_request_count", "_messages", "_upgraded", "_payload_parser"):
        assert name in names, name
    source = inspect.getsource(web.RequestHandler.data_received)
    assert "self._request_count += 1" in source and "self._messages.append" in source
    assert GuardedRequestHandler.__slots__


# ---------------------------------------------------------------------- configuration


def parse(server: dict[str, Any]) -> Any:
    return parse_config(yaml.safe_dump({"server": server}), env={})


def test_connection_settings_default_to_auto_caps_and_sane_deadlines() -> None:
    cfg = parse({})
    sip, http = cfg.server.sip, cfg.server.http_limits
    assert sip.max_connections == "auto" and sip.max_connections_per_source == 256
    assert sip.connection_idle_timeout == 300 and sip.message_timeout == 20
    assert http.max_connections == "auto" and http.header_timeout == 10
    assert http.body_timeout == 30 and http.keepalive_timeout == 60


@pytest.mark.parametrize(
    ("server", "path", "reason"),
    [
        ({"sip": {"max_connections": 10, "max_connections_per_source": 20}},
         "server.sip.max_connections_per_source", "must be <= max_connections (10)"),
        ({"http_limits": {"max_connections": 5, "max_connections_per_source": 6}},
         "server.http_limits.max_connections_per_source", "must be <= max_connections (5)"),
        ({"sip": {"max_connections": 0}}, "server.sip.max_connections", "'auto' or an integer"),
        ({"sip": {"message_timeout": 0}}, "server.sip.message_timeout", "must be > 0"),
        ({"http_limits": {"header_timeout": -1}}, "server.http_limits.header_timeout",
         "must be > 0"),
    ],
)  # fmt: skip
def test_connection_settings_rules(server: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(server)
    assert any(path in line and reason in line for line in info.value.errors), info.value.errors


def test_connection_settings_are_live_on_reload() -> None:
    for key in (
        "server.sip.max_connections",
        "server.sip.max_connections_per_source",
        "server.sip.connection_idle_timeout",
        "server.sip.message_timeout",
        "server.http_limits.max_connections",
        "server.http_limits.header_timeout",
        "server.http_limits.keepalive_timeout",
    ):
        assert classify(key) == "live", key


async def test_a_reload_applies_new_caps_and_deadlines(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = {"store": "memory", "sip": {"udp": ["127.0.0.1:5060"], "tcp": []}}
    server = Server(parse(base))
    server._start_done.set()
    assert server.listeners.limits.max_total == auto_max_connections(0.5)
    changed = {
        **base,
        "sip": {**base["sip"], "max_connections": 50, "max_connections_per_source": 5},
        "http_limits": {"max_connections": 40, "header_timeout": 3, "keepalive_timeout": 7},
    }
    result = await server.reload(parse(changed))
    assert result.applied and result.restart_needed == ()
    assert (server.listeners.limits.max_total, server.listeners.limits.max_per_source) == (50, 5)
    assert (server.http_limits.max_total, server.http_limits.max_per_source) == (40, 40)
    assert server.http_deadlines.header_timeout == 3
    assert server.http_deadlines.keepalive_timeout == 7


# ---------------------------------------------------------------------- SIP stream deadlines


async def test_sip_listeners_close_idle_connections_but_keep_those_carrying_calls() -> None:
    from sipserver.edge.transport import SipListeners
    from tests.unit.test_router import make_router

    router, metrics = make_router()
    now = [1000.0]
    in_calls: set[tuple[str, str, int]] = set()
    listeners = SipListeners(
        router, metrics, clock=lambda: now[0], idle_timeout=300, calls_on=lambda: in_calls
    )
    await listeners.start([], ["127.0.0.1:0"])
    port = listeners.bound[0][2]
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        call_reader, call_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        for writer, reader in ((idle_writer, idle_reader), (call_writer, call_reader)):
            writer.write(b"\r\n\r\n")  # a ping: a complete "message"
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        slow_writer.write(b"OPTIONS sip:x SIP/2.0\r\n")  # a message begun
        await asyncio.sleep(0.1)
        by_port = {c.flow[2]: c for c in listeners.connections}
        call_port = call_writer.get_extra_info("sockname")[1]
        in_calls.add(by_port[call_port].flow)
        now[0] += 25  # past the message deadline (20 s)
        listeners.expire_connections(now[0])
        assert await asyncio.wait_for(slow_reader.read(), 5) == b""
        assert refused(metrics, "sip_tcp", "message_timeout") == 1
        now[0] += 300  # past the idle deadline
        listeners.expire_connections(now[0])
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert refused(metrics, "sip_tcp", "idle_timeout") == 0  # idle is not a refusal
        call_writer.write(b"\r\n\r\n")  # the call's connection is still served
        assert await asyncio.wait_for(call_reader.readexactly(2), 5) == b"\r\n"
        for writer in (idle_writer, call_writer, slow_writer):
            writer.close()
    finally:
        await listeners.stop()


def test_listening_sockets_bind_every_address_a_name_has_on_one_port() -> None:
    (one,) = listening_sockets("127.0.0.1", 0)
    one.close()
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    sockets = listening_sockets("localhost", 0)
    try:
        assert {s.getsockname()[0] for s in sockets} == resolved
        assert len({s.getsockname()[1] for s in sockets}) == 1
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(OSError):
        listening_sockets("192.0.2.1", 0)  # not an address of this machine


async def test_the_loop_exception_handler_counts_accept_failures_and_never_raises(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = Server(parse({"store": "memory", "sip": {"udp": ["127.0.0.1:5060"], "tcp": []}}))
    loop = asyncio.get_running_loop()
    emfile = OSError(errno.EMFILE, "Too many open files")
    context = {"message": "socket.accept() out of system resource", "exception": emfile}
    server._loop_exception(loop, context)
    assert refused(server.metrics, "accept", "out_of_files") == 1
    server._loop_exception(loop, {"message": "Task exception was never retrieved"})
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        server._loop_exception(loop, {"message": "Exception in callback", "exception": exc})
    assert refused(server.metrics, "accept", "out_of_files") == 1


async def test_a_read_started_after_the_close_is_taken_for_a_client_gone() -> None:
    """Under load a handler can start reading the body after its deadline closed the
    connection (seen in CI): aiohttp's payload then raises RuntimeError("Connection closed.")
    instead of a ConnectionError. The listener's error log takes that, and only that, for a
    client gone (no traceback); this pins the installed aiohttp's behaviour and text."""
    from types import SimpleNamespace

    from aiohttp.streams import StreamReader

    from sipserver.web.listener import _read_after_close

    closed = SimpleNamespace(connected=False)
    payload = StreamReader(closed, 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError) as raised:
        await payload.readany()
    assert _read_after_close(raised.value)
    assert not _read_after_close(RuntimeError("something else went wrong"))
    assert not _read_after_close(ValueError("Connection closed."))


async def test_a_body_cut_by_its_deadline_writes_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handler reading the body fails with "Connection lost" when the deadline closes the
    connection: one debug line, not aiohttp's "Error handling request" traceback."""
    from sipserver.web.app import request_error_logger
    from sipserver.web.listener import HttpDeadlines, HttpListener

    read: list[str] = []

    async def post(request: web.Request) -> web.Response:
        try:
            await request.read()
        except ConnectionError as exc:
            read.append(repr(exc))
            raise
        return web.Response(text="read")

    app = web.Application()
    app.router.add_post("/upload", post)
    runner = web.AppRunner(app, access_log=None, logger=request_error_logger())
    await runner.setup()
    metrics = Metrics()
    listener = HttpListener(
        runner,
        ConnectionLimits(10, 10),
        RefusalLog(metrics),
        HttpDeadlines(header_timeout=5, body_timeout=0.3, keepalive_timeout=5),
        logger=request_error_logger(),
    )
    port = listener.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
        for _ in range(50):
            if read:
                break
            await asyncio.sleep(0.02)
        assert read and "Connection lost" in read[0]
        assert refused(metrics, "http", "body_timeout") == 1
        assert not [r for r in caplog.records if r.exc_info], caplog.text
    finally:
        listener.close()
        await runner.cleanup()


async def test_a_failed_tls_handshake_is_counted_and_gives_its_place_back() -> None:
    import ssl

    from sipserver.edge.transport import SipListeners
    from tests.unit.test_router import make_router

    router, metrics = make_router()
    listeners = SipListeners(router, metrics, limits=ConnectionLimits(5, 5))
    listeners.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listeners.tls_handshake_timeout = 2
    await listeners.start([], [], ["127.0.0.1:0"])
    port = listeners.bound[0][2]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS sip:x SIP/2.0\r\n\r\n")  # plain SIP at a TLS port
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        for _ in range(100):
            if refused(metrics, "sip_tls", "handshake_failed") == 1 and not listeners.limits.open:
                break
            await asyncio.sleep(0.02)
        assert refused(metrics, "sip_tls", "handshake_failed") == 1
        assert listeners.limits.open == 0
    finally:
        await listeners.stop()
