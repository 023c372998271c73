"""Cut streamed LLM text into pieces TTS can start speaking early.

The first piece of a reply is cut at the first clause boundary once it holds a few words, so
the agent starts talking before the sentence is complete; later pieces are whole sentences (TTS
prosody is better on whole sentences). Pure string work, no I/O.
"""

from __future__ import annotations

import re

__all__ = ["SentenceChunker"]

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s+")
_CLAUSE_END = re.compile("[,;:\u2014\u2013]\\s+")


class SentenceChunker:
    """Accumulates text deltas and hands out speakable pieces.

    Args:
        first_clause_chars: the first piece may end at a clause boundary (``,;:``) once it is at
            least this long; 0 disables clause cuts.
        max_chars: a piece with no boundary is cut at the last space before this length.
    """

    __slots__ = ("_buffer", "_first", "_first_clause_chars", "_max_chars")

    def __init__(self, *, first_clause_chars: int = 24, max_chars: int = 240) -> None:
        self._buffer = ""
        self._first = True
        self._first_clause_chars = first_clause_chars
        self._max_chars = max_chars

    def push(self, text: str) -> list[str]:
        """Add a delta; return the pieces now complete (possibly none)."""
        self._buffer += text
        pieces: list[str] = []
        while True:
            piece = self._cut()
            if piece is None:
                return pieces
            pieces.append(piece)

    def flush(self) -> list[str]:
        """End of the reply: return what is left (stripped), if anything."""
        rest = self._buffer.strip()
        self._buffer = ""
        return [rest] if rest else []

    def _cut(self) -> str | None:
        buf = self._buffer
        match = _SENTENCE_END.search(buf)
        end = match.end() if match else None
        if end is None and self._first and self._first_clause_chars:
            for clause in _CLAUSE_END.finditer(buf):
                if clause.start() >= self._first_clause_chars:
                    end = clause.end()
                    break
        if end is None and len(buf) > self._max_chars:
            space = buf.rfind(" ", 0, self._max_chars)
            end = space + 1 if space > 0 else self._max_chars
        if end is None:
            return None
        piece, self._buffer = buf[:end].strip(), buf[end:]
        if not piece:
            return None
        self._first = False
        return piece
