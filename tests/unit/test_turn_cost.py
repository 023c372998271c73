"""What the turn model costs a session: it runs only for a pause that can end the caller's turn,
and its features are the Whisper log-mel the model was trained on, computed more cheaply."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor  # type: ignore[import-untyped]

from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.endpointing import EndpointingOptions
from sipserver.pipeline.events import TurnCommitted, TurnPrediction
from sipserver.pipeline.interruptions import InterruptionOptions
from sipserver.pipeline.turn import SmartTurnDetector
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession
from tests.unit.voice_fakes import (
    FRAME,
    EnergyVad,
    FakeLlm,
    FakeStt,
    FakeTts,
    FakeTurn,
    call_info,
    tone,
)

SILENCE = bytes(FRAME * 2)
SPEECH = tone(0.02)
LONG_REPLY = " ".join(["word"] * 17)  # ~4.25 s of agent speech


async def drive(
    texts: Sequence[str],
    speech: Sequence[tuple[float, float]],
    seconds: float,
    *,
    reply: str = "Fine.",
    interruptions: InterruptionOptions | None = None,
    stt_delay: float = 0.1,
    endpointing: EndpointingOptions | None = None,
    question_ends_turn: bool = True,
    probability: float = 0.9,
) -> tuple[VoiceSession, FakeTurn]:
    """One session with a turn model that counts its calls, driven for ``seconds``."""
    clock = VirtualClock()
    turn = FakeTurn(clock, lambda text: probability)
    session = VoiceSession(
        AgentProfile("Be brief."),
        VoiceOptions(
            interruptions=interruptions or InterruptionOptions(),
            endpointing=endpointing or EndpointingOptions(0.5, 3.0),
            preemptive_generation=False,
            question_ends_turn=question_ends_turn,
        ),
        stt=FakeStt(clock, texts, delay=stt_delay),
        llm=FakeLlm(clock, reply=lambda m: reply),
        tts=FakeTts(clock),
        vad=EnergyVad(min_silence=0.2),
        clock=clock,
        turn_detector=turn,
    )
    session.on_start(call_info())
    for i in range(round(seconds / 0.02)):
        t = i * 0.02
        talking = any(a <= t < b for a, b in speech)
        session.on_audio(SPEECH if talking else SILENCE)
        session.next_frame()
        await clock.advance(0.02)
    return session, turn


def commits(session: VoiceSession) -> list[TurnCommitted]:
    return [e for e in session.events if isinstance(e, TurnCommitted)]


def predictions(session: VoiceSession) -> list[str]:
    return [e.outcome for e in session.events if isinstance(e, TurnPrediction)]


async def test_each_pause_that_can_end_the_turn_asks_the_model_once() -> None:
    session, turn = await drive(["how much is it", "and the office hours"], [(0.5, 1.5)], 4.0)
    assert turn.seen == ["how much is it"]
    assert [c.text for c in commits(session)] == ["how much is it"]
    assert predictions(session) == ["run"]
    assert commits(session)[0].probability == pytest.approx(0.9)


@pytest.mark.parametrize("probability", [0.05, 0.9])
async def test_a_question_ends_the_turn_without_asking_the_model(probability: float) -> None:
    # Whatever the model would say, "?" ends the turn after min_endpointing_delay: not asked.
    session, turn = await drive(["how much is it?"], [(0.5, 1.5)], 4.0, probability=probability)
    assert turn.seen == []
    assert predictions(session) == ["skipped_question"]
    (commit,) = commits(session)
    assert commit.probability is None  # no model figure: none was computed
    assert commit.at == pytest.approx(1.5 + 0.5, abs=0.03)


async def test_without_the_question_rule_a_question_is_asked_about() -> None:
    session, turn = await drive(
        ["how much is it?"], [(0.5, 1.5)], 5.0, question_ends_turn=False, probability=0.05
    )
    assert turn.seen == ["how much is it?"]
    assert predictions(session) == ["run"]
    (commit,) = commits(session)
    assert commit.probability == pytest.approx(0.05)
    assert commit.at == pytest.approx(1.5 + 3.0, abs=0.03)  # unsure: max_endpointing_delay


@pytest.mark.parametrize("delay", [0.5, 1.5])
async def test_equal_endpointing_delays_end_the_turn_without_asking_the_model(
    delay: float,
) -> None:
    session, turn = await drive(
        ["I want to book a table"],
        [(0.5, 1.5)],
        5.0,
        endpointing=EndpointingOptions(delay, delay),
        probability=0.05,
    )
    assert turn.seen == []
    assert predictions(session) == ["skipped_delays"]
    (commit,) = commits(session)
    assert commit.probability is None
    assert commit.at == pytest.approx(1.5 + delay, abs=0.03)


async def test_speech_that_does_not_interrupt_the_agent_never_asks_the_model() -> None:
    # The agent's reply plays from ~2.2 s; the caller talks over it at 3.0-4.5 s, with
    # interruptions off: that segment can end no turn.
    session, turn = await drive(
        ["question", "wait stop"],
        [(0.5, 1.5), (3.0, 4.5)],
        10.0,
        reply=LONG_REPLY,
        interruptions=InterruptionOptions(allow=False),
    )
    assert turn.seen == ["question"]
    assert [c.text for c in commits(session)] == ["question"]


async def test_noise_without_words_never_asks_the_model() -> None:
    session, turn = await drive([""], [(0.5, 1.0)], 4.0)
    assert turn.seen == []
    assert commits(session) == []


async def test_a_caller_who_goes_on_before_the_transcript_is_asked_about_once() -> None:
    # The first segment's transcript (0.6 s of STT) arrives while the caller speaks again:
    # no verdict for it; the whole turn is judged once, after the second segment.
    session, turn = await drive(
        ["I would like", "to book a table"], [(0.5, 1.5), (1.9, 3.0)], 7.0, stt_delay=0.6
    )
    assert turn.seen == ["I would like to book a table"]
    assert [c.text for c in commits(session)] == ["I would like to book a table"]


# ------------------------------------------------------------------------ Smart Turn features


def reference_features(pcm: bytes) -> np.ndarray:
    """faster-whisper's extractor over the whole zero-padded 8 s window (the original way)."""
    extractor = FeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=8)
    window_len = 8 * 16000
    tail = pcm[-2 * window_len :]
    audio = np.frombuffer(tail[: len(tail) // 2 * 2], dtype="<i2").astype(np.float32)
    if audio.size:
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    window = np.zeros(window_len, dtype=np.float32)
    window[window_len - audio.size :] = audio
    return np.asarray(extractor(window, padding=0), dtype=np.float32)[np.newaxis]


@pytest.mark.parametrize(
    "samples", [0, 1, 159, 160, 200, 201, 399, 401, 16000, 48123, 127999, 128000, 200000]
)
def test_features_equal_whisper_log_mel_of_the_padded_window(samples: int) -> None:
    rng = np.random.default_rng(samples)
    pcm = (rng.standard_normal(samples) * 3000).astype("<i2").tobytes()
    np.testing.assert_allclose(
        SmartTurnDetector.features(pcm), reference_features(pcm), rtol=0, atol=1e-5
    )


def test_mel_bands_hold_every_weight_of_the_dense_filters() -> None:
    bins, weights = SmartTurnDetector._mel_bands()
    filters = FeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=8).mel_filters
    dense = np.zeros_like(filters, dtype=np.float32)
    for m in range(filters.shape[0]):
        np.add.at(dense[m], bins[m], weights[m])  # a clipped bin repeats with weight 0
    np.testing.assert_array_equal(dense, filters.astype(np.float32))
    assert weights.shape[1] < filters.shape[1] // 4  # bands, not the whole spectrum


async def test_a_transcript_later_than_max_delay_ends_the_turn_without_the_model() -> None:
    # STT takes 3.5 s: the silence (from 1.5 s) has outlasted max_endpointing_delay (3 s) when
    # the transcript comes; the turn ends at once and the model is not asked.
    session, turn = await drive(["how much is it"], [(0.5, 1.5)], 7.0, stt_delay=3.5)
    assert turn.seen == []
    assert predictions(session) == ["skipped_late"]
    (commit,) = commits(session)
    assert commit.text == "how much is it"
    assert commit.probability is None
    assert commit.at == pytest.approx(1.5 + 0.2 + 3.5, abs=0.05)  # VAD end + STT, no wait
