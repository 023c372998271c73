"""Knowledge-base context for hosted language models.

The offline answerer (``llm: local``) reads the agent's knowledge base itself. Any other
language model gets it through :class:`KnowledgeContextLlm`: before each reply, the passages most
relevant to the caller's last words are retrieved (BM25, the same index the offline answerer
uses) and given to the model in a system message placed after the agent's instructions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import ChatMessage, LanguageModel, LlmChunk, ToolSpec

__all__ = ["DEFAULT_PASSAGES", "KnowledgeContextLlm", "with_knowledge"]

DEFAULT_PASSAGES: Final = 3
"""Passages given to the model per reply unless ``knowledge_passages`` says otherwise."""
_MIN_SCORE: Final = 0.3
"""Relevance (about one per distinctive word found) below which a passage is left out."""
_PREAMBLE: Final = (
    "Knowledge base passages relevant to the caller's last message. Answer from them when they "
    "apply; if they do not cover the question, say you do not know."
)


def with_knowledge(
    messages: Sequence[ChatMessage], knowledge: KnowledgeBase, passages: int
) -> list[ChatMessage]:
    """``messages`` with a system message of relevant passages after the leading system ones.

    Unchanged when there is no user message or nothing relevant is found.
    """
    query = next((m.content for m in reversed(messages) if m.role == "user"), "")
    found = knowledge.search(query, passages, min_score=_MIN_SCORE) if query else []
    if not found:
        return list(messages)
    body = "\n\n".join(f"[{p.title}] {p.text}" for p in found)
    note = ChatMessage("system", f"{_PREAMBLE}\n\n{body}")
    at = 0
    while at < len(messages) and messages[at].role == "system":
        at += 1
    return [*messages[:at], note, *messages[at:]]


class KnowledgeContextLlm:
    """A language model whose every request carries the relevant knowledge-base passages.

    Args:
        inner: the model that answers.
        knowledge: the agent's knowledge base.
        passages: at most this many passages per reply.
    """

    def __init__(
        self, inner: LanguageModel, knowledge: KnowledgeBase, passages: int = DEFAULT_PASSAGES
    ) -> None:
        self.inner = inner
        self.knowledge = knowledge
        self.passages = passages
        self.name = inner.name

    async def close(self) -> None:
        """Close the wrapped model's connections, if it has any."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        """The inner model's reply to ``messages`` with the passages added."""
        return self.inner.stream(
            with_knowledge(messages, self.knowledge, self.passages), tools=tools
        )
