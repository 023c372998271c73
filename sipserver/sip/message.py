"""SIP messages: parse, build and serialise requests and responses (RFC 3261 §7, §18.3, §20).

Theory of operation
-------------------
:func:`parse_message` is on the hot path of the edge, so it does the least work that still
validates what RFC 3261 requires of every message:

1. find the empty line that ends the header section (CRLF or bare LF line endings);
2. decode the header section once (UTF-8, ``surrogateescape``: bad bytes never raise and
   re-encode to the same bytes), split it into lines and unfold continuation lines only when a
   line starts with SP/HTAB;
3. split each header line once at ``:`` and map the name to its canonical spelling with one dict
   lookup (compact forms and case variants included). Values are stored raw in a
   :class:`Headers` multi-map; nothing is parsed into structures here;
4. check the start line, the mandatory headers, CSeq, Max-Forwards, Content-Length against the
   body, and the Request-URI (the parsed :class:`SipUri` is kept, so asking for it later is free).

Structured views (``vias()``, ``from_()``, ``to()``...) parse on demand. Every peer error is a
:class:`SipParseError` carrying the response status and, when the response can be addressed,
the partially parsed request, so the edge can answer 400/416/505 instead of dropping the message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from sipserver.sip.headers import (
    _CANON,
    _LIST_HEADERS,
    NameAddr,
    Via,
    canonical_header_name,
    split_comma_list,
)
from sipserver.sip.uri import _TOKEN, SipUri, ascii_digits

__all__ = [
    "REASON_PHRASES",
    "Headers",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "canonical_header_name",
    "encode_response",
    "make_response",
    "parse_message",
]

SIP_VERSION: Final = "SIP/2.0"

#: Standard reason phrases (RFC 3261 §21 and the extensions registered with IANA).
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    424: "Bad Location Information",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}
_CLASS_REASONS: Final = {1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error"}
_CLASS_REASONS.update({5: "Server Error", 6: "Global Failure"})

#: RFC 3986 §3.1 scheme, ':', then at least one character allowed in a URI (RFC 3986 §2).
_ABSOLUTE_URI: Final = re.compile(
    r'[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f-\U0010ffff<>"{}|\\^`]+'
)

#: Headers that may appear once only (RFC 3261 §7.3.1; RFC 4475 §3.3.8-3.3.9).
_SINGLE: Final = frozenset(("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length"))
#: What make_response needs to address a response (RFC 3261 §8.2.6.2).
_ADDRESSING: Final = ("Via", "From", "To", "Call-ID", "CSeq")


def _has_addressing(first: dict[str, str]) -> bool:
    # Five dict lookups; frozenset.issubset(dict) would first build a set of every header name.
    return (
        "Via" in first
        and "From" in first
        and "To" in first
        and "Call-ID" in first
        and "CSeq" in first
    )


#: Methods of RFC 3261 and its extensions: known tokens skip the token check.
_METHODS: Final = frozenset(
    (
        *("REGISTER", "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE"),
        *("PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER"),
    )
)


class Headers:
    """Ordered multi-map of header entries with canonical names and raw values.

    Iteration yields ``(canonical name, raw value)`` in message order. Look-ups accept any
    spelling of a name, including compact forms.
    """

    # _first holds the first value of every name; _multi holds all values of the names that
    # occur more than once. Most headers occur once, so parsing allocates no list for them.
    __slots__ = ("_first", "_items", "_multi")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._first: dict[str, str] = {}
        self._multi: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _trusted(
        items: list[tuple[str, str]], first: dict[str, str], multi: dict[str, list[str]]
    ) -> Headers:
        # Fast constructor for the parser and make_response: inputs are already canonical.
        # (Headers() by name: mypyc calls a native class's constructor directly, where cls()
        # is a generic call; no __new__ call either, which mypyc does not compile.)
        headers = Headers()
        headers._items = items
        headers._first = first
        headers._multi = multi
        return headers

    def _values(self, canon: str) -> list[str]:
        values = self._multi.get(canon)
        if values is not None:
            return values
        value = self._first.get(canon)
        return [] if value is None else [value]

    def _rebuild(self, items: list[tuple[str, str]]) -> None:
        self._items = []
        self._first = {}
        self._multi = {}
        for canon, value in items:
            self._append(canon, value)

    def _append(self, canon: str, value: str) -> None:
        self._items.append((canon, value))
        first = self._first.get(canon)
        if first is None:
            self._first[canon] = value
        elif canon in self._multi:
            self._multi[canon].append(value)
        else:
            self._multi[canon] = [first, value]

    def get(self, name: str) -> str | None:
        """Value of the first entry named ``name`` (any spelling), or None."""
        return self._first.get(_CANON.get(name) or canonical_header_name(name))

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; comma lists are split for list-valued headers."""
        canon = _CANON.get(name) or canonical_header_name(name)
        values = self._values(canon)
        if canon not in _LIST_HEADERS:
            return list(values)
        out: list[str] = []
        for value in values:
            out.extend(split_comma_list(value))
        return out

    def add(self, name: str, value: str) -> None:
        """Append an entry.

        Raises:
            ValueError: the name is not a token, or the value contains CR or LF.
        """
        canon = _CANON.get(name) or canonical_header_name(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"Header {canon} value contains a line break")
        self._append(canon, value)

    def set(self, name: str, value: str) -> None:
        """Replace every entry of ``name`` with one (at the first entry's position)."""
        canon = canonical_header_name(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"Header {canon} value contains a line break")
        if canon not in self._first:
            self._append(canon, value)
            return
        items: list[tuple[str, str]] = []
        done = False
        for entry in self._items:
            if entry[0] != canon:
                items.append(entry)
            elif not done:
                items.append((canon, value))
                done = True
        self._rebuild(items)

    def remove(self, name: str) -> None:
        """Remove every entry of ``name`` (no error when absent)."""
        canon = canonical_header_name(name)
        if canon in self._first:
            self._rebuild([e for e in self._items if e[0] != canon])

    def copy(self) -> Headers:
        """An independent copy."""
        multi = {k: list(v) for k, v in self._multi.items()}
        return Headers._trusted(list(self._items), dict(self._first), multi)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            canon = _CANON.get(name) or canonical_header_name(name)
        except ValueError:
            return False
        return canon in self._first

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# ------------------------------------------------------------------ messages


class SipParseError(ValueError):
    """A received message violates RFC 3261; the peer should get ``status``.

    Attributes:
        status: response status to send: 400, 505 (bad SIP version) or 416 (unsupported
            Request-URI scheme).
        reason: short human reason, usable as the reason phrase ("Missing Call-ID").
        partial: the request as far as it could be read, set when the start line is a request
            line and Via, From, To, Call-ID and CSeq are present, so that a response can be
            addressed with :func:`make_response`; None otherwise.
    """

    def __init__(self, reason: str, status: int = 400, partial: SipRequest | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.partial = partial


def _encode(start: str, headers: Headers, body: bytes) -> bytes:
    # Content-Length is always written and always computed from the body (RFC 3261 §20.14); an
    # existing entry keeps its position, otherwise it goes last.
    items = headers._items
    length = str(len(body))
    if "Content-Length" in headers._first:
        out: list[str] = []
        seen = False
        for name, value in items:
            if name == "Content-Length":
                if seen:
                    continue
                seen = True
                value = length
            out.append(f"{name}: {value}")
        text = f"{start}\r\n" + "\r\n".join(out) + "\r\n\r\n"
    elif items:
        text = f"{start}\r\n" + "\r\n".join(map(": ".join, items))
        text += f"\r\nContent-Length: {length}\r\n\r\n"
    else:
        text = f"{start}\r\nContent-Length: {length}\r\n\r\n"
    data = text.encode("utf-8", "surrogateescape")
    return data + body if body else data


def _split_cseq(value: str) -> tuple[str, str] | None:
    parts = value.split()
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


class _MessageMixin:
    __slots__ = ()
    headers: Headers

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ValueError(f"Missing {name}")
        return value

    @property
    def call_id(self) -> str:
        """The Call-ID value (RFC 3261 §20.8).

        Raises:
            ValueError: no Call-ID header.
        """
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """``(sequence number, method)`` of the CSeq header (RFC 3261 §20.16).

        Raises:
            ValueError: missing or malformed CSeq.
        """
        parts = _split_cseq(self._required("CSeq"))
        if parts is None or not ascii_digits(parts[0]) or len(parts[0]) > 10:
            raise ValueError("Invalid CSeq")
        return int(parts[0]), parts[1]

    def vias(self) -> list[Via]:
        """Every Via value, top first, parsed (comma lists split).

        Raises:
            ValueError: a malformed Via.
        """
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    def top_via(self) -> Via:
        """The topmost Via value, parsed.

        Raises:
            ValueError: no Via, or a malformed one.
        """
        value = self._required("Via")
        if "," in value:
            parts = split_comma_list(value)
            if not parts:
                raise ValueError("Empty Via")
            value = parts[0]
        return Via.parse(value)

    def from_(self) -> NameAddr:
        """The From header, parsed (RFC 3261 §20.20)."""
        return NameAddr.parse(self._required("From"))

    def to(self) -> NameAddr:
        """The To header, parsed (RFC 3261 §20.39)."""
        return NameAddr.parse(self._required("To"))


@dataclass(slots=True, init=False)
class SipRequest(_MessageMixin):
    """A SIP request (RFC 3261 §7.1)."""

    method: str
    """Method token, case-sensitive (``REGISTER``, ``INVITE``, extension methods)."""
    uri: str
    """The Request-URI as sent; see :meth:`request_uri`."""
    headers: Headers
    """Header entries in order."""
    body: bytes = b""
    """Message body."""
    version: str = SIP_VERSION
    """Always ``SIP/2.0`` for parsed messages."""
    _ruri: tuple[str, SipUri] | None = field(default=None, init=False, repr=False, compare=False)

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.version = version
        self._ruri = None

    def request_uri(self) -> SipUri:
        """The Request-URI parsed as a SIP/SIPS URI (cached).

        Raises:
            ValueError: the Request-URI is not a valid sip/sips URI (e.g. ``tel:``).
        """
        cached = self._ruri
        if cached is not None and cached[0] is self.uri:
            return cached[1]
        parsed = SipUri.parse(self.uri)
        self._ruri = (self.uri, parsed)
        return parsed

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 §20.22), or None when absent.

        Raises:
            ValueError: not a number.
        """
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        if not (ascii_digits(value) and len(value) <= 10):
            raise ValueError("Invalid Max-Forwards")
        return int(value)

    def encode(self) -> bytes:
        """Wire form, with Content-Length computed from the body."""
        return _encode(f"{self.method} {self.uri} {self.version}", self.headers, self.body)


@dataclass(slots=True, init=False)
class SipResponse(_MessageMixin):
    """A SIP response (RFC 3261 §7.2)."""

    status: int
    """Status code, 100-699."""
    reason: str
    """Reason phrase."""
    headers: Headers
    """Header entries in order."""
    body: bytes = b""
    """Message body."""
    version: str = SIP_VERSION
    """Always ``SIP/2.0`` for parsed messages."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.version = version

    def encode(self) -> bytes:
        """Wire form, with Content-Length computed from the body."""
        return _encode(f"{self.version} {self.status} {self.reason}", self.headers, self.body)


# ------------------------------------------------------------------ parsing


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one SIP message (a datagram, or one message framed from a stream).

    Args:
        data: the message bytes. Without Content-Length the body is the rest of the data
            (RFC 3261 §18.3, datagrams); a longer body is truncated to Content-Length.

    Returns:
        The request or response. Header values stay raw; the Request-URI was validated.

    Raises:
        SipParseError: the only exception raised, whatever the input.
    """
    try:
        return _parse(data)
    except SipParseError:
        raise
    except Exception as exc:  # peer input must never take the server down
        raise SipParseError("Malformed message") from exc


class _Failure(Exception):
    """Internal: first error found; parsing goes on only to collect the partial request."""

    def __init__(self, reason: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status


def _find_body(data: bytes) -> tuple[int, int]:
    """(end of header section, start of body); (-1, -1) without an empty line."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


def _split_head(data: bytes) -> tuple[list[str], int]:
    """Lines of the header section and the offset of the body (-1: no empty line)."""
    # Decoded first and searched as text: str.find is a direct call compiled, where bytes.find
    # is a generic method call. Text offsets are byte offsets when the lengths agree: every
    # byte became one character (ASCII, or a byte surrogateescape kept); a multi-byte UTF-8
    # character takes the path below.
    whole = data.decode("utf-8", "surrogateescape")
    end = whole.find("\r\n\r\n") if len(whole) == len(data) else -1
    if end >= 0:
        text = whole[:end]
        lines = text.split("\r\n")
        # Every CR and LF was part of a CRLF we split on: the common, all-CRLF case. Checked
        # on the lines joined again: three memchr calls, where two `in` tests per line cost
        # 2.6 k instructions a message, and str.count walks the text a character at a time.
        rest = "".join(lines)
        if "\r" not in rest and "\n" not in rest and "\0" not in rest:
            return lines, end + 4
    # RFC 3261 §7 is strict about CRLF, but bare LF line endings are accepted (as Kamailio and
    # PJSIP do). A bare CR or a NUL would be echoed into responses: drop, do not answer.
    head_end, body_start = _find_body(data)
    text = (data if head_end < 0 else data[:head_end]).decode("utf-8", "surrogateescape")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.endswith("\r"):
            text = text[:-1]
    if head_end < 0:
        text = text.rstrip("\r\n")
    if "\r" in text or "\0" in text:
        raise SipParseError("Control character in header section")
    return text.split("\n"), body_start


def _unfold(lines: list[str]) -> list[str]:
    # RFC 3261 §7.3.1: a line starting with SP/HTAB continues the previous header value; the
    # fold (CRLF plus surrounding whitespace) is equivalent to a single SP.
    out: list[list[str]] = [[lines[0]]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                raise SipParseError("Continuation line before the first header")
            piece = line.strip(" \t")
            if piece:
                out[-1].append(piece)
        else:
            out.append([line])
    # Pieces are joined once per header, so many continuation lines cost linear time.
    return [" ".join([p[0].rstrip(" \t"), *p[1:]]) if len(p) > 1 else p[0] for p in out]


_Fields = tuple[list[tuple[str, str]], dict[str, str], dict[str, list[str]], _Failure | None]


def _read_headers(lines: list[str]) -> _Fields | None:
    """Header entries of ``lines[1:]``; None when a folded line is met (caller unfolds)."""
    items: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    error: _Failure | None = None
    for line in lines[1:]:
        colon = line.find(":")
        name = line[:colon] if colon >= 0 else line
        # _CANON.get(...) itself, not a bound method in a local: mypyc compiles the former to a
        # direct dict lookup and the latter to a generic Python call.
        canon = _CANON.get(name)
        if canon is None:
            if line[:1] in (" ", "\t"):
                return None
            try:
                canon = canonical_header_name(name)
            except ValueError:
                error = error or _Failure("Malformed header line")
                continue
        if colon < 0:
            error = error or _Failure("Malformed header line")
            continue
        # The value without SP/HTAB around it, found by index and sliced once: partition and
        # strip made two copies of it (compiled, a character compare is a cached-string check).
        start = colon + 1
        end = len(line)
        while start < end and (line[start] == " " or line[start] == "\t"):
            start += 1
        while end > start and (line[end - 1] == " " or line[end - 1] == "\t"):
            end -= 1
        value = line[start:end]
        items.append((canon, value))
        # One dict operation for the common case, a name met the first time: setdefault
        # stores it, and the size tells whether it did (a membership test and a store cost
        # ~100 instructions a line more).
        size = len(first)
        previous = first.setdefault(canon, value)
        if len(first) == size:
            if canon in _SINGLE and value != previous:
                error = error or _Failure(f"Multiple {canon} values")
            values = multi.get(canon)
            if values is None:
                multi[canon] = [previous, value]
            else:
                values.append(value)
    return items, first, multi, error


def _check_name_addr(name: str, value: str) -> None:
    # Cheap structural check of From/To at parse time (RFC 4475 §3.1.2.5): a quoted display name
    # must be terminated and a '<' must be closed. Full parsing waits for from_()/to().
    start = 0
    if value[:1] == '"':
        i = 1
        quote = value.find('"', i)
        while True:
            if quote < 0:
                raise _Failure(f"Unterminated quote in {name}")
            backslash = value.find("\\", i, quote)
            if backslash < 0:
                start = quote + 1
                break
            i = backslash + 2
            if i > quote:
                quote = value.find('"', i)
    lt = value.find("<", start)
    if lt >= 0 and value.find(">", lt) < 0:
        raise _Failure(f"Unterminated <URI> in {name}")


def _parse(data: bytes) -> SipRequest | SipResponse:
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    lines, body_start = _split_head(data)
    error: _Failure | None = None
    if body_start < 0:
        error = _Failure("Missing empty line after the header section")

    # ---- start line (RFC 3261 §7.1, §7.2)
    start = lines[0]
    method: str | None = None
    uri = ""
    status = 0
    reason = ""
    if start[:4].upper() == "SIP/":
        parts = start.split(" ", 2)
        version = parts[0]
        if version != SIP_VERSION and version.upper() != SIP_VERSION:
            raise SipParseError("Version Not Supported", 505)
        code = parts[1] if len(parts) > 1 else ""
        if not (len(code) == 3 and ascii_digits(code) and code[0] in "123456"):
            raise SipParseError("Invalid status code")
        status = int(code)
        reason = parts[2] if len(parts) > 2 else ""
    else:
        parts = start.split(" ")
        method = parts[0]
        if method not in _METHODS and _TOKEN.fullmatch(method) is None:
            raise SipParseError("Invalid start line")
        if len(parts) != 3:
            uri = parts[1] if len(parts) > 1 else ""
            error = error or _Failure("Malformed Request-Line")
        else:
            uri = parts[1]
            version = parts[2]
            if error is None and version != SIP_VERSION and version.upper() != SIP_VERSION:
                error = (
                    _Failure("Version Not Supported", 505)
                    if version[:4].upper() == "SIP/"
                    else _Failure("Malformed Request-Line")
                )

    # ---- header lines (RFC 3261 §7.3)
    fields = _read_headers(lines)
    if fields is None:
        fields = _read_headers(_unfold(lines))
        assert fields is not None
    items, first, multi, header_error = fields
    error = error or header_error
    headers = Headers._trusted(items, first, multi)

    # ---- semantic checks; the first failure wins
    try:
        if error is not None:
            raise error
        # The five addressing headers looked up once each (_has_addressing, then three of the
        # values again, made eight lookups).
        via = first.get("Via")
        call_id = first.get("Call-ID")
        cseq_value = first.get("CSeq")
        if (
            via is None
            or call_id is None
            or cseq_value is None
            or "From" not in first
            or "To" not in first
        ):
            missing = next(name for name in _ADDRESSING if name not in first)
            raise _Failure(f"Missing {missing}")
        cseq = cseq_value.split()
        if len(cseq) != 2 or not call_id or not via:
            raise _Failure("Invalid CSeq" if len(cseq) != 2 else "Empty Call-ID or Via")
        number, cseq_method = cseq
        # RFC 3261 §8.1.1.5: 1*DIGIT, less than 2**31.
        if not ascii_digits(number):
            raise _Failure("Invalid CSeq")
        if len(number) > 10 or int(number) >= 2**31:
            raise _Failure("CSeq number too large")
        if method is not None:
            if cseq_method != method:
                raise _Failure("CSeq method mismatch")  # RFC 3261 §8.2 / RFC 4475 §3.1.2.16
        elif cseq_method not in _METHODS and _TOKEN.fullmatch(cseq_method) is None:
            raise _Failure("Invalid CSeq")
        mf = first.get("Max-Forwards")
        if mf is not None and not (ascii_digits(mf) and len(mf) <= 10):
            raise _Failure("Invalid Max-Forwards")
        for name in ("From", "To"):
            value = first[name]
            if value[:1] == '"' or ("<" in value and ">" not in value):
                _check_name_addr(name, value)

        # ---- body (RFC 3261 §18.3, §20.14)
        body = data[body_start:] if body_start < len(data) else b""
        cl = first.get("Content-Length")
        if cl is not None:
            if not ascii_digits(cl):
                raise _Failure("Invalid Content-Length")
            if len(cl) > 10 or int(cl) > len(body):
                raise _Failure("Content-Length mismatch")
            if body:
                length = int(cl)
                if length < len(body):
                    body = body[:length]  # RFC 3261 §18.3: extra datagram bytes are discarded

        if method is None:
            return SipResponse(status, reason, headers, body)
        request = SipRequest(method, uri, headers, body)
        _check_request_uri(request)
        return request
    except _Failure as exc:
        partial = None
        if method is not None and _has_addressing(first):
            partial = SipRequest(method, uri, headers)
        raise SipParseError(exc.reason, exc.status, partial) from None


def _check_request_uri(request: SipRequest) -> None:
    # RFC 3261 §8.2.2.1 / §19.1.1: sip/sips URIs are parsed (and cached); REGISTER needs one
    # (416 otherwise); other methods may carry any absolute URI (tel:, urn:...).
    uri = request.uri
    scheme = uri[:5].lower()
    if scheme.startswith("sip:") or scheme == "sips:":
        try:
            parsed = SipUri.parse(uri)
        except ValueError:
            raise _Failure("Invalid Request-URI") from None
        if parsed.headers:
            # RFC 3261 §19.1.1 table: headers are not allowed in a Request-URI.
            raise _Failure("Request-URI must not contain headers")
        request._ruri = (uri, parsed)
        return
    if _ABSOLUTE_URI.fullmatch(uri) is None:
        raise _Failure("Invalid Request-URI")
    if request.method == "REGISTER":
        raise _Failure("Unsupported URI Scheme", 416)


# ------------------------------------------------------------------ responses


def _has_tag(value: str) -> bool:
    gt = value.rfind(">")
    params = value[gt + 1 :] if gt >= 0 else value
    if "tag" not in params.lower():
        return False
    return any(p.partition("=")[0].strip(" \t").lower() == "tag" for p in params.split(";")[1:])


def _response_head(
    request: SipRequest, status: int, reason: str | None, to_tag: str | None
) -> tuple[str, str, str, str, str, str]:
    """Checked reason and the copied Via/From/To(+tag)/Call-ID/CSeq of a response
    (RFC 3261 §8.2.6.2), shared by :func:`make_response` and :func:`encode_response`."""
    if not 100 <= status <= 699:
        raise ValueError(f"Invalid status {status}")
    if reason is None:
        reason = REASON_PHRASES.get(status) or _CLASS_REASONS[status // 100]
    elif "\n" in reason or "\r" in reason:
        raise ValueError("Reason phrase contains a line break")
    source = request.headers
    first = source._first
    try:
        via = first["Via"]
        from_ = first["From"]
        to = first["To"]
        call_id = first["Call-ID"]
        cseq = first["CSeq"]
    except KeyError as exc:
        raise ValueError(f"Request has no {exc.args[0]}") from None
    if to_tag is not None and not _has_tag(to):
        # Digits (ours) or ASCII alphanumerics are a token without the regex (1.9k
        # instructions a response); anything else is checked against the grammar.
        if (
            not ascii_digits(to_tag)
            and not (to_tag.isascii() and to_tag.isalnum())
            and _TOKEN.fullmatch(to_tag) is None
        ):
            raise ValueError(f"Invalid tag {to_tag!r}")
        to = f"{to};tag={to_tag}"
    return reason, via, from_, to, call_id, cseq


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2).

    Copies every Via entry in order, then From, To, Call-ID and CSeq, then ``headers``.

    Args:
        request: the request answered (may be :attr:`SipParseError.partial`).
        status: 100-699.
        reason: reason phrase; defaults to :data:`REASON_PHRASES`.
        to_tag: added as ``;tag=`` to To unless To already has a tag.
        headers: extra ``(name, value)`` entries appended after the copied ones.

    Raises:
        ValueError: bad status, reason or tag, a request lacking a copied header, or a bad
            extra header.
    """
    reason, via, from_, to, call_id, cseq = _response_head(request, status, reason, to_tag)
    source = request.headers
    vias = source._multi.get("Via")
    if vias is None:
        items = [("Via", via), ("From", from_), ("To", to), ("Call-ID", call_id), ("CSeq", cseq)]
        multi: dict[str, list[str]] = {}
    else:
        items = [("Via", v) for v in vias]
        items += (("From", from_), ("To", to), ("Call-ID", call_id), ("CSeq", cseq))
        multi = {"Via": list(vias)}
    out = {"Via": via, "From": from_, "To": to, "Call-ID": call_id, "CSeq": cseq}
    for name, value in headers:
        canon = _CANON.get(name) or canonical_header_name(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"Header {canon} value contains a line break")
        items.append((canon, value))
        if canon not in out:
            out[canon] = value
        elif canon in multi:
            multi[canon].append(value)
        else:
            multi[canon] = [out[canon], value]
    response_headers = Headers._trusted(items, out, multi)
    return SipResponse(status, reason, response_headers)


def encode_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The wire form of :func:`make_response` with the same arguments, built directly.

    The edge answers every request with a response it only serialises, so this skips the
    :class:`SipResponse` and :class:`Headers` objects. Same checks, same errors, same bytes as
    ``make_response(...).encode()`` (property-tested); an extra Content-Length entry goes
    through :func:`make_response`, which owns that rule.

    Raises:
        ValueError: as :func:`make_response`.
    """
    reason, via, from_, to, call_id, cseq = _response_head(request, status, reason, to_tag)
    # A typed tuple: mypyc iterates it and unpacks its pairs natively (an Iterable is iterated
    # through the generic protocol, and `tuple | list` built a union object on every call).
    extra: tuple[tuple[str, str], ...] = headers if isinstance(headers, tuple) else tuple(headers)
    vias = request.headers._multi.get("Via")
    if vias is not None:
        via = "\r\nVia: ".join(vias)
    # One string for the copied head, instead of a line each and a join.
    head = (
        f"{SIP_VERSION} {status} {reason}\r\nVia: {via}\r\nFrom: {from_}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\n"
    )
    if not extra:
        return f"{head}Content-Length: 0\r\n\r\n".encode("utf-8", "surrogateescape")
    parts = [head]
    for name, value in extra:
        canon = _CANON.get(name) or canonical_header_name(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"Header {canon} value contains a line break")
        if canon == "Content-Length":
            return make_response(request, status, reason, to_tag=to_tag, headers=extra).encode()
        parts.append(f"{canon}: {value}\r\n")
    parts.append("Content-Length: 0\r\n\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")
