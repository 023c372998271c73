"""Inbound jitter/playout buffer for websocket media: chunks in any order, 20 ms frames out.

A media stream over a websocket (Twilio Media Streams, a browser) cannot lose data in transit
(TCP), but it can deliver it late, in bursts, out of order (a client that sends from several
tasks), or with holes (a client that skipped or dropped chunks). :class:`JitterBuffer` turns
that into a steady stream of exact 20 ms s16le frames for the session's tick:

- chunks carry a sequence number (Twilio's ``media.chunk``); those ahead of the next expected
  one wait (bounded) for the missing ones;
- a missing chunk is declared lost once a later chunk has waited ``reorder_ms`` or the reorder
  window is full; its time is filled by concealment: the last frame repeated with a fade for
  up to two frames, then silence;
- a chunk older than the next expected one is late (it was concealed already) or a duplicate:
  dropped and counted;
- :meth:`JitterBuffer.pop` (once per tick) returns nothing until ``target_ms`` is buffered
  (priming), then one frame per tick, two while more than ``target_ms + catchup_ms`` waits
  (so a burst or a faster client clock does not grow the delay for ever); when it runs dry it
  counts an underrun and primes again. At most ``max_ms`` is held; beyond that the oldest audio
  is dropped (counted).

Pure: no clock, no I/O; time is the number of :meth:`pop` calls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sipserver.media.frames import FRAME_MS, frame_bytes

__all__ = ["FRAME_MS", "JitterBuffer", "JitterStats"]


_CONCEALED_REPEATS = 2  # frames of faded repetition before concealment turns to silence


@dataclass(slots=True)
class JitterStats:
    """Counters of one buffer (all cumulative)."""

    received: int = 0
    """Chunks pushed."""
    late: int = 0
    """Chunks that arrived after their time was concealed (dropped)."""
    duplicates: int = 0
    """Chunks whose sequence number was already buffered (dropped)."""
    lost: int = 0
    """Chunks never received by the time they were due (concealed)."""
    concealed_frames: int = 0
    """Frames of concealment (repetition or silence) put in place of lost chunks."""
    overflow_frames: int = 0
    """Frames dropped because more than ``max_ms`` was buffered."""
    underruns: int = 0
    """Ticks on which the buffer ran dry after priming."""
    catchup_frames: int = 0
    """Extra frames delivered to shrink an excess delay."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class JitterBuffer:
    """Reorders chunks, conceals losses and paces 20 ms frames for one inbound stream.

    Args:
        sample_rate: sample rate of the PCM in Hz (8000 or 16000).
        target_ms: audio buffered before frames are released (and again after an underrun).
        max_ms: most audio held (in-order frames plus chunks waiting to be reordered).
        reorder_ms: how long (in ticks of 20 ms) a chunk ahead of a gap waits for it.
        catchup_ms: buffered audio beyond ``target_ms`` that makes :meth:`pop` release two
            frames per tick.
        max_chunk_ms: longest chunk accepted (longer ones raise ``ValueError``).
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        target_ms: int = 60,
        max_ms: int = 2000,
        reorder_ms: int = 100,
        catchup_ms: int = 100,
        max_chunk_ms: int = 1000,
    ) -> None:
        if sample_rate <= 0 or sample_rate * FRAME_MS % 1000:
            raise ValueError(f"sample rate {sample_rate} does not give whole 20 ms frames")
        if not 0 <= target_ms < max_ms:
            raise ValueError("target_ms must be >= 0 and below max_ms")
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes(sample_rate)
        self._target = max(1, target_ms // FRAME_MS) if target_ms else 0
        self._max_frames = max(1, max_ms // FRAME_MS)
        self._reorder_ticks = max(1, reorder_ms // FRAME_MS)
        self._catchup = max(1, catchup_ms // FRAME_MS)
        self._max_chunk_bytes = max_chunk_ms * sample_rate // 1000 * 2
        self._ready: deque[bytes] = deque()
        self._partial = bytearray()
        self._waiting: dict[int, tuple[bytes, int]] = {}  # seq -> (pcm, tick received)
        self._waiting_bytes = 0
        self._next_seq: int | None = None
        self._last_chunk_bytes = self.frame_bytes
        self._last_frame = bytes(self.frame_bytes)
        self._repeats = 0
        self._primed = False
        self._ticks = 0
        self.stats = JitterStats()

    # ---------------------------------------------------------------------------------- input

    def push(self, pcm: bytes, seq: int | None = None) -> None:
        """Add one chunk of s16le PCM.

        Args:
            pcm: the chunk's samples (any whole number of samples up to ``max_chunk_ms``).
            seq: its sequence number (consecutive integers); None appends in arrival order.

        Raises:
            ValueError: odd length or longer than ``max_chunk_ms``.
        """
        if len(pcm) % 2 or len(pcm) > self._max_chunk_bytes:
            raise ValueError(f"chunk of {len(pcm)} bytes is not 1..{self._max_chunk_bytes} bytes")
        self.stats.received += 1
        if seq is None:
            self._append(pcm)
            return
        if self._next_seq is None:
            self._next_seq = seq
        if seq < self._next_seq:
            self.stats.late += 1
            return
        if seq in self._waiting:
            self.stats.duplicates += 1
            return
        if seq == self._next_seq:
            self._append(pcm)
            self._next_seq = seq + 1
            self._drain_waiting()
            return
        self._waiting[seq] = (pcm, self._ticks)
        self._waiting_bytes += len(pcm)
        self._resolve_gaps()

    def _append(self, pcm: bytes) -> None:
        self._last_chunk_bytes = len(pcm) or self._last_chunk_bytes
        fb = self.frame_bytes
        partial = self._partial
        partial += pcm
        whole = len(partial) - len(partial) % fb
        if whole:
            ready = self._ready
            ready.extend(bytes(partial[i : i + fb]) for i in range(0, whole, fb))
            del partial[:whole]
            self._repeats = 0
            excess = len(ready) + self._waiting_bytes // fb - self._max_frames
            for _ in range(min(excess, len(ready))):
                ready.popleft()
                self.stats.overflow_frames += 1

    def _drain_waiting(self) -> None:
        waiting = self._waiting
        while self._next_seq in waiting:
            pcm, _ = waiting.pop(self._next_seq)
            self._waiting_bytes -= len(pcm)
            self._append(pcm)
            self._next_seq += 1

    def _resolve_gaps(self) -> None:
        """Declare missing chunks lost while a later one has waited too long or the window is
        full, concealing their time."""
        waiting = self._waiting
        while waiting and self._next_seq is not None:
            oldest_tick = min(tick for _, tick in waiting.values())
            too_long = self._ticks - oldest_tick >= self._reorder_ticks
            too_much = len(self._ready) + self._waiting_bytes // self.frame_bytes > self._max_frames
            if not (too_long or too_much):
                return
            first = min(waiting)
            missing = first - self._next_seq
            self.stats.lost += missing
            self._conceal(missing * self._last_chunk_bytes)
            self._next_seq = first
            self._drain_waiting()

    def _conceal(self, nbytes: int) -> None:
        """Fill ``nbytes`` (rounded to whole frames) with a fading repeat, then silence."""
        frames = max(1, round(nbytes / self.frame_bytes))
        frames = min(frames, self._max_frames)
        if self._partial:  # finish the frame in progress with silence first
            self._partial += bytes(self.frame_bytes - len(self._partial))
            self._ready.append(bytes(self._partial))
            self._partial.clear()
        last = np.frombuffer(self._last_frame, dtype="<i2")
        for _ in range(frames):
            self._repeats += 1
            if self._repeats <= _CONCEALED_REPEATS:
                gain = 0.5**self._repeats
                frame = (last * gain).astype("<i2").tobytes()
            else:
                frame = bytes(self.frame_bytes)
            self._ready.append(frame)
        self.stats.concealed_frames += frames
        while len(self._ready) > self._max_frames:
            self._ready.popleft()
            self.stats.overflow_frames += 1

    # --------------------------------------------------------------------------------- output

    def pop(self) -> list[bytes]:
        """The frames for this tick: none while priming, one normally, two to catch up."""
        self._ticks += 1
        if self._waiting:
            self._resolve_gaps()
        ready = self._ready
        if not self._primed:
            if len(ready) < max(1, self._target):
                return []
            self._primed = True
        if not ready:
            self.stats.underruns += 1
            self._primed = False
            return []
        count = 1
        if len(ready) > self._target + self._catchup:
            count = 2
            self.stats.catchup_frames += 1
        out = [ready.popleft() for _ in range(min(count, len(ready)))]
        self._last_frame = out[-1]
        return out

    def flush(self) -> list[bytes]:
        """Everything buffered, in order (the tail padded to a frame), e.g. at the stream's
        end."""
        if self._waiting:
            self._ticks += self._reorder_ticks
            self._resolve_gaps()
        if self._partial:
            self._partial += bytes(self.frame_bytes - len(self._partial))
            self._ready.append(bytes(self._partial))
            self._partial.clear()
        out = list(self._ready)
        self._ready.clear()
        return out

    # ---------------------------------------------------------------------------------- state

    @property
    def buffered_ms(self) -> int:
        """Audio waiting, in milliseconds (in-order frames and reorder waiters)."""
        nbytes = len(self._ready) * self.frame_bytes + len(self._partial) + self._waiting_bytes
        return nbytes * 1000 // (2 * self.sample_rate)
