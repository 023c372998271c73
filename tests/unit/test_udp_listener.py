"""The edge's UDP listener over loopback: a burst is drained and answered in order, keepalives
are ignored, answers for another listener go out of it, a failed send is counted, and a
closed listener leaves the loop. The router is the real one (see test_router.py) or, where
only the I/O is under test, a stub answering every datagram."""

from __future__ import annotations

import asyncio
import socket

from sipserver.edge.router import Outgoing, Peer
from sipserver.edge.transport import SipListeners
from sipserver.observability import Metrics
from sipserver.sip.message import SipResponse, parse_message
from tests.unit.test_router import make_router, request


class _Echo:
    """A router stub: answers every datagram with ``b"re:" + data`` to ``to`` or its source."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.to: tuple[str, int] | None = None
        self.timers = 0

    def handle_message(self, data: bytes, peer: Peer, *, now: float, wall: float) -> list[Outgoing]:
        self.peers.append(peer)
        host, port = self.to if self.to is not None else (peer.host, peer.port)
        return [Outgoing(b"re:" + data, host, port, "udp")]

    def proxy_timer(self) -> float | None:
        self.timers += 1
        return None

    def handle_timer(self, *, now: float, wall: float) -> None:
        return None


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)


async def test_a_burst_is_answered_in_order_and_keepalives_are_ignored() -> None:
    echo = _Echo()
    listeners = SipListeners(echo, Metrics())  # type: ignore[arg-type]
    await listeners.start(["127.0.0.1:0"], [])
    client = _client()
    try:
        server = ("127.0.0.1", listeners.bound[0][2])
        # More than one wake-up reads: the rest is read on the next ones.
        sent = [f"m{i}".encode() for i in range(80)]
        for i, data in enumerate(sent):
            client.sendto(data, server)
            if i % 10 == 0:
                client.sendto(b"\r\n\r\n", server)  # a CRLF keepalive: no answer
        answers = [await _recv(client) for _ in sent]
        assert answers == [b"re:" + d for d in sent]
        assert len(echo.peers) == len(sent)
        port = client.getsockname()[1]
        assert {(p.transport, p.host, p.port, p.listener) for p in echo.peers} == {
            ("udp", "127.0.0.1", port, 0)
        }
        assert echo.timers >= 1  # the proxy timer is looked at after each wake-up
    finally:
        client.close()
        await listeners.stop()


async def test_register_challenge_over_udp() -> None:
    router, metrics = make_router()
    listeners = SipListeners(router, metrics)
    await listeners.start(["127.0.0.1:0"], [])
    client = _client()
    try:
        client.sendto(request(), ("127.0.0.1", listeners.bound[0][2]))
        resp = parse_message(await _recv(client))
        assert isinstance(resp, SipResponse) and resp.status == 401
        assert resp.headers.get("WWW-Authenticate") is not None
    finally:
        client.close()
        await listeners.stop()


async def test_an_answer_to_another_address_and_a_failed_send() -> None:
    echo = _Echo()
    metrics = Metrics()
    listeners = SipListeners(echo, metrics)  # type: ignore[arg-type]
    await listeners.start(["127.0.0.1:0", "127.0.0.1:0"], [])
    client, other = _client(), _client()
    try:
        second = ("127.0.0.1", listeners.bound[1][2])
        echo.to = other.getsockname()
        client.sendto(b"hello", second)
        assert await _recv(other) == b"re:hello"
        assert echo.peers[-1].listener == 1
        # A held answer sent later goes out of the listener its request came in on.
        listeners.deliver(Outgoing(b"later", *client.getsockname(), "udp", listener=1))
        data, source = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recvfrom(client, 100), 5
        )
        assert (data, source) == (b"later", second)
        # An address no socket can send to is counted, not raised.
        listeners._udp[0].sendto(b"x", ("256.0.0.1", 5060))
        assert metrics.registry.get_sample_value("sipserver_sip_send_errors_total") == 1
    finally:
        client.close()
        other.close()
        await listeners.stop()


async def test_a_stopped_listener_leaves_the_loop() -> None:
    echo = _Echo()
    listeners = SipListeners(echo, Metrics())  # type: ignore[arg-type]
    await listeners.start(["127.0.0.1:0"], [])
    sock = listeners._udp[0].sock
    fd = sock.fileno()
    await listeners.stop()
    assert sock.fileno() == -1
    assert not asyncio.get_running_loop().remove_reader(fd)
