"""Shipped sounds and the feedback mixer (thinking sound, ambient bed)."""

from __future__ import annotations

import pathlib
import wave

import numpy as np
import numpy.typing as npt
import pytest

from sipserver.config import SHIPPED_SOUNDS, AudioFeedbackSettings
from sipserver.pipeline.feedback import FADE_MS, FeedbackMixer, SoundError, load_sound

RATES = (8000, 16000)
SOUNDS_DIR = pathlib.Path(__file__).resolve().parents[2] / "sipserver" / "sounds"


def frame_len(rate: int) -> int:
    return rate // 50


def silence(rate: int) -> bytes:
    return bytes(2 * frame_len(rate))


def samples(frame: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(frame, dtype="<i2").astype(np.float64)


def rms(frame: bytes) -> float:
    return float(np.sqrt(np.mean(samples(frame) ** 2)))


def tone(rate: int, amplitude: float) -> bytes:
    t = np.arange(frame_len(rate)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


# ------------------------------------------------------------------------------ shipped sounds


def test_every_shipped_sound_has_a_file_and_a_licence() -> None:
    wavs = {path.stem for path in SOUNDS_DIR.glob("*.wav")}
    assert wavs == set(SHIPPED_SOUNDS)
    assert "CC0-1.0" in (SOUNDS_DIR / "LICENSE.md").read_text()


@pytest.mark.parametrize("name", SHIPPED_SOUNDS)
def test_shipped_file_format(name: str) -> None:
    path = SOUNDS_DIR / f"{name}.wav"
    assert path.stat().st_size < 350 * 1024
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert 4.0 <= wav.getnframes() / 16000 <= 10.0


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SHIPPED_SOUNDS)
def test_shipped_sound_loads(name: str, rate: int) -> None:
    clip = load_sound(name, rate)
    with wave.open(str(SOUNDS_DIR / f"{name}.wav")) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert clip.dtype == np.int16 and clip.ndim == 1
    assert clip.size == round(seconds * rate)
    level = np.sqrt(np.mean(clip.astype(np.float64) ** 2))
    assert level > 100  # about -50 dBFS: clearly audible, not silence
    assert not clip.flags.writeable  # the cached array cannot be damaged by a caller


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SHIPPED_SOUNDS)
def test_shipped_sound_loops_without_a_click(name: str, rate: int) -> None:
    clip = load_sound(name, rate).astype(np.float64)
    jump = abs(clip[-1] - clip[0])
    # Going from the last sample to the first is no bigger than an ordinary step in the clip.
    assert jump <= np.percentile(np.abs(np.diff(clip)), 99)
    assert jump < 0.1 * 32768


def test_load_sound_is_cached() -> None:
    assert load_sound("hold_music", 8000) is load_sound("hold_music", 8000)


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(SoundError, match="neither a shipped sound"):
        load_sound("keyboard_typing3", 8000)


def test_unreadable_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(SoundError, match=r"junk\.wav"):
        load_sound(str(junk), 8000)


def write_wav(path: pathlib.Path, data: npt.NDArray[np.int16], rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.astype("<i2").tobytes())


def test_file_is_mixed_to_mono_and_resampled(tmp_path: pathlib.Path) -> None:
    rate = 44100
    t = np.arange(rate) / rate  # one second
    left = 8000 * np.sin(2 * np.pi * 300 * t)
    stereo = np.rint(np.stack([left, left], axis=1)).astype(np.int16).reshape(-1)
    path = tmp_path / "stereo.wav"
    write_wav(path, stereo, rate, channels=2)
    clip = load_sound(str(path), 8000)
    assert clip.size == 8000
    spectrum = np.abs(np.fft.rfft(clip.astype(np.float64)))
    assert np.argmax(spectrum) == 300  # 1 Hz bins: the tone survives at its frequency
    assert abs(np.max(np.abs(clip)) - 8000) < 200


def test_non_wav_file_goes_through_av(tmp_path: pathlib.Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "tone.flac"
    rate = 16000
    t = np.arange(rate) / rate
    pcm = np.rint(6000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    clip = load_sound(str(path), 8000)
    assert abs(clip.size - 8000) <= 1
    assert np.argmax(np.abs(np.fft.rfft(clip.astype(np.float64)))) == 500


# ------------------------------------------------------------------------------------- mixer


def clip(rate: int, seconds: float = 1.0, amplitude: float = 10000.0) -> npt.NDArray[np.int16]:
    """A steady tone clip (constant RMS, easy to measure)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * 250 * t)).astype(np.int16)


def make(rate: int = 8000, **kwargs: object) -> FeedbackMixer:
    options: dict[str, object] = {
        "thinking": clip(rate),
        "thinking_volume": 0.8,
        "ambient": None,
        "ambient_volume": 0.3,
    }
    options.update(kwargs)
    return FeedbackMixer(rate, **options)  # type: ignore[arg-type]


def test_nothing_configured_returns_the_frame_itself() -> None:
    mixer = make(thinking=None)
    frame = tone(8000, 1000)
    assert not mixer.active
    assert mixer.mix(frame, thinking=True) is frame
    assert mixer.mix(frame, thinking=False) is frame


def test_zero_volume_counts_as_nothing() -> None:
    mixer = make(thinking_volume=0.0, ambient=clip(8000), ambient_volume=0.0)
    frame = silence(8000)
    assert not mixer.active
    assert mixer.mix(frame, thinking=True) is frame


@pytest.mark.parametrize("rate", RATES)
def test_thinking_plays_only_while_thinking(rate: int) -> None:
    mixer = make(rate)
    quiet = silence(rate)
    assert mixer.mix(quiet, thinking=False) is quiet
    playing = [mixer.mix(quiet, thinking=True) for _ in range(20)]
    assert all(rms(frame) > 0 for frame in playing)
    assert mixer.thinking_audible
    fade_frames = FADE_MS // 20
    fading = [mixer.mix(quiet, thinking=False) for _ in range(fade_frames)]
    assert all(rms(frame) > 0 for frame in fading[:-1])
    assert not mixer.thinking_audible
    after = [mixer.mix(quiet, thinking=False) for _ in range(10)]
    assert all(frame is quiet for frame in after)


def test_thinking_fades_in_and_out() -> None:
    mixer = make()
    quiet = silence(8000)
    fade_frames = FADE_MS // 20
    rising = [rms(mixer.mix(quiet, thinking=True)) for _ in range(fade_frames + 2)]
    assert rising[0] < rising[1] < rising[2] < rising[fade_frames]
    assert rising[fade_frames] == pytest.approx(rising[fade_frames + 1], rel=0.05)
    first = samples(make().mix(quiet, thinking=True))
    assert abs(first[0]) < 100  # no hard start
    falling = [rms(mixer.mix(quiet, thinking=False)) for _ in range(fade_frames)]
    assert rising[-1] > falling[0] > falling[1] > falling[-1]
    last = samples(mixer.mix(quiet, thinking=False) if mixer.thinking_audible else quiet)
    assert abs(last[-1]) < 100  # no hard stop


def test_thinking_restarts_from_the_top_of_the_clip() -> None:
    mixer = make(fade_ms=0)
    quiet = silence(8000)
    first = mixer.mix(quiet, thinking=True)
    mixer.mix(quiet, thinking=True)
    mixer.mix(quiet, thinking=False)
    assert mixer.mix(quiet, thinking=True) == first


def test_thinking_volume_is_a_linear_gain() -> None:
    quiet = silence(8000)
    levels = {}
    for volume in (0.4, 0.8):
        mixer = make(thinking_volume=volume)
        frames = [mixer.mix(quiet, thinking=True) for _ in range(30)]
        levels[volume] = rms(b"".join(frames[10:]))  # steady state, after the fade in
    assert levels[0.8] / levels[0.4] == pytest.approx(2.0, rel=0.05)
    assert levels[0.8] == pytest.approx(0.8 * 10000 / np.sqrt(2), rel=0.05)


def test_ambient_mixes_continuously_under_speech() -> None:
    rate = 16000
    bed = clip(rate, seconds=0.5, amplitude=8000)
    mixer = make(rate, thinking=None, ambient=bed, ambient_volume=0.3)
    speech = tone(rate, 4000)
    n = frame_len(rate)
    expected_bed = np.resize(np.rint(bed * 0.3), 60 * n)  # the bed loops (0.5 s = 25 frames)
    for index in range(60):
        frame = speech if index % 3 else silence(rate)
        mixed = samples(mixer.mix(frame, thinking=index % 2 == 0))
        bed_part = mixed - samples(frame)
        np.testing.assert_allclose(bed_part, expected_bed[index * n : (index + 1) * n], atol=1)


def test_ambient_and_thinking_together() -> None:
    mixer = make(ambient=clip(8000, amplitude=2000), ambient_volume=0.5)
    quiet = silence(8000)
    bed_only = rms(mixer.mix(quiet, thinking=False))
    for _ in range(10):
        both = rms(mixer.mix(quiet, thinking=True))
    assert bed_only > 0 and both > 2 * bed_only


def test_clipping_at_full_scale_stays_int16() -> None:
    loud = np.full(800, 32767, dtype=np.int16)
    mixer = make(thinking=loud, thinking_volume=1.0, ambient=loud, ambient_volume=1.0, fade_ms=0)
    full = np.full(160, 32767, dtype="<i2").tobytes()
    out = samples(mixer.mix(full, thinking=True))
    assert out.size == 160 and np.all(out == 32767)
    negative = np.full(160, -32768, dtype="<i2").tobytes()
    mixer = make(thinking=-loud, thinking_volume=1.0, ambient=-loud, ambient_volume=1.0)
    assert np.all(samples(mixer.mix(negative, thinking=True)) == -32768)


def test_short_clip_wraps_inside_one_frame() -> None:
    mixer = make(
        thinking=np.array([1000, -1000, 500], dtype=np.int16), thinking_volume=1.0, fade_ms=0
    )
    out = samples(mixer.mix(silence(8000), thinking=True))
    np.testing.assert_array_equal(out[:6], [1000, -1000, 500, 1000, -1000, 500])


@pytest.mark.parametrize("volume", [-0.1, 1.5])
def test_volume_outside_unit_interval_is_rejected(volume: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        make(thinking_volume=volume)


def test_from_settings_disabled_plays_nothing() -> None:
    settings = AudioFeedbackSettings(enabled=False, ambient_sound="office_ambience")
    mixer = FeedbackMixer.from_settings(settings, 8000)
    frame = silence(8000)
    assert not mixer.active
    assert mixer.mix(frame, thinking=True) is frame


def test_from_settings_enabled_thinking_without_ambient() -> None:
    mixer = FeedbackMixer.from_settings(AudioFeedbackSettings(enabled=True), 8000)
    quiet = silence(8000)
    assert mixer.active
    assert mixer.mix(quiet, thinking=False) is quiet  # ambient_sound defaults to none
    frames = [mixer.mix(quiet, thinking=True) for _ in range(50)]
    assert rms(b"".join(frames)) > 0


def test_from_settings_enabled_with_ambient() -> None:
    settings = AudioFeedbackSettings(
        enabled=True, ambient_sound="crowded_room", ambient_volume=0.5, thinking_volume=0.0
    )
    mixer = FeedbackMixer.from_settings(settings, 16000)
    out = mixer.mix(silence(16000), thinking=False)
    expected = np.rint(load_sound("crowded_room", 16000)[:320] * 0.5)
    np.testing.assert_allclose(samples(out), expected, atol=1)
