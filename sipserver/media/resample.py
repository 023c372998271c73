"""Sample-rate conversion of s16le mono PCM with soxr (high quality), whole buffers or streams.

The one resampler of every ingress and of the sessions: caller audio to the VAD's rate, turns
to the STT's rate, TTS output to the call's rate. Converting to the same rate is free (the
bytes are returned as they are).
"""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["Resampler", "resample"]


def resample(pcm: bytes, rate_in: int, rate_out: int) -> bytes:
    """Resample a whole s16le buffer (soxr, high quality); the same bytes when rates match."""
    if rate_in == rate_out or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, rate_in, rate_out)
    return np.asarray(out, dtype="<i2").tobytes()


class Resampler:
    """Streaming s16le resampler (soxr keeps its filter state between chunks).

    Args:
        rate_in: input sample rate in Hz.
        rate_out: output sample rate in Hz.
    """

    __slots__ = ("_stream", "rate_in", "rate_out")

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16")
        )

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        """Resample the next chunk (``last`` flushes the filter's tail)."""
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        out = self._stream.resample_chunk(samples, last=last)
        return np.asarray(out, dtype="<i2").tobytes()
