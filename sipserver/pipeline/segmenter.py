"""Speech segmentation: per-window speech probabilities in, speech start/end events out.

:class:`SpeechSegmenter` is the pure half of the VAD (:mod:`sipserver.pipeline.vad` runs the
model): it takes one stream's windows of audio with their speech probabilities, decides when
speech starts and ends (thresholds with hysteresis, minimum speech and silence durations) and
buffers the utterance with its prefix padding. No model, no clock, no threads: tests drive it
with scripted probabilities. Times are audio time (samples consumed / rate).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sipserver.config import VadSettings

__all__ = [
    "RELEASE_MARGIN",
    "SAMPLE_RATES",
    "SpeechEnded",
    "SpeechSegmenter",
    "SpeechStarted",
    "VadEvent",
    "VadOptions",
]

#: While speaking, a window stays speech until its probability falls below
#: ``activation_threshold - RELEASE_MARGIN`` (clamped at 0): hysteresis against flicker.
RELEASE_MARGIN = 0.15

#: Rates the VAD runs at (Hz).
SAMPLE_RATES = (8000, 16000)

Int16Array = npt.NDArray[np.int16]

# --------------------------------------------------------------------------------------------
# Settings and events


@dataclass(frozen=True, slots=True)
class VadOptions:
    """How a stream's speech probabilities become speech segments (see :class:`SpeechSegmenter`).

    Durations are seconds of audio; they are rounded to whole samples.
    """

    min_speech_duration: float = 0.05
    """Consecutive speech needed before speech starts; shorter blips are not speech."""
    min_silence_duration: float = 0.55
    """Consecutive non-speech that ends a speech segment."""
    activation_threshold: float = 0.5
    """Silero probability at or above which a window is speech (0..1)."""
    prefix_padding_duration: float = 0.5
    """Audio kept from before the start of speech and put at the head of the utterance."""
    max_buffered_speech: float = 60.0
    """Cap on one utterance's buffered audio (padding included); the rest is not kept."""
    sample_rate: int = 16000
    """Hz the VAD runs at: 8000 or 16000."""

    def __post_init__(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be 8000 or 16000, not {self.sample_rate}")
        if not 0.0 <= self.activation_threshold <= 1.0:
            raise ValueError("activation_threshold must be in [0, 1]")
        for name in (
            "min_speech_duration",
            "min_silence_duration",
            "prefix_padding_duration",
            "max_buffered_speech",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def from_config(cls, cfg: VadSettings) -> VadOptions:
        """Options from a model's ``vad:`` settings (:class:`sipserver.config.VadSettings`)."""
        return cls(
            min_speech_duration=float(cfg.min_speech_duration),
            min_silence_duration=float(cfg.min_silence_duration),
            activation_threshold=float(cfg.activation_threshold),
            prefix_padding_duration=float(cfg.prefix_padding_duration),
            max_buffered_speech=float(cfg.max_buffered_speech),
            sample_rate=int(cfg.sample_rate),
        )

    @property
    def release_threshold(self) -> float:
        """Probability below which a window of ongoing speech counts as silence."""
        return max(self.activation_threshold - RELEASE_MARGIN, 0.0)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking (emitted ``min_speech_duration`` after :attr:`time`)."""

    time: float
    """Audio time (s) speech began: the start of the first speech window of the run."""
    prefix: float
    """Seconds of padding from before :attr:`time` at the head of the utterance audio (at most
    ``prefix_padding_duration``; less near the start of the stream)."""


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The caller stopped speaking (emitted ``min_silence_duration`` after :attr:`time`)."""

    time: float
    """Audio time (s) the closing silence began: the end of the last speech window."""
    audio: bytes
    """The utterance, s16le at the VAD rate: prefix padding + speech + the trailing silence up
    to this event (the first ``max_buffered_speech`` seconds of it when longer)."""
    speech_duration: float
    """Seconds from the start of speech to :attr:`time` (pauses inside the utterance count)."""
    truncated: float = 0.0
    """Seconds of the utterance left out of :attr:`audio` by the ``max_buffered_speech`` cap."""


#: What a segmenter emits.
VadEvent = SpeechStarted | SpeechEnded


# --------------------------------------------------------------------------------------------
# Segmenter


def _samples(seconds: float, rate: int) -> int:
    return round(seconds * rate)


class SpeechSegmenter:
    """Speech segmentation of one stream from per-window speech probabilities.

    A window is speech when its probability is >= ``activation_threshold``; once speaking, a
    window stays speech while its probability is >= ``activation_threshold - 0.15`` (clamped at
    0, so a threshold <= 0.15 never releases). ``min_speech_duration`` of consecutive speech
    windows starts speech (:class:`SpeechStarted`); ``min_silence_duration`` of consecutive
    non-speech windows ends it (:class:`SpeechEnded`). Runs are counted in samples, so a
    duration that is not a whole number of windows needs the next whole window (e.g. 0.05 s of
    32 ms windows = 2 windows).

    While speaking the utterance is buffered: up to ``prefix_padding_duration`` of the audio
    before speech began, then everything since. The buffer is capped at ``max_buffered_speech``
    seconds (padding included): beyond it, new audio is not appended (the utterance keeps its
    beginning, which is what STT needs) and the left-out seconds are counted in
    :attr:`truncated_seconds` and :attr:`SpeechEnded.truncated`.

    The padding of an utterance is the audio fed just before it; for an utterance that follows
    another one closely it comes from the end of the previous utterance's buffer (none when that
    one was truncated). :meth:`skip` (audio dropped upstream) forgets the padding history.

    Events wait in a bounded deque (:meth:`events`) until the owner drains it; when more than
    ``max_events`` wait, the oldest are dropped and counted in :attr:`dropped_events`.

    Pure and single-threaded: no model, no clock.

    Args:
        options: segmentation settings.
        sample_rate: Hz of the audio fed; by default ``options.sample_rate``.
        max_events: most events kept undrained.
    """

    __slots__ = (
        "_buffer",
        "_cap_bytes",
        "_dropped_events",
        "_events",
        "_history",
        "_history_len",
        "_max_events",
        "_min_silence",
        "_min_speech",
        "_prefix",
        "_probability",
        "_release",
        "_samples",
        "_silence_run",
        "_speaking",
        "_speech_run",
        "_speech_start",
        "_threshold",
        "_truncated",
        "options",
        "sample_rate",
    )

    def __init__(
        self, options: VadOptions, sample_rate: int | None = None, *, max_events: int = 256
    ) -> None:
        rate = options.sample_rate if sample_rate is None else sample_rate
        if rate <= 0:
            raise ValueError("sample_rate must be > 0")
        if max_events < 2:
            raise ValueError("max_events must be >= 2")
        self.options = options
        self.sample_rate = rate
        self._threshold = options.activation_threshold
        self._release = options.release_threshold
        self._min_speech = _samples(options.min_speech_duration, rate)
        self._min_silence = _samples(options.min_silence_duration, rate)
        self._prefix = _samples(options.prefix_padding_duration, rate)
        self._cap_bytes = 2 * _samples(options.max_buffered_speech, rate)
        self._max_events = max_events
        self._events: deque[VadEvent] = deque()
        self._dropped_events = 0
        # Recent audio (windows, oldest first) for the prefix padding and the pending speech run.
        self._history: deque[Int16Array] = deque()
        self._history_len = 0
        self._buffer = bytearray()  # the utterance while speaking
        self._truncated = 0  # samples left out of the current utterance
        self._samples = 0  # samples consumed (fed or skipped): the audio clock
        self._probability = 0.0
        self._speaking = False
        self._speech_run = 0  # samples of consecutive speech while not speaking
        self._silence_run = 0  # samples of consecutive non-speech while speaking
        self._speech_start = 0  # sample speech began at

    # -- state -----------------------------------------------------------------------------

    @property
    def audio_time(self) -> float:
        """Seconds of audio consumed so far."""
        return self._samples / self.sample_rate

    @property
    def probability(self) -> float:
        """Speech probability of the last window fed (0 before the first)."""
        return self._probability

    @property
    def speaking(self) -> bool:
        """True between :class:`SpeechStarted` and :class:`SpeechEnded`."""
        return self._speaking

    @property
    def speech_duration(self) -> float:
        """Seconds of the current utterance from the start of speech to the end of its last
        speech window (0 when not speaking); for interruption decisions."""
        if not self._speaking:
            return 0.0
        return (self._samples - self._silence_run - self._speech_start) / self.sample_rate

    @property
    def silence_duration(self) -> float:
        """Seconds of non-speech since the last speech window of the current utterance (0 when
        not speaking): how long the caller has been quiet before the end is declared."""
        return self._silence_run / self.sample_rate if self._speaking else 0.0

    @property
    def truncated_seconds(self) -> float:
        """Seconds of the current utterance not buffered because of ``max_buffered_speech``."""
        return self._truncated / self.sample_rate

    @property
    def dropped_events(self) -> int:
        """Events dropped because the owner did not drain them."""
        return self._dropped_events

    def current_audio(self) -> bytes:
        """The utterance buffered so far (s16le; empty when not speaking), e.g. for interim STT."""
        return bytes(self._buffer)

    def events(self) -> deque[VadEvent]:
        """Events not yet drained, oldest first; the owner pops them (``popleft``)."""
        return self._events

    def next_event(self) -> VadEvent | None:
        """Pop the oldest undrained event, or None."""
        return self._events.popleft() if self._events else None

    # -- input -----------------------------------------------------------------------------

    def feed(self, window_pcm: Int16Array, probability: float) -> None:
        """Consume one window of audio (int16, any length) and its speech probability."""
        n = len(window_pcm)
        self._samples += n
        self._probability = probability
        if self._speaking:
            if len(self._buffer) + 2 * n <= self._cap_bytes and window_pcm.flags.c_contiguous:
                self._buffer += window_pcm.data
            else:
                self._append(window_pcm)
            if probability >= self._release:
                self._silence_run = 0
            else:
                self._silence_run += n
                if self._silence_run >= self._min_silence:
                    self._end()
            return
        history = self._history
        history.append(window_pcm)
        self._history_len += n
        if probability >= self._threshold:
            self._speech_run += n
            if self._speech_run >= self._min_speech:
                self._start()
                return
            keep = self._prefix + self._speech_run
        else:
            self._speech_run = 0
            keep = self._prefix
        while history and self._history_len - len(history[0]) >= keep:
            self._history_len -= len(history.popleft())

    def skip(self, samples: int) -> None:
        """Advance the audio clock over ``samples`` never fed (audio dropped upstream).

        The gap breaks continuity: the padding history and any pending speech run are
        forgotten; an ongoing utterance goes on without the missing audio.
        """
        if samples <= 0:
            return
        self._samples += samples
        self._history.clear()
        self._history_len = 0
        self._speech_run = 0

    # -- internals -------------------------------------------------------------------------

    def _emit(self, event: VadEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self._dropped_events += 1
        self._events.append(event)

    def _append(self, pcm: Int16Array) -> None:
        room = self._cap_bytes - len(self._buffer)
        data = pcm.tobytes()  # pcm may be a non-contiguous slice
        if len(data) <= room:
            self._buffer += data
        else:
            if room > 0:
                self._buffer += data[:room]
            self._truncated += (len(data) - max(room, 0)) // 2

    def _start(self) -> None:
        run = self._speech_run
        start = self._samples - run
        recent = np.concatenate(self._history) if self._history else np.empty(0, np.int16)
        prefix = min(self._prefix, len(recent) - run)
        self._speaking = True
        self._speech_start = start
        self._speech_run = 0
        self._silence_run = 0
        self._buffer = bytearray()
        self._truncated = 0
        self._append(recent[len(recent) - run - prefix :])
        self._history.clear()  # not kept while speaking: rebuilt from the utterance at its end
        self._history_len = 0
        rate = self.sample_rate
        self._emit(SpeechStarted(time=start / rate, prefix=prefix / rate))

    def _end(self) -> None:
        rate = self.sample_rate
        silence_start = self._samples - self._silence_run
        self._emit(
            SpeechEnded(
                time=silence_start / rate,
                audio=bytes(self._buffer),
                speech_duration=(silence_start - self._speech_start) / rate,
                truncated=self._truncated / rate,
            )
        )
        self._speaking = False
        self._silence_run = 0
        # The padding of the next utterance comes from the end of this one (unless truncated).
        if self._prefix and not self._truncated and self._buffer:
            tail = np.frombuffer(self._buffer, dtype="<i2")[-self._prefix :].copy()
            self._history.append(tail)
            self._history_len = len(tail)
        self._buffer = bytearray()
        self._truncated = 0
