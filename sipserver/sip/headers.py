"""SIP header names and structured values: Via, name-addr (From/To/Contact/Route), parameters.

Values arrive raw from :class:`sipserver.sip.message.Headers`; these parsers run only when a
caller asks for the structure. They use ``partition``/``find``/``split`` on the common path and
fall back to a character scan only for quoted strings. Parameter names are lower-cased, values
are kept raw (quotes included) so ``str()`` reproduces the value; :func:`unquote` strips quotes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final, Literal

from sipserver.sip.uri import (
    _TOKEN,
    Params,
    SipUri,
    _set_params,
    ascii_digits,
    parse_uri_uncached,
    split_host_port,
)

__all__ = [
    "AGENT_HEADER",
    "SRTP_HEADER",
    "NameAddr",
    "Params",
    "Via",
    "canonical_header_name",
    "format_params",
    "parse_contacts",
    "parse_params",
    "split_comma_list",
    "unquote",
]

#: Header the edge sets on the INVITE it proxies to a media worker: the slug of the agent the
#: call is for (an extension header, RFC 3261 §7.3; the edge removes any copy from the caller).
AGENT_HEADER: Final = "X-Sipserver-Agent"
#: Header the edge sets beside :data:`AGENT_HEADER`: the agent's ``sip.srtp`` policy (``off``,
#: ``optional``, ``required``), which the media worker applies to the call's SDP answer.
SRTP_HEADER: Final = "X-Sipserver-Srtp"
#: A display-name word in the unquoted form: a token, leniently also non-ASCII (seen in the wild).
_DISPLAY_WORD: Final = re.compile(r"[^\x00-\x20\x7f\"<>,;:\\/\[\]?={}@()]+")


def _find_quote_end(text: str, start: int) -> int:
    """Index of the ``"`` closing the quoted string opened at ``text[start]``, or -1.

    RFC 3261 §25.1: ``quoted-pair = "\\" (%x00-09 / %x0B-0C / %x0E-7F)``.
    """
    i = start + 1
    quote = text.find('"', i)
    while quote >= 0:
        backslash = text.find("\\", i, quote)
        if backslash < 0:
            return quote
        i = backslash + 2  # skip the escaped character
        if i > quote:
            quote = text.find('"', i)  # the quote was escaped: look for the next one
    return -1


def unquote(value: str) -> str:
    """Strip the quotes of an RFC 3261 quoted-string and resolve its escapes.

    A value that is not quoted is returned unchanged.
    """
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    inner = value[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while True:
        backslash = inner.find("\\", i)
        if backslash < 0 or backslash + 1 >= len(inner):
            out.append(inner[i:])
            return "".join(out)
        out.append(inner[i:backslash])
        out.append(inner[backslash + 1])
        i = backslash + 2


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_outside_quotes(text: str, sep: str, *, angle: bool) -> list[str]:
    """Split on ``sep`` except inside quoted strings (and ``<...>`` when ``angle``)."""
    parts: list[str] = []
    start = 0
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _find_quote_end(text, i)
            if end < 0:
                break  # unterminated: the rest is one element
            i = end
        elif angle and c == "<":
            depth += 1
        elif angle and c == ">" and depth:
            depth -= 1
        elif c == sep and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_comma_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1) into stripped elements.

    Commas inside quoted strings and ``<...>`` do not split; empty elements are dropped.
    """
    if "," not in value:
        value = value.strip(" \t")
        return [value] if value else []
    if '"' in value or "<" in value:
        raw = _split_outside_quotes(value, ",", angle=True)
    else:
        raw = value.split(",")
    return [p for p in (r.strip(" \t") for r in raw) if p]


#: Lower-case parameter names seen on nearly every message: no token check needed.
_COMMON_PARAMS: Final = frozenset(
    ("tag", "branch", "rport", "received", "expires", "q", "lr", "transport", "maddr", "ttl")
) | {"user", "method", "+sip.instance", "reg-id", "ob", "alias"}


def parse_params(text: str) -> Params:
    """Parse ``;name=value;flag`` header parameters (RFC 3261 §7.3.1 generic-param).

    Args:
        text: the parameter list, with or without the leading ``;``.

    Returns:
        ``((name, value-or-None), ...)`` with names lower-cased and values raw (quoted values
        keep their quotes; see :func:`unquote`).

    Raises:
        ValueError: a parameter name that is not a token, or an unterminated quoted value.
    """
    params: list[tuple[str, str | None]] = []
    if '"' not in text and " " not in text and "\t" not in text:
        # Fast path: no quoted values and no LWS, so nothing to strip or unquote.
        for part in text.split(";"):
            if not part:
                continue  # leading ';' or an empty element
            name, sep, value = part.partition("=")
            if name not in _COMMON_PARAMS:
                if _TOKEN.fullmatch(name) is None:
                    raise ValueError(f"Invalid parameter {part!r}")
                name = name.lower()
            params.append((name, value if sep else None))
        return tuple(params)
    raw = _split_outside_quotes(text, ";", angle=False) if '"' in text else text.split(";")
    for part in raw:
        name, sep, value = part.partition("=")
        name = name.strip(" \t")
        if not name and not sep and not value.strip(" \t"):
            continue  # leading ';' or an empty element
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"Invalid parameter {part.strip()!r}")
        if not sep:
            params.append((name.lower(), None))
            continue
        value = value.strip(" \t")
        if value.startswith('"') and _find_quote_end(value, 0) != len(value) - 1:
            raise ValueError(f"Unterminated quoted parameter value {value!r}")
        params.append((name.lower(), value))
    return tuple(params)


def format_params(params: Params) -> str:
    """Wire form of parameters: ``;name=value`` / ``;flag`` for each."""
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _param(params: Params, name: str) -> str | None:
    name = name.lower()
    for n, v in params:
        if n == name:
            return v
    return None


def _has_param(params: Params, name: str) -> bool:
    name = name.lower()
    return any(n == name for n, _ in params)


# ------------------------------------------------------------------ header names

#: Canonical spellings; every other spelling maps here case-insensitively.
_CANONICAL_NAMES: Final = (  # noqa: SIM905 - a word list reads better than 88 quoted strings
    "Accept Accept-Contact Accept-Encoding Accept-Language Accept-Resource-Priority Alert-Info "
    "Allow Allow-Events Answer-Mode Authentication-Info Authorization Call-ID Call-Info Contact "
    "Content-Disposition Content-Encoding Content-ID Content-Language Content-Length "
    "Content-Type CSeq Date Diversion Error-Info Event Expires Flow-Timer From Geolocation "
    "History-Info Identity Identity-Info In-Reply-To Join Max-Breadth Max-Forwards MIME-Version "
    "Min-Expires Min-SE Organization P-Asserted-Identity P-Associated-URI P-Called-Party-ID "
    "P-Charging-Vector P-Preferred-Identity P-Visited-Network-ID Path Priority Privacy "
    "Proxy-Authenticate Proxy-Authorization Proxy-Require RAck Reason Record-Route "
    "Refer-Sub Refer-To Referred-By Reject-Contact Remote-Party-ID Replaces Reply-To "
    "Request-Disposition Require Resource-Priority Retry-After Route RSeq Security-Client "
    "Security-Server Security-Verify Server Service-Route Session-Expires SIP-ETag SIP-If-Match "
    "Subject Subscription-State Supported Target-Dialog Timestamp To Unsupported User-Agent "
    "Via Warning WWW-Authenticate"
).split()
#: RFC 3261 §7.3.3 compact forms plus those registered by later RFCs (3265, 3515, 3841, 3892,
#: 4028, 4474, 4538).
_COMPACT: Final = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANON_BY_LOWER: Final = {n.lower(): n for n in _CANONICAL_NAMES} | _COMPACT
#: Exact spelling -> canonical name. Seeded with the common spellings; unknown spellings seen on
#: the wire are added up to _CANON_CACHE_MAX entries (bounded: names are peer-controlled).
_CANON: Final[dict[str, str]] = {n: n for n in _CANONICAL_NAMES}
_CANON.update({n.lower(): n for n in _CANONICAL_NAMES})
_CANON.update({n.upper(): n for n in _CANONICAL_NAMES})
_CANON.update(_COMPACT)
_CANON.update({k.upper(): v for k, v in _COMPACT.items()})
_CANON.update({"Call-Id": "Call-ID", "Cseq": "CSeq", "Www-Authenticate": "WWW-Authenticate"})
_CANON_CACHE_MAX: Final = 4096


def canonical_header_name(name: str) -> str:
    """Canonical spelling of a header name (RFC 3261 §7.3.1: names are case-insensitive).

    Compact forms expand (``v`` -> ``Via``); known names get their registered capitalisation
    (``Call-ID``, ``CSeq``, ``WWW-Authenticate``); unknown ones are Title-Cased.

    Raises:
        ValueError: the name is not an RFC 3261 token.
    """
    canon = _CANON.get(name)
    if canon is not None:
        return canon
    stripped = name.strip(" \t")
    if _TOKEN.fullmatch(stripped) is None:
        raise ValueError(f"Invalid header name {name[:40]!r}")
    low = stripped.lower()
    canon = _CANON_BY_LOWER.get(low)
    if canon is None:
        canon = "-".join(part.capitalize() for part in low.split("-"))
    # A leading SP/HTAB marks a continuation line to the parser: never cache such a spelling.
    if len(_CANON) < _CANON_CACHE_MAX and len(name) <= 64 and name[:1] not in (" ", "\t"):
        _CANON[name] = canon
    return canon


#: Headers whose grammar is a comma-separated list: get_all() splits them (RFC 3261 §7.3.1).
#: Authorization and friends, Date, and unknown headers are never split.
_LIST_HEADERS: Final = frozenset(
    (  # noqa: SIM905
        "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
        "Call-Info Contact Content-Encoding Content-Language Error-Info History-Info In-Reply-To "
        "P-Asserted-Identity P-Associated-URI Path Proxy-Require Record-Route Reject-Contact "
        "Request-Disposition Require Route Security-Client Security-Server Security-Verify "
        "Service-Route Supported Unsupported Via Warning"
    ).split()
)


# ------------------------------------------------------------------ Via


@dataclass(frozen=True, slots=True, init=False)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...``."""

    protocol: str
    """Protocol name and version, e.g. ``SIP/2.0``."""
    transport: str
    """Transport, upper-cased: ``UDP``, ``TCP``, ``TLS``, ``SCTP``, ``WS``, ``WSS``..."""
    host: str
    """sent-by host; IPv6 references keep their brackets."""
    port: int | None = None
    """sent-by port, or None."""
    params: Params = ()
    """Via parameters in order (names lower-cased, values raw)."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        protocol: str,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
    ) -> None:
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse one via-parm (not a comma list; see :meth:`Headers.get_all`).

        LWS is allowed around the ``/`` separators of the sent-protocol (RFC 3261 §20.42).

        Raises:
            ValueError: malformed sent-protocol, sent-by or parameters, or a non-numeric
                ``rport``.
        """
        value = value.strip(" \t")
        semi = value.find(";")
        head = value if semi < 0 else value[:semi]
        if head.startswith("SIP/2.0/"):
            protocol = "SIP/2.0"
            rest = head[8:]
        else:
            name, _, rest = head.partition("/")
            version, sep2, rest = rest.partition("/")
            name = name.strip(" \t")
            version = version.strip(" \t")
            if not sep2 or _TOKEN.fullmatch(name) is None or _TOKEN.fullmatch(version) is None:
                raise ValueError(f"Invalid Via sent-protocol in {value[:60]!r}")
            protocol = f"{name.upper()}/{version}"
            rest = rest.lstrip(" \t")
        parts = rest.split(None, 1)
        if len(parts) != 2 or _TOKEN.fullmatch(parts[0]) is None:
            raise ValueError(f"Invalid Via {value[:60]!r}")
        sent_by = parts[1].rstrip(" \t")
        if " " in sent_by or "\t" in sent_by:
            # RFC 3261 §25.1: COLON = SWS ":" SWS; whitespace anywhere else is an error.
            host_part, colon, port_part = sent_by.rpartition(":")
            if colon:
                sent_by = host_part.rstrip(" \t") + ":" + port_part.lstrip(" \t")
        host, port = split_host_port(sent_by)
        params = parse_params(value[semi + 1 :]) if semi >= 0 else ()
        transport = parts[0].upper()
        # The class by name when cls is Via: mypyc calls the compiled __init__ directly, where
        # cls(...) goes through Python's call protocol (~1 k instructions a parse).
        via = (
            Via(protocol, transport, host, port, params)
            if cls is Via
            else cls(protocol, transport, host, port, params)
        )
        rport = _param(params, "rport")
        if rport is not None and not (ascii_digits(rport) and len(rport) <= 5):
            raise ValueError(f"Invalid rport {rport!r}")
        return via

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (case-insensitive); None if absent or valueless."""
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether parameter ``name`` is present, with or without a value."""
        return _has_param(self.params, name)

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter (RFC 3261 §8.1.1.7), or None."""
        return _param(self.params, "branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter (RFC 3261 §18.2.1), or None."""
        return _param(self.params, "received")

    @property
    def has_rport(self) -> bool:
        """Whether ``rport`` is present (RFC 3581 §4: with or without a value)."""
        return _has_param(self.params, "rport")

    @property
    def rport(self) -> int | None:
        """The ``rport`` port value; None when absent or present without a value."""
        value = _param(self.params, "rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        """``host`` or ``host:port`` as in the sent-by production."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **params: str | int | None) -> Via:
        """Copy with parameters set: replaced in place when present, else appended.

        For the edge (RFC 3261 §18.2.1, RFC 3581 §4):
        ``via.with_params(received="192.0.2.1", rport=5062)``. None sets a valueless flag.
        """
        return replace(self, params=_set_params(self.params, params))


# ------------------------------------------------------------------ name-addr


#: Memo of parsed name-addr values (immutable): To, From and Contact values repeat on every
#: registration refresh. Bounded, cleared when full: peers choose the strings.
_NAME_ADDRS: Final[dict[str, NameAddr]] = {}
_MEMO_MAX: Final = 4096
_MEMO_KEY_MAX: Final = 512  # longer values are parsed every time: bounds the memo's memory


@dataclass(frozen=True, slots=True, init=False)
class NameAddr:
    """``[display-name] <uri> *(;param)`` or a bare ``uri *(;param)`` (RFC 3261 §20.10).

    Used for From, To, Contact, Route, Record-Route, Path, Service-Route values.
    """

    display_name: str | None
    """Display name with quotes and escapes resolved, or None."""
    uri: SipUri
    """The SIP URI."""
    params: Params = ()
    """Header parameters (``tag``, ``expires``, ``q``, ``+sip.instance``...), values raw."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(self, display_name: str | None, uri: SipUri, params: Params = ()) -> None:
        object.__setattr__(self, "display_name", display_name)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "params", params)

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse a name-addr or addr-spec header value.

        In the bare (addr-spec) form every ``;`` parameter is a header parameter, and the URI
        may not contain ``?`` or ``,`` (RFC 3261 §20.10).

        Raises:
            ValueError: unterminated quote or ``<``, a bad display name, or a bad URI.
        """
        cached = _NAME_ADDRS.get(value)
        if cached is not None and cls is NameAddr:
            return cached
        parsed = cls._parse(value.strip(" \t"))
        if len(value) <= _MEMO_KEY_MAX:
            if len(_NAME_ADDRS) >= _MEMO_MAX:
                _NAME_ADDRS.clear()
            _NAME_ADDRS[value] = parsed
        return parsed

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        display: str | None = None
        if value[:1] == "<":
            # Fast path: <uri> with optional parameters.
            gt = value.find(">")
            if gt < 0:
                raise ValueError("Unterminated <URI>")
            uri = parse_uri_uncached(value[1:gt])
            tail = value[gt + 1 :]
            if tail and tail[0] != ";":
                tail = tail.strip(" \t")
                if tail and tail[0] != ";":
                    raise ValueError(f"Unexpected {tail[:30]!r} after URI")
            params: Params = parse_params(tail) if tail else ()
            # The class by name when cls is NameAddr: a direct call of the compiled __init__
            # (see Via.parse).
            return NameAddr(None, uri, params) if cls is NameAddr else cls(None, uri, params)
        if value.startswith('"'):
            end = _find_quote_end(value, 0)
            if end < 0:
                raise ValueError("Unterminated quoted display name")
            display = unquote(value[: end + 1])
            rest = value[end + 1 :].lstrip(" \t")
            if not rest.startswith("<"):
                raise ValueError("Quoted display name must be followed by <URI>")
            lt = 0
        else:
            lt = value.find("<")
            rest = value
            if lt > 0 and ":" in value[:lt]:
                lt = -1  # a '<' after a bare URI (inside a quoted parameter value)
            if lt > 0:
                words = value[:lt].split()
                for word in words:
                    if _DISPLAY_WORD.fullmatch(word) is None:
                        raise ValueError(f"Invalid display name {value[:lt].strip()!r}")
                display = " ".join(words) or None
        if lt >= 0:
            gt = rest.find(">", lt)
            if gt < 0:
                raise ValueError("Unterminated <URI>")
            uri = parse_uri_uncached(rest[lt + 1 : gt])
            tail = rest[gt + 1 :].strip(" \t")
        else:
            semi = value.find(";")
            spec = value if semi < 0 else value[:semi]
            spec = spec.rstrip(" \t")
            if "?" in spec or "," in spec or ">" in spec:
                raise ValueError("A URI with '?' or ',' must be enclosed in <>")
            uri = parse_uri_uncached(spec)
            tail = "" if semi < 0 else value[semi:]
        if tail and not tail.startswith(";"):
            raise ValueError(f"Unexpected {tail[:30]!r} after URI")
        params = parse_params(tail) if tail else ()
        return NameAddr(display, uri, params) if cls is NameAddr else cls(display, uri, params)

    def __str__(self) -> str:
        name = "" if self.display_name is None else _quote(self.display_name) + " "
        return f"{name}<{self.uri}>{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        """Value of header parameter ``name`` (case-insensitive); None if absent/valueless."""
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether header parameter ``name`` is present."""
        return _has_param(self.params, name)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 §19.3), or None."""
        return _param(self.params, "tag")

    def with_params(self, **params: str | int | None) -> NameAddr:
        """Copy with header parameters set (replaced in place, else appended)."""
        return replace(self, params=_set_params(self.params, params))


def _valid_q(q: str) -> bool:
    # RFC 3261 §25.1: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    head, dot, frac = q.partition(".")
    if len(frac) > 3 or (dot and frac and not ascii_digits(frac)):
        return False
    if head == "0":
        return True
    return head == "1" and frac.strip("0") == ""


def parse_contacts(values: list[str]) -> list[NameAddr] | Literal["*"]:
    """Parse every Contact header value of a message (RFC 3261 §20.10, §10.2.2).

    Args:
        values: raw Contact values; comma lists are split here.

    Returns:
        The contacts in order, or ``"*"`` for the wildcard (which must stand alone).

    Raises:
        ValueError: a wildcard mixed with other contacts, a malformed contact, or a ``q``
            outside 0..1 / with more than three decimals.
    """
    items: list[str] = []
    for value in values:
        items.extend(split_comma_list(value))
    if "*" in items:
        if len(items) != 1:
            raise ValueError("Wildcard Contact '*' must be the only contact")
        return "*"
    contacts = [NameAddr.parse(item) for item in items]
    for contact in contacts:
        q = contact.param("q")
        if q is not None and not _valid_q(q):
            raise ValueError(f"Invalid q value {q!r}")
    return contacts
