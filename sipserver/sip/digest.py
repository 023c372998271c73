"""HTTP digest authentication for SIP: RFC 3261 §22.4 with RFC 7616 and RFC 8760 algorithms.

Pure functions and frozen value types, no I/O and no clock: the registrar (server side) and a
future outbound registration client (client side) both build on this module.

Supported algorithms are MD5 and SHA-256 with their ``-sess`` variants (RFC 8760 §2.3 lists
SHA-512-256 too; it is reported as unsupported). Supported quality of protection: ``auth``,
``auth-int`` and the legacy RFC 2069 form without ``qop`` (RFC 2617 §3.2.2.1), which RFC 3261
§22.4 keeps for backwards compatibility.

Strings are hashed as UTF-8 (RFC 7616 §3.4.4 ``charset=UTF-8``; SIP is UTF-8 throughout). The
nonce-count is rendered as 8 lowercase hex digits (RFC 7616 §3.4: ``nc-value = 8LHEX``).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import importlib
import re
from binascii import a2b_hex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sipserver.sip.uri import ascii_digits

__all__ = [
    "DigestAlgorithm",
    "DigestChallenge",
    "DigestCredentials",
    "DigestError",
    "build_authorization",
    "compute_ha1",
    "compute_response",
    "parse_auth_params",
    "verify",
]


class DigestAlgorithm(enum.StrEnum):
    """Digest algorithms (RFC 7616 §3.3, RFC 8760 §2.3), valued by their wire token."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @property
    def is_session(self) -> bool:
        """Whether HA1 is re-keyed per nonce/cnonce pair (the ``-sess`` variants)."""
        return self in (DigestAlgorithm.MD5_SESS, DigestAlgorithm.SHA256_SESS)

    @property
    def digest_size(self) -> int:
        """Length in hex characters of a hash (and of a ``response``) for this algorithm."""
        return 32 if self in (DigestAlgorithm.MD5, DigestAlgorithm.MD5_SESS) else 64

    @classmethod
    def from_token(cls, token: str) -> DigestAlgorithm:
        """Parse an ``algorithm`` parameter value, case-insensitively.

        Args:
            token: The wire value, e.g. ``"SHA-256"`` or ``"md5"``.

        Returns:
            The matching algorithm.

        Raises:
            DigestError: ``"unsupported algorithm <token>"``.
        """
        return _algorithm_from_token(token)


_ALGORITHMS_BY_TOKEN: Final = {a.value.lower(): a for a in DigestAlgorithm}


def _algorithm_from_token(token: str) -> DigestAlgorithm:
    """:meth:`DigestAlgorithm.from_token`, as a module function: compiled code calls it
    directly, where a class method of an enum is a generic Python call."""
    found = _ALGORITHMS_BY_TOKEN.get(token.lower())
    if found is None:
        raise DigestError(f"unsupported algorithm {token}")
    return found


_HashFactory = Callable[..., Any]


def _md5_factory() -> _HashFactory:
    """CPython's own MD5 (the ``_md5`` module hashlib falls back to) when the build has it:
    190 ns a digest input against 370 ns for OpenSSL's through hashlib, whose every call sets
    up and frees an EVP context. Same digest (tests/unit/test_digest.py); a build without it
    (``--without-builtin-hashlib-hashes``) uses hashlib's."""
    try:
        factory: _HashFactory = importlib.import_module("_md5").md5
    except ImportError:
        # usedforsecurity=False keeps MD5 available on FIPS builds; digest mandates it.
        return functools.partial(hashlib.md5, usedforsecurity=False)
    return factory


_MD5: Final = _md5_factory()
_HASH_FACTORIES: Final[dict[DigestAlgorithm, _HashFactory]] = {
    DigestAlgorithm.MD5: _MD5,
    DigestAlgorithm.MD5_SESS: _MD5,
    DigestAlgorithm.SHA256: hashlib.sha256,
    DigestAlgorithm.SHA256_SESS: hashlib.sha256,
}
#: nc values as RFC 7616 writes them, for the counts user agents send (a nonce is answered a
#: few times): a tuple index instead of printf-style formatting (~1.4 k instructions compiled).
_NC_TEXT: Final = tuple("%08x" % n for n in range(256))  # noqa: UP031


def _nc_text(nc: int) -> str:
    """A nonce-count as RFC 7616 §3.4 writes it: 8 lower-case hex digits. Not a format spec in
    an f-string: mypyc builds such a string through str.format (916 ns against 238 ns
    compiled), and f"{nc:08x}" alone is 1.7x dearer than "%08x" %."""
    return _NC_TEXT[nc] if 0 <= nc < 256 else "%08x" % nc  # noqa: UP031


class DigestError(ValueError):
    """A digest header or parameter set is malformed or unsupported.

    The message is a short specific reason ("missing nonce", "bad nc 'xyz'", "unsupported
    algorithm SHA-512-256") fit for logs; it never contains a password.
    """

    @property
    def reason(self) -> str:
        """The short reason text."""
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# Header grammar. RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+"
# / "`" / "'" / "~"); quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE; quoted-pair =
# "\" (%x00-09 / %x0B-0C / %x0E-7F). RFC 3261 §25.3: the challenge and credentials are
# auth-scheme LWS auth-param *(COMMA auth-param). Unquoted values are accepted as any run of
# characters other than whitespace, comma, and quote (some UAs leave uri= unquoted).
# ---------------------------------------------------------------------------------------------
_WS: Final = " \t\r\n"
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNQUOTED_RE: Final = re.compile(r'[^\s,"]+')
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_HEX8_RE: Final = re.compile(r"[0-9A-Fa-f]{8}")
_QOP_VALUES: Final = frozenset({"auth", "auth-int"})
#: The parameters RFC 7616 §3.4 requires in credentials, in the order errors name them.
_REQUIRED_CREDENTIALS: Final = ("username", "realm", "nonce", "uri", "response")


def _skip_ws(value: str, pos: int) -> int:
    end = len(value)
    while pos < end and value[pos] in _WS:
        pos += 1
    return pos


# parse_auth_params runs in three tiers that accept exactly the same language and give the same
# results (checked by hypothesis); a tier that is not sure about its input hands the whole value
# on to the next one, and only the last one raises:
#  1. str.find and slicing (C-level scans, no per-character Python loop, no regex) for the form
#     user agents send: an alphanumeric scheme, one space, then alphanumeric names with `=` and a
#     quoted value without a backslash or a bare value, separated by `,` or `, `, ASCII only.
#  2. One regex match per parameter (the loop runs in C inside each match). The grammar leaves no
#     choice in where a parameter ends (names, bare values and separators are disjoint classes),
#     so the quantifiers are possessive: the engine keeps no backtracking state.
#  3. The strict parser below: the reference grammar, and the path that names the problem.
_SCHEME_RE: Final = re.compile(r"[ \t\r\n]*+([A-Za-z0-9\-.!%*_+`'~]++)(?:[ \t\r\n]++|\Z)")
_PARAM_RE: Final = re.compile(
    r"[ \t\r\n,]*+([A-Za-z0-9\-.!%*_+`'~]++)[ \t\r\n]*+=[ \t\r\n]*+"
    r'(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^\s,"]++))'
    r"[ \t\r\n]*+(?:,[ \t\r\n,]*+|\Z)",
    re.DOTALL,
)


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge or credentials header value into its scheme and parameters.

    ``'Digest a=b, c="d,e"'`` gives ``("Digest", {"a": "b", "c": "d,e"})``. Parameter names
    are lower-cased, quoted strings are unescaped, whitespace (including folded line breaks)
    around names, ``=`` and commas is ignored, and empty list elements (``a=b,,c=d``) are
    skipped (RFC 7235 §7 #rule).

    Args:
        value: The header value, e.g. of WWW-Authenticate or Authorization.

    Returns:
        The scheme exactly as written and a dict of parameters.

    Raises:
        DigestError: On a missing scheme, an unterminated quoted string, a duplicate parameter,
            a parameter without ``=value``, or other text that is not an auth-param list.
    """
    return _parse_auth_params(value, False)


def _digest_params(value: str) -> dict[str, str]:
    """Parameters of a Digest header value; another scheme is reported before its syntax."""
    return _parse_auth_params(value, True)[1]


def _parse_auth_params(value: str, digest_only: bool) -> tuple[str, dict[str, str]]:
    """:func:`parse_auth_params` through the three tiers; with ``digest_only``, a scheme other
    than Digest raises "unsupported auth scheme <scheme>" before the parameters are parsed (e.g.
    Basic with a token68, RFC 7235 §2.1, which is not an auth-param list)."""
    scheme, pos = _split_scheme(value)
    if pos < 0:
        if digest_only:
            m = _TOKEN_RE.match(value, _skip_ws(value, 0))
            if m is not None and m.group().lower() != "digest":
                raise DigestError(f"unsupported auth scheme {m.group()}")
        return _parse_auth_params_strict(value)
    if digest_only and scheme.lower() != "digest":
        raise DigestError(f"unsupported auth scheme {scheme}")
    params = _parse_params_fast(value, pos)
    if params is None:
        params = _parse_params_regex(value, pos)
        if params is None:
            return _parse_auth_params_strict(value)
    return scheme, params


def _split_scheme(value: str) -> tuple[str, int]:
    """The scheme and the offset where its parameters start (tier 1: an ASCII alphanumeric
    scheme and a space; tier 2: ``_SCHEME_RE``), or ``("", -1)`` for the strict parser."""
    space = value.find(" ")
    if space > 0:
        scheme = value[:space]
        if scheme.isalnum() and scheme.isascii():
            return scheme, space + 1
    m = _SCHEME_RE.match(value)
    if m is None:
        return "", -1
    return m.group(1), m.end()


def _parse_params_fast(value: str, pos: int) -> dict[str, str] | None:
    """Tier 1: the parameters from ``pos`` on (where the strict parser would expect the next
    parameter), or None when the value is not in the common form this tier is sure about.

    Sure means: the value is ASCII without a backslash (no quoted-pair to unescape), every name
    is alphanumeric and directly followed by ``=``, a quoted value is directly followed by ``,``
    or the end, a bare value is a non-empty run of printable characters other than space and
    quote up to the next ``,`` or the end, each ``,`` is followed by at most one space, and no
    name repeats. Everything else (whitespace around names and ``=``, tabs, folded lines, empty
    list elements, other token characters, errors) is left to the next tiers.
    """
    if not value.isascii() or "\\" in value:
        return None
    end = len(value)
    params: dict[str, str] = {}
    count = 0
    while pos < end:
        eq = value.find("=", pos)
        if eq < 0:
            return None
        name = value[pos:eq]
        if not name.isalnum():
            return None
        name = name.lower()
        count += 1
        start = eq + 1
        if start < end and value[start] == '"':
            pos = value.find('"', start + 1)
            if pos < 0:
                return None
            params[name] = value[start + 1 : pos]
            pos += 1
        else:
            pos = value.find(",", start)
            if pos < 0:
                pos = end
            bare = value[start:pos]
            # ASCII: printable excludes every \s character but the space.
            if not bare.isalnum() and (
                not bare or '"' in bare or " " in bare or not bare.isprintable()
            ):
                return None
            params[name] = bare
        if pos < end:
            if value[pos] != ",":
                return None
            pos += 1
            if pos < end and value[pos] == " ":
                pos += 1
    # A repeated name overwrote its first value: one size check instead of a lookup per name.
    return params if len(params) == count else None


def _parse_params_regex(value: str, pos: int) -> dict[str, str] | None:
    """Tier 2: the parameters from ``pos`` on, one ``_PARAM_RE`` match each, or None when a
    parameter does not match or repeats (the strict parser then accepts it too or raises)."""
    end = len(value)
    params: dict[str, str] = {}
    match = _PARAM_RE.match
    while pos < end:
        p = match(value, pos)
        if p is None:
            return None
        name, quoted, bare = p.groups()
        name = name.lower()
        if name in params:
            return None
        if quoted is None:
            params[name] = bare
        elif "\\" in quoted:
            params[name] = _ESCAPE_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = p.end()
    return params


def _parse_auth_params_strict(value: str) -> tuple[str, dict[str, str]]:
    """:func:`parse_auth_params`, one character class at a time: the reference grammar, and
    the path that names the problem in its DigestError."""
    pos = _skip_ws(value, 0)
    m = _TOKEN_RE.match(value, pos)
    if m is None:
        raise DigestError("missing auth scheme")
    scheme = m.group()
    pos = m.end()
    end = len(value)
    params: dict[str, str] = {}
    if pos < end and value[pos] not in _WS:
        raise DigestError(f"unexpected {value[pos]!r} after auth scheme")
    while True:
        # Skip separators: whitespace and empty list elements.
        while pos < end and (value[pos] in _WS or value[pos] == ","):
            pos += 1
        if pos >= end:
            return scheme, params
        m = _TOKEN_RE.match(value, pos)
        if m is None:
            raise DigestError(f"expected parameter name at offset {pos}")
        name = m.group().lower()
        pos = _skip_ws(value, m.end())
        if pos >= end or value[pos] != "=":
            raise DigestError(f"parameter {name} has no value")
        pos = _skip_ws(value, pos + 1)
        if pos < end and value[pos] == '"':
            q = _QUOTED_RE.match(value, pos)
            if q is None:
                raise DigestError(f"unterminated quoted string in {name}")
            param = _ESCAPE_RE.sub(r"\1", q.group(1))
            pos = q.end()
        else:
            u = _UNQUOTED_RE.match(value, pos)
            if u is None:
                raise DigestError(f"parameter {name} has no value")
            param = u.group()
            pos = u.end()
        if name in params:
            raise DigestError(f"duplicate parameter {name}")
        params[name] = param
        pos = _skip_ws(value, pos)
        if pos < end and value[pos] != ",":
            raise DigestError(f"unexpected {value[pos]!r} after parameter {name}")


def _quote(value: str) -> str:
    """Render a quoted-string (RFC 3261 §25.1), escaping backslash and double quote."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_hex(text: str) -> bool:
    """True when ``text`` is hex digits (either case) in pairs; "" counts as hex."""
    # a2b_hex is strict (no sign, prefix, underscore or space; ASCII only, else ValueError, of
    # which binascii.Error is one) and one direct call: a regex fullmatch is a generic method
    # call from compiled code, ~4.5 k instructions on a 32-digit response against ~0.5 k.
    try:
        a2b_hex(text)
    except ValueError:
        return False
    return True


def _check_header_safe(field: str, value: str | None) -> None:
    # A CR, LF or NUL inside a header value would split or truncate the SIP message.
    if value is not None and ("\r" in value or "\n" in value or "\x00" in value):
        raise DigestError(f"{field} contains a control character")


def _parse_qop_options(qop: str) -> list[str]:
    return [option.strip().lower() for option in qop.split(",") if option.strip()]


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One digest challenge of a 401 WWW-Authenticate or 407 Proxy-Authenticate header.

    RFC 7616 §3.3. A server offering several algorithms sends one challenge per algorithm, in
    order of preference (RFC 8760 §2.4).
    """

    realm: str
    """Protection space shown to the user; part of HA1."""
    nonce: str
    """Server-issued opaque value the client must echo."""
    algorithm: DigestAlgorithm
    """Hash algorithm the client must use for this challenge."""
    qop: str | None = "auth"
    """Quality-of-protection options, comma separated ("auth", "auth,auth-int"); None for the
    legacy RFC 2069 form."""
    opaque: str | None = None
    """Server data the client must echo unchanged."""
    stale: bool = False
    """True when the previous request failed only because its nonce expired (RFC 7616 §3.3):
    the client retries with the new nonce without prompting for a password."""

    def __post_init__(self) -> None:
        if not self.realm:
            raise DigestError("empty realm")
        if not self.nonce:
            raise DigestError("empty nonce")
        for field, value in (("realm", self.realm), ("nonce", self.nonce), ("opaque", self.opaque)):
            _check_header_safe(field, value)
        if self.qop is not None:
            options = _parse_qop_options(self.qop)
            if not options or any(o not in _QOP_VALUES for o in options):
                raise DigestError(f"bad qop {self.qop!r}")

    def to_header(self) -> str:
        """Render the header value.

        Returns:
            e.g. ``'Digest realm="sip.example.com", nonce="...", algorithm=SHA-256, qop="auth"'``
            followed by ``', stale=true'`` and ``', opaque="..."'`` when set.
        """
        parts = [
            f"Digest realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"algorithm={self.algorithm.value}",
        ]
        if self.qop is not None:
            parts.append(f"qop={_quote(self.qop)}")
        if self.stale:
            parts.append("stale=true")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return ", ".join(parts)

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        """Parse a WWW-Authenticate or Proxy-Authenticate header value (client side).

        Args:
            value: The header value.

        Returns:
            The challenge; ``algorithm`` defaults to MD5 when absent (RFC 3261 §22.4).

        Raises:
            DigestError: If the scheme is not Digest or realm/nonce is missing or bad.
        """
        params = _digest_params(value)
        for required in ("realm", "nonce"):
            if required not in params:
                raise DigestError(f"missing {required}")
        algorithm_token = params.get("algorithm")
        algorithm = (
            DigestAlgorithm.MD5
            if algorithm_token is None
            else _algorithm_from_token(algorithm_token)
        )
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=algorithm,
            qop=params.get("qop"),
            opaque=params.get("opaque"),
            stale=params.get("stale", "false").lower() == "true",
        )


def _nc_from_text(nc_text: str | None) -> int | None:
    """The ``nc`` parameter's value (8 hex digits, not 0), None when absent."""
    if nc_text is None:
        return None
    # Eight decimal digits (what user agents send) need no regex: they are hex digits.
    if not (len(nc_text) == 8 and ascii_digits(nc_text)) and not _HEX8_RE.fullmatch(nc_text):
        raise DigestError(f"bad nc {nc_text!r}")
    nc = int(nc_text, 16)
    if nc == 0:
        raise DigestError(f"bad nc {nc_text!r}")
    return nc


def _name_at(text: str, pos: int, name: str) -> bool:
    """Whether ``text`` holds ``name`` (lower-case ASCII letters) at ``pos``, in any case.

    ``ord(c) | 0x20`` is the lower case of an ASCII letter and maps no other character to one.
    The caller has checked that ``len(name)`` characters follow ``pos``.
    """
    # A loop, not all() over a generator: compiled, this is native code.
    for i in range(len(name)):
        lowered = ord(text[pos + i]) | 0x20
        if lowered != ord(name[i]):
            return False
    return True


def _credentials_fast(value: str, pos: int) -> DigestCredentials | None:
    """:meth:`DigestCredentials.parse` of the parameters from ``pos`` on, for the form user
    agents send: what :func:`_parse_params_fast` (tier 1) accepts, naming only the parameters
    of credentials, each at most once, all five required ones present. Each value goes into its
    field as it is read, with no dict of parameters in between (two thirds of the cost of
    parsing an Authorization header, callgrind). None when the value is not of that form: the
    tiers then parse it (and raise its errors, which this path leaves to them). Where this
    returns credentials or raises, the tiers return equal ones or raise the same error
    (tests/unit/test_digest.py holds the two to that on generated headers).
    """
    if not value.isascii() or "\\" in value:
        return None
    end = len(value)
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm_token: str | None = None
    qop: str | None = None
    nc_text: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    while pos < end:
        name = pos
        eq = value.find("=", pos)
        if eq < 0:
            return None
        size = eq - name
        start = eq + 1
        if start < end and value[start] == '"':
            pos = value.find('"', start + 1)
            if pos < 0:
                return None
            item = value[start + 1 : pos]
            pos += 1
        else:
            pos = value.find(",", start)
            if pos < 0:
                pos = end
            item = value[start:pos]
            # As tier 1: a non-empty run of printable characters but space and quote.
            if not item.isalnum() and (
                not item or '"' in item or " " in item or not item.isprintable()
            ):
                return None
        if size < 2:
            return None
        first = ord(value[name]) | 0x20
        # Each name by its length and first letter, then letter by letter; a repeat or any
        # other name (userhash, an extension) leaves the value to the tiers. A branch per name,
        # not a table of names and a list of fields: compiled, the table's lookups box their
        # ints and cost ~8.5 k instructions a registration more (callgrind).
        if size == 8 and first == 117 and _name_at(value, name, "username"):  # u
            if username is not None:
                return None
            username = item
        elif size == 5 and first == 114 and _name_at(value, name, "realm"):  # r
            if realm is not None:
                return None
            realm = item
        elif size == 5 and first == 110 and _name_at(value, name, "nonce"):  # n
            if nonce is not None:
                return None
            nonce = item
        elif size == 3 and first == 117 and _name_at(value, name, "uri"):  # u
            if uri is not None:
                return None
            uri = item
        elif size == 8 and first == 114 and _name_at(value, name, "response"):  # r
            if response is not None:
                return None
            response = item
        elif size == 9 and first == 97 and _name_at(value, name, "algorithm"):  # a
            if algorithm_token is not None:
                return None
            algorithm_token = item
        elif size == 3 and first == 113 and _name_at(value, name, "qop"):  # q
            if qop is not None:
                return None
            qop = item
        elif size == 2 and first == 110 and _name_at(value, name, "nc"):  # n
            if nc_text is not None:
                return None
            nc_text = item
        elif size == 6 and first == 99 and _name_at(value, name, "cnonce"):  # c
            if cnonce is not None:
                return None
            cnonce = item
        elif size == 6 and first == 111 and _name_at(value, name, "opaque"):  # o
            if opaque is not None:
                return None
            opaque = item
        else:
            return None
        if pos < end:
            if value[pos] != ",":
                return None
            pos += 1
            if pos < end and value[pos] == " ":
                pos += 1
    if username is None or realm is None or nonce is None or uri is None or response is None:
        return None
    # What parse() does with the parameters, in its order (the same errors first).
    algorithm = (
        DigestAlgorithm.MD5 if algorithm_token is None else _algorithm_from_token(algorithm_token)
    )
    if qop is not None:
        qop = qop.lower()
    return DigestCredentials(
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        qop,
        _nc_from_text(nc_text),
        cnonce,
        opaque,
    )


@dataclass(frozen=True, slots=True, init=False)
class DigestCredentials:
    """The digest response of an Authorization or Proxy-Authorization header (RFC 7616 §3.4).

    Construction validates the combination: with ``qop``, ``nc`` and ``cnonce`` are required;
    ``-sess`` algorithms require ``cnonce``; ``response`` is hex of the algorithm's length.
    """

    username: str
    """User name as sent; looked up by the server."""
    realm: str
    """Realm the client answered; must be the server's."""
    nonce: str
    """Nonce echoed from the challenge."""
    uri: str
    """The ``uri`` parameter, normally the Request-URI (RFC 7616 §3.4.6)."""
    response: str
    """Hex digest computed by the client, stored lower-cased."""
    algorithm: DigestAlgorithm = DigestAlgorithm.MD5
    """Algorithm used; MD5 when the parameter is absent (RFC 3261 §22.4)."""
    qop: str | None = None
    """Chosen quality of protection ("auth" or "auth-int"), or None for the legacy form."""
    nc: int | None = None
    """Nonce count (sent as 8 hex digits), required with qop."""
    cnonce: str | None = None
    """Client nonce, required with qop and with ``-sess`` algorithms."""
    opaque: str | None = None
    """Opaque value echoed from the challenge."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        username: str,
        realm: str,
        nonce: str,
        uri: str,
        response: str,
        algorithm: DigestAlgorithm = DigestAlgorithm.MD5,
        qop: str | None = None,
        nc: int | None = None,
        cnonce: str | None = None,
        opaque: str | None = None,
    ) -> None:
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "realm", realm)
        object.__setattr__(self, "nonce", nonce)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "qop", qop)
        object.__setattr__(self, "nc", nc)
        object.__setattr__(self, "cnonce", cnonce)
        object.__setattr__(self, "opaque", opaque)
        self._validate()

    def _validate(self) -> None:
        if self.qop is not None:
            if self.qop not in _QOP_VALUES:
                raise DigestError(f"bad qop {self.qop!r}")
            if self.nc is None:
                raise DigestError("missing nc (required with qop)")
            if self.cnonce is None:
                raise DigestError("missing cnonce (required with qop)")
        elif self.nc is not None:
            raise DigestError("nc without qop")
        if self.nc is not None and not 1 <= self.nc <= 0xFFFFFFFF:
            raise DigestError(f"bad nc {self.nc}")
        if self.algorithm.is_session and self.cnonce is None:
            raise DigestError(f"missing cnonce (required by {self.algorithm.value})")
        if len(self.response) != self.algorithm.digest_size or not _is_hex(self.response):
            raise DigestError(f"bad response for {self.algorithm.value}")
        lowered = self.response.lower()
        if lowered != self.response:
            # Frozen dataclass: normalise once at construction (RFC 7616: response is LHEX).
            object.__setattr__(self, "response", lowered)
        _check_header_safe("username", self.username)
        _check_header_safe("realm", self.realm)
        _check_header_safe("nonce", self.nonce)
        _check_header_safe("uri", self.uri)
        _check_header_safe("cnonce", self.cnonce)
        _check_header_safe("opaque", self.opaque)

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        """Parse an Authorization or Proxy-Authorization header value.

        Args:
            value: The header value; the scheme must be Digest (any case).

        Returns:
            The credentials.

        Raises:
            DigestError: Naming the problem, e.g. "missing nonce", "bad nc '12'",
                "unsupported algorithm SHA-512-256", "unsupported auth scheme Basic".
        """
        scheme, pos = _split_scheme(value)
        if pos > 0 and len(scheme) == 6 and _name_at(scheme, 0, "digest"):
            fast = _credentials_fast(value, pos)
            if fast is not None:
                return fast
        return _credentials_general(value)

    def to_header(self) -> str:
        """Render the header value (client side), parameters in RFC 7616 §3.4 order.

        Returns:
            e.g. ``'Digest username="bob", realm="...", nonce="...", uri="sip:...",
            response="...", algorithm=SHA-256, cnonce="...", qop=auth, nc=00000001'``.
        """
        parts = [
            f"Digest username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm.value}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={_nc_text(self.nc)}")
        return ", ".join(parts)


def _credentials_general(value: str) -> DigestCredentials:
    """:meth:`DigestCredentials.parse` through :func:`_digest_params` (its three tiers): every
    form the grammar allows, and the errors."""
    params = _digest_params(value)
    # Five `in` checks, not a loop over a tuple of names: mypyc iterates a tuple literal
    # through the generic iterator protocol (~1.5 k instructions a request).
    if not (
        "username" in params
        and "realm" in params
        and "nonce" in params
        and "uri" in params
        and "response" in params
    ):
        missing = next(n for n in _REQUIRED_CREDENTIALS if n not in params)
        raise DigestError(f"missing {missing}")
    if params.get("userhash", "false").lower() == "true":
        # RFC 7616 §3.4.4; not used by SIP user agents.
        raise DigestError("userhash not supported")
    algorithm_token = params.get("algorithm")
    algorithm = (
        DigestAlgorithm.MD5 if algorithm_token is None else _algorithm_from_token(algorithm_token)
    )
    qop = params.get("qop")
    if qop is not None:
        qop = qop.lower()
    # The class by name, arguments by position: a direct call of the compiled __init__
    # (cls(...) with keywords goes through Python's call protocol, half its cost).
    return DigestCredentials(
        params["username"],
        params["realm"],
        params["nonce"],
        params["uri"],
        params["response"],
        algorithm,
        qop,
        _nc_from_text(params.get("nc")),
        params.get("cnonce"),
        params.get("opaque"),
    )


def _hash(algorithm: DigestAlgorithm, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # One positional argument: a call with a keyword goes through argument parsing (~1 k
    # instructions); the MD5 factory says usedforsecurity=False itself where it matters.
    digest: str = _HASH_FACTORIES[algorithm](raw).hexdigest()
    return digest


def compute_ha1(username: str, realm: str, password: str, algorithm: DigestAlgorithm) -> str:
    """Compute H(A1) = H(username ":" realm ":" password) (RFC 7616 §3.4.2).

    For ``-sess`` algorithms this is the base value; the session HA1,
    H(base ":" nonce ":" cnonce), is derived by :func:`compute_response`, so a server can store
    one HA1 per user and algorithm family.

    Args:
        username: User name.
        realm: Realm.
        password: Plain password.
        algorithm: Algorithm whose hash to use.

    Returns:
        Lowercase hex digest.
    """
    return _hash(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1: str,
    algorithm: DigestAlgorithm,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: int | None,
    cnonce: str | None,
    body: bytes = b"",
) -> str:
    """Compute the ``response`` parameter.

    With qop (RFC 7616 §3.4.1): KD(HA1, nonce ":" nc ":" cnonce ":" qop ":" H(A2)), where
    A2 = method ":" uri for ``auth`` and method ":" uri ":" H(body) for ``auth-int``
    (RFC 7616 §3.4.3). Without qop (RFC 2617 §3.2.2.1, RFC 2069): KD(HA1, nonce ":" H(A2)).

    Args:
        ha1: Base H(A1) from :func:`compute_ha1`.
        algorithm: Algorithm; ``-sess`` variants re-key HA1 with nonce and cnonce
            (RFC 7616 §3.4.2).
        method: SIP method of the request, e.g. ``"REGISTER"``.
        uri: The ``uri`` parameter value.
        nonce: Server nonce.
        qop: ``"auth"``, ``"auth-int"`` or None.
        nc: Nonce count, required with qop.
        cnonce: Client nonce, required with qop and with ``-sess``.
        body: Message body, hashed for ``auth-int`` only.

    Returns:
        Lowercase hex digest.

    Raises:
        DigestError: On an unknown qop or a missing nc/cnonce.
    """
    if algorithm.is_session:
        if cnonce is None:
            raise DigestError(f"missing cnonce (required by {algorithm.value})")
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop is None:
        ha2 = _hash(algorithm, f"{method}:{uri}")
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if qop == "auth":
        ha2 = _hash(algorithm, f"{method}:{uri}")
    elif qop == "auth-int":
        ha2 = _hash(algorithm, f"{method}:{uri}:{_hash(algorithm, body)}")
    else:
        raise DigestError(f"bad qop {qop!r}")
    if nc is None:
        raise DigestError("missing nc (required with qop)")
    if cnonce is None:
        raise DigestError("missing cnonce (required with qop)")
    return _hash(algorithm, f"{ha1}:{nonce}:{_nc_text(nc)}:{cnonce}:{qop}:{ha2}")


def verify(credentials: DigestCredentials, *, ha1: str, method: str, body: bytes = b"") -> bool:
    """Check a client's response against the expected one in constant time.

    Args:
        credentials: Parsed credentials.
        ha1: Base H(A1) of the user for ``credentials.algorithm``.
        method: SIP method of the request carrying the credentials.
        body: Request body (used with ``qop=auth-int``).

    Returns:
        True when the response matches.
    """
    try:
        expected = compute_response(
            ha1=ha1,
            algorithm=credentials.algorithm,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=credentials.qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            body=body,
        )
    except DigestError:
        return False
    return hmac.compare_digest(expected, credentials.response)


def build_authorization(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """Answer a challenge (client side): the Authorization header value.

    Chooses ``qop=auth`` when offered, else ``auth-int``; uses the legacy form when the
    challenge has no qop.

    Args:
        challenge: The challenge to answer.
        username: User name.
        password: Plain password.
        method: SIP method of the request being authorized.
        uri: Request-URI of that request.
        cnonce: Client nonce (random, chosen by the caller).
        nc: Nonce count: 1 for the first request with this nonce, then 2, 3...
        body: Request body (only hashed for ``auth-int``).

    Returns:
        The header value.

    Raises:
        DigestError: If the challenge offers no supported qop.
    """
    qop: str | None = None
    if challenge.qop is not None:
        options = _parse_qop_options(challenge.qop)
        if "auth" in options:
            qop = "auth"
        elif "auth-int" in options:
            qop = "auth-int"
        else:  # pragma: no cover - DigestChallenge validation prevents it
            raise DigestError(f"no supported qop in {challenge.qop!r}")
    use_cnonce = qop is not None or challenge.algorithm.is_session
    ha1 = compute_ha1(username, challenge.realm, password, challenge.algorithm)
    response = compute_response(
        ha1=ha1,
        algorithm=challenge.algorithm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc if qop is not None else None,
        cnonce=cnonce if use_cnonce else None,
        body=body,
    )
    credentials = DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc if qop is not None else None,
        cnonce=cnonce if use_cnonce else None,
        opaque=challenge.opaque,
    )
    return credentials.to_header()
