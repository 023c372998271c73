"""Frame link codec benchmark: encode + decode of one 20 ms tick of a worker, against pickle.

The record measured is what a pjsua2 worker sends every 20 ms: one AUDIO record carrying the
frames of its 4 calls, 160 samples (8 kHz, 320 bytes) each. The script times ``encode`` and
``RecordDecoder.feed`` separately and together (best of several rounds), and the same payload
through ``pickle.dumps``/``pickle.loads`` as the in-process reference, then prints frames per
second, microseconds per 20 ms tick per call, the share of one core that costs per call
(50 ticks per second), and the ratio to pickle. With ``--link`` it also pushes ticks through a
real FrameLink over a unix socket pair (writer task, batching, reader, seq-gap accounting).

With ``--relay`` it measures the relay of websocket calls to a call worker (sipserver/rtp/relay.py)
as it runs: a forked "worker" process hosts ``--relay-calls`` sessions in ``RelayedCalls`` (a
trivial session, so only the relay is timed), the parent plays the gateway: each call's own
20 ms tick (staggered, like the gateway's per-call tasks) gives a caller frame to a
``RemoteSession`` and takes ``next_frame``. Printed: CPU microseconds per frame per call on each
side (process CPU time over the run minus the same loop with local sessions, for main; the
worker's whole CPU time over the frames it answered), the round trip of a tick (record sent to
reply received) and the latency the relay adds in frames (a reply that arrives before the call's
next tick is played one frame later than a local session's).

Usage::

    python bench/framelink.py
    python bench/framelink.py --calls 4 --samples 160 --seconds 1 --link
    python bench/framelink.py --relay --relay-calls 100 --relay-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import platform
import socket
import time
from collections.abc import Callable

import structlog

from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.session import CallInfo, CallSession, frame_bytes
from sipserver.rtp.framelink import (
    Audio,
    AudioFrame,
    FrameLink,
    Ping,
    RecordDecoder,
    Stats,
    encode,
)
from sipserver.rtp.relay import RelayedCalls, RemoteSession, RemoteSessions


def best_rate(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Calls per second of ``fn``: the best of ``rounds`` runs of ``seconds / rounds`` each."""
    best = 0.0
    for _ in range(rounds):
        n = 0
        batch = 200
        start = time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def tick_record(calls: int, samples: int, seq: int = 0) -> Audio:
    pcm = os.urandom(samples * 2)
    return Audio(tuple(AudioFrame(c, seq, seq * samples, pcm) for c in range(calls)))


def report(name: str, ticks_per_s: float, calls: int, reference: float | None) -> None:
    us_per_tick_call = 1e6 / ticks_per_s / calls
    core_share = us_per_tick_call * 50 / 1e6
    ratio = "" if reference is None else f"  x{ticks_per_s / reference:5.2f} vs pickle"
    print(
        f"{name:<22} {ticks_per_s * calls:>12,.0f} frames/s  {us_per_tick_call:6.2f} us/tick/call"
        f"  {core_share * 100:6.3f}% core/call{ratio}"
    )


def bench_codec(calls: int, samples: int, seconds: float) -> None:
    record = tick_record(calls, samples)
    data = encode(record)
    decoder = RecordDecoder()
    assert decoder.feed(data) == [record]
    plain = [(f.call, f.seq, f.timestamp, f.pcm) for f in record.frames]
    pickled = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)

    def codec() -> None:
        decoder.feed(encode(record))

    def pickle_both() -> None:
        pickle.loads(pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL))

    print(f"record: {calls} calls x {samples} samples = {len(data)} bytes on the wire")
    ref = best_rate(pickle_both, seconds)
    report("pickle dumps+loads", ref, calls, None)
    report("encode", best_rate(lambda: encode(record), seconds), calls, None)
    report("decode", best_rate(lambda: decoder.feed(data), seconds), calls, None)
    report("encode+decode", best_rate(codec, seconds), calls, ref)
    report("pickle loads only", best_rate(lambda: pickle.loads(pickled), seconds), calls, None)


async def bench_link(calls: int, samples: int, ticks: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    sender = FrameLink(ra, wa, max_queued_frames=calls * ticks)
    receiver = FrameLink(rb, wb)
    pcm = os.urandom(samples * 2)
    received = 0

    async def consume() -> None:
        nonlocal received
        async for record in receiver.records():
            if isinstance(record, Audio):
                received += len(record.frames)

    consumer = asyncio.create_task(consume())
    start = time.perf_counter()
    for seq in range(ticks):
        sender.send(Audio(tuple(AudioFrame(c, seq, seq * samples, pcm) for c in range(calls))))
        if seq % 64 == 0:
            await asyncio.sleep(0)  # let the writer and the reader run, as a real loop would
    await sender.close(flush_timeout=60)
    await consumer
    elapsed = time.perf_counter() - start
    await receiver.close()
    assert received + sender.dropped_frames == calls * ticks
    print(
        f"FrameLink unix socket: {ticks} ticks in {elapsed * 1e3:.0f} ms -> "
        f"{received / elapsed:,.0f} frames/s, {elapsed / ticks / calls * 1e6:.2f} us/tick/call "
        f"(send+write+read+decode, both ends in one process); dropped {sender.dropped_frames}, "
        f"lost {receiver.lost_frames}"
    )


class _ConstantSession:
    """A session that costs nothing: the relay alone is measured."""

    hangup_requested: str | None = None

    def __init__(self, sample_rate: int) -> None:
        self._frame = bytes(frame_bytes(sample_rate))

    def on_start(self, info: CallInfo) -> None:
        pass

    def on_audio(self, frame: bytes) -> None:
        pass

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_hangup(self, reason: str) -> None:
        pass

    def next_frame(self) -> bytes:
        return self._frame


def _constant_factory(info: CallInfo, on_event: Callable[[SessionEvent], None]) -> CallSession:
    return _ConstantSession(info.sample_rate)


async def _relay_worker(sock: socket.socket) -> None:
    """The forked worker: answer every relayed record; report CPU time on PING."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = FrameLink(reader, writer, max_queued_frames=100_000)
    relayed = RelayedCalls(_constant_factory)
    cpu0 = time.process_time()
    frames = 0
    async for record in link.records():
        if isinstance(record, Ping):
            cpu = time.process_time() - cpu0
            link.send(Stats({"cpu_us": int(cpu * 1e6), "frames": frames}))
            continue
        if isinstance(record, Audio):
            frames += len(record.frames)
        for reply in relayed.handle(record):
            link.send(reply)
    await link.close()


async def _gateway_ticks(
    sessions: list[CallSession],
    seconds: float,
    on_tick: Callable[[int, int], None] | None,
    aligned: bool,
) -> int:
    """Each session on its own 20 ms tick task (like StreamCall): staggered over one tick, or
    ``aligned`` on one 20 ms grid (every call ticks in the same loop iteration)."""
    loop = asyncio.get_running_loop()
    rate = 8000
    pcm = os.urandom(frame_bytes(rate))
    ticks = int(seconds * 50)
    done = 0
    t0 = loop.time()

    async def run(index: int, session: CallSession) -> None:
        nonlocal done
        start = t0 if aligned else t0 + 0.02 * index / len(sessions)
        for tick in range(ticks):
            due = start + tick * 0.02
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if on_tick is not None:
                on_tick(index, tick)
            session.on_audio(pcm)
            session.next_frame()
            done += 1

    await asyncio.gather(*(run(i, s) for i, s in enumerate(sessions)))
    return done


async def bench_relay(calls: int, seconds: float, aligned: bool) -> None:
    info = CallInfo("bench", "echo", "a", "b", 8000, "websocket")
    # One log line per call start and end on both sides would only add noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # Baseline: the same tick tasks driving local sessions (what main does without a relay).
    local: list[CallSession] = [_ConstantSession(8000) for _ in range(calls)]
    cpu0 = time.process_time()
    local_frames = await _gateway_ticks(local, seconds, None, aligned)
    local_cpu = time.process_time() - cpu0

    main_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the worker
        main_sock.close()
        asyncio.run(_relay_worker(worker_sock))
        os._exit(0)
    worker_sock.close()
    reader, writer = await asyncio.open_unix_connection(sock=main_sock)
    link = FrameLink(reader, writer, max_queued_frames=100_000)
    remotes = RemoteSessions()
    sent_at: dict[tuple[int, int], float] = {}
    rtts: list[float] = []
    stats: asyncio.Future[Stats] = asyncio.get_running_loop().create_future()
    clock = time.perf_counter

    async def route() -> None:
        async for record in link.records():
            if isinstance(record, Audio):
                now = clock()
                for f in record.frames:
                    t = sent_at.pop((f.call, f.seq), None)
                    if t is not None:
                        rtts.append(now - t)
            elif isinstance(record, Stats) and not stats.done():
                stats.set_result(record)
            remotes.handle("w", record)

    router = asyncio.create_task(route())
    sessions: list[RemoteSession] = [remotes.open("w", link.send) for _ in range(calls)]
    for s in sessions:
        s.on_start(info)

    def stamp(index: int, tick: int) -> None:
        sent_at[(sessions[index].call, tick)] = clock()

    await asyncio.sleep(0.2)
    cpu0 = time.process_time()
    frames = await _gateway_ticks(list(sessions), seconds, stamp, aligned)
    main_cpu = time.process_time() - cpu0
    await asyncio.sleep(0.2)
    link.send(Ping(1))
    worker = (await asyncio.wait_for(stats, 10)).counters
    for s in sessions:
        s.on_hangup("bench over")
    await link.close()
    await router
    os.waitpid(pid, 0)

    rtts.sort()
    underflows = sum(s.underflows for s in sessions) - calls  # the first tick always underflows
    late = sum(r > 0.02 for r in rtts)
    main_us = (main_cpu / frames - local_cpu / local_frames) * 1e6
    worker_us = worker["cpu_us"] / max(1, worker["frames"])
    print(
        f"relay, {calls} calls x {seconds:.0f} s, ticks {'aligned' if aligned else 'staggered'} "
        f"({frames} ticks; worker answered {worker['frames']} frames)\n"
        f"  main:   {main_cpu / frames * 1e6:6.2f} us/tick/call with the relay, "
        f"{local_cpu / local_frames * 1e6:6.2f} local -> relay adds {main_us:6.2f} us\n"
        f"  worker: {worker_us:6.2f} us/frame/call (whole process, relay only)\n"
        f"  total relay cost {main_us + worker_us:6.2f} us per frame per call = "
        f"{(main_us + worker_us) * 50 / 1e4:.3f}% of a core per call\n"
        f"  round trip: p50 {rtts[len(rtts) // 2] * 1e3:.2f} ms, p99 "
        f"{rtts[int(len(rtts) * 0.99)] * 1e3:.2f} ms, max {rtts[-1] * 1e3:.2f} ms; "
        f"replies later than a tick {late} ({late / len(rtts):.3%}); underflows after the "
        f"first tick {underflows}\n"
        f"  added latency: 1 frame (20 ms) when the reply beats the next tick, "
        f"{1 - late / len(rtts):.3%} of ticks here"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--samples", type=int, default=160, help="samples per frame per call")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per codec measurement")
    parser.add_argument("--link", action="store_true", help="also run FrameLink over a socket")
    parser.add_argument("--ticks", type=int, default=50_000, help="ticks for --link")
    parser.add_argument("--relay", action="store_true", help="only the relay benchmark")
    parser.add_argument("--relay-calls", type=int, default=100)
    parser.add_argument("--relay-seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    if args.relay:
        for aligned in (False, True):
            asyncio.run(bench_relay(args.relay_calls, args.relay_seconds, aligned))
        return
    bench_codec(args.calls, args.samples, args.seconds)
    if args.link:
        asyncio.run(bench_link(args.calls, args.samples, args.ticks))


if __name__ == "__main__":
    main()
