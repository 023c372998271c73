"""Sans-I/O codec of the frame link (wire spec: docs/framelink.md; asyncio adapter: framelink.py).

:func:`encode` turns a record into bytes, :class:`RecordDecoder` turns a byte stream (split
anywhere, many records per read) back into records. No sockets, no clock, like h11.

Every record is ``u32 length | u8 type | payload`` (little-endian; ``length`` counts the type byte
and the payload). Records are frozen, slotted dataclasses; :data:`LinkRecord` is their union.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
]

MAX_RECORD_LENGTH = 1 << 20

#: DTMF digits a DTMF record may carry (RFC 4733 events 0-15 as ASCII).
DTMF_DIGITS = frozenset("0123456789*#ABCD")

#: Call numbers from here up (u32) are allocated by the main process for the calls it relays to
#: a worker (websocket and Twilio media streams); a worker numbers its own calls below.
RELAY_CALL_BASE = 0x8000_0000


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
    EVENT = 10


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
    """Worker-local call number (below :data:`RELAY_CALL_BASE`, never reused while the worker
    lives)."""
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
    method: Literal["rfc4733", "info", "stream"]
    """How it arrived: RTP telephone-event (RFC 4733), SIP INFO, or a media stream's ``dtmf``
    message (main -> worker, a relayed call)."""


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


@dataclass(frozen=True, slots=True)
class RelayedCallStarted:
    """A websocket or Twilio call the main process relays to the worker (main -> worker).

    Wire type CALL_STARTED with a call number of at least :data:`RELAY_CALL_BASE`; the JSON
    carries the fields of :class:`~sipserver.pipeline.session.CallInfo`.
    """

    call: int
    """Call number allocated by the main process (``>= RELAY_CALL_BASE``)."""
    call_id: str
    """Unique id of the call within the server (the stream's ``streamSid``)."""
    agent: str
    """Slug of the agent that answers the call."""
    caller: str
    """Who calls, as the stream gave it."""
    called: str
    """Number or address called, as the stream gave it."""
    transport: str
    """``"websocket"`` or ``"twilio"``."""
    sample_rate: int
    """Sample rate of the call's frames in both directions (8000 or 16000)."""
    listens: Mapping[str, Any] | None = None
    """An AI Listens fork (JSON key ``listens``, absent otherwise): ``{"tracks": {track: call
    number}}``, each transcribed track's frames sent under its own relayed call number (the
    first track's is ``call``); see docs/framelink.md "Relayed AI Listens forks"."""


@dataclass(frozen=True, slots=True)
class Event:
    """A session event of a relayed call (worker -> main), or a transport notice for its session
    (main -> worker, e.g. ``{"type": "rewind", "ms": 200}``); see docs/framelink.md."""

    call: int
    """Call number of the relayed call."""
    event: Mapping[str, Any]
    """The event as a JSON object with a ``"type"`` string
    (:func:`sipserver.pipeline.events.event_to_json`)."""


LinkRecord = (
    Hello
    | CallStarted
    | RelayedCallStarted
    | CallEnded
    | Audio
    | Dtmf
    | Stats
    | Ping
    | Pong
    | Configuration
    | Event
)
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
_METHOD_CODE: dict[str, int] = {"rfc4733": 1, "info": 2, "stream": 3}
_METHOD_NAME: dict[int, Literal["rfc4733", "info", "stream"]] = {
    1: "rfc4733",
    2: "info",
    3: "stream",
}
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


def encode_audio_frame(f: AudioFrame) -> bytes:
    """Encode one frame of an AUDIO payload: ``call, seq, timestamp, nbytes, pcm``.

    For a sender that queues frames one by one and may drop some before the record is written
    (:class:`~sipserver.rtp.framelink.FrameLink`); :func:`audio_record_head` then prefixes them.

    Args:
        f: the frame.

    Returns:
        The frame's bytes within the AUDIO payload.

    Raises:
        ValueError: an odd PCM length or a field that does not fit its wire type.
    """
    n = len(f.pcm)
    if n & 1:
        raise ValueError(f"odd PCM length {n} in frame of call {f.call}")
    try:
        return _FRAME.pack(f.call, f.seq, f.timestamp, n) + f.pcm
    except struct.error as exc:
        raise ValueError(f"AUDIO frame field out of range: {exc}") from None


def audio_record_head(frame_count: int, frames_length: int) -> bytes:
    """Encode the head of an AUDIO record: length prefix, type byte and frame count.

    Args:
        frame_count: frames the record carries (at most 65535).
        frames_length: total length of those frames as :func:`encode_audio_frame` returned them.

    Returns:
        The bytes to write before the frames.

    Raises:
        ValueError: the record would exceed :data:`MAX_RECORD_LENGTH` or carry too many frames.
    """
    head = _head(RecordType.AUDIO, 2 + frames_length)
    if frame_count > 0xFFFF:
        raise ValueError(f"AUDIO record with {frame_count} frames (at most 65535)")
    return head + _U16.pack(frame_count)


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
            if record.call >= RELAY_CALL_BASE:
                raise ValueError(
                    f"worker call number {record.call:#x} not below {RELAY_CALL_BASE:#x}"
                )
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
        elif isinstance(record, RelayedCallStarted):
            if not RELAY_CALL_BASE <= record.call <= 0xFFFF_FFFF:
                raise ValueError(f"relayed call number {record.call:#x} below {RELAY_CALL_BASE:#x}")
            relayed: dict[str, Any] = {
                "call_id": record.call_id,
                "agent": record.agent,
                "caller": record.caller,
                "called": record.called,
                "transport": record.transport,
                "sample_rate": record.sample_rate,
            }
            if record.listens is not None:
                relayed["listens"] = dict(record.listens)
            payload = _U32.pack(record.call) + _json(relayed)
            rtype = RecordType.CALL_STARTED
        elif isinstance(record, Event):
            if not isinstance(record.event.get("type"), str):
                raise ValueError("EVENT: the event needs a 'type' string")
            if not 0 <= record.call <= 0xFFFF_FFFF:
                raise ValueError(f"EVENT: call number {record.call} out of range")
            try:
                payload = _json({"call": record.call, "event": dict(record.event)})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"EVENT: not JSON: {exc}") from None
            rtype = RecordType.EVENT
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
        if call >= RELAY_CALL_BASE:
            return _decode_relayed(call, o)
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
    if rtype == RecordType.EVENT:
        o = _load_object(p, "EVENT")
        call = _get_int(o, "call", "EVENT")
        if not 0 <= call <= 0xFFFF_FFFF:
            raise FrameLinkError(f"EVENT: call number {call} out of range")
        event = o.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise FrameLinkError("EVENT: 'event' must be an object with a 'type' string")
        return Event(call, event)
    if rtype == RecordType.PING:
        _decode_fixed(p, 8, "PING")
        return Ping(_U64.unpack_from(p, 0)[0])
    _decode_fixed(p, 8, "PONG")
    return Pong(_U64.unpack_from(p, 0)[0])


def _decode_relayed(call: int, o: Mapping[str, Any]) -> RelayedCallStarted:
    what = "CALL_STARTED (relayed)"
    return RelayedCallStarted(
        call=call,
        call_id=_get_str(o, "call_id", what),
        agent=_get_str(o, "agent", what),
        caller=_get_str(o, "caller", what),
        called=_get_str(o, "called", what),
        transport=_get_str(o, "transport", what),
        sample_rate=_get_int(o, "sample_rate", what),
        listens=_get_listens(o, what),
    )


def _get_listens(o: Mapping[str, Any], what: str) -> Mapping[str, Any] | None:
    listens = o.get("listens")
    if listens is None:
        return None
    tracks = listens.get("tracks") if isinstance(listens, dict) else None
    if (
        not isinstance(listens, dict)
        or not isinstance(tracks, dict)
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and RELAY_CALL_BASE <= n <= 0xFFFF_FFFF
            for n in tracks.values()
        )
    ):
        raise FrameLinkError(f"{what}: 'listens' must be {{\"tracks\": {{track: call}}}}")
    return {"tracks": dict(tracks)}


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
