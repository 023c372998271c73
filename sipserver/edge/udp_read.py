"""One wake-up of a SIP UDP listener: read the waiting datagrams, hand each to the router, then
send their answers.

:class:`sipserver.edge.transport.SipListeners` calls :func:`drain` when the event loop reports
a listener's socket readable. The loop lives here, apart from the asyncio protocols of
:mod:`sipserver.edge.transport`, so that mypyc compiles it (``native-modules`` in
pyproject.toml): interpreted, its own work per datagram (the read, the peer, the call into the
router, the sends) cost about as much CPU as the two system calls it makes (bench/README.md,
"Issue 17: stateless challenges, the UDP loop and the URI scan compiled").

Sans policy: what to do with an error is the caller's (it counts and logs them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sipserver.edge.router import Outgoing, Peer

__all__ = ["MessageHandler", "drain"]


class MessageHandler(Protocol):
    """:meth:`sipserver.edge.router.SipRouter.handle_message`, or a stand-in with its shape."""

    def __call__(self, data: bytes, peer: Peer, *, now: float, wall: float) -> list[Outgoing]:
        """Process one message; return what to send."""
        ...


def drain(
    recvfrom: Callable[[int], tuple[bytes, Any]],
    sendto: Callable[[bytes, tuple[str, int]], object],
    handle: MessageHandler,
    deliver: Callable[[Outgoing], None],
    receive_failed: Callable[[OSError], None],
    send_failed: Callable[[OSError, str, int], None],
    *,
    listener: int,
    max_size: int,
    reads: int,
    now: float,
    wall: float,
) -> int:
    """Read and answer up to ``reads`` datagrams waiting on one UDP socket.

    Args:
        recvfrom: the non-blocking socket's ``recvfrom``.
        sendto: the same socket's ``sendto``: answers for UDP (or for the way the message came)
            go out of the socket it came in on, after the wake-up's last read.
        handle: the router's ``handle_message``.
        deliver: sends an answer for another transport (a stream connection).
        receive_failed: told of a receive error other than "nothing waiting" (an ICMP port
            unreachable queued on the socket: the peer went away); reading goes on.
        send_failed: told of a refused send (a full send buffer): the datagram is dropped, as
            the network would drop it; SIP over UDP retransmits (RFC 3261 §17).
        listener: the listener's index (:attr:`Peer.listener` of what it reads).
        max_size: the largest datagram read whole.
        reads: datagrams read at most, so that one busy socket leaves the loop to other work.
        now: monotonic seconds, read once for the whole wake-up.
        wall: wall-clock epoch seconds, read once for the whole wake-up.

    Returns:
        The number of messages handed to the router (CRLF keepalives are not).
    """
    handled = 0
    # Answers for UDP are sent after the last read of the wake-up, not one by one between the
    # reads. A datagram to a local peer wakes it inside sendto, and the scheduler often switches
    # to it there and then (SIPp in bench/register.py: ~0.9 times a registration); sent between
    # the reads, every such switch also split the wake-up's reads and routing. Sent after them:
    # 8% less server CPU a registration at 4,000/s (bench/README.md, "Issue 17: answers after
    # the reads"), though the switches are hardly fewer. An answer waits for the rest of the
    # wake-up's reads at most (``reads`` messages), in the order it was made.
    pending: list[Outgoing] = []
    try:
        for _ in range(reads):
            try:
                data, addr = recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                receive_failed(exc)
                continue
            if len(data) <= 4 and not data.strip():
                continue  # RFC 5626 §4.4.1 / common CRLF keepalives over UDP
            handled += 1
            out = handle(
                data, Peer("udp", str(addr[0]), int(addr[1]), listener), now=now, wall=wall
            )
            for item in out:
                transport = item.transport
                if transport == "udp" or not transport:
                    pending.append(item)
                else:
                    deliver(item)
    finally:
        # Also when the router raised: what it answered before that still goes out.
        for item in pending:
            try:
                sendto(item.data, (item.host, item.port))
            except OSError as exc:
                send_failed(exc, item.host, item.port)
    return handled
