"""SDP (RFC 4566) parsing and the offer/answer model (RFC 3264) of the native media engine.

Only what a telephone line needs: the first ``m=audio`` line is negotiated (PCMU, PCMA, G722
and ``telephone-event``); every other ``m=`` line is answered with port 0, which rejects it
while keeping the answer's ``m=`` lines in the offer's order (RFC 3264 §6). Hold is read from
the direction attributes (RFC 3264 §8.4) and the legacy ``c=0.0.0.0`` (RFC 2543).

Pure: no I/O, no clock. :func:`parse_sdp` raises only :class:`SdpError` (its message names the
offending line), so the user agent answers 400 (malformed) or 488 (:func:`negotiate` returns
None: nothing we can do).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

__all__ = [
    "SUPPORTED",
    "Direction",
    "MediaFormat",
    "Negotiated",
    "SdpError",
    "SessionDescription",
    "build_answer",
    "build_offer",
    "negotiate",
    "parse_sdp",
]

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]

SUPPORTED: Final = ("PCMU", "PCMA", "G722")
"""Codecs the engine encodes and decodes, in our order of preference for offers."""

DTMF_PAYLOAD_TYPE: Final = 101
"""Payload type of ``telephone-event`` in our offers (the common choice; RFC 4733 §7.1.1)."""

_DIRECTIONS: Final = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))
# RFC 3264 §6.1: the answer's direction mirrors the offer's.
_ANSWER_DIRECTION: Final[dict[str, Direction]] = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
# RFC 3551 §6 table 4: static audio payload types (name, RTP clock rate, channels).
_STATIC: Final[dict[int, tuple[str, int, int]]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}
# The RTP clock rate of each codec we support (G722: 8000 by RFC 3551 §4.5.2's erratum, although
# it samples at 16 kHz).
_CLOCK: Final = {"PCMU": 8000, "PCMA": 8000, "G722": 8000}
_STATIC_PT: Final = {"PCMU": 0, "PCMA": 8, "G722": 9}
_PLAIN_PROTOCOLS: Final = frozenset(("RTP/AVP", "RTP/AVPF"))
_SRTP_PROTOCOLS: Final = frozenset(("RTP/SAVP", "RTP/SAVPF"))
# RFC 4568 §6.2 suites pylibsrtp implements.
_SRTP_SUITES: Final = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

# RFC 4566 §5: known type letters; a description with any other letter is rejected.
_TYPES: Final = frozenset("vosiuepcbtrzkam")
_NUMBER = re.compile(r"[0-9]{1,20}")
_PORT = re.compile(r"([0-9]{1,5})(?:/[0-9]{1,5})?")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_RTPMAP = re.compile(r"([0-9]{1,3}) ([^/ ]+)/([0-9]{1,9})(?:/([0-9]{1,2}))?")
_FMTP = re.compile(r"([0-9]{1,3}) (.*)")
_RTCP = re.compile(r"([0-9]{1,5})(?: .*)?")


class SdpError(ValueError):
    """A malformed session description; the message says which line and why (the UA answers
    400, or 488 for a well-formed offer it cannot take)."""


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """One payload format of an ``m=`` line, static or from ``a=rtpmap`` (RFC 4566 §6)."""

    payload_type: int
    """RTP payload type (0-127)."""
    name: str
    """Encoding name, upper-case (``telephone-event`` stays lower-case, as RFC 4733 names it);
    empty for a dynamic payload type without ``a=rtpmap``."""
    clock_rate: int
    """RTP clock rate in Hz (G722: 8000, RFC 3551 §4.5.2); 0 when unknown."""
    channels: int = 1
    """Audio channels."""
    fmtp: str | None = None
    """The ``a=fmtp`` parameters, as sent."""


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed description: the first audio ``m=`` line in full, the others by kind only."""

    session_id: int
    """``o=`` sess-id."""
    session_version: int
    """``o=`` sess-version (RFC 3264 §8: a new offer increments it)."""
    connection: str
    """The audio stream's ``c=`` address (media level, else session level); ``0.0.0.0`` is the
    legacy hold (RFC 3264 §8.4); empty when there is no audio stream."""
    port: int
    """The audio ``m=`` port (0: stream rejected or removed, RFC 3264 §8.2)."""
    formats: tuple[MediaFormat, ...]
    """The audio formats in the offerer's order of preference."""
    direction: Direction
    """The audio stream's direction attribute (media level, else session level, else
    sendrecv: RFC 3264 §5.1)."""
    ptime: int | None
    """``a=ptime`` in ms, if given."""
    rtcp_port: int | None
    """``a=rtcp`` port (RFC 3605), if given (else RTCP is on port + 1)."""
    crypto: tuple[str, ...]
    """Raw ``a=crypto`` values (SDES, RFC 4568) of an ``RTP/SAVP`` audio stream."""
    protocol: str
    """The audio ``m=`` transport: ``RTP/AVP``, ``RTP/SAVP``, ...; empty without audio."""
    other_media: tuple[str, ...]
    """Media kinds of the other ``m=`` lines (``video``, ``audio``, ...), in order."""
    media_lines: tuple[str, ...] = ()
    """Every ``m=`` line's value as sent (after ``m=``), in order: the answer rejects the
    others with port 0 in the same position (RFC 3264 §6)."""
    audio_index: int = -1
    """Index in :attr:`media_lines` of the audio stream described here (-1: none)."""

    @property
    def on_hold(self) -> bool:
        """Whether the sender of this description holds the stream (sendonly, inactive or
        ``c=0.0.0.0``; RFC 3264 §8.4)."""
        return self.direction in ("sendonly", "inactive") or self.connection in (
            "0.0.0.0",
            "::",
        )


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of an offer/answer exchange for the audio stream."""

    codec: MediaFormat
    """The first of the offer's formats we support (offerer's order, RFC 3264 §6.1)."""
    dtmf: MediaFormat | None
    """``telephone-event`` at the codec's clock rate, if offered (RFC 4733 §7.1.1)."""
    remote: tuple[str, int]
    """Where to send RTP (before symmetric latching)."""
    remote_rtcp: tuple[str, int]
    """Where to send RTCP (``a=rtcp``, RFC 3605, else RTP port + 1)."""
    direction: Direction
    """OUR direction in the answer (the offer's mirrored, RFC 3264 §6.1)."""
    on_hold: bool
    """The peer holds us (sendonly, inactive or ``c=0.0.0.0``): we send nothing."""
    ptime: int
    """The offer's ``a=ptime``, 20 when absent (we always send 20 ms packets)."""
    crypto: str | None = None
    """The offer's ``a=crypto`` line chosen for SRTP (only with ``srtp=True``)."""


# ------------------------------------------------------------------------------------ parsing


def parse_sdp(body: bytes | str) -> SessionDescription:
    """Parse a session description (RFC 4566).

    Lines may end with CRLF or LF. Unknown attributes are ignored (RFC 4566 §5), unknown type
    letters are not.

    Raises:
        SdpError: the body is not a valid description; the message names the line.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"SDP is not UTF-8 (byte {exc.start})") from None
    else:
        text = body
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise SdpError("empty SDP")
    return _Parser(lines).parse()


class _Media:
    __slots__ = ("attributes", "connection", "line", "number")

    def __init__(self, number: int, line: str) -> None:
        self.number = number
        self.line = line
        self.connection: str | None = None
        self.attributes: list[tuple[int, str, str]] = []  # (line number, name, value)


class _Parser:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.origin: tuple[int, int] | None = None
        self.session_connection: str | None = None
        self.session_attributes: list[tuple[int, str, str]] = []
        self.media: list[_Media] = []

    def parse(self) -> SessionDescription:
        seen: set[str] = set()
        for index, (n, line) in enumerate(self.lines):
            if len(line) < 2 or line[1] != "=" or line[0] not in _TYPES:
                raise SdpError(f"line {n}: {line[:40]!r} is not <type>=<value> (RFC 4566 §5)")
            kind, value = line[0], line[2:]
            if index == 0 and kind != "v":
                raise SdpError(f"line {n}: the first line must be v=0")
            seen.add(kind)
            if kind == "v" and value != "0":
                raise SdpError(f"line {n}: unsupported SDP version {value[:20]!r}")
            elif kind == "o":
                self._origin(n, value)
            elif kind == "c":
                address = _connection(n, value)
                if self.media:
                    self.media[-1].connection = address
                else:
                    self.session_connection = address
            elif kind == "m":
                self.media.append(_Media(n, value))
            elif kind == "a":
                name, _, attr_value = value.partition(":")
                target = self.media[-1].attributes if self.media else self.session_attributes
                target.append((n, name, attr_value))
        for required in "ost":
            if required not in seen:
                raise SdpError(f"no {required}= line (RFC 4566 §5)")
        return self._describe()

    def _origin(self, n: int, value: str) -> None:
        fields = value.split(" ")
        if len(fields) != 6:
            raise SdpError(f"line {n}: o= needs 6 fields, got {len(fields)}")
        if not (_NUMBER.fullmatch(fields[1]) and _NUMBER.fullmatch(fields[2])):
            raise SdpError(f"line {n}: o= session id and version must be numbers")
        self.origin = (int(fields[1]), int(fields[2]))

    def _describe(self) -> SessionDescription:
        assert self.origin is not None
        media_lines: list[str] = []
        kinds: list[str] = []
        audio: tuple[int, _Media, str, int, list[str]] | None = None
        for index, media in enumerate(self.media):
            fields = media.line.split(" ")
            if len(fields) < 4 or not _TOKEN.fullmatch(fields[0]):
                raise SdpError(f"line {media.number}: m= needs <media> <port> <proto> <fmt>...")
            port_match = _PORT.fullmatch(fields[1])
            if port_match is None or int(port_match.group(1)) > 65535:
                raise SdpError(f"line {media.number}: bad m= port {fields[1][:20]!r}")
            if not all(fields[2:]) or not all(_TOKEN.fullmatch(f) for f in fields[3:]):
                raise SdpError(f"line {media.number}: bad m= protocol or format list")
            media_lines.append(media.line)
            if audio is None and fields[0] == "audio":
                audio = (index, media, fields[2], int(port_match.group(1)), fields[3:])
            else:
                kinds.append(fields[0])
        session_id, session_version = self.origin
        session_direction, session_ptime = self._common(self.session_attributes)
        if audio is None:
            return SessionDescription(
                session_id=session_id,
                session_version=session_version,
                connection=self.session_connection or "",
                port=0,
                formats=(),
                direction=session_direction or "sendrecv",
                ptime=session_ptime,
                rtcp_port=None,
                crypto=(),
                protocol="",
                other_media=tuple(kinds),
                media_lines=tuple(media_lines),
            )
        index, media, protocol, port, fmt_list = audio
        connection = media.connection or self.session_connection
        if connection is None:
            raise SdpError(f"line {media.number}: no c= line for the audio stream (RFC 4566 §5.7)")
        direction, ptime = self._common(media.attributes)
        rtpmap: dict[int, tuple[str, int, int]] = {}
        fmtp: dict[int, str] = {}
        rtcp_port: int | None = None
        crypto: list[str] = []
        for n, name, value in media.attributes:
            if name == "rtpmap":
                match = _RTPMAP.fullmatch(value.strip())
                if match is None:
                    raise SdpError(f"line {n}: bad a=rtpmap {value[:40]!r}")
                encoding = match.group(2)
                encoding = encoding if encoding.lower() == "telephone-event" else encoding.upper()
                channels = int(match.group(4)) if match.group(4) else 1
                rtpmap[int(match.group(1))] = (encoding, int(match.group(3)), channels)
            elif name == "fmtp":
                match = _FMTP.fullmatch(value.strip())
                if match is None:
                    raise SdpError(f"line {n}: bad a=fmtp {value[:40]!r}")
                fmtp[int(match.group(1))] = match.group(2).strip()
            elif name == "rtcp":
                match = _RTCP.fullmatch(value.strip())
                if match is None or int(match.group(1)) > 65535:
                    raise SdpError(f"line {n}: bad a=rtcp {value[:40]!r}")
                rtcp_port = int(match.group(1))
            elif name == "crypto" and "SAVP" in protocol:
                crypto.append(value.strip())
        formats: list[MediaFormat] = []
        for fmt in fmt_list:
            if not fmt.isdigit() or len(fmt) > 3 or int(fmt) > 127:
                if protocol in _PLAIN_PROTOCOLS or protocol in _SRTP_PROTOCOLS:
                    raise SdpError(f"line {media.number}: bad RTP payload type {fmt[:20]!r}")
                continue  # a non-RTP transport's format list (not ours to judge)
            pt = int(fmt)
            name, clock, channels = rtpmap.get(pt) or _STATIC.get(pt) or ("", 0, 1)
            formats.append(MediaFormat(pt, name, clock, channels, fmtp.get(pt)))
        return SessionDescription(
            session_id=session_id,
            session_version=session_version,
            connection=connection,
            port=port,
            formats=tuple(formats),
            direction=direction or session_direction or "sendrecv",
            ptime=ptime if ptime is not None else session_ptime,
            rtcp_port=rtcp_port,
            crypto=tuple(crypto),
            protocol=protocol,
            other_media=tuple(kinds),
            media_lines=tuple(media_lines),
            audio_index=index,
        )

    @staticmethod
    def _common(attributes: list[tuple[int, str, str]]) -> tuple[Direction | None, int | None]:
        """The direction and ptime among ``attributes`` (the last of each wins)."""
        direction: Direction | None = None
        ptime: int | None = None
        for n, name, value in attributes:
            if name in _DIRECTIONS:
                direction = cast(Direction, name)
            elif name == "ptime":
                text = value.strip()
                # RFC 4566 §6 allows a decimal ptime ("20.0"); whole ms are what we use.
                whole = text.split(".", 1)[0]
                if not whole.isdigit() or len(whole) > 5 or int(whole) == 0:
                    raise SdpError(f"line {n}: bad a=ptime {value[:20]!r}")
                ptime = int(whole)
        return direction, ptime


def _connection(n: int, value: str) -> str:
    """The address of a ``c=`` line (RFC 4566 §5.7): ``IN IP4 <addr>[/ttl]`` or ``IN IP6``."""
    fields = value.split(" ")
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise SdpError(f"line {n}: c= must be 'IN IP4|IP6 <address>'")
    address = fields[2].split("/", 1)[0]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        # A host name is allowed by RFC 4566, but we would have to resolve it on the media path.
        raise SdpError(f"line {n}: c= address {address[:40]!r} is not an IP address") from None
    if (parsed.version == 4) != (fields[1] == "IP4"):
        raise SdpError(f"line {n}: c= address {address[:40]!r} is not {fields[1]}")
    return str(parsed)


# ------------------------------------------------------------------------------- offer/answer


def negotiate(
    offer: SessionDescription,
    *,
    codecs: Sequence[str] = SUPPORTED,
    srtp: bool = False,
) -> Negotiated | None:
    """Choose what to answer to ``offer`` (RFC 3264 §6.1).

    Args:
        offer: the peer's description (an initial offer or a re-INVITE/UPDATE).
        codecs: the codec names we may use (a subset of :data:`SUPPORTED`).
        srtp: whether we may answer ``RTP/SAVP`` with SDES keys (RFC 4568); without it an
            ``RTP/SAVP`` offer gets None.

    Returns:
        The negotiated stream, or None when nothing can be answered (no audio, port 0, no
        common codec, a transport we do not speak): the UA answers 488.
    """
    if offer.audio_index < 0 or offer.port == 0:
        return None
    crypto: str | None = None
    if offer.protocol in _SRTP_PROTOCOLS:
        if not srtp:
            return None
        crypto = next(
            (c for c in offer.crypto if len(c.split(" ")) >= 3 and c.split(" ")[1] in _SRTP_SUITES),
            None,
        )
        if crypto is None:
            return None
    elif offer.protocol not in _PLAIN_PROTOCOLS:
        return None
    wanted = {name.upper() for name in codecs} & set(SUPPORTED)
    codec = next(
        (
            f
            for f in offer.formats
            if f.name in wanted and f.clock_rate == _CLOCK[f.name] and f.channels == 1
        ),
        None,
    )
    if codec is None:
        return None
    dtmf = next(
        (
            f
            for f in offer.formats
            if f.name.lower() == "telephone-event" and f.clock_rate == codec.clock_rate
        ),
        None,
    )
    rtcp_port = offer.rtcp_port if offer.rtcp_port is not None else offer.port + 1
    return Negotiated(
        codec=codec,
        dtmf=dtmf,
        remote=(offer.connection, offer.port),
        remote_rtcp=(offer.connection, rtcp_port),
        direction=_ANSWER_DIRECTION[offer.direction],
        on_hold=offer.on_hold,
        ptime=offer.ptime or 20,
        crypto=crypto,
    )


def _head(host: str, session_id: int, session_version: int) -> list[str]:
    family = "IP6" if ":" in host else "IP4"
    return [
        "v=0",
        f"o=sipserver {session_id} {session_version} IN {family} {host}",
        "s=sipserver",
        f"c=IN {family} {host}",
        "t=0 0",
    ]


def _format_lines(fmt: MediaFormat) -> list[str]:
    channels = f"/{fmt.channels}" if fmt.channels != 1 else ""
    lines = [f"a=rtpmap:{fmt.payload_type} {fmt.name}/{fmt.clock_rate}{channels}"]
    if fmt.fmtp is not None:
        lines.append(f"a=fmtp:{fmt.payload_type} {fmt.fmtp}")
    return lines


def _encode(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def build_answer(
    offer: SessionDescription,
    negotiated: Negotiated,
    *,
    host: str,
    port: int,
    session_id: int,
    session_version: int,
    crypto: str | None = None,
) -> bytes:
    """Our answer to ``offer`` (RFC 3264 §6): the same ``m=`` lines in the same order, the
    audio one with the negotiated codec (+ ``telephone-event``), the others with port 0.

    Args:
        offer: the offer being answered.
        negotiated: :func:`negotiate`'s result for it.
        host: our RTP address (``c=`` and ``o=``).
        port: our RTP port (RTCP on port + 1).
        session_id: our ``o=`` sess-id (constant for the dialog).
        session_version: our ``o=`` version (+1 for each changed answer, RFC 3264 §8).
        crypto: our ``a=crypto`` value for an ``RTP/SAVP`` answer (RFC 4568 §7.1.2).

    Returns:
        The SDP body, CRLF line ends (RFC 4566 §5).
    """
    lines = _head(host, session_id, session_version)
    media_lines = offer.media_lines or (f"audio {offer.port} {offer.protocol} 0",)
    for index, value in enumerate(media_lines):
        if index != offer.audio_index:
            kind, _, rest = value.partition(" ")
            _, _, proto_formats = rest.partition(" ")  # rest = port proto fmt...
            lines.append(f"m={kind} 0 {proto_formats}")
            continue
        formats = [negotiated.codec]
        if negotiated.dtmf is not None:
            formats.append(negotiated.dtmf)
        payload_types = " ".join(str(f.payload_type) for f in formats)
        lines.append(f"m=audio {port} {offer.protocol} {payload_types}")
        lines.extend(_format_lines(negotiated.codec))
        if negotiated.dtmf is not None:
            dtmf = negotiated.dtmf
            if dtmf.fmtp is None:  # RFC 4733 §2.4.1: events 0-15 assumed; say so
                dtmf = MediaFormat(dtmf.payload_type, dtmf.name, dtmf.clock_rate, 1, "0-16")
            lines.extend(_format_lines(dtmf))
        lines.append("a=ptime:20")
        if crypto is not None:
            lines.append(f"a=crypto:{crypto}")
        lines.append(f"a={negotiated.direction}")
    return _encode(lines)


def build_offer(
    *,
    host: str,
    port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = SUPPORTED,
    direction: str = "sendrecv",
) -> bytes:
    """An offer of one audio stream (RFC 3264 §5) with ``codecs`` (static payload types) and
    ``telephone-event/8000`` on payload type 101.

    Used for calls we originate and for our own session refreshes (re-INVITE/UPDATE), where
    ``session_version`` is the previous one + 1 when anything changed (RFC 3264 §8).

    Raises:
        ValueError: an unknown codec or direction.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {sorted(_DIRECTIONS)}")
    unknown = [c for c in codecs if c.upper() not in _STATIC_PT]
    if unknown or not codecs:
        raise ValueError(f"codecs {list(codecs)!r}: each must be one of {SUPPORTED}")
    names = list(dict.fromkeys(c.upper() for c in codecs))
    payload_types = [_STATIC_PT[name] for name in names] + [DTMF_PAYLOAD_TYPE]
    lines = _head(host, session_id, session_version)
    lines.append(f"m=audio {port} RTP/AVP {' '.join(map(str, payload_types))}")
    for name in names:
        lines.append(f"a=rtpmap:{_STATIC_PT[name]} {name}/{_CLOCK[name]}")
    lines.append(f"a=rtpmap:{DTMF_PAYLOAD_TYPE} telephone-event/8000")
    lines.append(f"a=fmtp:{DTMF_PAYLOAD_TYPE} 0-16")
    lines.append("a=ptime:20")
    lines.append(f"a={direction}")
    return _encode(lines)
