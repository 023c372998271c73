"""Frame link codec benchmark: encode + decode of one 20 ms tick of a worker, against pickle.

The record measured is what a pjsua2 worker sends every 20 ms: one AUDIO record carrying the
frames of its 4 calls, 160 samples (8 kHz, 320 bytes) each. The script times ``encode`` and
``RecordDecoder.feed`` separately and together (best of several rounds), and the same payload
through ``pickle.dumps``/``pickle.loads`` as the in-process reference, then prints frames per
second, microseconds per 20 ms tick per call, the share of one core that costs per call
(50 ticks per second), and the ratio to pickle. With ``--link`` it also pushes ticks through a
real FrameLink over a unix socket pair (writer task, batching, reader, seq-gap accounting).

Usage::

    python bench/framelink.py
    python bench/framelink.py --calls 4 --samples 160 --seconds 1 --link
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import platform
import socket
import time
from collections.abc import Callable

from sipserver.rtp.framelink import Audio, AudioFrame, FrameLink, RecordDecoder, encode


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--samples", type=int, default=160, help="samples per frame per call")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per codec measurement")
    parser.add_argument("--link", action="store_true", help="also run FrameLink over a socket")
    parser.add_argument("--ticks", type=int, default=50_000, help="ticks for --link")
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    bench_codec(args.calls, args.samples, args.seconds)
    if args.link:
        asyncio.run(bench_link(args.calls, args.samples, args.ticks))


if __name__ == "__main__":
    main()
