"""The offline knowledge-base answerer behind ``llm: local``."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Sequence

import pytest

from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LanguageModel,
    LlmChunk,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from sipserver.pipeline.providers.local_llm import (
    END_CALL_TOOL,
    GOODBYE_REPLY,
    GREETING_REPLY,
    THANKS_REPLY,
    KnowledgeBaseLlm,
)

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "config"
END_CALL = ToolSpec(END_CALL_TOOL, "Hang up the call.")


@pytest.fixture(scope="module")
def llm() -> KnowledgeBaseLlm:
    return KnowledgeBaseLlm(KnowledgeBase.from_globs(["kb/demo/*.md"], CONFIG_DIR))


def conversation(*user_turns: str) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are the demo agent.")]
    for turn in user_turns:
        messages += [ChatMessage("user", turn), ChatMessage("assistant", "...")]
    return messages[:-1]


async def collect(
    model: LanguageModel, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
) -> list[LlmChunk]:
    return [chunk async for chunk in model.stream(messages, tools=tools)]


def text_of(chunks: Sequence[LlmChunk]) -> str:
    return "".join(chunk.text for chunk in chunks if isinstance(chunk, TextDelta))


def tool_calls(chunks: Sequence[LlmChunk]) -> list[ToolCall]:
    return [chunk for chunk in chunks if isinstance(chunk, ToolCall)]


@pytest.mark.parametrize("greeting", ["Hello", "hi!", "Hey there", "Good morning.", "hello?"])
async def test_greeting(llm: KnowledgeBaseLlm, greeting: str) -> None:
    chunks = await collect(llm, conversation(greeting), [END_CALL])
    assert text_of(chunks) == GREETING_REPLY
    assert "help" in GREETING_REPLY
    assert not tool_calls(chunks)


async def test_greeting_with_a_question_answers_it(llm: KnowledgeBaseLlm) -> None:
    reply = text_of(await collect(llm, conversation("Hi, when are you open on Saturday?")))
    assert "Saturday from 10 am to 2 pm" in reply


@pytest.mark.parametrize(
    "goodbye", ["Bye", "Goodbye!", "That's all, thanks.", "ok thank you bye", "Please hang up"]
)
async def test_goodbye_ends_the_call(llm: KnowledgeBaseLlm, goodbye: str) -> None:
    chunks = await collect(llm, conversation("hello", goodbye), [END_CALL])
    assert text_of(chunks) == GOODBYE_REPLY
    assert chunks[-1] == ToolCall(END_CALL_TOOL, {})  # after the goodbye text
    assert tool_calls(chunks) == [ToolCall(END_CALL_TOOL, {})]


async def test_goodbye_without_the_tool_only_says_goodbye(llm: KnowledgeBaseLlm) -> None:
    other = ToolSpec("transfer", "Transfer the call.")
    chunks = await collect(llm, conversation("bye"), [other])
    assert text_of(chunks) == GOODBYE_REPLY
    assert not tool_calls(chunks)


@pytest.mark.parametrize("question", ["What can you do?", "Who are you?", "Are you a robot?"])
async def test_describes_itself_honestly(llm: KnowledgeBaseLlm, question: str) -> None:
    reply = text_of(await collect(llm, conversation(question)))
    assert "offline demo agent" in reply
    assert "knowledge base" in reply
    assert "real language model can be configured" in reply
    assert "pricing" in reply or "opening hours" in reply or "registering a PBX" in reply


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("When are you open?", "Monday to Friday from 9 am to 6 pm"),
        ("How much does it cost?", "Starter costs 19 dollars a month"),
        ("Where is your office?", "12 Harbour Street"),
        ("How do I connect my phone system to you?", "SIP username and password"),
        ("Is there a free trial?", "free trial of 14 days"),
    ],
)
async def test_answers_from_the_knowledge_base(
    llm: KnowledgeBaseLlm, question: str, expected: str
) -> None:
    chunks = await collect(llm, conversation(question), [END_CALL])
    assert expected in text_of(chunks)
    assert not tool_calls(chunks)


async def test_answer_is_one_or_two_sentences_with_a_lead_in(llm: KnowledgeBaseLlm) -> None:
    reply = text_of(await collect(llm, conversation("When are you open?")))
    assert reply == (
        "Here is what I found: The Lakeside Voice office opening hours are Monday to Friday from 9"
        " am to 6 pm, and on Saturday from 10 am to 2 pm. It is closed on Sundays and on"
        " public holidays."
    )


async def test_unknown_question_gets_an_honest_fallback(llm: KnowledgeBaseLlm) -> None:
    reply = text_of(await collect(llm, conversation("Do you sell pizza?")))
    assert reply.startswith("Sorry, I don't know that one. I can answer questions about ")
    topics = reply.removeprefix("Sorry, I don't know that one. I can answer questions about ")
    assert sum(title.lower() in topics.lower() for title in llm.knowledge.titles) >= 3


async def test_thanks(llm: KnowledgeBaseLlm) -> None:
    assert text_of(await collect(llm, conversation("Thanks!"))) == THANKS_REPLY


async def test_streams_several_deltas_and_yields_to_the_loop(llm: KnowledgeBaseLlm) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    chunks = await collect(llm, conversation("How much does it cost?"))
    task.cancel()
    deltas = [chunk for chunk in chunks if isinstance(chunk, TextDelta)]
    assert len(deltas) >= 5
    assert all(1 <= len(delta.text.split()) <= 3 for delta in deltas)
    assert ticks >= len(deltas) - 1  # other tasks ran while the reply streamed


async def test_is_deterministic(llm: KnowledgeBaseLlm) -> None:
    messages = conversation("hello", "what does it cost?", "can I pay by card?")
    assert await collect(llm, messages) == await collect(llm, messages)


async def test_nothing_to_add_after_a_tool_result(llm: KnowledgeBaseLlm) -> None:
    messages = [*conversation("bye"), ChatMessage("tool", "ok", name=END_CALL_TOOL)]
    assert await collect(llm, messages, [END_CALL]) == []


async def test_no_user_message_yet_gets_a_greeting(llm: KnowledgeBaseLlm) -> None:
    assert text_of(await collect(llm, [ChatMessage("system", "Be nice.")])) == GREETING_REPLY


async def test_empty_knowledge_base() -> None:
    model = KnowledgeBaseLlm()
    assert text_of(await collect(model, conversation("hello"))) == GREETING_REPLY
    reply = text_of(await collect(model, conversation("When are you open?")))
    assert reply.startswith("Sorry, I don't know that one.")
    described = text_of(await collect(model, conversation("what can you do")))
    assert "none has been configured" in described


def test_words_per_delta_must_be_positive() -> None:
    with pytest.raises(ValueError, match="words_per_delta"):
        KnowledgeBaseLlm(words_per_delta=0)
