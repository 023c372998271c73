"""Connection floods and slow peers against a real server (issue [2/7], "SIP TCP connection flood
takes HTTP down"): caps refuse past their limits and count it, deadlines close slow and silent
connections, and through all of it HTTP and SIP over UDP and TCP keep answering."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import ServerProcess, run_sipp, until
from tests.integration.media_stream_client import MediaStreamClient

pytestmark = pytest.mark.integration

FLOOD = 2000
"""TCP connections opened by the flood tests."""

SERVER_FILES = 512
"""The open-file limit the flooded server runs with (soft and hard: it cannot raise it)."""

OPTIONS = (
    "OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} 127.0.0.1:5060;branch=z9hG4bK-{n}\r\n"
    "From: <sip:probe@127.0.0.1>;tag=a{n}\r\n"
    "To: <sip:127.0.0.1>\r\n"
    "Call-ID: conn-{n}\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)

WS_SECRET = "conn-ws-secret-0123456789"


@pytest.fixture(autouse=True)
def _enough_files_here() -> Iterator[None]:
    """The test process holds the flood's sockets itself: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 500:
        pytest.skip(f"the test process may open only {hard} files; the flood needs {FLOOD + 500}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _signalling_only(config: dict[str, Any]) -> None:
    """No agent takes SIP calls: no media workers, the edge and HTTP alone."""
    for agent in config["agents"]:
        agent["sip"]["enabled"] = False


def options(transport: str, n: int) -> bytes:
    return OPTIONS.format(transport=transport, n=n).encode()


def udp_options_ok(port: int, n: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3.0)
        s.sendto(options("UDP", n), ("127.0.0.1", port))
        try:
            return s.recv(65535).startswith(b"SIP/2.0 200 ")
        except TimeoutError:
            return False


def tcp_options_ok(sock: socket.socket, n: int) -> bool:
    sock.settimeout(3.0)
    sock.sendall(options("TCP", n))
    try:
        return sock.recv(65535).startswith(b"SIP/2.0 200 ")
    except (TimeoutError, ConnectionError):
        return False


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection to the SIP port from ``source`` (any 127/8 address is loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - start


def refusals(server: ServerProcess, ingress: str, reason: str) -> float:
    return server.metric("sipserver_refusals_total", ingress=ingress, reason=reason)


def assert_quiet_log(server: ServerProcess, max_bytes: int = 300_000) -> None:
    text = server.log_path.read_text(errors="replace")
    assert "Traceback" not in text
    assert len(text) < max_bytes, f"log grew to {len(text)} bytes"


def test_flood_is_capped_and_http_and_sip_keep_answering(server_factory: Any) -> None:
    """2,000 connections under a 512-file limit, half from one address and half from 20
    others: the per-source cap and the automatic total cap (half of what the limit leaves)
    refuse the rest at once; HTTP, UDP and an established TCP connection keep answering; after
    the flood new TCP connections do."""

    def limits(config: dict[str, Any]) -> None:
        _signalling_only(config)
        config["server"]["sip"]["max_connections_per_source"] = 40

    server: ServerProcess = server_factory(limits, wait="/healthz", nofile=SERVER_FILES)
    port = server.sip_port
    cap = (SERVER_FILES - 256) // 2  # server.sip.max_connections: auto
    pbx = connect_from("127.0.0.1", port)
    assert tcp_options_ok(pbx, 1)
    flood: list[socket.socket] = []
    try:
        for i in range(FLOOD):
            source = "127.0.0.2" if i < FLOOD // 2 else f"127.0.0.{3 + i % 20}"
            with contextlib.suppress(ConnectionResetError):  # refused before connect() returned
                flood.append(connect_from(source, port))
        refused = FLOOD - (cap - 1)  # the PBX holds one place
        settled = asyncio.run(
            until(
                lambda: (
                    refusals(server, "sip_tcp", "max_connections")
                    + refusals(server, "sip_tcp", "per_source_limit")
                    >= refused
                ),
                20,
            )
        )
        assert settled, server.metrics()
        assert refusals(server, "sip_tcp", "per_source_limit") > 0
        assert refusals(server, "sip_tcp", "max_connections") > 0
        assert server.metric("sipserver_sip_tcp_connections") == cap
        # During the flood: HTTP, SIP over UDP and over the established TCP connection.
        assert server.get("/healthz")[0] == 200
        assert udp_options_ok(port, 2)
        assert tcp_options_ok(pbx, 3)
    finally:
        for sock in flood:
            sock.close()
    # After it: a new TCP connection (from a flooding address, too) is served.
    assert asyncio.run(until(lambda: server.metric("sipserver_sip_tcp_connections") == 1, 10))
    with connect_from("127.0.0.2", port) as again:
        assert tcp_options_ok(again, 4)
    assert server.get("/healthz")[0] == 200
    assert udp_options_ok(port, 5)
    pbx.close()
    events = [e for e in server.log_events() if e.get("event") == "refused"]
    assert 1 <= len(events) <= 10, len(events)  # one line per reason per 10 s, not per attempt
    assert_quiet_log(server)


def test_out_of_files_is_shed_without_tracebacks(server_factory: Any) -> None:
    """A cap set above the open-file limit: accept() fails with EMFILE. The pending connections
    are refused at once and counted (out_of_files), no traceback is written, UDP keeps
    answering, and once the flood ends HTTP and TCP serve again."""

    def no_caps(config: dict[str, Any]) -> None:
        _signalling_only(config)
        config["server"]["sip"]["max_connections"] = 5000
        config["server"]["sip"]["max_connections_per_source"] = 5000

    server: ServerProcess = server_factory(no_caps, wait="/healthz", nofile=256)
    port = server.sip_port
    flood: list[socket.socket] = []
    try:
        for i in range(FLOOD // 2):
            with contextlib.suppress(OSError):  # a full backlog: the connect times out
                flood.append(connect_from(f"127.0.0.{2 + i % 20}", port))
        # Out of descriptors, HTTP is shed like the rest; SIP over UDP needs none.
        assert udp_options_ok(port, 1)
    finally:
        for sock in flood:
            sock.close()
    assert asyncio.run(until(lambda: server.get("/healthz")[0] == 200, 20))
    assert refusals(server, "sip_tcp", "out_of_files") > 0
    with connect_from("127.0.0.1", port) as again:
        assert tcp_options_ok(again, 2)
    assert_quiet_log(server)


def test_slow_partial_and_idle_sip_connections_are_closed(server_factory: Any) -> None:
    """A message trickling a byte at a time and a connection that never speaks are closed by
    the message deadline; one sending only stray line ends by the idle deadline; one sending
    RFC 5626 keepalive pings lives on and is still served."""
    # Stray bytes are single LFs: two CRLFs in a row would be a ping (RFC 5626 §3.5.1).

    def deadlines(config: dict[str, Any]) -> None:
        _signalling_only(config)
        config["server"]["sip"]["message_timeout"] = 2
        config["server"]["sip"]["connection_idle_timeout"] = 4

    server: ServerProcess = server_factory(deadlines, wait="/healthz")
    port = server.sip_port
    silent = connect_from("127.0.0.1", port)
    slow = connect_from("127.0.0.1", port)
    stray = connect_from("127.0.0.1", port)
    pinging = connect_from("127.0.0.1", port)
    for sock in (stray, pinging):
        assert tcp_options_ok(sock, sock.fileno())
    message = options("TCP", 99)
    slow_closed_at: float | None = None
    stray_closed_at: float | None = None
    begun = time.monotonic()
    for i in range(40):  # 8 s: a byte and a stray LF every 0.2 s, a ping every second
        now = time.monotonic() - begun
        try:
            slow.sendall(message[i : i + 1])
        except OSError:
            slow_closed_at = slow_closed_at or now
        try:
            stray.sendall(b"\n")
        except OSError:
            stray_closed_at = stray_closed_at or now
        if i % 5 == 0:
            pinging.sendall(b"\r\n\r\n")
            pinging.settimeout(3)
            assert pinging.recv(2) == b"\r\n"  # the pong (RFC 5626 §3.5.1)
        time.sleep(0.2)
    assert closed_by_server(silent, 1) is not None
    assert slow_closed_at is not None or closed_by_server(slow, 1) is not None
    assert stray_closed_at is not None or closed_by_server(stray, 1) is not None
    if stray_closed_at is not None:
        assert stray_closed_at > 3  # by the idle deadline (4 s), not the message deadline
    assert tcp_options_ok(pinging, 100)  # alive after 8 s of pings only
    assert refusals(server, "sip_tcp", "message_timeout") >= 2  # the slow one and the silent
    for sock in (silent, slow, stray, pinging):
        sock.close()
    assert_quiet_log(server)


async def test_slow_http_headers_and_bodies_are_cut_but_websockets_live(
    server_factory: Any,
) -> None:
    """A request head trickling in gets 408 and is closed at the header deadline, a Twilio
    webhook body trickling in at the body deadline (its handler's read fails quietly); a normal
    request meanwhile is served, and a websocket call longer than both deadlines is not
    touched."""

    def deadlines(config: dict[str, Any]) -> None:
        _signalling_only(config)
        config["agents"][0]["websocket"] = {"enabled": True, "secret": WS_SECRET}
        config["server"]["http_limits"] = {"header_timeout": 1.5, "body_timeout": 1.5}

    # /readyz: the websocket call needs a warm call worker (engine: native) or the models.
    server: ServerProcess = server_factory(deadlines)
    host, port_s = server.config["server"]["http"].rsplit(":", 1)
    loop = asyncio.get_running_loop()

    async def trickle(head: bytes, then: bytes) -> tuple[float | None, bytes]:
        reader, writer = await asyncio.open_connection(host, int(port_s))
        writer.write(head)
        begun = loop.time()
        answer = b""
        try:
            for i in range(30):  # a byte every 0.3 s for 9 s
                writer.write(then[i % len(then) : i % len(then) + 1])
                with contextlib.suppress(TimeoutError):
                    chunk = await asyncio.wait_for(reader.read(4096), 0.3)
                    answer += chunk
                    if not chunk:
                        return loop.time() - begun, answer
            return None, answer
        except ConnectionError:
            return loop.time() - begun, answer
        finally:
            writer.close()

    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.http_url}/ws/alice/{WS_SECRET}")
        call = MediaStreamClient(ws)
        await call.start()
        head_task = asyncio.create_task(trickle(b"GET /healthz HTTP/1.1\r\n", b"X-Slow: yes\r\n"))
        webhook = f"POST /incoming-call/alice/{WS_SECRET} HTTP/1.1\r\nHost: x\r\n"
        form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
        body_task = asyncio.create_task(trickle((webhook + form).encode(), b"CallSid=CA1&"))
        await asyncio.sleep(0.5)
        async with http.get(f"{server.http_url}/healthz") as resp:
            assert resp.status == 200  # a normal request is served meanwhile
        (head_closed, head_answer), (body_closed, _) = await asyncio.gather(head_task, body_task)
        assert head_closed is not None and head_closed < 6, head_closed
        assert head_answer.startswith(b"HTTP/1.1 408 ")
        assert body_closed is not None and body_closed < 6, body_closed
        await asyncio.sleep(max(0.0, 4.0 - (loop.time() - call.t0)))  # past both deadlines
        assert not ws.closed
        await call.stop()
    assert call.close_code == 1000, (call.close_code, call.close_reason)
    assert refusals(server, "http", "header_timeout") == 1
    assert refusals(server, "http", "body_timeout") == 1
    assert_quiet_log(server)


def test_a_quiet_tcp_call_keeps_its_connection_past_the_idle_deadline(
    server_factory: Any, tmp_path: Path
) -> None:
    """A call over TCP with no SIP (and no RTP) for longer than the idle deadline: its
    connection is kept, so the worker's BYE (RTP timeout) reaches the caller (SIPp)."""

    def quiet(config: dict[str, Any]) -> None:
        config["agents"][0]["sip"].update(invite_auth="ip", allowed_ips=["127.0.0.0/8"])
        config["server"]["sip"]["connection_idle_timeout"] = 1
        config["server"]["media"] = {"rtp_timeout": 4}

    server: ServerProcess = server_factory(quiet)
    result = run_sipp(
        "uac_edge_ip_auth_wait_bye.xml",
        server.sip_port,
        service="+15005550101",
        transport="tcp",
        workdir=tmp_path,
        timeout=20,
    )
    assert result.returncode == 0, result.output
    assert server.metric("sipserver_calls_ended_total", reason="worker_bye") == 1
    assert_quiet_log(server)
