"""Playout: re-chunking, barge-in clear, overflow, underflow, background bed mixing."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from sipserver.media.playout import Playout

RATE = 8000
FB = 320  # bytes per 20 ms frame at 8 kHz


def _pcm(samples: list[int]) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def _ramp(n_bytes: int, start: int = 0) -> bytes:
    return (np.arange(n_bytes // 2, dtype=np.int64) + start).astype("<i2").tobytes()


def test_frame_bytes() -> None:
    assert Playout(8000).frame_bytes == 320
    assert Playout(16000).frame_bytes == 640
    assert Playout(48000).frame_bytes == 1920
    with pytest.raises(ValueError):
        Playout(11025)  # 220.5 samples per frame
    with pytest.raises(ValueError):
        Playout(8000, max_ms=10)


def test_rechunks_any_lengths_into_exact_frames() -> None:
    p = Playout(RATE)
    data = _ramp(FB * 5 + 100)
    cuts = [0, 7, 8, 341, 661, 1300, len(data)]  # odd cuts split samples between pushes
    for a, b in itertools.pairwise(cuts):
        p.push(data[a:b])
    assert p.queued_frames == 5
    assert p.queued_ms == (FB * 5 + 100) * 1000 // (2 * RATE)
    out = b"".join(p.pop() for _ in range(5))
    assert out == data[: FB * 5]
    assert p.pop() == bytes(FB)  # the 100-byte tail waits for more
    p.push(data[: FB - 100])
    assert p.pop() == data[FB * 5 :] + data[: FB - 100]
    assert p.pushed_frames == 6
    assert p.played_frames == 6


def test_whole_frame_pushes() -> None:
    p = Playout(RATE)
    data = _ramp(FB * 3)
    p.push(data)
    assert [p.pop() for _ in range(3)] == [data[0:FB], data[FB : 2 * FB], data[2 * FB :]]


def test_silence_when_empty_and_underflow_only_inside_a_segment() -> None:
    p = Playout(RATE)
    assert p.pop() == bytes(FB)
    assert p.underflow_frames == 0
    p.begin_segment()
    assert p.segment_open
    p.push(_ramp(FB))
    p.pop()
    assert p.pop() == bytes(FB)  # TTS did not keep up: a glitch
    assert p.underflow_frames == 1
    p.push(_ramp(100))
    p.end_segment()  # pads the tail
    assert not p.segment_open
    assert p.pop() == _ramp(100) + bytes(FB - 100)
    assert p.pop() == bytes(FB)
    assert p.underflow_frames == 1


def test_clear_drops_everything_and_reports_ms() -> None:
    p = Playout(RATE)
    p.begin_segment()
    p.push(_ramp(FB * 10 + 160))  # 210 ms
    assert p.clear() == 210
    assert p.queued_ms == 0
    assert p.queued_frames == 0
    assert p.cleared_frames == 10
    assert not p.segment_open
    assert p.pop() == bytes(FB)
    assert p.underflow_frames == 0
    assert p.clear() == 0
    p.push(_ramp(FB, 5))  # the partial tail was dropped too: new audio starts clean
    assert p.pop() == _ramp(FB, 5)


def test_overflow_drops_oldest_frames() -> None:
    p = Playout(RATE, max_ms=100)  # 5 frames
    frames = [_pcm([i] * (FB // 2)) for i in range(8)]
    for f in frames:
        p.push(f)
    assert p.queued_frames == 5
    assert p.overflow_frames == 3
    assert [p.pop() for _ in range(5)] == frames[3:]
    p.push(b"".join(frames))  # one big push
    assert p.overflow_frames == 6
    assert [p.pop() for _ in range(5)] == frames[3:]


def _reference_mix(speech: bytes, bed: npt.NDArray[np.int16], start: int, volume: float) -> bytes:
    n = len(speech) // 2
    idx = (np.arange(n) + start) % bed.size
    scaled = np.rint(bed[idx].astype(np.float64) * volume).astype(np.int64)
    total = np.frombuffer(speech, dtype="<i2").astype(np.int64) + scaled
    return bytes(np.clip(total, -32768, 32767).astype("<i2").tobytes())


@pytest.mark.parametrize("bed_samples", [37, 160, 1000])
@pytest.mark.parametrize("volume", [1.0, 0.3])
def test_bed_loops_and_mixes_like_numpy_reference(bed_samples: int, volume: float) -> None:
    rng = np.random.default_rng(bed_samples)
    bed = rng.integers(-20000, 20000, bed_samples).astype(np.int16)
    speech = rng.integers(-30000, 30000, (FB // 2) * 3).astype("<i2").tobytes()
    p = Playout(RATE)
    p.set_bed(bed.tobytes(), volume)
    p.push(speech)
    out = [p.pop() for _ in range(6)]  # 3 speech frames, then the bed over silence
    expected_speech = speech + bytes(FB * 3)
    for i, frame in enumerate(out):
        seg = expected_speech[i * FB : (i + 1) * FB]
        assert frame == _reference_mix(seg, bed, i * (FB // 2), volume), i


def test_bed_mix_clips_instead_of_wrapping() -> None:
    p = Playout(RATE)
    p.set_bed(_pcm([30000] * 160), 1.0)
    p.push(_pcm([30000] * 80 + [-30000] * 80))
    out = np.frombuffer(p.pop(), dtype="<i2")
    assert (out[:80] == 32767).all()
    assert (out[80:] == 0).all()
    p.set_bed(_pcm([-30000] * 160), 1.0)
    p.push(_pcm([-30000] * 160))
    assert (np.frombuffer(p.pop(), dtype="<i2") == -32768).all()


def test_bed_volume_and_removal() -> None:
    p = Playout(RATE)
    p.set_bed(_pcm([1000] * 160), 0.25)
    assert (np.frombuffer(p.pop(), dtype="<i2") == 250).all()
    p.set_bed(_pcm([1000] * 160), 0.0)
    assert p.pop() == bytes(FB)
    p.set_bed(_pcm([1000] * 160), 1.0)
    p.set_bed(None, 1.0)
    assert p.pop() == bytes(FB)
    p.set_bed(b"", 0.5)
    assert p.pop() == bytes(FB)
    with pytest.raises(ValueError):
        p.set_bed(_pcm([1]), 1.5)
    with pytest.raises(ValueError):
        p.set_bed(_pcm([1]), -0.1)


def test_bed_survives_clear() -> None:
    p = Playout(RATE)
    p.set_bed(_pcm([7] * 160), 1.0)
    p.push(_ramp(FB * 3))
    p.clear()
    assert (np.frombuffer(p.pop(), dtype="<i2") == 7).all()


def test_counters() -> None:
    p = Playout(RATE, max_ms=40)  # 2 frames
    p.begin_segment()
    p.push(_ramp(FB * 3))  # one overflows
    p.pop()
    p.clear()  # one cleared
    p.begin_segment()
    p.pop()  # underflow
    assert p.counters == {
        "pushed_frames": 3,
        "played_frames": 1,
        "overflow_frames": 1,
        "underflow_frames": 1,
        "cleared_frames": 1,
    }
