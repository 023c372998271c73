"""The edge's request handling, in memory: bytes in, bytes out, time stepped by hand.

These run the real parser, digest code, registrar and store (no fakes); the same behaviour is
exercised over real sockets with SIPp in tests/integration/.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from sipserver.config import parse_config
from sipserver.edge.proxy import CallProxy, Endpoint
from sipserver.edge.router import Peer, SipRouter, server_names
from sipserver.observability import Metrics
from sipserver.registrar.auth import DigestAuthenticator, FailureTracker, NonceManager
from sipserver.registrar.bindings import Binding, BindingStore, MemoryStore
from sipserver.registrar.registrar import Registrar, RegistrarPolicy
from sipserver.sip.digest import DigestAlgorithm, DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message

PEER = Peer("udp", "198.51.100.7", 5062)
URI = "sip:sip.example.com"
NOW = 1_800_000_000.0
_branches = itertools.count()


def make_router(
    algorithms: tuple[str, ...] | None = ("MD5", "SHA-256"),
    *,
    store: BindingStore | None = None,
    router_options: dict[str, Any] | None = None,
    alice: dict[str, Any] | None = None,
    tracker: FailureTracker | None = None,
    **sip: Any,
) -> tuple[SipRouter, Metrics]:
    """A router over the test config; ``algorithms`` None leaves ``digest_algorithms`` out;
    ``router_options`` go to SipRouter (proxy, admission ...); ``alice``: more ``sip`` keys of
    the agent alice (open to every address by default, bob only to 203.0.113.0/24)."""
    if algorithms is not None:
        sip["digest_algorithms"] = list(algorithms)
    raw = {
        "server": {
            "public_host": "sip.example.com",
            "sip": {
                "udp": ["0.0.0.0:5060"],
                "tcp": [],
                "ban": {"max_failures": 3, "window": 60, "duration": 300},
                **sip,
            },
        },
        "agents": [
            {
                "slug": "alice",
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550101"],
                    "username": "alice",
                    "password": "alice-pw-1234",
                    **(alice or {}),
                },
            },
            {
                "slug": "bob",
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550102"],
                    "username": "bob",
                    "password": "bob-pw-123456",
                    "allowed_ips": ["203.0.113.0/24"],
                },
            },
        ],
    }
    config = parse_config(yaml.safe_dump(raw), env={})
    s = config.server.sip
    names = server_names(config)
    metrics = Metrics()
    registrar = Registrar(
        store if store is not None else MemoryStore(),
        RegistrarPolicy(min_expires=s.min_expires, max_expires=s.max_expires),
    )
    auth = DigestAuthenticator(
        realm=config.server.effective_realm,
        algorithms=[DigestAlgorithm(a) for a in s.digest_algorithms],
        nonces=NonceManager(b"s" * 32, ttl=s.nonce_ttl),
        password_for={"alice": "alice-pw-1234", "bob": "bob-pw-123456"}.get,
        # As server.py builds it.
        uri_names_server=names.names_uri if s.digest_uri_check == "server" else None,
    )
    if tracker is None:
        tracker = FailureTracker(max_failures=3, window=60, ban_duration=300)
    router = SipRouter(
        config,
        registrar=registrar,
        authenticator=auth,
        tracker=tracker,
        metrics=metrics,
        names=names,
        force_rport=s.force_rport,
        **(router_options or {}),
    )
    return router, metrics


def request(
    method: str = "REGISTER",
    user: str = "alice",
    *,
    uri: str = "sip:sip.example.com",
    cseq: int = 1,
    call_id: str = "call-1",
    contact: str | None = "<sip:alice@198.51.100.7:5062>",
    expires: int | None = 3600,
    authorization: str | None = None,
    branch: str | None = None,
    via_params: str = ";rport",
) -> bytes:
    branch = branch or f"z9hG4bK{next(_branches)}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 198.51.100.7:5062;branch={branch}{via_params}",
        f"From: <sip:{user}@sip.example.com>;tag=f1",
        f"To: <sip:{user}@sip.example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def send(
    router: SipRouter,
    data: bytes,
    *,
    now: float = NOW,
    wall: float | None = None,
    peer: Peer = PEER,
) -> SipResponse:
    """One request, one response; ``wall`` (the wall clock) is ``now`` unless given."""
    out = router.handle_message(data, peer, now=now, wall=now if wall is None else wall)
    assert len(out) == 1, out
    response = parse_message(out[0].data)
    assert isinstance(response, SipResponse)
    return response


def answer(challenge_resp: SipResponse, user: str, password: str, uri: str = URI) -> str:
    """Authorization answering the first challenge of a 401."""
    challenge = DigestChallenge.parse(challenge_resp.headers.get_all("WWW-Authenticate")[0])
    return build_authorization(
        challenge, username=user, password=password, method="REGISTER", uri=uri, cnonce="x"
    )


def register(
    router: SipRouter,
    user: str = "alice",
    password: str = "alice-pw-1234",
    *,
    algorithm: str | None = None,
    now: float = NOW,
    wall: float | None = None,
    peer: Peer = PEER,
    **kw: Any,
) -> SipResponse:
    """REGISTER, answer the challenge (computed with ``algorithm`` when given, else with the
    challenged one) with digest uri ``digest_uri`` (default: the Request-URI), return the
    final response."""
    digest_uri = kw.pop("digest_uri", kw.get("uri", URI))
    challenge_resp = send(router, request(user=user, cseq=1, **kw), now=now, wall=wall, peer=peer)
    assert challenge_resp.status == 401, challenge_resp
    (header,) = challenge_resp.headers.get_all("WWW-Authenticate")
    chosen = DigestChallenge.parse(header)
    if algorithm is not None:
        chosen = DigestChallenge(
            realm=chosen.realm, nonce=chosen.nonce, algorithm=DigestAlgorithm(algorithm)
        )
    auth = build_authorization(
        chosen, username=user, password=password, method="REGISTER", uri=digest_uri, cnonce="c0"
    )
    final = request(user=user, cseq=2, authorization=auth, **kw)
    return send(router, final, now=now, wall=wall, peer=peer)


def test_options_is_answered_with_allow() -> None:
    router, _ = make_router()
    resp = send(router, request("OPTIONS", contact=None, expires=None))
    assert resp.status == 200
    assert "REGISTER" in (resp.headers.get("Allow") or "")
    assert "tag=" in (resp.headers.get("To") or "")


def test_options_for_foreign_domain_is_404() -> None:
    router, _ = make_router()
    resp = send(router, request("OPTIONS", uri="sip:elsewhere.example.org"))
    assert resp.status == 404


def test_register_for_foreign_domain_is_403() -> None:
    router, _ = make_router()
    assert send(router, request(uri="sip:elsewhere.example.org")).status == 403


@pytest.mark.parametrize("order", [("MD5",), ("MD5", "SHA-256"), ("SHA-256", "MD5"), ("SHA-256",)])
def test_challenge_offers_the_first_algorithm_only(order: tuple[str, ...]) -> None:
    # One challenge: user agents choke on several for one realm (libre 1.0 gives up at the
    # first non-MD5 one, newer libre refuses a second one, SIPp reads only the first).
    router, _ = make_router(order)
    resp = send(router, request())
    (challenge,) = resp.headers.get_all("WWW-Authenticate")
    assert DigestChallenge.parse(challenge).algorithm.value == order[0]


def test_default_challenge_is_md5() -> None:
    router, _ = make_router(algorithms=None)
    (challenge,) = send(router, request()).headers.get_all("WWW-Authenticate")
    assert DigestChallenge.parse(challenge).algorithm is DigestAlgorithm.MD5


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_register_with_each_accepted_algorithm(algorithm: str) -> None:
    router, metrics = make_router()
    resp = register(router, algorithm=algorithm)
    assert resp.status == 200
    contacts = resp.headers.get_all("Contact")
    assert contacts == ["<sip:alice@198.51.100.7:5062>;expires=3600"]
    assert resp.headers.get("Date")
    assert sample(metrics, "sipserver_registrations_active") == 1


def test_register_by_number_aor() -> None:
    router, _ = make_router()
    # A trunk may register its number as the AOR user while authenticating as the agent.
    resp = send(router, request(user="+15005550101"))
    auth = answer(resp, "alice", "alice-pw-1234")
    final = send(router, request(user="+15005550101", cseq=2, authorization=auth))
    assert final.status == 200


def test_wrong_password_is_403_and_bans_after_three() -> None:
    router, metrics = make_router()
    for i in range(3):
        resp = register(router, password="nope", now=NOW + i, call_id=f"c{i}")
        assert resp.status == 403
    # Banned: even the right password gets 403 without a challenge.
    resp = send(router, request(call_id="c9"), now=NOW + 5)
    assert resp.status == 403
    assert resp.headers.get("WWW-Authenticate") is None
    assert sample(metrics, "sipserver_bans_total") == 1
    # The ban lasts `duration` (300 s), then the source may register again.
    assert register(router, now=NOW + 400, call_id="c10").status == 200


def test_unknown_user_is_challenged_like_a_known_one() -> None:
    router, _ = make_router()
    assert send(router, request(user="mallory")).status == 401
    assert register(router, user="mallory", password="x").status == 403


def test_credentials_of_another_agent_are_refused() -> None:
    router, _ = make_router()
    resp = send(router, request(user="alice"))
    auth = answer(resp, "bob", "bob-pw-123456")
    assert send(router, request(user="alice", cseq=2, authorization=auth)).status == 403


@pytest.mark.parametrize("user", ["bob", "alice", "nobody"])
def test_cidr_is_checked_before_any_challenge(user: str) -> None:
    """A source no agent allows gets 403 before any challenge, whatever the AOR (existing or
    not: the answer does not tell)."""
    router, metrics = make_router(alice={"allowed_ips": ["192.0.2.0/24"]})
    resp = send(router, request(user=user))
    assert resp.status == 403 and resp.reason == "Source Address Not Allowed"
    assert resp.headers.get("WWW-Authenticate") is None
    assert sample(metrics, "sipserver_register_requests_total", result="acl_denied") == 1
    inside = Peer("udp", "203.0.113.9", 5060)
    assert register(router, user="bob", password="bob-pw-123456", peer=inside).status == 200


def test_an_aor_outside_its_allow_list_is_challenged_like_any_other_then_refused() -> None:
    """bob's AOR from an address only alice allows: challenged like an AOR that does not
    exist (no probing), refused 403 once bob's credentials are checked."""
    router, _ = make_router()
    for user in ("bob", "nobody"):
        assert send(router, request(user=user)).status == 401
    resp = register(router, user="bob", password="bob-pw-123456")
    assert resp.status == 403 and resp.reason == "Source Address Not Allowed"


def test_stale_nonce_gets_a_stale_challenge() -> None:
    router, _ = make_router(nonce_ttl=30)
    first = send(router, request())
    auth = answer(first, "alice", "alice-pw-1234")
    resp = send(router, request(cseq=2, authorization=auth), now=NOW + 31)
    assert resp.status == 401
    assert all("stale=true" in v for v in resp.headers.get_all("WWW-Authenticate"))


def test_replayed_authorization_is_rechallenged() -> None:
    router, _ = make_router()
    first = send(router, request())
    auth = answer(first, "alice", "alice-pw-1234")
    assert send(router, request(cseq=2, authorization=auth)).status == 200
    # Same nc again in a new transaction: a replay, so a fresh challenge.
    assert send(router, request(cseq=3, authorization=auth)).status == 401


def other_realm(response: SipResponse, header: str = "WWW-Authenticate") -> DigestChallenge:
    """The challenge of ``response`` as if it came from another realm (the realm this server
    had before a reload changed public_host, for a phone that cached its credentials)."""
    challenge = DigestChallenge.parse(response.headers.get_all(header)[0])
    return DigestChallenge(
        realm="old.example.com", nonce=challenge.nonce, algorithm=challenge.algorithm, qop="auth"
    )


def test_credentials_for_another_realm_get_a_fresh_challenge_and_no_ban() -> None:
    """RFC 3261 §22.1: credentials are computed for the realm of a challenge; for a realm this
    server does not use they tell nothing about the password: challenge again, in ours."""
    router, metrics = make_router()
    for i in range(5):  # more than ban.max_failures (3)
        first = send(router, request(call_id=f"c{i}"), now=NOW + i)
        auth = build_authorization(
            other_realm(first),
            username="alice",
            password="alice-pw-1234",
            method="REGISTER",
            uri=URI,
            cnonce="c0",
        )
        resp = send(router, request(call_id=f"c{i}", cseq=2, authorization=auth), now=NOW + i)
        assert resp.status == 401
        (header,) = resp.headers.get_all("WWW-Authenticate")
        challenge = DigestChallenge.parse(header)
        assert challenge.realm == "sip.example.com" and not challenge.stale
    assert sample(metrics, "sipserver_auth_failures_total", reason="wrong_realm") == 5
    assert sample(metrics, "sipserver_bans_total") == 0
    # Answering the server's own challenge then works: the source was never banned.
    assert register(router, now=NOW + 10, call_id="c9").status == 200


def test_invite_credentials_for_another_realm_get_a_fresh_407_and_no_ban() -> None:
    proxy = CallProxy(
        outside=Endpoint("udp", "sip.example.com", 5060),
        inside=Endpoint("udp", "127.0.0.1", 5060),
        instance="t",
    )
    router, metrics = make_router(router_options={"proxy": proxy})
    number = "+15005550101"
    for i in range(5):
        first = send(router, invite_request(number, call_id=f"i{i}"), now=NOW + i)
        assert first.status == 407
        auth = build_authorization(
            other_realm(first, "Proxy-Authenticate"),
            username="alice",
            password="alice-pw-1234",
            method="INVITE",
            uri=f"sip:{number}@sip.example.com",
            cnonce="c0",
        )
        resp = send(router, invite_request(number, call_id=f"i{i}", auth=auth), now=NOW + i)
        assert resp.status == 407
        challenge = DigestChallenge.parse(resp.headers.get_all("Proxy-Authenticate")[0])
        assert challenge.realm == "sip.example.com" and not challenge.stale
    assert sample(metrics, "sipserver_auth_failures_total", reason="wrong_realm") == 5
    assert sample(metrics, "sipserver_bans_total") == 0
    assert sample(metrics, "sipserver_call_attempts_total", result="auth_failed") is None


def invite_request(number: str, *, call_id: str, auth: str | None = None) -> bytes:
    data = request(
        "INVITE", number, uri=f"sip:{number}@sip.example.com", call_id=call_id, expires=None
    )
    if auth is not None:
        data = data.replace(
            b"Content-Length: 0", f"Proxy-Authorization: {auth}\r\n".encode() + b"Content-Length: 0"
        )
    return data


def test_malformed_authorization_is_400() -> None:
    router, _ = make_router()
    resp = send(router, request(authorization='Digest username="alice", realm="x'))
    assert resp.status == 400


def test_interval_too_brief_has_min_expires() -> None:
    router, _ = make_router()
    resp = register(router, expires=10)
    assert resp.status == 423
    assert resp.headers.get("Min-Expires") == "60"


def _challenge_of(router: SipRouter, **kw: Any) -> str:
    resp = send(router, request(cseq=1, **kw))
    assert resp.status == 401
    (header,) = resp.headers.get_all("WWW-Authenticate")
    return header


def _authenticated(router: SipRouter, header: str, **kw: Any) -> bytes:
    auth = build_authorization(
        DigestChallenge.parse(header),
        username="alice",
        password="alice-pw-1234",
        method="REGISTER",
        uri=URI,
        cnonce="c0",
    )
    return request(cseq=2, authorization=auth, **kw)


@pytest.mark.parametrize("method", ["OPTIONS", "REGISTER"])
def test_retransmission_is_answered_from_the_transaction(method: str) -> None:
    router, metrics = make_router()
    if method == "OPTIONS":
        data = request("OPTIONS", contact=None, expires=None, branch="z9hG4bKsame")
    else:
        data = _authenticated(router, _challenge_of(router), branch="z9hG4bKsame")
    first = router.handle_message(data, PEER, now=NOW, wall=NOW)
    second = router.handle_message(data, PEER, now=NOW + 0.5, wall=NOW + 0.5)
    assert first[0].data == second[0].data
    assert b" 200 OK\r\n" in first[0].data
    assert sample(metrics, "sipserver_sip_retransmissions_total") == 1
    assert len(router.transactions) == 1


def test_a_register_without_credentials_is_challenged_statelessly() -> None:
    # RFC 3261 §8.2.7: no transaction state for an unauthenticated request; a retransmission
    # is challenged again, with a fresh nonce and the same To tag (§19.3, derived from the
    # request), and either challenge can be answered.
    router, metrics = make_router()
    data = request(branch="z9hG4bKunauth")
    first = parse_message(router.handle_message(data, PEER, now=NOW, wall=NOW)[0].data)
    again = parse_message(router.handle_message(data, PEER, now=NOW + 0.5, wall=NOW + 0.5)[0].data)
    assert isinstance(first, SipResponse) and isinstance(again, SipResponse)
    assert first.status == again.status == 401
    assert first.headers.get("To") == again.headers.get("To")
    assert "tag=" in (first.headers.get("To") or "")
    assert first.headers.get("WWW-Authenticate") != again.headers.get("WWW-Authenticate")
    assert len(router.transactions) == 0
    assert sample(metrics, "sipserver_sip_retransmissions_total") == 0
    for header in (first.headers.get("WWW-Authenticate"), again.headers.get("WWW-Authenticate")):
        assert header is not None
        final = send(
            router, _authenticated(router, header, call_id=f"c-{len(header)}-{id(header)}")
        )
        assert final.status == 200


def test_a_refused_register_without_credentials_leaves_no_transaction() -> None:
    router, _ = make_router()
    assert send(router, request(uri="sip:elsewhere.example.org")).status == 403
    assert len(router.transactions) == 0


@pytest.mark.parametrize(
    ("method", "status"),
    [("INVITE", 480), ("BYE", 481), ("CANCEL", 481), ("SUBSCRIBE", 405), ("FOO", 501)],
)
def test_methods_without_service(method: str, status: int) -> None:
    router, _ = make_router()
    resp = send(router, request(method, contact=None, expires=None))
    assert resp.status == status
    if status in (405, 501):
        assert resp.headers.get("Allow")


def test_ack_gets_no_answer() -> None:
    router, _ = make_router()
    assert router.handle_message(request("ACK"), PEER, now=NOW, wall=NOW) == []


def test_unparseable_without_addressing_is_dropped_and_counted() -> None:
    router, metrics = make_router()
    assert router.handle_message(b"\x00garbage\r\n\r\n", PEER, now=NOW, wall=NOW) == []
    assert sample(metrics, "sipserver_sip_parse_errors_total", transport="udp", answered="no") == 1


def test_bad_request_with_addressing_gets_400() -> None:
    router, metrics = make_router()
    data = request("OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    out = router.handle_message(data, PEER, now=NOW, wall=NOW)
    # The 400 echoes the broken CSeq (RFC 3261 §8.2.6.2), so it is checked as bytes.
    assert out[0].data.startswith(b"SIP/2.0 400 Invalid CSeq\r\n")
    assert b"\r\nCall-ID: call-1\r\n" in out[0].data
    assert sample(metrics, "sipserver_sip_parse_errors_total", transport="udp", answered="yes") == 1


def test_response_goes_to_via_port_without_rport_when_not_forced() -> None:
    router, _ = make_router(force_rport=False)
    out = router.handle_message(
        request("OPTIONS", via_params=""), Peer("udp", "198.51.100.7", 40000), now=NOW, wall=NOW
    )
    assert (out[0].host, out[0].port) == ("198.51.100.7", 5062)
    peer = Peer("udp", "198.51.100.7", 40000)
    out = router.handle_message(request("OPTIONS"), peer, now=NOW, wall=NOW)
    assert (out[0].host, out[0].port) == ("198.51.100.7", 40000)


def test_bindings_expire_on_the_timer() -> None:
    router, metrics = make_router()
    assert register(router, expires=60).status == 200
    router.handle_timer(now=NOW + 59, wall=NOW + 59)
    assert sample(metrics, "sipserver_registrations_active") == 1
    router.handle_timer(now=NOW + 61, wall=NOW + 61)
    assert sample(metrics, "sipserver_registrations_active") == 0


def test_registrations_gauge_counts_the_store_at_scrape_time() -> None:
    # The gauge reads the store when scraped: each new contact, a refresh (no change) and
    # a removal with Expires: 0 show at once, without a timer pass.
    router, metrics = make_router()
    assert register(router, call_id="c1").status == 200
    assert register(router, call_id="c2", contact="<sip:alice@198.51.100.7:5070>").status == 200
    assert sample(metrics, "sipserver_registrations_active") == 2
    assert register(router, call_id="c3").status == 200
    assert sample(metrics, "sipserver_registrations_active") == 2
    assert (
        register(router, call_id="c4", contact="<sip:alice@198.51.100.7:5070>", expires=0).status
        == 200
    )
    assert sample(metrics, "sipserver_registrations_active") == 1


def test_non_sip_request_uri_is_416() -> None:
    router, _ = make_router()
    resp = send(router, request("OPTIONS", uri="tel:+15005550101", contact=None, expires=None))
    assert resp.status == 416


def test_scanner_flood_keeps_memory_bounded() -> None:
    # A scanner tries many user names from many addresses (SIPVicious-style). Every structure
    # that grows with peers is capped: failure tracking, bans, nonce-count tracking, the
    # transaction table.
    tracker = FailureTracker(max_failures=3, window=60, ban_duration=300, max_sources=500)
    router, metrics = make_router(tracker=tracker)
    for i in range(3000):
        peer = Peer("udp", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 5060)
        for attempt in range(3):
            resp = register(
                router,
                user=f"user{i}",
                password="guess",
                peer=peer,
                now=NOW + i * 0.01,
                call_id=f"scan-{i}-{attempt}",
            )
            assert resp.status == 403
    assert len(tracker._failures) <= 500
    assert len(tracker._bans) <= 500
    assert sample(metrics, "sipserver_auth_failures_total", reason="unknown_user") == 9000
    assert sample(metrics, "sipserver_bans_total") == 3000
    assert sample(metrics, "sipserver_registrations_active") in (None, 0.0)


class _BrokenStore(MemoryStore):
    """A store with a bug: every write raises."""

    def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        raise RuntimeError("bug")


def test_unexpected_error_costs_one_request_not_the_edge() -> None:
    # The bug is planted behind the store boundary, not by patching Registrar: the registrar
    # may be compiled (mypyc), where a patched method is not what compiled callers run.
    router, metrics = make_router(store=_BrokenStore())
    assert register(router).status == 500
    assert sample(metrics, "sipserver_sip_internal_errors_total") == 1
    assert send(router, request("OPTIONS", contact=None, expires=None)).status == 200


@pytest.mark.parametrize(
    ("numbering", "dialled", "found"),
    [
        ({}, "+15005550101", True),
        ({}, "15005550101", True),
        ({}, "0015005550101", False),
        ({"international_prefix": "00"}, "0015005550101", True),
        ({"strip_prefixes": ["9"], "international_prefix": "011"}, "901115005550101", True),
        ({"country_code": "1", "national_prefix": "0"}, "05005550101", True),
        ({"country_code": "1", "national_prefix": "0"}, "05005550199", False),
    ],
)
def test_invite_numbers_go_through_the_numbering_plan(
    numbering: dict[str, Any], dialled: str, found: bool
) -> None:
    router, _ = make_router(numbering=numbering)
    agent = router.agent_for_number(dialled)  # what INVITE routing uses
    assert (agent is not None and agent.slug == "alice") is found


# --- digest uri (RFC 7616 §3.4.6 and what deployed UAs send) --------------------------------


@pytest.mark.parametrize(
    "digest_uri",
    [
        "sip:sip.example.com:5060",  # SIPp's default: the server's host and port
        "sip:alice@sip.example.com",  # another user part
        "sip:+15005550101@sip.example.com:5060",
        "sip:198.51.100.1:5060",  # an IP literal: the listener is 0.0.0.0
        "sip:localhost",
    ],
)
def test_digest_uri_naming_this_server_is_accepted(digest_uri: str) -> None:
    router, metrics = make_router()
    assert register(router, digest_uri=digest_uri).status == 200
    assert sample(metrics, "sipserver_auth_failures_total", reason="wrong_uri") is None


@pytest.mark.parametrize(
    "digest_uri",
    ["sip:elsewhere.example.org", "sip:sip.example.com:5070", "sip:alice@elsewhere.example.org"],
)
def test_digest_uri_naming_another_server_is_403(digest_uri: str) -> None:
    router, metrics = make_router()
    assert register(router, digest_uri=digest_uri).status == 403
    assert sample(metrics, "sipserver_auth_failures_total", reason="wrong_uri") == 1


def test_strict_digest_uri_check_wants_the_request_uri() -> None:
    router, metrics = make_router(digest_uri_check="strict")
    assert register(router, digest_uri="sip:sip.example.com:5060").status == 403
    assert sample(metrics, "sipserver_auth_failures_total", reason="wrong_uri") == 1
    assert register(router, call_id="c2").status == 200  # the Request-URI itself


# --- registration log lines -------------------------------------------------------------------


class _Recorder:
    """Stands in for the registration handler's structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))

    def events(self, *names: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [line for line in self.lines if line[1] in names]


def _record_logs(monkeypatch: pytest.MonkeyPatch, *, debug: bool, info: bool) -> _Recorder:
    """The registration handler's logger replaced by a recorder, at the level given."""
    from sipserver.edge import registration as registration_module

    recorder = _Recorder()
    monkeypatch.setattr(registration_module, "log", recorder)
    monkeypatch.setattr(registration_module, "debug_logged", lambda: debug)
    monkeypatch.setattr(registration_module, "info_logged", lambda: info)
    return recorder


def test_a_refresh_logs_nothing_unless_debug_lines_are_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _record_logs(monkeypatch, debug=False, info=True)
    router, _ = make_router()
    assert register(router, expires=120).status == 200
    assert register(router, expires=120, call_id="c1", now=NOW + 60).status == 200
    assert [line[1] for line in recorder.lines] == ["registered"]


def test_below_info_no_binding_change_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _record_logs(monkeypatch, debug=False, info=False)
    router, _ = make_router()
    assert register(router, expires=120).status == 200
    assert register(router, expires=0, call_id="c1", now=NOW + 60).status == 200
    assert recorder.lines == []


def test_registrations_are_logged_one_line_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _record_logs(monkeypatch, debug=True, info=True)
    router, _ = make_router()
    names = ("registered", "registration_refreshed", "unregistered")
    assert register(router, expires=120).status == 200
    contact = {"aor": "sip:alice@sip.example.com", "contact": "sip:alice@198.51.100.7:5062"}
    source = "udp:198.51.100.7:5062"
    assert recorder.events(*names) == [
        (
            "info",
            "registered",
            {**contact, "source": source, "expires": 120, "agent": "alice", "user_agent": None},
        )
    ]
    recorder.lines.clear()
    # A refresh of the same contact is no news: debug.
    assert register(router, expires=120, call_id="c1", now=NOW + 60).status == 200
    assert recorder.events(*names) == [
        ("debug", "registration_refreshed", {**contact, "source": source, "expires": 120})
    ]
    recorder.lines.clear()
    assert register(router, expires=0, call_id="c2", now=NOW + 61).status == 200
    removed = {**contact, "source": source, "expires": 0}
    assert recorder.events(*names) == [("info", "unregistered", {**removed, "reason": "request"})]
    recorder.lines.clear()
    # A binding that runs out is logged when the timer removes it.
    assert register(router, expires=60, call_id="c3", now=NOW + 100).status == 200
    router.handle_timer(now=NOW + 161, wall=NOW + 161)
    assert recorder.events("unregistered") == [
        ("info", "unregistered", {**removed, "reason": "expired"})
    ]
