"""Frame link between a media worker and the session process (wire spec: docs/framelink.md).

Two layers, like h11 and aioquic:

* A sans-I/O codec in :mod:`sipserver.rtp.framelink_codec`: :func:`encode` turns a record into
  bytes, :class:`RecordDecoder` turns a byte stream back into records. Its names are re-exported
  here, so ``from sipserver.rtp.framelink import Audio, encode`` keeps working.
* :class:`FrameLink` (this module), a thin asyncio adapter over one connected ``(reader, writer)``
  pair, with a bounded send queue that never blocks the caller: control records are always
  queued, and when audio piles up (a slow or stuck peer) the *oldest* queued audio frames are
  dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from sipserver.rtp.framelink_codec import (
    DTMF_DIGITS,
    MAX_RECORD_LENGTH,
    RELAY_CALL_BASE,
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Configuration,
    Dtmf,
    Event,
    FrameLinkError,
    Hello,
    LinkRecord,
    Ping,
    Pong,
    RecordDecoder,
    RecordType,
    RelayedCallStarted,
    Stats,
    audio_record_head,
    encode,
    encode_audio_frame,
)
from sipserver.tasks import cancel_and_wait

__all__ = [
    "DTMF_DIGITS",
    "MAX_RECORD_LENGTH",
    "RELAY_CALL_BASE",
    "Audio",
    "AudioFrame",
    "CallEnded",
    "CallStarted",
    "Configuration",
    "Dtmf",
    "Event",
    "FrameLink",
    "FrameLinkError",
    "Hello",
    "LinkRecord",
    "Ping",
    "Pong",
    "RecordDecoder",
    "RecordType",
    "RelayedCallStarted",
    "Stats",
    "audio_record_head",
    "encode",
    "encode_audio_frame",
    "open_link",
    "serve_links",
]


class _AudioEntry:
    """Encoded frames of one AUDIO record waiting in the send queue; the oldest may be dropped."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[bytes]) -> None:
        self.frames: deque[bytes] = deque(frames)


_Entry = _AudioEntry | bytes  # bytes: an encoded control record

#: Bytes the writer gathers into one ``write`` at most (more waits for the next round).
_BATCH_BYTES = 256 * 1024
_READ_SIZE = 256 * 1024
_SEQ_MOD = 1 << 32


class FrameLink:
    """One end of a frame link over a connected asyncio stream pair.

    :meth:`send` never blocks and never awaits: it appends to a queue that a single writer task
    drains (``write`` + ``await drain()``, several queued records per write), so a slow peer
    applies back-pressure to the queue, not to callers. Control records are always queued; when
    more than ``max_queued_frames`` audio frames wait, the oldest are dropped and counted in
    :attr:`dropped_frames`. :meth:`records` yields what the peer sends and counts ``seq`` gaps of
    each call in :attr:`lost_frames`. A :class:`Ping` from the peer is answered with a
    :class:`Pong` by the link itself (and still yielded).

    Not thread-safe: call :meth:`send` from the event loop thread only. A media thread (e.g.
    pjsua2's clock thread) hops with ``loop.call_soon_threadsafe(link.send, record)``.

    Args:
        reader: stream of the peer's records.
        writer: stream to the peer.
        max_queued_frames: audio frames the send queue holds before dropping the oldest.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_queued_frames: int = 500,
    ) -> None:
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1")
        self._reader = reader
        self._writer = writer
        self._max_frames = max_queued_frames
        self._queue: deque[_Entry] = deque()
        self._audio: deque[_AudioEntry] = deque()  # the audio entries of _queue, same order
        self._queued_frames = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._last_seq: dict[int, int] = {}
        self.dropped_frames = 0
        """Audio frames this end dropped from its send queue (oldest first)."""
        self.lost_frames = 0
        """Gaps in received ``seq`` numbers, summed over calls."""
        self.sent_records = 0
        """Records written to the socket."""
        self.received_records = 0
        """Records decoded from the socket."""
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the writer stopped (peer gone)."""
        return self._closing or self._writer_task.done()

    @property
    def queued_frames(self) -> int:
        """Audio frames waiting in the send queue."""
        return self._queued_frames

    @property
    def queued_records(self) -> int:
        """Entries waiting in the send queue (control records and audio records)."""
        return len(self._queue)

    def send(self, record: LinkRecord) -> None:
        """Queue a record for the peer; never blocks.

        On a closed link the record is discarded (the end of :meth:`records` tells the owner).

        Args:
            record: the record to send. An :class:`Audio` record's frames may be dropped later,
                oldest first, if the queue overflows; other records are always sent.
        """
        if self.closed:
            return
        if isinstance(record, Audio):
            if not record.frames:
                return
            # Encoded now, so a bad field raises here, in the caller, not in the writer task.
            chunks = [encode_audio_frame(f) for f in record.frames]
            audio_record_head(len(chunks), sum(map(len, chunks)))  # size and count limits
            entry = _AudioEntry(chunks)
            self._queue.append(entry)
            self._audio.append(entry)
            self._queued_frames += len(chunks)
            if self._queued_frames > self._max_frames:
                self._drop_oldest(self._queued_frames - self._max_frames)
        else:
            self._queue.append(encode(record))
        self._wakeup.set()

    def _drop_oldest(self, count: int) -> None:
        self._queued_frames -= count
        self.dropped_frames += count
        audio = self._audio
        while count:
            frames = audio[0].frames
            if len(frames) <= count:
                count -= len(frames)
                frames.clear()  # the writer skips the empty entry
                audio.popleft()
            else:
                for _ in range(count):
                    frames.popleft()
                count = 0

    def _take_batch(self) -> bytes:
        queue = self._queue
        parts: list[bytes] = []
        size = 0
        while queue and size < _BATCH_BYTES:
            entry = queue.popleft()
            if isinstance(entry, bytes):
                parts.append(entry)
                size += len(entry)
                self.sent_records += 1
                continue
            frames = entry.frames
            if not frames:  # every frame was dropped
                continue
            self._audio.popleft()  # entry is necessarily the first audio entry
            self._queued_frames -= len(frames)
            frames_length = sum(map(len, frames))
            parts.append(audio_record_head(len(frames), frames_length))
            parts.extend(frames)
            size += frames_length + 7
            self.sent_records += 1
        return b"".join(parts)

    async def _write_loop(self) -> None:
        writer = self._writer
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                data = self._take_batch()
                if data:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            return  # the peer is gone; records() ends with EOF on the read side

    async def records(self) -> AsyncGenerator[LinkRecord, None]:
        """Yield the peer's records until EOF (or until this end is closed).

        Yields:
            Each decoded record, in order.

        Raises:
            FrameLinkError: the peer broke the protocol; the link is closed before raising.
        """
        decoder = RecordDecoder()
        last_seq = self._last_seq
        while True:
            try:
                data = await self._reader.read(_READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                return
            try:
                batch = decoder.feed(data)
            except FrameLinkError:
                await self.close(flush_timeout=0)
                raise
            self.received_records += len(batch)
            for record in batch:
                if isinstance(record, Audio):
                    for frame in record.frames:
                        prev = last_seq.get(frame.call)
                        if prev is not None:
                            gap = (frame.seq - prev - 1) % _SEQ_MOD
                            if gap < _SEQ_MOD // 2:  # a step back (restart) is not a loss
                                self.lost_frames += gap
                        last_seq[frame.call] = frame.seq
                elif isinstance(record, CallEnded):
                    last_seq.pop(record.call, None)
                elif isinstance(record, Ping):
                    self.send(Pong(record.nonce))
                yield record

    async def close(self, *, flush_timeout: float = 1.0) -> None:
        """Flush what is queued (waiting at most ``flush_timeout`` seconds) and close.

        Idempotent. Ends :meth:`records` on this end and, through EOF, on the peer's.

        Args:
            flush_timeout: seconds to wait for the queue to drain before discarding it.
        """
        self._closing = True
        self._wakeup.set()
        flushed = True
        if not self._writer_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer_task), flush_timeout)
            if not self._writer_task.done():
                flushed = False
                await cancel_and_wait(self._writer_task)
        self._queue.clear()
        self._audio.clear()
        self._queued_frames = 0
        transport = self._writer.transport
        if not flushed:
            transport.abort()  # the peer stopped reading: a graceful close would wait forever
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), max(flush_timeout, 0.1))
        except TimeoutError:
            transport.abort()  # bytes still in the transport buffer and the peer is stuck
        except (ConnectionError, OSError):
            pass


async def open_link(path: str, *, max_queued_frames: int = 500) -> FrameLink:
    """Connect to the main process's frame link socket (worker side).

    Args:
        path: path of the unix socket (``<data_dir>/run/framelink.sock``).
        max_queued_frames: see :class:`FrameLink`.

    Returns:
        The connected link; send :class:`Hello` first.
    """
    reader, writer = await asyncio.open_unix_connection(path)
    return FrameLink(reader, writer, max_queued_frames=max_queued_frames)


async def serve_links(
    path: str,
    on_link: Callable[[FrameLink], Awaitable[None]],
    *,
    max_queued_frames: int = 500,
) -> asyncio.AbstractServer:
    """Listen for workers on a unix socket (main side).

    Creates the parent directories (mode 0o700), removes a stale socket file left by a previous
    run, and restricts the socket to its owner (mode 0o600). Each connection becomes a
    :class:`FrameLink` handed to ``on_link``; the link is closed when ``on_link`` returns.

    Args:
        path: path of the unix socket.
        on_link: coroutine run once per connected worker.
        max_queued_frames: see :class:`FrameLink`.

    Returns:
        The listening server (close it with ``server.close()`` + ``await server.wait_closed()``).

    Raises:
        FileExistsError: ``path`` exists and is not a socket.
    """
    sock_path = Path(path)
    sock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(sock_path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        sock_path.unlink()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FrameLink(reader, writer, max_queued_frames=max_queued_frames)
        try:
            await on_link(link)
        finally:
            await link.close()

    server = await asyncio.start_unix_server(handle, path)
    os.chmod(path, 0o600)
    return server
