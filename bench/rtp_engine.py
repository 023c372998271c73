"""CPU and memory of the native RTP engine: N echo streams on one MediaClock in one process.

    python bench/rtp_engine.py                       # N = 100, 300, 500; PCMU; 20 s each
    python bench/rtp_engine.py --streams 500 --seconds 30 --codec PCMA
    python bench/rtp_engine.py --streams 300 --profile /tmp/rtp.prof   # cProfile the engine

For each N a fresh engine process (``--engine``) opens N RtpStreams from an RtpPortPool and
runs one MediaClock: every 20 ms, for every stream, ``write_frame(read_frame())`` (an echo
line). A load generator in ANOTHER process (``--generate``) has one UDP socket per stream and
sends each stream 50 packets/s (a tone, paced on absolute 20 ms deadlines, all streams' packets
of a tick sent back to back), and drains the echoes with epoll. The streams' SDP names port 9
of loopback, so each stream latches to its generator socket (symmetric RTP) on the first
packet, as behind a NAT.

Printed per N (over the measuring window, after a warm-up): engine CPU us per packet (received
+ sent), % of one core per call, late / skipped clock ticks, the tick's own duration (mean,
p99, max), RSS per stream, lost and concealed frames per call-minute, and what the generator
sent and got back.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------ generator


def generate(codec: str) -> None:
    """The load generator: ports (JSON list) on stdin; runs until SIGTERM, then prints JSON."""
    from sipserver.media.codecs import alaw_encode, ulaw_encode

    ports = json.loads(sys.stdin.readline())
    _raise_nofile()
    encode, pt = (ulaw_encode, 0) if codec == "PCMU" else (alaw_encode, 8)
    t = np.arange(8000) / 8000
    tone = (6000 * np.sin(2 * np.pi * 425 * t)).astype("<i2").tobytes()
    payloads = [encode(tone[k * 320 : (k + 1) * 320]) for k in range(25)]
    socks = []
    poller = select.epoll()
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        poller.register(s.fileno(), select.EPOLLIN)
        socks.append(s)
    by_fd = {s.fileno(): s for s in socks}
    ssrcs = [random.getrandbits(32) for _ in socks]
    header = struct.Struct("!BBHII")
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sent = received = errors = 0
    k = 0
    start = time.monotonic()
    while not stop:
        payload = payloads[k % len(payloads)]
        seq, ts = k & 0xFFFF, (k * 160) & 0xFFFFFFFF
        for s, ssrc in zip(socks, ssrcs, strict=True):
            try:
                s.send(header.pack(0x80, pt, seq, ts, ssrc) + payload)
                sent += 1
            except OSError:
                errors += 1
        k += 1
        # Sleep (not epoll_wait) until the next deadline, then drain what came back: a
        # receiver blocked in epoll would be woken by every echo, and on loopback the kernel
        # charges that wake-up to the engine's sendto (measured: 41 us per sendto instead of
        # 3-5 us). A real peer is another machine; its wake-ups are not the engine's cost.
        time.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
        for fd, _ in poller.poll(0):
            sock = by_fd[fd]
            while True:
                try:
                    sock.recv(2048)
                    received += 1
                except BlockingIOError:
                    break
    print(json.dumps({"sent": sent, "received": received, "errors": errors}), flush=True)


# ---------------------------------------------------------------------------------- micro


async def micro(codec: str, frames: int = 20000) -> dict[str, float]:
    """The engine's own Python cost, without sockets: a stream fed parsed-on-arrival packets
    through its datagram callback, read and written per frame with a no-op send."""
    from aiortc.rtp import RtpPacket

    from sipserver.rtp.rtp_stream import RtpStream
    from sipserver.rtp.sdp import build_offer, negotiate, parse_sdp

    rates = {"PCMU": 8000, "PCMA": 8000, "G722": 16000}
    stream = RtpStream(
        local_port=4000, sample_rate=rates[codec], rtp_timeout=0, jitter=None, release=lambda: None
    )

    class Null:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

        def close(self) -> None:
            pass

    stream._attach(Null(), Null())  # type: ignore[arg-type]
    body = build_offer(host="127.0.0.1", port=9, session_id=1, session_version=1, codecs=(codec,))
    negotiated = negotiate(parse_sdp(body))
    assert negotiated is not None
    stream.apply(negotiated)
    pt = negotiated.codec.payload_type
    payload = bytes(160)
    packets = [
        RtpPacket(
            payload_type=pt, sequence_number=k & 0xFFFF, timestamp=160 * k, ssrc=7, payload=payload
        ).serialize()
        for k in range(frames)
    ]
    source = ("127.0.0.1", 9)
    pcm = bytes(rates[codec] // 50 * 2)
    on_rtp, read, write = stream._on_rtp, stream.read_frame, stream.write_frame
    perf = time.perf_counter
    rx = rd = wr = 0.0
    for data in packets:  # one packet in, one frame read, one frame written: a call's 20 ms
        t0 = perf()
        on_rtp(data, source)
        t1 = perf()
        read()
        t2 = perf()
        write(pcm)
        t3 = perf()
        rx += t1 - t0
        rd += t2 - t1
        wr += t3 - t2
    assert stream.stats()["concealed_frames"] < 5, stream.stats()
    parse = time.perf_counter()
    for data in packets[:5000]:
        RtpPacket.parse(data)
    parse = (time.perf_counter() - parse) / 5000
    return {
        "rx_us": rx / frames * 1e6,
        "read_us": rd / frames * 1e6,
        "write_us": wr / frames * 1e6,
        "aiortc_parse_us": parse * 1e6,
    }


# --------------------------------------------------------------------------------- engine


async def engine(n: int, seconds: float, warmup: float, codec: str, profile: str | None) -> dict:
    from sipserver.rtp.rtp_stream import MediaClock, RtpPortPool
    from sipserver.rtp.sdp import build_offer, negotiate, parse_sdp

    _raise_nofile()
    rss0 = _rss_kb()
    first = random.randrange(20000, 40000, 2)
    pool = RtpPortPool("127.0.0.1", first, 2 * n + 400)
    offer = parse_sdp(
        build_offer(host="127.0.0.1", port=9, session_id=1, session_version=1, codecs=(codec,))
    )
    negotiated = negotiate(offer)
    assert negotiated is not None
    streams = []
    for _ in range(n):
        stream = await pool.open_stream(sample_rate=8000, rtp_timeout=0)
        stream.apply(negotiated)
        streams.append(stream)
    generator = subprocess.Popen(
        [sys.executable, __file__, "--generate", "--codec", codec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert generator.stdin is not None and generator.stdout is not None
    generator.stdin.write(json.dumps([s.local_port for s in streams]) + "\n")
    generator.stdin.close()

    durations: list[float] = []
    cpu_durations: list[float] = []
    measuring = False
    perf, thread_time = time.perf_counter, time.thread_time

    def tick() -> None:
        t0, c0 = perf(), thread_time()
        for stream in streams:
            stream.write_frame(stream.read_frame())
        if measuring:
            durations.append(perf() - t0)
            cpu_durations.append(thread_time() - c0)

    clock = MediaClock(tick)
    clock.start()
    await asyncio.sleep(warmup)

    def totals() -> dict[str, int]:
        keys = ("received", "sent", "lost", "concealed_frames", "late", "latched")
        return {key: sum(s.stats()[key] for s in streams) for key in keys}

    before = totals()
    late0, skipped0, ticks0 = clock.late_ticks, clock.skipped_ticks, clock.ticks
    rss1 = _rss_kb()
    profiler = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    measuring = True
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    measuring = False
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    after = totals()
    clock.stop()
    generator.send_signal(signal.SIGTERM)
    gen = json.loads(generator.stdout.readline() or "{}")
    generator.wait()
    for stream in streams:
        stream.close()
    packets = after["received"] - before["received"] + after["sent"] - before["sent"]
    minutes = wall / 60 * n
    ticks_ms = sorted(d * 1000 for d in durations)
    cpu_ms = sorted(d * 1000 for d in cpu_durations)
    return {
        "streams": n,
        "codec": codec,
        "seconds": round(wall, 1),
        "cpu_s": round(cpu, 2),
        "us_per_packet": round(cpu / max(1, packets) * 1e6, 2),
        "pct_core_per_call": round(cpu / wall / n * 100, 3),
        "pct_core_total": round(cpu / wall * 100, 1),
        "packets_per_s": round(packets / wall),
        "ticks": clock.ticks - ticks0,
        "late_ticks": clock.late_ticks - late0,
        "skipped_ticks": clock.skipped_ticks - skipped0,
        "tick_ms_mean": round(sum(ticks_ms) / max(1, len(ticks_ms)), 2),
        "tick_ms_p99": round(ticks_ms[int(len(ticks_ms) * 0.99)] if ticks_ms else 0, 2),
        "tick_ms_max": round(ticks_ms[-1] if ticks_ms else 0, 2),
        "tick_cpu_ms_mean": round(sum(cpu_ms) / max(1, len(cpu_ms)), 2),
        "tick_cpu_ms_p99": round(cpu_ms[int(len(cpu_ms) * 0.99)] if cpu_ms else 0, 2),
        "rss_kb_per_stream": round((rss1 - rss0) / n, 1),
        "rss_mb": round(rss1 / 1024, 1),
        "lost_per_call_min": round((after["lost"] - before["lost"]) / minutes, 2),
        "concealed_per_call_min": round(
            (after["concealed_frames"] - before["concealed_frames"]) / minutes, 2
        ),
        "latched": after["latched"],
        "generator": gen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,300,500", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per N")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--codec", choices=("PCMU", "PCMA"), default="PCMU", help="(--micro runs G722 too)"
    )
    parser.add_argument("--profile", help="write the engine's cProfile stats here (one N)")
    parser.add_argument(
        "--micro", action="store_true", help="only the per-packet Python cost, no sockets"
    )
    parser.add_argument("--engine", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.codec)
        return
    if args.micro:
        for codec in ("PCMU", "PCMA", "G722"):
            figures = asyncio.run(micro(codec))
            print(codec, " ".join(f"{k}={v:.2f}" for k, v in figures.items()))
        return
    if args.engine:
        result = asyncio.run(
            engine(args.engine, args.seconds, args.warmup, args.codec, args.profile)
        )
        print(json.dumps(result), flush=True)
        return
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    header = (
        "N",
        "us/pkt",
        "%core/call",
        "%core",
        "pkt/s",
        "late",
        "skipped",
        "tick wall mean/p99/max ms",
        "tick CPU mean/p99 ms",
        "KB/stream",
        "lost/c-min",
        "concealed/c-min",
        "gen sent/got",
    )
    print(" | ".join(header))
    for n in (int(x) for x in args.streams.split(",")):
        cmd = [
            sys.executable,
            __file__,
            "--engine",
            str(n),
            "--seconds",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
            "--codec",
            args.codec,
        ]
        if args.profile:
            cmd += ["--profile", args.profile]
        out = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if out.returncode:
            print(f"N={n}: engine failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        g = r["generator"]
        print(
            f"{n} | {r['us_per_packet']} | {r['pct_core_per_call']} | {r['pct_core_total']} | "
            f"{r['packets_per_s']} | {r['late_ticks']} | {r['skipped_ticks']} | "
            f"{r['tick_ms_mean']}/{r['tick_ms_p99']}/{r['tick_ms_max']} | "
            f"{r['tick_cpu_ms_mean']}/{r['tick_cpu_ms_p99']} | "
            f"{r['rss_kb_per_stream']} | "
            f"{r['lost_per_call_min']} | {r['concealed_per_call_min']} | "
            f"{g.get('sent')}/{g.get('received')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
