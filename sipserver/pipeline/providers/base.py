"""Protocols of the pipeline's model stages: speech-to-text, language model, text-to-speech,
end-of-turn detection.

A provider is one module that implements some of these (``local.py``: offline models shipped in
PyPI wheels; ``openai.py``: any OpenAI-compatible API). Sessions only see these protocols, so a
new provider is one module plus one line in the registry. Audio crossing these interfaces is
signed 16-bit little-endian mono PCM (``bytes``) at the rate the stage declares in its
``sample_rate``; the session resamples once on its side.

Every call is a coroutine or an async iterator: providers run blocking model code in a thread
(``asyncio.to_thread`` or their own executor) so the event loop never stalls, and they honour
cancellation (a barge-in cancels the task that awaits them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ChatMessage",
    "LanguageModel",
    "LlmChunk",
    "ProviderError",
    "SpeechToText",
    "TextDelta",
    "TextToSpeech",
    "ToolCall",
    "ToolSpec",
    "Transcript",
    "TurnDetector",
]


class ProviderError(Exception):
    """A provider failed in a way the session reports and survives (bad key, server down...)."""


# --------------------------------------------------------------------------------------- STT


@dataclass(frozen=True, slots=True)
class Transcript:
    """Text recognised in one stretch of caller audio."""

    text: str
    """The words, stripped; empty when nothing was recognised."""
    final: bool = True
    """False for an interim (cheap, may change) result."""
    language: str | None = None
    """Detected or configured language (ISO 639-1, e.g. ``en``), when known."""
    end_of_turn: bool | None = None
    """Provider-native end-of-turn verdict (None: this provider has no opinion)."""

    @property
    def words(self) -> int:
        """Number of words in :attr:`text`."""
        return len(self.text.split())


class SpeechToText(Protocol):
    """Transcribes caller speech segments (cut by the VAD)."""

    name: str
    """Provider name for logs and metrics (``local``, ``openai``...)."""
    sample_rate: int
    """Rate of the PCM :meth:`transcribe` expects (Whisper: 16000)."""
    native_turn_detection: bool
    """True when :attr:`Transcript.end_of_turn` is meaningful (then it overrides the turn model)."""

    async def transcribe(
        self,
        pcm: bytes,
        *,
        final: bool = True,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Transcribe ``pcm`` (s16le mono at :attr:`sample_rate`).

        A provider that wants the call's context (the agent's vocabulary and last question,
        :mod:`sipserver.pipeline.vocabulary`) sets an attribute ``vocabulary = True``; sessions
        then pass ``prompt`` on final decodes. Providers that cannot use it ignore it.

        Args:
            pcm: the speech segment, prefix padding included.
            final: False asks for a cheap interim result on a segment still growing.
            language: ISO 639-1 hint, or None to detect.
            prompt: text said just before this segment (context that biases spelling), added
                to the provider's own configured prompt; None: none.
        """
        ...


# --------------------------------------------------------------------------------------- LLM


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation history."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    """Tool name for ``role="tool"`` messages."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    """JSON schema of the arguments."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the assistant's reply text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls a tool (complete: name and parsed arguments)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


LlmChunk = TextDelta | ToolCall
"""What :meth:`LanguageModel.stream` yields."""


class LanguageModel(Protocol):
    """Generates the agent's reply, streamed."""

    name: str
    """Provider name for logs and metrics."""

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        """Stream the reply to ``messages`` (system first): text deltas and tool calls."""
        ...


# --------------------------------------------------------------------------------------- TTS


class TextToSpeech(Protocol):
    """Speaks the agent's text."""

    name: str
    """Provider name for logs and metrics."""
    sample_rate: int
    """Rate of the PCM :meth:`synthesize` yields."""

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream s16le mono PCM chunks at :attr:`sample_rate` for ``text`` (one sentence or
        clause); the first chunk should come as soon as the model has any audio."""
        ...


# ------------------------------------------------------------------------------ turn detection


class TurnDetector(Protocol):
    """Estimates whether the caller has finished their turn when they pause."""

    name: str
    """Model name for logs (``smart-turn-v3.2``...)."""
    sample_rate: int
    """Rate of the PCM :meth:`end_of_turn_probability` expects."""

    async def end_of_turn_probability(
        self, pcm: bytes, *, transcript: str = "", language: str | None = None
    ) -> float:
        """Probability in [0, 1] that the turn is over.

        Args:
            pcm: the caller's recent audio up to the pause (audio models use the tail).
            transcript: the turn's text so far (text models use it).
            language: ISO 639-1 hint when known.
        """
        ...

    @property
    def threshold(self) -> float:
        """Probability at or above which the caller is considered done."""
        ...
