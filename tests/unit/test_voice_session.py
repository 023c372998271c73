"""VoiceSession on a VirtualClock: every turn-handling setting makes an observable difference.

The model stages are fakes (tests/unit/voice_fakes.py) that take virtual time; the VAD is an
energy VAD standing in for Silero. The caller is a script of tone bursts ("speech").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.endpointing import EndpointingOptions
from sipserver.pipeline.events import (
    AgentState,
    AgentText,
    CallEndRequested,
    Interruption,
    ProviderFailed,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
)
from sipserver.pipeline.interruptions import InterruptionOptions
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


@dataclass
class Rig:
    session: VoiceSession
    clock: VirtualClock
    stt: FakeStt
    llm: FakeLlm
    tts: FakeTts
    vad: EnergyVad
    out: list[bool] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)

    async def run(
        self,
        seconds: float,
        speech: Sequence[tuple[float, float]] = (),
        *,
        echo_gain: float = 0.0,
        echo_frames: int = 6,
    ) -> None:
        """Drive ``seconds`` of ticks from now; the caller speaks during the given spans, and
        the line returns the agent's audio ``echo_frames`` ticks late at ``echo_gain``."""
        start = len(self.out)
        for i in range(round(seconds / 0.02)):
            t = (start + i) * 0.02
            talking = any(a <= t + 1e-9 < b for a, b in speech)
            heard = SPEECH if talking else SILENCE
            if echo_gain and len(self.frames) >= echo_frames:
                echo = np.frombuffer(self.frames[-echo_frames], dtype="<i2") * echo_gain
                mixed = np.frombuffer(heard, dtype="<i2") + echo
                heard = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
            self.session.on_audio(heard)
            frame = self.session.next_frame()
            self.frames.append(frame)
            self.out.append(is_voiced(frame))
            await self.clock.advance(0.02)

    def agent_audio_between(self, a: float, b: float) -> float:
        """Seconds of voiced agent audio between times a and b."""
        return sum(self.out[round(a / 0.02) : round(b / 0.02)]) * 0.02

    def first_agent_audio_after(self, t: float) -> float | None:
        for i in range(round(t / 0.02), len(self.out)):
            if self.out[i]:
                return i * 0.02
        return None

    def states(self) -> list[tuple[float, AgentState]]:
        return [(e.at, e.new) for e in self.session.events if isinstance(e, StateChanged)]

    def commits(self) -> list[TurnCommitted]:
        return [e for e in self.session.events if isinstance(e, TurnCommitted)]

    def interruptions(self) -> list[Interruption]:
        return [e for e in self.session.events if isinstance(e, Interruption)]


def make(
    texts: Sequence[str] = ("hello there",),
    *,
    reply: str = "Hi. How can I help you today?",
    greeting: str | None = None,
    interruptions: InterruptionOptions | None = None,
    endpointing: EndpointingOptions | None = None,
    preemptive: bool = False,
    turn: FakeTurn | None = None,
    llm_kwargs: dict[str, object] | None = None,
    end_call_digit: str | None = None,
    stt_delay: float = 0.1,
    echo_gate: bool = True,
    early_stt: float | None = 0.2,
    min_silence: float = 0.2,
) -> Rig:
    clock = VirtualClock()
    stt = FakeStt(clock, texts, delay=stt_delay)
    llm = FakeLlm(clock, reply=lambda m: reply, **(llm_kwargs or {}))  # type: ignore[arg-type]
    tts = FakeTts(clock)
    vad = EnergyVad(min_silence=min_silence)
    options = VoiceOptions(
        interruptions=interruptions or InterruptionOptions(),
        endpointing=endpointing or EndpointingOptions(0.5, 3.0),
        preemptive_generation=preemptive,
        echo_gate=echo_gate,
        early_stt=early_stt,
    )
    session = VoiceSession(
        AgentProfile("Be brief.", greeting=greeting, end_call_digit=end_call_digit),
        options,
        stt=stt,
        llm=llm,
        tts=tts,
        vad=vad,
        clock=clock,
        turn_detector=turn,
    )
    session.on_start(call_info())
    return Rig(session, clock, stt, llm, tts, vad)


# ------------------------------------------------------------------------------- basic turns


async def test_greeting_plays_then_listens() -> None:
    rig = make(greeting="Hello caller, welcome.")
    await rig.run(2.0)
    assert rig.agent_audio_between(0, 2.0) == pytest.approx(0.75, abs=0.05)  # 3 words
    assert rig.session.state is AgentState.LISTENING
    assert [m.content for m in rig.session.history] == ["Hello caller, welcome."]


async def test_turn_reply_and_history() -> None:
    rig = make()
    await rig.run(5.0, speech=[(0.5, 1.5)])
    commits = rig.commits()
    assert [c.text for c in commits] == ["hello there"]
    # silence starts at 1.5; vad mode: end of turn after min_endpointing_delay (0.5 s)
    assert commits[0].at == pytest.approx(2.0, abs=0.03)
    first = rig.first_agent_audio_after(1.5)
    assert first is not None and first == pytest.approx(2.0 + 0.2 + 0.1, abs=0.06)
    states = [s for _, s in rig.states()]
    assert states[:4] == [
        AgentState.USER_SPEAKING,
        AgentState.THINKING,
        AgentState.SPEAKING,
        AgentState.LISTENING,
    ]
    assert [m.role for m in rig.session.history] == ["user", "assistant"]
    assert rig.session.history[1].content == "Hi. How can I help you today?"
    latency = next(e for e in rig.session.events if isinstance(e, TurnLatency))
    assert latency.speech_end == pytest.approx(1.5, abs=0.03)
    assert latency.first_frame is not None and latency.first_frame >= latency.end_of_turn


async def test_first_piece_spoken_before_reply_is_complete() -> None:
    rig = make(reply="Sure, here is a long answer. It has two sentences.")
    await rig.run(6.0, speech=[(0.5, 1.0)])
    assert rig.tts.texts == ["Sure, here is a long answer.", "It has two sentences."]


async def test_noise_with_empty_transcript_is_no_turn() -> None:
    rig = make(texts=[""])
    await rig.run(3.0, speech=[(0.5, 1.0)])
    assert rig.commits() == []
    assert rig.llm.calls == []
    assert rig.session.state is AgentState.LISTENING


# ------------------------------------------------------------------------------ endpointing


@pytest.mark.parametrize("min_delay", [0.5, 1.2])
async def test_min_endpointing_delay(min_delay: float) -> None:
    rig = make(endpointing=EndpointingOptions(min_delay, 3.0))
    await rig.run(5.0, speech=[(0.5, 1.5)])
    assert rig.commits()[0].at == pytest.approx(1.5 + min_delay, abs=0.03)


@pytest.mark.parametrize("max_delay", [1.5, 2.5])
async def test_max_endpointing_delay_forces_end_of_turn(max_delay: float) -> None:
    turn = None

    def unsure(text: str) -> float:
        return 0.1

    rig = make(endpointing=EndpointingOptions(0.5, max_delay))
    turn = FakeTurn(rig.clock, unsure)
    rig.session._turn = turn
    await rig.run(6.0, speech=[(0.5, 1.5)])
    assert rig.commits()[0].at == pytest.approx(1.5 + max_delay, abs=0.03)
    assert rig.commits()[0].probability == pytest.approx(0.1)


async def test_confident_turn_model_uses_min_delay() -> None:
    rig = make(endpointing=EndpointingOptions(0.5, 2.5))
    rig.session._turn = FakeTurn(rig.clock, lambda text: 0.9)
    await rig.run(5.0, speech=[(0.5, 1.5)])
    assert rig.commits()[0].at == pytest.approx(2.0, abs=0.03)


async def test_new_speech_cancels_end_of_turn_wait() -> None:
    rig = make(texts=["I would like", "to book a table"], endpointing=EndpointingOptions(0.5, 3))
    rig.session._turn = FakeTurn(rig.clock, lambda t: 0.9 if "table" in t else 0.2)
    # pause of 1.0 s between the two parts: longer than min delay, shorter than max.
    await rig.run(7.0, speech=[(0.5, 1.5), (2.5, 3.5)])
    commits = rig.commits()
    assert [c.text for c in commits] == ["I would like to book a table"]
    assert commits[0].at == pytest.approx(4.0, abs=0.03)


# --------------------------------------------------------------------- preemptive generation


async def test_preemptive_generation_saves_latency() -> None:
    results = {}
    for preemptive in (False, True):
        rig = make(preemptive=preemptive, endpointing=EndpointingOptions(0.8, 3.0))
        await rig.run(5.0, speech=[(0.5, 1.5)])
        latency = next(e for e in rig.session.events if isinstance(e, TurnLatency))
        assert latency.preemptive is preemptive
        assert latency.first_frame is not None and latency.speech_end is not None
        results[preemptive] = latency.first_frame - latency.speech_end
    # VAD end (0.2 s of silence) + STT (0.1 s) come first; then LLM (0.2 s) and TTS first
    # audio (0.1 s) run while endpointing still waits (0.8 s from the silence): all hidden.
    assert results[False] == pytest.approx(0.8 + 0.3, abs=0.05)
    assert results[True] == pytest.approx(0.8, abs=0.05)


async def test_speculative_reply_discarded_when_user_goes_on() -> None:
    rig = make(
        texts=["I would like", "a table for two"],
        preemptive=True,
        endpointing=EndpointingOptions(0.9, 3.0),
        reply="Done.",
    )
    await rig.run(7.0, speech=[(0.5, 1.5), (2.2, 3.0)])
    assert [c.text for c in rig.commits()] == ["I would like a table for two"]
    assert len(rig.llm.calls) == 2  # the speculative call, then the real one
    assert rig.llm.calls[-1][-1].content == "I would like a table for two"
    assert rig.session.history[0].content == "I would like a table for two"
    # only one reply reached the caller
    assert rig.tts.texts.count("Done.") == 2
    assert rig.agent_audio_between(0, 3.5) == 0


# --------------------------------------------------------------------------- interruptions

LONG = "This is a rather long answer that goes on and on for quite a few words indeed."


def _long_reply_rig(interruptions: InterruptionOptions, texts: Sequence[str]) -> Rig:
    return make(texts=texts, reply=LONG, interruptions=interruptions)


@pytest.mark.parametrize(("min_duration", "pauses"), [(0.5, False), (0.2, True)])
async def test_min_interruption_duration(min_duration: float, pauses: bool) -> None:
    rig = _long_reply_rig(InterruptionOptions(min_duration=min_duration), ["question", ""])
    # agent starts speaking at ~2.3 s; a 0.3 s cough at 3.0
    await rig.run(8.0, speech=[(0.5, 1.5), (3.0, 3.3)])
    kinds = [i.kind for i in rig.interruptions()]
    assert ("paused" in kinds) is pauses
    if pauses:
        # playout stopped at once: no agent audio right after the pause
        paused_at = rig.interruptions()[0].at
        assert rig.agent_audio_between(paused_at + 0.04, paused_at + 0.4) == 0


async def test_false_interruption_resumes_same_audio() -> None:
    rig = _long_reply_rig(
        InterruptionOptions(min_duration=0.2, false_timeout=1.0), ["question", ""]
    )
    await rig.run(12.0, speech=[(0.5, 1.5), (3.0, 3.3)])
    kinds = [i.kind for i in rig.interruptions()]
    assert kinds == ["paused", "resumed"]
    resumed = rig.interruptions()[1]
    # false timeout counts from the end of the interrupting speech (3.3 s)
    assert resumed.at == pytest.approx(3.3 + 1.0, abs=0.05)
    # the whole reply was heard: 17 words x 0.25 s of audio in total
    assert sum(rig.out) * 0.02 == pytest.approx(17 * 0.25, abs=0.1)
    assert rig.session.history[-1].content == LONG


async def test_false_interruption_without_resume_stops() -> None:
    rig = _long_reply_rig(
        InterruptionOptions(min_duration=0.2, false_timeout=1.0, resume_false=False),
        ["question", ""],
    )
    await rig.run(12.0, speech=[(0.5, 1.5), (3.0, 3.3)])
    kinds = [i.kind for i in rig.interruptions()]
    assert kinds == ["paused", "false"]
    assert rig.agent_audio_between(4.4, 12.0) == 0
    heard = rig.session.history[-1].content
    assert heard and LONG.startswith(heard) and heard != LONG


@pytest.mark.parametrize("timeout", [0.6, 1.5])
async def test_false_interruption_timeout(timeout: float) -> None:
    rig = _long_reply_rig(
        InterruptionOptions(min_duration=0.2, false_timeout=timeout), ["question", ""]
    )
    await rig.run(12.0, speech=[(0.5, 1.5), (3.0, 3.3)])
    assert rig.interruptions()[1].at == pytest.approx(3.3 + timeout, abs=0.05)


async def test_real_interruption_cancels_and_keeps_heard_text() -> None:
    rig = _long_reply_rig(InterruptionOptions(min_duration=0.2), ["question", "wait stop"])
    rig.llm.reply = lambda m: LONG if len(m) == 2 else "Sure, stopping."
    await rig.run(12.0, speech=[(0.5, 1.5), (3.5, 4.0)])
    kinds = [i.kind for i in rig.interruptions()]
    assert kinds == ["paused", "interrupted"]
    heard = rig.interruptions()[1].heard
    # the agent spoke from ~2.3 s to the pause at ~3.7 s: about 5 words of 0.25 s
    assert LONG.startswith(heard) and 3 <= len(heard.split()) <= 7
    roles = [(m.role, m.content) for m in rig.session.history]
    assert roles[:3] == [("user", "question"), ("assistant", heard), ("user", "wait stop")]
    assert roles[3] == ("assistant", "Sure, stopping.")


async def test_interruptions_disabled_ignores_caller() -> None:
    rig = _long_reply_rig(InterruptionOptions(allow=False), ["question", "wait stop"])
    await rig.run(12.0, speech=[(0.5, 1.5), (3.0, 4.5)])
    assert rig.interruptions() == []
    assert sum(rig.out) * 0.02 == pytest.approx(17 * 0.25, abs=0.1)
    assert [c.text for c in rig.commits()] == ["question"]
    assert len(rig.stt.finals) == 1  # speech during the agent was not transcribed


@pytest.mark.parametrize(("min_words", "pause_after"), [(0, 0.2), (3, 1.2)])
async def test_min_interruption_words(min_words: int, pause_after: float) -> None:
    rig = _long_reply_rig(
        InterruptionOptions(min_duration=0.2, min_words=min_words), ["question", "hold on now"]
    )
    await rig.run(12.0, speech=[(0.5, 1.5), (3.0, 4.5)])
    paused = rig.interruptions()[0]
    assert paused.kind == "paused"
    # interim STT (every 0.3 s, 0.1 s each) counts 3 words per second of audio: the 4th run,
    # on 1.1 s of speech, finds 3 words
    assert paused.at - 3.0 == pytest.approx(pause_after, abs=0.15)
    if min_words:
        assert rig.stt.interims >= 1


# ----------------------------------------------------------------------- ending, failures


async def test_end_call_tool_hangs_up_after_goodbye() -> None:
    rig = make(texts=["bye"], reply="Goodbye!", llm_kwargs={"end_call_when": lambda m: True})
    await rig.run(1.9, speech=[(0.5, 1.0)])
    assert rig.session.hangup_requested is None  # still saying goodbye (1.8 s to 2.05 s)
    await rig.run(1.0)
    assert rig.session.hangup_requested == "agent ended the call"
    assert any(isinstance(e, CallEndRequested) for e in rig.session.events)
    assert rig.session.history[-1].content == "Goodbye!"


async def test_dtmf_end_call_digit() -> None:
    rig = make(end_call_digit="#")
    rig.session.on_dtmf("5")
    assert rig.session.hangup_requested is None
    rig.session.on_dtmf("#")
    assert rig.session.hangup_requested == "caller pressed #"
    rig2 = make()
    rig2.session.on_dtmf("#")
    assert rig2.session.hangup_requested is None


async def test_llm_failure_gets_spoken_apology() -> None:
    rig = make(llm_kwargs={"fail": True})
    await rig.run(6.0, speech=[(0.5, 1.5)])
    assert any(isinstance(e, ProviderFailed) and e.stage == "llm" for e in rig.session.events)
    assert rig.tts.texts == ["Sorry, I had a problem there. Could you say that again?"]
    assert rig.agent_audio_between(2.0, 6.0) > 1.0


async def test_feedback_mixer_told_when_thinking() -> None:
    seen: list[bool] = []

    class Mixer:
        def mix(self, frame: bytes, *, thinking: bool) -> bytes:
            seen.append(thinking)
            return frame

    rig = make()
    rig.session._feedback = Mixer()
    await rig.run(4.0, speech=[(0.5, 1.5)])
    thinking_ticks = [i * 0.02 for i, t in enumerate(seen) if t]
    assert thinking_ticks[0] == pytest.approx(2.0, abs=0.03)
    assert thinking_ticks[-1] == pytest.approx(2.28, abs=0.05)


async def test_hangup_cancels_tasks() -> None:
    rig = make()
    await rig.run(2.1, speech=[(0.5, 1.5)])
    assert rig.session._tasks
    rig.session.on_hangup("bye")
    await rig.clock.advance(0.1)
    assert not rig.session._tasks


async def test_hangup_cancels_queued_stt_and_nothing_runs_after() -> None:
    # Two utterances end while the first one's STT is still running (2 s each, early STT off),
    # so the second one's job waits for the first. The caller hangs up while both are pending.
    rig = make(texts=["first", "second"], stt_delay=2.0, early_stt=None)
    await rig.run(2.5, speech=[(0.5, 1.0), (1.5, 2.0)])
    assert rig.stt.started == [pytest.approx(1.2, abs=0.03)]  # the second is queued behind it
    assert rig.session._stt_pending == 2
    rig.session.on_hangup("caller hung up")
    hung_up = rig.clock.now()
    await rig.clock.advance(0.0)  # the cancellations land at the hang-up instant
    assert rig.stt.cancelled == [hung_up]  # the running call, 0.7 s before it would have ended
    await rig.clock.advance(10.0)
    # ...and the queued one never started: no STT work, transcript, turn or reply after the
    # call ended, and no task left behind.
    assert rig.stt.cancelled == [hung_up]
    assert rig.stt.started == [pytest.approx(1.2, abs=0.03)]
    assert rig.stt.finals == []
    assert not any(isinstance(e, TranscriptReceived | TurnCommitted) for e in rig.session.events)
    assert rig.llm.calls == [] and rig.tts.texts == []
    assert not rig.session._tasks
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, others


@pytest.mark.parametrize("echo_gate", [True, False])
async def test_agent_echo_does_not_interrupt(echo_gate: bool) -> None:
    rig = make(
        texts=["question", "this is my own echo"],
        reply=LONG,
        interruptions=InterruptionOptions(min_duration=0.2),
        echo_gate=echo_gate,
    )
    await rig.run(10.0, speech=[(0.5, 1.5)], echo_gain=0.3)
    kinds = [i.kind for i in rig.interruptions()]
    if echo_gate:
        assert kinds == []
        assert rig.session.history[-1].content == LONG
        assert len(rig.stt.finals) == 1  # the echo was never transcribed as a turn
    else:
        assert kinds[:1] == ["paused"]  # without the gate the agent's echo stops it


async def test_caller_speech_over_echo_still_interrupts() -> None:
    rig = make(
        texts=["question", "wait"],
        reply=LONG,
        interruptions=InterruptionOptions(min_duration=0.2),
    )
    await rig.run(10.0, speech=[(0.5, 1.5), (3.5, 4.0)], echo_gain=0.3)
    assert [i.kind for i in rig.interruptions()] == ["paused", "interrupted"]


@pytest.mark.parametrize("early", [None, 0.2])
async def test_early_stt_starts_before_the_vad_ends_speech(early: float | None) -> None:
    rig = make(min_silence=0.55, early_stt=early, stt_delay=0.4)
    await rig.run(5.0, speech=[(0.5, 1.5)])
    transcript = next(e for e in rig.session.events if isinstance(e, TranscriptReceived))
    # STT (0.4 s) starts 0.2 s into the silence instead of 0.55 s
    assert transcript.at == pytest.approx(1.5 + (early or 0.55) + 0.4, abs=0.03)
    assert len(rig.stt.finals) == 1
    commit = rig.commits()[0]
    assert commit.at == pytest.approx(max(2.0, transcript.at), abs=0.03)


async def test_early_stt_discarded_when_caller_speaks_again() -> None:
    rig = make(
        texts=["first part", "first part and more"],
        min_silence=0.55,
        stt_delay=0.1,
    )
    # a 0.4 s pause: early STT runs at 0.2 s into it, then speech resumes
    await rig.run(6.0, speech=[(0.5, 1.5), (1.9, 2.5)])
    assert [c.text for c in rig.commits()] == ["first part and more"]
    # the early result of the first stretch was thrown away; one final for the whole segment
    assert len(rig.stt.finals) == 2


async def test_the_speculative_reply_begins_on_the_early_transcript() -> None:
    # The VAD ends the segment 0.55 s into the silence; the early transcript is in at
    # 0.2 + 0.1 s: the reply's LLM and TTS start then, and the commit uses that reply.
    rig = make(min_silence=0.55, stt_delay=0.1, preemptive=True)
    await rig.run(1.5 + 0.45, speech=[(0.5, 1.5)])  # still before the VAD's end of speech
    assert len(rig.llm.calls) == 1
    assert rig.llm.calls[0][-1].content == "hello there"
    assert not [e for e in rig.session.events if isinstance(e, AgentText)]  # not committed yet
    await rig.run(3.0)
    (commit,) = rig.commits()
    assert commit.preemptive and commit.text == "hello there"
    assert len(rig.llm.calls) == 1 and len(rig.stt.finals) == 1
    spoken = [e.text for e in rig.session.events if isinstance(e, AgentText)]
    assert spoken == ["Hi.", "How can I help you today?"]
    assert all(e.at >= commit.at for e in rig.session.events if isinstance(e, AgentText))


async def test_a_speculative_reply_on_an_early_transcript_goes_when_the_caller_goes_on() -> None:
    rig = make(
        texts=["first part", "first part and more"],
        min_silence=0.55,
        stt_delay=0.1,
        preemptive=True,
        reply="Answer to the whole. Second sentence.",
    )
    # a 0.4 s pause: the early transcript (and a reply on it) at 0.3 s into it, then speech
    await rig.run(6.0, speech=[(0.5, 1.5), (1.9, 2.5)])
    assert [c.text for c in rig.commits()] == ["first part and more"]
    asked = [call[-1].content for call in rig.llm.calls]
    assert asked[0] == "first part" and asked[-1] == "first part and more"
    # Only the committed reply's text is announced, once: the dropped one's never was.
    spoken = [e.text for e in rig.session.events if isinstance(e, AgentText)]
    assert spoken == ["Answer to the whole.", "Second sentence."]
    assert [m.content for m in rig.session.history] == [
        "first part and more",
        "Answer to the whole. Second sentence.",
    ]


# ------------------------------------------------------- VAD settings as the session sees them


def _segmenter_rig(**vad: float) -> Rig:
    from sipserver.pipeline.segmenter import VadOptions
    from tests.unit.voice_fakes import SegmenterVad

    rig = make()
    stream = SegmenterVad(VadOptions(sample_rate=16000, **vad))
    session = VoiceSession(
        AgentProfile("Be brief."),
        VoiceOptions(early_stt=None),
        stt=rig.stt,
        llm=rig.llm,
        tts=rig.tts,
        vad=stream,
        clock=rig.clock,
    )
    session.on_start(call_info())
    rig.session = session
    return rig


@pytest.mark.parametrize("prefix", [0.0, 0.3])
async def test_prefix_padding_reaches_stt(prefix: float) -> None:
    rig = _segmenter_rig(prefix_padding_duration=prefix, min_silence_duration=0.2)
    await rig.run(4.0, speech=[(1.0, 2.0)])
    (segment,) = rig.stt.finals
    seconds = len(segment) / (2 * 16000)
    # prefix + 1.0 s of speech + the closing silence (0.2 s, whole 32 ms windows)
    assert seconds == pytest.approx(prefix + 1.0 + 0.2, abs=0.07)


@pytest.mark.parametrize("cap", [60.0, 1.0])
async def test_max_buffered_speech_caps_what_stt_gets(cap: float) -> None:
    rig = _segmenter_rig(max_buffered_speech=cap, min_silence_duration=0.2)
    await rig.run(6.0, speech=[(0.5, 3.5)])
    (segment,) = rig.stt.finals
    seconds = len(segment) / (2 * 16000)
    assert seconds <= cap + 1e-6
    assert seconds > 1.0 if cap == 60.0 else seconds == pytest.approx(cap, abs=0.01)


@pytest.mark.parametrize(("verdict", "delay"), [(True, 0.5), (False, 3.0)])
async def test_stt_native_end_of_turn_overrides_turn_model(verdict: bool, delay: float) -> None:
    rig = make(endpointing=EndpointingOptions(0.5, 3.0))
    rig.session._turn = FakeTurn(rig.clock, lambda text: 0.0 if verdict else 1.0)
    stt = rig.stt
    stt.native_turn_detection = True  # type: ignore[misc]
    original = stt.transcribe

    async def with_verdict(pcm: bytes, *, final: bool = True, language: str | None = None):
        result = await original(pcm, final=final, language=language)
        from sipserver.pipeline.providers.base import Transcript

        return Transcript(result.text, end_of_turn=verdict)

    stt.transcribe = with_verdict  # type: ignore[method-assign]
    await rig.run(6.0, speech=[(0.5, 1.5)])
    assert rig.commits()[0].at == pytest.approx(1.5 + delay, abs=0.03)
    assert rig.session._turn.seen == []  # type: ignore[union-attr]


async def test_long_reply_is_produced_no_faster_than_it_plays() -> None:
    words = " ".join(["word"] * 200)  # 50 s of speech at 0.25 s per word
    rig = make(reply=words + ".")
    await rig.run(3.0, speech=[(0.5, 1.0)])
    await rig.run(10.0)
    reply = rig.session._reply
    assert reply is not None
    unplayed = (reply.audio_bytes - reply.played_bytes) / (2 * 8000)
    assert unplayed <= 10.5  # not the whole 50 s
    assert rig.session._playout is not None and rig.session._playout.overflow_frames == 0
    await rig.run(50.0)
    assert rig.session.history[-1].content == words + "."
    assert sum(rig.out) * 0.02 == pytest.approx(50.0, abs=0.3)


async def test_rewind_replays_audio_the_transport_dropped() -> None:
    rig = _long_reply_rig(
        InterruptionOptions(min_duration=0.2, false_timeout=1.0), ["question", ""]
    )
    await rig.run(3.3, speech=[(0.5, 1.5), (3.0, 3.3)])
    assert [i.kind for i in rig.interruptions()] == ["paused"]
    reply = rig.session._reply
    assert reply is not None
    played = reply.played_bytes
    assert rig.session.rewind(100) == 100  # a websocket peer emptied its 100 ms on clear
    assert reply.played_bytes == played - 1600
    await rig.run(9.0)
    assert [i.kind for i in rig.interruptions()] == ["paused", "resumed"]
    # the whole reply plus the 100 ms the caller never heard, played again after the resume
    assert sum(rig.out) * 0.02 == pytest.approx(17 * 0.25 + 0.1, abs=0.05)


async def test_rewind_is_a_no_op_unless_paused() -> None:
    rig = _long_reply_rig(InterruptionOptions(min_duration=0.2), ["question"])
    await rig.run(3.0, speech=[(0.5, 1.5)])
    assert rig.session.rewind(100) == 0


@pytest.mark.parametrize(("text", "rule", "delay"), [
    ("how do I register my phone?", True, 0.5),
    ("how do I register my phone?", False, 2.5),
    ("I want to register my phone", True, 2.5),
])  # fmt: skip
async def test_a_question_ends_the_turn_when_the_turn_model_is_unsure(
    text: str, rule: bool, delay: float
) -> None:
    rig = make(texts=[text], endpointing=EndpointingOptions(0.5, 2.5))
    rig.session._turn = FakeTurn(rig.clock, lambda t: 0.05)
    rig.session.options = VoiceOptions(
        endpointing=EndpointingOptions(0.5, 2.5), question_ends_turn=rule
    )
    await rig.run(6.0, speech=[(0.5, 1.5)])
    commit = rig.commits()[0]
    assert commit.at == pytest.approx(1.5 + delay, abs=0.03)
    # The model is not asked when the question rule decides (tests/unit/test_turn_cost.py).
    question = rule and text.endswith("?")
    assert commit.probability == (None if question else pytest.approx(0.05))
