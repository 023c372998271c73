"""RecordedSession (sipserver/pipeline/record_tap.py): a real VoiceSession on a VirtualClock, with
one fake per model stage (tests/unit/voice_fakes.py), driven through whole calls the way a
transport does; the record events it emits, their order and offsets, and the recorder's feed.

Time: the clock is advanced 20 ms after each tick, so tick ``n`` runs at clock time ``n x 0.02``
and an event raised inside tick ``n`` has offset == its ``at``; one raised by a model task
between ticks ``n`` and ``n + 1`` has offset ``(n + 1) x 0.02``, within a frame after its ``at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from sipserver.pipeline.call_record import TURN_STAGES, RecordEvent
from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.echo import EchoSession
from sipserver.pipeline.endpointing import EndpointingOptions
from sipserver.pipeline.events import (
    AgentState,
    Interruption,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
    event_from_json,
    event_to_json,
)
from sipserver.pipeline.interruptions import InterruptionOptions
from sipserver.pipeline.record_tap import RecordedSession, record_batch
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession
from tests.unit.voice_fakes import (
    FRAME,
    EnergyVad,
    FakeLlm,
    FakeStt,
    FakeTts,
    FakeTurn,
    call_info,
    is_voiced,
    tone,
)

SILENCE = bytes(FRAME * 2)
SPEECH = tone(0.02)
TICK = 0.02
WITHIN_A_FRAME = TICK + 1e-6

GREETING = "Hello, this is the demo line."
ANSWER = "We open at nine in the morning and we close at five in the evening."
GOODBYE = "Goodbye then."


@dataclass
class FakeRecorder:
    """Keeps every tick it is given."""

    ticks: list[tuple[tuple[bytes, ...], bytes]] = field(default_factory=list)
    closed: int = 0

    def add(self, caller_frames: Sequence[bytes], agent_frame: bytes) -> None:
        assert self.closed == 0
        self.ticks.append((tuple(caller_frames), agent_frame))

    def close(self) -> None:
        self.closed += 1


@dataclass
class Call:
    """A call driven like a transport: caller frames, next_frame, DTMF, the hang-up."""

    session: RecordedSession
    clock: VirtualClock
    llm: FakeLlm
    recorder: FakeRecorder
    batches: list[tuple[int, list[RecordEvent]]] = field(default_factory=list)
    session_events: list[SessionEvent] = field(default_factory=list)
    chained: list[SessionEvent] = field(default_factory=list)
    fed: list[tuple[bytes, ...]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    ended: str | None = None

    @property
    def events(self) -> list[RecordEvent]:
        return [e for _, batch in self.batches for e in batch]

    def of(self, kind: str) -> list[RecordEvent]:
        return [e for e in self.events if e.type == kind]

    async def run(
        self,
        seconds: float,
        speech: Sequence[tuple[float, float]] = (),
        dtmf: dict[int, str] | None = None,
    ) -> None:
        start = len(self.sent)
        for i in range(start, start + round(seconds / TICK)):
            t = i * TICK
            frames = (SPEECH if any(a <= t + 1e-9 < b for a, b in speech) else SILENCE,)
            for frame in frames:
                self.session.on_audio(frame)
            self.fed.append(frames)
            if dtmf and i in dtmf:
                self.session.on_dtmf(dtmf[i])
            self.sent.append(self.session.next_frame())
            await self.clock.advance(TICK)
            reason = self.session.hangup_requested
            if reason is not None:
                self.ended = reason
                self.session.on_hangup(reason)
                return

    def first_voiced_tick(self, after: float = 0.0) -> int:
        ticks = range(round(after / TICK), len(self.sent))
        return next(i for i in ticks if is_voiced(self.sent[i]))


def make_call(
    texts: Sequence[str],
    replies: Sequence[str],
    *,
    greeting: str | None = GREETING,
    turn: bool = True,
    preemptive: bool = False,
    end_call_after: int | None = None,
    max_events: int = 5000,
    endpointing: EndpointingOptions | None = None,
) -> Call:
    clock = VirtualClock()
    answers = iter(replies)
    llm = FakeLlm(
        clock,
        reply=lambda m: next(answers),
        end_call_when=lambda m: (
            end_call_after is not None and sum(x.role == "user" for x in m) > end_call_after
        ),
    )
    recorder = FakeRecorder()
    call = Call(None, clock, llm, recorder)  # type: ignore[arg-type]

    def build(on_event: Any) -> VoiceSession:
        def both(event: SessionEvent) -> None:
            call.session_events.append(event)
            on_event(event)

        return VoiceSession(
            AgentProfile("Be brief.", greeting=greeting, end_call_digit="#"),
            VoiceOptions(
                interruptions=InterruptionOptions(min_duration=0.3),
                endpointing=endpointing or EndpointingOptions(0.5, 3.0),
                preemptive_generation=preemptive,
            ),
            stt=FakeStt(clock, texts),
            llm=llm,
            tts=FakeTts(clock),
            vad=EnergyVad(),
            clock=clock,
            turn_detector=FakeTurn(clock, lambda text: 0.9) if turn else None,
            on_event=both,
        )

    def emit(batch: list[RecordEvent]) -> None:
        call.batches.append((len(call.sent), batch))

    session = RecordedSession.build(
        build, emit, recorder=recorder, on_event=call.chained.append, max_events=max_events
    )
    assert session is not None
    call.session = session
    session.on_start(call_info())
    return call


def session_event(call: Call, cls: type[Any], n: int = 0, **match: Any) -> Any:
    found = [
        e
        for e in call.session_events
        if isinstance(e, cls) and all(getattr(e, k) == v for k, v in match.items())
    ]
    return found[n]


def assert_offset_of(event: RecordEvent, at: float) -> None:
    """Raised at session time ``at``: offset at that tick, or the next one for a task's."""
    assert 0 <= event.offset - at <= TICK + 1e-6, (event, at)


# ---------------------------------------------------------------------------- a whole call


async def test_a_whole_call_becomes_ordered_record_events_with_offsets() -> None:
    call = make_call(
        ["what time do you open", "thanks that is all"], [ANSWER, GOODBYE], end_call_after=1
    )
    # greeting (1.5 s of audio); a question 2.0-3.0; the answer cut by the caller at 5.0-6.0
    # (paused after 0.3 s, made real by the transcript); the goodbye; a DTMF key at 1.0 s.
    await call.run(15.0, speech=[(2.0, 3.0), (5.0, 6.0)], dtmf={50: "5"})
    assert call.ended == "agent ended the call"

    kinds = [(e.type, e.data.get("speaker") or e.data.get("kind")) for e in call.events]
    assert kinds == [
        ("dtmf", None),
        ("transcript", "agent"),  # the greeting, emitted when it ended
        ("transcript", "caller"),
        ("turn", None),
        ("interruption", "paused"),
        ("transcript", "caller"),
        ("interruption", "interrupted"),
        ("transcript", "agent"),  # the answer, cut: emitted at the interruption
        ("turn", None),
        ("transcript", "agent"),  # the goodbye
        ("end", None),
    ]
    (dtmf,) = call.of("dtmf")
    assert dtmf.offset == pytest.approx(50 * TICK) and dtmf.data == {"digit": "5"}

    greeting, answer, goodbye = [e for e in call.of("transcript") if e.data["speaker"] == "agent"]
    question, thanks = [e for e in call.of("transcript") if e.data["speaker"] == "caller"]
    # Agent lines start at their first audible frame and keep what was heard.
    assert greeting.offset == pytest.approx(call.first_voiced_tick() * TICK)
    assert greeting.data["text"] == GREETING and greeting.data["interrupted"] is False
    spoke = session_event(call, StateChanged, old=AgentState.SPEAKING)
    assert greeting.data["end"] == pytest.approx(spoke.at)
    assert answer.offset == pytest.approx(call.first_voiced_tick(after=3.0) * TICK)
    cut = session_event(call, Interruption, kind="interrupted")
    assert answer.data["text"] == cut.heard and answer.data["interrupted"] is True
    assert ANSWER.startswith(cut.heard) and 3 <= len(cut.heard.split()) < len(ANSWER.split())
    assert answer.data["end"] == pytest.approx(cut.at, abs=WITHIN_A_FRAME)
    assert goodbye.data["text"] == GOODBYE and goodbye.data["interrupted"] is False
    assert goodbye.offset == pytest.approx(call.first_voiced_tick(after=6.5) * TICK)

    # Caller lines start when the speech did, end when it did, and say when they arrived.
    assert question.data["text"] == "what time do you open"
    assert question.offset == pytest.approx(2.0, abs=WITHIN_A_FRAME)
    assert question.data["end"] == pytest.approx(3.0, abs=WITHIN_A_FRAME)
    arrived = session_event(call, TranscriptReceived, final=True)
    assert question.data["received"] == pytest.approx(arrived.at, abs=WITHIN_A_FRAME)
    assert thanks.offset == pytest.approx(5.0, abs=WITHIN_A_FRAME)
    assert thanks.data["end"] == pytest.approx(6.0, abs=WITHIN_A_FRAME)

    paused, interrupted = call.of("interruption")
    assert_offset_of(paused, session_event(call, Interruption, kind="paused").at)
    assert_offset_of(interrupted, cut.at)
    (end,) = call.of("end")
    assert end.data == {"reason": "agent ended the call", "ended_by": "agent"}
    assert end.offset == pytest.approx((len(call.sent)) * TICK)


async def test_the_turn_has_every_stage_summing_to_voice_to_voice() -> None:
    call = make_call(["what time do you open"], [ANSWER])
    await call.run(6.0, speech=[(2.0, 3.0)])
    (turn,) = call.of("turn")
    committed = session_event(call, TurnCommitted)
    latency = session_event(call, TurnLatency)
    assert turn.data["index"] == 0 and turn.data["text"] == "what time do you open"
    assert turn.data["preemptive"] is False
    assert turn.offset == pytest.approx(3.0, abs=WITHIN_A_FRAME)  # the turn's speech end
    stages = turn.data["stages"]
    assert list(stages) == list(TURN_STAGES)
    assert all(isinstance(v, float) and v >= 0 for v in stages.values()), stages
    v2v = turn.data["voice_to_voice"]
    parts = ("end_of_turn", "llm", "tts", "transport")
    assert sum(stages[k] for k in parts) == pytest.approx(v2v, abs=TICK * 1000)
    assert v2v == pytest.approx((latency.first_frame - latency.speech_end) * 1000, abs=0.5)
    # The fakes' own times: 0.5 s endpointing, the turn model's 50 ms, 0.2 s to the LLM's
    # first token; TTS audio 0.1 s after the first sentence is complete (one token per 10 ms);
    # STT ended 0.3 s after the speech (the VAD's 0.2 s + 0.1 s).
    assert stages["end_of_turn"] == pytest.approx(500, abs=21)
    assert stages["turn_model"] == pytest.approx(50, abs=1)
    assert stages["llm"] == pytest.approx(200, abs=21)
    sentence = (len(ANSWER.split()) - 1) * 10
    assert stages["tts"] == pytest.approx(sentence + 100, abs=21)
    assert stages["stt"] == pytest.approx(300, abs=21)
    assert stages["stt"] <= stages["end_of_turn"]
    assert committed.probability == pytest.approx(0.9)
    # What went to the LLM, once.
    assert call.llm.calls[-1][-1].content == "what time do you open"


async def test_a_question_skips_the_turn_model_and_a_preemptive_reply_has_no_llm_wait() -> None:
    call = make_call(
        ["are you open today?"],
        ["Yes we are."],
        preemptive=True,
        greeting=None,
        endpointing=EndpointingOptions(0.8, 3.0),
    )
    await call.run(5.0, speech=[(0.5, 1.5)])
    (turn,) = call.of("turn")
    assert turn.data["preemptive"] is True
    assert turn.data["stages"]["turn_model"] is None  # "?" ends the turn: not asked
    assert turn.data["stages"]["llm"] == 0.0  # the first token came before the commit
    (line,) = [e for e in call.of("transcript") if e.data["speaker"] == "agent"]
    assert line.data["text"] == "Yes we are."


async def test_a_dropped_speculative_reply_is_not_in_the_agent_line() -> None:
    call = make_call(
        ["I would like", "a table for two"],
        ["Done early.", "Done."],
        preemptive=True,
        greeting=None,
        turn=False,
        endpointing=EndpointingOptions(0.9, 3.0),
    )
    await call.run(7.0, speech=[(0.5, 1.5), (2.2, 3.0)])
    texts = [e.data["text"] for e in call.of("transcript") if e.data["speaker"] == "agent"]
    # The first speculative reply ("Done early.") was dropped when the caller went on; the
    # second, started on the whole text, is the one used and spoken.
    assert texts == ["Done."]
    assert [e.data["text"] for e in call.of("turn")] == ["I would like a table for two"]
    assert call.of("turn")[0].data["preemptive"] is True


# ------------------------------------------------------------------------- the plumbing


async def test_the_recorder_gets_one_add_per_tick_with_that_ticks_caller_frames() -> None:
    call = make_call(["what time do you open"], [ANSWER])
    await call.run(4.0, speech=[(2.0, 3.0)])
    # A burst (two caller frames in a tick) then a tick with none, as a jitter buffer does.
    burst = (SPEECH, SILENCE)
    for frame in burst:
        call.session.on_audio(frame)
    call.fed.append(burst)
    call.sent.append(call.session.next_frame())
    call.fed.append(())
    call.sent.append(call.session.next_frame())
    call.session.on_hangup("bye")
    ticks = call.recorder.ticks
    assert len(ticks) == len(call.sent)
    assert [caller for caller, _ in ticks] == call.fed
    assert [agent for _, agent in ticks] == call.sent
    assert call.recorder.closed == 1
    call.session.on_hangup("bye")  # a second hang-up changes nothing
    assert call.recorder.closed == 1


async def test_batches_go_out_at_most_once_per_tick_and_events_are_chained() -> None:
    call = make_call(
        ["what time do you open", "thanks that is all"], [ANSWER, GOODBYE], end_call_after=1
    )
    await call.run(15.0, speech=[(2.0, 3.0), (5.0, 6.0)])
    ticks = [tick for tick, _ in call.batches]
    assert len(ticks) == len(set(ticks)) and all(batch for _, batch in call.batches)
    # The other listener saw every session event, in order.
    assert call.chained == call.session_events
    # And the JSON of a batch is what the frame link carries.
    _, batch = call.batches[0]
    payload = record_batch(batch)
    assert payload["type"] == "record"
    assert [RecordEvent.from_json(e) for e in payload["events"]] == [
        RecordEvent(e.type, round(e.offset, 3), e.data) for e in batch
    ]


async def test_a_caller_hang_up_mid_reply_keeps_the_line_and_emits_no_end() -> None:
    call = make_call(["what time do you open"], [ANSWER])
    await call.run(4.5, speech=[(2.0, 3.0)])
    call.session.on_hangup("bye")
    assert [e.type for e in call.events][-1] == "transcript"
    assert call.of("end") == []  # main knows the caller hung up
    line = call.events[-1]
    assert line.data["speaker"] == "agent" and line.data["end"] == pytest.approx(4.5)


async def test_the_event_cap_drops_and_counts() -> None:
    call = make_call(["what time do you open"], [ANSWER], max_events=2)
    await call.run(1.0, dtmf={5: "1", 6: "2", 7: "3", 8: "4"})
    call.session.on_hangup("bye")
    assert [e.type for e in call.events] == ["dtmf", "dtmf", "error"]
    assert call.session.dropped == 3  # two keys and the greeting line
    assert call.events[-1].data == {"stage": "record", "error": "3 record events dropped"}


def test_the_echo_line_hung_up_by_its_dtmf_key_ends_by_dtmf() -> None:
    batches: list[list[RecordEvent]] = []
    recorder = FakeRecorder()
    echo = EchoSession(b"", sample_rate=8000, hangup_digit="#")
    session = RecordedSession(echo, batches.append, recorder=recorder)
    session.on_start(call_info())
    for _ in range(10):
        session.on_audio(SPEECH)
        session.next_frame()
    session.on_dtmf("#")
    assert session.hangup_requested == "dtmf"
    session.on_hangup("dtmf")
    events = [e for b in batches for e in b]
    assert [e.type for e in events] == ["dtmf", "end"]
    assert events[1].data == {"reason": "dtmf", "ended_by": "dtmf"}
    assert events[1].offset == pytest.approx(10 * TICK)
    assert len(recorder.ticks) == 10 and recorder.closed == 1
    # Passed straight through: the echo session saw everything.
    assert echo.ended == "dtmf"


def test_no_session_closes_the_recorder_and_builds_nothing() -> None:
    recorder = FakeRecorder()
    assert RecordedSession.build(lambda on_event: None, lambda b: None, recorder=recorder) is None
    assert recorder.closed == 1


# ------------------------------------------------------------------------ events JSON


def test_the_new_event_fields_round_trip_and_old_json_still_reads() -> None:
    events: list[SessionEvent] = [
        TranscriptReceived(2.0, "hi", True, 1.0, 1.8),
        TurnCommitted(3.0, "hi", 0.9, True),
        TurnLatency(4.0, 1.8, 2.3, 2.5, 2.6, 2.62, False, 2.1, 47.5),
    ]
    for event in events:
        assert event_from_json(event_to_json(event)) == event
    old = [
        {"type": "transcript", "at": 2.0, "text": "hi", "final": True},
        {"type": "turn", "at": 3.0, "text": "hi", "probability": None},
        {
            "type": "latency",
            "at": 4.0,
            "speech_end": 1.8,
            "end_of_turn": 2.3,
            "llm_first_token": None,
            "tts_first_audio": None,
            "first_frame": 2.62,
            "preemptive": False,
        },
    ]
    assert [event_from_json(o) for o in old] == [
        TranscriptReceived(2.0, "hi", True),
        TurnCommitted(3.0, "hi", None),
        TurnLatency(4.0, 1.8, 2.3, None, None, 2.62, False),
    ]
    with pytest.raises(ValueError, match="preemptive"):
        event_from_json({"type": "turn", "at": 1.0, "text": "x", "preemptive": 1})


def test_a_conversion_failure_is_logged_and_the_chained_receiver_still_gets_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chained: list[SessionEvent] = []
    echo = EchoSession(b"", sample_rate=8000)
    session = RecordedSession(echo, lambda b: None, on_event=chained.append)

    def boom(self: RecordedSession, event: SessionEvent) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(RecordedSession, "_convert", boom)
    event = TranscriptReceived(1.0, "hi", True)
    session.on_event(event)  # does not raise
    assert chained == [event]
