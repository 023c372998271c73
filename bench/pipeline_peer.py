"""sipserver's voice session against a Pipecat pipeline on the same models, voice-to-voice per turn.

    python bench/pipeline_peer.py [--turns 6] [--repeat 1] [--rate 16000]

Needs the peer extra (``pip install -e '.[peer]'``: Pipecat's in-process Piper service runs on the
``piper-tts`` package, which is GPL-3.0: a bench-only tool, never imported by sipserver).

The espeak-ng questions of bench/pipeline.py, fed in real time (20 ms frames on absolute
deadlines of the event loop's clock) to two voice agents on the same model files:

- **sipserver**: :class:`~sipserver.pipeline.voice.VoiceSession` of the embedded demo agent with
  its default settings (batched Silero VAD, Smart Turn v3.2, Whisper tiny.en with early STT, the
  knowledge-base answerer, Piper en_US-joe-medium), the stages timed as bench/pipeline.py does.
- **pipecat**: a pipeline of Pipecat's own components: ``WhisperSTTService`` (faster-whisper) on
  the same tiny.en CTranslate2 files -> ``LLMUserAggregator`` with ``SileroVADAnalyzer`` and the
  default user turn stop strategy (``LocalSmartTurnAnalyzerV3``, the same smart-turn-v3.2 ONNX
  file) -> :class:`KnowledgeBaseProcessor` (a FrameProcessor answering from sipserver's
  knowledge-base answerer, the same text at once) -> ``PiperTTSService`` on the same Piper voice
  file. No transport: audio goes in with ``PipelineWorker.queue_frame``, and an observer notes
  when each frame first passes between two processors (the pipeline clock, a monotonic one).

Per turn, from the caller's last voiced frame: end of turn, STT final, LLM first text, TTS first
audio, first reply frame out (voice-to-voice; for Pipecat the first ``TTSAudioRawFrame`` out of
the TTS: without a transport it is not paced, sipserver's is the first 20 ms frame of its tick),
and the models' compute where the framework reports it. Then p50/p95 per framework. Both run in
one process, one after the other per repeat (sipserver first), on the same machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline import QUESTIONS, TimedLlm, TimedStt, TimedTts, TimedTurn, pct, speech
from sipserver.config import CustomModel, load_config
from sipserver.pipeline.clock import MonotonicClock
from sipserver.pipeline.events import AgentState, SessionEvent, TurnCommitted, TurnLatency
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import ChatMessage, TextDelta
from sipserver.pipeline.providers.local_llm import KnowledgeBaseLlm
from sipserver.pipeline.providers.local_stt import default_whisper_model_path
from sipserver.pipeline.providers.local_tts import default_piper_voice_path
from sipserver.pipeline.providers.registry import make_stt, make_tts
from sipserver.pipeline.runtime import voice_options
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.turn import turn_detector_for
from sipserver.pipeline.vad import SileroModel, VadBatcher, VadOptions
from sipserver.pipeline.voice import AgentProfile, VoiceSession

FRAME_S = 0.02
"""One caller frame: 20 ms, as on a phone line."""

FIGURES = (
    "voice_to_voice",
    "vad_stop",
    "end_of_turn",
    "stt_final",
    "llm_first_text",
    "tts_first_audio",
    "stt_compute",
    "turn_compute",
    "tts_compute",
    "turn_probability",
)
"""Rows of the table: seconds, but for the turn model's probability (0..1) where it ran; each
framework fills those it exposes."""

_ROLES = {"system", "user", "assistant"}
_STATS = ("p50", "p95", "max")


# ------------------------------------------------------------------------------ pure helpers


def chat_messages(messages: Iterable[Any]) -> list[ChatMessage]:
    """Pipecat context messages (OpenAI-style dicts) as sipserver :class:`ChatMessage` s.

    Text parts of a list ``content`` are joined with spaces; messages of other roles (tools,
    developer) and without text are left out: the knowledge-base answerer reads only text.
    """
    out: list[ChatMessage] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role, content = message.get("role"), message.get("content")
        if isinstance(content, list):
            parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
            content = " ".join(p for p in parts if isinstance(p, str) and p)
        if role in _ROLES and isinstance(content, str) and content.strip():
            out.append(ChatMessage(role, content))
    return out


def since(marks: Mapping[str, float], start: float) -> dict[str, float]:
    """Each mark (s on one clock) as seconds after ``start``; marks before it are dropped."""
    return {name: t - start for name, t in marks.items() if t >= start}


def table(results: Mapping[str, Sequence[Mapping[str, float]]], asked: int) -> list[str]:
    """Lines of the comparison: the turns answered of ``asked``, then one row per figure of
    :data:`FIGURES` with p50, p95 and max per framework over its answered turns (``-`` where a
    framework has no value for the figure)."""
    names = list(results)
    head = f"{'figure (s)':<18}" + "".join(f"{n + ' ' + q:>15}" for n in names for q in _STATS)
    answered = "".join(f"{f'{len(results[n])}/{asked}':>15}{'':>30}" for n in names)
    lines = [head, f"{'answered':<18}" + answered]
    for figure in FIGURES:
        cells = []
        for name in names:
            values = [row[figure] for row in results[name] if figure in row]
            if values:
                stats = (statistics.median(values), pct(values, 0.95), max(values))
                cells.append("".join(f"{v:>15.3f}" for v in stats))
            else:
                cells.append(f"{'-':>15}" * len(_STATS))
        lines.append(f"{figure:<18}" + "".join(cells))
    return lines


# ------------------------------------------------------------------------------ real time


class Feeder:
    """Gives 20 ms frames to a consumer on absolute deadlines of the event loop's clock."""

    def __init__(self, rate: int) -> None:
        self.frame = rate * 20 // 1000
        self.silence = np.zeros(self.frame, dtype=np.int16)
        self.t0 = asyncio.get_running_loop().time()
        self.tick = 0

    def frames(self, samples: np.ndarray[Any, np.dtype[np.int16]]) -> list[bytes]:
        """``samples`` as frames, the last one padded with silence."""
        pad = (-samples.size) % self.frame
        whole = np.concatenate((samples, self.silence[:pad])).astype("<i2")
        return [chunk.tobytes() for chunk in whole.reshape(-1, self.frame)]

    async def wait_tick(self) -> None:
        self.tick += 1
        delay = self.t0 + self.tick * FRAME_S - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, delay))


# ------------------------------------------------------------------------------ sipserver


async def run_sipserver(
    questions: Sequence[np.ndarray[Any, Any]], rate: int, heard: list[str]
) -> list[dict[str, float]]:
    """One VoiceSession of the demo agent with its defaults; one row per answered question
    (each committed turn's text appended to ``heard``)."""
    config = load_config(None)
    agent = config.agents[0]
    assert agent.realtime.model is not None
    model = config.models[agent.realtime.model]
    assert isinstance(model, CustomModel)  # the embedded demo agent's offline models
    clock = MonotonicClock()
    stt = TimedStt(make_stt(model.stt), clock)
    tts = TimedTts(make_tts(model.tts))
    turn_inner = turn_detector_for(model.turn_detection.model)
    assert turn_inner is not None
    turn = TimedTurn(turn_inner, clock)
    parts: tuple[Any, ...] = (stt.inner, tts.inner, turn.inner)
    for part in parts:
        await part.warm_up()  # the local models load here, not in the first turn
    kb_dir = Path(__file__).resolve().parents[1] / "config"
    llm = TimedLlm(KnowledgeBaseLlm(KnowledgeBase.from_globs(agent.knowledge_base, kb_dir)))
    vad_options = VadOptions.from_config(model.vad)
    batcher = VadBatcher(SileroModel(vad_options.sample_rate))
    vad_task = asyncio.create_task(batcher.run(clock))
    events: list[SessionEvent] = []
    session = VoiceSession(
        AgentProfile(agent.instructions, greeting=agent.greeting),
        voice_options(model),
        stt=stt,
        llm=llm,
        tts=tts,
        vad=batcher.open_stream(vad_options),
        clock=clock,
        turn_detector=turn,
        on_event=events.append,
    )
    session.on_start(CallInfo("bench", agent.slug, "bench", "demo", rate, "test"))
    feeder = Feeder(rate)
    loop = asyncio.get_running_loop()

    async def feed(frames: Iterable[bytes]) -> None:
        for frame in frames:
            session.on_audio(frame)
            session.next_frame()
            await feeder.wait_tick()

    async def wait_listening(limit: float) -> None:
        start = loop.time()
        silence = feeder.silence.tobytes()
        while loop.time() < start + limit:
            await feed((silence,))
            if session.state is AgentState.LISTENING and loop.time() > start + 1.0:
                return

    rows: list[dict[str, float]] = []
    try:
        await wait_listening(15.0)  # the greeting
        for q in questions:
            seen = len(events)
            await feed(feeder.frames(q))
            speech_end = clock.now()
            await wait_listening(15.0)
            latency = next((e for e in events[seen:] if isinstance(e, TurnLatency)), None)
            heard += [e.text for e in events[seen:] if isinstance(e, TurnCommitted)]
            if latency is None or latency.first_frame is None:
                print("sipserver: turn without a reply")
                continue
            marks = {
                "voice_to_voice": latency.first_frame,
                "end_of_turn": latency.end_of_turn,
                "llm_first_text": latency.llm_first_token,
                "tts_first_audio": latency.tts_first_audio,
                "stt_final": latency.transcript_at,
            }
            row = since({k: v for k, v in marks.items() if v is not None}, speech_end)
            row.update(stt_compute=stt.last.seconds, tts_compute=tts.first[-1] if tts.first else 0)
            if latency.turn_model_ms is not None:  # not asked for a question (see docs)
                row.update(
                    turn_compute=latency.turn_model_ms / 1e3, turn_probability=turn.probability
                )
            rows.append(row)
    finally:
        session.on_hangup("bench over")
        vad_task.cancel()
    return rows


# ------------------------------------------------------------------------------ pipecat


@dataclass
class PeerMarks:
    """When frames of interest first passed between two Pipecat processors (pipeline clock, s)."""

    marks: dict[str, float] = field(default_factory=dict)
    tts_audio_bytes: int = 0
    tts_stopped: bool = False
    stt_compute: float | None = None
    tts_compute: float | None = None
    turn_compute: float | None = None
    turn_probability: float | None = None
    heard: str = ""

    def reset(self) -> None:
        self.marks.clear()
        self.tts_audio_bytes = 0
        self.tts_stopped = False
        self.stt_compute = self.tts_compute = self.turn_compute = self.turn_probability = None
        self.heard = ""


def build_pipecat(rate: int, voice_dir: Path) -> tuple[Any, Any, PeerMarks, Any]:
    """The Pipecat pipeline worker, its clock, the marks its observer fills, and the frame
    class to feed (imports Pipecat here: it is slow and logs at import)."""
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames.frames import (
        Frame,
        InputAudioRawFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        MetricsFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        UserStoppedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData, TurnMetricsData
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
        TurnAnalyzerUserTurnStopStrategy,
    )
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    config = load_config(None)
    agent = config.agents[0]
    answerer = KnowledgeBaseLlm(
        KnowledgeBase.from_globs(
            agent.knowledge_base, Path(__file__).resolve().parents[1] / "config"
        )
    )

    class KnowledgeBaseProcessor(FrameProcessor):
        """The LLM stand-in: answers each user turn from sipserver's knowledge-base answerer,
        streamed as Pipecat LLM text frames."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if not isinstance(frame, LLMContextFrame):
                await self.push_frame(frame, direction)
                return
            if frame.speculation:
                return
            history = [ChatMessage("system", agent.instructions)]
            history += chat_messages(frame.context.get_messages())
            await self.push_frame(LLMFullResponseStartFrame())
            async for chunk in answerer.stream(history):
                if isinstance(chunk, TextDelta) and chunk.text:
                    await self.push_frame(LLMTextFrame(chunk.text))
            await self.push_frame(LLMFullResponseEndFrame())

    clock = SystemClock()  # type: ignore[no-untyped-call]
    peer = PeerMarks()
    first_of: tuple[tuple[str, type[Any]], ...] = (
        ("vad_stop", VADUserStoppedSpeakingFrame),
        ("stt_final", TranscriptionFrame),
        ("end_of_turn", UserStoppedSpeakingFrame),
        ("llm_first_text", LLMTextFrame),
        ("tts_first_audio", TTSAudioRawFrame),
    )

    class Marks(BaseObserver):
        async def on_push_frame(self, data: FramePushed) -> None:
            frame, at = data.frame, data.timestamp / 1e9
            for name, kind in first_of:
                if isinstance(frame, kind) and name not in peer.marks:
                    peer.marks[name] = at
            if isinstance(frame, TranscriptionFrame) and data.source is stt:
                peer.heard += frame.text
            elif isinstance(frame, TTSAudioRawFrame) and data.source is tts:
                peer.tts_audio_bytes += len(frame.audio)
            elif isinstance(frame, TTSStoppedFrame):
                peer.tts_stopped = True
            elif isinstance(frame, MetricsFrame) and data.first_push:
                for item in frame.data:
                    if isinstance(item, TurnMetricsData):  # features + inference, wall time
                        peer.turn_compute = item.e2e_processing_time_ms / 1e3
                        peer.turn_probability = item.probability
                    elif isinstance(item, ProcessingMetricsData) and data.source is stt:
                        peer.stt_compute = item.value
                    elif isinstance(item, TTFBMetricsData) and data.source is tts:
                        peer.tts_compute = item.value

    stt = WhisperSTTService(
        settings=WhisperSTTService.Settings(model=str(default_whisper_model_path())),
        device="cpu",
        compute_type="int8",
    )
    tts = PiperTTSService(
        settings=PiperTTSService.Settings(voice=default_piper_voice_path().stem),
        download_dir=voice_dir,
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(),
            user_turn_strategies=UserTurnStrategies(
                stop=[TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3())]
            ),
        ),
    )
    pipeline = Pipeline(
        [stt, aggregators.user(), KnowledgeBaseProcessor(), tts, aggregators.assistant()]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=rate, audio_out_sample_rate=rate, enable_metrics=True
        ),
        clock=clock,
        observers=[Marks()],
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    return worker, clock, peer, InputAudioRawFrame


def link_voice(directory: Path) -> None:
    """Piper's voice files as Pipecat's Piper service looks for them (``<voice>.onnx`` and
    ``.onnx.json`` in its download directory): symbolic links to sipserver's shipped voice."""
    voice = default_piper_voice_path()
    for path in (voice, Path(f"{voice}.json")):
        (directory / path.name).symlink_to(path)


async def run_pipecat(
    questions: Sequence[np.ndarray[Any, Any]],
    rate: int,
    parts: tuple[Any, Any, PeerMarks, Any],
    heard: list[str],
) -> list[dict[str, float]]:
    """The questions through the running Pipecat pipeline; one row per answered question
    (each turn's transcript appended to ``heard``)."""
    worker, clock, peer, audio_frame = parts
    feeder = Feeder(rate)
    loop = asyncio.get_running_loop()

    async def feed(frames: Iterable[bytes]) -> None:
        for frame in frames:
            await worker.queue_frame(audio_frame(audio=frame, sample_rate=rate, num_channels=1))
            await feeder.wait_tick()

    silence = feeder.silence.tobytes()
    await feed([silence] * 50)
    rows: list[dict[str, float]] = []
    for q in questions:
        peer.reset()
        await feed(feeder.frames(q))
        speech_end = clock.get_time() / 1e9
        start = loop.time()
        # until the reply would have been played out (no transport paces it), 1 s more
        while loop.time() < start + 15.0:
            await feed((silence,))
            first = peer.marks.get("tts_first_audio")
            if first is None or not peer.tts_stopped:
                continue
            played = peer.tts_audio_bytes / 2 / rate
            if clock.get_time() / 1e9 > first + played + 1.0:
                break
        heard.append(peer.heard.strip())
        if "tts_first_audio" not in peer.marks:
            print("pipecat: turn without a reply")
            continue
        row = since(peer.marks, speech_end)
        row["voice_to_voice"] = row["tts_first_audio"]
        for name, value in (
            ("stt_compute", peer.stt_compute),
            ("turn_compute", peer.turn_compute),
            ("tts_compute", peer.tts_compute),
            ("turn_probability", peer.turn_probability),
        ):
            if value is not None:
                row[name] = value
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ main


async def run(turns: int, repeat: int, rate: int) -> None:
    from pipecat.workers.runner import WorkerRunner

    questions = [speech(q, rate) for q in (QUESTIONS * 2)[:turns]]
    results: dict[str, list[dict[str, float]]] = {"sipserver": [], "pipecat": []}
    heard: dict[str, list[str]] = {"sipserver": [], "pipecat": []}
    with tempfile.TemporaryDirectory() as tmp:
        link_voice(Path(tmp))
        parts = build_pipecat(rate, Path(tmp))  # loads the models: blocks while it does
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(parts[0])
        running = asyncio.create_task(runner.run())
        try:
            for _ in range(repeat):
                results["sipserver"] += await run_sipserver(questions, rate, heard["sipserver"])
                results["pipecat"] += await run_pipecat(questions, rate, parts, heard["pipecat"])
        finally:
            await parts[0].cancel()
            await asyncio.wait({running}, timeout=10)
    load = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; caller audio {rate} Hz"
    )
    for line in table(results, turns * repeat):
        print(line)
    print("heard (first round):")
    for k in range(turns):
        said = [h[k] if k < len(h) else "-" for h in heard.values()]
        print(f"  {QUESTIONS[k % len(QUESTIONS)]!r}: " + " | ".join(repr(x) for x in said))


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6, help="questions per repeat")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of both frameworks")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000,))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    asyncio.run(run(args.turns, args.repeat, args.rate))
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
