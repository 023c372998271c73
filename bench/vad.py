"""Silero VAD benchmark: raw batched inference vs the whole VadBatcher path, per stream per window.

Raw: ``SileroModel.infer`` on prepared batches of B = 1, 32 and 100 windows of speech-like audio
(recurrent state carried between calls), one thread. Batcher: 100 ``VadStream`` s, each pushed
20 ms frames as a call delivers them, with ``VadBatcher.run_once`` every 32 ms of audio; that
adds re-chunking, gathering the batch, the segmenter and bookkeeping to the same inference.
Printed per sample rate: milliseconds per stream per 32 ms window, the share of one core that is
per call, and the ratio batcher / raw at the same batch size (target <= 1.2), then the batcher
path with a no-op model (bookkeeping alone). Each figure is the best of several rounds, since
other processes may share the machine.

Usage::

    python bench/vad.py
    python bench/vad.py --seconds 5 --rounds 5 --streams 100
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from sipserver.pipeline.vad import SileroModel, VadBatcher


def speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Harmonic bursts over noise: windows the model scores anywhere between 0 and 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * 1.3 * t) > 0).astype(float)
    x = 6000 * envelope * voiced + rng.normal(0, 500, len(t))
    return np.clip(x, -32768, 32767).astype(np.int16)


def best(fn: Callable[[], float], rounds: int) -> float:
    """The smallest of ``rounds`` results of ``fn`` (seconds per unit)."""
    return min(fn() for _ in range(rounds))


def raw_cost(model: SileroModel, batch: int, windows: int, rounds: int) -> float:
    """Seconds per stream per window of ``infer`` on batches of ``batch`` random windows."""
    audio = speechlike(4.0, model.sample_rate)
    rng = np.random.default_rng(1)
    size = model.context + model.window
    starts = rng.integers(0, len(audio) - size, size=(16, batch))
    inputs = [(audio[s[:, None] + np.arange(size)] / 32768).astype(np.float32) for s in starts]
    calls = max(1, windows // batch)

    def once() -> float:
        state = model.initial_state(batch)
        begin = time.perf_counter()
        for i in range(calls):
            _, state = model.infer(inputs[i % len(inputs)], state)
        return (time.perf_counter() - begin) / (calls * batch)

    once()  # warm up
    return best(once, rounds)


class NoModel(SileroModel):
    """The model's shape without inference: what the batcher path costs by itself."""

    def __init__(self, model: SileroModel) -> None:  # no onnxruntime session
        for name in ("sample_rate", "window", "context", "path"):
            setattr(self, name, getattr(model, name))

    def infer(self, inputs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(inputs), 0.6, dtype=np.float32), state


def batcher_cost(model: SileroModel, streams: int, seconds: float, rounds: int) -> float:
    """Seconds per stream per window through VadBatcher, 20 ms pushes, run_once per 32 ms."""
    rate = model.sample_rate
    frame = rate // 50
    clips = [speechlike(seconds, rate, seed) for seed in range(streams)]
    frames = len(clips[0]) // frame

    def once() -> float:
        batcher = VadBatcher(model)
        opened = [batcher.open_stream() for _ in range(streams)]
        pcm = [[c[i * frame : (i + 1) * frame] for i in range(frames)] for c in clips]
        begin = time.perf_counter()
        next_run = 32  # ms of audio at which run_once is due
        for tick in range(frames):
            for s, p in zip(opened, pcm, strict=True):
                s.push(p[tick])
            if (tick + 1) * 20 >= next_run:
                batcher.run_once()
                next_run += 32
        batcher.run_once()
        elapsed = time.perf_counter() - begin
        for s in opened:
            s.events().clear()  # what sessions do
        assert sum(s.dropped_windows for s in opened) == 0
        return elapsed / batcher.windows

    once()
    return best(once, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per stream per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores (other processes may be running); onnxruntime single thread"
    )
    for rate in (8000, 16000):
        model = SileroModel(rate)
        windows = int(args.seconds * rate / model.window) * args.streams
        print(f"\n{rate} Hz: window {model.window} + context {model.context} samples (32 ms)")
        raw = {}
        for b in (1, 32, args.streams):
            raw[b] = raw_cost(model, b, min(windows, 2000 * b), args.rounds)
            print(
                f"  raw infer B={b:<4}           {raw[b] * 1e3:7.4f} ms/stream/window"
                f"  {raw[b] / 0.032 * 100:6.3f}% core/call"
            )
        full = batcher_cost(model, args.streams, args.seconds, args.rounds)
        print(
            f"  VadBatcher {args.streams} streams, 20 ms pushes "
            f"{full * 1e3:7.4f} ms/stream/window  {full / 0.032 * 100:6.3f}% core/call"
            f"  x{full / raw[args.streams]:.2f} vs raw B={args.streams} (target <= 1.2)"
        )
        alone = batcher_cost(NoModel(model), args.streams, args.seconds, args.rounds)
        print(
            f"  of which bookkeeping (no-op model)       {alone * 1e3:7.4f} ms/stream/window"
            f"  = {alone / raw[args.streams] * 100:.0f}% of raw B={args.streams}"
        )


if __name__ == "__main__":
    main()
