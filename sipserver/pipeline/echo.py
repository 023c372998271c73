"""Stand-in session: play a greeting, then echo the caller back with a fixed delay.

It exercises the whole call path before the voice pipeline exists: audio in, audio out, DTMF
and a session-side hangup. Sans-I/O like every session: time is the tick count of
:meth:`EchoSession.next_frame` calls (one per 20 ms), so it is exact on any clock.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sipserver.pipeline.session import FRAME_MS, CallInfo, frame_bytes

__all__ = ["EchoSession", "tone_greeting"]

_DTMF_DIGITS = frozenset("0123456789*#ABCD")


def tone_greeting(sample_rate: int) -> bytes:
    """A short two-tone chime ("ding-dong", E5 then C5, 0.6 s) as s16le PCM.

    Each note is a sine with a soft second harmonic, a 10 ms attack and an exponential decay;
    the end fades to zero, so there is no click. Both notes and their harmonics stay inside the
    telephone band (300-3400 Hz). The length is a whole number of 20 ms frames.

    Args:
        sample_rate: sample rate in Hz (e.g. 8000 or 16000).

    Returns:
        The chime, about -9 dBFS peak.
    """
    n = sample_rate * 600 // 1000
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    for freq, start in ((659.25, 0.0), (523.25, 0.3)):
        local = t - start
        on = local >= 0
        lt = local[on]
        envelope = np.minimum(lt / 0.010, 1.0) * np.exp(-lt / 0.18)
        tone = np.sin(2 * np.pi * freq * lt) + 0.25 * np.sin(4 * np.pi * freq * lt)
        out[on] += envelope * tone
    fade = max(1, sample_rate * 30 // 1000)
    out[-fade:] *= np.linspace(1.0, 0.0, fade)
    out *= 0.35 * 32767 / np.max(np.abs(out))
    return bytes(np.rint(out).astype("<i2").tobytes())


class EchoSession:
    """Greeting, then the caller's own audio ``echo_delay_ms`` later; hangs up on a digit.

    Timing is frame-accurate: a frame received in tick ``n`` (see
    :mod:`sipserver.pipeline.session`) is returned by ``next_frame`` in tick
    ``n + echo_delay_ms / 20``. Frames that arrive in a burst (several in one tick) keep their
    order and come back on consecutive ticks; a backlog beyond one second is dropped (counted).
    Caller audio received while the greeting plays is not echoed.

    Args:
        greeting_pcm: s16le greeting at ``sample_rate`` (padded with silence to whole frames), or
            None for no greeting.
        sample_rate: sample rate of every frame, in Hz.
        echo_delay_ms: echo delay, a multiple of 20 ms (0 echoes in the same tick).
        hangup_digit: DTMF digit that makes the session request a hangup.
    """

    MAX_BACKLOG_TICKS = 1000 // FRAME_MS
    """Extra ticks a burst may push the echo back before frames are dropped."""

    def __init__(
        self,
        greeting_pcm: bytes | None,
        *,
        sample_rate: int,
        echo_delay_ms: int = 200,
        hangup_digit: str = "#",
    ) -> None:
        if echo_delay_ms < 0 or echo_delay_ms % FRAME_MS:
            raise ValueError(f"echo_delay_ms must be a non-negative multiple of {FRAME_MS}")
        if hangup_digit not in _DTMF_DIGITS or len(hangup_digit) != 1:
            raise ValueError(f"invalid hangup digit {hangup_digit!r}")
        if sample_rate <= 0 or sample_rate * FRAME_MS % 1000:
            raise ValueError(f"sample rate {sample_rate} does not give whole 20 ms frames")
        self.sample_rate = sample_rate
        """Sample rate in Hz."""
        self.frame_bytes = frame_bytes(sample_rate)
        """Bytes of one frame."""
        self.delay_ticks = echo_delay_ms // FRAME_MS
        """Echo delay in ticks."""
        self.hangup_digit = hangup_digit
        """Digit that ends the call."""
        self.hangup_requested: str | None = None
        """``"dtmf"`` once the caller pressed :attr:`hangup_digit`."""
        self.info: CallInfo | None = None
        """The call, once started."""
        self.ended: str | None = None
        """Reason given to :meth:`on_hangup`, once the call ended."""
        self.echoed_frames = 0
        """Caller frames sent back."""
        self.dropped_frames = 0
        """Caller frames not echoed: during the greeting, or beyond the backlog."""
        fb = self.frame_bytes
        greeting = greeting_pcm or b""
        if len(greeting) % fb:
            greeting += bytes(fb - len(greeting) % fb)
        self._greeting = deque(greeting[i : i + fb] for i in range(0, len(greeting), fb))
        self._greeting_ticks = len(self._greeting)
        self._silence = bytes(fb)
        self._tick = 0
        self._echo: deque[tuple[int, bytes]] = deque()  # (due tick, frame), due ascending
        self._last_due = -1

    @property
    def greeting_ticks(self) -> int:
        """Frames (ticks) the greeting lasts."""
        return self._greeting_ticks

    @property
    def tick(self) -> int:
        """Ticks elapsed: calls of :meth:`next_frame` so far."""
        return self._tick

    def on_start(self, info: CallInfo) -> None:
        """Remember the call.

        Raises:
            ValueError: the call's sample rate is not the session's.
        """
        if info.sample_rate != self.sample_rate:
            raise ValueError(
                f"call at {info.sample_rate} Hz given to a session at {self.sample_rate} Hz"
            )
        self.info = info

    def on_audio(self, frame: bytes) -> None:
        """Schedule the caller's frame to come back :attr:`delay_ticks` later.

        Raises:
            ValueError: the frame is not exactly 20 ms.
        """
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes, expected {self.frame_bytes}")
        if self.ended is not None:
            return
        tick = self._tick
        if tick < self._greeting_ticks:
            self.dropped_frames += 1
            return
        due = max(tick + self.delay_ticks, self._last_due + 1)
        if due - tick > self.delay_ticks + self.MAX_BACKLOG_TICKS:
            self.dropped_frames += 1
            return
        self._echo.append((due, frame))
        self._last_due = due

    def on_dtmf(self, digit: str) -> None:
        """Request a hangup when ``digit`` is the hangup digit."""
        if digit == self.hangup_digit and self.ended is None:
            self.hangup_requested = "dtmf"

    def on_hangup(self, reason: str) -> None:
        """Stop: later frames are silence and caller audio is ignored."""
        self.ended = reason
        self._greeting.clear()
        self._echo.clear()

    def next_frame(self) -> bytes:
        """The greeting frame of this tick, else the echo due now, else silence."""
        tick = self._tick
        self._tick = tick + 1
        if self._greeting:
            return self._greeting.popleft()
        echo = self._echo
        if echo and echo[0][0] == tick:
            self.echoed_frames += 1
            return echo.popleft()[1]
        return self._silence
