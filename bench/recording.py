"""Call recording benchmark: CPU per second of call audio, 50 calls on one encoder thread.

Each call is fed the same 30 s conversation (espeak-ng turns: the caller asks, the agent answers,
with pauses, over a faint line noise on the caller's side) one 20 ms tick at a time, every call
per tick in turn as a media clock would, as fast as the feeding loop goes. All calls share one
:class:`~sipserver.media.recording.RecordingEncoder` (its queue sized so nothing is dropped:
the figure is the whole cost). Measured per configuration (format x channels x rate): the
process's CPU seconds (all threads) from the first ``add`` until every file is finished,
split into the feeding thread (``add``/``close``: what a call's media clock pays) and the rest
(the encoder thread), divided by the seconds of call audio recorded. 1 ms of CPU per
call-second is 0.1% of a core per call.

Usage::

    python bench/recording.py                          # 50 calls x 30 s, every configuration
    python bench/recording.py --calls 10 --seconds 10 --formats opus --rates 8000
    python bench/recording.py --formats opus --opus application=voip,compression_level=10
    python bench/recording.py --formats opus --channels stereo --rates 16000 --clock 20

``--clock S`` also runs a realtime 20 ms clock on the main thread feeding the calls for S
seconds, without and with recording, and prints how late its ticks ran: the encoder thread
shares the process (and the GIL) with the media clock, this is what that costs the clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from sipserver.media import recording
from sipserver.media.recording import CallRecording, RecordingEncoder

CALLER_TURNS = (
    "Hello, I would like to know how much it costs to call Lakeside from here.",
    "And what about calls on the weekend, are they cheaper?",
    "Great, thank you very much for your help.",
)
AGENT_TURNS = (
    "Calls to Lakeside cost five cents a minute during the day.",
    "Yes, on weekends every call is half price, all day long.",
    "You are welcome. Have a nice day!",
)


def espeak(text: str, rate: int, voice: str, tmp: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, int16 at ``rate``."""
    path = tmp / "turn.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
    with wave.open(str(path), "rb") as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        src = w.getframerate()
    return soxr.resample(raw, src, rate).astype(np.int16)


def conversation(rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(caller, agent) tracks of ``seconds``: the turns alternate with 0.7 s pauses, repeated
    to fill the length; the caller's track carries line noise (about -60 dBFS) throughout."""
    n = int(seconds * rate)
    caller = np.zeros(n, np.int16)
    agent = np.zeros(n, np.int16)
    pause = int(0.7 * rate)
    with tempfile.TemporaryDirectory() as tmp:
        turns = [
            (espeak(c, rate, "en-us", Path(tmp)), espeak(a, rate, "en-us+f3", Path(tmp)))
            for c, a in zip(CALLER_TURNS, AGENT_TURNS, strict=True)
        ]
    pos = pause
    while pos < n:
        for asked, answered in turns:
            for track, speech in ((caller, asked), (agent, answered)):
                end = min(n, pos + speech.size)
                if pos < end:
                    track[pos:end] = speech[: end - pos]
                pos += speech.size + pause
    noise = np.random.default_rng(7).normal(0.0, 30.0, n)
    caller = np.clip(caller + noise, -32768, 32767).astype(np.int16)
    return caller, agent


def run(
    fmt: str, channels: str, rate: int, calls: int, caller: np.ndarray, agent: np.ndarray
) -> dict[str, float]:
    """Record ``calls`` calls of the conversation; the figures of the run."""
    size = rate // 50
    ticks = caller.size // size
    caller_frames = [caller[i * size : (i + 1) * size].tobytes() for i in range(ticks)]
    agent_frames = [agent[i * size : (i + 1) * size].tobytes() for i in range(ticks)]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        encoder = RecordingEncoder(max_chunks=calls * (ticks // 50 + 1))
        wall0, cpu0, feed0 = time.perf_counter(), time.process_time(), time.thread_time()
        recs = [
            CallRecording(
                Path(tmp) / f"{i}", sample_rate=rate, channels=channels, format=fmt, encoder=encoder
            )
            for i in range(calls)
        ]
        for k in range(ticks):
            frames = [caller_frames[k]]
            for rec in recs:
                rec.add(frames, agent_frames[k])
        for rec in recs:
            rec.close()
        feed = time.thread_time() - feed0
        files = [rec.future.result(timeout=600) for rec in recs]
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        encoder.stop()
        stats = encoder.stats()
    audio = sum(f.duration for f in files)
    return {
        "audio_s": audio,
        "wall_s": wall,
        "cpu_ms_per_s": cpu / audio * 1000,
        "feed_ms_per_s": feed / audio * 1000,
        "encode_ms_per_s": (cpu - feed) / audio * 1000,
        "kb_per_s": sum(f.bytes for f in files) / audio / 1000,
        "dropped": stats["dropped_chunks"],
        "errors": stats["errors"],
    }


def clock(
    calls: int, seconds: float, rate: int, caller: np.ndarray, agent: np.ndarray, record: bool
) -> dict[str, float]:
    """A realtime 20 ms media clock on this thread feeding ``calls`` calls for ``seconds``
    (``record``: each tick also goes to the calls' recordings, encoded on the encoder thread);
    how late its ticks ran, ms."""
    size = rate // 50
    ticks = caller.size // size
    caller_frames = [caller[i * size : (i + 1) * size].tobytes() for i in range(ticks)]
    agent_frames = [agent[i * size : (i + 1) * size].tobytes() for i in range(ticks)]
    late: list[float] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        encoder = RecordingEncoder()
        recs = [
            CallRecording(Path(tmp) / f"{i}", sample_rate=rate, encoder=encoder)
            for i in range(calls if record else 0)
        ]
        sink: list[bytes] = []
        start = time.perf_counter()
        for t in range(int(seconds * 50)):
            due = start + t * 0.020
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            late.append((time.perf_counter() - due) * 1000)
            k = t % ticks
            frames = [caller_frames[k]]
            if record:
                for rec in recs:
                    rec.add(frames, agent_frames[k])
            else:  # the same loop, the frames going nowhere
                for _ in range(calls):
                    sink.append(agent_frames[k])
                sink.clear()
        for rec in recs:
            rec.close()
        for rec in recs:
            rec.future.result(timeout=600)
        encoder.stop()
        dropped = encoder.stats()["dropped_chunks"]
    values = np.array(late)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "dropped": dropped,
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--formats", default="opus,wav")
    parser.add_argument("--channels", default="stereo,mixed")
    parser.add_argument("--rates", default="8000,16000")
    parser.add_argument(
        "--opus",
        default="",
        help="libopus options replacing the module's, e.g. application=voip,compression_level=10",
    )
    parser.add_argument(
        "--clock",
        type=float,
        default=0.0,
        help="also run a realtime 20 ms clock for this many seconds, without and with recording "
        "(stereo opus, the first rate), and print how late its ticks ran",
    )
    args = parser.parse_args()
    if args.opus:
        recording.OPUS_OPTIONS.update(dict(kv.split("=", 1) for kv in args.opus.split(",")))
    print(f"machine: {machine()}")
    print(f"opus options: {recording.OPUS_OPTIONS}")
    print(f"opus bit/s per channel: {recording.OPUS_BITRATE_PER_CHANNEL}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.calls} calls x {args.seconds:g} s each; load average before: {load}")
    print()
    header = (
        f"{'format':6} {'channels':8} {'rate':>5} | {'CPU ms/call-s':>13} {'% core/call':>11} "
        f"{'add()':>7} {'encoder':>7} | {'KB/s':>5} {'wall s':>6} {'x realtime':>10} "
        f"{'dropped':>7}"
    )
    print(header)
    print("-" * len(header))
    tracks = {rate: conversation(rate, args.seconds) for rate in map(int, args.rates.split(","))}
    for fmt in args.formats.split(","):
        for channels in args.channels.split(","):
            for rate, (caller, agent) in tracks.items():
                r = run(fmt, channels, rate, args.calls, caller, agent)
                print(
                    f"{fmt:6} {channels:8} {rate:>5} | {r['cpu_ms_per_s']:>13.3f} "
                    f"{r['cpu_ms_per_s'] / 10:>10.3f}% {r['feed_ms_per_s']:>7.3f} "
                    f"{r['encode_ms_per_s']:>7.3f} | {r['kb_per_s']:>5.1f} {r['wall_s']:>6.1f} "
                    f"{r['audio_s'] / r['wall_s']:>10.0f} {r['dropped'] + r['errors']:>7.0f}"
                )
    if args.clock:
        rate = next(iter(tracks))
        print()
        print(f"realtime clock, {args.calls} calls, {args.clock:g} s, {rate} Hz stereo opus:")
        for record in (False, True):
            r = clock(args.calls, args.clock, rate, *tracks[rate], record)
            print(
                f"  {'recording' if record else 'no recording':12} tick lateness ms: "
                f"p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}  "
                f"dropped chunks {r['dropped']:.0f}"
            )
    print()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}; threads left: {threading.active_count()}")
    print("CPU ms/call-s: process CPU (all threads) per second of call audio recorded;")
    print("add(): the feeding thread's share; encoder: the encoder thread's (and the rest).")


if __name__ == "__main__":
    main()
