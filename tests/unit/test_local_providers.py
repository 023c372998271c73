"""Pure logic of the local providers: registry, option checks, turn-detector factory, Smart Turn
features, espeak WAV parsing. No model is loaded."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from sipserver.config import ProviderSpec
from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.local import EspeakTts, PiperTts, WhisperStt
from sipserver.pipeline.providers.local_stt import collapse_repeat, encoder_frames
from sipserver.pipeline.providers.registry import make_stt, make_tts
from sipserver.pipeline.turn import SmartTurnDetector, turn_detector_for


def spec(data: object) -> ProviderSpec:
    return ProviderSpec.model_validate(data)


# ---------------------------------------------------------------------------------- registry


def test_local_names_build_the_offline_providers() -> None:
    assert isinstance(make_stt(spec("local")), WhisperStt)
    assert isinstance(make_tts(spec("local")), PiperTts)
    assert isinstance(make_tts(spec({"provider": "local", "engine": "piper"})), PiperTts)
    assert isinstance(make_tts(spec({"provider": "local", "engine": "espeak"})), EspeakTts)


def test_options_reach_the_constructor() -> None:
    stt = make_stt(spec({"provider": "local", "cpu_threads": 2, "beam_size": 3, "workers": 3}))
    assert isinstance(stt, WhisperStt)
    assert (stt.cpu_threads, stt.beam_size, stt.workers) == (2, 3, 3)
    tts = make_tts(spec({"provider": "local", "speed": 1.25}))
    assert isinstance(tts, PiperTts)
    assert tts.length_scale == pytest.approx(0.8)
    assert (tts.noise_scale, tts.noise_w) == (None, None)  # the voice's own
    quiet = make_tts(spec({"provider": "local", "noise_scale": 0, "noise_w": 0.5}))
    assert isinstance(quiet, PiperTts)
    assert (quiet.noise_scale, quiet.noise_w) == (0.0, 0.5)
    espeak = make_tts(spec({"provider": "local", "engine": "espeak", "voice": "es", "speed": 150}))
    assert isinstance(espeak, EspeakTts)
    assert (espeak.voice, espeak.speed) == ("es", 150)


def test_whisper_window_defaults_to_auto_and_takes_full() -> None:
    assert isinstance(stt := make_stt(spec("local")), WhisperStt)
    assert stt.window == "auto"
    assert isinstance(stt := make_stt(spec({"provider": "local", "window": "full"})), WhisperStt)
    assert stt.window == "full"


@pytest.mark.parametrize(
    ("seconds", "frames"),
    [
        (0.0, 1000),  # at least 10 s
        (2.5, 1000),
        (5.98, 1000),  # 599 frames of audio + 400
        (6.0, 1100),  # 601 + 400 -> rounded up to the next second
        (12.34, 1700),  # 1235 + 400 -> 1700
        (26.0, 3000),
        (29.99, 3000),  # never more than Whisper's 30 s
    ],
)
def test_whisper_encoder_window_follows_the_audio(seconds: float, frames: int) -> None:
    samples = round(seconds * 16000)
    assert encoder_frames(samples, "auto") == frames
    assert encoder_frames(samples, "full") == 3000


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "How do I register my phone system? How do I register my phone system?",
            "How do I register my phone system?",
        ),
        (
            "My package is not around yet. my package is not  around yet.",
            "My package is not around yet.",
        ),
        ("Hello? Hello? Hello?", "Hello?"),
        ("Where is the office? How do I contact support?", None),
        ("Yes. Yes, I do.", None),
        ("One sentence only.", None),
        ("", None),
    ],
)
def test_whisper_whole_utterance_repeats_are_collapsed(text: str, kept: str | None) -> None:
    assert collapse_repeat(text) == (text if kept is None else kept)


@pytest.mark.parametrize(
    ("make", "data", "message"),
    [
        (make_stt, "deepgram", "unknown provider 'deepgram'; choose one of local"),
        (make_tts, "elevenlabs", "unknown provider 'elevenlabs'; choose one of local"),
        (make_tts, {"provider": "local", "engine": "festival"}, "choose one of piper, espeak"),
        (make_stt, {"provider": "local", "modle": "x"}, "unknown option(s) modle"),
        (make_tts, {"provider": "local", "pitch": 3}, "unknown option(s) pitch"),
        (make_stt, {"provider": "local", "model": "/nonexistent"}, "not a CTranslate2 Whisper"),
        (make_stt, {"provider": "local", "cpu_threads": 0}, "cpu_threads"),
        (make_stt, {"provider": "local", "window": "short"}, "stt.window must be one of auto"),
        (make_tts, {"provider": "local", "voice": "/nonexistent.onnx"}, "must exist"),
        (make_tts, {"provider": "local", "speed": 1, "length_scale": 1}, "not both"),
        (make_tts, {"provider": "local", "noise_scale": -0.1}, "tts.noise_scale must be a number"),
        (make_tts, {"provider": "local", "noise_w": "none"}, "tts.noise_w must be a number >= 0"),
        (make_tts, {"provider": "local", "engine": "espeak", "speed": 5}, "80..500"),
        (
            make_tts,
            {"provider": "local", "engine": "espeak", "executable": "no-such-tts"},
            "no-such",
        ),
    ],
)
def test_registry_errors_name_the_problem(make: object, data: object, message: str) -> None:
    with pytest.raises(ProviderError) as info:
        make(spec(data))  # type: ignore[operator]
    assert message in str(info.value)


# ----------------------------------------------------------------------------- turn factory


@pytest.mark.parametrize("name", ["multilingual", "english"])
def test_smart_turn_serves_multilingual_and_english(name: str) -> None:
    detector = turn_detector_for(name)
    assert isinstance(detector, SmartTurnDetector)
    assert detector.name == "smart-turn-v3.2"
    assert detector.threshold == 0.5
    assert detector.sample_rate == 16000


def test_threshold_override_and_range() -> None:
    detector = turn_detector_for("multilingual", threshold=0.7)
    assert detector is not None and detector.threshold == 0.7
    with pytest.raises(ProviderError, match="threshold"):
        SmartTurnDetector(threshold=1.5)


@pytest.mark.parametrize("name", ["vad", "stt"])
def test_silence_and_stt_need_no_model(name: str) -> None:
    assert turn_detector_for(name) is None


@pytest.mark.parametrize("name", ["livekit_multilingual", "livekit_english"])
def test_livekit_turn_models_are_not_offered(name: str) -> None:
    # They need a LiveKit Agents job; the configuration refuses them with the reason
    # (tests/unit/test_config.py), and nothing here builds one.
    with pytest.raises(ProviderError, match="choose one of multilingual, english, vad, stt"):
        turn_detector_for(name)


def test_unknown_turn_model() -> None:
    with pytest.raises(ProviderError, match="choose one of multilingual"):
        turn_detector_for("semantic")


# ------------------------------------------------------------------------ Smart Turn features


def tone(seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def test_features_have_the_model_shape() -> None:
    assert SmartTurnDetector.features(tone(1.0)).shape == (1, 80, 800)
    assert SmartTurnDetector.features(tone(12.0)).shape == (1, 80, 800)
    assert SmartTurnDetector.features(b"").shape == (1, 80, 800)


def test_short_audio_is_padded_at_the_start() -> None:
    mel = SmartTurnDetector.features(tone(2.0))[0]
    energy = mel.mean(axis=0)  # per 10 ms frame
    assert energy[-150:].min() > energy[:500].max()  # the tone is at the end


def test_features_do_not_depend_on_the_level() -> None:
    loud = np.frombuffer(tone(3.0, 16000.0), "<i2") // 64 * 64
    quiet = loud // 64  # exactly 1/64 of the level (36 dB quieter)
    np.testing.assert_allclose(
        SmartTurnDetector.features(loud.tobytes()),
        SmartTurnDetector.features(quiet.astype("<i2").tobytes()),
        atol=1e-4,
    )


# ------------------------------------------------------------------------------ espeak WAV


def wav_bytes(rate: int, samples: np.ndarray, *, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def test_espeak_wav_parsing_keeps_the_samples() -> None:
    samples = (np.arange(2205) % 100 - 50).astype("<i2")
    pcm = EspeakTts()._pcm_of(wav_bytes(22050, samples))
    assert np.array_equal(np.frombuffer(pcm, "<i2"), samples)


def test_espeak_streamed_header_with_placeholder_length() -> None:
    data = bytearray(wav_bytes(22050, np.ones(100, dtype="<i2")))
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")  # espeak-ng --stdout writes this
    assert len(EspeakTts()._pcm_of(bytes(data))) == 200


def test_espeak_other_rates_are_resampled_to_22050() -> None:
    pcm = EspeakTts()._pcm_of(wav_bytes(16000, np.zeros(16000, dtype="<i2")))
    assert len(pcm) // 2 == pytest.approx(22050, abs=2)


def test_espeak_garbage_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="unreadable WAV"):
        EspeakTts()._pcm_of(b"not a wav file")
