"""Cost of the offline models on this machine: Whisper tiny.en STT, Piper and espeak-ng TTS,
Smart Turn v3.2. Run as ``python bench/models.py``.

Each figure is the median of a few runs in this one process (other processes on the machine may
be competing for the cores; the load average is printed). RTF = processing time / audio duration.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import numpy as np
import soxr  # type: ignore[import-untyped]

from sipserver.pipeline.providers.local import EspeakTts, PiperTts, WhisperStt
from sipserver.pipeline.turn import SmartTurnDetector

UTTERANCE = (
    "Hello, I would like to know the opening hours of your office on Saturday morning, please."
)
PASSAGE = (
    "Our office opens early in the morning. It closes late in the afternoon. "
    "On Saturdays we are open until noon."
)
RUNS = 5


def espeak_16k(text: str) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    return subprocess.run(
        [
            "sox",
            "-D",
            "-t",
            "wav",
            "-",
            "-t",
            "raw",
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed",
            "-",
        ],
        input=wav,
        check=True,
        capture_output=True,
    ).stdout


async def median_seconds(action: Callable[[], Awaitable[object]], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main() -> None:
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")

    stt = WhisperStt()
    print(f"whisper tiny.en load: {stt.load():.2f} s (1 thread, int8)")
    pcm = espeak_16k(UTTERANCE)
    seconds = len(pcm) / 2 / 16000
    await stt.transcribe(pcm)  # first decode warms caches
    final = await median_seconds(lambda: stt.transcribe(pcm))
    interim = await median_seconds(lambda: stt.transcribe(pcm, final=False))
    half = pcm[: len(pcm) // 4 * 2]
    interim_half = await median_seconds(lambda: stt.transcribe(half, final=False))
    print(
        f"STT {seconds:.2f} s utterance: final {final * 1000:.0f} ms (RTF {final / seconds:.3f}), "
        f"interim {interim * 1000:.0f} ms, interim on the first half {interim_half * 1000:.0f} ms"
    )

    piper = PiperTts()
    print(f"piper joe-medium load: {piper.load():.2f} s (1 thread)")
    async for _ in piper.synthesize("Warm up."):
        pass
    firsts, totals, durations = [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        chunks = []
        async for chunk in piper.synthesize(PASSAGE):
            if not chunks:
                firsts.append(time.perf_counter() - started)
            chunks.append(chunk)
        totals.append(time.perf_counter() - started)
        durations.append(sum(map(len, chunks)) / 2 / piper.sample_rate)
    total, duration = statistics.median(totals), statistics.median(durations)
    print(
        f"TTS piper: first chunk {statistics.median(firsts) * 1000:.0f} ms, "
        f"{duration:.2f} s of speech in {total * 1000:.0f} ms (RTF {total / duration:.3f})"
    )

    espeak = EspeakTts()
    started = time.perf_counter()
    espeak_pcm = b"".join([c async for c in espeak.synthesize(PASSAGE)])
    elapsed = time.perf_counter() - started
    espeak_seconds = len(espeak_pcm) / 2 / espeak.sample_rate
    print(
        f"TTS espeak-ng: {espeak_seconds:.2f} s of speech in {elapsed * 1000:.0f} ms "
        f"(RTF {elapsed / espeak_seconds:.3f})"
    )
    piper_16k = np.asarray(
        soxr.resample(np.frombuffer(b"".join(chunks), "<i2"), piper.sample_rate, 16000),
        dtype="<i2",
    ).tobytes()
    print(f"piper -> whisper: {(await stt.transcribe(piper_16k)).text!r}")

    turn = SmartTurnDetector()
    print(f"smart turn v3.2 load: {turn.load():.2f} s (1 thread)")
    audio = pcm + bytes(6400)
    await turn.end_of_turn_probability(audio)
    per = await median_seconds(lambda: turn.end_of_turn_probability(audio), runs=20)
    direct = statistics.median(
        [_timed(lambda: turn._predict(turn._loaded().session, audio)) for _ in range(20)]
    )
    features = statistics.median(
        [_timed(lambda: SmartTurnDetector.features(audio)) for _ in range(20)]
    )
    print(
        f"turn: {per * 1000:.1f} ms per prediction through the executor, {direct * 1000:.1f} ms "
        f"direct ({features * 1000:.1f} ms of it computing "
        f"the log-mel features), p(done) = {await turn.end_of_turn_probability(audio):.3f}"
    )
    print(f"load average after: {os.getloadavg()}")


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


if __name__ == "__main__":
    asyncio.run(main())
