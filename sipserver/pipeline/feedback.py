"""Audio feedback: a thinking sound while the agent prepares its reply, and an ambient bed.

:func:`load_sound` reads a shipped clip (``sipserver/sounds/<name>.wav``, see
:data:`~sipserver.config.SHIPPED_SOUNDS`) or an audio file, as mono int16 at the call's
rate. :class:`FeedbackMixer` mixes them into the outbound 20 ms frames the playout produces:

- the **ambient** bed loops under everything, speech included, for as long as the call lasts;
- the **thinking** clip loops while the session says it is thinking; it fades in over
  :data:`FADE_MS` when thinking starts and fades out over :data:`FADE_MS` when it stops (the
  agent starts speaking, or the turn is abandoned) instead of cutting hard.

Mixing is vectorised numpy: an int32 sum clipped to int16. Pure: no clock, no asyncio, no
threads; the position in each clip advances by the samples of each frame mixed. Not thread-safe.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib
import wave
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
import soxr

from sipserver.config import SHIPPED_SOUNDS, AudioFeedbackSettings

__all__ = ["FADE_MS", "FeedbackMixer", "SoundError", "load_sound"]

FADE_MS: Final = 100
"""Duration of the thinking sound's fade in and fade out, milliseconds."""

_LOOP_PAD_S: Final = 0.1
"""Audio wrapped around each end before resampling, so the resampled clip still loops cleanly."""

Samples = npt.NDArray[np.int16]
_Scalar = TypeVar("_Scalar", bound=np.generic)


class SoundError(ValueError):
    """A sound cannot be loaded: unknown name, missing or unreadable file."""


# ------------------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=32)
def load_sound(name_or_path: str, sample_rate: int) -> Samples:
    """Load a shipped clip or an audio file as mono int16 samples at ``sample_rate``.

    WAV files (8/16/24/32-bit integer PCM) are read with :mod:`wave`; anything else (float WAV,
    MP3, Ogg, FLAC...) is decoded with PyAV. Several channels are averaged; the rate is converted
    with soxr. The clip is treated as a loop: it is resampled with its ends wrapped around, so a
    loop that is seamless at the source rate stays seamless. Results are cached; the returned
    array is read-only.

    Args:
        name_or_path: A name from :data:`~sipserver.config.SHIPPED_SOUNDS`
            (``keyboard_typing``...) or the path of an audio file (relative to the working
            directory).
        sample_rate: The rate wanted, Hz (8000, 16000...).

    Returns:
        The samples, 1-D int16, read-only.

    Raises:
        SoundError: Unknown name, missing file, or a file that cannot be decoded.
    """
    if sample_rate <= 0:
        raise SoundError(f"sample rate must be positive, got {sample_rate}")
    if name_or_path in SHIPPED_SOUNDS:
        resource = importlib.resources.files("sipserver") / "sounds" / f"{name_or_path}.wav"
        try:
            with importlib.resources.as_file(resource) as path:
                samples, rate = _read_audio(path)
        except (OSError, SoundError) as exc:
            raise SoundError(
                f"shipped sound {name_or_path!r} is missing or damaged: {exc}"
            ) from exc
    else:
        path = pathlib.Path(name_or_path)
        if not path.is_file():
            choices = ", ".join(SHIPPED_SOUNDS)
            raise SoundError(
                f"{name_or_path!r} is neither a shipped sound ({choices}) nor an existing file"
            )
        samples, rate = _read_audio(path)
    if samples.size == 0:
        raise SoundError(f"{name_or_path!r} contains no audio")
    out = _resample_loop(samples, rate, sample_rate)
    out.setflags(write=False)
    return out


def _read_audio(path: pathlib.Path) -> tuple[npt.NDArray[np.float32], int]:
    """Decode ``path`` to mono float32 in [-1, 1] and its sample rate."""
    try:
        return _read_wav(path)
    except (wave.Error, EOFError):
        pass  # not integer PCM WAV: let FFmpeg try
    return _read_with_av(path)


def _read_wav(path: pathlib.Path) -> tuple[npt.NDArray[np.float32], int]:
    with wave.open(str(path), "rb") as wav:
        channels = wav.getnchannels()
        width = wav.getsampwidth()
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        triplets = np.frombuffer(raw, dtype=np.uint8)[: len(raw) // 3 * 3].reshape(-1, 3)
        wide = triplets.astype(np.int32)
        value = wide[:, 0] | (wide[:, 1] << 8) | (wide[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        data = value.astype(np.float32) / float(1 << 23)
    elif width == 4:
        data = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise wave.Error(f"unsupported sample width {width}")
    frames = data.size // channels
    mono = data[: frames * channels].reshape(frames, channels).mean(axis=1, dtype=np.float32)
    return mono, rate


def _read_with_av(path: pathlib.Path) -> tuple[npt.NDArray[np.float32], int]:
    import av  # heavy import, only for non-WAV files

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SoundError(f"{str(path)!r} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.FFmpegError as exc:
        raise SoundError(f"cannot decode {str(path)!r}: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks).astype(np.float32, copy=False), rate


def _resample_loop(samples: npt.NDArray[np.float32], rate: int, target: int) -> Samples:
    """Resample a loop: wrap ``_LOOP_PAD_S`` of audio around each end, resample, cut it off."""
    if rate == target:
        scaled = samples
    else:
        pad = max(1, int(rate * _LOOP_PAD_S))
        wrapped = np.take(samples, np.arange(-pad, samples.size + pad), mode="wrap")
        resampled = soxr.resample(wrapped, rate, target, quality="HQ")
        start = round(pad * target / rate)
        length = max(1, round(samples.size * target / rate))
        scaled = resampled[start : start + length]
    pcm = np.rint(scaled.astype(np.float64) * 32768.0)
    return np.clip(pcm, -32768, 32767).astype(np.int16)


# -------------------------------------------------------------------------------------- mixing


class FeedbackMixer:
    """Mixes the thinking sound and the ambient bed into a call's outbound frames.

    Call :meth:`mix` once per outbound frame, in order, with the session's thinking state. A
    mixer with nothing configured (:attr:`active` false) returns every frame unchanged.

    Args:
        sample_rate: Rate of the frames, Hz.
        thinking: The thinking clip (int16 at ``sample_rate``, see :func:`load_sound`), or None.
        thinking_volume: Linear gain of the thinking clip, in [0, 1].
        ambient: The ambient clip, or None.
        ambient_volume: Linear gain of the ambient clip, in [0, 1].
        fade_ms: Fade in/out of the thinking sound, milliseconds (0: hard start and stop).

    Raises:
        ValueError: A volume outside [0, 1], a bad rate or fade.
    """

    __slots__ = (
        "_ambient",
        "_ambient_pos",
        "_fade",
        "_fade_samples",
        "_thinking",
        "_thinking_pos",
        "_thinking_scaled",
        "sample_rate",
    )

    def __init__(
        self,
        sample_rate: int,
        *,
        thinking: Samples | None,
        thinking_volume: float,
        ambient: Samples | None,
        ambient_volume: float,
        fade_ms: int = FADE_MS,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        for key, volume in (
            ("thinking_volume", thinking_volume),
            ("ambient_volume", ambient_volume),
        ):
            if not 0.0 <= volume <= 1.0:
                raise ValueError(f"{key} {volume} outside [0, 1]")
        if fade_ms < 0:
            raise ValueError(f"fade_ms must be >= 0, got {fade_ms}")
        self.sample_rate = sample_rate
        """Rate of the frames, Hz."""
        # Clips are kept pre-scaled by their volume: float32 for the thinking clip (its fade
        # gain varies per sample), int32 for the ambient bed (added as is).
        self._thinking: npt.NDArray[np.float32] | None = None
        self._thinking_scaled: npt.NDArray[np.int32] | None = None
        if thinking is not None and thinking.size and thinking_volume > 0.0:
            self._thinking = (thinking.astype(np.float32) * np.float32(thinking_volume)).astype(
                np.float32
            )
            self._thinking_scaled = np.rint(self._thinking).astype(np.int32)
        self._ambient: npt.NDArray[np.int32] | None = None
        if ambient is not None and ambient.size and ambient_volume > 0.0:
            self._ambient = np.rint(ambient.astype(np.float64) * ambient_volume).astype(np.int32)
        # The fade is counted in samples (exact integers): gain = _fade / _fade_samples.
        self._fade_samples = max(1, sample_rate * fade_ms // 1000)
        self._fade = 0
        self._thinking_pos = 0
        self._ambient_pos = 0

    @classmethod
    def from_settings(cls, settings: AudioFeedbackSettings, sample_rate: int) -> FeedbackMixer:
        """Build the mixer of a model's ``audio_feedback`` settings.

        ``enabled`` switches all audio feedback: when it is false the mixer plays nothing (no
        thinking sound and no ambient bed, whatever ``ambient_sound`` says) and :meth:`mix`
        returns frames unchanged. When it is true, the thinking sound plays while thinking and
        ``ambient_sound`` (unless ``none``) loops under the whole call.

        Args:
            settings: The validated ``audio_feedback`` settings.
            sample_rate: Rate of the call's outbound frames, Hz.

        Returns:
            The mixer.

        Raises:
            SoundError: A configured sound cannot be loaded.
        """
        if not settings.enabled:
            return cls(
                sample_rate, thinking=None, thinking_volume=0.0, ambient=None, ambient_volume=0.0
            )
        ambient = (
            None
            if settings.ambient_sound == "none"
            else load_sound(settings.ambient_sound, sample_rate)
        )
        return cls(
            sample_rate,
            thinking=load_sound(settings.thinking_sound, sample_rate),
            thinking_volume=settings.thinking_volume,
            ambient=ambient,
            ambient_volume=settings.ambient_volume,
        )

    @property
    def active(self) -> bool:
        """True when there is something to mix (a thinking sound or an ambient bed)."""
        return self._thinking is not None or self._ambient is not None

    @property
    def thinking_audible(self) -> bool:
        """True while the thinking sound plays (fading in, steady, or fading out)."""
        return self._fade > 0

    def reset(self) -> None:
        """Silence the thinking sound at once and rewind both clips (e.g. for a new call)."""
        self._fade = 0
        self._thinking_pos = 0
        self._ambient_pos = 0

    def mix(self, frame: bytes, *, thinking: bool) -> bytes:
        """Mix the feedback sounds into one outbound frame.

        Args:
            frame: s16le mono samples at :attr:`sample_rate` (a 20 ms frame: speech, or
                silence when the agent says nothing).
            thinking: Whether the agent is thinking now. The thinking sound fades in when this
                becomes true and fades out when it becomes false.

        Returns:
            The mixed frame, same length; ``frame`` itself when there is nothing to add.
        """
        ambient = self._ambient
        clip = self._thinking
        audible = clip is not None and (thinking or self._fade > 0)
        if ambient is None and not audible:
            return frame
        n = len(frame) // 2
        mixed = np.frombuffer(frame, dtype="<i2", count=n).astype(np.int32)
        if ambient is not None:
            pos = self._ambient_pos
            mixed += _loop_slice(ambient, pos, n)
            self._ambient_pos = (pos + n) % ambient.size
        if audible and clip is not None:
            self._mix_thinking(mixed, clip, n, thinking=thinking)
        np.clip(mixed, -32768, 32767, out=mixed)
        return mixed.astype("<i2").tobytes()

    def _mix_thinking(
        self, mixed: npt.NDArray[np.int32], clip: npt.NDArray[np.float32], n: int, *, thinking: bool
    ) -> None:
        if self._fade == 0:
            self._thinking_pos = 0  # a new thinking spell starts the clip from its beginning
        pos = self._thinking_pos
        self._thinking_pos = (pos + n) % clip.size
        start = self._fade
        full = self._fade_samples
        if thinking and start == full:  # steady: add the pre-scaled clip as is
            assert self._thinking_scaled is not None
            mixed += _loop_slice(self._thinking_scaled, pos, n)
            return
        step = 1 if thinking else -1
        ramp = np.clip(start + step * np.arange(1, n + 1), 0, full)
        self._fade = int(ramp[-1])
        gains = ramp.astype(np.float32) / np.float32(full)
        segment = _loop_slice(clip, pos, n) * gains
        mixed += np.rint(segment).astype(np.int32)


def _loop_slice(clip: npt.NDArray[_Scalar], pos: int, n: int) -> npt.NDArray[_Scalar]:
    """``n`` samples of the looping ``clip`` from ``pos`` (wrapping, any clip length)."""
    end = pos + n
    if end <= clip.size:
        return clip[pos:end]
    return np.take(clip, np.arange(pos, end), mode="wrap")
