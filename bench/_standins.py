"""Instant STT/LLM/TTS stand-ins for the session benchmarks: the cost of a hosted-model call.

Real implementations of the provider protocols of :mod:`sipserver.pipeline.providers.base`
that answer at once (a hosted model costs the call worker almost nothing but waiting), plus the
caller's audio and a Smart Turn detector that counts its own CPU.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import soxr

from sipserver.pipeline.providers.base import ChatMessage, LlmChunk, TextDelta, ToolSpec, Transcript
from sipserver.pipeline.turn import SmartTurnDetector


class InstantStt:
    """Hears ``text`` in every segment, at once."""

    name, sample_rate, native_turn_detection = "instant", 16000, False

    def __init__(self, text: str = "how much does it cost") -> None:
        self.text = text

    async def transcribe(
        self, pcm: bytes, *, final: bool = True, language: str | None = None
    ) -> Transcript:
        return Transcript(self.text)


class InstantLlm:
    """Answers "Fine." at once."""

    name = "instant"

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        yield TextDelta("Fine.")


class InstantTts:
    """Says 200 ms of silence at once."""

    name = "instant"

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        yield bytes(self.sample_rate // 5 * 2)


class TimedSmartTurn(SmartTurnDetector):
    """The real Smart Turn detector, counting predictions and the CPU they take."""

    _lock = threading.Lock()
    predictions = 0
    seconds = 0.0
    feature_seconds = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []
        """Seconds from each request to its verdict (queueing on the executor included)."""
        self.cancelled = 0
        """Requests cancelled before their verdict (the turn ended or the caller spoke)."""

    def reset(self) -> None:
        with self._lock:
            TimedSmartTurn.predictions = 0
            TimedSmartTurn.seconds = TimedSmartTurn.feature_seconds = 0.0
        self.waits = []
        self.cancelled = 0

    def wait_p95(self) -> float:
        waits = sorted(self.waits)
        return waits[int(0.95 * (len(waits) - 1))] if waits else 0.0

    async def end_of_turn_probability(
        self, pcm: bytes, *, transcript: str = "", language: str | None = None
    ) -> float:
        t = time.perf_counter()
        try:
            p = await super().end_of_turn_probability(pcm, transcript=transcript)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.waits.append(time.perf_counter() - t)
        return p

    @classmethod
    def features(cls, pcm: bytes) -> Any:
        t = time.thread_time()
        try:
            return super().features(pcm)
        finally:
            with cls._lock:
                TimedSmartTurn.feature_seconds += time.thread_time() - t

    @classmethod
    def _predict(cls, session: onnxruntime.InferenceSession, pcm: bytes) -> float:
        t = time.thread_time()
        try:
            return super()._predict(session, pcm)
        finally:
            with cls._lock:
                TimedSmartTurn.predictions += 1
                TimedSmartTurn.seconds += time.thread_time() - t


QUIET_AFTER = 3.5
"""Seconds of silence after each question unless a cadence is asked for."""

MIN_QUIET = 1.5
"""Least silence after a question: the VAD's end of speech (0.55 s), min_endpointing_delay
(0.5 s) and the reply's 0.2 s must fit before the caller speaks again."""


def question(
    rate: int = 8000,
    text: str = "How much does it cost to call Lakeside?",
    *,
    every: float | None = None,
) -> Any:
    """An espeak-ng question at ``rate`` followed by silence (int16): 3.5 s of it, or as much
    as makes one question every ``every`` seconds.

    Raises:
        ValueError: ``every`` leaves less than :data:`MIN_QUIET` of silence after the question.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path), "rb") as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            src = w.getframerate()
    speech = soxr.resample(raw, src, rate).astype(np.int16)
    quiet = QUIET_AFTER if every is None else every - speech.size / rate
    if quiet < MIN_QUIET:
        raise ValueError(
            f"a caller turn every {every} s leaves {quiet:.2f} s after the "
            f"{speech.size / rate:.2f} s question; at least {MIN_QUIET} s is needed"
        )
    return np.concatenate((speech, np.zeros(round(quiet * rate), dtype=np.int16)))
