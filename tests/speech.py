"""Speech for tests: espeak-ng phrases as PCM, WAV files, and what Whisper hears in a recording.

espeak-ng (Debian package) speaks; sox converts without dither (``-D``: with dither the same
phrase gives Whisper a different clip on every run, and its transcript changes). Transcripts use
the project's offline Whisper, the model the agents run. What a test asserts about a transcript
is its key words, never a word error rate: see tests/integration/test_local_models.py.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sipserver.media.resample import resample

if TYPE_CHECKING:
    from sipserver.pipeline.providers.local_stt import WhisperStt

__all__ = ["espeak", "read_wav", "transcribe", "transcribe_async", "write_wav"]


HEARD_COST = re.compile(r"\b(much|cost)\b", re.IGNORECASE)
"""What tiny.en keeps of the tests' espeak-ng "How much does it cost?" at 8 kHz: "How much done
it cost?", "How much none is caught?" or "How much none is cop?", depending on the CPU, the
encoder window and the prompt (issue 18). Tests of what carries a transcript (records, AI
Listens) look for either key word, not for one model's spelling."""


def espeak(text: str, tmp: Path, *, rate: int, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng as 16-bit mono samples at ``rate`` (files under ``tmp``)."""
    raw, converted = tmp / "espeak.wav", tmp / f"espeak-{rate}.raw"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, timeout=30)
    subprocess.run(
        ["sox", "-D", str(raw), "-t", "raw", "-r", str(rate), "-c", "1", "-b", "16",
         "-e", "signed-integer", str(converted)],
        check=True,
        timeout=30,
    )  # fmt: skip
    return np.fromfile(converted, dtype="<i2")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """``samples`` as a 16-bit mono WAV file at ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """(rate, samples) of a 16-bit mono WAV file."""
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def transcribe_async(samples: np.ndarray, rate: int, stt: WhisperStt | None = None) -> str:
    """What Whisper hears in ``samples`` (any rate), lower case."""
    from sipserver.pipeline.providers.local_stt import WhisperStt  # loads CTranslate2: on use

    stt = stt or WhisperStt()
    pcm = resample(samples.astype("<i2").tobytes(), rate, stt.sample_rate)
    return (await stt.transcribe(pcm)).text.lower()


def transcribe(samples: np.ndarray, rate: int) -> str:
    """:func:`transcribe_async` from synchronous code (runs its own event loop)."""
    return asyncio.run(transcribe_async(samples, rate))
