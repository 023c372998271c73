"""The offline models with real weights: Whisper tiny.en, Piper joe-medium, espeak-ng, Smart Turn.

Speech comes from espeak-ng (and Piper), converted with sox like a phone line would deliver it.
Probabilities measured here are printed (``pytest -s``) so regressions are visible.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from faster_whisper import WhisperModel  # type: ignore[import-untyped]

from sipserver.media.resample import resample
from sipserver.pipeline.providers.local import EspeakTts, PiperTts, WhisperStt
from sipserver.pipeline.turn import SmartTurnDetector
from tests.speech import espeak

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="needs espeak-ng and sox",
    ),
]

OFFICE = "please tell me the opening hours of the office"
THREE_SENTENCES = (
    "Our office opens early in the morning. It closes late in the afternoon. "
    "On Saturdays we are open until noon."
)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


# What these tests assert about a transcript, and why not a word error rate. Whisper runs in int8,
# and int8 matrix kernels differ between CPUs: on an AMD EPYC (CTranslate2 without MKL, oneDNN's
# AVX2 path) tiny.en hears OFFICE as "please tell me the opening hour on the office" (7 of 9
# words), on an Intel Xeon with MKL as "... the opening hour of the office" (8 of 9). The function
# words and plural endings move with the kernels; the content words that carry the question - and
# that the knowledge-base lookup keys on - are heard on both. So each check names the words the
# behaviour under test needs, matched by stem ("hour" matches "hours"), and every stem must be
# heard. Reproduce the other kernels here with CT2_USE_MKL=0 ONEDNN_MAX_CPU_ISA=SSE41.

#: The words of OFFICE that carry its meaning.
OFFICE_KEYS = ("tell", "opening", "hour", "office")
#: One or two words from each of THREE_SENTENCES: hearing one of each shows the sentence was
#: spoken, which is what the streaming tests are about.
SENTENCE_KEYS = (("office", "morning"), ("clos", "afternoon"), ("saturday", "noon"))


def missing_stems(text: str, stems: tuple[str, ...]) -> list[str]:
    """The stems of ``stems`` that no word of ``text`` starts with."""
    heard = words(text)
    return [stem for stem in stems if not any(word.startswith(stem) for word in heard)]


def assert_heard(text: str, stems: tuple[str, ...]) -> None:
    """Every stem is heard in ``text``."""
    missing = missing_stems(text, stems)
    assert not missing, f"not heard: {missing} in {text!r}"


def assert_every_sentence_heard(text: str) -> None:
    """At least one key word of each of THREE_SENTENCES is heard in ``text``."""
    unheard = [keys for keys in SENTENCE_KEYS if len(missing_stems(text, keys)) == len(keys)]
    assert not unheard, f"sentences not heard (by their key words {unheard}): {text!r}"


def espeak_pcm(tmp_path: Path, text: str, *, voice: str = "en", rate: int = 16000) -> bytes:
    """espeak-ng speech as s16le mono at ``rate``."""
    return espeak(text, tmp_path, rate=rate, voice=voice).tobytes()


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


@pytest.fixture(scope="module")
def stt() -> WhisperStt:
    model = WhisperStt()
    model.load()
    return model


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    voice = PiperTts()
    voice.load()
    return voice


# -------------------------------------------------------------------------------------- STT


async def test_whisper_transcribes_espeak_speech(stt: WhisperStt, tmp_path: Path) -> None:
    result = await stt.transcribe(espeak_pcm(tmp_path, OFFICE))
    print(f"\nwhisper 16k: {result.text!r}")
    assert result.final and result.language == "en"
    assert_heard(result.text, OFFICE_KEYS)


async def test_whisper_transcribes_8k_band_limited_speech(stt: WhisperStt, tmp_path: Path) -> None:
    narrowband = espeak_pcm(tmp_path, OFFICE, rate=8000)
    result = await stt.transcribe(resample(narrowband, 8000, 16000))
    print(f"\nwhisper 8k->16k: {result.text!r}")
    # Telephone-band speech: tiny.en loses function words first ("opening hour on the office"
    # on both CPUs seen); the words of the question are still heard.
    assert_heard(result.text, OFFICE_KEYS)


async def test_whisper_interim_is_greedy_and_marked(stt: WhisperStt, tmp_path: Path) -> None:
    result = await stt.transcribe(espeak_pcm(tmp_path, OFFICE), final=False)
    assert not result.final
    # An interim transcript (greedy, no temperature fallback) is used for early answers and
    # interruption words: the question's words are what it has to carry.
    assert_heard(result.text, OFFICE_KEYS)


async def test_whisper_encoder_sees_the_utterance_window(
    stt: WhisperStt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = WhisperModel.encode

    def spy(self: WhisperModel, features: np.ndarray) -> object:
        seen.append(features.shape[-1])
        return original(self, features)

    monkeypatch.setattr(WhisperModel, "encode", spy)
    pcm = espeak_pcm(tmp_path, OFFICE)
    assert len(pcm) < 6 * 32000  # under 6 s: the 10 s window
    result = await stt.transcribe(pcm)
    assert_heard(result.text, OFFICE_KEYS)
    full = WhisperStt(window="full")  # the same loaded model: the window is per decode
    assert_heard((await full.transcribe(pcm)).text, OFFICE_KEYS)
    assert seen == [1000, 3000]


async def test_whisper_empty_audio_is_empty_text(stt: WhisperStt) -> None:
    assert (await stt.transcribe(b"")).text == ""


async def test_concurrent_transcriptions_do_not_fail(stt: WhisperStt, tmp_path: Path) -> None:
    pcm = espeak_pcm(tmp_path, OFFICE)
    results = await asyncio.gather(*(stt.transcribe(pcm) for _ in range(3)))
    for result in results:
        assert_heard(result.text, OFFICE_KEYS)
    # The same audio decoded side by side on the same kernels: one decode must not disturb
    # another (shared state would show as different texts).
    assert len({r.text for r in results}) == 1, [r.text for r in results]


# ------------------------------------------------------------------------------------ Piper


async def test_piper_streams_first_sentence_before_the_rest(
    piper: PiperTts, stt: WhisperStt
) -> None:
    started = time.perf_counter()
    first_at = 0.0
    chunks: list[bytes] = []
    async for chunk in piper.synthesize(THREE_SENTENCES):
        if not chunks:
            first_at = time.perf_counter() - started
        chunks.append(chunk)
    total = time.perf_counter() - started
    pcm = b"".join(chunks)
    print(f"\npiper: first chunk {first_at:.3f} s, total {total:.3f} s, {len(chunks)} chunks")
    assert piper.sample_rate == 22050
    assert len(chunks) == 3
    assert first_at < total
    assert rms(pcm) > 500
    result = await stt.transcribe(resample(pcm, piper.sample_rate, stt.sample_rate))
    print(f"piper -> whisper: {result.text!r}")
    assert_every_sentence_heard(result.text)


async def _wait_until_idle(piper: PiperTts, deadline_s: float) -> float:
    started = time.perf_counter()
    while piper.pending and time.perf_counter() - started < deadline_s:
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


async def test_piper_stops_when_the_consumer_closes(piper: PiperTts) -> None:
    long_text = " ".join([THREE_SENTENCES] * 5)  # 15 sentences, several seconds of synthesis
    started = time.perf_counter()
    async for _ in piper.synthesize(long_text):
        pass
    full = time.perf_counter() - started

    stream = piper.synthesize(long_text)
    await anext(stream)
    assert piper.pending > 0  # the next sentences are queued on the voice's executor
    await stream.aclose()
    stopped_after = await _wait_until_idle(piper, full)
    print(f"\npiper: full {full:.2f} s, executor idle {stopped_after:.3f} s after close")
    assert piper.pending == 0
    assert stopped_after < full / 2


async def test_piper_stops_when_the_consumer_task_is_cancelled(piper: PiperTts) -> None:
    long_text = " ".join([THREE_SENTENCES] * 5)
    got_first = asyncio.Event()

    async def speak() -> None:
        async for _ in piper.synthesize(long_text):
            got_first.set()
            await asyncio.sleep(10)  # a slow consumer, e.g. real-time playout

    task = asyncio.create_task(speak())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped_after = await _wait_until_idle(piper, 5.0)
    print(f"\npiper: executor idle {stopped_after:.3f} s after cancel")
    assert piper.pending == 0


async def test_piper_concurrent_syntheses_share_one_thread(piper: PiperTts) -> None:
    results = await asyncio.gather(*(_speak(piper, "Hello there.") for _ in range(8)))
    assert all(rms(pcm) > 500 for pcm in results)
    # Eight calls greeting at once run their sentences one after another on the voice's
    # executor (workers: 1): a thread each held ~40 MB of onnxruntime buffers per call.
    piper_threads = [t for t in threading.enumerate() if t.name.startswith("piper-tts")]
    assert len(piper_threads) <= piper.workers


async def _speak(piper: PiperTts, text: str) -> bytes:
    return b"".join([chunk async for chunk in piper.synthesize(text)])


# ----------------------------------------------------------------------------------- espeak


async def test_espeak_speech_is_recognised(stt: WhisperStt) -> None:
    tts = EspeakTts()
    chunks = [chunk async for chunk in tts.synthesize(THREE_SENTENCES)]
    pcm = b"".join(chunks)
    assert tts.sample_rate == 22050
    assert len(chunks) > 1 and all(len(c) % 2 == 0 for c in chunks)
    assert 4.0 < len(pcm) / 2 / tts.sample_rate < 12.0
    result = await stt.transcribe(resample(pcm, tts.sample_rate, stt.sample_rate))
    print(f"\nespeak -> whisper: {result.text!r}")
    assert_every_sentence_heard(result.text)


# ------------------------------------------------------------------------------- Smart Turn

PAUSE = bytes(2 * 3200)  # 0.2 s of silence: when the VAD reports the pause


def _speech_then_pause(pcm: bytes) -> bytes:
    """espeak's own trailing silence replaced by a 0.2 s pause."""
    samples = np.frombuffer(pcm, dtype="<i2")
    last = int(np.nonzero(np.abs(samples) > 300)[0][-1])
    return samples[: last + 1].tobytes() + PAUSE


@pytest.mark.parametrize(
    ("voice", "complete", "unfinished"),
    [
        (
            "en",
            "Please tell me the opening hours of the office.",
            "Please tell me the opening hours of the office, and",
        ),
        (
            "es",
            "Quiero reservar una mesa para dos personas esta noche.",
            "Quiero reservar una mesa para dos personas esta noche, y",
        ),
        (
            "pt",
            "Eu gostaria de reservar uma mesa para duas pessoas hoje à noite.",
            "Eu gostaria de reservar uma mesa para duas pessoas hoje à noite, e",
        ),
    ],
)
async def test_smart_turn_tells_finished_from_unfinished(
    voice: str, complete: str, unfinished: str, tmp_path: Path
) -> None:
    detector = SmartTurnDetector()
    done = await detector.end_of_turn_probability(
        _speech_then_pause(espeak_pcm(tmp_path, complete, voice=voice))
    )
    going_on = await detector.end_of_turn_probability(
        _speech_then_pause(espeak_pcm(tmp_path, unfinished, voice=voice))
    )
    print(f"\nsmart turn [{voice}]: complete {done:.3f}, ending on a conjunction {going_on:.3f}")
    assert done > going_on
    assert done >= detector.threshold > going_on


async def test_piper_without_noise_repeats_itself(piper: PiperTts) -> None:
    steady = PiperTts(noise_scale=0, noise_w=0)
    assert await _speak(steady, OFFICE) == await _speak(steady, OFFICE)
    # The voice's own noise makes every synthesis of the same text a little different.
    assert await _speak(piper, OFFICE) != await _speak(piper, OFFICE)


async def test_smart_turn_prefers_a_finished_piper_sentence() -> None:
    detector = SmartTurnDetector()
    # Noise off: with the voice's random noise, one synthesis in ~40 of the sentence ending on
    # "and" sounded finished enough to score 0.5-0.87 (measured; 0.03 without noise).
    steady = PiperTts(noise_scale=0, noise_w=0)

    async def spoken(text: str) -> bytes:
        pcm = await _speak(steady, text)
        return _speech_then_pause(resample(pcm, steady.sample_rate, 16000))

    done = await detector.end_of_turn_probability(await spoken(OFFICE + "."))
    going_on = await detector.end_of_turn_probability(await spoken(OFFICE + " and"))
    print(f"\nsmart turn [piper]: complete {done:.3f}, ending on 'and' {going_on:.3f}")
    assert done >= detector.threshold > going_on


async def test_smart_turn_only_listens_to_the_last_eight_seconds(tmp_path: Path) -> None:
    detector = SmartTurnDetector()
    speech = _speech_then_pause(
        espeak_pcm(tmp_path, "I would like to book a table for two people tonight.")
    )
    assert len(speech) < 2 * 16000 * 3
    # Both end with the same 8 s (silence, then the speech): what came before is ignored.
    five_before = bytes(2 * 16000 * 6) + speech
    ten_before = bytes(2 * 16000 * 10) + speech
    assert await detector.end_of_turn_probability(ten_before) == pytest.approx(
        await detector.end_of_turn_probability(five_before), abs=1e-6
    )


async def test_whisper_reports_busy_while_decoding(tmp_path: Path) -> None:
    stt = WhisperStt(workers=1)
    stt.load()
    pcm = espeak_pcm(tmp_path, OFFICE)
    assert not stt.busy
    task = asyncio.create_task(stt.transcribe(pcm))
    await asyncio.sleep(0)
    assert stt.busy
    await task
    assert not stt.busy


async def test_whisper_workers_decode_calls_side_by_side(tmp_path: Path) -> None:
    """Two workers: one decode leaves room for another caller (not busy); both decodes of two
    concurrent callers come back right."""
    stt = WhisperStt(workers=2)
    stt.load()
    pcm = espeak_pcm(tmp_path, OFFICE)
    first = asyncio.create_task(stt.transcribe(pcm))
    await asyncio.sleep(0)
    assert not stt.busy
    second = asyncio.create_task(stt.transcribe(pcm))
    await asyncio.sleep(0)
    assert stt.busy
    for result in await asyncio.gather(first, second):
        assert "office" in result.text.lower(), result
