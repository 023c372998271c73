"""Voice pipeline latency per turn with the offline default models, in real time.

    python bench/pipeline.py [--turns 6] [--rate 8000]

One :class:`~sipserver.pipeline.voice.VoiceSession` of the embedded demo agent (Silero VAD,
Whisper tiny.en with early STT, Smart Turn v3.2, the knowledge-base answerer, Piper), driven at
real-time pace on the event loop's clock with espeak-ng questions as the caller. The model stages
are wrapped to time their own compute. Per turn it reports, from the caller's last voiced frame
(known exactly from the script):

- end of turn, LLM first token, TTS first audio, first reply frame on the wire (voice-to-voice);
- model compute on the path: STT, turn model, LLM first token, TTS first audio;
- pipeline overhead: time not spent in models or in waits the settings impose =
  (end of turn - max(endpointing deadline, turn verdict ready)) +
  (first frame - max(end of turn, TTS first audio)). Ticks are 20 ms, so up to 20 ms of each
  part is the tick granularity.

Then p50/p95 over the turns. The machine is noted; other processes may compete for the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from sipserver.config import load_config
from sipserver.pipeline.clock import MonotonicClock
from sipserver.pipeline.events import AgentState, SessionEvent, TurnCommitted, TurnLatency
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LanguageModel,
    LlmChunk,
    SpeechToText,
    TextToSpeech,
    ToolSpec,
    Transcript,
    TurnDetector,
)
from sipserver.pipeline.providers.local_llm import KnowledgeBaseLlm
from sipserver.pipeline.providers.registry import make_stt, make_tts
from sipserver.pipeline.runtime import voice_options
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.turn import turn_detector_for
from sipserver.pipeline.vad import SileroModel, VadBatcher, VadOptions
from sipserver.pipeline.voice import AgentProfile, VoiceSession

QUESTIONS = (
    "How much does it cost?",
    "When is the office open?",
    "Where is the office?",
    "How do I contact support?",
    "What is sipserver?",
    "Can I pay by card?",
    "Is there a free trial?",
    "How do I register my phone system?",
)


@dataclass
class Timed:
    """Compute time of the last call of a stage, and when it finished."""

    seconds: float = 0.0
    done_at: float = 0.0


class TimedStt:
    def __init__(self, inner: SpeechToText, clock: MonotonicClock) -> None:
        self.inner, self.clock = inner, clock
        self.name, self.sample_rate = inner.name, inner.sample_rate
        self.native_turn_detection = inner.native_turn_detection
        self.last = Timed()

    @property
    def busy(self) -> bool:
        return bool(getattr(self.inner, "busy", False))

    async def transcribe(
        self, pcm: bytes, *, final: bool = True, language: str | None = None
    ) -> Transcript:
        t = time.perf_counter()
        result = await self.inner.transcribe(pcm, final=final, language=language)
        if final:
            self.last = Timed(time.perf_counter() - t, self.clock.now())
        return result


class TimedTurn:
    def __init__(self, inner: TurnDetector, clock: MonotonicClock) -> None:
        self.inner, self.clock = inner, clock
        self.name, self.sample_rate = inner.name, inner.sample_rate
        self.last = Timed()
        self.probability = 0.0

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    async def end_of_turn_probability(
        self, pcm: bytes, *, transcript: str = "", language: str | None = None
    ) -> float:
        t = time.perf_counter()
        p = await self.inner.end_of_turn_probability(pcm, transcript=transcript)
        self.last = Timed(time.perf_counter() - t, self.clock.now())
        self.probability = p
        return p


class TimedLlm:
    def __init__(self, inner: LanguageModel) -> None:
        self.inner, self.name = inner, inner.name
        self.first: list[float] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        t = time.perf_counter()
        first = True
        async for chunk in self.inner.stream(messages, tools=tools):
            if first:
                self.first.append(time.perf_counter() - t)
                first = False
            yield chunk


class TimedTts:
    def __init__(self, inner: TextToSpeech) -> None:
        self.inner, self.name, self.sample_rate = inner, inner.name, inner.sample_rate
        self.first: list[float] = []

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        t = time.perf_counter()
        first = True
        async for chunk in self.inner.synthesize(text):
            if first:
                self.first.append(time.perf_counter() - t)
                first = False
            yield chunk


def speech(text: str, rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path), "rb") as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            src = w.getframerate()
    out = soxr.resample(raw, src, rate).astype(np.int16)
    voiced = np.flatnonzero(np.abs(out) > 300)
    return out[: voiced[-1] + 1]  # end exactly at the last voiced sample


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(turns: int, rate: int) -> None:
    config = load_config(None)
    agent = config.agents[0]
    assert agent.realtime.model is not None
    model = config.models[agent.realtime.model]
    clock = MonotonicClock()
    stt = TimedStt(make_stt(model.stt), clock)  # type: ignore[union-attr]
    tts = TimedTts(make_tts(model.tts))  # type: ignore[union-attr]
    turn_inner = turn_detector_for(model.turn_detection.model)  # type: ignore[union-attr]
    assert turn_inner is not None
    turn = TimedTurn(turn_inner, clock)
    for part in (stt.inner, tts.inner, turn.inner):
        await part.warm_up()  # type: ignore[attr-defined]
    kb_dir = Path(__file__).resolve().parents[1] / "config"
    llm = TimedLlm(KnowledgeBaseLlm(KnowledgeBase.from_globs(agent.knowledge_base, kb_dir)))
    vad_options = VadOptions.from_config(model.vad)  # type: ignore[union-attr]
    batcher = VadBatcher(SileroModel(vad_options.sample_rate))
    vad_task = asyncio.create_task(batcher.run(clock))
    options = voice_options(model)  # type: ignore[arg-type]
    events: list[SessionEvent] = []
    session = VoiceSession(
        AgentProfile(agent.instructions, greeting=agent.greeting),
        options,
        stt=stt,
        llm=llm,
        tts=tts,
        vad=batcher.open_stream(vad_options),
        clock=clock,
        turn_detector=turn,
        on_event=events.append,
    )
    session.on_start(CallInfo("bench", agent.slug, "bench", "demo", rate, "test"))
    questions = [speech(q, rate) for q in QUESTIONS[:turns]]
    frame = rate // 50
    silence = np.zeros(frame, dtype=np.int16)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tick = 0
    rows: list[dict[str, float]] = []

    async def feed(samples: np.ndarray) -> None:
        nonlocal tick
        for i in range(0, samples.size, frame):
            chunk = samples[i : i + frame]
            if chunk.size < frame:
                chunk = np.concatenate((chunk, silence[: frame - chunk.size]))
            session.on_audio(chunk.astype("<i2").tobytes())
            session.next_frame()
            tick += 1
            await clock.sleep_until(t0 + tick * 0.02)

    async def wait_listening(limit: float) -> None:
        deadline = loop.time() + limit
        while loop.time() < deadline:
            await feed(silence)
            if session.state is AgentState.LISTENING and loop.time() > deadline - limit + 1.0:
                return

    await wait_listening(15.0)  # the greeting
    for q in questions:
        seen = len(events)
        await feed(q)
        speech_end = clock.now()  # the last voiced frame has just been given to the session
        await wait_listening(15.0)
        new = events[seen:]
        latency = next((e for e in new if isinstance(e, TurnLatency)), None)
        commit = next((e for e in new if isinstance(e, TurnCommitted)), None)
        if latency is None or commit is None or latency.first_frame is None:
            print("turn without a reply:", new[-5:])
            continue
        assert latency.end_of_turn is not None and latency.tts_first_audio is not None
        done = turn.probability >= turn.threshold
        delay = options.endpointing.min_delay if done else options.endpointing.max_delay
        deadline = (latency.speech_end or speech_end) + delay
        overhead = max(0.0, latency.end_of_turn - max(deadline, turn.last.done_at)) + max(
            0.0, latency.first_frame - max(latency.end_of_turn, latency.tts_first_audio)
        )
        rows.append(
            {
                "end_of_turn": latency.end_of_turn - speech_end,
                "llm_first_token": (latency.llm_first_token or 0) - speech_end,
                "tts_first_audio": latency.tts_first_audio - speech_end,
                "voice_to_voice": latency.first_frame - speech_end,
                "stt_compute": stt.last.seconds,
                "turn_compute": turn.last.seconds,
                "llm_compute": llm.first[-1] if llm.first else 0.0,
                "tts_compute": tts.first[-1] if tts.first else 0.0,
                "overhead": overhead,
                "preemptive": float(latency.preemptive),
                "turn_p": turn.probability,
            }
        )
    vad_task.cancel()
    session.on_hangup("bench over")
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f} (others may compete)")
    print(f"turns: {len(rows)}, caller audio {rate} Hz, VAD {vad_options.sample_rate} Hz")
    names = list(rows[0]) if rows else []
    print(f"{'figure (s)':<18}{'p50':>8}{'p95':>8}   " + " ".join(f"t{i + 1}" for i in range(8)))
    for name in names:
        values = [r[name] for r in rows]
        per_turn = " ".join(f"{v:.2f}" for v in values[:8])
        print(f"{name:<18}{statistics.median(values):>8.3f}{pct(values, 0.95):>8.3f}   {per_turn}")


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rate", type=int, default=8000, choices=(8000, 16000))
    args = parser.parse_args(argv)
    asyncio.run(run(args.turns, args.rate))


if __name__ == "__main__":
    main()
