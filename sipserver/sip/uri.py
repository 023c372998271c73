"""SIP and SIPS URIs (RFC 3261 §19.1), parsed with string methods and character classes.

``SipUri.parse`` first tries the common shape with one scan of its characters
(:func:`_parse_simple`), else splits ``sip:user:password@host:port;params?headers``
with ``find`` and ``partition``; its regular expressions are single character classes. Values
are kept raw (escapes included) so that ``str(SipUri.parse(s))`` gives ``s`` back, except that
parameter names are lower-cased. Comparison per RFC 3261 §19.1.4 is :func:`uri_equal`;
:meth:`SipUri.aor` gives the canonical address-of-record key of §10.3.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import unquote

__all__ = ["SipUri", "ascii_digits", "parse_uri_uncached", "split_host_port", "uri_equal"]

# One negated class, the printable ASCII range minus those delimiters (same set as
# [^\x21-\x7e]|[<>"{}|\\^`], checked over every code point in tests/unit/test_sip_uri.py): a
# single charset test per character instead of two alternatives, 3x faster to search.
#: Characters never allowed unescaped anywhere in a SIP URI (RFC 3261 §25.1: no whitespace,
#: controls, non-ASCII, or the delimiters ``<>"`` and ``{}|\\^``).
_FORBIDDEN: Final = re.compile(r"[^\x21\x23-\x3b\x3d\x3f-\x5b\x5d\x5f\x61-\x7a\x7e]")
#: RFC 3261 §25.1 hostname characters (``_`` tolerated: it is common in the wild).
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.\-]+")
#: RFC 3261 §25.1 token (URI parameter names here; header names, Via, methods and tags in
#: headers.py and message.py, which import it).
_TOKEN: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~\-]+")

# The common shape, which :func:`_parse_simple` reads in one scan:
# ``sip(s):[user@]host[:port][;params]`` with a user of characters _FORBIDDEN allows minus
# ``:;?`` (no password, no telephone-subscriber parameters), a hostname or IPv4 host of
# ``[A-Za-z0-9_.-]``, a port of 1-5 digits and parameters of allowed characters minus ``;?@``.
# As a regular expression (tests/unit/test_sip_uri.py holds the scan to it)::
#
#     ([sS][iI][pP][sS]?):(?:([\x21\x23-\x39\x3d\x41-\x5b\x5d\x5f\x61-\x7a\x7e]+)@)?
#     ([A-Za-z0-9_.\-]+)(?::([0-9]{1,5}))?
#     ((?:;[\x21\x23-\x3a\x3d\x41-\x5b\x5d\x5f\x61-\x7a\x7e]*)*)
#
# A URI of this shape passes every check of the general path, which would split it the same
# way (the tests compare the two on random URIs); anything else, or a port out of range,
# takes the general path.


Params = tuple[tuple[str, str | None], ...]
"""``;name=value`` parameters in order; names lower-cased, value None for a bare flag."""


#: Memo of recently parsed URIs: SipUri is immutable and the same Request-URIs, AORs and
#: contacts recur on every registration refresh. Bounded (cleared when full): peers choose the
#: strings.
_PARSED: Final[dict[str, SipUri]] = {}
_PARSED_MAX: Final = 4096
_PARSED_KEY_MAX: Final = 256  # longer URIs are parsed every time: bounds the memo's memory


def ascii_digits(text: str) -> bool:
    """Non-empty and ASCII digits only: ``text.isascii() and text.isdigit()``, in native code
    compiled (str.isascii is a generic call from compiled code, ~200 instructions). For the
    numbers of SIP's grammar: ports, CSeq, Content-Length, Max-Forwards, Expires, status codes,
    nonce-counts."""
    if not text:
        return False
    for i in range(len(text)):
        c = ord(text[i])
        if c < 48 or c > 57:
            return False
    return True


def _parse_port(text: str) -> int:
    if not (len(text) <= 5 and ascii_digits(text)):
        raise ValueError(f"Invalid port {text!r}")
    port = int(text)
    if not 0 < port <= 65535:
        raise ValueError(f"Port {port} out of range 1-65535")
    return port


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split an RFC 3261 ``hostport`` (``host``, ``host:port``, ``[v6]``, ``[v6]:port``).

    Args:
        text: the hostport, without surrounding whitespace.

    Returns:
        ``(host, port)``; IPv6 hosts keep their brackets, port is None when absent.

    Raises:
        ValueError: empty host, bad IPv6 reference, bad host characters or a port outside
            1-65535.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"Unterminated IPv6 reference in {text!r}")
        try:
            ipaddress.IPv6Address(text[1:end])
        except ValueError:
            raise ValueError(f"Invalid IPv6 reference {text[: end + 1]!r}") from None
        host = text[: end + 1]
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ValueError(f"Unexpected {rest!r} after IPv6 reference")
        return host, _parse_port(rest[1:])
    host, sep, port_text = text.partition(":")
    if not host:
        raise ValueError("Empty host")
    if ":" in port_text:
        raise ValueError(f"IPv6 address must be enclosed in brackets: {text!r}")
    if _HOSTNAME.fullmatch(host) is None:
        raise ValueError(f"Invalid host {host!r}")
    if not sep:
        return host, None
    return host, _parse_port(port_text)


def _parse_uri_params(text: str) -> Params:
    params: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"Invalid URI parameter {part!r}")
        params.append((name.lower(), value if sep else None))
    return tuple(params)


def _parse_uri_headers(text: str) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        if not name or not sep:
            raise ValueError(f"Invalid URI header {part!r}")
        headers.append((name, value))
    return tuple(headers)


def _format_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@dataclass(frozen=True, slots=True, init=False)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1).

    Build one with :meth:`parse`; ``str()`` gives the wire form back.
    """

    scheme: str
    """``sip`` or ``sips`` (lower-cased)."""
    user: str | None
    """User part, raw: escapes (``%XX``) and telephone-subscriber ``;`` params kept as sent."""
    password: str | None
    """Password of the userinfo (deprecated by RFC 3261 §19.1.1, still parsed)."""
    host: str
    """Host name or IP literal as sent; IPv6 references keep their brackets (``[::1]``)."""
    port: int | None = None
    """Port, or None when the URI names none."""
    params: Params = ()
    """URI parameters in order, names lower-cased, values raw."""
    headers: tuple[tuple[str, str], ...] = ()
    """``?name=value&...`` header components, raw."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None = None,
        params: Params = (),
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "headers", headers)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a SIP or SIPS URI.

        Args:
            text: the URI, without angle brackets or surrounding whitespace.

        Returns:
            The parsed URI.

        Raises:
            ValueError: with a message naming the problem (scheme, empty host, port range,
                IPv6 reference, forbidden character, empty user, bad parameter).
        """
        cached = _PARSED.get(text)
        if cached is not None and cls is SipUri:
            return cached
        uri = parse_uri_uncached(text)
        if cls is not SipUri:
            uri = cls(
                uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers
            )
        if len(text) <= _PARSED_KEY_MAX:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[text] = uri
        return uri

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += (":", str(self.port))
        if self.params:
            out.append(_format_params(self.params))
        if self.headers:
            out += ("?", "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name`` (case-insensitive); None if absent or valueless."""
        name = name.lower()
        for n, v in self.params:
            if n == name:
                return v
        return None

    def has_param(self, name: str) -> bool:
        """Whether URI parameter ``name`` (case-insensitive) is present, with or without value."""
        name = name.lower()
        return any(n == name for n, _ in self.params)

    def with_params(self, **params: str | int | None) -> SipUri:
        """Copy with parameters set (replaced in place when present, else appended).

        A None value sets a valueless flag parameter (``;lr``).
        """
        return replace(self, params=_set_params(self.params, params))

    def without_params(self, *names: str) -> SipUri:
        """Copy without the named parameters (case-insensitive)."""
        drop = {n.lower() for n in names}
        return replace(self, params=tuple(p for p in self.params if p[0] not in drop))

    @property
    def host_is_ip(self) -> bool:
        """True when the host is an IPv4 or IPv6 literal."""
        try:
            ipaddress.ip_address(self.host.strip("[]"))
        except ValueError:
            return False
        return True

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        value = self.param("transport")
        return value.lower() if value is not None else None

    def aor(self) -> str:
        """Address-of-record key (RFC 3261 §10.3 step 5).

        ``scheme:user@host`` with scheme and host lower-cased, escapes in the user part decoded,
        and no password, port, parameters or headers.
        """
        host = self.host.lower()
        user = self.user
        if user is None:
            return f"{self.scheme}:{host}"
        if "%" in user:
            user = unquote(user, errors="surrogateescape")
        return f"{self.scheme}:{user}@{host}"


def _set_params(current: Params, updates: dict[str, str | int | None]) -> Params:
    params = list(current)
    for raw_name, raw_value in updates.items():
        name = raw_name.lower()
        value = None if raw_value is None else str(raw_value)
        for i, (n, _) in enumerate(params):
            if n == name:
                params[i] = (name, value)
                break
        else:
            params.append((name, value))
    return tuple(params)


# RFC 3261 §19.1.4: these parameters must match when present in either URI.
_MUST_MATCH: Final = ("user", "ttl", "method", "maddr", "transport")


def _host_key(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return host
    return host


def _unescape(value: str | None) -> str | None:
    if value is None or "%" not in value:
        return value
    return unquote(value, errors="surrogateescape")


def parse_uri_uncached(text: str) -> SipUri:
    """:meth:`SipUri.parse` without its memo, for a caller that keeps its own: a name-addr
    (:meth:`sipserver.sip.headers.NameAddr.parse`) is remembered whole, and a second memo
    lookup and store for the URI inside it cost ~2% of a registration where both miss."""
    uri = _parse_simple(text)
    return uri if uri is not None else _parse_general(text)


def _user_char(c: int) -> bool:
    # ! # $ % & ' ( ) * + , - . / 0-9 = A-Z [ ] _ a-z ~
    return (
        97 <= c <= 122
        or 35 <= c <= 57
        or 65 <= c <= 91
        or c == 33
        or c == 61
        or c == 93
        or c == 95
        or c == 126
    )


def _host_char(c: int) -> bool:
    # A-Z a-z 0-9 _ . -
    return 97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 46 or c == 45 or c == 95


def _param_char(c: int) -> bool:
    # The user characters, ":" and the ";" between parameters.
    return _user_char(c) or c == 58 or c == 59


def _parse_simple(text: str) -> SipUri | None:
    """The URI when it has the common shape (see the grammar above), else None.

    One scan, a character at a time: compiled, ``ord(text[i])`` and integer compares are
    native code, where the regex this replaced was two generic calls (its match and its
    groups: 5.2 k of the 6.5 k instructions a URI took).
    """
    n = len(text)
    if n < 5 or not (text[0] == "s" or text[0] == "S"):
        return None
    if not (text[1] == "i" or text[1] == "I") or not (text[2] == "p" or text[2] == "P"):
        return None
    if text[3] == ":":
        scheme = "sip"
        pos = 4
    elif (text[3] == "s" or text[3] == "S") and text[4] == ":":
        scheme = "sips"
        pos = 5
    else:
        return None
    user: str | None = None
    at = text.find("@", pos)
    if at >= 0:
        # "@" is neither a host, a port nor a parameter character: it ends the user.
        if at == pos:
            return None
        i = pos
        while i < at:
            if not _user_char(ord(text[i])):
                return None
            i += 1
        user = text[pos:at]
        pos = at + 1
    start = pos
    while pos < n and _host_char(ord(text[pos])):
        pos += 1
    if pos == start:
        return None
    host = text[start:pos]
    port: int | None = None
    if pos < n and text[pos] == ":":
        pos += 1
        digits = pos
        while pos < n and 48 <= ord(text[pos]) <= 57:
            pos += 1
        if not 1 <= pos - digits <= 5:
            return None
        port = int(text[digits:pos])
        if port == 0 or port > 65535:
            return None  # the general path names the error
    params: Params = ()
    if pos < n:
        if text[pos] != ";":
            return None
        i = pos + 1
        while i < n:
            if not _param_char(ord(text[i])):
                return None
            i += 1
        params = _parse_uri_params(text[pos + 1 :])
    return SipUri(scheme, user, None, host, port, params, ())


def _parse_general(text: str) -> SipUri:
    """Any SIP or SIPS URI; raises ValueError naming the problem (see SipUri.parse)."""
    scheme, sep, rest = text.partition(":")
    low = scheme.lower()
    if not sep or (low != "sip" and low != "sips"):
        raise ValueError(f"Unsupported URI scheme in {text[:40]!r}")
    if _FORBIDDEN.search(rest) is not None:
        raise ValueError(f"Invalid character in URI {text[:60]!r}")
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise ValueError("Empty user part")
    headers: tuple[tuple[str, str], ...] = ()
    qmark = rest.find("?")
    if qmark >= 0:
        headers = _parse_uri_headers(rest[qmark + 1 :])
        rest = rest[:qmark]
    params: Params = ()
    semi = rest.find(";")
    if semi >= 0:
        params = _parse_uri_params(rest[semi + 1 :])
        rest = rest[:semi]
    host, port = split_host_port(rest)
    return SipUri(low, user, password, host, port, params, headers)


def uri_equal(a: SipUri, b: SipUri) -> bool:
    """Compare two SIP URIs per RFC 3261 §19.1.4.

    Scheme and host compare case-insensitively; user and password case-sensitively after
    decoding escapes; a port present in one URI only makes them differ. The ``user``, ``ttl``,
    ``method``, ``maddr`` and ``transport`` parameters must match when present in either URI;
    any other parameter is compared only when both URIs have it. Header components must be
    present in both and equal.

    Returns:
        True when the URIs are equivalent.
    """
    if a.scheme.lower() != b.scheme.lower():
        return False
    if _unescape(a.user) != _unescape(b.user) or _unescape(a.password) != _unescape(b.password):
        return False
    if _host_key(a.host) != _host_key(b.host) or a.port != b.port:
        return False
    pa = {n: (_unescape(v) or "").lower() if v is not None else None for n, v in a.params}
    pb = {n: (_unescape(v) or "").lower() if v is not None else None for n, v in b.params}
    for name in _MUST_MATCH:
        if (name in pa or name in pb) and pa.get(name, "\0") != pb.get(name, "\0"):
            return False
    for name, value in pa.items():
        if name in pb and pb[name] != value:
            return False
    ha = {n.lower(): _unescape(v) for n, v in a.headers}
    hb = {n.lower(): _unescape(v) for n, v in b.headers}
    return ha == hb
