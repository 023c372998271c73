"""Resampling: a tone keeps its pitch, streams give the same length as whole buffers."""

from __future__ import annotations

import numpy as np

from sipserver.media.resample import Resampler, resample


def test_resampling_keeps_a_tone() -> None:
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    up = np.frombuffer(resample(tone, 8000, 16000), "<i2")
    assert up.size == 16000
    spectrum = np.abs(np.fft.rfft(up[2000:14000] * np.hanning(12000)))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 3
    stream = Resampler(8000, 16000)
    pieces = [stream.process(tone[i : i + 320]) for i in range(0, len(tone), 320)]
    pieces.append(stream.process(b"", last=True))
    assert abs(len(b"".join(pieces)) // 2 - 16000) <= 16
    assert Resampler(8000, 8000).process(tone) == tone
