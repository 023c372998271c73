"""Twilio: the voice webhook (TwiML), X-Twilio-Signature, and the Media Streams messages.

The protocol code shared by both Twilio ingresses, the media-stream gateway
(:mod:`sipserver.gateway.websocket`) and the AI Listens fork (:mod:`sipserver.listens.fork`).
Four pieces, none of which does I/O:

- :func:`connect_twiml` answers Twilio's voice webhook with TwiML (built with the ``twilio``
  package) that connects the call to the agent's media stream, bidirectionally, passing the
  caller, the called number and the CallSid as ``<Parameter>``\\ s.
- :func:`signature_is_valid` checks ``X-Twilio-Signature`` with the ``twilio`` package's
  ``RequestValidator`` against every URL the request may have been signed for (the configured
  public URL, the one rebuilt from ``X-Forwarded-Proto``/``X-Forwarded-Host``, the one the
  server saw), so it works behind TLS-terminating proxies.
- :func:`parse_message` turns one Media Streams JSON text into a frozen event
  (:class:`Connected`, :class:`Start`, :class:`Media`, :class:`Dtmf`, :class:`Mark`,
  :class:`Stop`, :class:`Unknown`), or raises :class:`ProtocolError` with the websocket close
  code and reason; the ``*_message`` functions build what the server sends (media, mark, clear,
  and the ``sipserver`` event extension). See docs/websocket.md for the protocol.
- :func:`decode_payload` and :func:`encode_payload` convert ``media`` payloads to and from the
  pipeline's s16le PCM (with :mod:`sipserver.media.codecs`); :func:`secret_matches` checks the
  secret of a ``/<slug>/<secret>`` URL in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator
from twilio.twiml import voice_response as twiml

from sipserver.media import codecs

if TYPE_CHECKING:
    from aiohttp import web

    from sipserver.config import Config

__all__ = [
    "L16_16K",
    "MULAW_8K",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "ProtocolError",
    "Start",
    "Stop",
    "StreamEvent",
    "Unknown",
    "busy_twiml",
    "candidate_urls",
    "clear_message",
    "connect_twiml",
    "decode_payload",
    "dial_twiml",
    "encode_payload",
    "event_message",
    "fork_twiml",
    "mark_message",
    "media_message",
    "parse_message",
    "reject_twiml",
    "secret_matches",
    "signature_is_valid",
    "signed",
    "webhook_signature_ok",
]

# Websocket close codes (RFC 6455 §7.4.1).
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_UNSUPPORTED = 1003

_DTMF = frozenset("0123456789*#ABCD")
_DUMMY_SECRET = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """Audio format of a stream, both directions."""

    encoding: str
    """``audio/x-mulaw`` (Twilio) or ``audio/L16`` (the browser extension)."""
    sample_rate: int
    """8000 for mu-law, 16000 for L16."""

    @property
    def bytes_per_sample(self) -> int:
        """1 for mu-law, 2 for L16."""
        return 1 if self.encoding == "audio/x-mulaw" else 2


MULAW_8K = MediaFormat("audio/x-mulaw", 8000)
"""Twilio's format: G.711 mu-law, 8 kHz, mono."""
L16_16K = MediaFormat("audio/L16", 16000)
"""The browser extension: 16-bit linear PCM, big-endian (RFC 2586), 16 kHz, mono."""


class ProtocolError(Exception):
    """A message that ends the stream: close the socket with :attr:`code` and :attr:`reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- inbound events ----------------------------------------------------------------------------


class StreamEvent:
    """Base of the inbound Media Streams events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Connected(StreamEvent):
    """First message of a Twilio stream (``protocol``, ``version``)."""

    protocol: str


@dataclass(frozen=True, slots=True)
class Start(StreamEvent):
    """The stream's metadata: ids, tracks, format and the TwiML ``<Parameter>``\\ s."""

    stream_sid: str
    call_sid: str
    account_sid: str
    media_format: MediaFormat
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    tracks: tuple[str, ...] = ("inbound",)


@dataclass(frozen=True, slots=True)
class Media(StreamEvent):
    """One chunk of caller audio (payload decoded from base64, still encoded)."""

    payload: bytes
    chunk: int | None
    """Sequence number of the chunk (1, 2, ...), None when the client gave none."""
    timestamp: int | None
    """Milliseconds since the stream started, None when the client gave none."""
    track: str


@dataclass(frozen=True, slots=True)
class Dtmf(StreamEvent):
    """A key press (one of ``0-9 * # A-D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class Mark(StreamEvent):
    """The far side played the audio sent before the server's ``mark`` of this name (or
    dropped it on ``clear``)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop(StreamEvent):
    """The stream ended (the call hung up, or the client is done)."""


@dataclass(frozen=True, slots=True)
class Unknown(StreamEvent):
    """A message with an ``event`` this server does not know; ignored (and counted)."""

    event: str


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _media_format(raw: Any) -> MediaFormat:
    if raw is None:
        return MULAW_8K
    if not isinstance(raw, dict):
        raise ProtocolError(CLOSE_INVALID_DATA, "start.mediaFormat must be an object")
    encoding = str(raw.get("encoding", "audio/x-mulaw"))
    kind, _, params = encoding.partition(";")
    kind = kind.strip().lower()
    rate = _as_int(raw.get("sampleRate"))
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "rate":
            rate = _as_int(val.strip())
    channels = _as_int(raw.get("channels")) or 1
    if channels != 1:
        raise ProtocolError(CLOSE_UNSUPPORTED, "only mono streams are supported (channels: 1)")
    if kind in ("audio/x-mulaw", "audio/pcmu") and rate in (None, 8000):
        return MULAW_8K
    if kind == "audio/l16" and rate in (None, 16000):
        return L16_16K
    raise ProtocolError(
        CLOSE_UNSUPPORTED,
        f"unsupported mediaFormat {encoding!r} at {rate} Hz "
        "(audio/x-mulaw 8000 or audio/L16;rate=16000)",
    )


def parse_message(text: str) -> StreamEvent:
    """Parse one inbound Media Streams message.

    Raises:
        ProtocolError: not JSON, not an object, bad base64, or a malformed known event.
    """
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError(CLOSE_INVALID_DATA, "invalid JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError(CLOSE_INVALID_DATA, "a message must be a JSON object")
    event = msg.get("event")
    if event == "media":
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError(CLOSE_INVALID_DATA, "media.payload missing")
        try:
            payload = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(CLOSE_INVALID_DATA, "invalid base64 in media.payload") from None
        return Media(
            payload,
            _as_int(media.get("chunk")),
            _as_int(media.get("timestamp")),
            str(media.get("track", "inbound")),
        )
    if event == "start":
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError(CLOSE_INVALID_DATA, "start message without a start object")
        sid = start.get("streamSid", msg.get("streamSid"))
        if not isinstance(sid, str) or not sid or len(sid) > 128:
            raise ProtocolError(CLOSE_INVALID_DATA, "start.streamSid missing or too long")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(CLOSE_INVALID_DATA, "start.customParameters must be an object")
        tracks = start.get("tracks") or ["inbound"]
        return Start(
            stream_sid=sid,
            call_sid=str(start.get("callSid", "")),
            account_sid=str(start.get("accountSid", "")),
            media_format=_media_format(start.get("mediaFormat")),
            custom_parameters={str(k): str(v) for k, v in list(params.items())[:64]},
            tracks=tuple(str(t) for t in tracks) if isinstance(tracks, list) else ("inbound",),
        )
    if event == "dtmf":
        dtmf = msg.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or digit.upper() not in _DTMF:
            raise ProtocolError(CLOSE_INVALID_DATA, "dtmf.digit must be one of 0-9 * # A-D")
        return Dtmf(digit.upper())
    if event == "mark":
        mark = msg.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(CLOSE_INVALID_DATA, "mark.name missing")
        return Mark(name)
    if event == "connected":
        return Connected(str(msg.get("protocol", "")))
    if event == "stop":
        return Stop()
    return Unknown(str(event)[:32] if event is not None else "")


def decode_payload(fmt: MediaFormat, payload: bytes) -> bytes:
    """A ``media`` payload as s16le PCM at the stream's rate.

    Raises:
        ProtocolError: an L16 payload of odd length.
    """
    if fmt is MULAW_8K:
        return codecs.ulaw_decode(payload)
    if len(payload) % 2:
        raise ProtocolError(CLOSE_INVALID_DATA, "bad media: odd L16 payload")
    return codecs.l16_to_pcm(payload)


# --- outbound messages -------------------------------------------------------------------------


def encode_payload(fmt: MediaFormat, pcm: bytes) -> bytes:
    """s16le PCM at the stream's rate as a ``media`` payload in the stream's format."""
    if fmt is MULAW_8K:
        return codecs.ulaw_encode(pcm)
    return codecs.pcm_to_l16(pcm)


def media_message(stream_sid_json: str, payload: bytes) -> str:
    """A ``media`` message carrying ``payload`` (encoded audio) to the far side.

    Args:
        stream_sid_json: the stream sid already JSON-encoded (quoted), computed once per call.
        payload: audio in the stream's format.
    """
    b64 = base64.b64encode(payload).decode("ascii")
    return f'{{"event":"media","streamSid":{stream_sid_json},"media":{{"payload":"{b64}"}}}}'


def mark_message(stream_sid_json: str, name: str) -> str:
    """A ``mark``: the far side echoes it once the audio sent before it has played."""
    return f'{{"event":"mark","streamSid":{stream_sid_json},"mark":{{"name":{json.dumps(name)}}}}}'


def clear_message(stream_sid_json: str) -> str:
    """A ``clear``: the far side drops the audio it has buffered (and returns pending marks)."""
    return f'{{"event":"clear","streamSid":{stream_sid_json}}}'


def event_message(stream_sid_json: str, body: Mapping[str, Any]) -> str:
    """A ``sipserver`` extension message (agent state, transcripts) for clients that asked."""
    return f'{{"event":"sipserver","streamSid":{stream_sid_json},"sipserver":{json.dumps(body)}}}'


# --- webhook -----------------------------------------------------------------------------------


def _stream(url: str, parameters: Mapping[str, str], **attributes: str) -> twiml.Stream:
    stream = twiml.Stream(url=url, **attributes)
    for name, value in parameters.items():
        if value:
            stream.append(twiml.Parameter(name=name, value=value))
    return stream


def connect_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """TwiML connecting the call to a bidirectional media stream.

    Args:
        stream_url: ``wss://…/ws/<slug>/<secret>``.
        parameters: sent to the stream in ``start.customParameters`` (empty values skipped).
    """
    response = twiml.VoiceResponse()
    connect = twiml.Connect()
    connect.append(_stream(stream_url, parameters))
    response.append(connect)
    return str(response.to_xml(xml_declaration=True))


def fork_twiml(stream_url: str, track: str, forward_to: str, parameters: Mapping[str, str]) -> str:
    """TwiML that forks the call to a unidirectional stream, then dials the human agent.

    Args:
        stream_url: ``wss://…/listens/<slug>/<secret>/stream``.
        track: ``inbound_track``, ``outbound_track`` or ``both_tracks``.
        forward_to: a phone number, or a ``sip:`` URI (dialled with ``<Sip>``).
        parameters: sent to the stream in ``start.customParameters`` (empty values skipped).
    """
    response = twiml.VoiceResponse()
    start = twiml.Start()
    start.append(_stream(stream_url, parameters, track=track))
    response.append(start)
    _dial(response, forward_to)
    return str(response.to_xml(xml_declaration=True))


def dial_twiml(forward_to: str) -> str:
    """TwiML that only dials ``forward_to`` (a number or a ``sip:`` URI): an AI Listens call
    whose fork is refused at capacity still reaches the human agent, unmonitored."""
    response = twiml.VoiceResponse()
    _dial(response, forward_to)
    return str(response.to_xml(xml_declaration=True))


def _dial(response: twiml.VoiceResponse, forward_to: str) -> None:
    dial = twiml.Dial()
    if forward_to.lower().startswith(("sip:", "sips:")):
        dial.sip(forward_to)
    else:
        dial.number(forward_to)
    response.append(dial)


def busy_twiml() -> str:
    """TwiML refusing a call at capacity: ``<Reject reason="busy"/>`` (the caller hears a busy
    signal, the call is not billed)."""
    response = twiml.VoiceResponse()
    response.reject(reason="busy")
    return str(response.to_xml(xml_declaration=True))


def reject_twiml() -> str:
    """TwiML refusing the call (Twilio plays a busy signal; the call is not billed)."""
    response = twiml.VoiceResponse()
    response.reject(reason="rejected")
    return str(response.to_xml(xml_declaration=True))


def candidate_urls(
    *,
    public_url: str,
    path_qs: str,
    request_url: str,
    headers: Mapping[str, str],
) -> list[str]:
    """The URLs a webhook request may have been signed for, most likely first.

    Args:
        public_url: ``server.public_url`` (what Twilio is normally configured with).
        path_qs: the request's path and query string as received.
        request_url: the URL as the server saw it (scheme, Host header, path, query).
        headers: the request headers (``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Host``).
    """
    urls = [public_url.rstrip("/") + path_qs]
    proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    host = headers.get("X-Forwarded-Host", "").split(",")[0].strip() or headers.get("Host", "")
    if proto in ("http", "https") and host:
        urls.append(f"{proto}://{host}{path_qs}")
    urls.append(request_url)
    seen: list[str] = []
    for url in urls:
        if url not in seen and urlsplit(url).scheme in ("http", "https"):
            seen.append(url)
    return seen


def secret_matches(given: str, expected: str | None) -> bool:
    """Constant-time comparison (the same work whether or not an agent/secret exists)."""
    expected_bytes = expected.encode() if expected is not None else _DUMMY_SECRET
    ok = hmac.compare_digest(given.encode(), expected_bytes)
    return ok and expected is not None


def signed(request: web.Request, token: str, params: dict[str, str], config: Config) -> bool:
    """True when a Twilio webhook request carries a valid ``X-Twilio-Signature``."""
    return webhook_signature_ok(
        token,
        public_url=config.server.public_url,
        path_qs=request.path_qs,
        request_url=str(request.url),
        headers=request.headers,
        params=params,
    )


def webhook_signature_ok(
    auth_token: str,
    *,
    public_url: str,
    path_qs: str,
    request_url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str],
) -> bool:
    """True when the request's ``X-Twilio-Signature`` signs ``params`` at one of the URLs of
    :func:`candidate_urls`."""
    urls = candidate_urls(
        public_url=public_url, path_qs=path_qs, request_url=request_url, headers=headers
    )
    return signature_is_valid(auth_token, urls, params, headers.get("X-Twilio-Signature", ""))


def signature_is_valid(
    auth_token: str, urls: Iterable[str], params: Mapping[str, str], signature: str
) -> bool:
    """True when ``signature`` (X-Twilio-Signature) signs ``params`` at one of ``urls``."""
    if not signature:
        return False
    validator = RequestValidator(auth_token)
    return any(validator.validate(url, dict(params), signature) for url in urls)
