"""Voice sessions per core: the CPU cost of VAD + turn detection + session bookkeeping.

    python bench/sessions.py [--sessions 50] [--seconds 30] [--vad-rate 8000]

N :class:`~sipserver.pipeline.voice.VoiceSession` objects are fed 8 kHz caller audio (an
espeak-ng question, then silence, looped; sessions are offset so pauses do not align) as fast as
the CPU allows, on a virtual clock. VAD is the real batched Silero (one ``run_once`` per 20 ms
tick for every stream), the turn detector the real Smart Turn v3.2 (one prediction per pause),
STT/LLM/TTS are instant stand-ins (their cost is per turn and is measured by bench/models.py and
bench/pipeline.py). CPU time of the whole process (threads included) over the audio processed
gives sessions per core; the raw batched Silero cost for the same number of streams, measured in
the same run, is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import soxr

from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.events import TurnCommitted
from sipserver.pipeline.providers.base import ChatMessage, LlmChunk, TextDelta, ToolSpec, Transcript
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.turn import SmartTurnDetector
from sipserver.pipeline.vad import SileroModel, VadBatcher, VadOptions
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession

RATE = 8000


class InstantStt:
    name, sample_rate, native_turn_detection = "instant", 16000, False

    async def transcribe(
        self, pcm: bytes, *, final: bool = True, language: str | None = None
    ) -> Transcript:
        return Transcript("how much does it cost")


class InstantLlm:
    name = "instant"

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        yield TextDelta("Fine.")


class InstantTts:
    name, sample_rate = "instant", RATE

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        yield bytes(RATE // 5 * 2)  # 200 ms of silence


def question() -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.wav"
        subprocess.run(
            ["espeak-ng", "-w", str(path), "How much does it cost to call Lakeside?"],
            check=True,
            timeout=30,
        )
        with wave.open(str(path), "rb") as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            src = w.getframerate()
    speech = soxr.resample(raw, src, RATE).astype(np.int16)
    return np.concatenate((speech, np.zeros(int(3.5 * RATE), dtype=np.int16)))


def raw_silero(streams: int, rate: int, windows: int) -> float:
    """CPU seconds of raw batched inference for ``windows`` windows of ``streams`` streams."""
    model = SileroModel(rate)
    rng = np.random.default_rng(1)
    inputs = (rng.standard_normal((streams, model.context + model.window)) * 0.1).astype(np.float32)
    state = model.initial_state(streams)
    t = time.process_time()
    for _ in range(windows):
        _, state = model.infer(inputs, state)
    return time.process_time() - t


async def run(sessions: int, seconds: float, vad_rate: int) -> None:
    clock = VirtualClock()
    options = VadOptions(sample_rate=vad_rate)
    batcher = VadBatcher(SileroModel(vad_rate))
    smart_turn = SmartTurnDetector()
    await smart_turn.warm_up()
    predictions = 0

    class CountingTurn:
        name, sample_rate, threshold = smart_turn.name, smart_turn.sample_rate, 0.5

        async def end_of_turn_probability(
            self, pcm: bytes, *, transcript: str = "", language: str | None = None
        ) -> float:
            nonlocal predictions
            predictions += 1
            return await smart_turn.end_of_turn_probability(pcm, transcript=transcript)

    turn = CountingTurn()
    audio = question()
    frame = RATE // 50
    period = audio.size // frame
    committed = 0

    def count(event: object) -> None:
        nonlocal committed
        committed += isinstance(event, TurnCommitted)

    calls = []
    for i in range(sessions):
        s = VoiceSession(
            AgentProfile("bench"),
            VoiceOptions(preemptive_generation=False, echo_gate=False),
            stt=InstantStt(),
            llm=InstantLlm(),
            tts=InstantTts(),
            vad=batcher.open_stream(options),
            clock=clock,
            turn_detector=turn,
            on_event=count,
        )
        s.on_start(CallInfo(f"c{i}", "bench", "x", "y", RATE, "test"))
        calls.append((s, (i * 37) % period))
    ticks = int(seconds * 50)
    frames = [audio[k * frame : (k + 1) * frame].tobytes() for k in range(period)]
    wall = time.perf_counter()
    cpu = time.process_time()
    for tick in range(ticks):
        for s, offset in calls:
            s.on_audio(frames[(tick + offset) % period])
            s.next_frame()
        batcher.run_once()
        await clock.advance(0.02)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    windows = batcher.windows // max(1, sessions)
    raw = raw_silero(sessions, vad_rate, windows)
    per_session = cpu / (sessions * seconds)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(
        f"{sessions} sessions x {seconds:.0f} s of caller audio (VAD at {vad_rate} Hz): "
        f"CPU {cpu:.2f} s (wall {wall:.2f} s), turn predictions {predictions}, "
        f"turns committed {committed}"
    )
    print(
        f"  CPU per session-second: {1e3 * per_session:.2f} ms "
        f"-> {1 / per_session:.0f} sessions per core"
    )
    print(
        f"  of which raw batched Silero ({windows} windows x {sessions} streams): {raw:.2f} s "
        f"({100 * raw / cpu:.0f}%)"
    )
    for s, _ in calls:
        s.on_hangup("bench over")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--vad-rate", type=int, default=8000, choices=(8000, 16000))
    args = parser.parse_args()
    asyncio.run(run(args.sessions, args.seconds, args.vad_rate))


if __name__ == "__main__":
    main()
