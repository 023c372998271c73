"""The latency timeline of a call: one horizontal stacked bar per turn, as inline SVG.

A pure function of the record (:func:`timeline_svg`), drawn on the server so the call page
needs no chart library and a screenshot shows it as the operator saw it. Each turn's bar is
its voice-to-voice time split into the stages that follow each other
(:data:`BAR_STAGES`: ``end_of_turn``, ``llm``, ``tts``, ``transport``, which add up to the
voice-to-voice time, :data:`~sipserver.pipeline.call_record.TURN_STAGES`); ``stt`` and
``turn_model`` happen inside the end-of-turn wait, so they are drawn as thin bars over that
segment (``stt`` from the speech end, ``turn_model`` ending where the turn was committed).
Every row shares one millisecond axis; the row's label is the turn's text (truncated, the full
text in its tooltip) and the voice-to-voice time is written at the bar's end. A stage that did
not happen (null) has no segment and says so in the row's tooltip.

Everything from the record is escaped for XML (and characters XML cannot hold are dropped), so
a transcript can never inject markup into the page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from sipserver.pipeline.call_record import CallRecord

__all__ = [
    "BAR_STAGES",
    "INNER_STAGES",
    "MAX_ROWS",
    "STAGE_COLOURS",
    "STAGE_LABELS",
    "TimelineTurn",
    "nice_step",
    "timeline_svg",
    "timeline_turns",
]

BAR_STAGES: Final = ("end_of_turn", "llm", "tts", "transport")
"""The stacked segments of a turn's bar, left to right (their sum is the voice-to-voice)."""
INNER_STAGES: Final = ("stt", "turn_model")
"""Stages drawn as thin bars inside the end-of-turn segment."""
STAGE_LABELS: Final = {
    "end_of_turn": "End of turn",
    "stt": "STT",
    "turn_model": "Turn model",
    "llm": "LLM first token",
    "tts": "TTS first audio",
    "transport": "Transport",
}
STAGE_COLOURS: Final = {
    "end_of_turn": "#8c97aa",
    "stt": "#6a3fc1",
    "turn_model": "#c2410c",
    "llm": "#2457c5",
    "tts": "#2e8540",
    "transport": "#d4a017",
}
"""Distinct on white and to the common colour-vision deficiencies (hue and lightness differ)."""

WIDTH: Final = 960
"""Pixels of the drawing's width (it scales down with the page: ``viewBox``)."""
_LABEL_W: Final = 250
_VALUE_W: Final = 86
_PLOT_X: Final = _LABEL_W + 10
_PLOT_W: Final = WIDTH - _PLOT_X - _VALUE_W
_TOP: Final = 34
"""Legend height."""
_ROW_H: Final = 30
_BAR_H: Final = 18
_THIN_H: Final = 5
_AXIS_H: Final = 30
_LABEL_CHARS: Final = 36
MAX_ROWS: Final = 200
"""Turns drawn at most (6,000 px); a longer call's drawing says how many it leaves out (the
export has them all)."""
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class TimelineTurn:
    """One turn as the timeline draws it."""

    index: int
    text: str
    stages: Mapping[str, float | None]
    """Every one of :data:`TURN_STAGES` -> ms (None: did not happen or not a number)."""
    voice_to_voice: float | None

    @property
    def bar_ms(self) -> float:
        """Length of the stacked bar: the sum of the segments that happened."""
        return sum(v for s in BAR_STAGES if (v := self.stages.get(s)) is not None)


def _ms(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(0.0, float(value))


def timeline_turns(record: CallRecord) -> list[TimelineTurn]:
    """The record's ``turn`` events in order, their stages read defensively (a missing or
    malformed value is None)."""
    turns = []
    for number, event in enumerate(e for e in record.events if e.type == "turn"):
        raw = event.data.get("stages")
        stages = raw if isinstance(raw, Mapping) else {}
        index = event.data.get("index")
        turns.append(
            TimelineTurn(
                index=index if isinstance(index, int) and not isinstance(index, bool) else number,
                text=str(event.data.get("text") or ""),
                stages={s: _ms(stages.get(s)) for s in (*BAR_STAGES, *INNER_STAGES)},
                voice_to_voice=_ms(event.data.get("voice_to_voice")),
            )
        )
    return turns


def nice_step(span: float, ticks: int = 6) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` intervals
    over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML.sub("", value))


def _fmt(ms: float) -> str:
    return f"{ms:,.0f}".replace(",", "\u202f")


def _truncate(text: str, limit: int = _LABEL_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(turns: Sequence[TimelineTurn]) -> str:
    if not turns:
        return "Latency timeline: this call has no turns."
    v2v = [t.voice_to_voice for t in turns if t.voice_to_voice is not None]
    plural = "s" if len(turns) != 1 else ""
    text = f"Latency timeline of {len(turns)} turn{plural}"
    if v2v:
        text += (
            f": voice-to-voice median {_fmt(_median(v2v))} ms, "
            f"fastest {_fmt(min(v2v))} ms, slowest {_fmt(max(v2v))} ms"
        )
    else:
        text += ": no reply reached the caller"
    return text + "."


def _legend() -> list[str]:
    out = ['<g class="legend">']
    x = 0.0
    for stage in (*BAR_STAGES, *INNER_STAGES):
        h = _THIN_H if stage in INNER_STAGES else 12
        out.append(
            f'<rect x="{x:.1f}" y="{12 + (12 - h) / 2:.1f}" width="14" height="{h}" '
            f'fill="{STAGE_COLOURS[stage]}"/>'
        )
        out.append(f'<text x="{x + 19:.1f}" y="22">{_text(STAGE_LABELS[stage])}</text>')
        x += 19 + 6.6 * len(STAGE_LABELS[stage]) + 16
    out.append(
        f'<text x="{x:.1f}" y="22" fill="#5b6678">(thin bars: inside the end of turn)</text>'
    )
    out.append("</g>")
    return out


def timeline_svg(record: CallRecord) -> str:
    """The call's latency timeline as an ``<svg>`` element (UTF-8 text, no XML declaration),
    to put inline in an HTML page. A call without turns gets a small drawing that says so."""
    turns = timeline_turns(record)
    summary = _summary(turns)
    left_out = max(0, len(turns) - MAX_ROWS)
    if left_out:
        turns = turns[:MAX_ROWS]
        summary += f" The first {MAX_ROWS} are drawn."
    if not turns:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
            f'width="{WIDTH}" height="40" viewBox="0 0 {WIDTH} 40" aria-label={_attr(summary)}>'
            f"<title>{_text(summary)}</title>"
            '<text x="0" y="24" font-family="system-ui, sans-serif" font-size="14" '
            'fill="#5b6678">No turns: the agent never answered a caller\'s turn.</text></svg>'
        )
    longest = max(
        max(t.bar_ms, t.voice_to_voice or 0.0, *(v or 0.0 for v in t.stages.values()))
        for t in turns
    )
    step = nice_step(longest)
    axis_ms = max(step, math.ceil(longest / step) * step)
    scale = _PLOT_W / axis_ms
    height = _TOP + len(turns) * _ROW_H + _AXIS_H + (_ROW_H if left_out else 0)
    plot_bottom = _TOP + len(turns) * _ROW_H
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'aria-label={_attr(summary)} font-family="system-ui, sans-serif" font-size="12" '
        'fill="#1d2430">',
        f"<title>{_text(summary)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        *_legend(),
    ]
    # Grid lines and the axis's ticks.
    out.append('<g class="axis">')
    tick = 0.0
    while tick <= axis_ms + 1e-9:
        x = _PLOT_X + tick * scale
        out.append(
            f'<line x1="{x:.2f}" y1="{_TOP - 4}" x2="{x:.2f}" y2="{plot_bottom + 4}" '
            'stroke="#e3e7ee"/>'
        )
        label = _fmt(tick) + (" ms" if tick + step > axis_ms + 1e-9 else "")
        anchor = "end" if tick + step > axis_ms + 1e-9 else "middle"
        out.append(
            f'<text class="tick" x="{x:.2f}" y="{plot_bottom + 20}" text-anchor="{anchor}" '
            f'fill="#5b6678">{_text(label)}</text>'
        )
        tick += step
    out.append(
        f'<line x1="{_PLOT_X}" y1="{plot_bottom + 4}" x2="{_PLOT_X + _PLOT_W}" '
        f'y2="{plot_bottom + 4}" stroke="#8895a7"/></g>'
    )
    for row, turn in enumerate(turns):
        out.extend(_row(turn, _TOP + row * _ROW_H, scale))
    if left_out:
        out.append(
            f'<text class="more" x="{_PLOT_X}" y="{plot_bottom + _AXIS_H + 18}" fill="#5b6678">'
            f"{left_out} more turns are not drawn (the export has every turn).</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _row(turn: TimelineTurn, top: float, scale: float) -> list[str]:
    """One turn: its label, its stacked segments, the thin inner bars and the total."""
    y = top + (_ROW_H - _BAR_H) / 2
    missing = [STAGE_LABELS[s] for s in (*BAR_STAGES, *INNER_STAGES) if turn.stages[s] is None]
    v2v = "no reply" if turn.voice_to_voice is None else f"{_fmt(turn.voice_to_voice)} ms"
    row_title = f"Turn {turn.index + 1}: {turn.text or '(no text)'} \u2014 voice-to-voice {v2v}"
    if missing:
        row_title += f"; not measured: {', '.join(missing)}"
    label = f"{turn.index + 1}. {_truncate(turn.text) or '(no text)'}"
    out = [
        f'<g class="turn" data-turn="{turn.index}"><title>{_text(row_title)}</title>',
        f'<text class="label" x="{_LABEL_W}" y="{y + _BAR_H / 2 + 4:.1f}" '
        f'text-anchor="end">{_text(label)}</text>',
    ]
    x = float(_PLOT_X)
    for stage in BAR_STAGES:
        ms = turn.stages[stage]
        if ms is None or ms <= 0:
            continue
        w = ms * scale
        out.append(
            f'<rect class="seg" data-stage="{stage}" data-ms="{ms:g}" x="{x:.2f}" y="{y:.1f}" '
            f'width="{w:.2f}" height="{_BAR_H}" fill="{STAGE_COLOURS[stage]}">'
            f"<title>{_text(f'{STAGE_LABELS[stage]}: {_fmt(ms)} ms')}</title></rect>"
        )
        x += w
    eot = turn.stages["end_of_turn"]
    for n, stage in enumerate(INNER_STAGES):
        ms = turn.stages[stage]
        if ms is None or ms <= 0:
            continue
        w = ms * scale
        # STT runs from the speech end; the turn model's prediction ends at the commit.
        start = _PLOT_X if stage == "stt" or eot is None else _PLOT_X + max(0.0, eot - ms) * scale
        ty = y + 2 if n == 0 else y + _BAR_H - 2 - _THIN_H
        out.append(
            f'<rect class="inner" data-stage="{stage}" data-ms="{ms:g}" x="{start:.2f}" '
            f'y="{ty:.1f}" width="{w:.2f}" height="{_THIN_H}" fill="{STAGE_COLOURS[stage]}" '
            f'stroke="#ffffff" stroke-width="0.5">'
            f"<title>{_text(f'{STAGE_LABELS[stage]}: {_fmt(ms)} ms')}</title></rect>"
        )
    out.append(
        f'<text class="v2v" x="{x + 6:.2f}" y="{y + _BAR_H / 2 + 4:.1f}" '
        f'font-weight="600">{_text(v2v)}</text></g>'
    )
    return out
