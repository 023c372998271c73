"""The UDP listener's read loop (sipserver.edge.udp_read.drain) against scripted socket calls:
how many it reads, what it skips, where errors and answers go. test_udp_listener.py runs it
on real loopback sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipserver.edge.router import Outgoing, Peer
from sipserver.edge.udp_read import drain

_SOURCE = ("192.0.2.7", 5062)


class _Socket:
    """Scripted recvfrom results (a datagram, or an exception to raise) and recorded sends."""

    def __init__(self, script: list[bytes | OSError], refuse: frozenset[str] = frozenset()) -> None:
        self._script: Iterator[bytes | OSError] = iter(script)
        self.refuse = refuse
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.reads = 0
        self.calls: list[str] = []  # "read" and "send", in the order they were made

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        assert size == 1500
        self.reads += 1
        self.calls.append("read")
        item = next(self._script, BlockingIOError())
        if isinstance(item, OSError):
            raise item
        return item, _SOURCE

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.calls.append("send")
        if addr[0] in self.refuse:
            raise BlockingIOError("send buffer full")
        self.sent.append((data, addr))
        return len(data)


class _Router:
    def __init__(self, answers: list[Outgoing] | None = None, fail_on: bytes = b"") -> None:
        self.seen: list[tuple[bytes, Peer, float, float]] = []
        self.answers = answers
        self.fail_on = fail_on

    def handle_message(self, data: bytes, peer: Peer, *, now: float, wall: float) -> list[Outgoing]:
        self.seen.append((data, peer, now, wall))
        if data == self.fail_on:
            raise RuntimeError("router bug")
        if self.answers is not None:
            return self.answers
        return [Outgoing(b"re:" + data, peer.host, peer.port)]


def _drain(sock: _Socket, router: _Router, reads: int = 32) -> tuple[int, list[object]]:
    events: list[object] = []
    handled = drain(
        sock.recvfrom,
        sock.sendto,
        router.handle_message,
        events.append,
        lambda exc: events.append(("receive_failed", type(exc).__name__)),
        lambda exc, host, port: events.append(("send_failed", host, port)),
        listener=3,
        max_size=1500,
        reads=reads,
        now=12.5,
        wall=1_700_000_000.0,
    )
    return handled, events


def test_reads_until_nothing_waits_and_answers_each_in_order() -> None:
    sock = _Socket([b"one", b"two", b"three"])
    router = _Router()
    handled, events = _drain(sock, router)
    assert handled == 3
    assert sock.reads == 4  # the fourth read found nothing waiting
    assert sock.sent == [(b"re:one", _SOURCE), (b"re:two", _SOURCE), (b"re:three", _SOURCE)]
    assert events == []
    data, peer, now, wall = router.seen[0]
    assert data == b"one"
    assert (peer.transport, peer.host, peer.port, peer.listener) == ("udp", *_SOURCE, 3)
    assert (now, wall) == (12.5, 1_700_000_000.0)


def test_answers_go_out_after_the_last_read_of_the_wake_up() -> None:
    # Sent between the reads, each answer to a local peer let the scheduler switch to it.
    sock = _Socket([b"one", b"two", b"three"])
    _drain(sock, _Router())
    assert sock.calls == ["read"] * 4 + ["send"] * 3
    sock = _Socket([b"m%d" % i for i in range(5)])
    _drain(sock, _Router(), reads=2)  # the read limit ends the wake-up: its answers go then
    assert sock.calls == ["read", "read", "send", "send"]


def test_answers_made_before_a_router_error_still_go_out() -> None:
    sock = _Socket([b"one", b"two", b"three"])
    router = _Router(fail_on=b"two")
    with pytest.raises(RuntimeError, match="router bug"):
        _drain(sock, router)
    assert sock.sent == [(b"re:one", _SOURCE)]
    assert sock.reads == 2  # the rest waits for the next wake-up


def test_reads_at_most_the_limit_in_one_wake_up() -> None:
    sock = _Socket([b"m%d" % i for i in range(10)])
    handled, _ = _drain(sock, _Router(), reads=4)
    assert handled == 4 and sock.reads == 4
    handled, _ = _drain(sock, _Router(), reads=32)
    assert handled == 6  # the rest on the next wake-up


def test_keepalives_are_read_but_not_handled() -> None:
    sock = _Socket([b"\r\n\r\n", b"\r\n", b"", b"REAL", b"  \r\n"])
    router = _Router()
    handled, _ = _drain(sock, router)
    assert handled == 1
    assert [seen[0] for seen in router.seen] == [b"REAL"]


@pytest.mark.parametrize("error", [ConnectionRefusedError(), OSError(113, "No route to host")])
def test_a_receive_error_is_reported_and_reading_goes_on(error: OSError) -> None:
    sock = _Socket([b"one", error, b"two"])
    handled, events = _drain(sock, _Router())
    assert handled == 2
    assert events == [("receive_failed", type(error).__name__)]
    assert [data for data, _ in sock.sent] == [b"re:one", b"re:two"]


def test_interrupted_read_ends_the_wake_up_quietly() -> None:
    sock = _Socket([b"one", InterruptedError(), b"two"])
    handled, events = _drain(sock, _Router())
    assert handled == 1 and events == []


def test_a_refused_send_is_reported_and_the_other_answers_still_go() -> None:
    answers = [
        Outgoing(b"a", "198.51.100.1", 5060, "udp"),
        Outgoing(b"b", "198.51.100.2", 5070),
        Outgoing(b"c", "198.51.100.3", 5080, "udp"),
    ]
    sock = _Socket([b"x"], refuse=frozenset({"198.51.100.2"}))
    handled, events = _drain(sock, _Router(answers))
    assert handled == 1
    assert events == [("send_failed", "198.51.100.2", 5070)]
    assert sock.sent == [(b"a", ("198.51.100.1", 5060)), (b"c", ("198.51.100.3", 5080))]


def test_answers_for_a_stream_transport_are_delivered_not_sent() -> None:
    tcp = Outgoing(b"over tcp", "198.51.100.9", 5060, "tcp", listener=0)
    sock = _Socket([b"x"])
    handled, events = _drain(sock, _Router([tcp, Outgoing(b"udp", "198.51.100.9", 5060)]))
    assert handled == 1
    assert events == [tcp]
    assert sock.sent == [(b"udp", ("198.51.100.9", 5060))]
