"""The offline language model: an honest knowledge-base answerer.

No practical LLM ships offline, so ``llm: local`` is :class:`KnowledgeBaseLlm`: it recognises a
few conversational moves (hello, goodbye, thanks, "what can you do?") and otherwise answers with
the best passage of the agent's knowledge base
(:class:`~sipserver.pipeline.knowledge.KnowledgeBase`), or says plainly that it does not know.
It never makes anything up, and says what it is when asked. It is deterministic: the same
conversation always gets the same reply.

It implements :class:`~sipserver.pipeline.providers.base.LanguageModel`: the reply is streamed a
few words at a time, yielding to the event loop between pieces like a real streaming model, and
a goodbye ends with a call of the ``end_call`` tool when the session offers it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Final

from sipserver.pipeline.knowledge import KnowledgeBase, tokenize
from sipserver.pipeline.providers.base import ChatMessage, LlmChunk, TextDelta, ToolCall, ToolSpec

__all__ = ["END_CALL_TOOL", "MIN_SCORE", "KnowledgeBaseLlm"]

END_CALL_TOOL: Final = "end_call"
"""Name of the tool called after saying goodbye (when the session offers it)."""
MIN_SCORE: Final = 0.6
"""Relevance (:attr:`~sipserver.pipeline.knowledge.Passage.score`, about one per distinctive word
of the question found) a passage needs to be given as an answer."""

GREETING_REPLY: Final = "Hello! How can I help you today?"
GOODBYE_REPLY: Final = "Thank you for calling. Goodbye!"
THANKS_REPLY: Final = "You're welcome. Is there anything else I can help you with?"
UNCLEAR_REPLY: Final = "Sorry, I didn't catch a question there. What would you like to know?"

_GREETINGS: Final = (
    "good morning",
    "good afternoon",
    "good evening",
    "hello",
    "hi",
    "hey",
    "hiya",
    "howdy",
    "greetings",
)
_GOODBYES: Final = (
    "bye",
    "goodbye",
    "good bye",
    "that's all",
    "that is all",
    "that's it",
    "that will be all",
    "hang up",
    "see you",
    "talk to you later",
    "have a nice day",
    "have a good day",
    "nothing else",
)
_CAPABILITY: Final = (
    "what can you do",
    "who are you",
    "what are you",
    "what do you know",
    "how can you help",
    "what can i ask",
    "are you a robot",
    "are you a bot",
    "are you human",
    "are you a human",
    "are you a person",
    "are you a real person",
    "are you an ai",
    "are you a machine",
)
_THANKS: Final = ("thank you", "thanks", "cheers", "thank you very much", "thanks a lot")
_ANSWER_LEADS: Final = ("Here is what I found: ", "", "Sure. ")
"""Lead-ins of answers, used in turn so consecutive answers do not all start alike."""

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")
_PIECE: Final = re.compile(r"\S+\s*")
_NOT_WORD: Final = re.compile(r"[^a-z0-9' ]+")


def _normal(text: str) -> str:
    """Lowercase words separated by single spaces, apostrophes kept, punctuation dropped."""
    text = text.lower().replace("\u2019", "'")
    return " ".join(_NOT_WORD.sub(" ", text).split())


def _has_phrase(text: str, phrases: Sequence[str]) -> bool:
    padded = f" {text} "
    return any(f" {phrase} " in padded for phrase in phrases)


def _without(text: str, phrases: Sequence[str]) -> str:
    padded = f" {text} "
    for phrase in sorted(phrases, key=len, reverse=True):
        padded = padded.replace(f" {phrase} ", " ")
    return " ".join(padded.split())


def _spoken_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])}, and {items[-1]}"


def _topic(title: str) -> str:
    """A heading as it reads inside a sentence: "Opening hours" -> "opening hours"."""
    words = title.split()
    if not words:
        return title
    first = words[0]
    proper_name = len(words) > 1 and words[1][:1].isupper()
    if first[1:].islower() and not proper_name:
        return first[:1].lower() + title[1:]
    return title


class KnowledgeBaseLlm:
    """A :class:`~sipserver.pipeline.providers.base.LanguageModel` that answers from a
    knowledge base, offline and deterministically.

    It reads only the last message, when it is the caller's (after a tool result or its own
    message it has nothing to add and yields nothing; before the caller said anything it
    greets):

    - a greeting ("hello", "good morning") gets a greeting and an offer to help; a greeting
      followed by a question gets the answer;
    - a goodbye ("bye", "that's all", "hang up") gets a goodbye, then a call of the
      :data:`END_CALL_TOOL` tool if ``tools`` offers it;
    - "what can you do?", "who are you?" get an honest description of this agent;
    - thanks alone gets "you're welcome";
    - anything else is a question: the best passage scoring above ``min_score`` answers it (its
      first one or two sentences); when nothing does, it says it does not know and lists
      topics it can answer.

    Args:
        knowledge: The agent's knowledge base (None: an empty one).
        min_score: Relevance a passage needs to be used as an answer (see :data:`MIN_SCORE`).
        words_per_delta: Words in each streamed :class:`TextDelta`.
    """

    name = "local"

    def __init__(
        self,
        knowledge: KnowledgeBase | None = None,
        *,
        min_score: float = MIN_SCORE,
        words_per_delta: int = 3,
    ) -> None:
        if words_per_delta < 1:
            raise ValueError(f"words_per_delta must be >= 1, got {words_per_delta}")
        self.knowledge = knowledge if knowledge is not None else KnowledgeBase(())
        """Where answers come from."""
        self.min_score = min_score
        """Relevance a passage needs to be used as an answer."""
        self.words_per_delta = words_per_delta
        """Words in each streamed text delta."""

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmChunk]:
        """Stream the reply to the conversation: text a few words at a time, then any tool call.

        Args:
            messages: The conversation, system message first.
            tools: Tools the model may call; only :data:`END_CALL_TOOL` is ever used.

        Yields:
            :class:`TextDelta` pieces whose concatenation is the reply, then possibly a
            :class:`ToolCall`.
        """
        for chunk in self.reply(messages, tools=tools):
            if isinstance(chunk, ToolCall):
                yield chunk
                continue
            pieces = _PIECE.findall(chunk.text)
            step = self.words_per_delta
            for start in range(0, len(pieces), step):
                await asyncio.sleep(0)  # a real stream: other tasks run between pieces
                yield TextDelta("".join(pieces[start : start + step]))

    def reply(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> list[LlmChunk]:
        """The whole reply at once (what :meth:`stream` streams).

        Args:
            messages: The conversation, system message first.
            tools: Tools the model may call.

        Returns:
            One :class:`TextDelta` with the reply text (none when there is nothing to say),
            then possibly a :class:`ToolCall`.
        """
        users = [m for m in messages if m.role == "user"]
        if not users:
            return [TextDelta(GREETING_REPLY)]
        if messages[-1].role != "user":
            return []  # after a tool result or our own words: nothing to add
        text = _normal(users[-1].content)
        if _has_phrase(text, _GOODBYES) and len(self._content(_without(text, _GOODBYES))) <= 2:
            chunks: list[LlmChunk] = [TextDelta(GOODBYE_REPLY)]
            if any(tool.name == END_CALL_TOOL for tool in tools):
                chunks.append(ToolCall(END_CALL_TOOL, {}))
            return chunks
        if _has_phrase(text, _CAPABILITY):
            return [TextDelta(self._describe())]
        if text.startswith(_GREETINGS) and _has_phrase(text, _GREETINGS):
            rest = _without(text, _GREETINGS)
            if not self._content(rest):
                return [TextDelta(GREETING_REPLY)]
            text = rest
        if not self._content(text):
            thanked = _has_phrase(text, _THANKS)
            return [TextDelta(THANKS_REPLY if thanked else UNCLEAR_REPLY)]
        return [TextDelta(self._answer(text, turn=len(users)))]

    # ------------------------------------------------------------------------------ replies

    @staticmethod
    def _content(text: str) -> list[str]:
        """Topic words of ``text`` (stop words and chat filler removed)."""
        return tokenize(text)

    def _topics(self, count: int = 4) -> list[str]:
        titles = self.knowledge.titles
        if len(titles) > count:  # spread over the whole knowledge base, not just its start
            titles = [titles[i * len(titles) // count] for i in range(count)]
        return [_topic(title) for title in titles]

    def _describe(self) -> str:
        topics = self._topics()
        if topics:
            scope = f"from my knowledge base, which covers topics such as {_spoken_list(topics)}"
        else:
            scope = "from a knowledge base, but none has been configured for me yet"
        return (
            "I'm sipserver's offline demo agent. I'm not a full language model: I answer "
            f"questions {scope}. A real language model can be configured in my place."
        )

    def _answer(self, question: str, *, turn: int) -> str:
        found = self.knowledge.search(question, k=1, min_score=self.min_score)
        if not found:
            topics = self._topics()
            if not topics:
                return (
                    "Sorry, I don't know that one. I have no knowledge base to answer from yet,"
                    " so I can't answer questions."
                )
            return (
                "Sorry, I don't know that one. I can answer questions about "
                f"{_spoken_list(topics)}."
            )
        sentences = _SENTENCE_END.split(found[0].text)
        answer = sentences[0]
        if len(sentences) > 1 and len(answer) + len(sentences[1]) <= 240:
            answer = f"{answer} {sentences[1]}"
        lead = _ANSWER_LEADS[(turn - 1) % len(_ANSWER_LEADS)]
        return f"{lead}{answer}"
