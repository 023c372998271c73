"""Fixed phrases (greetings, the apology) synthesised once per process and shared by every call.

Every call to an agent starts with the same greeting. Synthesising it per call made a burst of
calls a burst of identical TTS work (100 websocket calls started 100 Piper syntheses at once);
:class:`PhraseCache` wraps a model's :class:`~sipserver.pipeline.providers.base.TextToSpeech`
and keeps the audio of the texts it is told are fixed. The first synthesis of a phrase runs in a
task of its own, which every call that asks meanwhile reads as it goes (a call that ends early
does not stop it). Any other text passes through.

Memory is bounded: only the configured phrases are kept (``max_phrases`` of them, each at most
``max_seconds`` long; a longer one is not kept), and a reload builds a new cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from sipserver.pipeline.providers.base import TextToSpeech

__all__ = ["PhraseCache"]


class PhraseCache:
    """A :class:`TextToSpeech` that remembers the audio of fixed phrases.

    Args:
        tts: the model's TTS (shared by every session of the model).
        phrases: the texts worth keeping (each agent's greeting, the apology).
        max_phrases: most phrases kept (the first ones given win).
        max_seconds: a phrase longer than this is synthesised each time, not kept.
    """

    def __init__(
        self,
        tts: TextToSpeech,
        phrases: Iterable[str],
        *,
        max_phrases: int = 64,
        max_seconds: float = 30.0,
    ) -> None:
        self.tts = tts
        self.name = tts.name
        self.sample_rate = tts.sample_rate
        wanted = [p for p in dict.fromkeys(phrases) if p.strip()]
        self.phrases = frozenset(wanted[:max_phrases])
        self._max_bytes = int(max_seconds * tts.sample_rate) * 2
        self._audio: dict[str, tuple[bytes, ...]] = {}
        self._making: dict[str, _Making] = {}
        self.hits = 0
        """Syntheses answered from the cache (or from a synthesis already running)."""

    def __getattr__(self, name: str) -> object:
        # warm_up, close, busy...: the wrapped provider's.
        return getattr(self.tts, name)

    @property
    def cached_bytes(self) -> int:
        """Bytes of audio held."""
        return sum(len(c) for chunks in self._audio.values() for c in chunks)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """The phrase's audio (from the cache when it is a fixed phrase already made)."""
        if text not in self.phrases:
            async for chunk in self.tts.synthesize(text):
                yield chunk
            return
        chunks = self._audio.get(text)
        if chunks is not None:
            self.hits += 1
            for chunk in chunks:
                yield chunk
            return
        making = self._making.get(text)
        if making is None:
            making = self._making[text] = _Making()
            making.task = asyncio.get_running_loop().create_task(
                self._make(text, making), name="phrase-synthesis"
            )
        else:
            self.hits += 1
        # The synthesis runs in a task of its own: a call that ends before the phrase is made
        # (short calls, a caller who hangs up during the greeting) does not stop it, and the
        # next call finds it in the cache.
        sent = 0
        while True:
            while sent < len(making.chunks):
                yield making.chunks[sent]
                sent += 1
            if making.error is not None:
                raise making.error
            if making.done:
                return
            await making.wait()

    async def _make(self, text: str, making: _Making) -> None:
        try:
            async for chunk in self.tts.synthesize(text):
                making.add(chunk)
            if making.size <= self._max_bytes:
                self._audio[text] = tuple(making.chunks)
            making.finish(None)
        except asyncio.CancelledError:
            making.finish(RuntimeError("the phrase's synthesis was cancelled"))
            raise
        except Exception as exc:
            making.finish(exc)
        finally:
            self._making.pop(text, None)

    def close(self) -> None:
        """Cancel the syntheses in progress (the runtime is closing)."""
        for making in list(self._making.values()):
            if making.task is not None:
                making.task.cancel()


class _Making:
    """A phrase being synthesised: the chunks so far, and a wake-up for its readers."""

    __slots__ = ("_changed", "chunks", "done", "error", "size", "task")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self._changed.set()

    def finish(self, error: BaseException | None) -> None:
        self.done = True
        self.error = error
        self._changed.set()

    async def wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()
