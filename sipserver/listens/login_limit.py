"""The dashboard's login limiter: attempts counted before the password is checked (sans-I/O).

Each login attempt is counted when it arrives, before the slow scrypt check, so parallel
attempts cannot all slip past the limit while the first ones are still being hashed:

- **per source address**: at most ``max_failures_per_source`` attempts that failed or are still
  being checked within ``window`` seconds; the next one is refused (429) without a hash. At
  most ``max_in_flight_per_source`` of them are checked (or wait for a check) at once, so one
  address cannot fill the hash queue in front of another's login;
- **per user name**: when a name has collected ``max_failures_per_user`` such attempts from all
  sources together (a guessing campaign spread over many addresses), the name is *locked*:
  only sources that logged in as that user before (remembered in memory, up to
  :data:`KNOWN_SOURCES` per user) keep their per-source allowance; any other source gets one
  attempt at that name per window. A locked name never locks its real user out for good: from
  an address they used before they log in as usual, and from a new one their first attempt is
  still checked. An attacker spread over N addresses gets at most N guesses per window at a
  locked name instead of N times the per-source allowance.

A successful login gives its attempt back (a right password is not a failure) and marks the
source as known for that user. It does not clear the source's other failures: logging in to
one's own low-privilege account must not reset the count of guesses at another.

No clock reads and no I/O: the caller passes ``now`` (monotonic seconds). Memory is bounded:
at most ``max_tracked`` sources, names and (name, source) pairs are remembered, the least
recently used forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

__all__ = ["KNOWN_SOURCES", "LoginAttempt", "LoginLimiter", "LoginLimits", "LoginRefusal"]

KNOWN_SOURCES: Final = 8
"""Source addresses remembered per user as "logged in from here before"."""

_K = TypeVar("_K")

LoginRefusal = Literal["per_source_limit", "per_source_concurrency", "per_user_limit"]
"""Why an attempt is refused (the ``reason`` of the ``login`` refusals)."""


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The limiter's settings (``server.login_limit``)."""

    max_failures_per_source: int = 10
    """Failed (or in-flight) attempts per source address within ``window``."""
    max_failures_per_user: int = 30
    """Failed (or in-flight) attempts at one user name, all sources together, that lock it."""
    window: float = 300.0
    """Seconds over which attempts are counted."""
    max_in_flight_per_source: int = 2
    """Attempts of one source being checked (or waiting for a check) at once; more are refused
    without being counted (they cost no hash), so one address can never hold every hash slot
    and queue place while a login from elsewhere waits."""


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """An admitted attempt: report its outcome with :meth:`LoginLimiter.succeeded`,
    :meth:`LoginLimiter.failed` or :meth:`LoginLimiter.abandoned`."""

    source: str
    """Source address."""
    user: str
    """User name tried (any text: unknown names are tracked alike, so a refusal says nothing
    about whether a name exists)."""
    at: float
    """When it was admitted (monotonic seconds)."""
    counted_for_user: bool
    """Whether it counts toward the name's total (not when the name was locked already)."""


class LoginLimiter:
    """Counts login attempts per source, per user name and per (user name, source).

    Args:
        limits: the settings (:meth:`configure` changes them later).
        max_tracked: entries each table keeps at most.
    """

    def __init__(self, limits: LoginLimits | None = None, *, max_tracked: int = 10_000) -> None:
        self.limits = limits or LoginLimits()
        self.max_tracked = max_tracked
        self._by_source: OrderedDict[str, deque[float]] = OrderedDict()
        self._by_user: OrderedDict[str, deque[float]] = OrderedDict()
        self._by_pair: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._known: dict[str, OrderedDict[str, float]] = {}
        self._in_flight: dict[str, int] = {}  # bounded: at most max_waiting + checks entries

    def configure(self, limits: LoginLimits) -> None:
        """New settings (a reload); the counts so far are kept."""
        self.limits = limits

    # ------------------------------------------------------------------ queries

    def source_blocked(self, source: str, *, now: float) -> bool:
        """True when ``source`` has used up its attempts."""
        return self._count(self._by_source, source, now) >= self.limits.max_failures_per_source

    def check_source(self, source: str, *, now: float) -> LoginRefusal | None:
        """Why an attempt from ``source`` would be refused whatever its user name (the caller
        refuses before it even reads the request's body), or None."""
        if self.source_blocked(source, now=now):
            return "per_source_limit"
        if self._in_flight.get(source, 0) >= self.limits.max_in_flight_per_source:
            return "per_source_concurrency"
        return None

    def user_locked(self, user: str, *, now: float) -> bool:
        """True when ``user`` collected ``max_failures_per_user`` attempts in the window."""
        return self._count(self._by_user, user, now) >= self.limits.max_failures_per_user

    # ------------------------------------------------------------------ attempts

    def admit(self, source: str, user: str, *, now: float) -> LoginAttempt | LoginRefusal:
        """Count an attempt before its password is checked, or refuse it.

        Returns:
            The attempt (check the password, then report how it went), or why it is refused.
        """
        refusal = self.check_source(source, now=now)
        if refusal is not None:
            return refusal
        locked = self.user_locked(user, now=now)
        # A locked name: one attempt per window from a source it has not seen succeed.
        if (
            locked
            and source not in self._known.get(user, ())
            and self._count(self._by_pair, (user, source), now)
        ):
            return "per_user_limit"
        self._add(self._by_source, source, now)
        self._add(self._by_pair, (user, source), now)
        if not locked:
            self._add(self._by_user, user, now)
        self._in_flight[source] = self._in_flight.get(source, 0) + 1
        return LoginAttempt(source, user, now, counted_for_user=not locked)

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: the attempt is given back and the source becomes known."""
        self.abandoned(attempt)
        known = self._known.setdefault(attempt.user, OrderedDict())
        known[attempt.source] = attempt.at
        known.move_to_end(attempt.source)
        while len(known) > KNOWN_SOURCES:
            known.popitem(last=False)
        while len(self._known) > self.max_tracked:
            del self._known[next(iter(self._known))]

    def failed(self, attempt: LoginAttempt) -> None:
        """The password was wrong (or the name unknown): the attempt stays counted."""
        self._done(attempt)

    def abandoned(self, attempt: LoginAttempt) -> None:
        """No password was checked after all (the server was too busy): give it back."""
        self._done(attempt)
        _remove(self._by_source, attempt.source, attempt.at)
        _remove(self._by_pair, (attempt.user, attempt.source), attempt.at)
        if attempt.counted_for_user:
            _remove(self._by_user, attempt.user, attempt.at)

    def _done(self, attempt: LoginAttempt) -> None:
        left = self._in_flight.get(attempt.source, 0) - 1
        if left > 0:
            self._in_flight[attempt.source] = left
        else:
            self._in_flight.pop(attempt.source, None)

    # ------------------------------------------------------------------ tables

    def _count(self, table: OrderedDict[_K, deque[float]], key: _K, now: float) -> int:
        times = table.get(key)
        if times is None:
            return 0
        horizon = now - self.limits.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del table[key]
            return 0
        return len(times)

    def _add(self, table: OrderedDict[_K, deque[float]], key: _K, now: float) -> None:
        times = table.get(key)
        if times is None:
            times = table[key] = deque()
        else:
            table.move_to_end(key)
        times.append(now)
        while len(table) > self.max_tracked:
            table.popitem(last=False)


def _remove(table: OrderedDict[_K, deque[float]], key: _K, at: float) -> None:
    times = table.get(key)
    if times is not None and at in times:
        times.remove(at)
        if not times:
            del table[key]
