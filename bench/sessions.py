"""Voice sessions per core: the CPU cost of the pipeline itself (VAD, turn model, bookkeeping).

    python bench/sessions.py [--sessions 100] [--seconds 30] [--vad-rate 8000] [--turn-every S]
    python bench/sessions.py --standins [--sessions 100,200,300] [--seconds 20] [--cpu 1]
                             [--turn-every S]
    python bench/sessions.py --local [--calls 1,2,3,4] [--turns 6] [--cpu 1]
    python bench/sessions.py --turn-batches

Default (virtual clock): N :class:`~sipserver.pipeline.voice.VoiceSession` objects are fed
8 kHz caller audio (an espeak-ng question of 2.3 s, then 3.5 s of silence, looped: one caller
turn every 5.8 s; ``--turn-every S`` pads the silence to one turn every S seconds; sessions are
offset so pauses do not align) as fast as the CPU allows. VAD is the real batched Silero (one
``run_once`` per 20 ms tick for every stream), the turn detector the real Smart Turn v3.2 (one
prediction per pause, awaited before the clock moves on so that all its CPU is counted),
STT/LLM/TTS are instant stand-ins (:mod:`bench._standins`). The CPU of the whole process
(threads included) over the audio processed gives sessions per core, split into Silero
inference, Smart Turn (features + inference) and the rest (session bookkeeping).

``--standins``: the same sessions in real time, media-free (frames in, frames out on a 20 ms
tick with absolute deadlines, the VAD batcher on its own task and Smart Turn on its executor, as
in a server), the process pinned to one CPU. For each N: CPU used (cores), sessions per core
(N / cores used), late ticks (a tick that started more than 20 ms after its deadline delays
every session's frame), RSS per session, turns committed, the turn verdict's p95 wait (request
to result, executor queue included: when Smart Turn cannot keep up this grows and turns end on
``max_endpointing_delay`` instead) and the requests dropped unanswered (the turn ended first, or
the caller spoke again).

``--local``: N voice calls of the embedded default's demo agent on its local models (Whisper,
Piper, Smart Turn, Silero, the knowledge-base answerer), each asking espeak-ng questions in real
time and waiting for the answer, the process pinned to one CPU. Voice-to-voice (the caller's
last voiced frame to the first reply frame) p50/p95 per N: the largest N with p95 <= 1.5 s is
how many local-model calls one core holds.

``--turn-batches``: Smart Turn's cost per input when B inputs share one onnxruntime run (why
the session does not batch its predictions across calls).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._standins import InstantLlm, InstantStt, InstantTts, TimedSmartTurn, question
from sipserver.observability import configure_logging
from sipserver.pipeline.clock import Clock, MonotonicClock, VirtualClock
from sipserver.pipeline.events import AgentState, SessionEvent, TurnCommitted, TurnLatency
from sipserver.pipeline.providers.base import TurnDetector
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.turn import SmartTurnDetector
from sipserver.pipeline.vad import SileroModel, VadBatcher, VadOptions
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession

RATE = 8000
FRAME = RATE // 50


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine(cpu: int | None) -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    pinned = f", pinned to CPU {cpu}" if cpu is not None else ""
    return (
        f"machine: {os.cpu_count()} cores ({model}){pinned}, "
        f"load average {os.getloadavg()[0]:.2f} (other processes may compete)"
    )


class TimedSilero(SileroModel):
    """Silero whose inference CPU time (of the thread that runs it) is summed."""

    seconds = 0.0

    def infer(self, inputs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        t = time.thread_time()
        try:
            return super().infer(inputs, state)
        finally:
            TimedSilero.seconds += time.thread_time() - t


def make_sessions(
    n: int,
    batcher: VadBatcher,
    options: VadOptions,
    turn: TurnDetector | None,
    clock: Clock,
    on_event: Callable[[SessionEvent], None],
    transcript: str,
    echo_gate: bool = False,
) -> list[VoiceSession]:
    sessions = []
    for i in range(n):
        s = VoiceSession(
            AgentProfile("bench"),
            VoiceOptions(preemptive_generation=False, echo_gate=echo_gate),
            stt=InstantStt(transcript),
            llm=InstantLlm(),
            tts=InstantTts(RATE),
            vad=batcher.open_stream(options),
            clock=clock,
            turn_detector=turn,
            on_event=on_event,
        )
        s.on_start(CallInfo(f"c{i}", "bench", "x", "y", RATE, "test"))
        sessions.append(s)
    return sessions


def caller_frames(every: float | None) -> list[bytes]:
    audio = question(RATE, every=every)
    period = audio.size // FRAME
    return [audio[k * FRAME : (k + 1) * FRAME].tobytes() for k in range(period)]


def print_split(cpu: float, silero: float, turn: TimedSmartTurn, session_seconds: float) -> None:
    rest = cpu - silero - turn.seconds
    per = 1e3 / session_seconds
    print(
        f"  per session-second: Silero {silero * per:.2f} ms, Smart Turn {turn.seconds * per:.2f}"
        f" ms ({turn.predictions} predictions, {1e3 * turn.seconds / max(1, turn.predictions):.1f}"
        f" ms each, features {1e3 * turn.feature_seconds / max(1, turn.predictions):.1f} ms),"
        f" the rest {rest * per:.2f} ms"
    )


# ------------------------------------------------------------------------- virtual clock


async def run_virtual(
    sessions: int,
    seconds: float,
    vad_rate: int,
    transcript: str,
    smart_turn: bool,
    echo: bool,
    every: float | None,
) -> None:
    clock = VirtualClock()
    options = VadOptions(sample_rate=vad_rate)
    batcher = VadBatcher(TimedSilero(vad_rate))
    turn = TimedSmartTurn()
    await turn.warm_up()
    inflight: set[asyncio.Future[float]] = set()

    class AwaitedTurn:
        """The detector, its predictions tracked so the clock waits for them."""

        name, sample_rate, threshold = turn.name, turn.sample_rate, turn.threshold

        async def end_of_turn_probability(
            self, pcm: bytes, *, transcript: str = "", language: str | None = None
        ) -> float:
            future = asyncio.ensure_future(turn.end_of_turn_probability(pcm))
            inflight.add(future)
            try:
                return await future
            finally:
                inflight.discard(future)

    committed = 0

    def count(event: SessionEvent) -> None:
        nonlocal committed
        committed += isinstance(event, TurnCommitted)

    detector = AwaitedTurn() if smart_turn else None
    calls = make_sessions(sessions, batcher, options, detector, clock, count, transcript, echo)
    frames = caller_frames(every)
    period = len(frames)
    offsets = [(i * 37) % period for i in range(sessions)]
    TimedSilero.seconds = 0.0
    turn.reset()
    ticks = int(seconds * 50)
    wall = time.perf_counter()
    cpu = time.process_time()
    for tick in range(ticks):
        for s, offset in zip(calls, offsets, strict=True):
            s.on_audio(frames[(tick + offset) % period])
            s.next_frame()
        batcher.run_once()
        await clock.advance(0.02)
        while inflight:
            await asyncio.wait(set(inflight))
            await clock.advance(0.0)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    per_session = cpu / (sessions * seconds)
    print(machine(None))
    print(
        f"{sessions} sessions x {seconds:.0f} s of caller audio (VAD at {vad_rate} Hz, "
        f"turn model {'Smart Turn' if smart_turn else 'none (vad)'}, "
        f"echo gate {'on' if echo else 'off'}, "
        f"transcript {transcript!r}, a caller turn every {len(frames) * 0.02:.1f} s): "
        f"CPU {cpu:.2f} s (wall {wall:.2f} s), "
        f"turns committed {committed}"
    )
    print(
        f"  CPU per session-second: {1e3 * per_session:.2f} ms "
        f"-> {1 / per_session:.0f} sessions per core"
    )
    print_split(cpu, TimedSilero.seconds, turn, sessions * seconds)
    for s in calls:
        s.on_hangup("bench over")


# ---------------------------------------------------------------------- real time, stand-ins


async def run_standins(
    counts: list[int],
    seconds: float,
    vad_rate: int,
    transcript: str,
    cpu_id: int | None,
    every: float | None,
) -> None:
    clock = MonotonicClock()
    options = VadOptions(sample_rate=vad_rate)
    batcher = VadBatcher(TimedSilero(vad_rate), offload_min_batch=1)  # as VoiceRuntime does
    vad_task = asyncio.create_task(batcher.run(clock))
    turn = TimedSmartTurn()
    await turn.warm_up()
    frames = caller_frames(every)
    period = len(frames)
    loop = asyncio.get_running_loop()
    print(machine(cpu_id))
    print(
        f"real time, VAD at {vad_rate} Hz, transcript {transcript!r}, a caller turn every "
        f"{period * 0.02:.1f} s, {seconds:.0f} s per step (after 3 s of warm-up)"
    )
    print(
        f"{'sessions':>8} {'cores':>6} {'per core':>8} {'late ticks':>10} {'tick p99':>9} "
        f"{'RSS/session':>11} {'turns':>6} {'verdict p95':>11} {'dropped':>7}"
    )
    for n in counts:
        base_rss = rss_kib()
        committed = 0

        def count(event: SessionEvent) -> None:
            nonlocal committed
            committed += isinstance(event, TurnCommitted)

        calls = make_sessions(n, batcher, options, turn, clock, count, transcript)
        offsets = [(i * 37) % period for i in range(n)]
        warm = 150
        total = warm + int(seconds * 50)
        t0 = loop.time()
        late = 0
        durations: list[float] = []
        cpu = 0.0
        wall = 0.0
        for tick in range(total):
            if tick == warm:
                TimedSilero.seconds = 0.0
                turn.reset()
                late, committed, durations = 0, 0, []
                cpu, wall = time.process_time(), time.perf_counter()
            deadline = t0 + tick * 0.02
            delay = deadline - loop.time()
            await asyncio.sleep(max(0.0, delay))
            started = loop.time()
            if started - deadline > 0.02:
                late += 1
            for s, offset in zip(calls, offsets, strict=True):
                s.on_audio(frames[(tick + offset) % period])
                s.next_frame()
            durations.append(loop.time() - started)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        rss = (rss_kib() - base_rss) / n
        cores = cpu / wall
        durations.sort()
        p99 = durations[int(0.99 * (len(durations) - 1))]
        # Sessions per core holds only if the work kept up: no late tick, no verdict dropped.
        kept_up = late == 0 and turn.cancelled == 0
        print(
            f"{n:>8} {cores:>6.2f} {n / cores:>7.0f}{' ' if kept_up else '*'} {late:>10} "
            f"{1e3 * p99:>7.1f}ms "
            f"{rss:>8.0f} KiB {committed:>6} {1e3 * turn.wait_p95():>9.0f}ms {turn.cancelled:>7}"
        )
        print_split(cpu, TimedSilero.seconds, turn, n * seconds)
        for s in calls:
            s.on_hangup("bench over")
        await asyncio.sleep(0.5)
    print("* the work did not keep up (late ticks or dropped verdicts): not a capacity figure")
    vad_task.cancel()


# ------------------------------------------------------------------------- local models


async def run_local(counts: list[int], turns: int, cpu_id: int | None, verbose: bool) -> None:
    from bench.pipeline import QUESTIONS, speech
    from sipserver.config import load_config
    from sipserver.pipeline.knowledge import KnowledgeBase
    from sipserver.pipeline.providers.local_llm import KnowledgeBaseLlm
    from sipserver.pipeline.providers.registry import make_stt, make_tts
    from sipserver.pipeline.runtime import voice_options
    from sipserver.pipeline.turn import turn_detector_for

    config = load_config(None)
    agent = config.agents[0]
    assert agent.realtime.model is not None
    model = config.models[agent.realtime.model]
    stt = make_stt(model.stt)  # type: ignore[union-attr]
    tts = make_tts(model.tts)  # type: ignore[union-attr]
    turn = turn_detector_for(model.turn_detection.model)  # type: ignore[union-attr]
    assert turn is not None
    for part in (stt, tts, turn):
        await part.warm_up()  # type: ignore[attr-defined]
    kb_dir = Path(__file__).resolve().parents[1] / "config"
    llm = KnowledgeBaseLlm(KnowledgeBase.from_globs(agent.knowledge_base, kb_dir))
    vad_options = VadOptions.from_config(model.vad)  # type: ignore[union-attr]
    batcher = VadBatcher(SileroModel(vad_options.sample_rate), offload_min_batch=1)
    clock = MonotonicClock()
    vad_task = asyncio.create_task(batcher.run(clock))
    options = voice_options(model)  # type: ignore[arg-type]
    questions = [speech(q, RATE) for q in QUESTIONS]
    silence = bytes(2 * FRAME)
    loop = asyncio.get_running_loop()
    print(machine(cpu_id))
    print(f"local models of the demo agent, {turns} questions per call, caller at {RATE} Hz")
    print(f"{'calls':>5} {'cores':>6} {'turns':>5} {'v2v p50':>8} {'v2v p95':>8} {'max':>6}")
    for n in counts:
        t_start = clock.now()
        sessions: list[VoiceSession] = []
        events: list[list[SessionEvent]] = []
        for i in range(n):
            log: list[SessionEvent] = []
            on_event: Callable[[SessionEvent], None] = log.append
            if verbose:

                def on_event(
                    e: SessionEvent, log: list[SessionEvent] = log, i: int = i, t0: float = t_start
                ) -> None:
                    log.append(e)
                    print(f"  call {i} {clock.now() - t0:8.2f} {e}")

            s = VoiceSession(
                AgentProfile(agent.instructions, greeting=agent.greeting),
                options,
                stt=stt,
                llm=llm,
                tts=tts,
                vad=batcher.open_stream(vad_options),
                clock=clock,
                turn_detector=turn,
                on_event=on_event,
            )
            s.on_start(CallInfo(f"l{i}", agent.slug, "bench", "demo", RATE, "test"))
            sessions.append(s)
            events.append(log)
        # Each caller: its own script of (frames, is the last voiced frame) with a stagger.
        latencies: list[float] = []
        feeds: list[list[bytes]] = [[] for _ in range(n)]
        ends: list[dict[int, int]] = [{} for _ in range(n)]  # frame index -> question number

        for i in range(n):
            script = feeds[i]
            # The greeting, then callers spread over a ~10 s question-and-answer cycle.
            script.extend([silence] * (300 + 500 * i // n))
            for k in range(turns):
                q = questions[(i + k) % len(questions)]
                for j in range(0, q.size, FRAME):
                    chunk = q[j : j + FRAME]
                    if chunk.size < FRAME:
                        chunk = np.concatenate((chunk, np.zeros(FRAME - chunk.size, np.int16)))
                    script.append(chunk.astype("<i2").tobytes())
                ends[i][len(script)] = k
                script.extend([silence] * 25)  # a breath after the answer
        positions = [0] * n
        spoke_at: list[float | None] = [None] * n
        waiting = [False] * n
        missing = 0
        cpu, wall = time.process_time(), time.perf_counter()
        t0 = loop.time()
        tick = 0
        while any(p < len(f) for p, f in zip(positions, feeds, strict=True)) or any(waiting):
            tick += 1
            await clock.sleep_until(t0 + tick * 0.02)
            now = clock.now()
            for i, s in enumerate(sessions):
                spoke = spoke_at[i]
                if waiting[i] and spoke is not None:
                    s.on_audio(silence)
                    done = [e for e in events[i] if isinstance(e, TurnLatency)]
                    if done and s.state is AgentState.LISTENING and now - spoke > 1.0:
                        first = done[-1].first_frame
                        if first is not None:
                            latencies.append(first - spoke)
                        waiting[i] = False
                    elif now - spoke > 60.0:
                        missing += 1  # no answer within 60 s
                        waiting[i] = False
                elif positions[i] < len(feeds[i]):
                    s.on_audio(feeds[i][positions[i]])
                    positions[i] += 1
                    if positions[i] in ends[i]:  # the question's last voiced frame
                        spoke_at[i] = now + 0.02
                        if verbose:
                            print(f"  call {i} {now + 0.02 - t_start:8.2f} question ends")
                        events[i].clear()
                        waiting[i] = True
                else:
                    s.on_audio(silence)
                s.next_frame()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        for s in sessions:
            s.on_hangup("bench over")
        if latencies:
            latencies.sort()
            p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
            print(
                f"{n:>5} {cpu / wall:>6.2f} {len(latencies):>3}/{n * turns:<2}"
                f"{statistics.median(latencies):>7.2f}s {p95:>7.2f}s {latencies[-1]:>5.2f}s"
                + (f"  ({missing} unanswered within 60 s)" if missing else "")
            )
        else:
            print(f"{n:>5} {cpu / wall:>6.2f}   0/{n * turns}  (no answer)")
    vad_task.cancel()


def turn_batches(rounds: int = 4) -> None:
    """Smart Turn's cost per input when B inputs share one onnxruntime run (one thread)."""
    detector = SmartTurnDetector()
    session = detector._loaded().session
    features = SmartTurnDetector.features(question(16000)[: 3 * 16000].tobytes())
    costs: dict[int, list[float]] = {b: [] for b in (1, 2, 4, 8)}
    for _ in range(rounds):
        for b, seen in costs.items():
            inputs = np.repeat(features, b, axis=0)
            session.run(None, {"input_features": inputs})
            reps = max(2, 8 // b)
            t = time.thread_time()
            for _ in range(reps):
                session.run(None, {"input_features": inputs})
            seen.append((time.thread_time() - t) / reps / b)
    print(machine(None))
    for b, seen in costs.items():
        print(f"  B={b}: {1e3 * statistics.median(seen):.1f} ms per input (median of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--standins", action="store_true", help="real time, instant STT/LLM/TTS")
    mode.add_argument("--local", action="store_true", help="real time, the local models")
    mode.add_argument(
        "--turn-batches", action="store_true", help="Smart Turn's cost per input at B=1..8"
    )
    parser.add_argument("--sessions", default=None, help="N, or N,N,... with --standins")
    parser.add_argument("--calls", default="1,2,3,4", help="with --local: N,N,...")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--turns", type=int, default=6, help="with --local: questions per call")
    parser.add_argument(
        "--no-turn-model",
        action="store_true",
        help="virtual mode: silence-only endpointing (turn_detection.model: vad)",
    )
    parser.add_argument(
        "--echo-gate", action="store_true", help="virtual mode: the echo gate on (its default)"
    )
    parser.add_argument("--verbose", action="store_true", help="with --local: every event")
    parser.add_argument("--vad-rate", type=int, default=8000, choices=(8000, 16000))
    parser.add_argument(
        "--transcript",
        default="how much does it cost",
        help="what the instant STT hears (ending in '?': the question rule ends the turn and "
        "the turn model is not run)",
    )
    parser.add_argument(
        "--turn-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="one caller turn (the question, then silence) every SECONDS (default: the question "
        "then 3.5 s of silence, ~5.8 s); a real caller's turn comes every ~6-15 s",
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="CPU to pin to (real-time modes; default the last)"
    )
    args = parser.parse_args()
    if args.turn_every is not None:
        try:
            question(RATE, every=args.turn_every)
        except ValueError as exc:
            parser.error(str(exc))
    configure_logging("console", "warning")
    cpu_id = None
    if args.standins or args.local:
        cpu_id = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu_id})
    if args.turn_batches:
        turn_batches()
    elif args.local:
        counts = [int(c) for c in args.calls.split(",")]
        asyncio.run(run_local(counts, args.turns, cpu_id, args.verbose))
    elif args.standins:
        counts = [int(c) for c in (args.sessions or "100,200,300").split(",")]
        asyncio.run(
            run_standins(
                counts,
                args.seconds or 20.0,
                args.vad_rate,
                args.transcript,
                cpu_id,
                args.turn_every,
            )
        )
    else:
        asyncio.run(
            run_virtual(
                int(args.sessions or 100),
                args.seconds or 30.0,
                args.vad_rate,
                args.transcript,
                not args.no_turn_model,
                args.echo_gate,
                args.turn_every,
            )
        )


if __name__ == "__main__":
    main()
