"""The websocket jitter buffer: reordering, gaps, late chunks, priming, catch-up, bounds."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sipserver.media.jitter import Gap, JitterBuffer, JitterSettings, RtpJitterBuffer

RATE = 8000
FB = RATE // 50 * 2


def frame(value: int) -> bytes:
    return np.full(FB // 2, value, dtype="<i2").tobytes()


def value(pcm: bytes) -> int:
    return int(np.frombuffer(pcm, "<i2")[0])


def drain(jb: JitterBuffer, ticks: int) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(ticks):
        out += jb.pop()
    return out


def test_in_order_stream_is_released_after_priming_one_frame_per_tick() -> None:
    jb = JitterBuffer(RATE, target_ms=60)
    jb.push(frame(1), 1)
    jb.push(frame(2), 2)
    assert jb.pop() == []  # 40 ms < target
    jb.push(frame(3), 3)
    assert [value(f) for f in jb.pop()] == [1]
    assert [value(f) for f in jb.pop()] == [2]


def test_out_of_order_chunks_come_out_in_sequence() -> None:
    jb = JitterBuffer(RATE, target_ms=20)
    for seq in (1, 3, 2, 5, 4):
        jb.push(frame(seq), seq)
    assert [value(f) for f in drain(jb, 10)] == [1, 2, 3, 4, 5]
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_a_gap_is_concealed_after_the_reorder_wait_and_a_late_chunk_is_dropped() -> None:
    jb = JitterBuffer(RATE, target_ms=20, reorder_ms=60)
    jb.push(frame(1000), 1)
    jb.push(frame(3000), 3)  # 2 is missing
    out = drain(jb, 5)
    assert [value(f) for f in out] == [1000, 500, 3000]  # faded repeat of the last frame
    assert jb.stats.lost == 1 and jb.stats.concealed_frames == 1
    jb.push(frame(2000), 2)
    assert jb.stats.late == 1
    assert drain(jb, 3) == []


def test_a_long_gap_fades_to_silence() -> None:
    jb = JitterBuffer(RATE, target_ms=20, reorder_ms=20)
    jb.push(frame(1000), 1)
    assert [value(f) for f in jb.pop()] == [1000]
    jb.push(frame(7000), 7)
    out = drain(jb, 10)
    assert [value(f) for f in out] == [500, 250, 0, 0, 0, 7000]
    assert jb.stats.lost == 5


def test_duplicates_are_counted_and_dropped() -> None:
    jb = JitterBuffer(RATE, target_ms=20)
    jb.push(frame(1), 1)
    jb.push(frame(3), 3)
    jb.push(frame(3), 3)
    jb.push(frame(1), 1)
    assert jb.stats.duplicates == 1 and jb.stats.late == 1


def test_chunks_of_any_size_are_cut_into_frames() -> None:
    jb = JitterBuffer(RATE, target_ms=20)
    pcm = np.arange(FB * 3 // 2, dtype="<i2").tobytes()  # 60 ms as 3 x 20 ms
    jb.push(pcm[: FB * 3 // 2], 1)  # 30 ms
    jb.push(pcm[FB * 3 // 2 :], 2)  # 30 ms
    out = drain(jb, 5)
    assert b"".join(out) == pcm


def test_burst_is_drained_faster_and_underrun_reprimes() -> None:
    jb = JitterBuffer(RATE, target_ms=40, catchup_ms=40)
    for seq in range(1, 21):
        jb.push(frame(seq), seq)
    first = jb.pop()
    assert len(first) == 2  # 400 ms buffered: catch up
    out = first + drain(jb, 30)
    assert [value(f) for f in out] == list(range(1, 21))
    assert jb.stats.catchup_frames > 0
    assert jb.stats.underruns == 1
    jb.push(frame(21), 21)
    assert jb.pop() == []  # priming again: 20 ms < 40 ms


def test_memory_is_bounded() -> None:
    jb = JitterBuffer(RATE, target_ms=20, max_ms=200)
    for seq in range(1, 101):
        jb.push(frame(seq), seq)
    assert jb.buffered_ms <= 200
    assert jb.stats.overflow_frames == 90
    # Chunks waiting for a gap that never fills are bounded too.
    jb2 = JitterBuffer(RATE, target_ms=20, max_ms=200, reorder_ms=10_000)
    jb2.push(frame(0), 1)
    for seq in range(3, 200):
        jb2.push(frame(seq), seq)
    assert jb2.buffered_ms <= 220
    assert jb2.stats.lost >= 1


def test_unsequenced_chunks_are_appended_and_bad_chunks_rejected() -> None:
    jb = JitterBuffer(16000, target_ms=20)
    jb.push(bytes(640))
    assert len(jb.pop()[0]) == 640
    with pytest.raises(ValueError):
        jb.push(b"\x00")
    with pytest.raises(ValueError):
        jb.push(bytes(16000 * 2 * 2))


def test_flush_returns_everything_padded() -> None:
    jb = JitterBuffer(RATE, target_ms=100)
    jb.push(frame(1), 1)
    jb.push(frame(3)[:10], 3)
    out = jb.flush()
    assert value(out[0]) == 1 and len(out) == 3


# ------------------------------------------------------------------------- RtpJitterBuffer

PT_MS = 20


def rtp_buffer(**settings: int) -> RtpJitterBuffer:
    return RtpJitterBuffer(8000, JitterSettings(**settings) if settings else None)


def push(
    jb: RtpJitterBuffer, seq: int, *, at: float | None = None, payload: bytes | None = None
) -> None:
    """Packet ``seq`` (timestamp 160 per seq) arriving on time unless ``at`` says otherwise."""
    arrival = seq * 0.02 if at is None else at
    jb.push(seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, payload or seq.to_bytes(4, "big"), arrival)


def label(item: bytes | Gap) -> int | Gap:
    return item if isinstance(item, Gap) else int.from_bytes(item, "big")


def test_rtp_buffer_primes_to_the_target_then_plays_in_sequence_order() -> None:
    jb = rtp_buffer()  # 60 ms initial target
    for seq in (10, 12, 11):
        push(jb, seq)
    assert [label(jb.pop()) for _ in range(4)] == [10, 11, 12, Gap.WAIT]
    assert jb.stats.underruns == 1 and jb.stats.lost == 0


def test_rtp_buffer_declares_a_missing_packet_lost_and_counts_it_late_when_it_comes() -> None:
    jb = rtp_buffer()
    for seq in (1, 2, 4, 5):
        push(jb, seq)
    assert [label(jb.pop()) for _ in range(4)] == [1, 2, Gap.LOST, 4]
    push(jb, 3)
    push(jb, 2)
    push(jb, 5)
    assert jb.stats.lost == 1 and jb.stats.late == 1 and jb.stats.duplicates == 2


def test_rtp_buffer_follows_sequence_numbers_across_the_wrap() -> None:
    jb = rtp_buffer()
    for seq in range(65533, 65539):  # 65533 .. 65535, 0, 1, 2
        push(jb, seq)
    assert [label(jb.pop()) for _ in range(6)] == list(range(65533, 65539))
    assert jb.highest_seq == 65538 and jb.expected == 6


def test_rtp_buffer_restarts_on_a_sequence_jump() -> None:
    jb = rtp_buffer()
    for seq in (1, 2, 3):
        push(jb, seq)
    for seq in (40000, 40001, 40002):  # RFC 3550 A.1: beyond MAX_DROPOUT, a new start
        push(jb, seq)
    assert [label(jb.pop()) for _ in range(3)] == [40000, 40001, 40002]


def test_rtp_buffer_target_grows_with_jitter_and_shrinks_slowly_within_bounds() -> None:
    jb = rtp_buffer(initial_ms=40, min_ms=40, max_ms=200, capacity_ms=1000)
    rng = random.Random(1)
    for seq in range(200):  # delays uniform in 0..60 ms
        push(jb, seq, at=seq * 0.02 + rng.uniform(0, 0.06))
    assert 12 <= jb.jitter_ms <= 30
    grown = jb.target_ms
    assert 60 <= grown <= 200
    for seq in range(200, 1200):  # calm again: the estimate decays at once, the target slowly
        push(jb, seq)
        jb.tick()
        while not isinstance(jb.pop(), Gap):
            pass
        if seq == 260:
            assert jb.target_ms >= grown - 20  # at most one packet less after 1.2 s
    assert jb.target_ms == 40


def test_rtp_buffer_holds_at_most_its_capacity() -> None:
    jb = rtp_buffer(initial_ms=40, min_ms=40, max_ms=100, capacity_ms=200)
    for seq in range(100):
        push(jb, seq)
    assert jb.buffered_ms <= 200 and jb.stats.overflow_frames == 90
    assert label(jb.pop()) == 90


def test_rtp_buffer_sheds_a_standing_excess_delay_one_packet_at_a_time() -> None:
    jb = rtp_buffer(initial_ms=40, min_ms=40, max_ms=100, capacity_ms=1000)
    for seq in range(20):  # a burst: 400 ms waiting, far over the 40 ms target
        push(jb, seq)
    played = []
    for seq in range(20, 120):  # then on time, one packet per tick
        push(jb, seq)
        jb.tick()
        played.append(label(jb.pop()))
    assert 0 < jb.stats.catchup_frames <= 10
    assert jb.buffered_ms < 400 - 20 * (jb.stats.catchup_frames - 1)
    assert played == sorted(played)  # dropped packets, never reordered ones


def test_rtp_buffer_event_slots_fill_the_sequence_without_jitter() -> None:
    jb = rtp_buffer()
    push(jb, 1)
    jb.push(2, 160, b"", 0.5)  # an RFC 4733 packet in audio's sequence, arriving "late"
    push(jb, 3)
    assert jb.jitter_ms < 1
    assert [jb.pop() for _ in range(3)] == [(1).to_bytes(4, "big"), b"", (3).to_bytes(4, "big")]
