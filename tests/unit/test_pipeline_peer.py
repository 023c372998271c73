"""The pure helpers of bench/pipeline_peer.py (context conversion, marks, the table, framing);
the benchmark itself is never run here."""

from __future__ import annotations

import asyncio

import numpy as np

from bench.pipeline_peer import FIGURES, Feeder, chat_messages, since, table
from sipserver.pipeline.providers.base import ChatMessage


def test_chat_messages_keeps_text_of_known_roles() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "How much"}, {"text": "is it?"}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "  "},
        {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
        {"role": "assistant", "content": "Ten euros."},
    ]
    assert chat_messages(messages) == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "How much is it?"),
        ChatMessage("assistant", "Ten euros."),
    ]


def test_since_drops_marks_before_the_start() -> None:
    assert since({"a": 10.5, "b": 9.0, "c": 10.0}, 10.0) == {"a": 0.5, "c": 0.0}


def test_table_has_every_figure_and_dashes_for_missing_ones() -> None:
    rows = [{"voice_to_voice": v, "end_of_turn": v / 2} for v in (1.0, 2.0, 3.0, 9.0)]
    lines = table({"one": rows, "two": [{"voice_to_voice": 0.5}]}, asked=4)
    assert len(lines) == 2 + len(FIGURES)
    header = [f"{n} {q}" for n in ("one", "two") for q in ("p50", "p95", "max")]
    assert lines[0].split(maxsplit=2)[2].split() == " ".join(header).split()
    assert lines[1].split()[1:] == ["4/4", "1/4"]
    v2v = next(line for line in lines if line.startswith("voice_to_voice"))
    assert v2v.split()[1:] == ["2.500", "9.000", "9.000", "0.500", "0.500", "0.500"]
    eot = next(line for line in lines if line.startswith("end_of_turn"))
    assert eot.split()[1:] == ["1.250", "4.500", "4.500", "-", "-", "-"]


def test_feeder_pads_the_last_frame_with_silence() -> None:
    async def frames() -> list[bytes]:
        return Feeder(16000).frames(np.arange(1, 401, dtype=np.int16))

    out = asyncio.run(frames())
    assert [len(f) for f in out] == [640, 640]
    last = np.frombuffer(out[1], dtype="<i2")
    assert last[79] == 400 and not last[80:].any()
