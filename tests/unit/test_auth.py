"""Tests for sipserver.registrar.auth: nonces, the digest authenticator, the failure tracker."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable

import pytest

from sipserver.registrar.auth import (
    _RECENT_NONCES,
    AuthOutcome,
    AuthResult,
    DigestAuthenticator,
    FailureTracker,
    NonceManager,
    NonceStatus,
    _uri_matches,
)
from sipserver.registrar.server_names import ServerNames
from sipserver.sip.digest import (
    DigestAlgorithm,
    DigestChallenge,
    build_authorization,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "sip.example.com"
URI = "sip:sip.example.com"
USERS = {"alice": "wonderland", "bob": "builder"}


def counter_bytes() -> Callable[[int], bytes]:
    """Deterministic, distinct 'random' bytes."""
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def make_nonces(*, ttl: float = 60.0, max_tracked: int = 100) -> NonceManager:
    return NonceManager(SECRET, ttl=ttl, max_tracked=max_tracked, random_bytes=counter_bytes())


# --- NonceManager ----------------------------------------------------------------------------


def test_issue_is_stateless_and_unique() -> None:
    nonces = make_nonces()
    a, b = nonces.issue(now=100.0), nonces.issue(now=100.0)
    assert a != b
    assert len(a) == 48
    assert set(a) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert nonces.tracked_count == 0


def test_fresh_nonce_is_valid_until_ttl() -> None:
    nonces = make_nonces(ttl=60.0)
    nonce = nonces.issue(now=100.0)
    assert nonces.check(nonce, None, now=100.0) is NonceStatus.VALID
    assert nonces.check(nonce, None, now=160.0) is NonceStatus.VALID
    assert nonces.check(nonce, None, now=160.001) is NonceStatus.STALE
    assert nonces.check(nonce, 1, now=160.001) is NonceStatus.STALE


def test_legacy_nc_none_accepted_repeatedly_while_fresh() -> None:
    nonces = make_nonces()
    nonce = nonces.issue(now=0.0)
    for t in (1.0, 2.0, 3.0):
        assert nonces.check(nonce, None, now=t) is NonceStatus.VALID
    assert nonces.tracked_count == 0


def test_nonce_count_must_increase() -> None:
    nonces = make_nonces()
    nonce = nonces.issue(now=0.0)
    assert nonces.check(nonce, 1, now=1.0) is NonceStatus.VALID
    assert nonces.check(nonce, 1, now=2.0) is NonceStatus.REPLAY
    assert nonces.check(nonce, 2, now=3.0) is NonceStatus.VALID
    assert nonces.check(nonce, 1, now=4.0) is NonceStatus.REPLAY
    assert nonces.check(nonce, 7, now=5.0) is NonceStatus.VALID  # gaps are allowed
    assert nonces.check(nonce, 7, now=6.0) is NonceStatus.REPLAY


def test_check_without_commit_then_record() -> None:
    nonces = make_nonces()
    nonce = nonces.issue(now=0.0)
    assert nonces.check(nonce, 1, now=1.0, commit=False) is NonceStatus.VALID
    assert nonces.check(nonce, 1, now=1.0, commit=False) is NonceStatus.VALID
    assert nonces.tracked_count == 0
    nonces.record(nonce, 1, now=1.0)
    assert nonces.check(nonce, 1, now=2.0) is NonceStatus.REPLAY
    nonces.record(nonce, 0, now=2.0)  # never lowers the count
    assert nonces.check(nonce, 1, now=2.0) is NonceStatus.REPLAY


def test_record_ignores_foreign_and_expired_nonces() -> None:
    nonces = make_nonces(ttl=10.0)
    nonces.record("x" * 48, 1, now=0.0)
    old = nonces.issue(now=0.0)
    nonces.record(old, 1, now=11.0)
    assert nonces.tracked_count == 0


def test_nonce_shared_between_managers_with_same_secret() -> None:
    issuer, checker = make_nonces(), make_nonces()
    assert checker.check(issuer.issue(now=5.0), 1, now=6.0) is NonceStatus.VALID
    other = NonceManager(b"another secret, 32 bytes long!!!", ttl=60.0)
    assert other.check(issuer.issue(now=5.0), 1, now=6.0) is NonceStatus.INVALID


def test_recent_nonces_are_a_cache_that_agrees_with_the_tag_check() -> None:
    # The last _RECENT_NONCES nonces issued are found without checking their tags; an older
    # one, or another manager's, is checked by its tag: the answers are the same.
    issuer, checker = make_nonces(ttl=60.0), make_nonces(ttl=60.0)
    nonce = issuer.issue(now=1000.0)
    assert nonce in issuer._recent and nonce not in checker._recent
    for nc, now, status in [
        (1, 1000.0 - 61.0, NonceStatus.INVALID),  # from too far in the future
        (1, 1000.0, NonceStatus.VALID),
        (1, 1001.0, NonceStatus.REPLAY),
        (2, 1060.0, NonceStatus.VALID),
        (3, 1060.5, NonceStatus.STALE),
    ]:
        assert issuer.check(nonce, nc, now=now) is status
        assert checker.check(nonce, nc, now=now) is status
    assert nonce in checker._recent  # remembered once its tag checked out


def test_the_recent_nonces_are_bounded_and_the_oldest_still_checks() -> None:
    nonces = make_nonces(ttl=60.0)
    first = nonces.issue(now=10.0)
    later = [nonces.issue(now=11.0) for _ in range(_RECENT_NONCES)]
    assert len(nonces._recent) == _RECENT_NONCES
    assert first not in nonces._recent and later[0] in nonces._recent
    assert nonces.check(first, 1, now=12.0) is NonceStatus.VALID  # by its tag
    assert nonces.check(_flip(first, 3), 1, now=12.0) is NonceStatus.INVALID
    assert len(nonces._recent) == _RECENT_NONCES  # first came back in, later[0] went


def test_a_nonce_issued_at_a_non_finite_time_is_refused_as_before() -> None:
    nonces = make_nonces()
    for now in (math.inf, -math.inf, math.nan):
        nonce = nonces.issue(now=now)
        assert nonce not in nonces._recent
        assert nonces.check(nonce, 1, now=0.0) is NonceStatus.INVALID


def _flip(nonce: str, index: int) -> str:
    replacement = "A" if nonce[index] != "A" else "B"
    return nonce[:index] + replacement + nonce[index + 1 :]


@pytest.mark.parametrize("index", [0, 5, 11, 20, 32, 47])
def test_tampered_nonce_is_invalid(index: int) -> None:
    nonces = make_nonces()
    nonce = nonces.issue(now=0.0)
    assert nonces.check(_flip(nonce, index), 1, now=1.0) is NonceStatus.INVALID


@pytest.mark.parametrize(
    "nonce",
    ["", "abc", "x" * 47, "x" * 49, "+" * 48, "=" * 48, "A" * 46 + "==", "é" * 48, "A" * 48],
)
def test_garbage_nonce_is_invalid(nonce: str) -> None:
    assert make_nonces().check(nonce, None, now=0.0) is NonceStatus.INVALID


def test_nonce_from_far_future_is_invalid() -> None:
    nonces = make_nonces(ttl=60.0)
    nonce = nonces.issue(now=1000.0)
    assert nonces.check(nonce, 1, now=1000.0 - 30.0) is NonceStatus.VALID  # small skew is fine
    assert nonces.check(nonce, 2, now=1000.0 - 61.0) is NonceStatus.INVALID


def test_evicted_nonce_is_stale_not_accepted() -> None:
    nonces = make_nonces(ttl=100.0, max_tracked=2)
    n1 = nonces.issue(now=0.0)
    unused = nonces.issue(now=0.0)
    n2 = nonces.issue(now=1.0)
    n3 = nonces.issue(now=2.0)
    assert nonces.check(n1, 1, now=3.0) is NonceStatus.VALID
    assert nonces.check(n2, 1, now=4.0) is NonceStatus.VALID
    assert nonces.check(n3, 1, now=5.0) is NonceStatus.VALID  # evicts n1 (least recently used)
    assert nonces.tracked_count == 2
    # n1's count is forgotten: replaying its nc=1 must not pass; a fresh challenge is forced.
    assert nonces.check(n1, 1, now=6.0) is NonceStatus.STALE
    assert nonces.check(n1, 2, now=6.0) is NonceStatus.STALE
    # Collateral: an untracked nonce issued no later than the evicted one is STALE too.
    assert nonces.check(unused, 1, now=6.0) is NonceStatus.STALE
    # Tracked nonces and nonces issued after the eviction horizon are unaffected.
    assert nonces.check(n2, 2, now=7.0) is NonceStatus.VALID
    n4 = nonces.issue(now=8.0)
    assert nonces.check(n4, 1, now=9.0) is NonceStatus.VALID


def test_lru_keeps_recently_used_nonce() -> None:
    nonces = make_nonces(ttl=100.0, max_tracked=2)
    n1, n2, n3 = (nonces.issue(now=float(t)) for t in range(3))
    assert nonces.check(n1, 1, now=3.0) is NonceStatus.VALID
    assert nonces.check(n2, 1, now=4.0) is NonceStatus.VALID
    assert nonces.check(n1, 2, now=5.0) is NonceStatus.VALID  # n1 becomes most recent
    assert nonces.check(n3, 1, now=6.0) is NonceStatus.VALID  # evicts n2
    assert nonces.check(n1, 3, now=7.0) is NonceStatus.VALID
    assert nonces.check(n2, 2, now=7.0) is NonceStatus.STALE


def test_expired_nonces_are_not_tracked() -> None:
    nonces = make_nonces(ttl=10.0, max_tracked=1000)
    old = [nonces.issue(now=0.0) for _ in range(5)]
    for i, nonce in enumerate(old):
        assert nonces.check(nonce, 1, now=float(i)) is NonceStatus.VALID
    assert nonces.tracked_count == 5
    fresh = nonces.issue(now=20.0)
    assert nonces.check(fresh, 1, now=20.0) is NonceStatus.VALID
    assert nonces.tracked_count == 1  # the expired ones were dropped on the way
    more = nonces.issue(now=21.0)
    assert nonces.check(more, 1, now=21.0) is NonceStatus.VALID
    nonces.purge(now=40.0)
    assert nonces.tracked_count == 0


def test_expired_nonce_check_forgets_its_count() -> None:
    nonces = make_nonces(ttl=10.0)
    nonce = nonces.issue(now=0.0)
    assert nonces.check(nonce, 1, now=1.0) is NonceStatus.VALID
    assert nonces.check(nonce, 2, now=11.0) is NonceStatus.STALE
    assert nonces.tracked_count == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short", "ttl": 1.0},
        {"secret": b"k" * 65, "ttl": 1.0},  # longer than a BLAKE2b key
        {"ttl": 0.0},
        {"ttl": 1.0, "max_tracked": 0},
    ],
)
def test_nonce_manager_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"secret": SECRET}
    args.update(kwargs)
    with pytest.raises(ValueError):
        NonceManager(**args)  # type: ignore[arg-type]


# --- DigestAuthenticator ---------------------------------------------------------------------


def make_auth(
    algorithms: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.SHA256, DigestAlgorithm.MD5),
    *,
    ttl: float = 60.0,
    require_qop: bool = True,
    users: dict[str, str] | None = None,
    ha1_cache_size: int = 100,
) -> DigestAuthenticator:
    return DigestAuthenticator(
        realm=REALM,
        algorithms=algorithms,
        nonces=make_nonces(ttl=ttl),
        password_for=(USERS if users is None else users).get,
        require_qop=require_qop,
        ha1_cache_size=ha1_cache_size,
    )


def answer(
    challenge: DigestChallenge,
    *,
    user: str = "alice",
    password: str | None = None,
    nc: int = 1,
    uri: str = URI,
    method: str = "REGISTER",
) -> str:
    return build_authorization(
        challenge,
        username=user,
        password=USERS.get(user, "x") if password is None else password,
        method=method,
        uri=uri,
        cnonce="client-nonce",
        nc=nc,
    )


def test_one_challenge_with_the_first_algorithm() -> None:
    auth = make_auth()  # SHA-256, MD5
    challenge = auth.challenge(now=0.0)
    assert challenge.algorithm is DigestAlgorithm.SHA256
    assert challenge.qop == "auth" and challenge.realm == REALM and not challenge.stale
    assert auth.challenge(now=0.0, stale=True).stale
    assert auth.challenge(now=0.0).nonce != challenge.nonce
    assert auth.algorithms == (DigestAlgorithm.SHA256, DigestAlgorithm.MD5)
    md5_first = make_auth((DigestAlgorithm.MD5, DigestAlgorithm.SHA256))
    assert md5_first.challenge(now=0.0).algorithm is DigestAlgorithm.MD5


@pytest.mark.parametrize("algorithm", [DigestAlgorithm.SHA256, DigestAlgorithm.MD5])
def test_ok_end_to_end(algorithm: DigestAlgorithm) -> None:
    # Only SHA-256 is challenged, but a response computed with any accepted algorithm is
    # verified (a UA that answers MD5 whatever it is offered).
    auth = make_auth()
    nonce = auth.challenge(now=0.0).nonce
    challenge = DigestChallenge(realm=REALM, nonce=nonce, algorithm=algorithm, qop="auth")
    result = auth.verify(answer(challenge), method="REGISTER", request_uri=URI, now=1.0)
    assert result == AuthResult(AuthOutcome.OK, "alice")
    assert result.ok
    # The next request on the same nonce with the next count is accepted too.
    again = auth.verify(answer(challenge, nc=2), method="REGISTER", request_uri=URI, now=2.0)
    assert again.outcome is AuthOutcome.OK


def test_missing() -> None:
    result = make_auth().verify(None, method="REGISTER", request_uri=URI, now=0.0)
    assert result.outcome is AuthOutcome.MISSING
    assert not result.ok


def test_malformed() -> None:
    result = make_auth().verify(
        'Digest username="alice", realm="unterminated', method="REGISTER", request_uri=URI, now=0
    )
    assert result.outcome is AuthOutcome.MALFORMED
    assert "unterminated" in result.reason


def test_malformed_without_qop_unless_allowed() -> None:
    auth = make_auth()
    nonce = auth.challenge(now=0.0).nonce
    legacy = DigestChallenge(realm=REALM, nonce=nonce, algorithm=DigestAlgorithm.SHA256, qop=None)
    header = answer(legacy)
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.MALFORMED
    assert result.reason == "missing qop"
    lenient = make_auth(require_qop=False)
    nonce = lenient.challenge(now=0.0).nonce
    legacy = DigestChallenge(realm=REALM, nonce=nonce, algorithm=DigestAlgorithm.SHA256, qop=None)
    header = answer(legacy)
    for t in (1.0, 2.0):  # no nonce-count: accepted while the nonce is fresh
        assert lenient.verify(header, method="REGISTER", request_uri=URI, now=t).ok


def test_wrong_realm() -> None:
    auth = make_auth()
    c = auth.challenge(now=0.0)
    other = DigestChallenge(realm="evil.example.com", nonce=c.nonce, algorithm=c.algorithm)
    result = auth.verify(answer(other), method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.WRONG_REALM
    assert result.username == "alice"


def test_wrong_uri() -> None:
    auth = make_auth()
    c = auth.challenge(now=0.0)
    header = answer(c, uri="sip:other.example.com")
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.WRONG_URI


def test_equivalent_uri_is_accepted() -> None:
    auth = make_auth()
    c = auth.challenge(now=0.0)
    header = answer(c, uri="SIP:SIP.Example.COM;transport=udp")
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.OK


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ("sip:example.com", "sip:example.com", True),
        ("sip:EXAMPLE.com", "sip:example.COM", True),
        ("sip:alice@example.com", "sip:alice@EXAMPLE.COM", True),
        ("sip:Alice@example.com", "sip:alice@example.com", False),  # userinfo case-sensitive
        ("sip:%61lice@example.com", "sip:alice@example.com", True),
        ("sip:example.com", "sips:example.com", False),
        ("sip:example.com", "sip:example.com:5060", False),
        ("sip:example.com;transport=TCP", "sip:example.com;Transport=tcp", True),
        ("sip:example.com;transport=tcp", "sip:example.com", True),
        ("sip:example.com;transport=tcp", "sip:example.com;transport=udp", False),
        ("sip:example.com;user=phone", "sip:example.com", False),
        ("sip:example.com;maddr=1.2.3.4", "sip:example.com", False),
        ("sip:example.com;lr;transport=tcp", "sip:example.com;transport=tcp;lr", True),
        ("sip:example.com?subject=a", "sip:example.com", False),
        ("tel:+14155550100", "TEL:+14155550100", True),
        ("tel:+14155550100", "sip:+14155550100@example.com", False),
    ],
)
def test_uri_matching(a: str, b: str, match: bool) -> None:
    assert _uri_matches(a, b) is match
    assert _uri_matches(b, a) is match


def test_algorithm_not_offered() -> None:
    auth = make_auth((DigestAlgorithm.SHA256,))
    nonce = auth.challenge(now=0.0).nonce
    md5 = DigestChallenge(realm=REALM, nonce=nonce, algorithm=DigestAlgorithm.MD5)
    result = auth.verify(answer(md5), method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.ALGORITHM_NOT_OFFERED
    assert result.reason == "algorithm MD5"


def test_invalid_nonce() -> None:
    auth = make_auth()
    forged = DigestChallenge(realm=REALM, nonce="A" * 48, algorithm=DigestAlgorithm.SHA256)
    result = auth.verify(answer(forged), method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.INVALID_NONCE


def test_stale_nonce_with_correct_response() -> None:
    auth = make_auth(ttl=30.0)
    challenge = auth.challenge(now=0.0)
    result = auth.verify(answer(challenge), method="REGISTER", request_uri=URI, now=31.0)
    assert result == AuthResult(AuthOutcome.STALE_NONCE, "alice", "nonce expired")


def test_stale_nonce_with_wrong_response_is_bad_password() -> None:
    auth = make_auth(ttl=30.0)
    challenge = auth.challenge(now=0.0)
    header = answer(challenge, password="guess")
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=31.0)
    assert result.outcome is AuthOutcome.BAD_PASSWORD


def test_replay() -> None:
    auth = make_auth()
    header = answer(auth.challenge(now=0.0))
    assert auth.verify(header, method="REGISTER", request_uri=URI, now=1.0).ok
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=2.0)
    assert result.outcome is AuthOutcome.REPLAY


def test_unknown_user() -> None:
    auth = make_auth()
    header = answer(auth.challenge(now=0.0), user="mallory")
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0)
    assert result == AuthResult(AuthOutcome.UNKNOWN_USER, "mallory", "unknown user")


def test_bad_password_does_not_burn_the_nonce_count() -> None:
    auth = make_auth()
    challenge = auth.challenge(now=0.0)
    wrong = answer(challenge, password="guess")
    result = auth.verify(wrong, method="REGISTER", request_uri=URI, now=1.0)
    assert result == AuthResult(AuthOutcome.BAD_PASSWORD, "alice", "response mismatch")
    # The legitimate client's first request with nc=1 still succeeds.
    assert auth.verify(answer(challenge), method="REGISTER", request_uri=URI, now=2.0).ok


def test_response_is_bound_to_method() -> None:
    auth = make_auth()
    header = answer(auth.challenge(now=0.0), method="INVITE")
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0)
    assert result.outcome is AuthOutcome.BAD_PASSWORD


def test_auth_int_is_accepted() -> None:
    auth = make_auth()
    c = auth.challenge(now=0.0)
    offered = DigestChallenge(realm=REALM, nonce=c.nonce, algorithm=c.algorithm, qop="auth-int")
    body = b"<body/>"
    header = build_authorization(
        offered,
        username="bob",
        password="builder",
        method="REGISTER",
        uri=URI,
        cnonce="cn",
        body=body,
    )
    tampered = auth.verify(header, method="REGISTER", request_uri=URI, now=1.0, body=b"x")
    assert tampered.outcome is AuthOutcome.BAD_PASSWORD
    assert auth.verify(header, method="REGISTER", request_uri=URI, now=1.0, body=body).ok


def test_ha1_is_cached_and_bounded() -> None:
    # Seen through its effect, not by patching compute_ha1: the module may be compiled with
    # mypyc, and calls inside a compiled module do not look up a patched module global.
    auth = make_auth(ha1_cache_size=1)
    challenge = auth.challenge(now=0.0)
    assert auth.verify(answer(challenge, nc=1), method="REGISTER", request_uri=URI, now=1).ok
    [(key, ha1)] = auth._ha1_cache.items()
    auth._ha1_cache[key] = "0" * len(ha1)  # the next check uses the cached value, wrong or not
    assert not auth.verify(answer(challenge, nc=2), method="REGISTER", request_uri=URI, now=1).ok
    auth._ha1_cache[key] = ha1
    assert auth.verify(answer(challenge, nc=3), method="REGISTER", request_uri=URI, now=1).ok
    header = answer(challenge, user="bob", nc=4)
    assert auth.verify(header, method="REGISTER", request_uri=URI, now=1.0).ok
    assert len(auth._ha1_cache) == 1
    assert next(iter(auth._ha1_cache))[0] == "bob"


def test_password_change_takes_effect() -> None:
    users = {"alice": "old"}
    auth = make_auth(users=users)
    challenge = auth.challenge(now=0.0)
    header = answer(challenge, password="old")
    assert auth.verify(header, method="REGISTER", request_uri=URI, now=1.0).ok
    users["alice"] = "new"
    header = answer(challenge, password="old", nc=2)
    result = auth.verify(header, method="REGISTER", request_uri=URI, now=2.0)
    assert result.outcome is AuthOutcome.BAD_PASSWORD


@pytest.mark.parametrize(
    "kwargs",
    [
        {"realm": ""},
        {"algorithms": ()},
        {"algorithms": (DigestAlgorithm.MD5, DigestAlgorithm.MD5)},
        {"ha1_cache_size": 0},
    ],
)
def test_authenticator_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "realm": REALM,
        "algorithms": (DigestAlgorithm.SHA256,),
        "nonces": make_nonces(),
        "password_for": USERS.get,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        DigestAuthenticator(**args)  # type: ignore[arg-type]


# --- FailureTracker --------------------------------------------------------------------------


def make_tracker(**kwargs: float) -> FailureTracker:
    args: dict[str, float] = {"max_failures": 3, "window": 10.0, "ban_duration": 30.0}
    args.update(kwargs)
    return FailureTracker(**args)  # type: ignore[arg-type]


def test_ban_after_n_failures_within_window() -> None:
    tracker = make_tracker()
    assert tracker.record_failure("192.0.2.1", now=0.0) is False
    assert tracker.record_failure("192.0.2.1", now=1.0) is False
    assert not tracker.is_banned("192.0.2.1", now=1.5)
    assert tracker.record_failure("192.0.2.1", now=2.0) is True
    assert tracker.is_banned("192.0.2.1", now=2.0)
    assert not tracker.is_banned("192.0.2.2", now=2.0)
    assert tracker.banned_count(now=2.0) == 1
    # Further failures while banned do not start another ban.
    assert tracker.record_failure("192.0.2.1", now=3.0) is False
    assert tracker.banned_count(now=3.0) == 1


def test_no_ban_when_failures_spread_beyond_window() -> None:
    tracker = make_tracker()
    for t in (0.0, 6.0, 12.0, 18.0, 24.0, 30.0):
        assert tracker.record_failure("192.0.2.1", now=t) is False
    assert not tracker.is_banned("192.0.2.1", now=30.0)
    # Exactly `window` apart is outside the window.
    tracker = make_tracker(max_failures=2)
    assert tracker.record_failure("192.0.2.9", now=0.0) is False
    assert tracker.record_failure("192.0.2.9", now=10.0) is False
    assert tracker.record_failure("192.0.2.9", now=19.9) is True


def test_ban_expires_and_source_starts_afresh() -> None:
    tracker = make_tracker()
    for t in (0.0, 1.0, 2.0):
        tracker.record_failure("192.0.2.1", now=t)
    assert tracker.is_banned("192.0.2.1", now=31.9)
    assert not tracker.is_banned("192.0.2.1", now=32.0)
    assert tracker.banned_count(now=32.0) == 0
    assert tracker.record_failure("192.0.2.1", now=33.0) is False
    assert tracker.record_failure("192.0.2.1", now=34.0) is False
    assert tracker.record_failure("192.0.2.1", now=35.0) is True


def test_banned_count_expires_lazily() -> None:
    tracker = make_tracker(max_failures=1)
    for i in range(5):
        assert tracker.record_failure(f"192.0.2.{i}", now=float(i))
    assert tracker.banned_count(now=4.0) == 5
    assert tracker.banned_count(now=32.0) == 2  # bans from t=0,1,2 ended at 30,31,32
    assert tracker.banned_count(now=100.0) == 0


def test_purge_drops_expired_state() -> None:
    tracker = make_tracker()
    tracker.record_failure("192.0.2.1", now=0.0)
    for t in (0.0, 1.0, 2.0):
        tracker.record_failure("192.0.2.2", now=t)
    assert len(tracker._failures) == 1 and len(tracker._bans) == 1
    tracker.purge(now=11.0)
    assert len(tracker._failures) == 0 and len(tracker._bans) == 1
    tracker.purge(now=32.0)
    assert len(tracker._bans) == 0


def test_memory_bounded_under_distinct_source_flood() -> None:
    tracker = make_tracker(max_failures=3, window=3600.0, max_sources=1000)
    for i in range(1_000_000):
        tracker.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now=i * 1e-3)
    assert len(tracker._failures) == 1000
    assert len(tracker._bans) == 0
    # The most recent sources are the ones kept.
    assert tracker.record_failure("10.15.66.63", now=1000.0) is False  # i = 999_999
    assert tracker.record_failure("10.15.66.63", now=1000.0) is True


def test_bans_bounded_under_distinct_source_flood() -> None:
    tracker = make_tracker(max_failures=1, window=60.0, ban_duration=3600.0, max_sources=1000)
    for i in range(1_000_000):
        assert tracker.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now=i * 1e-3)
    assert len(tracker._bans) == 1000
    assert len(tracker._failures) == 0
    assert tracker.banned_count(now=1000.0) == 1000
    # Bans ending soonest (the oldest) were evicted; the latest remain.
    assert not tracker.is_banned("10.0.0.0", now=1000.0)
    assert tracker.is_banned("10.15.66.63", now=1000.0)


def test_ipv6_sources_grouped_by_64() -> None:
    tracker = make_tracker()
    tracker.record_failure("2001:db8::1", now=0.0)
    tracker.record_failure("2001:DB8:0:0:ffff::2", now=1.0)
    assert tracker.record_failure("2001:db8::abcd:3", now=2.0) is True
    assert tracker.is_banned("2001:db8:0:0:1234::9", now=3.0)
    assert tracker.is_banned("2001:0db8:0000::1", now=3.0)
    assert not tracker.is_banned("2001:db8:0:1::1", now=3.0)
    assert not tracker.is_banned("192.0.2.1", now=3.0)


def test_ipv6_per_address_and_mapped() -> None:
    tracker = make_tracker(ipv6_prefix=128)
    tracker.record_failure("2001:db8::1", now=0.0)
    tracker.record_failure("2001:db8::2", now=1.0)
    assert tracker.record_failure("2001:db8::3", now=2.0) is False
    tracker.record_failure("::ffff:192.0.2.7", now=3.0)
    tracker.record_failure("192.0.2.7", now=4.0)
    assert tracker.record_failure("::FFFF:192.0.2.7", now=5.0) is True
    assert tracker.is_banned("192.0.2.7", now=6.0)
    assert tracker.is_banned("::ffff:c000:207", now=6.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0.0},
        {"ban_duration": -1.0},
        {"max_sources": 0},
        {"ipv6_prefix": 0},
        {"ipv6_prefix": 129},
    ],
)
def test_tracker_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make_tracker(**kwargs)


def test_accessors_and_unparseable_sources() -> None:
    assert make_nonces(ttl=42.0).ttl == 42.0
    assert make_auth().realm == REALM
    tracker = make_tracker(max_failures=2)
    assert tracker.record_failure("not:an:address", now=0.0) is False
    assert tracker.record_failure("not:an:address", now=1.0) is True
    assert tracker.is_banned("not:an:address", now=2.0)


def test_challenge_header_renders_the_same_challenge() -> None:
    nonces = NonceManager(b"k" * 32, ttl=300, random_bytes=lambda n: b"\x01" * n)
    auth = DigestAuthenticator(
        realm="example.com",
        algorithms=[DigestAlgorithm.SHA256, DigestAlgorithm.MD5],
        nonces=nonces,
        password_for=lambda _: None,
    )
    for stale in (False, True):
        expected = auth.challenge(now=5.0, stale=stale).to_header()
        assert auth.challenge_header(now=5.0, stale=stale) == expected


@pytest.mark.parametrize("realm", ["N0NCE.example.com", 'a "quoted" \\ realm N0NCE'])
def test_challenge_header_with_a_realm_containing_the_template_marker(realm: str) -> None:
    nonces = NonceManager(b"k" * 32, ttl=300, random_bytes=lambda n: b"\x02" * n)
    auth = DigestAuthenticator(
        realm=realm,
        algorithms=[DigestAlgorithm.MD5, DigestAlgorithm.SHA256_SESS],
        nonces=nonces,
        password_for=lambda _: None,
    )
    for stale in (False, True):
        expected = auth.challenge(now=7.0, stale=stale).to_header()
        assert auth.challenge_header(now=7.0, stale=stale) == expected


def test_digest_uri_without_ipv6_brackets_matches() -> None:
    assert _uri_matches("sip:::1:5060", "sip:[::1]:5060")
    assert not _uri_matches("sip:::2:5060", "sip:[::1]:5060")


@pytest.mark.parametrize(
    ("digest_uri", "server", "strict"),
    [
        # (uri parameter, outcome by default with the server's names, outcome when strict)
        ("sip:+15005550100@127.0.0.1:5060", AuthOutcome.OK, AuthOutcome.OK),  # the R-URI
        ("sip:127.0.0.1:5060", AuthOutcome.OK, AuthOutcome.WRONG_URI),  # SIPp's default
        ("sip:alice@127.0.0.1:5060", AuthOutcome.OK, AuthOutcome.WRONG_URI),
        ("sip:192.0.2.1:5060", AuthOutcome.WRONG_URI, AuthOutcome.WRONG_URI),
        ("sip:127.0.0.1:5070", AuthOutcome.WRONG_URI, AuthOutcome.WRONG_URI),
    ],
)
def test_digest_uri_naming_the_server(
    digest_uri: str, server: AuthOutcome, strict: AuthOutcome
) -> None:
    request_uri = "sip:+15005550100@127.0.0.1:5060"
    names = ServerNames.build(["127.0.0.1"], ports=[5060])
    for names_uri, expected in ((names.names_uri, server), (None, strict)):
        auth = DigestAuthenticator(
            realm=REALM,
            algorithms=[DigestAlgorithm.MD5],
            nonces=make_nonces(),
            password_for=USERS.get,
            uri_names_server=names_uri,
        )
        header = answer(auth.challenge(now=0.0), uri=digest_uri, method="INVITE")
        result = auth.verify(header, method="INVITE", request_uri=request_uri, now=1.0)
        assert result.outcome is expected, (digest_uri, names_uri)


def test_a_nonce_is_bound_to_its_tag_and_secret() -> None:
    nonces = make_nonces()
    nonce = nonces.issue(now=100.0)
    assert len(nonce) == 48 and nonces.check(nonce, 1, now=101.0) is NonceStatus.VALID
    # Any change of the issue time, the random bytes or the tag is a nonce we did not issue.
    for i in (0, 20, 47):
        forged = nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1 :]
        assert make_nonces().check(forged, 1, now=101.0) is NonceStatus.INVALID
    other = NonceManager(b"another secret, 32 bytes long!!!", ttl=60.0)
    assert other.check(nonce, 1, now=101.0) is NonceStatus.INVALID


def test_random_pool_hands_out_each_byte_once_and_refills() -> None:
    from sipserver.registrar.auth import _RandomPool

    pool = _RandomPool(size=64)
    draws = [pool.take(12) for _ in range(20)]  # 240 bytes: three refills of 64
    assert all(len(d) == 12 for d in draws)
    assert len(set(draws)) == len(draws)
    # A take that does not fit in what is left draws a new block instead of a short slice.
    pool.drop()
    assert len(pool.take(60)) == 60 and len(pool.take(12)) == 12


def test_random_pool_of_a_forked_child_does_not_repeat_the_parent() -> None:
    from sipserver.registrar.auth import _RandomPool

    pool = _RandomPool()
    pool.take(12)  # the parent has a block with unread bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes must come from a fresh draw
        os.write(write, pool.take(12))
        os._exit(0)
    os.close(write)
    child = os.read(read, 12)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 12
    assert child != pool.take(12)


def test_default_nonces_are_all_distinct() -> None:
    nonces = NonceManager(SECRET, ttl=300)
    issued = {nonces.issue(now=1000.0) for _ in range(2000)}  # the same instant: random only
    assert len(issued) == 2000
