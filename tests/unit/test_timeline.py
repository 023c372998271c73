"""The latency timeline SVG (sipserver/records/timeline.py): parsed back with xml.etree, its
bars are proportional to the stages' milliseconds, text is escaped, missing stages and calls
without turns are drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from sipserver.pipeline.call_record import CallRecord, RecordEvent
from sipserver.records.timeline import (
    BAR_STAGES,
    MAX_ROWS,
    STAGE_COLOURS,
    nice_step,
    timeline_svg,
    timeline_turns,
)

SVG = "{http://www.w3.org/2000/svg}"


def turn(index: int, text: str, v2v: float | None, **stages: float | None) -> RecordEvent:
    full: dict[str, Any] = {
        s: None for s in ("end_of_turn", "stt", "turn_model", "llm", "tts", "transport")
    }
    full.update(stages)
    return RecordEvent(
        "turn",
        1.0 + index,
        {"index": index, "text": text, "stages": full, "voice_to_voice": v2v, "preemptive": False},
    )


def record(*events: RecordEvent) -> CallRecord:
    return CallRecord(id="0" * 26, agent="alice", ingress="sip", events=list(events))


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def segments(root: ET.Element, turn_index: int) -> dict[str, ET.Element]:
    group = root.find(f".//{SVG}g[@data-turn='{turn_index}']")
    assert group is not None
    return {r.attrib["data-stage"]: r for r in group.iter(f"{SVG}rect")}


def test_bars_are_proportional_to_the_stages_and_share_one_axis() -> None:
    svg = timeline_svg(
        record(
            turn(0, "hello", 1000, end_of_turn=500, stt=200, turn_model=40, llm=300, tts=150,
                 transport=50),
            turn(1, "and then", 2000, end_of_turn=1000, stt=400, turn_model=80, llm=600,
                 tts=300, transport=100),
        )
    )  # fmt: skip
    root = parse(svg)
    first, second = segments(root, 0), segments(root, 1)
    scale = float(first["end_of_turn"].attrib["width"]) / 500
    assert scale > 0
    for stage, ms in {"end_of_turn": 500, "llm": 300, "tts": 150, "transport": 50}.items():
        assert float(first[stage].attrib["width"]) == pytest.approx(ms * scale, abs=0.02)
        # The second turn is twice as long on the same axis.
        assert float(second[stage].attrib["width"]) == pytest.approx(2 * ms * scale, abs=0.02)
        assert first[stage].attrib["fill"] == STAGE_COLOURS[stage]
    # Stacked left to right, each segment starting where the previous one ended.
    x = float(first["end_of_turn"].attrib["x"])
    for stage in BAR_STAGES:
        assert float(first[stage].attrib["x"]) == pytest.approx(x, abs=0.02)
        x += float(first[stage].attrib["width"])
    # STT and the turn model are thin bars inside the end-of-turn segment.
    eot = first["end_of_turn"]
    for inner, ms in (("stt", 200), ("turn_model", 40)):
        bar = first[inner]
        assert float(bar.attrib["width"]) == pytest.approx(ms * scale, abs=0.02)
        assert float(bar.attrib["height"]) < float(eot.attrib["height"])
        assert float(bar.attrib["x"]) >= float(eot.attrib["x"]) - 0.01
        right = float(bar.attrib["x"]) + float(bar.attrib["width"])
        assert right <= float(eot.attrib["x"]) + float(eot.attrib["width"]) + 0.01
    # Segment tooltips, the voice-to-voice at the bar's end, the labels.
    assert first["llm"].findtext(f"{SVG}title") == "LLM first token: 300 ms"
    values = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "v2v"]
    assert values == ["1\u202f000 ms", "2\u202f000 ms"]
    labels = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "label"]
    assert labels == ["1. hello", "2. and then"]
    # The axis covers the longest bar with round ticks, and the drawing is accessible.
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "tick"]
    assert ticks[0] == "0" and ticks[-1] is not None and ticks[-1].endswith(" ms")
    assert root.attrib["role"] == "img"
    assert (
        "2 turns" in root.attrib["aria-label"]
        and "median 1\u202f500 ms" in root.attrib["aria-label"]
    )
    assert root.findtext(f"{SVG}title") == root.attrib["aria-label"]


def test_text_is_escaped_and_truncated() -> None:
    evil = '</text><script>alert("x")</script> & <b>bold</b> \x00\x07' + "long " * 20
    svg = timeline_svg(record(turn(0, evil, 700, end_of_turn=300, llm=200, tts=150,
                                   transport=50)))  # fmt: skip
    assert "<script>" not in svg and "<b>" not in svg and "\x00" not in svg
    root = parse(svg)  # well-formed XML despite the text
    assert root.find(f".//{SVG}script") is None
    (label,) = [t for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "label"]
    assert label.text is not None and label.text.startswith('1. </text><script>alert("x")')
    assert label.text.endswith("\u2026") and len(label.text) <= 40
    group = root.find(f".//{SVG}g[@data-turn='0']")
    assert group is not None
    full = group.findtext(f"{SVG}title")
    assert full is not None and "<b>bold</b>" in full and "long long" in full


def test_missing_stages_draw_no_segment_and_are_named() -> None:
    svg = timeline_svg(
        record(
            turn(0, "partial", 900, end_of_turn=600, llm=None, tts=250, transport=50),
            turn(1, "no reply", None),
        )
    )
    root = parse(svg)
    first = segments(root, 0)
    assert set(first) == {"end_of_turn", "tts", "transport"}
    # The next segment starts right after end_of_turn (nothing for the missing LLM stage).
    right = float(first["end_of_turn"].attrib["x"]) + float(first["end_of_turn"].attrib["width"])
    assert float(first["tts"].attrib["x"]) == pytest.approx(right, abs=0.02)
    group = root.find(f".//{SVG}g[@data-turn='0']")
    assert group is not None
    title = group.findtext(f"{SVG}title") or ""
    assert "not measured: LLM first token, STT, Turn model" in title
    assert segments(root, 1) == {}
    values = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "v2v"]
    assert values == ["900 ms", "no reply"]


def test_malformed_values_are_missing() -> None:
    bad = RecordEvent(
        "turn", 2.0, {"text": "x", "stages": {"end_of_turn": "fast", "llm": True, "tts": -5,
                                              "transport": float("nan")}, "voice_to_voice": "1"}
    )  # fmt: skip
    no_stages = RecordEvent("turn", 3.0, {"stages": None})
    turns = timeline_turns(record(bad, no_stages, RecordEvent("transcript", 0.5, {"text": "x"})))
    assert [t.index for t in turns] == [0, 1]
    assert turns[0].stages["end_of_turn"] is None and turns[0].stages["llm"] is None
    assert turns[0].stages["tts"] == 0.0 and turns[0].stages["transport"] is None
    assert turns[0].voice_to_voice is None
    root = parse(timeline_svg(record(bad, no_stages)))
    assert segments(root, 0) == {} and segments(root, 1) == {}


def test_a_call_without_turns() -> None:
    root = parse(timeline_svg(record(RecordEvent("transcript", 0.2, {"text": "hi"}))))
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-label"] == "Latency timeline: this call has no turns."
    assert root.find(f".//{SVG}rect") is None
    assert "No turns" in "".join(root.itertext())


@pytest.mark.parametrize(
    ("span", "step"), [(0, 1.0), (9, 2.0), (1000, 200.0), (2400, 500.0), (7000, 2000.0)]
)
def test_nice_step(span: float, step: float) -> None:
    assert nice_step(span) == step


def test_a_long_call_draws_the_first_turns_and_says_how_many_are_left_out() -> None:
    events = [turn(i, f"turn {i}", 500, end_of_turn=300, llm=100, tts=80, transport=20)
              for i in range(MAX_ROWS + 7)]  # fmt: skip
    root = parse(timeline_svg(record(*events)))
    assert len(root.findall(f".//{SVG}g[@class='turn']")) == MAX_ROWS
    (more,) = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "more"]
    assert more == "7 more turns are not drawn (the export has every turn)."
    assert f"of {MAX_ROWS + 7} turns" in root.attrib["aria-label"]
    assert root.attrib["aria-label"].endswith(f"The first {MAX_ROWS} are drawn.")
    assert float(root.attrib["height"]) > (MAX_ROWS + 1) * 30
