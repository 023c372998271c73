"""TLS handshake floods: clients that connect to the TLS listener and never finish (or never
start) a handshake must not hold the edge, and every one is closed at the deadline and counted."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tls import (
    client_context,
    options,
    read_response,
    tls_port,
    with_tls,
)
from tests.tls_certs import TestCa

pytestmark = pytest.mark.integration

STALLED = 200
GARBAGE = 100


def test_stalled_and_garbage_handshakes(server_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    ca = TestCa(tmp_path / "certs")
    tls = with_tls(ca.issue("server"), handshake_timeout=2)

    def mutate(config: dict[str, Any]) -> None:
        tls(config)
        # A handshake holds a place under the connection caps: room for all of them from one
        # address (the per-source cap itself is tests/stress/test_connections.py's).
        config["server"]["sip"]["max_connections_per_source"] = STALLED + GARBAGE + 10

    server = server_factory(mutate)
    port = tls_port(server)
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(STALLED)]
    garbage = []
    for _ in range(GARBAGE):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(options(port))  # cleartext SIP on the TLS port
        garbage.append(sock)
    try:
        # While they hang on, a real client is served at once, over TLS and over UDP.
        started = time.monotonic()
        with (
            socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)
            ) as raw,
            client_context(ca).wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(options(port))
            assert read_response(sock).startswith(b"SIP/2.0 200 OK\r\n")
        assert time.monotonic() - started < 2.0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.2", 0))
            udp.settimeout(5)
            udp.sendto(
                options(server.sip_port).replace(b"TLS", b"UDP"), ("127.0.0.1", server.sip_port)
            )
            assert udp.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
        # Every stalled connection is closed at the deadline (about 2 s), none left behind.
        for sock in stalled:
            assert sock.recv(1) == b""
        for sock in garbage:
            assert closed(sock)
    finally:
        for sock in stalled + garbage:
            sock.close()
    assert time.monotonic() - started < 15
    timeouts = server.metric(
        "sipserver_refusals_total", ingress="sip_tls", reason="handshake_timeout"
    )
    failed = server.metric("sipserver_refusals_total", ingress="sip_tls", reason="handshake_failed")
    assert (timeouts, failed) == (STALLED, GARBAGE)
    assert server.metric("sipserver_sip_tcp_connections") == 0
    # The refusals were logged once per interval, not once per connection.
    lines = [e for e in server.log_events() if e.get("event") == "refused"]
    assert 1 <= len(lines) <= 4, lines


def closed(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (after a TLS alert at most) within its timeout."""
    for _ in range(10):
        try:
            if sock.recv(4096) == b"":
                return True
        except ConnectionResetError:
            return True
    return False
