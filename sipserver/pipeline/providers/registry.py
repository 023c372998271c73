"""Provider names of the configuration (``stt: local``, ``tts: {provider: local, engine: ...}``)
mapped to the classes that implement them.

A new provider is one module plus one entry in :data:`STT_PROVIDERS` or :data:`TTS_PROVIDERS`.
Models load lazily: building a provider is cheap; call its ``warm_up()`` at server start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...config import ProviderSpec
from .base import ProviderError, SpeechToText, TextToSpeech

__all__ = ["STT_PROVIDERS", "TTS_PROVIDERS", "make_stt", "make_tts"]


def _local_stt(options: Mapping[str, Any]) -> SpeechToText:
    from .local_stt import WhisperStt

    return WhisperStt.from_options(options)


_TTS_ENGINES = ("piper", "espeak")


def _local_tts(options: Mapping[str, Any]) -> TextToSpeech:
    from .local_tts import EspeakTts, PiperTts

    rest = dict(options)
    engine = rest.pop("engine", "piper")
    if engine == "piper":
        return PiperTts.from_options(rest)
    if engine == "espeak":
        return EspeakTts.from_options(rest)
    raise ProviderError(
        f"tts.engine: unknown {engine!r} for provider local; choose one of "
        f"{', '.join(_TTS_ENGINES)}"
    )


STT_PROVIDERS: dict[str, Callable[[Mapping[str, Any]], SpeechToText]] = {"local": _local_stt}
"""Speech-to-text factories by provider name; each takes the spec's options."""

TTS_PROVIDERS: dict[str, Callable[[Mapping[str, Any]], TextToSpeech]] = {"local": _local_tts}
"""Text-to-speech factories by provider name; each takes the spec's options."""


def _make(
    kind: str, table: Mapping[str, Callable[[Mapping[str, Any]], Any]], spec: ProviderSpec
) -> Any:
    factory = table.get(spec.provider)
    if factory is None:
        raise ProviderError(
            f"{kind}: unknown provider {spec.provider!r}; choose one of {', '.join(sorted(table))}"
        )
    try:
        return factory(spec.options)
    except TypeError as exc:  # a wrongly typed option reached a constructor
        raise ProviderError(f"{kind}: invalid options for provider {spec.provider}: {exc}") from exc


def make_stt(spec: ProviderSpec) -> SpeechToText:
    """The speech-to-text provider of ``spec`` (model not loaded yet).

    Raises:
        ProviderError: unknown provider name (the message lists the choices) or bad options.
    """
    stt: SpeechToText = _make("stt", STT_PROVIDERS, spec)
    return stt


def make_tts(spec: ProviderSpec) -> TextToSpeech:
    """The text-to-speech provider of ``spec`` (model not loaded yet).

    Raises:
        ProviderError: unknown provider or engine name (the message lists the choices) or bad
            options.
    """
    tts: TextToSpeech = _make("tts", TTS_PROVIDERS, spec)
    return tts
