"""A test RTP peer: real packets (aiortc's ``RtpPacket``) from its own UDP socket, with loss,
jitter and reordering injected, and RFC 4733 events; it records what comes back.

    sender = await RtpPeer.open()
    sender.play(payloads, dest, loss=0.05, jitter_ms=40, reorder=0.05, seed=1)
    await sender.finished()
"""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

from aiortc.rtp import RtcpPacket, RtpPacket


class _Protocol(asyncio.DatagramProtocol):
    peer: RtpPeer | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.peer is not None:
            self.peer.on_datagram(data, addr)


class RtpPeer:
    """One UDP socket that sends RTP and keeps every packet it receives (parsed)."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self.address: tuple[str, int] = transport.get_extra_info("sockname")[:2]
        self.received: list[RtpPacket] = []
        self.rtcp: list[Any] = []
        self.sent = 0
        self.dropped = 0
        self.reordered = 0
        self._pending: set[asyncio.TimerHandle] = set()
        self._done = asyncio.get_running_loop().create_future()
        self.ssrc = random.getrandbits(32)

    @classmethod
    async def open(cls, host: str = "127.0.0.1", port: int = 0) -> RtpPeer:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Protocol, local_addr=(host, port)
        )
        peer = cls(transport)
        protocol.peer = peer
        return peer

    @classmethod
    async def open_pair(cls, host: str = "127.0.0.1") -> tuple[RtpPeer, RtpPeer]:
        """An RTP peer on an even port and an RTCP peer on the next one."""
        for _ in range(100):
            port = random.randrange(20000, 60000, 2)
            try:
                rtp = await cls.open(host, port)
            except OSError:
                continue
            try:
                return rtp, await cls.open(host, port + 1)
            except OSError:
                rtp.close()
        raise RuntimeError("no free even/odd port pair")

    def on_datagram(self, data: bytes, addr: Any) -> None:
        if len(data) >= 2 and 200 <= data[1] <= 204:  # RTCP (RFC 5761 §4 ranges)
            self.rtcp.extend(RtcpPacket.parse(data))
        else:
            self.received.append(RtpPacket.parse(data))

    def packet(
        self, seq: int, timestamp: int, payload: bytes, *, pt: int = 0, marker: int = 0
    ) -> bytes:
        """One serialised RTP packet of this peer's SSRC."""
        return RtpPacket(
            payload_type=pt,
            marker=marker,
            sequence_number=seq & 0xFFFF,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=self.ssrc,
            payload=payload,
        ).serialize()

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        self.transport.sendto(data, dest)
        self.sent += 1

    def play(
        self,
        payloads: list[bytes],
        dest: tuple[str, int],
        *,
        pt: int = 0,
        first_seq: int = 1000,
        first_ts: int = 50000,
        ts_step: int = 160,
        interval: float = 0.02,
        loss: float = 0.0,
        jitter_ms: float = 0.0,
        reorder: float = 0.0,
        seed: int = 0,
    ) -> list[int]:
        """Schedule one packet per payload every ``interval`` s, each delayed by a uniform
        0..``jitter_ms``, dropped with probability ``loss``, and swapped with the next one
        with probability ``reorder``. Returns the indices of the payloads dropped."""
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        start = loop.time() + 0.02
        times = [
            start + k * interval + rng.uniform(0, jitter_ms / 1000) for k in range(len(payloads))
        ]
        k = 0
        while k < len(payloads) - 1:
            if rng.random() < reorder:  # the next one overtakes this one
                times[k], times[k + 1] = times[k + 1] + 0.001, times[k]
                self.reordered += 1
                k += 1
            k += 1
        dropped: list[int] = []
        last = start
        for k, payload in enumerate(payloads):
            if rng.random() < loss:
                dropped.append(k)
                self.dropped += 1
                continue
            data = self.packet(first_seq + k, first_ts + k * ts_step, payload, pt=pt, marker=k == 0)
            handle = loop.call_at(times[k], self._send_scheduled, data, dest)
            self._pending.add(handle)
            last = max(last, times[k])
        loop.call_at(last + 0.001, self._finish)
        return dropped

    def _send_scheduled(self, data: bytes, dest: tuple[str, int]) -> None:
        self.send(data, dest)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def finished(self) -> None:
        await self._done

    def event_packets(
        self,
        event: int,
        *,
        seq: int,
        timestamp: int,
        steps: int = 5,
        pt: int = 101,
        step: int = 160,
    ) -> list[bytes]:
        """The RFC 4733 packets of one event: ``steps`` with a growing duration (the first
        with the marker), then the end packet three times, all with the event's timestamp."""
        packets = []
        for i in range(steps):
            payload = struct.pack("!BBH", event, 10, (i + 1) * step)
            packets.append(self.packet(seq + i, timestamp, payload, pt=pt, marker=int(i == 0)))
        end = struct.pack("!BBH", event, 0x80 | 10, steps * step)
        packets += [self.packet(seq + steps + i, timestamp, end, pt=pt) for i in range(3)]
        return packets

    def close(self) -> None:
        self.transport.close()
