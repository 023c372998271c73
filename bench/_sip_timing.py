"""Request -> response times of a SIP server on the loopback, from the kernel's packet timestamps.

SIPp's response times are multiples of the kernel tick here (4 ms: its clock is a coarse one, and
``-timer_resol 1`` does not change that), so at 20 calls/s a server's p99 moves between 4 and 8 ms
on one call in a hundred. This tap reads the loopback interface with an ``AF_PACKET`` socket
(root or CAP_NET_RAW) and takes the kernel's receive timestamp of each datagram
(``SO_TIMESTAMPNS``), so the same edge-to-edge time is measured in microseconds, for any server,
without touching it.

Hand-written rather than with scapy (a wheel is on hand): scapy dissects every packet into Python
objects, CPU taken on the same 2 cores as the servers measured, for three fields and a
timestamp; here it is one IPv4 + UDP header and two SIP header look-ups by slicing.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

ETH_P_IP = 0x0800
SO_TIMESTAMPNS = 35  # Linux; Python's socket module does not export it
PACKET_HOST = 0  # the receive side of a loopback datagram (each one is also seen as OUTGOING)
TIMESPEC = struct.Struct("@qq")


def _header(payload: bytes, name: bytes) -> bytes | None:
    """The value of one SIP header (full name, as SIPp and the servers send it), or None."""
    start = payload.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = payload.find(b"\r\n", start)
    return payload[start:end].strip()


@dataclass
class SipTimer:
    """Times from a request (method and CSeq number) sent to ``port`` on 127.0.0.1 to the first
    final response with ``status`` from that port, per Call-ID, in milliseconds.

    Use as a context manager around the load; :meth:`times` after it.
    """

    port: int
    method: bytes = b"INVITE"
    cseq: bytes = b"2"
    status: bytes = b"200"
    _sent: dict[bytes, int] = field(default_factory=dict)
    _answered: dict[bytes, int] = field(default_factory=dict)
    _relayed: dict[bytes, int] = field(default_factory=dict)
    _next_answered: dict[bytes, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    @staticmethod
    def available() -> str | None:
        """None when the tap can open, else why not."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP)).close()
        except (PermissionError, OSError, AttributeError) as exc:
            return f"no packet socket on this machine ({exc}): SIPp's 4 ms times only"
        return None

    def __enter__(self) -> SipTimer:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(("lo", ETH_P_IP))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="sip-timer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        cmsg_space = socket.CMSG_SPACE(TIMESPEC.size)
        request = self.method + b" "
        cseq = self.cseq + b" " + self.method
        answer = b"SIP/2.0 " + self.status + b" "
        port = self.port
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(65536, cmsg_space)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != PACKET_HOST or len(data) < 28 or data[9] != socket.IPPROTO_UDP:
                continue
            ihl = (data[0] & 0x0F) * 4
            src, dst = struct.unpack_from("!HH", data, ihl)
            if port not in (src, dst):
                continue
            payload = data[ihl + 8 :]
            if payload.startswith(request):
                # to the server: from the caller; from it: relayed to the next hop
                seen = self._sent if dst == port else self._relayed
            elif payload.startswith(answer):
                seen = self._answered if src == port else self._next_answered
            else:
                continue
            if _header(payload, b"CSeq") != cseq:
                continue
            call_id = _header(payload, b"Call-ID")
            if call_id is None or call_id in seen:  # a retransmission: the first one counts
                continue
            stamp = next(
                (
                    TIMESPEC.unpack_from(cdata)
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
                ),
                None,
            )
            if stamp is not None:
                seen[call_id] = stamp[0] * 1_000_000_000 + stamp[1]

    def times(self) -> list[float]:
        """Milliseconds from each request to its response (calls with both seen)."""
        return [
            (self._answered[cid] - sent) / 1e6
            for cid, sent in self._sent.items()
            if cid in self._answered
        ]

    def own_times(self) -> list[float]:
        """The server's own share of each of :meth:`times`, in milliseconds: from the request
        to its relay to the next hop, plus from the next hop's response to the response sent
        on (a proxy or B2BUA that keeps the Call-ID, as both edges here do; calls where a part
        was not seen are left out). The next hop's time is the rest."""
        seen = self._relayed.keys() & self._next_answered.keys() & self._answered.keys()
        return [
            (self._relayed[cid] - sent + self._answered[cid] - self._next_answered[cid]) / 1e6
            for cid, sent in self._sent.items()
            if cid in seen
        ]
