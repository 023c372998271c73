"""The websocket jitter buffer: reordering, gaps, late chunks, priming, catch-up, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from sipserver.media.jitter import JitterBuffer

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
