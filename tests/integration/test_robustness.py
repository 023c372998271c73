"""Malformed and hostile input against a real server: it answers 400 where it can, drops the
rest, counts both, and keeps serving."""

from __future__ import annotations

import random
import socket

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

OPTIONS = (
    "OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{n}\r\n"
    "From: <sip:probe@127.0.0.1>;tag=a{n}\r\n"
    "To: <sip:127.0.0.1>\r\n"
    "Call-ID: probe-{n}\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def udp_exchange(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.bind(("127.0.0.1", 0))
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def send_all(port: int, payloads: list[bytes]) -> None:
    """Fire datagrams without waiting for answers (most get none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for payload in payloads:
            s.sendto(payload, ("127.0.0.1", port))


def options_ok(port: int, n: int) -> bool:
    reply = udp_exchange(port, OPTIONS.format(port=0, n=n).encode())
    return reply is not None and reply.startswith(b"SIP/2.0 200 ")


def test_garbage_datagrams_are_dropped_and_counted(server: ServerProcess) -> None:
    rng = random.Random(1234)
    payloads = [b"\x00\xff" * 50, b"GET / HTTP/1.1\r\n\r\n", b"INVITE\r\n\r\n", b"SIP/2.0\r\n"]
    payloads += [rng.randbytes(rng.randint(1, 1400)) for _ in range(200)]
    send_all(server.sip_port, payloads)
    assert options_ok(server.sip_port, 1)
    assert server.metric("sipserver_sip_parse_errors_total", transport="udp", answered="no") >= 200


def test_mutated_requests_never_take_the_server_down(server: ServerProcess) -> None:
    rng = random.Random(99)
    base = OPTIONS.format(port=5060, n=7).encode()
    for round_ in range(3):
        batch = []
        for _ in range(100):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] = rng.randrange(256)
            batch.append(bytes(data))
        send_all(server.sip_port, batch)
        assert options_ok(server.sip_port, 1000 + round_)
    assert options_ok(server.sip_port, 2)
    assert server.proc is not None and server.proc.poll() is None


def test_addressable_bad_request_gets_400_with_reason(server: ServerProcess) -> None:
    bad = OPTIONS.format(port=0, n=3).replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS")
    reply = udp_exchange(server.sip_port, bad.encode())
    assert reply is not None and reply.startswith(b"SIP/2.0 400 ")
    assert b"Call-ID: probe-3" in reply


def test_tcp_garbage_closes_only_that_connection(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.sip_port), timeout=3) as bad:
        bad.sendall(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: nope\r\n\r\n")
        bad.settimeout(3)
        data = b""
        try:
            while chunk := bad.recv(4096):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pytest.fail("server did not close the connection after a framing error")
    with socket.create_connection(("127.0.0.1", server.sip_port), timeout=3) as good:
        msg = OPTIONS.format(port=0, n=4).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        good.sendall(msg.encode())
        assert good.recv(65535).startswith(b"SIP/2.0 200 ")
        # RFC 5626 keepalive ping gets a pong on the same connection.
        good.sendall(b"\r\n\r\n")
        assert good.recv(16) == b"\r\n"


def test_unsupported_methods(server: ServerProcess) -> None:
    for method, status in (("SUBSCRIBE", b"405"), ("FROBNICATE", b"501")):
        msg = OPTIONS.format(port=0, n=5).replace("OPTIONS", method)
        reply = udp_exchange(server.sip_port, msg.encode())
        assert reply is not None and reply.startswith(b"SIP/2.0 " + status), reply
        assert b"\r\nAllow: " in reply


def test_retransmission_is_answered_from_the_transaction(server: ServerProcess) -> None:
    msg = OPTIONS.format(port=0, n=6).encode()
    first = udp_exchange(server.sip_port, msg)
    second = udp_exchange(server.sip_port, msg)
    assert first == second
    assert server.metric("sipserver_sip_retransmissions_total") == 1


def test_a_register_without_credentials_is_challenged_statelessly(server: ServerProcess) -> None:
    # RFC 3261 §8.2.7: the same unauthenticated REGISTER twice (a retransmission: same branch)
    # gets two challenges, each with its own nonce and the same To tag; nothing is absorbed.
    register = (
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-stateless-1\r\n"
        b"From: <sip:alice@127.0.0.1>;tag=s1\r\n"
        b"To: <sip:alice@127.0.0.1>\r\n"
        b"Call-ID: stateless-1\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:alice@127.0.0.1:5099>\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    before = server.metric("sipserver_sip_retransmissions_total")
    answers = [udp_exchange(server.sip_port, register) for _ in range(2)]
    heads = []
    for answer in answers:
        assert answer is not None and answer.startswith(b"SIP/2.0 401 "), answer
        lines = answer.decode().split("\r\n")
        heads.append({line.partition(":")[0]: line.partition(":")[2] for line in lines[1:]})
    assert heads[0]["To"] == heads[1]["To"] and ";tag=" in heads[0]["To"]
    assert heads[0]["WWW-Authenticate"] != heads[1]["WWW-Authenticate"]
    assert server.metric("sipserver_sip_retransmissions_total") == before
