"""LiveKit Inference (``type: livekit_inference``) through LiveKit's own clients.

A ``livekit_inference`` model names one credential (``api_key``, ``api_secret``; optional
``url``: the LiveKit project URL, and ``inference_url``: the gateway, else LiveKit's default) and
three model-ID strings: STT ``provider/model[:language]``, LLM ``provider/model``, TTS
``provider/model[:voice]``. The clients are the ``inference`` STT, LLM and TTS of the
``livekit-agents`` package, an optional extra (``pip install 'sipserver[livekit]'``); this module
adapts them to sipserver's protocols:

- :class:`LiveKitStt`: LiveKit's STT only streams, so each speech segment (already cut by our
  Silero VAD) is pushed into a fresh stream in 20 ms frames, the input is ended, and the final
  transcripts are joined.
- :class:`LiveKitLlm`: ``chat()`` with a ``ChatContext`` and raw-schema tools; text deltas and
  complete tool calls come back as ours.
- :class:`LiveKitTts`: ``synthesize()``; each synthesized frame is yielded as it arrives.

The clients are built on first use, inside the running event loop (they own aiohttp and httpx
sessions); :func:`parse_model_id` and the constructors check everything that can be checked
offline. Without the extra, :func:`livekit_stages` raises a :class:`ProviderError` naming the
install command.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sipserver.config import LiveKitInferenceModel
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LanguageModel,
    LlmChunk,
    ProviderError,
    SpeechToText,
    TextDelta,
    TextToSpeech,
    ToolCall,
    ToolSpec,
    Transcript,
)

__all__ = [
    "INSTALL_HINT",
    "LiveKitCredential",
    "LiveKitLlm",
    "LiveKitStt",
    "LiveKitTts",
    "ModelId",
    "livekit_available",
    "livekit_stages",
    "parse_model_id",
]

INSTALL_HINT: Final = "pip install 'sipserver[livekit]'"
STT_RATE: Final = 16000
"""Rate of the PCM our STT adapter takes (LiveKit's default for non-OpenAI STT models)."""
TTS_RATE: Final = 24000
"""Rate asked of LiveKit's TTS."""
_FRAME_MS: Final = 20


def livekit_available() -> bool:
    """True when ``livekit-agents`` (its ``inference`` module) can be imported."""
    try:
        return importlib.util.find_spec("livekit.agents") is not None
    except (ImportError, ValueError):  # parent package ``livekit`` missing
        return False


@dataclass(frozen=True, slots=True)
class ModelId:
    """A LiveKit Inference model-ID string, parsed.

    Attributes:
        provider: ``deepgram``, ``openai``, ``cartesia``...
        model: the provider's model (``nova-3``, ``gpt-4o-mini``; may contain ``/``).
        suffix: the language (STT) or voice (TTS) after ``:``, or None.
    """

    provider: str
    model: str
    suffix: str | None = None

    @property
    def name(self) -> str:
        """``provider/model`` without the suffix."""
        return f"{self.provider}/{self.model}"


def parse_model_id(kind: Literal["stt", "llm", "tts"], value: str) -> ModelId:
    """Split a model-ID string (the configuration has validated its shape).

    Raises:
        ProviderError: the string is not of the shape ``kind`` takes.
    """
    head, colon, suffix = value.partition(":")
    provider, slash, model = head.partition("/")
    if not (slash and provider and model) or (colon and (kind == "llm" or not suffix)):
        shape = {"stt": "provider/model[:language]", "llm": "provider/model"}.get(
            kind, "provider/model[:voice]"
        )
        raise ProviderError(f"{kind}: {value!r} is not {shape}")
    return ModelId(provider, model, suffix or None)


@dataclass(frozen=True, slots=True)
class LiveKitCredential:
    """What LiveKit's inference clients need (from one entry of ``credentials``)."""

    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    inference_url: str | None = None

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, str], where: str) -> LiveKitCredential:
        """Read ``credentials.<name>``.

        Raises:
            ProviderError: ``api_key`` or ``api_secret`` is missing.
        """
        missing = [key for key in ("api_key", "api_secret") if not entry.get(key)]
        if missing:
            keys = " and ".join(f"credentials.{name}.{key}" for key in missing)
            raise ProviderError(f"{where}.credential: {name!r} lacks {keys}")
        return cls(entry["api_key"], entry["api_secret"], entry.get("inference_url") or None)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of LiveKit's inference constructors."""
        extra = {"base_url": self.inference_url} if self.inference_url else {}
        return {"api_key": self.api_key, "api_secret": self.api_secret, **extra}


def _inference() -> Any:
    try:
        return importlib.import_module("livekit.agents.inference")
    except ImportError as exc:
        raise ProviderError(
            f"type livekit_inference needs LiveKit's clients: {INSTALL_HINT} ({exc})"
        ) from exc


def _failure(where: str, exc: Exception) -> ProviderError:
    return ProviderError(f"{where}: LiveKit Inference failed: {type(exc).__name__}: {exc}")


class _Http:
    """The aiohttp session LiveKit's STT/TTS clients use (outside a LiveKit job there is no
    shared one), made in the running loop on first use."""

    def __init__(self) -> None:
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# ------------------------------------------------------------------------------------ STT


class _AudioStage:
    """What LiveKit's STT and TTS clients share: built on first use with the model, the rate,
    the model ID's suffix (language or voice) and an HTTP session this object closes."""

    sample_rate: int
    _kind: Literal["stt", "tts"]
    """``stt`` or ``tts``: which model-ID rules apply."""
    _factory: str
    """Name of the client class in ``livekit.agents.inference``."""
    _suffix_option: str
    """The client's keyword for the model ID's ``:suffix``."""

    def __init__(self, model_id: str, credential: LiveKitCredential, *, where: str) -> None:
        self.model_id = parse_model_id(self._kind, model_id)
        self._credential = credential
        self._where = where
        self._http = _Http()
        self._client: Any = None

    def client(self) -> Any:
        """LiveKit's ``inference.STT``/``TTS`` (built on first use; call it in the event loop)."""
        if self._client is None:
            kwargs: dict[str, Any] = {"model": self.model_id.name, "sample_rate": self.sample_rate}
            if self.model_id.suffix:
                kwargs[self._suffix_option] = self.model_id.suffix
            factory = getattr(_inference(), self._factory)
            self._client = factory(
                **kwargs, http_session=self._http.session(), **self._credential.kwargs()
            )
        return self._client

    async def close(self) -> None:
        """Close the client's HTTP session."""
        await self._http.close()


class LiveKitStt(_AudioStage):
    """LiveKit Inference speech-to-text, one stream per speech segment.

    Args:
        model_id: ``provider/model[:language]``.
        credential: the LiveKit credential.
        where: configuration key, for messages.
    """

    name = "livekit"
    sample_rate = STT_RATE
    native_turn_detection = False
    _kind: Literal["stt", "tts"] = "stt"
    _factory = "STT"
    _suffix_option = "language"

    async def transcribe(
        self,
        pcm: bytes,
        *,
        final: bool = True,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Stream ``pcm`` (s16le 16 kHz) to LiveKit and join the final transcripts (``prompt``
        is ignored: the gateway's streams take none).

        Raises:
            ProviderError: the gateway failed or is unreachable.
        """
        rtc = importlib.import_module("livekit.rtc")
        lk_stt = importlib.import_module("livekit.agents.stt")

        lang = language or self.model_id.suffix
        texts: list[str] = []
        try:
            stream = self.client().stream(**({"language": lang} if lang else {}))
            async with stream:
                step = STT_RATE * _FRAME_MS // 1000 * 2
                for at in range(0, len(pcm), step):
                    piece = pcm[at : at + step]
                    stream.push_frame(
                        rtc.AudioFrame(piece, STT_RATE, 1, len(piece) // 2)  # s16le mono
                    )
                stream.end_input()
                async for event in stream:
                    if event.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT and event.alternatives:
                        texts.append(event.alternatives[0].text.strip())
        except ProviderError:
            raise
        except Exception as exc:  # the client raises its own APIError types and aiohttp's
            raise _failure(self._where, exc) from exc
        return Transcript(" ".join(t for t in texts if t), final=final, language=lang)


# ------------------------------------------------------------------------------------ LLM


class LiveKitLlm:
    """LiveKit Inference chat, streamed, with tool calls.

    Args:
        model_id: ``provider/model``.
        credential: the LiveKit credential.
        where: configuration key, for messages.
    """

    name = "livekit"

    def __init__(self, model_id: str, credential: LiveKitCredential, *, where: str) -> None:
        self.model_id = parse_model_id("llm", model_id)
        self._credential = credential
        self._where = where
        self._client: Any = None

    def client(self) -> Any:
        """LiveKit's ``inference.LLM`` (built on first use)."""
        if self._client is None:
            self._client = _inference().LLM(self.model_id.name, **self._credential.kwargs())
        return self._client

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        """Stream the reply: text deltas as they arrive, tool calls when complete.

        Raises:
            ProviderError: the gateway failed, or a tool call's arguments are not JSON.
        """
        lk_llm = importlib.import_module("livekit.agents.llm")
        chat = lk_llm.ChatContext.empty()
        for message in messages:
            if message.role == "tool":
                text = f"Result of tool {message.name}: {message.content}"
                chat.add_message(role="system", content=text)
            else:
                chat.add_message(role=message.role, content=message.content)
        try:
            stream = self.client().chat(chat_ctx=chat, tools=[_raw_tool(t) for t in tools])
            async with stream:
                async for chunk in stream:
                    delta = chunk.delta
                    if delta is None:
                        continue
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls:
                        yield _tool_call(call.name, call.arguments, self._where)
        except ProviderError:
            raise
        except Exception as exc:
            raise _failure(self._where, exc) from exc


def _raw_tool(spec: ToolSpec) -> Any:
    lk_llm = importlib.import_module("livekit.agents.llm")

    async def never_run(raw_arguments: dict[str, object]) -> None:
        """The session acts on our ToolCall; LiveKit never executes this."""

    schema = {
        "name": spec.name,
        "description": spec.description,
        "parameters": dict(spec.parameters),
    }
    return lk_llm.function_tool(never_run, raw_schema=schema)


def _tool_call(name: str, arguments: str, where: str) -> ToolCall:
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise ProviderError(f"{where}: tool call {name!r} has arguments that are not JSON") from exc
    if not isinstance(parsed, dict):
        raise ProviderError(f"{where}: tool call {name!r} has arguments that are not an object")
    return ToolCall(name, parsed)


# ------------------------------------------------------------------------------------ TTS


class LiveKitTts(_AudioStage):
    """LiveKit Inference text-to-speech.

    Args:
        model_id: ``provider/model[:voice]``.
        credential: the LiveKit credential.
        where: configuration key, for messages.
    """

    name = "livekit"
    sample_rate = TTS_RATE
    _kind: Literal["stt", "tts"] = "tts"
    _factory = "TTS"
    _suffix_option = "voice"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield s16le mono PCM at :attr:`sample_rate` as LiveKit sends it.

        Raises:
            ProviderError: the gateway failed or is unreachable.
        """
        try:
            stream = self.client().synthesize(text)
            async with stream:
                async for audio in stream:
                    data = bytes(audio.frame.data)
                    if data:
                        yield data
        except ProviderError:
            raise
        except Exception as exc:
            raise _failure(self._where, exc) from exc


# ------------------------------------------------------------------------------- building


def livekit_stages(
    model: LiveKitInferenceModel,
    credentials: Mapping[str, Mapping[str, str]],
    *,
    where: str,
) -> tuple[SpeechToText, LanguageModel, TextToSpeech]:
    """The STT, LLM and TTS of a ``livekit_inference`` model.

    Raises:
        ProviderError: ``livekit-agents`` is not installed (the message says how to install
            it), or the credential is unknown or incomplete.
    """
    if not livekit_available():
        raise ProviderError(
            f"{where}: type livekit_inference needs LiveKit's inference clients, which are not "
            f"installed: {INSTALL_HINT}"
        )
    entry = credentials.get(model.credential)
    if entry is None:
        raise ProviderError(f"{where}.credential: unknown credential {model.credential!r}")
    credential = LiveKitCredential.from_entry(model.credential, entry, where)
    return (
        LiveKitStt(model.stt, credential, where=f"{where}.stt"),
        LiveKitLlm(model.llm, credential, where=f"{where}.llm"),
        LiveKitTts(model.tts, credential, where=f"{where}.tts"),
    )
