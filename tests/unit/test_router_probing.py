"""Numbers cannot be probed: the ban and the allow-lists are judged before the number is looked
up, and an unknown number is answered like a known one until the caller's credentials are
checked (issue [2/7], "Probing and exposure"). In memory, over the real router, digest code and
call proxy; the same over real sockets with SIPp in tests/integration/test_calls.py."""

from __future__ import annotations

from typing import Any

import pytest

from sipserver.edge.proxy import CallProxy, Endpoint
from sipserver.edge.router import Peer, SipRouter
from sipserver.observability import Metrics
from sipserver.sip.digest import DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message
from tests.unit.test_router import NOW, PEER, invite_request, make_router, sample, send

KNOWN, UNKNOWN, FENCED = "+15005550101", "+15009999999", "+15005550102"  # alice, -, bob
WORKER = Endpoint("udp", "127.0.0.1", 5999)


def edge(alice: dict[str, Any] | None = None) -> tuple[SipRouter, Metrics]:
    proxy = CallProxy(
        outside=Endpoint("udp", "sip.example.com", 5060),
        inside=Endpoint("udp", "127.0.0.1", 5060),
        instance="t",
    )
    return make_router(
        router_options={"proxy": proxy, "choose_worker": lambda agent, call: ("w1", WORKER)},
        alice=alice,
    )


def invite(router: SipRouter, number: str, *, call_id: str, peer: Peer = PEER) -> SipResponse:
    return send(router, invite_request(number, call_id=call_id), peer=peer)


def invite_with_credentials(
    router: SipRouter,
    number: str,
    user: str,
    password: str,
    *,
    call_id: str,
    now: float = NOW,
) -> SipResponse | None:
    """INVITE, answer its 407; the final response (None: routed to the worker)."""
    first = send(router, invite_request(number, call_id=call_id), now=now)
    assert first.status == 407, first
    challenge = DigestChallenge.parse(first.headers.get_all("Proxy-Authenticate")[0])
    auth = build_authorization(
        challenge,
        username=user,
        password=password,
        method="INVITE",
        uri=f"sip:{number}@sip.example.com",
        cnonce="c0",
    )
    out = router.handle_message(
        invite_request(number, call_id=call_id, auth=auth), PEER, now=now, wall=now
    )
    if any(m.port == WORKER.port for m in out):
        return None  # forwarded to the worker: the call is routed
    final = [m for m in out if not m.data.startswith(b"SIP/2.0 100")]
    response = parse_message(final[0].data)
    assert isinstance(response, SipResponse)
    return response


def shape(response: SipResponse) -> tuple[int, str, tuple[str, ...]]:
    """What a scanner compares: status, reason phrase and the header names."""
    names = tuple(sorted({name.lower() for name, _ in response.headers}))
    return response.status, response.reason, names


def test_unknown_and_known_numbers_get_the_same_challenge() -> None:
    router, metrics = edge()
    known = invite(router, KNOWN, call_id="k")
    unknown = invite(router, UNKNOWN, call_id="u")
    fenced = invite(router, FENCED, call_id="f")  # bob's number, whose list excludes PEER
    assert known.status == unknown.status == fenced.status == 407
    assert shape(known) == shape(unknown) == shape(fenced)
    assert sample(metrics, "sipserver_call_attempts_total", result="no_such_number") is None


def test_after_authentication_the_truth_404_or_403() -> None:
    router, metrics = edge()
    resp = invite_with_credentials(router, UNKNOWN, "alice", "alice-pw-1234", call_id="u")
    assert resp is not None and (resp.status, resp.reason) == (404, "No Such Number")
    assert sample(metrics, "sipserver_call_attempts_total", result="no_such_number") == 1
    resp = invite_with_credentials(router, FENCED, "alice", "alice-pw-1234", call_id="f")
    assert resp is not None and (resp.status, resp.reason) == (403, "Source Address Not Allowed")
    assert invite_with_credentials(router, KNOWN, "alice", "alice-pw-1234", call_id="k") is None


def test_wrong_passwords_at_unknown_numbers_count_toward_the_ban() -> None:
    router, metrics = edge()
    for i in range(3):  # ban.max_failures
        resp = invite_with_credentials(router, UNKNOWN, "alice", "wrong", call_id=f"w{i}")
        assert resp is not None and resp.status == 403
    assert sample(metrics, "sipserver_bans_total") == 1


def test_a_banned_source_gets_403_whatever_it_dials() -> None:
    router, metrics = edge()
    for i in range(3):
        invite_with_credentials(router, KNOWN, "alice", "wrong", call_id=f"w{i}")
    answers = [invite(router, n, call_id=f"b{n}") for n in (KNOWN, UNKNOWN, FENCED)]
    assert [r.status for r in answers] == [403, 403, 403]
    assert len({shape(r) for r in answers}) == 1
    assert all(not r.headers.get_all("Proxy-Authenticate") for r in answers)
    assert sample(metrics, "sipserver_call_attempts_total", result="banned") == 3


@pytest.mark.parametrize("number", [KNOWN, UNKNOWN, FENCED])
def test_a_source_no_agent_allows_gets_403_before_any_challenge(number: str) -> None:
    router, metrics = edge(alice={"allowed_ips": ["192.0.2.0/24"]})
    resp = invite(router, number, call_id="x")
    assert (resp.status, resp.reason) == (403, "Source Address Not Allowed")
    assert not resp.headers.get_all("Proxy-Authenticate")
    assert sample(metrics, "sipserver_call_attempts_total", result="acl_denied") == 1


def test_a_source_trusted_by_address_gets_404_at_once() -> None:
    """A trunk an ``invite_auth: ip`` agent allows is authenticated by its address: the true
    answer (404) without a challenge, as RFC 3261 §21.4.5 wants."""
    trunk = Peer("udp", "192.0.2.10", 5060)
    router, _ = edge(alice={"allowed_ips": ["192.0.2.0/24"], "invite_auth": "ip"})
    resp = invite(router, UNKNOWN, call_id="u", peer=trunk)
    assert (resp.status, resp.reason) == (404, "No Such Number")
    resp = invite(router, FENCED, call_id="f", peer=trunk)
    assert (resp.status, resp.reason) == (403, "Source Address Not Allowed")


def test_bans_allow_lists_and_bad_credentials_are_counted_refusals() -> None:
    """Every SIP refusal lands in sipserver_refusals_total{ingress="sip"} (and the refusal log)."""
    from sipserver.observability import RefusalLog

    router, metrics = edge(alice={"allowed_ips": ["198.51.100.0/24"]})
    router._refusals = RefusalLog(metrics)  # the server passes its own at construction
    for i in range(3):  # ban.max_failures wrong passwords, then banned
        invite_with_credentials(router, KNOWN, "alice", "wrong", call_id=f"w{i}")
    invite(router, UNKNOWN, call_id="banned")
    outsider = Peer("udp", "192.0.2.7", 5060)
    invite(router, KNOWN, call_id="fenced", peer=outsider)

    def refused(reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "sipserver_refusals_total", {"ingress": "sip", "reason": reason}
        )

    assert (refused("auth_failed"), refused("banned"), refused("acl_denied")) == (3, 1, 1)
