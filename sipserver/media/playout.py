"""Outbound audio of one call: a bounded queue of 20 ms frames with an optional background bed.

Speech (TTS output, a prompt) is pushed in chunks of any length and re-chunked into exact 20 ms
s16le frames; the media clock pops one frame per tick. :meth:`Playout.clear` empties the queue at
once (barge-in). A looping background bed (ambient sound) can be mixed under the speech; mixing
is vectorised with numpy (int32 sum, clipped to int16), never a per-sample Python loop.

Pure: no asyncio, no clock, no threads. Not thread-safe: when ``push`` and ``pop`` run on
different threads (e.g. the event loop and a media clock thread), guard the instance with a lock.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from sipserver.media.frames import FRAME_MS, frame_bytes

__all__ = ["FRAME_MS", "Playout"]


class Playout:
    """Bounded queue of outbound 20 ms s16le frames for one call.

    Underflow (:meth:`pop` with nothing queued) is counted only while a speaking segment is open
    (between :meth:`begin_segment` and :meth:`end_segment`): silence between utterances is not a
    glitch, a gap in the middle of one is.

    Args:
        sample_rate: sample rate of the PCM, in Hz (e.g. 8000 or 16000).
        max_ms: most audio the queue holds; pushing beyond drops the oldest frames (counted).
    """

    __slots__ = (
        "_bed",
        "_bed_pos",
        "_frames",
        "_max_frames",
        "_partial",
        "_segment_open",
        "_silence",
        "cleared_frames",
        "frame_bytes",
        "overflow_frames",
        "played_frames",
        "pushed_frames",
        "sample_rate",
        "underflow_frames",
    )

    def __init__(self, sample_rate: int, *, max_ms: int = 30_000) -> None:
        if sample_rate <= 0 or sample_rate * FRAME_MS % 1000:
            raise ValueError(f"sample rate {sample_rate} does not give whole 20 ms frames")
        if max_ms < FRAME_MS:
            raise ValueError(f"max_ms must be at least {FRAME_MS}")
        self.sample_rate = sample_rate
        """Sample rate in Hz."""
        self.frame_bytes = frame_bytes(sample_rate)
        """Bytes of one 20 ms frame (``rate * 0.02 * 2``)."""
        self._max_frames = max_ms // FRAME_MS
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        self._silence = bytes(self.frame_bytes)
        self._segment_open = False
        self._bed: npt.NDArray[np.int32] | None = None
        self._bed_pos = 0
        self.pushed_frames = 0
        """Whole frames queued by :meth:`push` (and by :meth:`end_segment` padding)."""
        self.played_frames = 0
        """Queued frames returned by :meth:`pop`."""
        self.overflow_frames = 0
        """Oldest frames dropped because the queue held ``max_ms``."""
        self.underflow_frames = 0
        """:meth:`pop` calls that found nothing queued while a segment was open."""
        self.cleared_frames = 0
        """Frames discarded by :meth:`clear`."""

    # ---------------------------------------------------------------------------------- input

    def push(self, pcm: bytes) -> None:
        """Queue speech of any length; it is re-chunked into exact frames.

        A tail shorter than a frame waits for the next push (or :meth:`end_segment`).

        Args:
            pcm: s16le mono samples at :attr:`sample_rate`.
        """
        fb = self.frame_bytes
        partial = self._partial
        if not partial and len(pcm) % fb == 0:
            data: bytes | bytearray = pcm
        else:
            partial += pcm
            data = partial
        whole = len(data) - len(data) % fb
        if whole:
            frames = self._frames
            frames.extend(bytes(data[i : i + fb]) for i in range(0, whole, fb))
            self.pushed_frames += whole // fb
            if data is partial:
                del partial[:whole]
            excess = len(frames) - self._max_frames
            if excess > 0:
                for _ in range(excess):
                    frames.popleft()
                self.overflow_frames += excess

    def begin_segment(self) -> None:
        """Mark the start of an utterance: from now on an empty queue is an underflow."""
        self._segment_open = True

    def end_segment(self) -> None:
        """End the utterance: pad its tail to a whole frame; stop counting underflow."""
        if self._partial:
            self.push(bytes(self.frame_bytes - len(self._partial)))
        self._segment_open = False

    def clear(self) -> int:
        """Drop everything queued at once (barge-in) and close the segment.

        Returns:
            Milliseconds of audio dropped (the partial tail included, rounded down).
        """
        dropped_bytes = len(self._frames) * self.frame_bytes + len(self._partial)
        self.cleared_frames += len(self._frames)
        self._frames.clear()
        self._partial.clear()
        self._segment_open = False
        return dropped_bytes * 1000 // (2 * self.sample_rate)

    def take(self) -> list[bytes]:
        """Remove and return everything queued (whole frames, then the partial tail), closing
        the segment: a paused utterance that :meth:`push` can queue again to resume it."""
        taken = list(self._frames)
        if self._partial:
            taken.append(bytes(self._partial))
        self._frames.clear()
        self._partial.clear()
        self._segment_open = False
        return taken

    def set_bed(self, pcm: bytes | None, volume: float = 1.0) -> None:
        """Set (or remove with None) the looping background bed mixed under every frame.

        Args:
            pcm: s16le samples of the bed at :attr:`sample_rate`; it loops forever. None or
                empty removes the bed.
            volume: gain in [0, 1] applied to the bed.

        Raises:
            ValueError: ``volume`` outside [0, 1].
        """
        if not 0.0 <= volume <= 1.0:
            raise ValueError(f"bed volume {volume} outside [0, 1]")
        samples = np.frombuffer(pcm or b"", dtype="<i2", count=len(pcm or b"") // 2)
        if samples.size == 0 or volume == 0.0:
            self._bed = None
            self._bed_pos = 0
            return
        scaled = np.rint(samples.astype(np.float64) * volume).astype(np.int32)
        n = self.frame_bytes // 2
        # Append enough of the start that any frame-long slice from a position < len is contiguous.
        self._bed = np.concatenate((scaled, np.resize(scaled, n)))
        self._bed_pos = 0

    # --------------------------------------------------------------------------------- output

    def pop(self) -> bytes:
        """Return the next frame: queued speech (or silence) mixed with the bed, if any."""
        if self._frames:
            frame = self._frames.popleft()
            self.played_frames += 1
        else:
            frame = self._silence
            if self._segment_open:
                self.underflow_frames += 1
        bed = self._bed
        if bed is None:
            return frame
        n = self.frame_bytes // 2
        loop_len = bed.size - n
        pos = self._bed_pos
        self._bed_pos = (pos + n) % loop_len
        mixed = np.frombuffer(frame, dtype="<i2").astype(np.int32)
        mixed += bed[pos : pos + n]
        np.clip(mixed, -32768, 32767, out=mixed)
        return mixed.astype("<i2").tobytes()

    # ---------------------------------------------------------------------------------- state

    @property
    def queued_frames(self) -> int:
        """Whole frames waiting."""
        return len(self._frames)

    @property
    def queued_ms(self) -> int:
        """Milliseconds of speech waiting (whole frames plus the partial tail, rounded down)."""
        queued = len(self._frames) * self.frame_bytes + len(self._partial)
        return queued * 1000 // (2 * self.sample_rate)

    @property
    def segment_open(self) -> bool:
        """True between :meth:`begin_segment` and :meth:`end_segment` (or :meth:`clear`)."""
        return self._segment_open

    @property
    def counters(self) -> dict[str, int]:
        """All counters by name (for STATS records and metrics)."""
        return {
            "pushed_frames": self.pushed_frames,
            "played_frames": self.played_frames,
            "overflow_frames": self.overflow_frames,
            "underflow_frames": self.underflow_frames,
            "cleared_frames": self.cleared_frames,
        }
