"""One reply of the agent: its state, the LLM text cut into speakable pieces, what was heard.

:class:`Reply` is the bookkeeping :class:`~sipserver.pipeline.voice.VoiceSession` keeps per reply
(speculative or committed, audio produced and played, timings); :func:`produce_pieces` turns the
LLM's stream into clauses/sentences for TTS; :func:`heard_text` says which words played.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sipserver.pipeline.providers.base import (
    ChatMessage,
    LanguageModel,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from sipserver.pipeline.text import SentenceChunker

__all__ = ["APOLOGY", "END_CALL_TOOL", "Reply", "heard_text", "produce_pieces"]

END_CALL_TOOL = ToolSpec(
    name="end_call",
    description=(
        "End the phone call. Call it after saying goodbye, when the caller says goodbye or "
        "asks to hang up."
    ),
)
"""The tool through which the LLM ends the call (after its last words have played)."""

APOLOGY = "Sorry, I had a problem there. Could you say that again?"


@dataclass(eq=False, slots=True)
class Reply:
    """One reply of the agent (the greeting, or an answer to a turn)."""

    user_text: str | None
    """The turn it answers (None: greeting or apology, spoken without the LLM)."""
    fixed_text: str | None = None
    committed: bool = False
    preemptive: bool = False
    task: asyncio.Task[None] | None = None
    pending: list[bytes] = field(default_factory=list)
    """Audio produced before commit (speculative replies)."""
    pieces: list[str] = field(default_factory=list)
    unannounced: list[str] = field(default_factory=list)
    """Pieces produced before commit, not yet published as ``AgentText`` (a speculative
    reply's text is announced when it is committed; a dropped one's never is)."""
    timeline: list[tuple[str, int]] = field(default_factory=list)
    """(piece, cumulative bytes of reply audio at the end of that piece)."""
    audio_bytes: int = 0
    played_bytes: int = 0
    synth_done: bool = False
    end_call: bool = False
    speech_end: float | None = None
    end_of_turn: float | None = None
    transcript_at: float | None = None
    """The final transcript that completed the turn arrived (clock time)."""
    turn_model_ms: float | None = None
    """The turn model's time for the prediction that ended the turn (None: not decided by it)."""
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    first_frame: float | None = None


async def produce_pieces(
    reply: Reply,
    llm: LanguageModel,
    messages: Sequence[ChatMessage],
    pieces: asyncio.Queue[str | None],
    *,
    now: Callable[[], float],
    on_error: Callable[[BaseException], None],
) -> None:
    """Put the reply's speakable pieces on ``pieces``, then None.

    A fixed text (greeting, apology) is one piece; otherwise the LLM's deltas are cut by a
    :class:`SentenceChunker`, an ``end_call`` tool call marks the reply, and an LLM failure is
    reported to ``on_error`` and becomes a spoken apology when nothing was said yet.
    """

    try:
        if reply.fixed_text is not None:
            await pieces.put(reply.fixed_text)
            return
        chunker = SentenceChunker()
        chunks = llm.stream(messages, tools=(END_CALL_TOOL,))
        try:
            async for chunk in chunks:
                if reply.llm_first_token is None:
                    reply.llm_first_token = now()
                if isinstance(chunk, TextDelta):
                    for piece in chunker.push(chunk.text):
                        await pieces.put(piece)
                elif isinstance(chunk, ToolCall) and chunk.name == END_CALL_TOOL.name:
                    reply.end_call = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_error(exc)
            if not reply.pieces and pieces.empty():
                await pieces.put(APOLOGY)
            return
        finally:
            # A barge-in may cancel this task while it waits on the queue: close the
            # stream now (a hosted model stops generating) rather than at garbage collection.
            close = getattr(chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        for piece in chunker.flush():
            await pieces.put(piece)
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            pieces.put_nowait(None)


def heard_text(reply: Reply) -> str:
    """The words of the reply that played: whole pieces, then a share of the next one."""
    heard: list[str] = []
    start = 0
    for piece, end in reply.timeline:
        if reply.played_bytes >= end:
            heard.append(piece)
        else:
            words = piece.split()
            span = max(1, end - start)
            share = (reply.played_bytes - start) / span
            count = int(len(words) * max(0.0, share))
            if count:
                heard.append(" ".join(words[:count]))
            break
        start = end
    return " ".join(heard)
