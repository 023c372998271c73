"""Hand-written fakes of the model stages, for unit tests of the session's own logic.

Each fake takes virtual time on the test's clock (``sleep_until``), so latencies are exact.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LlmChunk,
    TextDelta,
    ToolCall,
    ToolSpec,
    Transcript,
)
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.vad import SpeechEnded, SpeechStarted

RATE = 8000
FRAME = RATE // 50


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, amp: float = 8000.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def is_voiced(frame: bytes, threshold: float = 300.0) -> bool:
    x = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    return bool(x.size) and float(np.sqrt(np.mean(x * x))) > threshold


class EnergyVad:
    """Energy VAD with min speech/silence durations, per 20 ms frame (stands in for Silero)."""

    def __init__(
        self, sample_rate: int = RATE, *, min_speech: float = 0.04, min_silence: float = 0.2
    ) -> None:
        self.sample_rate = sample_rate
        self.min_speech = min_speech
        self.min_silence = min_silence
        self._events: deque[SpeechStarted | SpeechEnded] = deque()
        self._t = 0.0
        self._run_voiced = 0.0
        self._run_silent = 0.0
        self._speaking = False
        self._start = 0.0
        self._audio = bytearray()
        self.segments: list[bytes] = []

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def speech_duration(self) -> float:
        return self._t - self._run_silent - self._start if self._speaking else 0.0

    @property
    def silence_duration(self) -> float:
        return self._run_silent if self._speaking else 0.0

    def current_audio(self) -> bytes:
        return bytes(self._audio)

    def next_event(self) -> SpeechStarted | SpeechEnded | None:
        return self._events.popleft() if self._events else None

    def push(self, pcm: bytes) -> None:
        dt = len(pcm) / (2 * self.sample_rate)
        voiced = is_voiced(pcm)
        if self._speaking:
            self._audio += pcm
        if voiced:
            self._run_voiced += dt
            self._run_silent = 0.0
            if not self._speaking and self._run_voiced >= self.min_speech - 1e-9:
                self._speaking = True
                self._start = self._t + dt - self._run_voiced
                self._audio = bytearray(pcm)
                self._events.append(SpeechStarted(self._start, 0.0))
        else:
            self._run_silent += dt
            self._run_voiced = 0.0
            if self._speaking and self._run_silent >= self.min_silence - 1e-9:
                self._speaking = False
                end = self._t + dt - self._run_silent
                self.segments.append(bytes(self._audio))
                self._events.append(SpeechEnded(end, bytes(self._audio), end - self._start))
        self._t += dt


class FakeStt:
    """Returns scripted final texts in order; interim results count 3 words per second."""

    name = "fake"
    native_turn_detection = False

    def __init__(
        self,
        clock: VirtualClock,
        texts: Sequence[str],
        *,
        delay: float = 0.1,
        sample_rate: int = 16000,
    ) -> None:
        self.clock = clock
        self.texts = deque(texts)
        self.delay = delay
        self.sample_rate = sample_rate
        self.finals: list[bytes] = []
        self.interims = 0
        self.started: list[float] = []
        """Virtual time at which each call began."""
        self.cancelled: list[float] = []
        """Virtual time at which each cancelled call was cancelled."""
        self.prompts: list[str | None] = []
        """The ``prompt`` of each call (None: none given)."""

    async def transcribe(
        self,
        pcm: bytes,
        *,
        final: bool = True,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        self.started.append(self.clock.now())
        self.prompts.append(prompt)
        try:
            await self.clock.sleep_until(self.clock.now() + self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(self.clock.now())
            raise
        if not final:
            self.interims += 1
            words = int(len(pcm) / (2 * self.sample_rate) * 3)
            return Transcript(" ".join(["word"] * words), final=False)
        self.finals.append(pcm)
        return Transcript(self.texts.popleft() if self.texts else "")


@dataclass
class FakeLlm:
    """Replies with ``reply(messages)`` word by word, ``token_delay`` apart."""

    clock: VirtualClock
    reply: Callable[[Sequence[ChatMessage]], str] = lambda messages: "Okay."
    first_token_delay: float = 0.2
    token_delay: float = 0.01
    end_call_when: Callable[[Sequence[ChatMessage]], bool] = lambda messages: False
    fail: bool = False
    name: str = "fake"
    calls: list[list[ChatMessage]] = field(default_factory=list)

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        self.calls.append(list(messages))
        await self.clock.sleep_until(self.clock.now() + self.first_token_delay)
        if self.fail:
            raise RuntimeError("llm down")
        for i, word in enumerate(self.reply(messages).split(" ")):
            if i:
                await self.clock.sleep_until(self.clock.now() + self.token_delay)
            yield TextDelta(word if i == 0 else " " + word)
        if self.end_call_when(messages) and any(t.name == "end_call" for t in tools):
            yield ToolCall("end_call", {})


class FakeTts:
    """Speaks 0.25 s of tone per word, in 100 ms chunks, after ``first_delay``."""

    name = "fake"

    def __init__(
        self, clock: VirtualClock, *, sample_rate: int = 16000, first_delay: float = 0.1
    ) -> None:
        self.clock = clock
        self.sample_rate = sample_rate
        self.first_delay = first_delay
        self.texts: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        await self.clock.sleep_until(self.clock.now() + self.first_delay)
        audio = tone(0.25 * len(text.split()), self.sample_rate, freq=300.0, amp=6000.0)
        step = self.sample_rate // 10 * 2
        for i in range(0, len(audio), step):
            yield audio[i : i + step]


class FakeTurn:
    """End-of-turn probability from a function of the transcript."""

    name = "fake-turn"
    sample_rate = 16000
    threshold = 0.5

    def __init__(self, clock: VirtualClock, probability: Callable[[str], float]) -> None:
        self.clock = clock
        self.probability = probability
        self.seen: list[str] = []

    async def end_of_turn_probability(
        self, pcm: bytes, *, transcript: str = "", language: str | None = None
    ) -> float:
        self.seen.append(transcript)
        await self.clock.sleep_until(self.clock.now() + 0.05)
        return self.probability(transcript)


def call_info(rate: int = RATE) -> CallInfo:
    return CallInfo("call-1", "demo", "+15550001", "+15005550100", rate, "test")


class SegmenterVad:
    """The real :class:`SpeechSegmenter` fed energy-based probabilities per model window (no
    Silero), so session tests see its prefix padding and buffer cap."""

    def __init__(self, options: object) -> None:
        from sipserver.pipeline.segmenter import SpeechSegmenter, VadOptions

        assert isinstance(options, VadOptions)
        self.segmenter = SpeechSegmenter(options)
        self.sample_rate = options.sample_rate
        self._window = 512 if self.sample_rate == 16000 else 256
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, pcm: bytes) -> None:
        self._pending = np.concatenate((self._pending, np.frombuffer(pcm, dtype="<i2")))
        while self._pending.size >= self._window:
            window, self._pending = (
                self._pending[: self._window],
                self._pending[self._window :],
            )
            self.segmenter.feed(window, 1.0 if is_voiced(window.tobytes()) else 0.0)

    def next_event(self) -> SpeechStarted | SpeechEnded | None:
        return self.segmenter.next_event()

    @property
    def speaking(self) -> bool:
        return self.segmenter.speaking

    @property
    def speech_duration(self) -> float:
        return self.segmenter.speech_duration

    @property
    def silence_duration(self) -> float:
        return self.segmenter.silence_duration

    def current_audio(self) -> bytes:
        return self.segmenter.current_audio()
