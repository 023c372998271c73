"""RtpStream's packet logic against a recording transport (no sockets) and MediaClock on a
stepped fake loop. Real UDP: tests/integration/test_rtp_stream.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
)

from sipserver.media.codecs import ulaw_encode
from sipserver.media.jitter import RtpJitterBuffer
from sipserver.rtp.rtcp import RtcpReporter, ntp_timestamp
from sipserver.rtp.rtp_stream import MediaClock, RtpStream
from sipserver.rtp.sdp import Negotiated, build_offer, negotiate, parse_sdp

PEER = ("192.0.2.10", 40000)


class Recorder:
    """Stands in for a datagram transport: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        raise BlockingIOError  # nothing waiting: the test feeds packets with _on_rtp

    def close(self) -> None:
        self.closed = True

    def packets(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d) for d, _ in self.sent]


def negotiated(
    codec: str = "PCMU", *, direction: str = "sendrecv", host: str = PEER[0], port: int = PEER[1]
) -> Negotiated:
    body = build_offer(
        host=host, port=port, session_id=1, session_version=1, codecs=(codec,), direction=direction
    )
    result = negotiate(parse_sdp(body))
    assert result is not None
    return result


async def stream(rate: int = 8000) -> tuple[RtpStream, Recorder]:
    s = RtpStream(
        local_port=4000, sample_rate=rate, rtp_timeout=0, jitter=None, release=lambda: None
    )
    rtp = Recorder()
    s._attach(rtp, Recorder())  # type: ignore[arg-type]
    return s, rtp


async def test_write_frame_keeps_sequence_and_timestamp_continuous_across_a_hold() -> None:
    s, rtp = await stream()
    s.apply(negotiated())
    for _ in range(3):
        s.write_frame(bytes(320))
    s.apply(negotiated(direction="sendonly"))  # the peer holds us: nothing goes out
    for _ in range(2):
        s.write_frame(bytes(320))
    s.apply(negotiated())
    s.write_frame(bytes(320))
    packets = rtp.packets()
    assert [p.marker for p in packets] == [1, 0, 0, 1]  # a new talk spurt after the hold
    seqs = [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets]
    assert seqs == [0, 1, 2, 3]
    stamps = [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets]
    assert stamps == [0, 160, 320, 800]  # RFC 3550 §5.1: the clock ran on during the hold
    assert all(addr == PEER for _, addr in rtp.sent)
    assert packets[0].payload == ulaw_encode(bytes(320))
    assert s.stats()["sent"] == 4


async def test_send_dtmf_is_rfc4733_one_timestamp_growing_duration_three_ends() -> None:
    s, rtp = await stream()
    s.apply(negotiated())
    s.send_dtmf("9", duration_ms=60)
    for _ in range(7):
        s.write_frame(bytes(320))
    packets = rtp.packets()
    events = [p for p in packets if p.payload_type == 101]
    assert len(events) == 5 and [p.payload_type for p in packets[5:]] == [0, 0]
    assert len({p.timestamp for p in events}) == 1 and events[0].marker == 1
    fields = [struct.unpack("!BBH", p.payload) for p in events]
    assert [f[0] for f in fields] == [9] * 5
    assert [f[2] for f in fields] == [160, 320, 480, 480, 480]  # 60 ms at 8 kHz
    assert [bool(f[1] & 0x80) for f in fields] == [False, False, True, True, True]
    assert packets[5].marker == 1  # audio resumes with a new talk spurt


async def test_dtmf_is_ignored_when_telephone_event_was_not_negotiated() -> None:
    s, rtp = await stream()
    offer = parse_sdp(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 8\r\n"
    )
    result = negotiate(offer)
    assert result is not None and result.dtmf is None
    s.apply(result)
    s.send_dtmf("1")
    s.write_frame(bytes(320))
    assert [p.payload_type for p in rtp.packets()] == [8]


async def test_g722_at_8khz_sends_160_byte_payloads_every_frame() -> None:
    s, rtp = await stream(8000)
    s.apply(negotiated("G722"))
    t = np.arange(1600) / 8000
    pcm = (6000 * np.sin(2 * np.pi * 500 * t)).astype("<i2").tobytes()
    for k in range(10):
        s.write_frame(pcm[k * 320 : (k + 1) * 320])
    packets = rtp.packets()
    assert [len(p.payload) for p in packets] == [160] * 10 and packets[0].payload_type == 9
    stamps = [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets]
    assert stamps == [160 * k for k in range(10)]  # RFC 3551: G722's RTP clock is 8000


async def test_packets_that_are_not_ours_are_ignored_and_counted() -> None:
    s, _ = await stream()
    s.apply(negotiated())
    s._on_rtp(b"\x80\x00", PEER)  # too short
    s._on_rtp(b"\x40" + bytes(11), PEER)  # version 1
    video = RtpPacket(payload_type=96, sequence_number=1, ssrc=5, payload=b"x").serialize()
    s._on_rtp(video, PEER)  # before latching: another payload type does not latch
    stats = s.stats()
    assert stats["invalid"] == 2 and stats["ignored"] == 1 and stats["received"] == 0
    assert s.read_frame() == bytes(320)


async def test_a_new_ssrc_starts_the_stream_over() -> None:
    s, _ = await stream()
    s.apply(negotiated())
    for ssrc, first in ((1, 100), (2, 9000)):
        for k in range(5):
            packet = RtpPacket(
                payload_type=0, sequence_number=first + k, timestamp=160 * k, ssrc=ssrc
            )
            packet.payload = ulaw_encode(np.full(160, 1000 * ssrc, "<i2").tobytes())
            s._on_rtp(packet.serialize(), PEER)
    assert s.stats()["received"] == 5  # the counters of the new stream
    assert s.stats()["resyncs"] == 1
    frames = [s.read_frame() for _ in range(5)]
    levels = {int(np.frombuffer(f, "<i2")[0]) for f in frames}
    assert all(abs(v - 2000) < 100 for v in levels)


class FakeLoop:
    """time() and call_at(), stepped by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        self.calls.append((when, callback))
        return asyncio.TimerHandle(when, callback, (), asyncio.new_event_loop())

    def fire(self) -> None:
        when, callback = self.calls.pop()
        self.now = max(self.now, when)
        callback()


def test_media_clock_runs_on_absolute_deadlines_without_drift() -> None:
    loop = FakeLoop()
    ticks: list[float] = []
    clock = MediaClock(lambda: ticks.append(loop.now), loop=loop)  # type: ignore[arg-type]
    clock.start()
    for _ in range(100):
        loop.now = loop.calls[-1][0] + 0.004  # every wake-up 4 ms late
        loop.fire()
    assert clock.ticks == 100 and clock.late_ticks == 0
    assert loop.calls[-1][0] == pytest.approx(100.0 + 101 * 0.02)  # no drift from lateness


def test_media_clock_catches_up_at_most_five_then_skips() -> None:
    loop = FakeLoop()
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1

    clock = MediaClock(tick, loop=loop)  # type: ignore[arg-type]
    clock.start()
    loop.fire()
    assert count == 1
    loop.now = loop.calls[-1][0] + 0.2  # the loop was busy for 200 ms: 10 more deadlines due
    loop.fire()
    assert count == 1 + 6  # the due one and five back to back
    assert clock.late_ticks == 6  # each of them ran over one interval after its deadline
    assert clock.skipped_ticks == 5
    assert loop.calls[-1][0] > loop.now  # next deadline in the future, still on the grid
    assert (loop.calls[-1][0] - 100.0) / 0.02 == pytest.approx(
        round((loop.calls[-1][0] - 100.0) / 0.02)
    )


def test_media_clock_survives_a_failing_tick_and_stops() -> None:
    loop = FakeLoop()

    def tick() -> None:
        raise RuntimeError("boom")

    clock = MediaClock(tick, loop=loop)  # type: ignore[arg-type]
    clock.start()
    loop.fire()
    loop.fire()
    assert clock.ticks == 2 and clock.running
    clock.stop()
    assert not clock.running


async def test_a_frame_of_the_wrong_size_is_padded_or_cut_to_one_packet() -> None:
    s, rtp = await stream()
    s.apply(negotiated())
    s.write_frame(b"\x10\x00" * 100)  # 12.5 ms
    s.write_frame(bytes(960))  # 60 ms
    assert [len(p.payload) for p in rtp.packets()] == [160, 160]


def test_rtcp_reporter_sends_sr_then_rr_with_the_loss_of_each_interval() -> None:
    jb = RtpJitterBuffer(8000)
    for seq in (1, 2, 4, 5):  # 3 never comes
        jb.push(seq, seq * 160, b"x", seq * 0.02)
    reporter = RtcpReporter(ssrc=11, cname=b"me@here")
    reporter.sender_report_received(ntp_timestamp(1000.0), now=5.0)
    first = RtcpPacket.parse(reporter.report(5.5, jitter=jb, peer_ssrc=22, sent=(1, 2, 10, 1600)))
    sr, sdes = first
    assert isinstance(sr, RtcpSrPacket) and sr.sender_info.packet_count == 10
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, b"me@here")]
    (block,) = sr.reports
    assert (block.ssrc, block.packets_lost, block.highest_sequence) == (22, 1, 5)
    assert block.fraction_lost == 256 // 5  # 1 of 5 expected (RFC 3550 A.3)
    assert block.lsr == (ntp_timestamp(1000.0) >> 16) & 0xFFFFFFFF and block.dlsr == 65536 // 2
    for seq in (6, 7):
        jb.push(seq, seq * 160, b"x", seq * 0.02)
    second = RtcpPacket.parse(
        reporter.report(6.0, jitter=jb, peer_ssrc=22, sent=(1, 2, 10, 1600), bye=True)
    )
    rr = second[0]
    assert isinstance(rr, RtcpRrPacket)  # nothing sent since: a receiver report
    assert rr.reports[0].fraction_lost == 0 and rr.reports[0].packets_lost == 1
    assert isinstance(second[-1], RtcpByePacket) and second[-1].sources == [11]
