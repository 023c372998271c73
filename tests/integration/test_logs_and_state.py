"""What an operator sees of a running server: a JSON log that stays JSON (media workers, pjsip,
aiohttp and over-long requests included) and state files nobody else can read.

One server with a SIP agent (so a pjsua2 media worker starts) takes a real call from the pjsua2
caller, a SIPp REGISTER, over-long SIP requests on UDP and TCP and an over-long HTTP request
line; then every line of its log must parse as JSON.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DEMO_PASSWORD,
    DEMO_USER,
    ServerProcess,
    base_config,
    free_port,
    place_call,
    run_sipp,
)
from tests.integration.rtp_signals import RATE, tone
from tests.integration.test_calls import wait_metric
from tests.speech import write_wav

pytestmark = pytest.mark.integration

LONG = 9000
"""Bytes in the over-long request lines: past aiohttp's 8190-byte line limit."""


def sip_request(port: int, transport: str, user: str) -> bytes:
    return (
        f"OPTIONS sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:9;branch=z9hG4bK-long-{transport}\r\n"
        "From: <sip:probe@127.0.0.1>;tag=long\r\n"
        "To: <sip:probe@127.0.0.1>\r\n"
        f"Call-ID: long-{transport}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def status_of(response: bytes) -> int:
    start = response.split(b"\r\n", 1)[0].split(b" ")
    assert start[0] == b"SIP/2.0", response[:200]
    return int(start[1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Run:
    """What one server went through, and its log."""

    sip_status: dict[str, int] = field(default_factory=dict)
    http_answers: list[bytes] = field(default_factory=list)
    call: dict[str, Any] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    lines: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("logs")
    data = workdir / "state" / "data"  # neither exists yet
    server = ServerProcess(base_config(free_port(), free_port(socket.SOCK_STREAM), data), workdir)
    server.start()
    result = Run()
    try:
        # A 9 KB Request-URI (under server.sip.max_message_size) over UDP and TCP.
        user = "a" * LONG
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(sip_request(server.sip_port, "udp", user), ("127.0.0.1", server.sip_port))
            result.sip_status["udp"] = status_of(udp.recv(65535))
        with socket.create_connection(("127.0.0.1", server.sip_port), timeout=5) as tcp:
            tcp.sendall(sip_request(server.sip_port, "tcp", user))
            result.sip_status["tcp"] = status_of(tcp.recv(65535))
        # A 9 KB HTTP request line, then a 9 KB header line.
        port = int(server.http_url.rsplit(":", 1)[1])
        for request in (
            f"GET /{'a' * LONG} HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * LONG}\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as http:
                http.sendall(request.encode())
                result.http_answers.append(http.recv(65535))
        # A real call through the media worker, and a REGISTER that writes bindings.db.
        play, record = workdir / "play.wav", workdir / "rec.wav"
        write_wav(play, tone(1.0), RATE)
        result.call = place_call(
            sip_port=server.sip_port, number="+15005550101", user=DEMO_USER,
            password=DEMO_PASSWORD, play=play, record=record, seconds=1.5, wait_bye=1,
            timeout=60,
        )  # fmt: skip
        assert run_sipp("register.xml", server.sip_port, workdir=workdir).returncode == 0
        wait_metric(server, "sipserver_registrations_active", 1)
        # The write-behind flush (every 0.5 s) writes the binding: SQLite (WAL mode) then has
        # its -wal and -shm files, which must be private too.
        wal = [data / "bindings.db-wal", data / "bindings.db-shm"]
        deadline = time.monotonic() + 30
        while not all(p.exists() for p in wal) and time.monotonic() < deadline:
            time.sleep(0.1)
        state = [data.parent, data, data / "run", data / "run" / "framelink.sock"]
        state += [data / "bindings.db", data / "sipserver.pid", *wal]
        result.modes = {str(p.relative_to(workdir)): mode(p) for p in state}
    finally:
        result.exit_code = server.stop()
    result.lines = server.log_path.read_text().splitlines()
    return result


def test_an_over_long_sip_request_line_is_answered_over_udp_and_tcp(run: Run) -> None:
    """A request like any other (OPTIONS to this server: 200), never an exception."""
    assert run.sip_status == {"udp": 200, "tcp": 200}


def test_an_over_long_http_request_line_is_400(run: Run) -> None:
    # aiohttp answers the parse error itself (RFC 9112 §3 would have 414; it has no hook).
    assert [a.split(b"\r\n", 1)[0] for a in run.http_answers] == [b"HTTP/1.0 400 Bad Request"] * 2


def test_the_call_reached_the_media_worker(run: Run) -> None:
    assert run.call["ended_by"] != "never-connected", run.call


def test_state_files_are_private(run: Run) -> None:
    expected = {name: 0o600 for name in run.modes}
    expected.update({"state": 0o700, "state/data": 0o700, "state/data/run": 0o700})
    assert {k: oct(v) for k, v in run.modes.items()} == {k: oct(v) for k, v in expected.items()}
    assert "state/data/bindings.db" in run.modes


def test_every_log_line_is_json(run: Run) -> None:
    assert run.exit_code == 0
    events: list[dict[str, Any]] = []
    for number, line in enumerate(run.lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
    names = [e["event"] for e in events]
    assert "worker_ready" in names  # the media worker's own lines, through structlog
    assert "call_answered" in names
    bad = [e for e in events if e["event"] == "http_bad_request"]
    assert [(e["status"], e["reason"]) for e in bad] == [(400, "line longer than 8190 bytes")] * 2
    assert not any("Traceback" in line for line in run.lines)
    assert not any("a" * 100 in line or "b" * 100 in line for line in run.lines)
