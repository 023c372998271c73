"""RFC 4733 events: the receiver reports each event once, the sender's packet sequence."""

from __future__ import annotations

import struct

import pytest

from sipserver.rtp.rfc4733 import DtmfReceiver, DtmfSender


def event(code: int, duration: int, *, end: bool = False) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def test_an_event_is_reported_once_at_its_end_and_its_repeats_are_ignored() -> None:
    rx = DtmfReceiver()
    out = []
    for i in range(1, 4):
        out += rx.packet(event(1, 160 * i), 1000, now=0.0)
    assert out == []
    for _ in range(3):  # RFC 4733 §2.5.1.4: the end packet three times
        out += rx.packet(event(1, 480, end=True), 1000, now=0.1)
    assert out == [("1", 60)]
    out += rx.packet(event(1, 160), 2000, now=0.2)  # same digit again: a new timestamp
    out += rx.packet(event(1, 320, end=True), 2000, now=0.3)
    assert out == [("1", 60), ("1", 40)] and rx.reported == 2


def test_an_event_whose_end_packets_were_lost_is_reported_by_the_next_or_when_stale() -> None:
    rx = DtmfReceiver()
    rx.packet(event(11, 160), 1000, now=0.0)
    assert rx.packet(event(10, 160), 3000, now=0.5) == [("#", 20)]  # "*" starts: "#" is done
    assert rx.expire(now=1.0) == []
    assert rx.expire(now=1.6) == [("*", 20)]
    assert rx.packet(event(10, 320, end=True), 3000, now=1.7) == []  # already reported


def test_non_dtmf_events_and_short_payloads_are_ignored() -> None:
    rx = DtmfReceiver(16000)
    assert rx.packet(event(16, 160, end=True), 1, now=0) == []  # flash hook etc. (§3.2 > 15)
    assert rx.packet(b"\x01", 2, now=0) == []
    assert rx.packet(event(15, 1600, end=True), 3, now=0) == [("D", 100)]  # 16 kHz clock


def test_sender_sends_growing_durations_then_three_ends_then_the_next_digit() -> None:
    tx = DtmfSender(step=160)
    tx.queue("5", 60)
    tx.queue("a", 20)
    with pytest.raises(ValueError):
        tx.queue("55", 100)
    packets = []
    ts = 0
    while tx.busy:
        packet = tx.next_packet(ts)
        assert packet is not None
        packets.append(packet)
        ts += 160
    fields = [struct.unpack("!BBH", p.payload) for p in packets]
    assert [(f[0], f[1] >> 7, f[2]) for f in fields] == [
        (5, 0, 160), (5, 0, 320), (5, 1, 480), (5, 1, 480), (5, 1, 480),
        (12, 1, 160), (12, 1, 160), (12, 1, 160),
    ]  # fmt: skip
    assert [p.timestamp for p in packets] == [0] * 5 + [800] * 3
    assert [p.marker for p in packets] == [True, False, False, False, False, True, False, False]
    assert tx.next_packet(ts) is None
