"""AudioMediaPort <-> asyncio: per-call frames cross threads through bounded queues.

pjsua2 calls :meth:`CallAudioPort.onFrameReceived` and :meth:`CallAudioPort.onFrameRequested`
from its media clock thread (pjlib creates it; the SWIG director takes the GIL itself), once per
20 ms tick and call. Neither callback may block or do real work there: a slow callback delays the
frames of every call of the process.

- Inbound (caller -> session): the frame is copied (``bytes(frame.buf)``) and handed to the asyncio
  loop with ``loop.call_soon_threadsafe``; the loop thread batches it onto the frame link.
- Outbound (session -> caller): the loop thread pushes frames into :class:`OutboundFrames`, a
  bounded deque; the media clock thread pops one per tick without waiting. An empty queue plays
  silence (counted as underflow); a full queue drops its oldest frame (counted as overflow).

Each counter has a single writer thread, so plain integer updates under the GIL are enough.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass

import pjsua2 as pj  # type: ignore[import-untyped]

from sipserver.media.frames import FRAME_MS, frame_bytes

__all__ = [
    "BridgeCounters",
    "CallAudioPort",
    "OutboundFrames",
    "PortBinding",
    "PortPool",
    "frame_bytes",
    "media_format",
]

DEFAULT_OUTBOUND_FRAMES = 50
"""Outbound queue bound: one second of audio at 20 ms per frame."""


def media_format(sample_rate: int) -> pj.MediaFormatAudio:
    """The PCM format of a call port: mono, 16-bit, 20 ms frames at ``sample_rate``."""
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, sample_rate, 1, FRAME_MS * 1000, 16)
    return fmt


@dataclass(slots=True)
class BridgeCounters:
    """Per-call frame counters; each field is written by one thread only."""

    rx_frames: int = 0
    """Frames received from the caller (media clock thread)."""
    rx_dropped: int = 0
    """Inbound frames that could not be handed to the loop (loop closed)."""
    tx_frames: int = 0
    """Frames of session audio played to the caller (media clock thread)."""
    tx_underflow: int = 0
    """Ticks with no session audio queued: silence was played (media clock thread)."""
    tx_overflow: int = 0
    """Session frames dropped because the outbound queue was full (loop thread)."""


class OutboundFrames:
    """Bounded frame queue from the loop thread (push) to the media clock thread (pop).

    ``collections.deque`` append/popleft are atomic under the GIL, so neither side locks or waits.
    """

    def __init__(
        self,
        frame_size: int,
        counters: BridgeCounters,
        maxlen: int = DEFAULT_OUTBOUND_FRAMES,
    ) -> None:
        """Create an empty queue.

        Args:
            frame_size: bytes per frame; shorter frames are padded with silence, longer truncated.
            counters: the call's counters (tx_overflow written here, underflow/frames in pop).
            maxlen: frames held at most; pushing onto a full queue drops the oldest.
        """
        self._frames: collections.deque[bytes] = collections.deque(maxlen=maxlen)
        self._maxlen = maxlen
        self._size = frame_size
        self._silence = bytes(frame_size)
        self._counters = counters

    def push(self, pcm: bytes) -> None:
        """Queue one frame for the caller (loop thread)."""
        if len(pcm) != self._size:
            pcm = pcm[: self._size].ljust(self._size, b"\x00")
        if len(self._frames) >= self._maxlen:
            self._counters.tx_overflow += 1
        self._frames.append(pcm)

    def clear(self) -> None:
        """Drop every queued frame (barge-in)."""
        self._frames.clear()

    def pop(self) -> bytes:
        """Next frame for the caller, or silence (media clock thread; never blocks)."""
        try:
            pcm = self._frames.popleft()
        except IndexError:
            self._counters.tx_underflow += 1
            return self._silence
        self._counters.tx_frames += 1
        return pcm

    def __len__(self) -> int:
        return len(self._frames)


@dataclass(frozen=True, slots=True)
class PortBinding:
    """The call a pooled port currently serves."""

    call: int
    """Worker-local call number passed to ``deliver``."""
    outbound: OutboundFrames
    """The queue ``onFrameRequested`` pops."""
    counters: BridgeCounters
    """The call's counters."""


class CallAudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    """A conference port that serves one call at a time: caller frames out, session frames in.

    Ports are pooled (:class:`PortPool`) and never destroyed while the library runs: pjsua's
    conference bridge (PJSIP >= 2.14) removes ports asynchronously, on its next clock tick, so a
    port destroyed right after its call ended can still get a frame callback, on a freed Python
    object (measured: AttributeError in the callback, then "Immortal interned string died" and
    an abort, within ~100 short calls). A port is bound to a call with :meth:`bind` (the media
    clock thread reads the binding once per callback, an atomic attribute read) and unbound
    when the call ends, after which its callbacks do nothing.
    """

    def __init__(
        self,
        name: str,
        sample_rate: int,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[int, bytes], None],
    ) -> None:
        """Create and register the port with pjsua's conference bridge (pjsua thread).

        Args:
            name: port name in pjsua's logs.
            sample_rate: PCM rate of the frames (mono, 16-bit, 20 ms).
            loop: the asyncio loop that receives the caller's frames.
            deliver: ``deliver(call, pcm)`` runs in the loop thread for every received frame.
        """
        super().__init__()
        self.binding: PortBinding | None = None
        self._loop = loop
        self._deliver = deliver
        self._silence = bytes(frame_bytes(sample_rate))
        self.createPort(name, media_format(sample_rate))

    def bind(self, binding: PortBinding) -> None:
        """Serve ``binding``'s call from the next frame on."""
        self.binding = binding

    def unbind(self) -> None:
        """Stop serving the call: callbacks deliver nothing and play silence."""
        self.binding = None

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        """Media clock thread: copy the caller's frame and hand it to the loop."""
        binding = self.binding
        if binding is None or frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
            return
        pcm = bytes(frame.buf)
        binding.counters.rx_frames += 1
        try:
            self._loop.call_soon_threadsafe(self._deliver, binding.call, pcm)
        except RuntimeError:  # the loop is closed: the worker is shutting down
            binding.counters.rx_dropped += 1

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        """Media clock thread: give pjsua2 the next session frame (silence when none)."""
        binding = self.binding
        pcm = binding.outbound.pop() if binding is not None else self._silence
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(pcm)
        frame.size = len(pcm)


class PortPool:
    """Conference ports reused across calls (pjsua thread only); see :class:`CallAudioPort`."""

    COOL_DOWN = 0.2
    """Seconds a released port rests before serving another call (the bridge's queued
    disconnections of the ended call are applied within a tick or two)."""

    def __init__(
        self,
        sample_rate: int,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[int, bytes], None],
    ) -> None:
        self._sample_rate = sample_rate
        self._loop = loop
        self._deliver = deliver
        self._free: collections.deque[tuple[float, CallAudioPort]] = collections.deque()
        self._all: list[CallAudioPort] = []

    def acquire(self, binding: PortBinding, *, now: float) -> CallAudioPort:
        """A port bound to ``binding``: a rested free one, else a new one."""
        if self._free and self._free[0][0] + self.COOL_DOWN <= now:
            port = self._free.popleft()[1]
        else:
            port = CallAudioPort(
                f"call-port{len(self._all)}", self._sample_rate, self._loop, self._deliver
            )
            self._all.append(port)
        port.bind(binding)
        return port

    def release(self, port: CallAudioPort, *, now: float) -> None:
        """Unbind ``port`` (its call ended) and keep it for a later call."""
        port.unbind()
        self._free.append((now, port))

    @property
    def size(self) -> int:
        """Ports created so far."""
        return len(self._all)

    def clear(self) -> None:
        """Drop every port (at shutdown, when no call uses them; before libDestroy)."""
        for port in self._all:
            port.unbind()
        self._free.clear()
        self._all.clear()
