"""VAD with the real Silero model: batched equals one-by-one, and speech boundaries of espeak-ng
phrases separated by known silences are found at 8 kHz and 16 kHz."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sipserver.pipeline.vad import (
    SileroModel,
    SpeechEnded,
    SpeechStarted,
    VadBatcher,
    VadOptions,
)
from tests.speech import espeak

Pcm = npt.NDArray[np.int16]


def _synthetic(seed: int, seconds: float, rate: int) -> Pcm:
    """Noise and harmonic bursts at varying levels: probabilities that move around."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 250)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > 0).astype(float)
    x = 6000 * envelope * voiced + rng.normal(0, rng.uniform(50, 2000), n)
    return np.clip(x, -32768, 32767).astype(np.int16)


def _alone(model: SileroModel, pcm: Pcm) -> list[float]:
    """Probabilities of each whole window of one stream, run with B=1."""
    state = model.initial_state(1)
    context = np.zeros(model.context, dtype=np.float32)
    probs = []
    for i in range(len(pcm) // model.window):
        window = pcm[i * model.window : (i + 1) * model.window].astype(np.float32) / 32768
        p, state = model.infer(np.concatenate([context, window])[None, :], state)
        context = window[-model.context :]
        probs.append(float(p[0]))
    return probs


@pytest.mark.parametrize("rate", [8000, 16000])
def test_batched_equals_each_stream_alone(rate: int) -> None:
    model = SileroModel(rate)
    clips = [_synthetic(seed, 2.0 + seed * 0.3, rate) for seed in range(6)]
    expected = [_alone(model, clip) for clip in clips]
    everything = np.concatenate(expected)  # the clips exercise the model
    assert everything.max() > 0.5 and everything.min() < 0.05 and everything.std() > 0.05
    batcher = VadBatcher(model, max_pending=10.0)
    streams = [batcher.open_stream() for _ in clips]
    frame = rate // 50
    chunk = [frame, frame * 3, frame // 2 + 1, frame, frame * 7, 999]  # pushes of mixed sizes
    offsets = [0] * len(clips)
    compared = 0
    while any(o < len(c) for o, c in zip(offsets, clips, strict=True)):
        for i, (stream, clip) in enumerate(zip(streams, clips, strict=True)):
            stream.push(clip[offsets[i] : offsets[i] + chunk[i]])
            offsets[i] += chunk[i]
        batcher.run_once()
        for s, e in zip(streams, expected, strict=True):
            done = round(s.audio_time * rate) // model.window
            if done:  # the last window processed so far
                assert s.probability == pytest.approx(e[done - 1], abs=1e-4)
                compared += 1
    assert [round(s.audio_time * rate) // model.window for s in streams] == [
        len(e) for e in expected
    ]
    assert compared > 300


@pytest.mark.parametrize("rate", [8000, 16000])
def test_batched_backlog_equals_alone(rate: int) -> None:
    """Streams with different backlogs: the k-th windows of all streams share one call."""
    model = SileroModel(rate)
    clips = [_synthetic(seed + 10, 1.0, rate)[: model.window * (5 + seed)] for seed in range(5)]
    batcher = VadBatcher(model)
    streams = [batcher.open_stream() for _ in clips]
    for s, c in zip(streams, clips, strict=True):
        s.push(c)
    assert batcher.run_once() == sum(5 + i for i in range(5))
    assert batcher.batches == 9  # the longest backlog
    for s, c in zip(streams, clips, strict=True):
        assert s.probability == pytest.approx(_alone(model, c)[-1], abs=1e-4)


# -- real speech -------------------------------------------------------------------------------

PHRASES = [
    ("Hello, I would like to book a table for two people tonight.", "Thank you, goodbye."),
    ("Can you tell me my account balance please?", "Yes."),
    ("I need to speak with someone about my last invoice.", "What time do you open tomorrow?"),
]
TOLERANCE = 0.100


def _espeak(text: str, rate: int, workdir: Path) -> Pcm:
    return espeak(text, workdir, rate=rate)


def _active_span(pcm: Pcm, rate: int) -> tuple[float, float]:
    """First and last 10 ms frame with RMS above -50 dBFS (espeak-ng's silence is exact 0)."""
    f = rate // 100
    frames = pcm[: len(pcm) // f * f].reshape(-1, f).astype(np.float64)
    active = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 100)[0]
    return active[0] * f / rate, (active[-1] + 1) * f / rate


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are needed to make speech (apt-get install espeak-ng sox)",
)
@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("phrases", PHRASES, ids=["booking", "balance", "invoice"])
def test_real_speech_boundaries(rate: int, phrases: tuple[str, str], tmp_path: Path) -> None:
    a, b = (_espeak(text, rate, tmp_path) for text in phrases)
    silence = [np.zeros(int(s * rate), dtype=np.int16) for s in (1.0, 1.5, 1.0)]
    audio = np.concatenate([silence[0], a, silence[1], b, silence[2]])
    a_start, a_end = _active_span(a, rate)
    b_start, b_end = _active_span(b, rate)
    b_offset = 1.0 + len(a) / rate + 1.5
    truth = [1.0 + a_start, 1.0 + a_end, b_offset + b_start, b_offset + b_end]

    batcher = VadBatcher(SileroModel(rate), VadOptions(sample_rate=rate))
    stream = batcher.open_stream()
    frame = rate // 50
    for i in range(0, len(audio), frame):  # 20 ms frames, as a call delivers them
        stream.push(audio[i : i + frame])
        batcher.run_once()
    events = list(stream.events())
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2, events
    times = [e.time for e in events]
    errors = [round(t - x, 3) for t, x in zip(times, truth, strict=True)]
    # Starts: within 100 ms. Ends ("silence began") are dated on 32 ms window boundaries and
    # Silero's probability decays over ~60-100 ms after the last sound, so an end is reported
    # late by up to 100 ms plus one window (measured: at most +106 ms at 8 kHz, +103 ms at 16k).
    assert abs(errors[0]) <= TOLERANCE and abs(errors[2]) <= TOLERANCE, errors
    window = batcher.period
    assert -TOLERANCE <= errors[1] <= TOLERANCE + window, errors
    assert -TOLERANCE <= errors[3] <= TOLERANCE + window, errors
    # Each utterance carries 0.5 s of padding, the speech and 0.55 s of trailing silence.
    for started, ended in zip(events[::2], events[1::2], strict=True):
        assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
        assert started.prefix == 0.5
        assert ended.speech_duration == pytest.approx(ended.time - started.time)
        expected = 0.5 + ended.speech_duration + 0.576  # 18 windows of silence >= 0.55 s
        assert len(ended.audio) / 2 / rate == pytest.approx(expected, abs=1e-6)
