"""bench/_wer.py (text normalisation, word error rate) and the telephone line and level
normalisation of bench/stt_accuracy.py."""

from __future__ import annotations

import io
import shutil
import wave

import numpy as np
import pytest

from bench._wer import ErrorCounts, corpus_wer, normalize, word_errors


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("1, 2, 3", "one two three"),
        ("123", "one two three"),
        ("$20", "twenty dollars"),
        ("$4.50", "four dollars fifty"),
        ("£1,500", "one thousand five hundred pounds"),
        ("It's 9:30.", "it is nine thirty"),
        ("We open at 9:00 a.m.", "we open at nine am"),
        ("We open at 9am", "we open at nine AM"),
        ("Call 555-0192!", "call five five five zero one nine two"),
        ("on the 21st", "on the twenty-first"),
        ("in 2024", "in twenty twenty four"),
        ("10%", "ten percent"),
        ("What's the price?", "what is the price"),
        ("I can't log in", "I cannot log in"),
        ("We're closed, OK?", "we are closed okay"),
        ("I canceled it", "I cancelled it"),
        ("My e-mail", "my email"),
        ("one hundred and five", "105"),
        ("Fifteen hundred", "1500"),
    ],
)
def test_written_and_spoken_forms_agree(written: str, spoken: str) -> None:
    assert normalize(written) == normalize(spoken)


def test_normalize_drops_case_and_punctuation_but_keeps_words() -> None:
    assert normalize("Hello, World! (Tuesday)") == ["hello", "world", "tuesday"]
    assert normalize("  ") == []


def test_numbers_are_compared_digit_by_digit() -> None:
    assert normalize("five five five") == ["5", "5", "5"]
    assert normalize("twenty five dollars") == ["2", "5", "dollars"]
    # A wrong digit in a phone number costs one error, not the whole number.
    errors = word_errors(normalize("555 0192"), normalize("five five five zero one nine three"))
    assert errors == ErrorCounts(substitutions=1, deletions=0, insertions=0, reference_words=7)


def test_number_words_that_are_not_numbers_stay_words() -> None:
    assert normalize("a hundred ways") == ["a", "hundred", "ways"]
    assert normalize("rock and roll") == ["rock", "and", "roll"]


def test_word_errors_counts_each_operation() -> None:
    ref = normalize("please tell me the opening hours")
    assert word_errors(ref, ref) == ErrorCounts(0, 0, 0, 6)
    assert word_errors(ref, normalize("please tell me the opening hour")).substitutions == 1
    deletion = word_errors(ref, normalize("please tell me opening hours"))
    assert (deletion.deletions, deletion.errors) == (1, 1)
    insertion = word_errors(ref, normalize("please please tell me the opening hours"))
    assert (insertion.insertions, insertion.errors) == (1, 1)
    assert word_errors(ref, []).errors == 6
    assert word_errors([], ["noise"]).insertions == 1


def test_word_errors_is_the_minimum_edit_distance() -> None:
    # "How much none is cost" vs "how much does it cost": 2 substitutions, not 3 edits.
    counts = word_errors(normalize("how much does it cost"), normalize("How much none is cost?"))
    assert counts.errors == 2
    assert counts.wer == pytest.approx(0.4)


def test_corpus_wer_weights_by_reference_words() -> None:
    total = corpus_wer(
        [
            ("one", "two"),  # 1 error in 1 word
            ("a b c d e f g h i", "a b c d e f g h i"),  # 0 errors in 9 words
        ]
    )
    assert total.reference_words == 10
    assert total.wer == pytest.approx(0.1)


# ------------------------------------------------------------- the benchmark's telephone line


def _tones(*freqs: float, seconds: float = 1.0, rate: int = 22050) -> bytes:
    """A WAV of equal-amplitude sines (what espeak-ng hands the line)."""
    t = np.arange(int(seconds * rate)) / rate
    mix = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.5 * 32767 * mix).astype("<i2").tobytes())
    return out.getvalue()


def _level_db(pcm: bytes, freq: float, rate: int = 16000) -> float:
    """Level of ``freq`` in ``pcm`` (dB, arbitrary reference; Hann-windowed FFT)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    bin_ = round(freq * samples.size / rate)
    return float(20 * np.log10(spectrum[bin_ - 2 : bin_ + 3].max() + 1e-9))


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_telephone_line_keeps_the_voice_band_only() -> None:
    from bench.stt_accuracy import LEAD_S, TRAIL_S, telephone_line

    line = telephone_line(_tones(100, 1000, 6000), peak_db=-3.0, noisy=False, seed=0)
    # 16 kHz out, with the line silence around the 1 s of sound.
    assert len(line) // 2 == pytest.approx(16000 * (1 + LEAD_S + TRAIL_S), abs=16)
    lead = np.frombuffer(line, dtype="<i2")[: int(LEAD_S * 16000) - 160]
    assert np.abs(lead.astype(np.int32)).max() <= 2  # silent (the resampler's ringing aside)
    voice = _level_db(line, 1000)
    assert voice - _level_db(line, 100) > 30  # below the band: filtered out
    assert voice - _level_db(line, 6000) > 40  # above 4 kHz: gone at 8 kHz...
    assert voice - _level_db(line, 2000) > 40  # ...and not folded back to 8000 - 6000 Hz
    # The level of the line is the call's (peak at -3 or -26 dBFS), whatever the input's.
    quiet = telephone_line(_tones(100, 1000, 6000), peak_db=-26.0, noisy=False, seed=0)
    assert voice - _level_db(quiet, 1000) == pytest.approx(23.0, abs=1.0)


def test_level_normalisation_targets_the_speech_not_the_silence() -> None:
    from bench.stt_accuracy import normalize_level

    rate = 16000
    speech = (0.01 * 32767 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype("<i2")
    pcm = np.concatenate([np.zeros(rate, dtype="<i2"), speech]).tobytes()
    out = np.frombuffer(normalize_level(pcm, target_dbfs=-20.0), dtype="<i2").astype(np.float64)
    level = np.sqrt(np.mean(out[rate:] ** 2)) / 32768
    assert 20 * np.log10(level) == pytest.approx(-20.0, abs=0.2)
    assert not out[:rate].any()  # silence stays silence
    loud = (0.9 * 32767 * np.sign(np.sin(2 * np.pi * 5 * np.arange(rate) / rate))).astype("<i2")
    limited = np.frombuffer(normalize_level(loud.tobytes(), peak_dbfs=-1.0), dtype="<i2")
    assert np.abs(limited.astype(np.int32)).max() <= 32768 * 10 ** (-1 / 20) + 1
