"""The dashboard's login limiter: counted before the hash, per source, per user name."""

from __future__ import annotations

from sipserver.listens.login_limit import KNOWN_SOURCES, LoginAttempt, LoginLimiter, LoginLimits

LIMITS = LoginLimits(
    max_failures_per_source=3, max_failures_per_user=5, window=60.0, max_in_flight_per_source=9
)


def admit(limiter: LoginLimiter, source: str, user: str, now: float = 0.0) -> LoginAttempt:
    attempt = limiter.admit(source, user, now=now)
    assert isinstance(attempt, LoginAttempt), attempt
    return attempt


def test_attempts_in_flight_count_before_any_outcome() -> None:
    """The race of the issue: parallel attempts are counted as they arrive, so the fourth one
    from a source is refused while the first three are still being hashed."""
    limiter = LoginLimiter(LIMITS)
    pending = [admit(limiter, "198.51.100.7", "admin") for _ in range(3)]
    assert limiter.admit("198.51.100.7", "admin", now=0.0) == "per_source_limit"
    assert limiter.source_blocked("198.51.100.7", now=0.0)
    assert len(pending) == 3
    # Another address is not affected.
    admit(limiter, "198.51.100.8", "admin")


def test_one_source_has_at_most_two_checks_in_flight() -> None:
    """The default: a third parallel attempt from one address is refused (not counted: it
    costs no hash) until one of the two finishes; other addresses are not affected."""
    limiter = LoginLimiter(LoginLimits(max_failures_per_source=10))
    first, _ = admit(limiter, "198.51.100.7", "a"), admit(limiter, "198.51.100.7", "a")
    assert limiter.admit("198.51.100.7", "a", now=0.0) == "per_source_concurrency"
    admit(limiter, "198.51.100.8", "a")
    limiter.failed(first)
    admit(limiter, "198.51.100.7", "a")
    assert limiter._count(limiter._by_source, "198.51.100.7", 0.0) == 3


def test_a_success_gives_its_attempt_back_a_busy_refusal_too() -> None:
    limiter = LoginLimiter(LIMITS)
    for _ in range(5):
        limiter.succeeded(admit(limiter, "192.0.2.1", "alice"))
    limiter.abandoned(admit(limiter, "192.0.2.1", "alice"))
    assert not limiter.source_blocked("192.0.2.1", now=0.0)


def test_a_success_does_not_clear_other_failures_of_the_source() -> None:
    """Logging in to one's own account must not reset the count of guesses at another."""
    limiter = LoginLimiter(LIMITS)
    for _ in range(2):
        limiter.failed(admit(limiter, "192.0.2.1", "admin"))
    limiter.succeeded(admit(limiter, "192.0.2.1", "mallory"))
    limiter.failed(admit(limiter, "192.0.2.1", "admin"))
    assert limiter.admit("192.0.2.1", "admin", now=1.0) == "per_source_limit"


def test_the_window_slides() -> None:
    limiter = LoginLimiter(LIMITS)
    for t in (0.0, 10.0, 20.0):
        limiter.failed(admit(limiter, "192.0.2.1", "u", now=t))
    assert limiter.admit("192.0.2.1", "u", now=59.0) == "per_source_limit"
    admit(limiter, "192.0.2.1", "u", now=60.5)  # the first failure left the window


def test_a_locked_name_keeps_its_known_sources_and_gives_new_ones_one_try() -> None:
    limiter = LoginLimiter(LIMITS)
    limiter.succeeded(admit(limiter, "10.0.0.5", "alice"))  # alice's own desk
    # A campaign from several addresses locks the name (5 failures, all sources together).
    for i in range(5):
        limiter.failed(admit(limiter, f"203.0.113.{i}", "alice"))
    assert limiter.user_locked("alice", now=1.0)
    # An attacking address that already failed at the name gets nothing more...
    assert limiter.admit("203.0.113.0", "alice", now=1.0) == "per_user_limit"
    # ...a new one gets one attempt per window...
    limiter.failed(admit(limiter, "203.0.113.99", "alice", now=1.0))
    assert limiter.admit("203.0.113.99", "alice", now=2.0) == "per_user_limit"
    # ...and the real user's address keeps its per-source allowance.
    limiter.failed(admit(limiter, "10.0.0.5", "alice", now=2.0))  # a typo
    limiter.succeeded(admit(limiter, "10.0.0.5", "alice", now=3.0))
    # Other names are not locked.
    admit(limiter, "203.0.113.0", "bob", now=3.0)
    # The lock lifts when the failures leave the window.
    assert not limiter.user_locked("alice", now=61.0)


def test_a_user_from_a_new_address_is_never_locked_out_by_others() -> None:
    limiter = LoginLimiter(LIMITS)
    for i in range(50):
        result = limiter.admit(f"203.0.113.{i}", "carol", now=float(i) / 10)
        if isinstance(result, LoginAttempt):
            limiter.failed(result)
    limiter.succeeded(admit(limiter, "198.51.100.1", "carol", now=6.0))


def test_memory_is_bounded() -> None:
    limiter = LoginLimiter(LIMITS, max_tracked=100)
    for i in range(1000):
        limiter.failed(admit(limiter, f"s{i}", f"u{i}"))
    assert len(limiter._by_source) <= 100
    assert len(limiter._by_user) <= 100
    assert len(limiter._by_pair) <= 100
    for i in range(KNOWN_SOURCES + 5):
        limiter.succeeded(admit(limiter, f"k{i}", "alice"))
    assert len(limiter._known["alice"]) == KNOWN_SOURCES


def test_unknown_and_known_names_are_counted_alike() -> None:
    """A refusal must not tell whether a name exists: the limiter never looks at the users."""
    limiter = LoginLimiter(LIMITS)
    for _ in range(3):
        limiter.failed(admit(limiter, "192.0.2.9", "no-such-user"))
    assert limiter.admit("192.0.2.9", "admin", now=0.0) == "per_source_limit"
