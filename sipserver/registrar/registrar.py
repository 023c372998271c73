"""REGISTER processing (RFC 3261 §10.3 steps 6-8), sans-I/O.

The SIP edge parses the REGISTER, applies the ACL and digest authentication (steps 1-5), and
hands a :class:`RegisterRequest` to :meth:`Registrar.handle_register`, which returns a
:class:`RegisterResult` for the edge to turn into a response. Nothing here parses SIP, reads a
clock or does I/O: ``now`` is passed in, on the same clock as :attr:`Binding.expires_at`.

A request is atomic: every contact is validated (wildcard form, expiry interval, Call-ID/CSeq
order) against a working copy of the AOR's bindings, and the store is written once at the end,
only if the whole request succeeded.

Status codes:

* 200 "OK": success; ``bindings`` lists every current binding of the AOR.
* 400 "Invalid wildcard": ``Contact: *`` with other contacts or an Expires other than 0
  (RFC 3261 §10.3 step 6).
* 400 "Invalid Expires": a negative expiry (``delta-seconds`` is unsigned, RFC 3261 §20.19).
* 400 "Out of Order CSeq": same Call-ID as a stored binding with a CSeq not higher than the stored
  one (RFC 3261 §10.3 steps 6 and 8). The RFC says only that "the request fails"; Kamailio's
  registrar answers 400 too ("Invalid CSeq number"), and a 5xx would invite a retry that fails
  the same way. A retransmission (equal CSeq) never gets here: the edge's server transaction
  (RFC 3261 §17.2.2) answers it with the stored response.
* 423 "Interval Too Brief": a non-zero expiry below the policy minimum; ``min_expires`` carries
  the minimum for the Min-Expires header (RFC 3261 §10.3 step 7, §21.4.17).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from sipserver.registrar.bindings import Binding, BindingStore

__all__ = [
    "ContactKey",
    "ContactSpec",
    "RegisterRequest",
    "RegisterResult",
    "Registrar",
    "RegistrarPolicy",
]


@dataclass(frozen=True, slots=True, init=False)
class ContactSpec:
    """One Contact of a REGISTER, as parsed by the edge."""

    uri: str
    """Contact URI without ``<>`` and without header parameters."""
    expires: int | None = None
    """The ``;expires`` Contact parameter, None when absent."""
    q: float | None = None
    """The ``;q`` Contact parameter, None when absent."""
    instance: str | None = None
    """The ``+sip.instance`` Contact parameter (RFC 5626), None when absent."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        uri: str,
        expires: int | None = None,
        q: float | None = None,
        instance: str | None = None,
    ) -> None:
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "instance", instance)


@dataclass(frozen=True, slots=True, init=False)
class RegisterRequest:
    """An authenticated REGISTER, reduced to what RFC 3261 §10.3 steps 6-8 need."""

    aor: str
    """Canonical address-of-record (RFC 3261 §10.3 step 5, done by the edge)."""
    agent: str
    """Slug of the agent owning the AOR."""
    call_id: str
    """Call-ID header."""
    cseq: int
    """CSeq number."""
    contacts: tuple[ContactSpec, ...] = ()
    """Contact headers; empty (and no wildcard) makes the request a query."""
    wildcard: bool = False
    """True for ``Contact: *``."""
    expires: int | None = None
    """Expires header, None when absent."""
    source: str = ""
    """Transport and address the request came from, e.g. ``"udp:203.0.113.7:5060"``."""
    path: tuple[str, ...] = ()
    """Path header values (RFC 3327)."""
    user_agent: str | None = None
    """User-Agent header."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        aor: str,
        agent: str,
        call_id: str,
        cseq: int,
        contacts: tuple[ContactSpec, ...] = (),
        wildcard: bool = False,
        expires: int | None = None,
        source: str = "",
        path: tuple[str, ...] = (),
        user_agent: str | None = None,
    ) -> None:
        object.__setattr__(self, "aor", aor)
        object.__setattr__(self, "agent", agent)
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "cseq", cseq)
        object.__setattr__(self, "contacts", contacts)
        object.__setattr__(self, "wildcard", wildcard)
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "user_agent", user_agent)


@dataclass(frozen=True, slots=True, init=False)
class RegisterResult:
    """Outcome of :meth:`Registrar.handle_register`, for the edge to turn into a response."""

    status: int
    """SIP status code."""
    reason: str
    """Reason phrase."""
    bindings: tuple[Binding, ...] = ()
    """For 200: every current binding of the AOR after the operation, in store order."""
    min_expires: int | None = None
    """For 423: the value of the Min-Expires header."""
    added_bindings: tuple[Binding, ...] = ()
    """Bindings created by the request."""
    removed_bindings: tuple[Binding, ...] = ()
    """Bindings the request removed (expires 0 or the ``*`` wildcard), as they were."""
    evicted_bindings: tuple[Binding, ...] = ()
    """Bindings removed to keep the AOR within ``max_contacts`` (the earliest registered)."""
    refreshed_bindings: tuple[Binding, ...] = ()
    """Existing bindings updated by the request, as they are now."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self,
        status: int,
        reason: str,
        bindings: tuple[Binding, ...] = (),
        min_expires: int | None = None,
        added_bindings: tuple[Binding, ...] = (),
        removed_bindings: tuple[Binding, ...] = (),
        evicted_bindings: tuple[Binding, ...] = (),
        refreshed_bindings: tuple[Binding, ...] = (),
    ) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "bindings", bindings)
        object.__setattr__(self, "min_expires", min_expires)
        object.__setattr__(self, "added_bindings", added_bindings)
        object.__setattr__(self, "removed_bindings", removed_bindings)
        object.__setattr__(self, "evicted_bindings", evicted_bindings)
        object.__setattr__(self, "refreshed_bindings", refreshed_bindings)

    @property
    def added(self) -> int:
        """Number of bindings created."""
        return len(self.added_bindings)

    @property
    def removed(self) -> int:
        """Number of bindings removed (by request, wildcard or the ``max_contacts`` cap)."""
        return len(self.removed_bindings) + len(self.evicted_bindings)

    @property
    def refreshed(self) -> int:
        """Number of existing bindings updated."""
        return len(self.refreshed_bindings)


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Registration limits.

    Raises:
        ValueError: when ``0 <= min_expires <= default_expires <= max_expires`` does not hold or
            ``max_contacts < 1``.
    """

    min_expires: int = 60
    """Shortest non-zero expiry accepted; shorter gets 423 (RFC 3261 §10.3 step 7)."""
    max_expires: int = 3600
    """Longer expiries are shortened to this (RFC 3261 §10.3 step 7)."""
    default_expires: int = 3600
    """Expiry when neither the Contact nor the request gives one (RFC 3261 §10.2.1.1)."""
    max_contacts: int = 10
    """Bindings per AOR; beyond it the earliest registered are removed."""

    def __post_init__(self) -> None:
        """Check the limits are consistent."""
        if not 0 <= self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError(
                "registrar policy needs 0 <= min_expires <= default_expires <= max_expires, got "
                f"{self.min_expires}, {self.default_expires}, {self.max_expires}"
            )
        if self.max_contacts < 1:
            raise ValueError(f"registrar policy needs max_contacts >= 1, got {self.max_contacts}")


_INVALID_WILDCARD: Final = RegisterResult(400, "Invalid wildcard")
_INVALID_EXPIRES: Final = RegisterResult(400, "Invalid Expires")
_OUT_OF_ORDER: Final = RegisterResult(400, "Out of Order CSeq")

ContactKey = Callable[[str], Hashable]
"""Maps a Contact URI to a value that is equal for URIs that RFC 3261 §19.1.4 calls equal."""


class Registrar:
    """REGISTER semantics of RFC 3261 §10.3 over a :class:`BindingStore`.

    Args:
        store: where bindings live.
        policy: expiry and contact limits.
        contact_key: URI comparison for binding matching; defaults to a small RFC 3261 §19.1.4
            normaliser (scheme and host case-insensitive, user case-sensitive, parameters
            order-insensitive). Exact string equality is always tried first.
    """

    __slots__ = ("_contact_key", "_policy", "_store", "_too_brief")

    def __init__(
        self,
        store: BindingStore,
        policy: RegistrarPolicy = RegistrarPolicy(),
        *,
        contact_key: ContactKey | None = None,
    ) -> None:
        """Create a registrar over ``store``."""
        self._store = store
        self._policy = policy
        self._contact_key: ContactKey = contact_key or _contact_key
        self._too_brief = RegisterResult(423, "Interval Too Brief", min_expires=policy.min_expires)

    @property
    def policy(self) -> RegistrarPolicy:
        """The limits in force."""
        return self._policy

    @property
    def store(self) -> BindingStore:
        """The bindings store this registrar writes to."""
        return self._store

    def handle_register(self, request: RegisterRequest, *, now: float) -> RegisterResult:
        """Apply an authenticated REGISTER (RFC 3261 §10.3 steps 6-8).

        Args:
            request: the REGISTER, already authenticated and authorised for ``request.aor``.
            now: current time, same clock as the bindings.

        Bindings of the AOR that expired but were not yet removed by :meth:`expire` are dropped
        silently when the request writes the AOR (they are not counted in ``removed``).

        Returns:
            200 with the AOR's bindings, or an error; on error nothing was changed.
        """
        contacts = request.contacts
        if request.wildcard:
            # RFC 3261 §10.3 step 6: "*" is valid only alone and with Expires: 0.
            if contacts or request.expires != 0:
                return _INVALID_WILDCARD
            return self._remove_all(request, now)
        if not contacts:
            # RFC 3261 §10.3 step 6: no Contact is a query; nothing changes.
            live = tuple(b for b in self._store.get(request.aor) if b.expires_at > now)
            return RegisterResult(200, "OK", bindings=live)

        # RFC 3261 §10.3 step 7: the expiry of every contact, validated before anything changes.
        policy = self._policy
        header_expires = request.expires
        expiries: list[int] = []
        for spec in contacts:
            expires = spec.expires
            if expires is None:
                expires = policy.default_expires if header_expires is None else header_expires
            if expires > 0:
                if expires < policy.min_expires:
                    return self._too_brief  # §21.4.17: 423 with Min-Expires
                if expires > policy.max_expires:
                    expires = policy.max_expires  # §10.3 step 7: the registrar MAY shorten it
            elif expires < 0:
                return _INVALID_EXPIRES
            expiries.append(expires)

        # RFC 3261 §10.3 step 8: apply each contact to a working copy of the live bindings.
        # Expired bindings are dropped here: they no longer exist for matching or for the 200.
        current = self._store.get(request.aor)
        working = [b for b in current if b.expires_at > now]
        changed = len(working) != len(current)
        call_id = request.call_id
        cseq = request.cseq
        fresh: list[Binding] = []  # bindings written by this request (duplicate contacts)
        added: list[Binding] = []
        removed: list[Binding] = []
        refreshed: list[Binding] = []
        # By index, not zip(..., strict=True): mypyc compiles that zip as a call of the builtin
        # type with a keyword (~3k instructions more a registration); the lengths are equal.
        for i, spec in enumerate(contacts):
            expires = expiries[i]
            index = self._find(working, spec)
            if index is None:
                if expires:
                    binding = _binding(request, spec, expires_at=now + expires, registered_at=now)
                    working.append(binding)
                    fresh.append(binding)
                    added.append(binding)
                    changed = True
                # Removing a binding that does not exist is a no-op.
                continue
            old = working[index]
            # RFC 3261 §10.3 step 8: same Call-ID needs a higher CSeq, else "the request fails".
            if old.call_id == call_id and cseq <= old.cseq and not _contains(fresh, old):
                return _OUT_OF_ORDER
            changed = True
            if not expires:
                del working[index]
                removed.append(old)
                continue
            binding = _binding(
                request, spec, expires_at=now + expires, registered_at=old.registered_at
            )
            working[index] = binding
            fresh.append(binding)
            refreshed.append(binding)

        evicted: tuple[Binding, ...] = ()
        excess = len(working) - policy.max_contacts
        if excess > 0:
            # Over the cap: remove the earliest registered (Asterisk's remove_existing).
            oldest = sorted(range(len(working)), key=lambda i: working[i].registered_at)
            victims = set(oldest[:excess])
            evicted = tuple(working[i] for i in sorted(victims))
            working = [b for i, b in enumerate(working) if i not in victims]

        result = tuple(working)
        if changed:
            self._store.replace(request.aor, result)
        return RegisterResult(
            200,
            "OK",
            bindings=result,
            added_bindings=tuple(added),
            removed_bindings=tuple(removed),
            evicted_bindings=evicted,
            refreshed_bindings=tuple(refreshed),
        )

    def lookup(self, aor: str, *, now: float) -> list[Binding]:
        """Current bindings of ``aor``, for routing a request to it.

        Args:
            aor: canonical address-of-record.
            now: current time; bindings with ``expires_at <= now`` are left out even before
                :meth:`expire` removed them.

        Returns:
            Highest ``q`` first (absent ``q`` counts as 1.0), then most recently registered.
            Only committed bindings: exactly what acknowledged REGISTERs left, never a change
            whose 200 still waits for its commit (and may yet be refused).
        """
        live = [b for b in self._store.get_committed(aor) if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=_lookup_order)
        return live

    def expire(self, *, now: float) -> list[Binding]:
        """Remove and return expired bindings (the adapter calls this periodically).

        Args:
            now: current time.

        Returns:
            The bindings removed.
        """
        return self._store.expire(now=now)

    def _remove_all(self, request: RegisterRequest, now: float) -> RegisterResult:
        # RFC 3261 §10.3 step 6, "*": a binding with the same Call-ID is removed only if the
        # request's CSeq is higher; otherwise the whole request fails.
        current = self._store.get(request.aor)
        live: list[Binding] = []
        for b in current:
            if b.expires_at > now:
                if b.call_id == request.call_id and request.cseq <= b.cseq:
                    return _OUT_OF_ORDER
                live.append(b)
        if current:
            self._store.replace(request.aor, ())
        return RegisterResult(200, "OK", removed_bindings=tuple(live))

    def _find(self, working: list[Binding], spec: ContactSpec) -> int | None:
        # A binding matches by +sip.instance when both sides have one (RFC 5626 §6), else by
        # Contact URI equality (RFC 3261 §10.3 step 8, §19.1.4).
        instance = spec.instance
        if instance is not None:
            for i, b in enumerate(working):
                if b.instance == instance:
                    return i
        uri = spec.uri
        for i, b in enumerate(working):
            if b.contact == uri and (instance is None or b.instance is None):
                return i
        if not working:
            return None
        contact_key = self._contact_key
        key = contact_key(uri)
        for i, b in enumerate(working):
            if (instance is None or b.instance is None) and contact_key(b.contact) == key:
                return i
        return None


def _binding(
    request: RegisterRequest, spec: ContactSpec, *, expires_at: float, registered_at: float
) -> Binding:
    """The binding ``spec`` of ``request`` becomes (new, or refreshing one registered at
    ``registered_at``)."""
    return Binding(
        aor=request.aor,
        contact=spec.uri,
        expires_at=expires_at,
        registered_at=registered_at,
        call_id=request.call_id,
        cseq=request.cseq,
        q=spec.q,
        agent=request.agent,
        source=request.source,
        path=request.path,
        user_agent=request.user_agent,
        instance=spec.instance,
    )


def _contains(bindings: list[Binding], binding: Binding) -> bool:
    """Identity membership (``in`` would compare every field)."""
    return any(b is binding for b in bindings)


def _lookup_order(b: Binding) -> tuple[float, float]:
    return (-(1.0 if b.q is None else b.q), -b.registered_at)


def _unescape(text: str) -> str:
    return unquote(text) if "%" in text else text


@functools.lru_cache(maxsize=8192)
def _contact_key(uri: str) -> Hashable:
    """Comparison key of a SIP URI after RFC 3261 §19.1.4.

    Scheme, host and parameters compare case-insensitively, the userinfo case-sensitively, all
    after unescaping; parameters and headers compare regardless of order. Simplified: a parameter
    present on one side only makes the URIs differ (the RFC lets ``user``/``ttl``/``method``/
    ``maddr``/``transport`` decide that and ignores others), and a missing port differs from an
    explicit default port, as the RFC requires.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return uri
    # The userinfo may contain ";" and "?" but never an unescaped "@" (RFC 3261 §25.1).
    at = rest.find("@")
    user, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    hostpart, _, headers = hostpart.partition("?")
    host, *params = hostpart.split(";")
    param_key = tuple(
        sorted(
            (_unescape(name).lower(), _unescape(value).lower())
            for name, _, value in (p.partition("=") for p in params if p)
        )
    )
    header_key = tuple(sorted(_unescape(h) for h in headers.split("&") if h))
    return (scheme.lower(), _unescape(user), host.lower(), param_key, header_key)
