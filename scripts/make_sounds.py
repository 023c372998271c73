"""Generate the clips shipped in ``sipserver/sounds/`` (thinking sounds, ambient beds, hold music).

Every clip is synthesised here with numpy, so the project owns them outright (CC0-1.0, see
``sipserver/sounds/LICENSE.md``). The output is deterministic: each clip has its own seed, and
running the script again writes byte-identical files.

Every clip is 16 kHz mono s16 WAV and loops without a click: it is synthesised a little longer
than needed and the extra tail is crossfaded into the start, so the last sample flows into the
first. Everything is vectorised (FFT filtering, ``np.add.at`` to place events); no per-sample
Python loop.

Usage::

    python scripts/make_sounds.py [OUTPUT_DIR]   # default: sipserver/sounds
"""

from __future__ import annotations

import pathlib
import sys
import wave
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Signal = npt.NDArray[np.float64]

RATE = 16_000
"""Sample rate of the shipped clips, Hz."""
CROSSFADE_S = 0.25
"""Length of the loop crossfade, seconds."""
BASE_SEED = 20_240_611


# --------------------------------------------------------------------------- building blocks


def shaped_noise(
    rng: np.random.Generator, n: int, gain: Callable[[Signal], Signal], rows: int = 1
) -> Signal:
    """White noise filtered in the frequency domain by ``gain(frequencies_hz)``.

    The result is periodic in ``n`` (circular filtering), normalised to unit RMS per row.
    """
    spectrum = np.fft.rfft(rng.standard_normal((rows, n)), axis=-1)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    out = np.fft.irfft(spectrum * gain(freqs), n=n, axis=-1)
    out /= np.sqrt(np.mean(out**2, axis=-1, keepdims=True)) + 1e-12
    return out if rows > 1 else out[0]


def band(low: float, high: float, order: float = 4.0) -> Callable[[Signal], Signal]:
    """A smooth band-pass gain (Butterworth-like magnitude)."""

    def gain(f: Signal) -> Signal:
        f = np.maximum(f, 1e-3)
        hp = 1.0 / np.sqrt(1.0 + (low / f) ** (2 * order))
        lp = 1.0 / np.sqrt(1.0 + (f / high) ** (2 * order))
        return hp * lp

    return gain


def pink(low: float = 20.0, high: float = 7_000.0) -> Callable[[Signal], Signal]:
    """1/f power (pink) noise, band-limited."""

    def gain(f: Signal) -> Signal:
        return band(low, high, 2.0)(f) / np.sqrt(np.maximum(f, low))

    return gain


def slow_envelope(rng: np.random.Generator, n: int, cutoff_hz: float, rows: int = 1) -> Signal:
    """A random, smooth, positive envelope varying below ``cutoff_hz`` (mean about 1)."""
    lfo = shaped_noise(rng, n, band(0.02, cutoff_hz, 2.0), rows)
    return np.exp(0.6 * lfo) / np.exp(0.18)


def place(out: Signal, starts: npt.NDArray[np.int64], templates: Signal, gains: Signal) -> None:
    """Add ``templates[i] * gains[i]`` at ``starts[i]`` (wrapping around the end) in place."""
    length = templates.shape[-1]
    index = (starts[:, None] + np.arange(length)[None, :]) % out.size
    np.add.at(out, index, templates * gains[:, None])


def loopable(signal: Signal, n: int) -> Signal:
    """Cut ``signal`` (longer than ``n``) to ``n`` samples, crossfading the tail into the start.

    ``out[n-1]`` is ``signal[n-1]`` and ``out[0]`` is about ``signal[n]``: the loop point is a
    continuation of the original signal, so it does not click.
    """
    fade = int(CROSSFADE_S * RATE)
    if signal.size < n + fade:
        raise ValueError("signal too short for its crossfade")
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))  # 0 -> 1, equal-gain
    out = signal[:n].copy()
    out[:fade] = signal[:fade] * ramp + signal[n : n + fade] * (1.0 - ramp)
    return out


def normalise(signal: Signal, *, rms_dbfs: float, peak_dbfs: float = -1.0) -> Signal:
    """Scale to an RMS level, then limit the peak (soft: tanh above the peak level)."""
    rms = np.sqrt(np.mean(signal**2)) + 1e-12
    scaled = signal * (10 ** (rms_dbfs / 20) / rms)
    peak = 10 ** (peak_dbfs / 20)
    return np.tanh(scaled / peak) * peak


def decay(n: int, tau_s: float) -> Signal:
    """Exponential decay over ``n`` samples with time constant ``tau_s``."""
    return np.exp(-np.arange(n) / (tau_s * RATE))


# --------------------------------------------------------------------------------- keyboards


def key_templates(
    rng: np.random.Generator,
    count: int,
    *,
    click_band: tuple[float, float],
    click_ms: float,
    thock_hz: tuple[float, float],
    thock_level: float,
    length_s: float = 0.08,
) -> Signal:
    """``count`` different key sounds: a filtered noise click plus a damped low "thock"."""
    n = int(length_s * RATE)
    t = np.arange(n) / RATE
    clicks = shaped_noise(rng, n, band(*click_band), rows=count)
    clicks *= decay(n, click_ms / 1000)[None, :]
    freqs = rng.uniform(*thock_hz, size=(count, 1))
    thocks = np.sin(2 * np.pi * freqs * t[None, :]) * decay(n, 0.018)[None, :]
    attack = np.minimum(1.0, np.arange(n) / (0.0008 * RATE))  # no step at the onset
    keys = (clicks + thock_level * thocks) * attack[None, :]
    return keys / np.max(np.abs(keys), axis=1, keepdims=True)


def typing_times(
    rng: np.random.Generator,
    duration_s: float,
    *,
    key_gap_s: float,
    word_len: tuple[int, int],
    space_s: float,
    pause_every: int,
    pause_s: tuple[float, float],
) -> Signal:
    """Key press times (seconds) of someone typing: words, spaces and thinking pauses."""
    words = int(duration_s / (key_gap_s * 3)) + 8
    lengths = rng.integers(word_len[0], word_len[1] + 1, size=words)
    gaps = rng.gamma(4.0, key_gap_s / 4.0, size=int(lengths.sum()))
    # The first key of each word comes after a space (a longer gap), some after a pause.
    word_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps[word_starts] += space_s * rng.uniform(0.7, 1.4, size=words)
    pauses = word_starts[rng.random(words) < 1.0 / pause_every]
    gaps[pauses] += rng.uniform(*pause_s, size=pauses.size)
    times = np.cumsum(gaps)
    return times[times < duration_s]


def keyboard(
    seed: int,
    duration_s: float,
    *,
    key_gap_s: float,
    word_len: tuple[int, int],
    space_s: float,
    pause_every: int,
    pause_s: tuple[float, float],
    click_band: tuple[float, float],
    click_ms: float,
    thock_hz: tuple[float, float],
    thock_level: float,
    release_level: float,
) -> Signal:
    """Someone typing on a keyboard, over a faint room tone."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * RATE)
    total = n + int(CROSSFADE_S * RATE)
    out = 0.004 * shaped_noise(rng, total, pink(40.0, 4_000.0))
    keys = key_templates(
        rng,
        12,
        click_band=click_band,
        click_ms=click_ms,
        thock_hz=thock_hz,
        thock_level=thock_level,
    )
    # Presses are synthesised over the crossfade too, so the loop keeps the rhythm going.
    times = typing_times(
        rng,
        total / RATE,
        key_gap_s=key_gap_s,
        word_len=word_len,
        space_s=space_s,
        pause_every=pause_every,
        pause_s=pause_s,
    )
    starts = (times * RATE).astype(np.int64)
    # Each key is released 60-110 ms later: a softer, brighter tick.
    releases = starts + (rng.uniform(0.06, 0.11, size=starts.size) * RATE).astype(np.int64)
    press_which = rng.integers(0, len(keys), size=starts.size)
    release_which = rng.integers(0, len(keys), size=starts.size)
    press_gain = rng.uniform(0.45, 1.0, size=starts.size)
    release_gain = release_level * rng.uniform(0.5, 1.0, size=starts.size)
    # The loop point (sample n) falls between keys: drop a key sounding across it.
    clear = (starts > n + 0.01 * RATE) | (releases + keys.shape[1] < n)
    place(out, starts[clear], keys[press_which[clear]], press_gain[clear])
    place(out, releases[clear], keys[release_which[clear]], release_gain[clear])
    return loopable(out, n)


def keyboard_typing() -> Signal:
    """A relaxed typist on a laptop-style keyboard: soft clicks with a low thock."""
    signal = keyboard(
        BASE_SEED + 1,
        7.0,
        key_gap_s=0.16,
        word_len=(2, 7),
        space_s=0.12,
        pause_every=5,
        pause_s=(0.4, 1.1),
        click_band=(1_800.0, 5_500.0),
        click_ms=4.0,
        thock_hz=(140.0, 260.0),
        thock_level=0.8,
        release_level=0.35,
    )
    return normalise(signal, rms_dbfs=-27.0, peak_dbfs=-4.0)


def keyboard_typing2() -> Signal:
    """A fast typist on a clicky mechanical keyboard: sharp, bright clicks, less body."""
    signal = keyboard(
        BASE_SEED + 2,
        6.0,
        key_gap_s=0.11,
        word_len=(3, 9),
        space_s=0.09,
        pause_every=7,
        pause_s=(0.5, 1.4),
        click_band=(3_000.0, 7_000.0),
        click_ms=2.5,
        thock_hz=(300.0, 480.0),
        thock_level=0.35,
        release_level=0.55,
    )
    return normalise(signal, rms_dbfs=-27.0, peak_dbfs=-4.0)


# ----------------------------------------------------------------------------- ambient beds


def babble(rng: np.random.Generator, n: int, voices: int, syllable_hz: float) -> Signal:
    """Murmur of ``voices`` talkers: vowel-coloured noise under syllabic and phrase envelopes."""

    def vowelish(f: Signal) -> Signal:
        formants = (
            np.exp(-(((f - 550.0) / 250.0) ** 2))
            + 0.6 * np.exp(-(((f - 1_500.0) / 450.0) ** 2))
            + 0.3 * np.exp(-(((f - 2_600.0) / 600.0) ** 2))
        )
        return formants * band(120.0, 3_500.0, 3.0)(f)

    sources = shaped_noise(rng, n, vowelish, rows=voices)
    syllables = np.abs(shaped_noise(rng, n, band(syllable_hz * 0.5, syllable_hz * 1.5), voices))
    phrases = shaped_noise(rng, n, band(0.05, 0.5, 2.0), rows=voices)
    talking = 1.0 / (1.0 + np.exp(-4.0 * (phrases + 0.3)))  # each talker pauses now and then
    return np.sum(sources * syllables * talking, axis=0)


def office_ambience() -> Signal:
    """Air conditioning, distant colleagues talking and an occasional soft click."""
    rng = np.random.default_rng(BASE_SEED + 3)
    n = 8 * RATE
    total = n + int(CROSSFADE_S * RATE)
    air = shaped_noise(rng, total, pink(60.0, 5_000.0))
    murmur = babble(rng, total, voices=4, syllable_hz=4.0)
    murmur *= 0.5 / (np.sqrt(np.mean(murmur**2)) + 1e-12)
    # Distance: the murmur loses its top end.
    murmur = np.fft.irfft(
        np.fft.rfft(murmur) * band(150.0, 1_800.0, 2.0)(np.fft.rfftfreq(total, 1 / RATE)),
        n=total,
    )
    out = air + murmur
    clicks = key_templates(
        rng,
        3,
        click_band=(1_500.0, 4_000.0),
        click_ms=6.0,
        thock_hz=(200.0, 300.0),
        thock_level=0.6,
    )
    starts = np.array([int(1.7 * RATE), int(4.9 * RATE), int(6.3 * RATE)], dtype=np.int64)
    place(out, starts, clicks, np.array([1.4, 1.0, 1.2]))
    return normalise(loopable(out, n), rms_dbfs=-24.0, peak_dbfs=-8.0)


def city_ambience() -> Signal:
    """Low traffic rumble with slow swells of passing cars."""
    rng = np.random.default_rng(BASE_SEED + 4)
    n = 9 * RATE
    total = n + int(CROSSFADE_S * RATE)
    t = np.arange(total) / RATE

    def brown(f: Signal) -> Signal:
        return band(25.0, 900.0, 2.0)(f) / np.maximum(f, 25.0)

    rumble = shaped_noise(rng, total, brown)
    hiss = shaped_noise(rng, total, band(300.0, 3_000.0, 2.0))
    # Cars pass: gaussian swells, each a wider-band whoosh.
    centres = np.array([1.2, 3.4, 5.1, 7.3, 8.6])
    widths = rng.uniform(0.6, 1.1, size=centres.size)
    swells = np.sum(
        rng.uniform(0.6, 1.0, size=(centres.size, 1))
        * np.exp(-(((t[None, :] - centres[:, None]) / widths[:, None]) ** 2)),
        axis=0,
    )
    out = rumble * (0.7 + 0.5 * swells) + 0.25 * hiss * (0.3 + swells)
    return normalise(loopable(out, n), rms_dbfs=-22.0, peak_dbfs=-6.0)


def forest_ambience() -> Signal:
    """Soft wind through trees and a few birds chirping."""
    rng = np.random.default_rng(BASE_SEED + 5)
    n = 9 * RATE
    total = n + int(CROSSFADE_S * RATE)
    wind = shaped_noise(rng, total, band(150.0, 1_600.0, 1.5))
    wind *= slow_envelope(rng, total, 0.3)
    # Chirps: FM sine sweeps, phase by cumulative sum of the instantaneous frequency.
    length = int(0.12 * RATE)
    tt = np.arange(length) / RATE
    count = 22
    f0 = rng.uniform(2_600.0, 4_200.0, size=(count, 1))
    sweep = rng.uniform(-1_800.0, 1_500.0, size=(count, 1))
    wobble = rng.uniform(15.0, 40.0, size=(count, 1))
    dur = rng.uniform(0.04, 0.11, size=(count, 1))
    freq = f0 + sweep * (tt[None, :] / dur) + 250.0 * np.sin(2 * np.pi * wobble * tt[None, :])
    phase = 2 * np.pi * np.cumsum(freq, axis=1) / RATE
    env = np.sin(np.pi * np.clip(tt[None, :] / dur, 0.0, 1.0)) ** 2
    chirps = np.sin(phase) * env
    # Birds sing in short phrases: groups of 2-5 chirps close together.
    groups = np.array([0.8, 2.9, 5.6, 7.4])
    group = rng.integers(0, groups.size, size=count)
    times = groups[group] + np.sort(rng.uniform(0.0, 0.9, size=count))
    starts = (times * RATE).astype(np.int64)
    out = wind
    place(out, starts, chirps, rng.uniform(0.6, 1.6, size=count))
    return normalise(loopable(out, n), rms_dbfs=-26.0, peak_dbfs=-6.0)


def crowded_room() -> Signal:
    """Dense babble of many people talking in a room."""
    rng = np.random.default_rng(BASE_SEED + 6)
    n = 7 * RATE
    total = n + int(CROSSFADE_S * RATE)
    out = babble(rng, total, voices=16, syllable_hz=4.5)
    out += 0.3 * np.std(out) * shaped_noise(rng, total, pink(80.0, 4_000.0))
    return normalise(loopable(out, n), rms_dbfs=-22.0, peak_dbfs=-5.0)


# ------------------------------------------------------------------------------- hold music


def note_hz(midi: Signal | float) -> Signal:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return np.asarray(440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0))


def tones(midi: npt.NDArray[np.float64], length: int, harmonics: int) -> Signal:
    """One row per note: a triangle-ish tone (odd harmonics at 1/k^2) ``length`` samples long."""
    t = np.arange(length) / RATE
    k = np.arange(1, 2 * harmonics, 2, dtype=np.float64)  # 1, 3, 5...
    signs = np.where(np.arange(harmonics) % 2 == 0, 1.0, -1.0)
    weights = signs / k**2
    f = note_hz(midi)[:, None, None] * k[None, :, None]
    weights = np.where(f < RATE / 2 - 500, weights[None, :, None], 0.0)  # no aliasing
    return np.sum(weights * np.sin(2 * np.pi * f * t[None, None, :]), axis=1)


def adsr(length: int, attack_s: float, release_s: float) -> Signal:
    """A gentle envelope: raised-cosine attack, slow exponential sag, raised-cosine release."""
    env = np.ones(length)
    a = int(attack_s * RATE)
    r = int(release_s * RATE)
    env[:a] = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, a))
    env *= 0.65 + 0.35 * decay(length, 1.2)
    env[length - r :] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, r))
    return env


def hold_music() -> Signal:
    """A calm I-vi-IV-V progression in C: pad chords, a bass note and a slow arpeggio."""
    chord_s = 2.0
    progression = np.array(
        [
            [60, 64, 67],  # C
            [57, 60, 64],  # Am
            [53, 57, 60],  # F
            [55, 59, 62],  # G
        ],
        dtype=np.float64,
    )
    chords = progression.shape[0]
    n = int(chords * chord_s * RATE)
    hop = int(chord_s * RATE)
    ring = int(0.6 * RATE)  # each chord rings into the next
    length = hop + ring
    out = np.zeros(n)
    starts = np.arange(chords, dtype=np.int64) * hop
    # Pads: triangle tones, slightly detuned pairs for warmth.
    pad = np.stack(
        [
            np.sum(tones(row, length, 4) + tones(row + 0.07, length, 4), axis=0)
            for row in progression
        ]
    )
    place(out, starts, pad * adsr(length, 0.35, 0.6)[None, :], np.full(chords, 0.22))
    # Bass: the chord root an octave down, a pure sine.
    t = np.arange(length) / RATE
    bass = np.sin(2 * np.pi * note_hz(progression[:, 0] - 12)[:, None] * t[None, :])
    place(out, starts, bass * adsr(length, 0.05, 0.6)[None, :], np.full(chords, 0.5))
    # Arpeggio: eighth notes (0.25 s) up the chord an octave higher, soft sines with a pluck.
    step = int(0.25 * RATE)
    arp_len = int(0.7 * RATE)
    pattern = np.array([0, 1, 2, 1, 0, 1, 2, 1])
    arp_midi = (progression[:, pattern] + 12).reshape(-1)
    ta = np.arange(arp_len) / RATE
    arp = np.sin(2 * np.pi * note_hz(arp_midi)[:, None] * ta[None, :])
    arp *= (decay(arp_len, 0.18) * np.minimum(1.0, ta / 0.004))[None, :]
    arp[:, -int(0.05 * RATE) :] *= np.linspace(1.0, 0.0, int(0.05 * RATE))[None, :]
    arp_starts = np.arange(arp_midi.size, dtype=np.int64) * step
    place(out, arp_starts, arp, np.full(arp_midi.size, 0.35))
    # ``place`` wraps around the end, so the last chord's ring already flows into the first:
    # the progression is a seamless cycle without a crossfade.
    return normalise(out, rms_dbfs=-20.0, peak_dbfs=-3.0)


# ------------------------------------------------------------------------------------ output

CLIPS: dict[str, Callable[[], Signal]] = {
    "keyboard_typing": keyboard_typing,
    "keyboard_typing2": keyboard_typing2,
    "office_ambience": office_ambience,
    "city_ambience": city_ambience,
    "forest_ambience": forest_ambience,
    "crowded_room": crowded_room,
    "hold_music": hold_music,
}


def write_wav(path: pathlib.Path, signal: Signal) -> None:
    """Write 16 kHz mono s16 WAV."""
    pcm = np.clip(np.rint(signal * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())


def main(argv: list[str]) -> int:
    """Write every clip into the output directory."""
    root = pathlib.Path(__file__).resolve().parent.parent
    out_dir = pathlib.Path(argv[1]) if len(argv) > 1 else root / "sipserver" / "sounds"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, make in CLIPS.items():
        signal = make()
        path = out_dir / f"{name}.wav"
        write_wav(path, signal)
        rms = 20 * np.log10(np.sqrt(np.mean(signal**2)))
        print(
            f"{path.name:22} {signal.size / RATE:4.1f} s  {path.stat().st_size // 1024:4d} KiB"
            f"  rms {rms:6.1f} dBFS  loop jump {abs(signal[-1] - signal[0]) * 32767:6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
