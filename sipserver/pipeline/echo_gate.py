"""Tell the agent's own echo from caller speech, so the echo never interrupts the agent.

Phone lines often return part of what the agent says (hybrid echo, a speakerphone), and the far
end has no echo canceller we control. Echo is a delayed, attenuated copy of what was played, so
it correlates strongly with the played signal at one lag; caller speech does not. The gate keeps
the last ``max_delay`` seconds of played audio and, when asked, computes the normalised
cross-correlation of the latest ``window`` of caller audio against it at every lag (one FFT,
numpy; no per-sample Python). A peak above ``threshold`` means "this is echo".

It costs one FFT of about ``(max_delay + window) * rate`` samples per question, and the session
only asks while the agent is speaking and the VAD hears something.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["EchoGate"]


class _Ring:
    """The latest ``size`` samples, appended frame by frame (kept as int16: every frame is
    appended, few are ever correlated, so the conversion to float waits for :meth:`latest`)."""

    __slots__ = ("_buf", "_filled", "_pos")

    def __init__(self, size: int) -> None:
        self._buf = np.zeros(size, dtype=np.int16)
        self._pos = 0
        self._filled = 0

    def append(self, samples: npt.NDArray[np.int16]) -> None:
        size = self._buf.size
        n = samples.size
        if n >= size:
            self._buf[:] = samples[-size:]
            self._pos = 0
        else:
            end = self._pos + n
            if end <= size:
                self._buf[self._pos : end] = samples
            else:
                first = size - self._pos
                self._buf[self._pos :] = samples[:first]
                self._buf[: n - first] = samples[first:]
            self._pos = end % size
        self._filled = min(size, self._filled + n)

    def latest(self) -> npt.NDArray[np.float64]:
        """All held samples, oldest first."""
        return np.roll(self._buf, -self._pos)[self._buf.size - self._filled :].astype(np.float64)


class EchoGate:
    """Decides whether the caller's latest audio is an echo of the agent's.

    Args:
        sample_rate: rate of both directions, in Hz.
        max_delay: longest echo path considered, in seconds.
        window: caller audio compared, in seconds.
        threshold: normalised correlation at or above which the audio counts as echo.
    """

    __slots__ = ("_mic", "_played", "_win", "threshold")

    def __init__(
        self,
        sample_rate: int,
        *,
        max_delay: float = 0.5,
        window: float = 0.2,
        threshold: float = 0.5,
    ) -> None:
        self._win = int(window * sample_rate)
        self._played = _Ring(int((max_delay + window) * sample_rate))
        self._mic = _Ring(self._win)
        self.threshold = threshold

    def played(self, frame: bytes) -> None:
        """A frame sent to the caller."""
        self._played.append(np.frombuffer(frame, dtype="<i2"))

    def heard(self, frame: bytes) -> None:
        """A frame received from the caller."""
        self._mic.append(np.frombuffer(frame, dtype="<i2"))

    def correlation(self) -> float:
        """Peak normalised correlation of the caller's latest window with the played audio."""
        mic = self._mic.latest()
        ref = self._played.latest()
        if mic.size < self._win or ref.size < mic.size:
            return 0.0
        mic_energy = float(mic @ mic)
        if mic_energy <= 0.0:
            return 0.0
        n = 1 << int(ref.size + mic.size - 1).bit_length()
        # c[k] = sum_i ref[k + i] * mic[i] for every lag k at which mic fits inside ref.
        spectrum = np.fft.rfft(ref, n) * np.conj(np.fft.rfft(mic, n))
        lags = ref.size - mic.size + 1
        corr = np.fft.irfft(spectrum, n)[:lags]
        squares = np.concatenate(([0.0], np.cumsum(ref * ref)))
        ref_energy = squares[mic.size : mic.size + lags] - squares[:lags]
        valid = ref_energy > 1e-9 * mic.size
        if not np.any(valid):
            return 0.0
        ncc = np.abs(corr[valid]) / np.sqrt(ref_energy[valid] * mic_energy)
        return float(np.max(ncc))

    def is_echo(self) -> bool:
        """True when the caller's latest audio is (mostly) the agent's own, delayed."""
        return self.correlation() >= self.threshold
