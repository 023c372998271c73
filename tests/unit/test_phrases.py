"""PhraseCache: fixed phrases synthesised once, shared by concurrent calls, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sipserver.pipeline.phrases import PhraseCache


class StepTts:
    """Two chunks per text; each synthesis waits for ``gate`` before its second chunk."""

    name = "step"
    sample_rate = 8000

    def __init__(self, chunk_bytes: int = 160) -> None:
        self.texts: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.chunk = bytes(chunk_bytes)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        yield self.chunk
        await self.gate.wait()
        yield self.chunk


async def _say(tts: PhraseCache, text: str) -> bytes:
    return b"".join([c async for c in tts.synthesize(text)])


async def test_a_fixed_phrase_is_synthesised_once() -> None:
    inner = StepTts()
    cache = PhraseCache(inner, ["Hello."])
    first, second = await _say(cache, "Hello."), await _say(cache, "Hello.")
    assert first == second == bytes(320)
    assert inner.texts == ["Hello."]
    assert cache.hits == 1 and cache.cached_bytes == 320
    assert cache.name == "step" and cache.sample_rate == 8000


async def test_other_texts_pass_through_every_time() -> None:
    inner = StepTts()
    cache = PhraseCache(inner, ["Hello."])
    await _say(cache, "Something else.")
    await _say(cache, "Something else.")
    assert inner.texts == ["Something else."] * 2
    assert cache.cached_bytes == 0


async def test_concurrent_calls_share_the_first_synthesis() -> None:
    inner = StepTts()
    inner.gate.clear()
    cache = PhraseCache(inner, ["Hello."])
    calls = [asyncio.create_task(_say(cache, "Hello.")) for _ in range(20)]
    await asyncio.sleep(0.01)
    inner.gate.set()
    results = await asyncio.gather(*calls)
    assert inner.texts == ["Hello."]
    assert all(r == bytes(320) for r in results)
    assert cache.hits == 19


async def test_a_call_that_ends_early_does_not_stop_the_phrase_being_made() -> None:
    inner = StepTts()
    inner.gate.clear()
    cache = PhraseCache(inner, ["Hello."])
    first = asyncio.create_task(_say(cache, "Hello."))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(_say(cache, "Hello."))
    await asyncio.sleep(0.01)
    first.cancel()  # a short call hangs up during the greeting
    with pytest.raises(asyncio.CancelledError):
        await first
    inner.gate.set()
    assert await waiter == bytes(320)
    assert await _say(cache, "Hello.") == bytes(320)
    assert inner.texts == ["Hello."]  # made once, kept for the next calls


async def test_a_failed_synthesis_is_reported_and_not_kept() -> None:
    class FailingTts(StepTts):
        async def synthesize(self, text: str) -> AsyncIterator[bytes]:
            self.texts.append(text)
            yield self.chunk
            raise RuntimeError("model crashed")

    inner = FailingTts()
    cache = PhraseCache(inner, ["Hello."])
    for _ in range(2):
        with pytest.raises(RuntimeError, match="model crashed"):
            await _say(cache, "Hello.")
    assert inner.texts == ["Hello.", "Hello."] and cache.cached_bytes == 0


async def test_close_cancels_a_synthesis_in_progress() -> None:
    inner = StepTts()
    inner.gate.clear()
    cache = PhraseCache(inner, ["Hello."])
    reader = asyncio.create_task(_say(cache, "Hello."))
    await asyncio.sleep(0.01)
    cache.close()
    with pytest.raises(RuntimeError, match="cancelled"):
        await reader


async def test_phrases_are_bounded_in_number_and_length() -> None:
    inner = StepTts(chunk_bytes=8000 * 2)  # 1 s per chunk, 2 s per phrase
    cache = PhraseCache(inner, ["a", "b", "c", " "], max_phrases=2, max_seconds=1.5)
    assert cache.phrases == {"a", "b"}
    await _say(cache, "a")
    await _say(cache, "a")
    assert inner.texts == ["a", "a"]  # longer than max_seconds: not kept
    assert cache.cached_bytes == 0
