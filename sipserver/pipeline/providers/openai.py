"""OpenAI providers: speech-to-text, chat completions and text-to-speech through the official
``openai`` package, against OpenAI itself or any OpenAI-compatible server (``base_url``: vLLM,
llama.cpp's server, LiteLLM, ...).

- :class:`OpenAiLlm`: ``chat.completions`` with ``stream=True``; text deltas are yielded as they
  arrive, tool calls are assembled from their streamed fragments (:class:`ToolCallAssembler`)
  and yielded, with parsed JSON arguments, when the stream ends. Cancelling the consuming task
  closes the HTTP stream, so the server stops generating.
- :class:`OpenAiStt`: ``audio.transcriptions`` on a WAV built from the segment's PCM (16 kHz).
  The protocol hands over a finished segment, so the non-streaming request is used.
- :class:`OpenAiTts`: ``audio.speech`` with ``response_format="pcm"`` (s16le mono, 24 kHz for
  OpenAI), read as a stream: each chunk is yielded as it arrives.

Every failure of the API (connection, timeout, status, malformed reply) becomes a
:class:`~sipserver.pipeline.providers.base.ProviderError` whose message names the stage, the
model and the server; the session reports it and carries on.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import openai
from openai import AsyncOpenAI

from sipserver.pipeline.providers.base import (
    ChatMessage,
    LlmChunk,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolSpec,
    Transcript,
)

__all__ = [
    "DEFAULT_LLM_MODEL",
    "DEFAULT_STT_MODEL",
    "DEFAULT_TTS_MODEL",
    "DEFAULT_TTS_VOICE",
    "OpenAiLlm",
    "OpenAiSettings",
    "OpenAiStt",
    "OpenAiTts",
    "ToolCallAssembler",
    "chat_payload",
    "pcm_to_wav",
]

DEFAULT_LLM_MODEL: Final = "gpt-4o-mini"
DEFAULT_STT_MODEL: Final = "gpt-4o-mini-transcribe"
DEFAULT_TTS_MODEL: Final = "gpt-4o-mini-tts"
DEFAULT_TTS_VOICE: Final = "alloy"
OPENAI_PCM_RATE: Final = 24000
"""Rate of OpenAI's ``response_format="pcm"`` speech."""
NO_KEY: Final = "no-key"
"""API key sent to an OpenAI-compatible server configured without a credential (local servers
usually check none; the client library insists on some value)."""


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class OpenAiSettings:
    """Connection settings shared by the three stages.

    Attributes:
        model: model name sent with each request.
        api_key: the key, or None for a server that needs none (only with ``base_url``).
        base_url: an OpenAI-compatible server's ``.../v1`` URL; None: OpenAI.
        timeout: seconds a request may take (for streams: between two reads).
        max_retries: retries of a request that failed before any answer (connection errors,
            429 and 5xx); each adds latency a caller hears, hence the low default.
        where: the configuration key of the stage, for error messages.
    """

    model: str
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    timeout: float = 30.0
    max_retries: int = 1
    where: str = "openai"

    @property
    def server(self) -> str:
        """The server in human terms, for messages."""
        return self.base_url or "api.openai.com"

    def check(self) -> None:
        """Raise when no request can work.

        Raises:
            ProviderError: no key and no ``base_url`` (OpenAI itself always needs a key).
        """
        if self.api_key is None and self.base_url is None:
            raise ProviderError(
                f"{self.where}: provider openai needs an API key: set credential to an entry "
                "of credentials with an api_key (or a base_url for a server without keys)"
            )

    def client(self) -> AsyncOpenAI:
        """A client with these settings (one per provider instance, made on first use).

        Raises:
            ProviderError: see :meth:`check`.
        """
        self.check()
        return AsyncOpenAI(
            api_key=self.api_key or NO_KEY,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def error(self, exc: Exception) -> ProviderError:
        """A :class:`ProviderError` that says what failed, where, and why."""
        what = f"{self.where}: openai model {self.model!r} at {self.server}"
        if isinstance(exc, openai.APITimeoutError):
            reason = f"timed out after {self.timeout:g} s"
        elif isinstance(exc, openai.APIConnectionError):
            reason = f"cannot connect ({exc.__cause__ or exc})"
        elif isinstance(exc, openai.AuthenticationError):
            reason = f"authentication failed (HTTP {exc.status_code}); check the credential"
        elif isinstance(exc, openai.APIStatusError):
            reason = f"HTTP {exc.status_code}: {_api_message(exc)}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        return ProviderError(f"{what}: {reason}")


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    return exc.message


_FAILURES: Final = (openai.OpenAIError, ValueError, KeyError, TypeError, AttributeError)
"""What a request can raise besides cancellation: the library's errors, and malformed replies
from a non-conforming server."""


# ------------------------------------------------------------------------------------ LLM


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Assembles the tool calls of a streamed chat completion from their fragments.

    A stream sends each call in pieces keyed by ``index``: usually the id and name first, then
    the JSON arguments a few characters at a time. :meth:`add` takes every piece;
    :meth:`calls` returns the complete calls, in index order, with parsed arguments.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(
        self,
        index: int,
        *,
        id: str | None = None,
        name: str | None = None,
        arguments: str | None = None,
    ) -> None:
        """Take one fragment of call ``index``; every part is optional."""
        call = self._calls.setdefault(index, _PartialCall())
        if id:
            call.id = id
        if name and name != call.name:
            # OpenAI sends the name once; some servers repeat it whole in every fragment
            call.name += name
        if arguments:
            call.arguments.append(arguments)

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self) -> list[ToolCall]:
        """The complete calls.

        Raises:
            ProviderError: a call without a name, or arguments that are not a JSON object.
        """
        out: list[ToolCall] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise ProviderError(f"tool call #{index} has no function name")
            text = "".join(call.arguments).strip()
            try:
                arguments = json.loads(text) if text else {}
            except json.JSONDecodeError as exc:
                raise ProviderError(
                    f"tool call {call.name!r} has arguments that are not JSON: {text[:80]!r}"
                ) from exc
            if not isinstance(arguments, dict):
                raise ProviderError(
                    f"tool call {call.name!r} has arguments that are not a JSON object: "
                    f"{text[:80]!r}"
                )
            out.append(ToolCall(call.name, arguments))
        return out


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        # The session keeps no assistant tool_calls entries to answer, so a tool result is
        # given to the model as a system note rather than an orphan "tool" message.
        return {"role": "system", "content": f"Result of tool {message.name}: {message.content}"}
    return {"role": message.role, "content": message.content}


def _tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": dict(spec.parameters),
        },
    }


def chat_payload(
    model: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tool_choice: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of a streamed ``chat.completions.create`` request.

    ``tool_choice`` (only sent with tools): ``auto``, ``none``, ``required`` or the name of one
    tool, which forces that call.
    """
    payload: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in messages],
        "stream": True,
    }
    if tools:
        payload["tools"] = [_tool(t) for t in tools]
        if tool_choice in ("auto", "none", "required"):
            payload["tool_choice"] = tool_choice
        elif tool_choice is not None:
            payload["tool_choice"] = {"type": "function", "function": {"name": tool_choice}}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    return payload


class _OpenAiClient:
    """The lazily created client of a provider, and its release."""

    settings: OpenAiSettings
    _client: AsyncOpenAI | None

    def _get_client(self) -> AsyncOpenAI:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    async def close(self) -> None:
        """Close the HTTP connections (server shutdown); a later call opens new ones."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class OpenAiLlm(_OpenAiClient):
    """Chat completions, streamed, with tool calls.

    Args:
        settings: model, key, server and timeouts.
        temperature: sampling temperature; None: the server's default.
        max_tokens: cap on the reply's length; None: the server's default.
        tool_choice: ``auto``, ``none``, ``required`` or a tool name (forces that call);
            None: the server's default (``auto``).
    """

    name = "openai"

    def __init__(
        self,
        settings: OpenAiSettings,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tool_choice: str | None = None,
    ) -> None:
        self.settings = settings
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.tool_choice = tool_choice
        self._client: AsyncOpenAI | None = None
        settings.check()  # fail now, at configuration time, when no key can work

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        """Stream the reply: :class:`TextDelta` as they arrive, then any :class:`ToolCall`.

        Raises:
            ProviderError: the request or the stream failed, or a tool call is malformed.
        """
        payload = chat_payload(
            self.settings.model,
            messages,
            tools,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            tool_choice=self.tool_choice,
        )
        assembler = ToolCallAssembler()
        try:
            response = await self._get_client().chat.completions.create(**payload)
        except _FAILURES as exc:
            raise self.settings.error(exc) from exc
        try:
            async with response:  # closes the HTTP stream on cancellation or early exit
                async for chunk in response:
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            yield TextDelta(delta.content)
                        for fragment in delta.tool_calls or ():
                            function = fragment.function
                            assembler.add(
                                fragment.index,
                                id=fragment.id,
                                name=function.name if function else None,
                                arguments=function.arguments if function else None,
                            )
        except _FAILURES as exc:
            raise self.settings.error(exc) from exc
        try:
            calls = assembler.calls()
        except ProviderError as exc:
            raise ProviderError(f"{self.settings.where}: {exc}") from exc
        for call in calls:
            yield call


# ------------------------------------------------------------------------------------ STT


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """A WAV file (s16le mono) holding ``pcm``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


class OpenAiStt(_OpenAiClient):
    """Transcription of a finished speech segment (``gpt-4o-mini-transcribe``, ``whisper-1``...).

    Args:
        settings: model, key, server and timeouts.
        language: ISO 639-1 code sent when the session gives none; None: the model detects.
        prompt: text that guides spelling and vocabulary (names, products).
        sample_rate: rate of the PCM the session sends (the WAV says it to the server).
        vocabulary: True: sessions pass the agent's vocabulary and last question per request
            (``stt.vocabulary: auto``; off by default here: it sends knowledge-base terms to
            the API), added after ``prompt``.
    """

    name = "openai"
    native_turn_detection = False

    def __init__(
        self,
        settings: OpenAiSettings,
        *,
        language: str | None = None,
        prompt: str | None = None,
        sample_rate: int = 16000,
        vocabulary: bool = False,
    ) -> None:
        self.settings = settings
        self.language = language
        self.prompt = prompt
        self.sample_rate = sample_rate
        self.vocabulary = vocabulary
        self._client: AsyncOpenAI | None = None
        settings.check()

    async def transcribe(
        self,
        pcm: bytes,
        *,
        final: bool = True,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Transcribe ``pcm``; an interim request costs as much as a final one here.

        Raises:
            ProviderError: the request failed.
        """
        client = self._get_client()
        lang = language or self.language
        extra: dict[str, Any] = {}
        if lang:
            extra["language"] = lang
        context = " ".join(p for p in (self.prompt, prompt) if p)
        if context:
            extra["prompt"] = context
        try:
            result = await client.audio.transcriptions.create(
                file=("speech.wav", pcm_to_wav(pcm, self.sample_rate), "audio/wav"),
                model=self.settings.model,
                response_format="json",
                **extra,
            )
            text = result if isinstance(result, str) else result.text
        except _FAILURES as exc:
            raise self.settings.error(exc) from exc
        return Transcript(text.strip(), final=final, language=lang)


# ------------------------------------------------------------------------------------ TTS


class OpenAiTts(_OpenAiClient):
    """Speech as raw PCM, streamed (``gpt-4o-mini-tts``, ``tts-1``...).

    Args:
        settings: model, key, server and timeouts.
        voice: voice name (``alloy``, ``coral``, ...; local servers have their own).
        instructions: how to speak (tone, pace); only the gpt-4o-mini-tts family uses it.
        speed: 0.25 to 4.0; None: the server's default.
        sample_rate: rate of the PCM the server sends (OpenAI: 24000).
        chunk_size: bytes read at a time from the response.
    """

    name = "openai"

    def __init__(
        self,
        settings: OpenAiSettings,
        *,
        voice: str = DEFAULT_TTS_VOICE,
        instructions: str | None = None,
        speed: float | None = None,
        sample_rate: int = OPENAI_PCM_RATE,
        chunk_size: int = 4800,
    ) -> None:
        self.settings = settings
        self.voice = voice
        self.instructions = instructions
        self.speed = speed
        self.sample_rate = sample_rate
        self.chunk_size = chunk_size
        self._client: AsyncOpenAI | None = None
        settings.check()

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield whole s16le samples of ``text`` as the server sends them.

        Raises:
            ProviderError: the request or the stream failed.
        """
        client = self._get_client()
        extra: dict[str, Any] = {}
        if self.instructions:
            extra["instructions"] = self.instructions
        if self.speed is not None:
            extra["speed"] = self.speed
        carry = b""
        try:
            async with client.audio.speech.with_streaming_response.create(
                model=self.settings.model,
                voice=self.voice,
                input=text,
                response_format="pcm",
                **extra,
            ) as response:
                async for chunk in response.iter_bytes(self.chunk_size):
                    data = carry + chunk
                    whole = len(data) - len(data) % 2
                    carry = data[whole:]
                    if whole:
                        yield data[:whole]
        except _FAILURES as exc:
            raise self.settings.error(exc) from exc
