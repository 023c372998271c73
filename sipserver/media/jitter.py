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

:class:`RtpJitterBuffer` is the RTP counterpart for the native SIP media engine: packets keyed
by (extended) RTP sequence number, a playout delay that adapts to the measured RFC 3550
interarrival jitter (grows at once, shrinks slowly, bounded by :class:`JitterSettings`), and
the payloads handed out still encoded (the stream decodes them in order: G.722 has state).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import numpy as np

from sipserver.media.frames import FRAME_MS, frame_bytes

__all__ = [
    "FRAME_MS",
    "Gap",
    "JitterBuffer",
    "JitterSettings",
    "JitterStats",
    "RtpJitterBuffer",
]


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


# ------------------------------------------------------------------------------------ RTP


@dataclass(frozen=True, slots=True)
class JitterSettings:
    """Bounds of the adaptive RTP jitter buffer (:class:`RtpJitterBuffer`).

    The playout delay (the target) starts at ``initial_ms``, grows at once to
    ``jitter_factor`` x the RFC 3550 interarrival jitter (plus one packet) when that is more,
    shrinks by one packet at most every ``shrink_interval_ms`` when the jitter has calmed down,
    and stays within ``min_ms`` .. ``max_ms``. At most ``capacity_ms`` is ever held.
    """

    initial_ms: int = 60
    """Playout delay before any jitter is measured."""
    min_ms: int = 40
    """Smallest playout delay."""
    max_ms: int = 300
    """Largest playout delay."""
    capacity_ms: int = 1000
    """Most audio held (beyond it the oldest packets are dropped, counted as overflow)."""
    jitter_factor: float = 3.0
    """Target = this x the measured jitter + one packet (the delay spread of a jittery path is
    about three times RFC 3550's smoothed mean deviation)."""
    shrink_interval_ms: int = 2000
    """Time between two one-packet reductions of the target."""

    def __post_init__(self) -> None:
        if not 0 < self.min_ms <= self.initial_ms <= self.max_ms < self.capacity_ms:
            raise ValueError(
                "jitter settings need 0 < min_ms <= initial_ms <= max_ms < capacity_ms"
            )


class Gap(enum.Enum):
    """What :meth:`RtpJitterBuffer.pop` returns instead of a payload."""

    WAIT = "wait"
    """Nothing is due yet (priming, or the buffer ran dry): play concealment or silence."""
    LOST = "lost"
    """The packet due now never arrived: conceal one packet's time."""


# RFC 3550 Appendix A.1: a sequence number this far from the expected one restarts the stream.
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100


class RtpJitterBuffer:
    """Adaptive playout buffer for one RTP stream, keyed by RTP sequence number.

    Packets go in as they arrive (:meth:`push`, any order, duplicates and late ones counted and
    dropped); :meth:`pop` hands out the payloads in sequence order, :data:`Gap.LOST` for a
    packet due while later ones are already here, :data:`Gap.WAIT` while priming or dry. The
    caller decodes and pops until it has a frame, and calls :meth:`tick` once per 20 ms frame.

    Sequence numbers are extended over wrap-around (RFC 3550 A.1); the interarrival jitter is
    RFC 3550 A.8's estimator. Pure: arrival times are passed in, no clock is read.

    Args:
        clock_rate: the RTP clock of the payload (8000 for G.711 and G.722).
        settings: delay bounds.
    """

    def __init__(self, clock_rate: int, settings: JitterSettings | None = None) -> None:
        self.settings = settings or JitterSettings()
        self.clock_rate = clock_rate
        self.stats = JitterStats()
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None  # extended seq due next
        self._max: int | None = None  # highest extended seq received
        self._first: int | None = None
        self._base = 0
        self._lost_recently: set[int] = set()
        self._primed = False
        self._packet_ts = clock_rate * FRAME_MS // 1000  # RTP units per packet (from deltas)
        self._last_ts: tuple[int, int] | None = None  # (ext seq, timestamp) of the last audio
        self._transit: float | None = None
        self._jitter = 0.0  # RFC 3550 A.8, in RTP units
        self._target_ms = self.settings.initial_ms
        self._calm_ticks = 0
        self._excess_ticks = 0
        self.received_unique = 0
        """Packets received and kept (for RTCP's cumulative loss, RFC 3550 A.3)."""

    # ---------------------------------------------------------------------------------- input

    def push(self, seq: int, timestamp: int, payload: bytes, arrival: float) -> None:
        """Add a packet.

        Args:
            seq: its 16-bit RTP sequence number.
            timestamp: its RTP timestamp.
            payload: the payload to hand out (``b""`` for a slot without audio, e.g. an
                RFC 4733 event packet, which also takes no part in the jitter estimate).
            arrival: when it arrived, in seconds (any monotonic origin).
        """
        stats = self.stats
        stats.received += 1
        top = self._max
        if top is None:
            ext = self._start(seq)
        else:
            delta = (seq - top) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            if delta > _MAX_DROPOUT or delta < -_MAX_MISORDER:
                ext = self._start(seq)  # the sender restarted (RFC 3550 A.1)
            else:
                ext = top + delta
                if delta > 0:
                    self._max = ext
        nxt = self._next
        assert nxt is not None
        if ext < nxt:
            if ext in self._lost_recently:
                self._lost_recently.discard(ext)
                stats.late += 1
            else:
                stats.duplicates += 1
            return
        packets = self._packets
        if ext in packets:
            stats.duplicates += 1
            return
        packets[ext] = payload
        self.received_unique += 1
        if payload:
            self._measure(ext, timestamp, arrival)
        assert self._max is not None
        capacity = self.settings.capacity_ms * self.clock_rate // 1000 // self._packet_ts
        while self._max - nxt >= capacity:  # too far ahead: drop the oldest slot
            if packets.pop(nxt, None) is not None:
                stats.overflow_frames += 1
            nxt += 1
        self._next = nxt

    def _start(self, seq: int) -> int:
        base = 0x10000 if self._max is None else (self._max & ~0xFFFF) + 0x20000
        ext = base + seq
        self._packets.clear()
        self._lost_recently.clear()
        self._next = self._max = self._first = ext
        self._base = base
        self._primed = False
        self._last_ts = None
        self._transit = None
        self.received_unique = 0
        return ext

    def _measure(self, ext: int, timestamp: int, arrival: float) -> None:
        """RFC 3550 A.8 interarrival jitter; the packet duration from consecutive packets."""
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate:  # a timestamp jump (new talk spurt source) is not jitter
                self._jitter += (d - self._jitter) / 16
        self._transit = transit
        last = self._last_ts
        if last is not None and ext == last[0] + 1:
            step = (timestamp - last[1]) & 0xFFFFFFFF
            if 0 < step <= self.clock_rate // 5:
                self._packet_ts = step
        self._last_ts = (ext, timestamp)
        wanted = self._wanted_ms()
        if wanted > self._target_ms:  # grow at once
            self._target_ms = wanted
            self._calm_ticks = 0

    def _wanted_ms(self) -> int:
        settings = self.settings
        packet_ms = self.packet_ms
        ms = self.settings.jitter_factor * self.jitter_ms + packet_ms
        frames = -(-int(ms) // packet_ms)  # whole packets, rounded up
        return max(settings.min_ms, min(settings.max_ms, frames * packet_ms))

    # --------------------------------------------------------------------------------- output

    def pop(self) -> bytes | Gap:
        """The next payload in sequence, or what to do instead (:class:`Gap`)."""
        packets = self._packets
        nxt = self._next
        if nxt is None:
            return Gap.WAIT
        if not self._primed:
            assert self._max is not None
            if not packets or (self._max - nxt + 1) * self.packet_ms < self._target_ms:
                return Gap.WAIT
            self._primed = True
        payload = packets.pop(nxt, None)
        if payload is not None:
            self._next = nxt + 1
            return payload
        if packets:  # later packets are here: this one is due and missing
            self._next = nxt + 1
            self.stats.lost += 1
            lost = self._lost_recently
            if len(lost) > 256:
                lost.clear()
            lost.add(nxt)
            return Gap.LOST
        self._primed = False  # dry: wait (the delay grows by what comes late)
        self.stats.underruns += 1
        return Gap.WAIT

    def tick(self) -> None:
        """Once per 20 ms frame: shrink the target slowly, shed an excess delay slowly."""
        if self._next is None:
            return
        packet_ms = self.packet_ms
        if self._wanted_ms() < self._target_ms:
            self._calm_ticks += 1
            if self._calm_ticks * FRAME_MS >= self.settings.shrink_interval_ms:
                self._target_ms -= packet_ms
                self._calm_ticks = 0
        else:
            self._calm_ticks = 0
        if not self._primed or self._max is None:
            return
        depth_ms = (self._max - self._next + 1) * packet_ms
        if depth_ms > self._target_ms + 2 * packet_ms:
            self._excess_ticks += 1
            if self._excess_ticks * FRAME_MS >= 500:  # half a second too deep: drop one
                self._excess_ticks = 0
                self._packets.pop(self._next, None)
                self._next += 1
                self.stats.catchup_frames += 1
        else:
            self._excess_ticks = 0

    # ---------------------------------------------------------------------------------- state

    @property
    def jitter_ms(self) -> float:
        """RFC 3550 interarrival jitter in milliseconds."""
        return self._jitter * 1000 / self.clock_rate

    @property
    def jitter_units(self) -> int:
        """RFC 3550 interarrival jitter in RTP timestamp units (for RTCP reports)."""
        return int(self._jitter)

    @property
    def packet_ms(self) -> int:
        """Duration of one packet in ms (from the timestamps; 20 until measured)."""
        return max(1, self._packet_ts * 1000 // self.clock_rate)

    @property
    def target_ms(self) -> int:
        """The current playout delay target."""
        return self._target_ms

    @property
    def buffered_ms(self) -> int:
        """Audio waiting (including holes) in ms."""
        if self._max is None or self._next is None:
            return 0
        return max(0, self._max - self._next + 1) * self.packet_ms

    @property
    def highest_seq(self) -> int:
        """Extended highest sequence number received (RFC 3550 A.3), 0 before any."""
        return 0 if self._max is None else self._max - self._base

    @property
    def expected(self) -> int:
        """Packets expected since the (re)start: highest - first + 1 (RFC 3550 A.3)."""
        if self._max is None or self._first is None:
            return 0
        return self._max - self._first + 1
