"""Suggestions for the human agent: knowledge-base passages for what the caller just said.

After each finished caller utterance, :meth:`SuggestionEngine.suggest` retrieves the best
passages of the agent's knowledge base
(:meth:`~sipserver.pipeline.knowledge.KnowledgeBase.search`). With a language model it asks for
a short reply grounded in them and streams it (each piece goes to ``on_delta``); without one
(``llm: local``, the offline default) the suggestion is the best passage itself. Either way the
suggestion carries its sources (title and file of each passage used).

So that the dashboard is not flooded, a suggestion is made at most every ``min_interval``
seconds per call, and never twice for the same best passage among the last ``dedupe_window``
suggestions; both are counted in :attr:`SuggestionEngine.skipped`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

from sipserver.pipeline.knowledge import KnowledgeBase, Passage, tokenize
from sipserver.pipeline.providers.base import ChatMessage, LanguageModel, TextDelta
from sipserver.pipeline.providers.local_llm import MIN_SCORE

__all__ = ["NO_SUGGESTION", "Source", "Suggestion", "SuggestionEngine", "suggestion_prompt"]

NO_SUGGESTION: Final = "NO_SUGGESTION"
"""What the language model is told to answer when the passages do not help."""
_MAX_SUGGESTION_CHARS: Final = 600
_LLM_TIMEOUT: Final = 15.0

_SYSTEM: Final = (
    "You help a human agent who is on a phone call with a customer. From the knowledge-base "
    "passages below, suggest in one or two short sentences what the agent could say in reply "
    "to the customer's last words. Use only facts from the passages. If they do not answer it, "
    f"reply exactly {NO_SUGGESTION}."
)


@dataclass(frozen=True, slots=True)
class Source:
    """A passage a suggestion is based on."""

    title: str
    """The heading the passage sits under."""
    source: str
    """The file's name (without its directory)."""
    score: float
    """Relevance (about one per distinctive word of the utterance found)."""
    text: str
    """The passage."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "title": self.title,
            "source": self.source,
            "score": round(self.score, 2),
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A suggested reply for the human agent."""

    text: str
    sources: tuple[Source, ...]
    utterance: str
    """The caller's words it answers."""
    mode: str
    """``passage`` (the best passage itself) or ``llm`` (written by the language model)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "text": self.text,
            "sources": [s.as_dict() for s in self.sources],
            "utterance": self.utterance,
            "mode": self.mode,
        }


def suggestion_prompt(utterance: str, passages: Sequence[Passage]) -> list[ChatMessage]:
    """The messages asking a language model for a grounded suggestion."""
    numbered = "\n\n".join(
        f"[{i}] {p.title} ({PurePath(p.source).name})\n{p.text}" for i, p in enumerate(passages, 1)
    )
    return [
        ChatMessage("system", f"{_SYSTEM}\n\nPassages:\n\n{numbered}"),
        ChatMessage("user", f"The customer said: {utterance}"),
    ]


class SuggestionEngine:
    """Suggestions for one monitored call.

    Args:
        knowledge: The agent's knowledge base.
        llm: A language model for written suggestions; None suggests the best passage itself.
        min_interval: Seconds between two suggestions of this call.
        dedupe_window: Recent suggestions whose best passage is not suggested again.
        min_score: Relevance a passage needs (see :data:`~.local_llm.MIN_SCORE`).
        passages: Passages retrieved per utterance (all are given to the language model).
        clock: Seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self,
        knowledge: KnowledgeBase,
        llm: LanguageModel | None = None,
        *,
        min_interval: float = 3.0,
        dedupe_window: int = 5,
        min_score: float = MIN_SCORE,
        passages: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.knowledge = knowledge
        self.llm = llm
        self.min_interval = min_interval
        self.min_score = min_score
        self.passages = passages
        self._clock = clock
        self._last_at: float | None = None
        self._recent: deque[tuple[str, str]] = deque(maxlen=dedupe_window)
        self._previous = ""
        self.skipped: Counter[str] = Counter()
        """Utterances without a suggestion, by reason (``no_passage``, ``rate_limited``,
        ``duplicate``, ``llm_declined``, ``llm_failed``)."""

    def _retrieve(self, utterance: str) -> list[Passage]:
        found = self.knowledge.search(utterance, k=self.passages, min_score=self.min_score)
        if not found and self._previous and tokenize(utterance):
            # "And how much is that?": the previous utterance may carry the topic.
            joined = f"{self._previous} {utterance}"
            found = self.knowledge.search(joined, k=self.passages, min_score=self.min_score)
        return found

    async def suggest(
        self, utterance: str, on_delta: Callable[[str], None] | None = None
    ) -> Suggestion | None:
        """The suggestion for a finished caller utterance, or None (see :attr:`skipped`).

        Args:
            utterance: The caller's words.
            on_delta: Receives each streamed piece of a language model's suggestion.
        """
        found = self._retrieve(utterance)
        self._previous = utterance
        if not found:
            self.skipped["no_passage"] += 1
            return None
        now = self._clock()
        if self._last_at is not None and now - self._last_at < self.min_interval:
            self.skipped["rate_limited"] += 1
            return None
        key = (found[0].source, found[0].text)
        if key in self._recent:
            self.skipped["duplicate"] += 1
            return None
        self._last_at = now
        self._recent.append(key)
        sources = tuple(
            Source(p.title, PurePath(p.source).name, p.score, p.text)
            for p in (found if self.llm is not None else found[:1])
        )
        if self.llm is None:
            return Suggestion(found[0].text, sources, utterance, "passage")
        try:
            text = await asyncio.wait_for(self._write(utterance, found, on_delta), _LLM_TIMEOUT)
        except Exception:  # a provider failure must not end the monitoring
            self.skipped["llm_failed"] += 1
            return None
        if not text or NO_SUGGESTION in text:
            self.skipped["llm_declined"] += 1
            return None
        return Suggestion(text, sources, utterance, "llm")

    async def _write(
        self, utterance: str, found: Sequence[Passage], on_delta: Callable[[str], None] | None
    ) -> str:
        assert self.llm is not None
        parts: list[str] = []
        size = 0
        async for chunk in self.llm.stream(suggestion_prompt(utterance, found)):
            if not isinstance(chunk, TextDelta) or not chunk.text:
                continue
            parts.append(chunk.text)
            size += len(chunk.text)
            if on_delta is not None:
                on_delta(chunk.text)
            if size >= _MAX_SUGGESTION_CHARS:
                break
        return "".join(parts).strip()
