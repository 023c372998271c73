"""Frame link between a media worker and the session process (wire spec: docs/framelink.md).

Two layers, like h11 and aioquic:

* A sans-I/O codec: :func:`encode` turns a record into bytes, :class:`RecordDecoder` turns a byte
  stream (split anywhere, many records per read) back into records. No sockets, no clock.
* :class:`FrameLink`, a thin asyncio adapter over one connected ``(reader, writer)`` pair, with a
  bounded send queue that never blocks the caller: control records are always queued, and when
  audio piles up (a slow or stuck peer) the *oldest* queued audio frames are dropped and counted.

Every record is ``u32 length | u8 type | payload`` (little-endian; ``length`` counts the type byte
and the payload). Records are frozen, slotted dataclasses; :data:`LinkRecord` is their union.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import stat
import struct
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sipserver.tasks import cancel_and_wait

__all__ = [
    "DTMF_DIGITS",
    "MAX_RECORD_LENGTH",
    "Audio",
    "AudioFrame",
    "CallEnded",
    "CallStarted",
    "Configuration",
    "Dtmf",
    "FrameLink",
    "FrameLinkError",
    "Hello",
    "LinkRecord",
    "Ping",
    "Pong",
    "RecordDecoder",
    "RecordType",
    "Stats",
    "encode",
    "open_link",
    "serve_links",
]

#: Largest accepted ``length`` field (type byte + payload): 1 MiB. A longer record is an error.
MAX_RECORD_LENGTH = 1 << 20

#: DTMF digits a DTMF record may carry (RFC 4733 events 0-15 as ASCII).
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class FrameLinkError(ValueError):
    """The peer broke the wire protocol; the link must be closed."""


class RecordType(enum.IntEnum):
    """Wire code of each record type (the ``u8 type`` byte)."""

    HELLO = 1
    CALL_STARTED = 2
    CALL_ENDED = 3
    AUDIO = 4
    DTMF = 5
    STATS = 6
    PING = 7
    PONG = 8
    CONFIG = 9


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First record a worker sends after connecting (worker -> main)."""

    worker_id: str
    """Stable name of the worker within the main process (e.g. ``"pjsua2-0"``)."""
    pid: int
    """Process id of the worker."""
    kind: str
    """Worker implementation: ``"pjsua2"`` or ``"native"``."""
    sip_host: str
    """Loopback address the worker's SIP user agent listens on."""
    sip_port: int
    """Port the worker's SIP user agent listens on."""
    capacity: int
    """Calls the worker can hold at once (read from the worker, never hard-coded)."""
    sample_rate: int
    """Sample rate of every PCM frame on this link, in Hz."""
    frame_ms: int = 20
    """Duration of one frame in milliseconds."""


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call was answered by the worker (worker -> main)."""

    call: int
    """Worker-local call number (u32, never reused while the worker lives)."""
    sip_call_id: str
    """Call-ID of the dialog between the edge and the worker."""
    from_uri: str
    """From header value (JSON key ``"from"``)."""
    to_uri: str
    """To header value (JSON key ``"to"``)."""
    request_uri: str
    """Request-URI of the INVITE."""
    codec: str
    """Negotiated codec, e.g. ``"PCMU/8000"``."""
    remote_rtp: str
    """Caller's RTP address as ``host:port``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Selected INVITE headers (e.g. ``X-*``) the session may use."""
    hosted: bool = False
    """True: the worker runs the call's session itself (a call worker); main only keeps the
    bookkeeping and builds no session. False: main's session host runs it from the AUDIO the
    worker sends (pjsua2 workers; AI Listens calls of a call worker)."""


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A call ended (worker -> main), or the session asks to hang up (main -> worker)."""

    call: int
    """Worker-local call number."""
    reason: str
    """Why, in a few words (``"bye"``, ``"cancel"``, ``"rtp-timeout"``, ``"session"``...)."""
    status: int = 0
    """SIP status that ended the call when there is one (e.g. 487), else 0."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One 20 ms frame of s16le PCM of one call."""

    call: int
    """Worker-local call number (u32)."""
    seq: int
    """Per call and direction, increases by one per frame (u32, wraps)."""
    timestamp: int
    """Position of the first sample, in samples at the link's sample rate (u32, wraps)."""
    pcm: bytes
    """Signed 16-bit little-endian mono samples (even length, at most 65534 bytes)."""


@dataclass(frozen=True, slots=True)
class Audio:
    """Frames of one or more calls, typically every call of a worker for one 20 ms tick."""

    frames: tuple[AudioFrame, ...]
    """The frames, in order (at most 65535)."""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A DTMF digit received from the caller (worker -> main)."""

    call: int
    """Worker-local call number."""
    digit: str
    """One of ``0-9 * # A-D``."""
    duration_ms: int
    """Duration of the key press (0 when unknown)."""
    method: Literal["rfc4733", "info"]
    """How it arrived: RTP telephone-event (RFC 4733) or SIP INFO."""


@dataclass(frozen=True, slots=True)
class Stats:
    """Worker counters (worker -> main), e.g. ``calls``, ``capacity``, ``rx_overflow``."""

    counters: Mapping[str, int]
    """Counter name -> value."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe (both directions); :class:`FrameLink` answers it with :class:`Pong`."""

    nonce: int
    """u64 echoed back in the :class:`Pong`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a :class:`Ping`."""

    nonce: int
    """The nonce of the :class:`Ping` answered."""


@dataclass(frozen=True, slots=True)
class Configuration:
    """The server's configuration (main -> call worker): after HELLO and after every reload
    that applied."""

    sequence: int
    """Increases by one per configuration sent on this link (the worker reports the one in use
    in STATS ``config``)."""
    config: Mapping[str, Any]
    """``Config.model_dump(mode="json")``: validating it again gives the same configuration,
    secrets included (the link is a private unix socket, mode 0600)."""
    config_path: str | None = None
    """The file it came from (None: the embedded default): relative knowledge-base globs and
    sound paths are taken from its directory."""


LinkRecord = Hello | CallStarted | CallEnded | Audio | Dtmf | Stats | Ping | Pong | Configuration
"""Any record of the frame link."""

# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------

_HEAD = struct.Struct("<IB")  # length, type
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FRAME = struct.Struct("<IIIH")  # call, seq, timestamp, nbytes
_DTMF = struct.Struct("<IBHB")  # call, digit, duration_ms, method
_METHOD_CODE: dict[str, int] = {"rfc4733": 1, "info": 2}
_METHOD_NAME: dict[int, Literal["rfc4733", "info"]] = {1: "rfc4733", 2: "info"}
_TYPES = frozenset(int(t) for t in RecordType)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _head(rtype: RecordType, payload_length: int) -> bytes:
    length = payload_length + 1
    if length > MAX_RECORD_LENGTH:
        raise ValueError(f"{rtype.name} record of {length} bytes exceeds {MAX_RECORD_LENGTH}")
    return _HEAD.pack(length, rtype)


def _encode_audio(record: Audio) -> bytes:
    frames = record.frames
    if len(frames) > 0xFFFF:
        raise ValueError(f"AUDIO record with {len(frames)} frames (at most 65535)")
    parts: list[bytes] = [b"", _U16.pack(len(frames))]
    size = 2
    pack = _FRAME.pack
    try:
        for f in frames:
            n = len(f.pcm)
            if n & 1:
                raise ValueError(f"odd PCM length {n} in frame of call {f.call}")
            parts.append(pack(f.call, f.seq, f.timestamp, n))
            parts.append(f.pcm)
            size += 14 + n
    except struct.error as exc:
        raise ValueError(f"AUDIO frame field out of range: {exc}") from None
    parts[0] = _head(RecordType.AUDIO, size)
    return b"".join(parts)


def _encode_frame(f: AudioFrame) -> bytes:
    """One frame of an AUDIO payload: ``call, seq, timestamp, nbytes, pcm``."""
    n = len(f.pcm)
    if n & 1:
        raise ValueError(f"odd PCM length {n} in frame of call {f.call}")
    try:
        return _FRAME.pack(f.call, f.seq, f.timestamp, n) + f.pcm
    except struct.error as exc:
        raise ValueError(f"AUDIO frame field out of range: {exc}") from None


def encode(record: LinkRecord) -> bytes:
    """Encode one record, length prefix included.

    Args:
        record: the record to send.

    Returns:
        The bytes of the whole record (``u32 length | u8 type | payload``).

    Raises:
        ValueError: a field does not fit its wire type (e.g. a negative call number, odd PCM
            length, a digit outside ``0-9*#A-D``) or the record exceeds 1 MiB.
    """
    try:
        if isinstance(record, Audio):
            return _encode_audio(record)
        if isinstance(record, Hello):
            payload = _json(
                {
                    "worker_id": record.worker_id,
                    "pid": record.pid,
                    "kind": record.kind,
                    "sip_host": record.sip_host,
                    "sip_port": record.sip_port,
                    "capacity": record.capacity,
                    "sample_rate": record.sample_rate,
                    "frame_ms": record.frame_ms,
                }
            )
            rtype = RecordType.HELLO
        elif isinstance(record, CallStarted):
            payload = _U32.pack(record.call) + _json(
                {
                    "sip_call_id": record.sip_call_id,
                    "from": record.from_uri,
                    "to": record.to_uri,
                    "request_uri": record.request_uri,
                    "codec": record.codec,
                    "remote_rtp": record.remote_rtp,
                    "headers": dict(record.headers),
                    "hosted": record.hosted,
                }
            )
            rtype = RecordType.CALL_STARTED
        elif isinstance(record, CallEnded):
            payload = _U32.pack(record.call) + _json(
                {"reason": record.reason, "status": record.status}
            )
            rtype = RecordType.CALL_ENDED
        elif isinstance(record, Dtmf):
            if record.digit not in DTMF_DIGITS or len(record.digit) != 1:
                raise ValueError(f"invalid DTMF digit {record.digit!r}")
            method = _METHOD_CODE.get(record.method)
            if method is None:
                raise ValueError(f"invalid DTMF method {record.method!r}")
            payload = _DTMF.pack(record.call, ord(record.digit), record.duration_ms, method)
            rtype = RecordType.DTMF
        elif isinstance(record, Stats):
            payload = _json(dict(record.counters))
            rtype = RecordType.STATS
        elif isinstance(record, Configuration):
            payload = _json(
                {
                    "sequence": record.sequence,
                    "config": dict(record.config),
                    "config_path": record.config_path,
                }
            )
            rtype = RecordType.CONFIG
        elif isinstance(record, Ping):
            payload = _U64.pack(record.nonce)
            rtype = RecordType.PING
        elif isinstance(record, Pong):
            payload = _U64.pack(record.nonce)
            rtype = RecordType.PONG
        else:  # pragma: no cover - exhaustive over LinkRecord
            raise TypeError(f"not a frame link record: {record!r}")
    except struct.error as exc:
        raise ValueError(f"{type(record).__name__} field out of range: {exc}") from None
    return _head(rtype, len(payload)) + payload


def _load_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameLinkError(f"{what}: bad JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise FrameLinkError(f"{what}: JSON payload is not an object")
    return obj


def _get_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FrameLinkError(f"{what}: {key!r} must be a string")
    return value


def _get_int(obj: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameLinkError(f"{what}: {key!r} must be an integer")
    return value


def _get_bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise FrameLinkError(f"{what}: {key!r} must be true or false")
    return value


def _need(payload: memoryview, size: int, what: str) -> None:
    if len(payload) < size:
        raise FrameLinkError(f"{what}: truncated payload ({len(payload)} < {size} bytes)")


def _decode_audio(p: memoryview) -> Audio:
    _need(p, 2, "AUDIO")
    (count,) = _U16.unpack_from(p, 0)
    off = 2
    end = len(p)
    unpack = _FRAME.unpack_from
    frames: list[AudioFrame] = []
    for _ in range(count):
        if off + 14 > end:
            raise FrameLinkError(f"AUDIO: truncated payload (frame header at {off} of {end})")
        call, seq, ts, n = unpack(p, off)
        off += 14
        if off + n > end:
            raise FrameLinkError(f"AUDIO: truncated payload ({n} PCM bytes at {off} of {end})")
        if n & 1:
            raise FrameLinkError(f"AUDIO: odd PCM length {n}")
        frames.append(AudioFrame(call, seq, ts, bytes(p[off : off + n])))
        off += n
    if off != end:
        raise FrameLinkError(f"AUDIO: {end - off} trailing bytes after {count} frames")
    return Audio(tuple(frames))


def _decode_fixed(p: memoryview, size: int, what: str) -> None:
    if len(p) != size:
        raise FrameLinkError(f"{what}: payload is {len(p)} bytes, expected {size}")


def _decode(rtype: int, p: memoryview) -> LinkRecord:
    if rtype == RecordType.AUDIO:
        return _decode_audio(p)
    if rtype == RecordType.HELLO:
        o = _load_object(p, "HELLO")
        return Hello(
            worker_id=_get_str(o, "worker_id", "HELLO"),
            pid=_get_int(o, "pid", "HELLO"),
            kind=_get_str(o, "kind", "HELLO"),
            sip_host=_get_str(o, "sip_host", "HELLO"),
            sip_port=_get_int(o, "sip_port", "HELLO"),
            capacity=_get_int(o, "capacity", "HELLO"),
            sample_rate=_get_int(o, "sample_rate", "HELLO"),
            frame_ms=_get_int(o, "frame_ms", "HELLO", 20),
        )
    if rtype == RecordType.CALL_STARTED:
        _need(p, 4, "CALL_STARTED")
        (call,) = _U32.unpack_from(p, 0)
        o = _load_object(p[4:], "CALL_STARTED")
        headers = o.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise FrameLinkError("CALL_STARTED: 'headers' must map strings to strings")
        what = "CALL_STARTED"
        return CallStarted(
            call=call,
            sip_call_id=_get_str(o, "sip_call_id", what),
            from_uri=_get_str(o, "from", what),
            to_uri=_get_str(o, "to", what),
            request_uri=_get_str(o, "request_uri", what),
            codec=_get_str(o, "codec", what),
            remote_rtp=_get_str(o, "remote_rtp", what),
            headers=headers,
            hosted=_get_bool(o, "hosted", what),
        )
    if rtype == RecordType.CONFIG:
        o = _load_object(p, "CONFIG")
        config = o.get("config")
        if not isinstance(config, dict):
            raise FrameLinkError("CONFIG: 'config' must be an object")
        path = o.get("config_path")
        if path is not None and not isinstance(path, str):
            raise FrameLinkError("CONFIG: 'config_path' must be a string or null")
        return Configuration(_get_int(o, "sequence", "CONFIG"), config, path)
    if rtype == RecordType.CALL_ENDED:
        _need(p, 4, "CALL_ENDED")
        (call,) = _U32.unpack_from(p, 0)
        o = _load_object(p[4:], "CALL_ENDED")
        return CallEnded(
            call=call,
            reason=_get_str(o, "reason", "CALL_ENDED"),
            status=_get_int(o, "status", "CALL_ENDED", 0),
        )
    if rtype == RecordType.DTMF:
        _decode_fixed(p, _DTMF.size, "DTMF")
        call, digit_code, duration_ms, method_code = _DTMF.unpack_from(p, 0)
        digit = chr(digit_code)
        if digit not in DTMF_DIGITS:
            raise FrameLinkError(f"DTMF: invalid digit byte {digit_code}")
        method = _METHOD_NAME.get(method_code)
        if method is None:
            raise FrameLinkError(f"DTMF: invalid method {method_code}")
        return Dtmf(call, digit, duration_ms, method)
    if rtype == RecordType.STATS:
        o = _load_object(p, "STATS")
        for key in o:
            _get_int(o, key, "STATS")
        return Stats(o)
    if rtype == RecordType.PING:
        _decode_fixed(p, 8, "PING")
        return Ping(_U64.unpack_from(p, 0)[0])
    _decode_fixed(p, 8, "PONG")
    return Pong(_U64.unpack_from(p, 0)[0])


class RecordDecoder:
    """Incremental decoder of a frame link byte stream.

    Feed it whatever the socket returned; it keeps an incomplete tail for the next call.
    After it raised :class:`FrameLinkError` the stream is unusable: close the link.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (an incomplete record)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[LinkRecord]:
        """Add received bytes and return every record they complete.

        Args:
            data: bytes read from the link (any split: part of a record, many records).

        Returns:
            The complete records, in order (empty when more bytes are needed).

        Raises:
            FrameLinkError: a length of 0 or above :data:`MAX_RECORD_LENGTH`, an unknown type,
                a payload that is truncated or has trailing bytes, bad JSON or a bad field.
        """
        buf = self._buffer
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data  # common case: no tail pending, parse the read without copying it
        end = len(src)
        records: list[LinkRecord] = []
        off = 0
        with memoryview(src) as view:
            while end - off >= 5:
                length, rtype = _HEAD.unpack_from(view, off)
                if length == 0 or length > MAX_RECORD_LENGTH:
                    raise FrameLinkError(f"record length {length} outside 1..{MAX_RECORD_LENGTH}")
                if rtype not in _TYPES:
                    raise FrameLinkError(f"unknown record type {rtype}")
                stop = off + 4 + length
                if stop > end:
                    break
                records.append(_decode(rtype, view[off + 5 : stop]))
                off = stop
        if src is buf:
            del buf[:off]
        elif off < end:
            buf += data[off:]
        return records


# --------------------------------------------------------------------------------------------
# asyncio adapter
# --------------------------------------------------------------------------------------------


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
            chunks = [_encode_frame(f) for f in record.frames]
            _head(RecordType.AUDIO, 2 + sum(map(len, chunks)))  # size and count limits
            if len(chunks) > 0xFFFF:
                raise ValueError(f"AUDIO record with {len(chunks)} frames (at most 65535)")
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
            payload = 2 + sum(map(len, frames))
            parts.append(_HEAD.pack(payload + 1, RecordType.AUDIO) + _U16.pack(len(frames)))
            parts.extend(frames)
            size += payload + 5
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
