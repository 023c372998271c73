"""The SIP edge's UDP I/O alone: CPU per datagram of :class:`SipListeners`, router stubbed out.

A child process runs the edge's listeners (``sipserver.edge.transport``) on an event loop
(asyncio's, or uvloop's with ``--uvloop``) in front of a router that answers every datagram
with one canned datagram at once, so that what is measured is the receive, the dispatch and
the send of the edge, not SIP. This process keeps ``--window`` datagrams in flight for
``--count`` round trips and then reports the child's CPU time (utime+stime) per datagram.
Run it with ``PYTHONPATH`` pointing at each tree to compare two versions of the transport.

Usage::

    PYTHONPATH=$PWD python bench/udp_edge_io.py                 # asyncio loop
    PYTHONPATH=$PWD python bench/udp_edge_io.py --uvloop        # uvloop's loop
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from sipserver.edge.router import Outgoing, Peer
from sipserver.edge.transport import SipListeners
from sipserver.observability import Metrics, configure_logging

ANSWER = b"SIP/2.0 200 OK\r\n" + b"X: " + b"y" * 400 + b"\r\nContent-Length: 0\r\n\r\n"
REQUEST = b"OPTIONS sip:edge SIP/2.0\r\n" + b"X: " + b"y" * 400 + b"\r\nContent-Length: 0\r\n\r\n"


class _EchoRouter:
    """Answers every message with :data:`ANSWER` to its source (what the listeners need)."""

    def handle_message(self, data: bytes, peer: Peer, *, now: float, wall: float) -> list[Outgoing]:
        return [Outgoing(ANSWER, peer.host, peer.port, "udp")]

    def proxy_timer(self) -> float | None:
        return None

    def handle_timer(self, *, now: float, wall: float) -> None:
        return None


def _serve(conn: Connection, use_uvloop: bool) -> None:
    configure_logging("console", "warning")

    async def main() -> None:
        listeners = SipListeners(_EchoRouter(), Metrics())  # type: ignore[arg-type]
        await listeners.start(["127.0.0.1:0"], [])
        conn.send(listeners.bound[0][2])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # until the client is done
        await listeners.stop()

    if use_uvloop:
        import uvloop

        runner: Any = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(main())


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="round trips")
    parser.add_argument("--window", type=int, default=8, help="datagrams in flight")
    parser.add_argument("--uvloop", action="store_true", help="run the edge on uvloop's loop")
    args = parser.parse_args()
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=_serve, args=(theirs, args.uvloop))
    child.start()
    port = ours.recv()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    sock.connect(("127.0.0.1", port))
    for _ in range(100):  # warm-up
        sock.send(REQUEST)
        sock.recv(2048)
    assert child.pid is not None
    cpu0, t0 = _cpu(child.pid), time.monotonic()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.window):
        sock.send(REQUEST)
    lost = 0
    for _ in range(args.count - args.window):
        try:
            sock.recv(2048)
        except TimeoutError:
            lost += 1
        sock.send(REQUEST)
    for _ in range(args.window):
        try:
            sock.recv(2048)
        except TimeoutError:
            lost += 1
    cpu1, t1 = _cpu(child.pid), time.monotonic()
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    ours.send("done")
    child.join(10)
    per = 1e6 * (cpu1 - cpu0) / args.count
    client = 1e6 * (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) / args.count
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(
        f"{loop_name}: edge CPU {per:.1f} us per datagram in+out ({args.count} round trips, "
        f"window {args.window}, {lost} lost, {args.count / (t1 - t0):.0f}/s; "
        f"client {client:.1f} us)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
