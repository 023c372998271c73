"""Fixed phrases (greetings, the apology) synthesised once per process and shared by every call.

Every call to an agent starts with the same greeting. Synthesising it per call made a burst of
calls a burst of identical TTS work (100 websocket calls started 100 Piper syntheses at once);
:class:`PhraseCache` wraps a model's :class:`~sipserver.pipeline.providers.base.TextToSpeech`
and keeps the audio of the texts it is told are fixed. Calls that ask while the first synthesis
of a phrase is running wait for it instead of starting their own. Any other text passes through.

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
        self._making: dict[str, asyncio.Future[tuple[bytes, ...] | None]] = {}
        self.hits = 0
        """Syntheses answered from the cache (or from another call's synthesis)."""

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
        if chunks is None and (making := self._making.get(text)) is not None:
            chunks = await asyncio.shield(making)  # None: that synthesis did not complete
        if chunks is not None:
            self.hits += 1
            for chunk in chunks:
                yield chunk
            return
        async for chunk in self._make(text):
            yield chunk

    async def _make(self, text: str) -> AsyncIterator[bytes]:
        future: asyncio.Future[tuple[bytes, ...] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._making[text] = future
        made: list[bytes] | None = []
        size = 0
        try:
            async for chunk in self.tts.synthesize(text):
                if made is not None:
                    size += len(chunk)
                    made = made if size <= self._max_bytes else None
                    if made is not None:
                        made.append(chunk)
                yield chunk
            if made is not None:
                self._audio[text] = tuple(made)
        finally:
            self._making.pop(text, None)
            if not future.done():
                future.set_result(self._audio.get(text))
