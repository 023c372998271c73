"""VAD: the speech segmenter on scripted probabilities (one test per setting), stream
re-chunking and its bound, options, and the batcher's run loop on a virtual clock."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest

from sipserver.config import VadSettings
from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.vad import (
    SileroModel,
    SileroModelNotFound,
    SpeechEnded,
    SpeechSegmenter,
    SpeechStarted,
    VadBatcher,
    VadEvent,
    VadOptions,
    silero_model_path,
)

RATE = 16000
W = 512  # samples per window at 16 kHz (32 ms)
WD = W / RATE


def _window(index: int, n: int = W) -> npt.NDArray[np.int16]:
    """A window whose samples all carry its index: buffered audio shows which windows it holds."""
    return np.full(n, index, dtype=np.int16)


def run(seg: SpeechSegmenter, probs: Sequence[float], first: int = 0, n: int = W) -> list[VadEvent]:
    """Feed one window per probability; return the events produced."""
    for i, p in enumerate(probs):
        seg.feed(_window(first + i, n), p)
    events = list(seg.events())
    seg.events().clear()
    return events


def seg(**kw: float) -> SpeechSegmenter:
    return SpeechSegmenter(VadOptions(**kw))  # type: ignore[arg-type]


S, Q = 0.9, 0.05  # a speech window, a quiet window


# -- min_speech_duration -----------------------------------------------------------------------


def test_min_speech_duration_filters_short_blips() -> None:
    blip = [Q] * 10 + [S, S] + [Q] * 30  # 64 ms of speech
    assert run(seg(min_speech_duration=0.1), blip) == []
    events = run(seg(min_speech_duration=0.05), blip)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].time == pytest.approx(10 * WD)  # start of the first speech window
    # A run broken by one quiet window starts over.
    assert run(seg(min_speech_duration=0.1), [S, S, Q, S, S, Q] * 5) == []


def test_speech_starts_after_min_speech_but_is_dated_at_its_beginning() -> None:
    s = seg(min_speech_duration=0.1)  # 4 windows (0.128 s >= 0.1)
    assert run(s, [Q] * 5 + [S] * 3) == []
    assert not s.speaking
    (started,) = run(s, [S], first=8)
    assert s.speaking
    assert isinstance(started, SpeechStarted)
    assert started.time == pytest.approx(5 * WD)
    assert s.audio_time == pytest.approx(9 * WD)


# -- min_silence_duration ----------------------------------------------------------------------


def test_min_silence_duration_decides_whether_a_pause_splits_the_utterance() -> None:
    gap = 10  # 320 ms
    probs = [Q] * 5 + [S] * 20 + [Q] * gap + [S] * 20 + [Q] * 30
    short = run(seg(min_silence_duration=0.25), probs)
    assert [type(e) for e in short] == [SpeechStarted, SpeechEnded] * 2
    long = run(seg(min_silence_duration=0.55), probs)
    assert [type(e) for e in long] == [SpeechStarted, SpeechEnded]
    ended = long[1]
    assert isinstance(ended, SpeechEnded)
    assert ended.time == pytest.approx((5 + 20 + gap + 20) * WD)  # the silence's beginning
    assert ended.speech_duration == pytest.approx((20 + gap + 20) * WD)


def test_speech_ends_exactly_after_min_silence() -> None:
    s = seg(min_silence_duration=0.55, prefix_padding_duration=0)  # 18 windows (0.576 s)
    run(s, [S] * 10)
    assert run(s, [Q] * 17, first=10) == []
    assert s.speaking
    assert s.speech_duration == pytest.approx(10 * WD)  # trailing silence excluded
    (ended,) = run(s, [Q], first=27)
    assert isinstance(ended, SpeechEnded)
    assert ended.time == pytest.approx(10 * WD)
    assert not s.speaking and s.speech_duration == 0.0
    # The audio runs up to the end event: 10 speech + 18 silence windows.
    assert len(ended.audio) == 28 * W * 2


# -- activation_threshold and hysteresis -------------------------------------------------------


def test_activation_threshold() -> None:
    probs = [Q] * 3 + [0.45] * 20 + [Q] * 30
    assert run(seg(activation_threshold=0.5), probs) == []
    events = run(seg(activation_threshold=0.4), probs)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].time == pytest.approx(3 * WD)


def test_release_hysteresis_of_0_15() -> None:
    # 0.4 cannot start speech at 0.5 but keeps ongoing speech going (>= 0.35); 0.3 is silence.
    s = seg(activation_threshold=0.5, min_silence_duration=0.1)
    assert run(s, [0.4] * 10) == []
    run(s, [S] * 5, first=10)
    assert s.speaking
    assert run(s, [0.4] * 30, first=15) == []
    assert s.speaking
    assert s.speech_duration == pytest.approx(35 * WD)
    (ended,) = run(s, [0.34] * 4, first=45)  # 4 windows = 0.128 s >= 0.1
    assert isinstance(ended, SpeechEnded)
    assert ended.time == pytest.approx(45 * WD)
    # A window between the thresholds resets the silence run.
    s2 = seg(activation_threshold=0.5, min_silence_duration=0.1)
    run(s2, [S] * 5 + [Q, Q, Q, 0.36] * 10)
    assert s2.speaking


def test_release_threshold_clamps_at_zero() -> None:
    assert VadOptions(activation_threshold=0.1).release_threshold == 0.0
    assert VadOptions(activation_threshold=0.5).release_threshold == pytest.approx(0.35)
    s = seg(activation_threshold=0.1)
    run(s, [S] * 3 + [0.0] * 50)
    assert s.speaking  # nothing is below 0: at a threshold <= 0.15 speech never ends


# -- prefix_padding_duration -------------------------------------------------------------------


def test_prefix_padding_in_the_utterance_audio() -> None:
    s = seg(prefix_padding_duration=0.5, min_speech_duration=0.05, min_silence_duration=0.1)
    events = run(s, [Q] * 40 + [S] * 10 + [Q] * 4)
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert started.prefix == 0.5
    prefix = 8000  # samples: 0.5 s, not a whole number of windows
    assert len(ended.audio) == (prefix + 14 * W) * 2
    audio = np.frombuffer(ended.audio, dtype="<i2")
    # The padding is the last 8000 samples before window 40: part of window 24, then 25..39.
    first_full = 40 - prefix // W
    assert (audio[: prefix % W] == first_full - 1).all()
    assert (audio[prefix % W : prefix] == np.repeat(np.arange(first_full, 40), W)).all()
    assert (audio[prefix:] == np.repeat(np.arange(40, 54), W)).all()


def test_prefix_padding_options_and_stream_start() -> None:
    probs = [Q] * 40 + [S] * 10 + [Q] * 4
    none = run(seg(prefix_padding_duration=0.0, min_silence_duration=0.1), probs)
    assert none[0] == SpeechStarted(time=40 * WD, prefix=0.0)
    assert isinstance(none[1], SpeechEnded) and len(none[1].audio) == 14 * W * 2
    # Speech 0.192 s into the stream: only that much padding exists.
    early = run(seg(prefix_padding_duration=0.5, min_silence_duration=0.1), probs[34:])
    assert early[0] == SpeechStarted(time=6 * WD, prefix=pytest.approx(6 * WD))
    assert isinstance(early[1], SpeechEnded) and len(early[1].audio) == 20 * W * 2


def test_current_audio_while_speaking() -> None:
    s = seg(prefix_padding_duration=0.064, min_speech_duration=0.05)
    run(s, [Q] * 5 + [S] * 2)
    assert s.current_audio() == np.repeat(np.arange(3, 7), W).astype("<i2").tobytes()
    run(s, [S], first=7)
    assert len(s.current_audio()) == 5 * W * 2
    assert seg().current_audio() == b""


def test_next_utterance_padding_comes_from_the_audio_before_it() -> None:
    s = seg(prefix_padding_duration=0.5, min_silence_duration=0.1)
    run(s, [Q] * 20 + [S] * 20 + [Q] * 4)  # ends at window 44
    events = run(s, [Q] * 6 + [S] * 5 + [Q] * 4, first=44)
    started, ended = events
    assert started == SpeechStarted(time=50 * WD, prefix=0.5)
    assert isinstance(ended, SpeechEnded)
    audio = np.frombuffer(ended.audio, dtype="<i2")
    expected = np.repeat(np.arange(0, 59), W)[50 * W - 8000 :]
    assert (audio == expected).all()


def test_feed_accepts_non_contiguous_windows() -> None:
    s = seg(min_silence_duration=0.1, prefix_padding_duration=0)
    for i, p in enumerate([S] * 5 + [Q] * 4):
        s.feed(np.repeat(np.int16(i), 2 * W)[::2], p)
    ended = s.events()[1]
    assert isinstance(ended, SpeechEnded)
    assert ended.audio == np.repeat(np.arange(9), W).astype("<i2").tobytes()


# -- max_buffered_speech -----------------------------------------------------------------------


def test_max_buffered_speech_caps_the_utterance() -> None:
    probs = [Q] * 20 + [S] * 100 + [Q] * 20  # 3.2 s of speech
    full = run(seg(max_buffered_speech=60.0), probs)[1]
    assert isinstance(full, SpeechEnded)
    assert full.truncated == 0.0
    s = seg(max_buffered_speech=1.0)
    run(s, probs[:80])
    assert len(s.current_audio()) == RATE * 2
    assert s.truncated_seconds == pytest.approx(0.5 + 60 * WD - 1.0)
    (ended,) = run(s, probs[80:], first=80)
    assert isinstance(ended, SpeechEnded)
    assert len(ended.audio) == RATE * 2
    assert ended.audio == full.audio[: RATE * 2]  # the beginning is kept
    assert ended.truncated == pytest.approx(len(full.audio) / 2 / RATE - 1.0)
    assert ended.speech_duration == full.speech_duration  # the cap does not change timing


# -- sample rates ------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "window", "context"), [(8000, 256, 32), (16000, 512, 64)])
def test_window_sizes(rate: int, window: int, context: int) -> None:
    model = SileroModel(rate)
    assert (model.window, model.context, model.sample_rate) == (window, context, rate)
    assert model.window_duration == VadBatcher(model).period == 0.032
    s = SpeechSegmenter(VadOptions(sample_rate=rate, min_silence_duration=0.1))
    events = run(s, [Q] * 10 + [S] * 10 + [Q] * 4, n=window)
    assert events[0] == SpeechStarted(time=0.32, prefix=0.32)
    assert isinstance(events[1], SpeechEnded)
    assert events[1].time == pytest.approx(0.64)
    assert len(events[1].audio) == 24 * window * 2
    with pytest.raises(ValueError, match="8000 or 16000"):
        SileroModel(44100)


def test_options_from_config_and_validation() -> None:
    cfg = VadSettings(min_speech_duration=0.1, activation_threshold=0.6, sample_rate=8000)
    opts = VadOptions.from_config(cfg)
    assert opts == VadOptions(min_speech_duration=0.1, activation_threshold=0.6, sample_rate=8000)
    assert VadOptions.from_config(VadSettings()) == VadOptions()
    with pytest.raises(ValueError, match="sample_rate"):
        VadOptions(sample_rate=22050)
    with pytest.raises(ValueError, match="activation_threshold"):
        VadOptions(activation_threshold=1.5)
    with pytest.raises(ValueError, match="min_silence_duration"):
        VadOptions(min_silence_duration=-1)
    with pytest.raises(ValueError, match="use a batcher per sample rate"):
        VadBatcher(SileroModel(16000)).open_stream(VadOptions(sample_rate=8000))


def test_events_are_bounded() -> None:
    s = SpeechSegmenter(VadOptions(min_speech_duration=0, min_silence_duration=0.03), max_events=4)
    for i in range(5):
        s.feed(_window(i), S)
        s.feed(_window(i), Q)
    assert len(s.events()) == 4 and s.dropped_events == 6
    assert isinstance(s.next_event(), SpeechStarted)


# -- model file --------------------------------------------------------------------------------


def test_missing_model_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert silero_model_path().name == "silero_vad.onnx"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SileroModelNotFound, match="pipecat-ai"):
        silero_model_path()
    with pytest.raises(SileroModelNotFound, match="not found"):
        SileroModel(path="/nonexistent/silero_vad.onnx")


# -- streams -----------------------------------------------------------------------------------


def test_stream_rechunks_pushes_of_any_length() -> None:
    batcher = VadBatcher(SileroModel(RATE))
    stream = batcher.open_stream()
    data = (np.arange(W * 5 + 100) % 3000).astype("<i2").tobytes()
    cuts = [0, 7, 8, 641, 1001, 4000, len(data)]  # odd cuts split samples between pushes
    for a, b in itertools.pairwise(cuts):
        stream.push(data[a:b])
    assert stream.pending_windows == 5 and batcher.pending() == 5
    assert batcher.run_once() == 5
    assert stream.audio_time == pytest.approx(5 * WD)
    assert batcher.pending() == 0
    stream.push(np.zeros(W - 100, dtype=np.int16))  # completes the 6th window
    assert batcher.run_once() == 1
    assert 0.0 <= stream.probability <= 1.0
    with pytest.raises(TypeError, match="int16"):
        stream.push(np.zeros(10, dtype=np.float32))


def test_stream_drops_the_oldest_windows_beyond_max_pending() -> None:
    batcher = VadBatcher(SileroModel(RATE), max_pending=0.1)  # 4 windows (+1 partial)
    stream = batcher.open_stream()
    for _ in range(7):
        stream.push(np.ones(W, dtype=np.int16))
    assert stream.dropped_windows == 2
    assert stream.pending_windows == 5
    assert stream.audio_time == pytest.approx(2 * WD)  # the clock skipped the dropped audio
    stream.push(np.ones(W * 20 + 3, dtype=np.int16))  # one push larger than the buffer
    assert stream.pending_windows == 4 and stream.dropped_windows == 2 + 21
    assert batcher.run_once() == 4
    assert stream.audio_time == pytest.approx(27 * WD)  # 27 windows + 3 samples pushed


def test_closed_streams_are_not_processed() -> None:
    batcher = VadBatcher(SileroModel(RATE))
    a, b = batcher.open_stream(), batcher.open_stream()
    a.push(np.zeros(W * 2, dtype=np.int16))
    b.push(np.zeros(W * 3, dtype=np.int16))
    batcher.close_stream(a)
    batcher.close_stream(a)
    assert a.closed and batcher.streams == 1
    assert batcher.run_once() == 3
    assert batcher.batches == 3 and a.audio_time == 0.0


# -- run() on a virtual clock ------------------------------------------------------------------


async def test_run_processes_pushed_audio_once_per_window_period() -> None:
    clock = VirtualClock()
    batcher = VadBatcher(SileroModel(8000))
    streams = [batcher.open_stream() for _ in range(3)]
    task = asyncio.create_task(batcher.run(clock))
    await asyncio.sleep(0)
    frame = np.zeros(160, dtype=np.int16)  # 20 ms at 8 kHz
    for tick in range(50):  # one second of 20 ms frames
        for s in streams:
            s.push(frame)
        await clock.advance(0.02)
        # Processed at each 32 ms deadline: the whole windows pushed before the last deadline
        # (integer milliseconds and samples; frame k was pushed at k * 20 ms).
        last_deadline_ms = (tick + 1) * 20 // 32 * 32
        frames_then = -(-last_deadline_ms // 20)
        windows = frames_then * 160 // 256
        assert streams[0].audio_time == pytest.approx(windows * 0.032)
    assert all(s.audio_time == pytest.approx(0.992) for s in streams)  # 31 whole windows
    assert batcher.pending() == 0
    assert batcher.batches == 31
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_offloads_large_batches_to_the_executor() -> None:
    clock = VirtualClock()
    batcher = VadBatcher(SileroModel(16000), offload_min_batch=2)
    streams = [batcher.open_stream() for _ in range(4)]
    with ThreadPoolExecutor(1) as pool:
        task = asyncio.create_task(batcher.run(clock, pool))
        await asyncio.sleep(0)
        for s in streams:
            s.push(np.zeros(W * 3, dtype=np.int16))
        await clock.advance(0.032)
        for _ in range(200):  # the inference runs on a real thread
            if batcher.pending() == 0 and batcher.batches == 3:
                break
            await asyncio.sleep(0.005)
        assert batcher.windows == 12
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(s.audio_time == pytest.approx(3 * WD) for s in streams)
