"""Registrar authentication: nonces, digest verification, brute-force bans.

Sans-I/O like the rest of the core: time is the ``now`` argument and nothing here touches
sockets. The edge passes the event loop's monotonic ``loop.time()``: a wall clock stepped back
must not lift a ban early or make an old nonce fresh again, nor one stepped forward expire every
nonce at once. Nonces are signed with a secret made per process, so none outlives it; edges that
come to share a secret across hosts will need a clock they share.

- :class:`NonceManager` issues stateless MAC-signed nonces (keyed BLAKE2b) and tracks nonce-counts
  (RFC 7616 §3.4) in bounded memory.
- :class:`DigestAuthenticator` builds the challenge and turns an Authorization header into an
  :class:`AuthResult` (RFC 3261 §22.4).
- :class:`FailureTracker` bans sources after repeated failures, fail2ban style.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import math
import os
import re
import struct
from binascii import a2b_base64, b2a_base64
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hmac import compare_digest
from typing import Final
from urllib.parse import unquote

from sipserver.sip.digest import (
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    compute_ha1,
    verify,
)

__all__ = [
    "AuthOutcome",
    "AuthResult",
    "DigestAuthenticator",
    "FailureTracker",
    "NonceManager",
    "NonceStatus",
]


class NonceStatus(enum.Enum):
    """Verdict of :meth:`NonceManager.check`."""

    VALID = enum.auto()
    """Issued by us, fresh, and (with a nonce-count) the count is new."""
    STALE = enum.auto()
    """Issued by us but expired, or no longer tracked: re-challenge with ``stale=true``."""
    INVALID = enum.auto()
    """Not a nonce we issued (bad encoding or tag)."""
    REPLAY = enum.auto()
    """Fresh, but the nonce-count is not above the last one accepted for this nonce."""


# Nonce layout, before url-safe base64: issue time (IEEE 754 double, big endian) | random |
# 16-byte keyed BLAKE2b tag (RFC 7693 keyed mode: a MAC, one C call through hashlib) over the
# first two fields, with a personalisation string as the domain. 8 + 12 + 16 = 36 bytes = 48
# base64 characters without padding.
_NONCE_DOMAIN: Final = b"sipserver nonce2"  # BLAKE2b personalisation: at most 16 bytes
_TIME: Final = struct.Struct(">d")
_RANDOM_LEN: Final = 12
_TAG_LEN: Final = 16
_BODY_LEN: Final = _TIME.size + _RANDOM_LEN
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{48}")
_INF: Final = math.inf
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_RECENT_NONCES: Final = 8192
"""Nonces a :class:`NonceManager` remembers having issued (or verified), the oldest leaving
first: two seconds' worth of challenges at 4,000 a second, while an answer comes back within a
round trip."""


class _RandomPool:
    """``os.urandom`` drawn 4 KiB at a time and handed out in slices.

    The same kernel CSPRNG bytes, one ``getrandom`` system call per ~340 nonces instead of one
    per 401. A forked child drops the parent's unread bytes, so two processes never hand out
    the same ones. One thread at a time, like :class:`NonceManager` (the edge's event loop).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self.drop)

    def drop(self) -> None:
        """Forget the unread bytes (the next take draws afresh)."""
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """``n`` fresh random bytes (n at most the pool's size)."""
        pos = self._pos
        end = pos + n
        if end > len(self._buf):
            self._buf = os.urandom(self._size)
            pos, end = 0, n
        self._pos = end
        return self._buf[pos:end]


_RANDOM: Final = _RandomPool()


class NonceManager:
    """Issues and checks digest nonces.

    Nonces are stateless and unforgeable: each carries its issue time and random bytes, signed
    with keyed BLAKE2b (a MAC, RFC 7693 §2.5) under ``secret``, so any worker or edge sharing
    the secret can check a nonce another one issued. Issuing stores nothing a check depends
    on: the last :data:`_RECENT_NONCES` nonces are cached with their issue times only to spare
    the tag check of the answers to recent challenges.

    Nonce-count replay protection (RFC 7616 §3.4) needs state: the last accepted ``nc`` per
    nonce is kept in an LRU of at most ``max_tracked`` entries, only for unexpired nonces. When
    the LRU is full the least recently used nonce is evicted and the *eviction horizon* (the
    latest issue time of any evicted, unexpired nonce) moves forward. A nonce issued at or
    before the horizon that is not tracked may have been evicted, so :meth:`check` reports it
    STALE rather than accepting a count it can no longer verify: the client is re-challenged
    with ``stale=true`` and retries transparently with a fresh nonce. Legitimate fresh nonces
    are therefore only inconvenienced, never replayable, when the table overflows.

    Tracking is per process: edges sharing a secret do not share nonce-counts, so a count
    replayed to a different edge is accepted there once (as without tracking).
    """

    def __init__(
        self,
        secret: bytes,
        *,
        ttl: float,
        max_tracked: int = 100_000,
        random_bytes: Callable[[int], bytes] = _RANDOM.take,
    ) -> None:
        """Create a nonce manager.

        Args:
            secret: MAC key, 16 to 64 bytes (BLAKE2b's key size); share it between edges that
                must accept each other's nonces.
            ttl: Seconds a nonce stays fresh.
            max_tracked: Maximum nonces whose nonce-count is remembered.
            random_bytes: Source of nonce randomness (injectable for tests).

        Raises:
            ValueError: On a short secret or a non-positive ttl/max_tracked.
        """
        if not 16 <= len(secret) <= 64:
            raise ValueError("nonce secret must be 16 to 64 bytes")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        # Keyed once; each tag copies it (half the cost of keying a new one per nonce).
        self._mac = hashlib.blake2b(digest_size=_TAG_LEN, key=secret, person=_NONCE_DOMAIN)
        self._ttl = float(ttl)
        self._max_tracked = max_tracked
        self._random_bytes = random_bytes
        # nonce -> (issue time, last accepted nc), least recently used first.
        self._tracked: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._horizon = -math.inf
        # The nonces issued (or verified) last and their issue times, a cache in front of the
        # tag check: the answer to a challenge comes back within a round trip, and finding its
        # nonce here spares decoding it and recomputing its tag (~11 k instructions of every
        # registration). Not state a nonce depends on: one that has left the ring (or that
        # another edge issued) is verified by its tag, as always. A ring of fixed size and a
        # dict; each issue evicts the oldest.
        self._recent: dict[str, float] = {}
        self._ring: list[str] = [""] * _RECENT_NONCES
        self._ring_next = 0

    @property
    def ttl(self) -> float:
        """Seconds a nonce stays fresh."""
        return self._ttl

    @property
    def tracked_count(self) -> int:
        """Number of nonces whose nonce-count is currently remembered."""
        return len(self._tracked)

    def _tag(self, body: bytes) -> bytes:
        # Keyed BLAKE2b is a MAC by construction (no HMAC nesting needed) and one C call; the
        # hmac module's Python wrapper cost ~3x more per nonce (bench/README.md, regfast).
        mac = self._mac.copy()
        mac.update(body)
        return mac.digest()

    def issue(self, *, now: float) -> str:
        """Issue a fresh nonce.

        Args:
            now: Current time.

        Returns:
            48 url-safe base64 characters.
        """
        body = _TIME.pack(now) + self._random_bytes(_RANDOM_LEN)
        # base64.urlsafe_b64encode, without its Python wrapper (the 401 hot path).
        encoded = b2a_base64(body + self._tag(body), newline=False)
        nonce = encoded.translate(_TO_URLSAFE).decode("ascii")
        if -_INF < now < _INF:  # what the tag check accepts; a double packs and unpacks exactly
            self._remember(nonce, now)
        return nonce

    def _remember(self, nonce: str, issued: float) -> None:
        """Put ``nonce`` in the ring of recent nonces, in place of the oldest."""
        ring = self._ring
        slot = self._ring_next
        recent = self._recent
        oldest = ring[slot]
        if oldest:
            # A nonce issued twice (the same random bytes in the same instant: not in
            # practice) holds one entry and two slots; the entry goes with the older slot.
            recent.pop(oldest, None)
        ring[slot] = nonce
        recent[nonce] = issued
        slot += 1
        self._ring_next = 0 if slot == _RECENT_NONCES else slot

    def _issued_at(self, nonce: str) -> float | None:
        """Issue time of a nonce we signed, or None when it is not one."""
        issued_recently = self._recent.get(nonce)
        if issued_recently is not None:
            return issued_recently
        # urlsafe_b64decode silently drops characters outside the alphabet: check them first.
        if not _NONCE_RE.fullmatch(nonce):
            return None
        # bytes.translate: one table lookup a byte (str.translate with a dict raised and caught
        # a KeyError for every character it left alone). The regex above made it ASCII.
        # Functions imported by name (here and below): from compiled code a module attribute is
        # a generic attribute lookup on every call, a module global a dictionary read.
        raw = a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE))
        body, tag = raw[:_BODY_LEN], raw[_BODY_LEN:]
        if not compare_digest(tag, self._tag(body)):
            return None
        issued: float = _TIME.unpack_from(body)[0]
        if not -_INF < issued < _INF:  # finite (NaN compares false), in native float compares
            return None
        # check() and record() of one request look at the same nonce: its tag is checked once.
        self._remember(nonce, issued)
        return issued

    def check(self, nonce: str, nc: int | None, *, now: float, commit: bool = True) -> NonceStatus:
        """Check a nonce and nonce-count from a client's credentials.

        Args:
            nonce: The ``nonce`` parameter.
            nc: The nonce-count, or None for the legacy form without qop (accepted while the
                nonce is fresh, with no replay protection).
            now: Current time.
            commit: Record ``nc`` as the last seen count when VALID. Pass False to check first
                and call :meth:`record` only once the response has been verified.

        Returns:
            INVALID for a nonce we did not issue (or one issued more than ``ttl`` in the
            future: clocks disagree beyond reason); STALE when older than ``ttl`` or possibly
            evicted from tracking; REPLAY when ``nc`` is not strictly greater than the last
            accepted count; VALID otherwise.
        """
        issued = self._issued_at(nonce)
        if issued is None:
            return NonceStatus.INVALID
        age = now - issued
        if age < -self._ttl:
            return NonceStatus.INVALID
        if age > self._ttl:
            # RFC 7616 §3.3 stale=true flow; forget its count, it can never be VALID again.
            self._tracked.pop(nonce, None)
            return NonceStatus.STALE
        if nc is None:
            return NonceStatus.VALID
        entry = self._tracked.get(nonce)
        if entry is None:
            if issued <= self._horizon:
                return NonceStatus.STALE
            last = 0
        else:
            last = entry[1]
        if nc <= last:
            return NonceStatus.REPLAY
        if commit:
            self._store(nonce, issued, nc, now)
        return NonceStatus.VALID

    def record(self, nonce: str, nc: int, *, now: float) -> None:
        """Remember ``nc`` as the last accepted count of ``nonce``.

        Use after ``check(..., commit=False)`` returned VALID and the response was verified.
        Nonces that are not ours or already expired are ignored; a lower count never
        overwrites a higher one.

        Args:
            nonce: The nonce.
            nc: The accepted nonce-count.
            now: Current time.
        """
        issued = self._issued_at(nonce)
        if issued is None or now - issued > self._ttl:
            return
        entry = self._tracked.get(nonce)
        if entry is not None and entry[1] >= nc:
            return
        self._store(nonce, issued, nc, now)

    def _store(self, nonce: str, issued: float, nc: int, now: float) -> None:
        tracked = self._tracked
        tracked[nonce] = (issued, nc)
        tracked.move_to_end(nonce)
        # Drop expired entries at the LRU end (amortised O(1): each entry leaves once).
        cutoff = now - self._ttl
        while tracked:
            oldest = next(iter(tracked))
            if tracked[oldest][0] >= cutoff:
                break
            del tracked[oldest]
        while len(tracked) > self._max_tracked:
            _, (evicted_issued, _) = tracked.popitem(last=False)
            if evicted_issued > self._horizon:
                self._horizon = evicted_issued

    def purge(self, *, now: float) -> None:
        """Forget the counts of every expired nonce (O(tracked); call periodically).

        Args:
            now: Current time.
        """
        cutoff = now - self._ttl
        expired = [n for n, (issued, _) in self._tracked.items() if issued < cutoff]
        for nonce in expired:
            del self._tracked[nonce]


class AuthOutcome(enum.Enum):
    """Result class of :meth:`DigestAuthenticator.verify`; ``name.lower()`` is a metric label.

    Callers should answer UNKNOWN_USER exactly like BAD_PASSWORD on the wire, so that user
    names cannot be enumerated; the distinction is for logs only.
    """

    OK = enum.auto()
    MISSING = enum.auto()
    """No Authorization header: send a challenge."""
    MALFORMED = enum.auto()
    """Unparseable credentials, another scheme, or no qop although qop is required."""
    WRONG_REALM = enum.auto()
    """Credentials for a realm this server does not use (e.g. cached from before the realm
    changed): they say nothing about the password; the edge challenges again in its realm."""
    WRONG_URI = enum.auto()
    """The ``uri`` parameter neither matches the Request-URI (RFC 7616 §3.4.6) nor, when the
    authenticator accepts that, names this server."""
    ALGORITHM_NOT_OFFERED = enum.auto()
    INVALID_NONCE = enum.auto()
    STALE_NONCE = enum.auto()
    """Correct response on an expired nonce: re-challenge with ``stale=true`` (RFC 7616 §3.3)."""
    REPLAY = enum.auto()
    UNKNOWN_USER = enum.auto()
    BAD_PASSWORD = enum.auto()


@dataclass(frozen=True, slots=True, init=False)
class AuthResult:
    """Outcome of verifying one request's credentials."""

    outcome: AuthOutcome
    """What happened."""
    username: str | None = None
    """The authenticated user for OK and STALE_NONCE; the claimed user name where parsed."""
    reason: str = ""
    """Short human-readable detail for logs (never a secret)."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(self, outcome: AuthOutcome, username: str | None = None, reason: str = "") -> None:
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "reason", reason)

    @property
    def ok(self) -> bool:
        """True when the request is authenticated."""
        return self.outcome is AuthOutcome.OK


_MAX_REASON: Final = 120
_DUMMY_HA1: Final = "0" * 64


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


class DigestAuthenticator:
    """Server side of SIP digest authentication for one realm (RFC 3261 §22.4).

    :meth:`verify` checks, in order: parse (MALFORMED), realm (WRONG_REALM), algorithm among
    those accepted (ALGORITHM_NOT_OFFERED), qop present when required (MALFORMED), ``uri``
    parameter against the Request-URI or this server's names (WRONG_URI), nonce (INVALID_NONCE,
    REPLAY; a STALE nonce is decided after the response), user (UNKNOWN_USER), response
    (BAD_PASSWORD), then STALE_NONCE or OK.

    One challenge is sent, with the first algorithm. RFC 8760 §2.4 lets a server send one per
    algorithm, most preferred first, but deployed user agents mishandle several: Debian's
    baresip 1.0 (libre) gives up with ENOSYS at the first non-MD5 challenge instead of picking
    the MD5 one, newer libre refuses a second challenge for the same realm, and SIPp reads only
    the first. Kamailio and Asterisk send one (MD5) by default. Responses computed with any of
    the accepted algorithms are verified, so a UA answering MD5 whatever it was offered still
    gets in while MD5 is listed.

    The nonce-count is recorded only after the response proved correct, so a client without
    the password can neither advance a legitimate client's count (making its next request a
    REPLAY) nor fill the nonce tracking table.
    """

    def __init__(
        self,
        *,
        realm: str,
        algorithms: Sequence[DigestAlgorithm],
        nonces: NonceManager,
        password_for: Callable[[str], str | None],
        require_qop: bool = True,
        ha1_cache_size: int = 10_000,
        uri_names_server: Callable[[str], bool] | None = None,
    ) -> None:
        """Create an authenticator.

        Args:
            realm: The realm challenged and required in credentials.
            algorithms: Algorithms accepted in responses; the first is the one challenged,
                e.g. ``[MD5]`` or ``[SHA256, MD5]``.
            nonces: Nonce issuer and checker.
            password_for: Plain password of a user name, or None for an unknown user.
            require_qop: Reject (MALFORMED) credentials without qop. Challenges always offer
                ``qop="auth"`` and every current UA answers with it; the legacy form has no
                replay protection, so a captured Authorization header could register another
                Contact until the nonce expires. Set False only for pre-RFC 2617 devices.
            ha1_cache_size: Maximum cached HA1 values.
            uri_names_server: Also accept a ``uri`` parameter that differs from the
                Request-URI when this predicate says it names this server (e.g.
                :meth:`~sipserver.registrar.server_names.ServerNames.names_uri`); None: the
                ``uri`` must identify the Request-URI (RFC 7616 §3.4.6, "strict").

        Raises:
            ValueError: On no or duplicate algorithms or an empty realm.
        """
        if not realm:
            raise ValueError("realm must not be empty")
        if not algorithms:
            raise ValueError("at least one digest algorithm is required")
        if len(set(algorithms)) != len(algorithms):
            raise ValueError("duplicate digest algorithm")
        if ha1_cache_size < 1:
            raise ValueError("ha1_cache_size must be at least 1")
        self._realm = realm
        self._algorithms = tuple(algorithms)
        self._accepted = frozenset(algorithms)
        self._nonces = nonces
        self._password_for = password_for
        self._require_qop = require_qop
        self._ha1_cache: dict[tuple[str, DigestAlgorithm, str], str] = {}
        self._ha1_cache_size = ha1_cache_size
        self._uri_names_server = uri_names_server
        # Header text around the nonce, rendered once per stale flag: a 401 then costs one
        # nonce and a string join instead of building and validating a challenge object.
        marker = "N0NCE"
        self._templates: dict[bool, tuple[str, str]] = {}
        for stale in (False, True):
            text = DigestChallenge(
                realm=realm, nonce=marker, algorithm=self._algorithms[0], qop="auth", stale=stale
            ).to_header()
            # The nonce is rendered after the realm: a realm containing the marker text must
            # not split the template.
            before, _, after = text.rpartition(marker)
            self._templates[stale] = (before, after)

    @property
    def realm(self) -> str:
        """The protection realm."""
        return self._realm

    @property
    def algorithms(self) -> tuple[DigestAlgorithm, ...]:
        """Algorithms accepted in responses; the first is the one challenged."""
        return self._algorithms

    def challenge(self, *, now: float, stale: bool = False) -> DigestChallenge:
        """Build the challenge of a 401/407: the first algorithm, a fresh nonce, ``qop="auth"``.

        Args:
            now: Current time.
            stale: Set ``stale=true`` (after a STALE_NONCE outcome, RFC 7616 §3.3).

        Returns:
            The challenge, for one WWW-Authenticate (or Proxy-Authenticate) header.
        """
        nonce = self._nonces.issue(now=now)
        return DigestChallenge(
            realm=self._realm, nonce=nonce, algorithm=self._algorithms[0], qop="auth", stale=stale
        )

    def challenge_header(self, *, now: float, stale: bool = False) -> str:
        """The header value of :meth:`challenge`, rendered (the 401 hot path).

        Args:
            now: Current time.
            stale: Set ``stale=true``.

        Returns:
            The WWW-Authenticate (or Proxy-Authenticate) value.
        """
        before, after = self._templates[stale]
        return before + self._nonces.issue(now=now) + after

    def _ha1(self, username: str, password: str, algorithm: DigestAlgorithm) -> str:
        key = (username, algorithm, password)
        cache = self._ha1_cache
        ha1 = cache.get(key)
        if ha1 is None:
            ha1 = compute_ha1(username, self._realm, password, algorithm)
            if len(cache) >= self._ha1_cache_size:
                del cache[next(iter(cache))]
            cache[key] = ha1
        return ha1

    def verify(
        self,
        header_value: str | None,
        *,
        method: str,
        request_uri: str,
        now: float,
        body: bytes = b"",
    ) -> AuthResult:
        """Verify the Authorization (or Proxy-Authorization) header of a request.

        Args:
            header_value: The header value, or None when the request has none.
            method: The request method (part of A2).
            request_uri: The Request-URI as received.
            now: Current time.
            body: Request body (hashed only for ``qop=auth-int``).

        Returns:
            The outcome, with the user name once known.
        """
        if header_value is None:
            return AuthResult(AuthOutcome.MISSING)
        try:
            creds = DigestCredentials.parse(header_value)
        except DigestError as exc:
            return AuthResult(AuthOutcome.MALFORMED, reason=_short(exc.reason))
        user = creds.username
        if creds.realm != self._realm:
            return AuthResult(AuthOutcome.WRONG_REALM, user, _short(f"realm {creds.realm!r}"))
        if creds.algorithm not in self._accepted:
            return AuthResult(
                AuthOutcome.ALGORITHM_NOT_OFFERED, user, f"algorithm {creds.algorithm.value}"
            )
        if creds.qop is None and self._require_qop:
            return AuthResult(AuthOutcome.MALFORMED, user, "missing qop")
        # RFC 7616 §3.4.6: the uri parameter must identify the Request-URI; by default a uri
        # naming this server is accepted as well (see server_names.py for why).
        if not _uri_matches(creds.uri, request_uri) and not (
            self._uri_names_server is not None and self._uri_names_server(creds.uri)
        ):
            return AuthResult(AuthOutcome.WRONG_URI, user, _short(f"uri {creds.uri!r}"))
        status = self._nonces.check(creds.nonce, creds.nc, now=now, commit=False)
        if status is NonceStatus.INVALID:
            return AuthResult(AuthOutcome.INVALID_NONCE, user, "nonce not issued here")
        if status is NonceStatus.REPLAY:
            return AuthResult(AuthOutcome.REPLAY, user, f"nc {creds.nc} not increasing")
        password = self._password_for(user)
        if password is None:
            # Spend the same hashing as a known user so timing does not reveal user names.
            verify(creds, ha1=_DUMMY_HA1[: creds.algorithm.digest_size], method=method, body=body)
            return AuthResult(AuthOutcome.UNKNOWN_USER, user, "unknown user")
        ha1 = self._ha1(user, password, creds.algorithm)
        if not verify(creds, ha1=ha1, method=method, body=body):
            return AuthResult(AuthOutcome.BAD_PASSWORD, user, "response mismatch")
        if status is NonceStatus.STALE:
            return AuthResult(AuthOutcome.STALE_NONCE, user, "nonce expired")
        if creds.nc is not None:
            self._nonces.record(creds.nonce, creds.nc, now=now)
        return AuthResult(AuthOutcome.OK, user)


# ---------------------------------------------------------------------------------------------
# uri parameter vs Request-URI. String equality is the fast path (every well-behaved UA copies
# the Request-URI verbatim). Otherwise SIP/SIPS URIs are compared per RFC 3261 §19.1.4:
# scheme, host and parameters case-insensitively, userinfo case-sensitively after unescaping,
# parameters present in both must match, user/ttl/method/maddr present in only one never match,
# other parameters present in only one are ignored, headers must all match. Other schemes
# compare case-insensitively. (Kept local: the URI model lives in another module.)
# ---------------------------------------------------------------------------------------------
_STRICT_URI_PARAMS: Final = frozenset({"user", "ttl", "method", "maddr"})
_UriKey = tuple[str, str, str, dict[str, str], dict[str, str]]


def _uri_key(uri: str) -> _UriKey | None:
    scheme, sep, rest = uri.strip().partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        return None
    userinfo, at, hostpart = rest.partition("@")
    if not at:
        userinfo, hostpart = "", rest
    hostpart, _, header_text = hostpart.partition("?")
    hostport, *param_items = hostpart.split(";")
    params: dict[str, str] = {}
    for item in param_items:
        name, _, value = item.partition("=")
        params[unquote(name).lower()] = unquote(value).lower()
    headers: dict[str, str] = {}
    for item in header_text.split("&") if header_text else ():
        name, _, value = item.partition("=")
        headers[unquote(name).lower()] = unquote(value)
    return scheme, unquote(userinfo), hostport.lower(), params, headers


def _uri_matches(digest_uri: str, request_uri: str) -> bool:
    if digest_uri == request_uri:
        return True
    if "[" in request_uri and digest_uri == request_uri.replace("[", "").replace("]", ""):
        # Some UAs (SIPp 3.6 among them) drop the brackets of an IPv6 host in the digest uri
        # ("sip:::1:5060" for "sip:[::1]:5060"); the rest must still match exactly.
        return True
    a, b = _uri_key(digest_uri), _uri_key(request_uri)
    if a is None or b is None:
        return digest_uri.strip().lower() == request_uri.strip().lower()
    if a[:3] != b[:3] or a[4] != b[4]:
        return False
    params_a, params_b = a[3], b[3]
    for name in params_a.keys() | params_b.keys():
        if name in params_a and name in params_b:
            if params_a[name] != params_b[name]:
                return False
        elif name in _STRICT_URI_PARAMS:
            return False
    return True


class FailureTracker:
    """Brute-force protection: ban a source after repeated authentication failures.

    A source is banned for ``ban_duration`` seconds when ``max_failures`` failures fall within
    ``window`` seconds of each other (a sliding window: the first and the last are less than
    ``window`` apart). While banned, further failures are not counted; when the ban ends the
    source starts afresh.

    Sources are IP address strings. IPv4-mapped IPv6 addresses count as their IPv4 address and
    IPv6 addresses are aggregated to their ``/ipv6_prefix`` network (default /64: one
    subscriber's allocation, which an attacker could otherwise walk through address by address).

    Memory is bounded under a flood from many addresses: at most ``max_sources`` sources with
    recent failures (the one whose last failure is oldest is dropped first) and at most
    ``max_sources`` bans (the ones ending soonest are dropped first). Every operation is O(1)
    amortised, provided ``now`` never decreases.
    """

    def __init__(
        self,
        *,
        max_failures: int,
        window: float,
        ban_duration: float,
        max_sources: int = 100_000,
        ipv6_prefix: int = 64,
    ) -> None:
        """Create a tracker.

        Args:
            max_failures: Failures within ``window`` that start a ban (>= 1).
            window: Sliding window length in seconds.
            ban_duration: Ban length in seconds.
            max_sources: Bound on tracked sources and, separately, on bans.
            ipv6_prefix: IPv6 sources are grouped by this prefix length (1-128; 128 = per
                address).

        Raises:
            ValueError: On out-of-range arguments.
        """
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not window > 0 or not ban_duration > 0:
            raise ValueError("window and ban_duration must be positive")
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be in 1..128")
        self._max_failures = max_failures
        self._window = float(window)
        self._ban_duration = float(ban_duration)
        self._max_sources = max_sources
        self._ipv6_prefix = ipv6_prefix
        self._ipv6_shift = 128 - ipv6_prefix
        # source -> failure times within the window (ascending); oldest last failure first.
        self._failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        # source -> ban end; insertion order is end order (constant duration, monotonic now).
        self._bans: OrderedDict[str, float] = OrderedDict()

    def _source(self, ip: str) -> str:
        if ":" not in ip:
            return ip
        try:
            addr = ipaddress.IPv6Address(ip)
        except ValueError:
            return ip
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        shift = self._ipv6_shift
        network = ipaddress.IPv6Address((int(addr) >> shift) << shift)
        return f"{network}/{self._ipv6_prefix}"

    def _expire(self, now: float) -> None:
        failures = self._failures
        cutoff = now - self._window
        while failures:
            oldest = next(iter(failures))
            if failures[oldest][-1] > cutoff:
                break
            del failures[oldest]
        bans = self._bans
        while bans:
            oldest = next(iter(bans))
            if bans[oldest] > now:
                break
            del bans[oldest]

    def _banned(self, source: str, now: float) -> bool:
        until = self._bans.get(source)
        if until is None:
            return False
        if until <= now:
            del self._bans[source]
            return False
        return True

    def is_banned(self, ip: str, *, now: float) -> bool:
        """Whether requests from ``ip`` are currently refused.

        Args:
            ip: Source address.
            now: Current time.

        Returns:
            True while a ban of the source (or its IPv6 network) runs.
        """
        self._expire(now)
        return self._banned(self._source(ip), now)

    def record_failure(self, ip: str, *, now: float) -> bool:
        """Count one authentication failure from ``ip``.

        Args:
            ip: Source address.
            now: Current time.

        Returns:
            True exactly when this failure starts a ban.
        """
        self._expire(now)
        source = self._source(ip)
        if self._banned(source, now):
            return False
        cutoff = now - self._window
        times = (*(t for t in self._failures.pop(source, ()) if t > cutoff), now)
        if len(times) >= self._max_failures:
            self._bans[source] = now + self._ban_duration
            while len(self._bans) > self._max_sources:
                self._bans.popitem(last=False)
            return True
        self._failures[source] = times
        while len(self._failures) > self._max_sources:
            self._failures.popitem(last=False)
        return False

    def banned_count(self, *, now: float) -> int:
        """Number of bans running at ``now``.

        Args:
            now: Current time.

        Returns:
            The count.
        """
        self._expire(now)
        return len(self._bans)

    def purge(self, *, now: float) -> None:
        """Drop expired bans and failure windows (also done lazily by every call).

        Args:
            now: Current time.
        """
        self._expire(now)
