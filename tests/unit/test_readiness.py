"""Readiness (starting, ready, not ready, draining) and what the edge answers in each state.

The router runs with the real parser, digest code and call proxy; the worker chooser and the
admission are plain functions standing in for the server's pool and readiness.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
import yaml

from sipserver import server as server_module
from sipserver.config import parse_config
from sipserver.edge.proxy import CallProxy, Endpoint
from sipserver.edge.router import RETRY_AFTER, Admission, SipRouter, WorkerChooser
from sipserver.readiness import STARTUP_STEPS, Readiness
from sipserver.server import Server
from sipserver.sip.digest import DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message
from tests.unit.test_router import NOW, PEER, make_router, request, send

NUMBER = "+15005550101"  # agent alice (digest), PEER is allowed
PASSWORD = "alice-pw-1234"  # alice's password in test_router.make_router
FENCED = "+15005550102"  # agent bob: only 203.0.113.0/24
WORKER = Endpoint("udp", "127.0.0.1", 6001)


# ------------------------------------------------------------------ the state


def test_starting_names_what_is_missing_until_everything_is_up() -> None:
    readiness = Readiness()
    report = readiness.report(media_workers_needed=True, media_workers_up=0)
    assert (report.status, report.waiting_for) == (
        "starting",
        ("listeners", "voice_models", "media_workers"),
    )
    readiness.step_done("listeners")
    readiness.step_done("voice_models")
    report = readiness.report(media_workers_needed=True, media_workers_up=0)
    assert (report.status, report.waiting_for) == ("starting", ("media_workers",))
    assert not report.ready
    report = readiness.report(media_workers_needed=True, media_workers_up=1)
    assert report.ready and report.waiting_for == ()
    assert report.as_json() == {"status": "ready", "ready": True, "waiting_for": []}


def test_no_media_worker_is_needed_without_sip_agents() -> None:
    readiness = Readiness()
    readiness.step_done("listeners")
    readiness.step_done("voice_models")
    assert readiness.report(media_workers_needed=False, media_workers_up=0).ready


def test_losing_every_worker_after_start_is_not_ready_not_starting() -> None:
    readiness = Readiness()
    readiness.step_done("listeners")
    readiness.step_done("voice_models")
    assert readiness.report(media_workers_needed=True, media_workers_up=2).ready
    report = readiness.report(media_workers_needed=True, media_workers_up=0)
    assert (report.status, report.waiting_for) == ("not_ready", ("media_workers",))


def test_draining_is_final() -> None:
    readiness = Readiness()
    readiness.step_done("listeners")
    readiness.step_done("voice_models")
    readiness.drain()
    report = readiness.report(media_workers_needed=True, media_workers_up=4)
    assert (report.status, report.waiting_for, report.ready) == ("draining", (), False)
    readiness.step_done("listeners")
    assert readiness.report(media_workers_needed=False, media_workers_up=0).status == "draining"


def test_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="media_workers"):
        Readiness().step_done("media_workers")  # a live condition, not a one-shot step


# ------------------------------------------------------------------ the edge's answers


class Edge:
    """A router with a call proxy; ``refusal`` is what the admission answers."""

    def __init__(self, chooser: str = "worker") -> None:
        self.refusal: str | None = None
        self.chosen = 0
        self.chooser = chooser
        admission: Admission = lambda: self.refusal  # noqa: E731
        choose: WorkerChooser = self._choose
        proxy = CallProxy(
            outside=Endpoint("udp", "sip.example.com", 5060),
            inside=Endpoint("udp", "127.0.0.1", 5060),
            instance="t",
        )
        self.router: SipRouter
        self.router, self.metrics = make_router(
            router_options={"proxy": proxy, "choose_worker": choose, "admission": admission}
        )

    def _choose(self, agent: str, call_id: str) -> tuple[str, Endpoint] | Literal["full"] | None:
        self.chosen += 1
        if self.chooser == "none":
            return None
        if self.chooser == "full":
            return "full"
        return "w1", WORKER

    def attempts(self, result: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "sipserver_call_attempts_total", {"result": result}
        )


def invite(number: str = NUMBER, call_id: str = "inv-1", auth: str | None = None) -> bytes:
    data = request(
        "INVITE",
        number,
        uri=f"sip:{number}@sip.example.com",
        call_id=call_id,
        expires=None,
    )
    if auth is not None:
        data = data.replace(
            b"Content-Length: 0", f"Proxy-Authorization: {auth}\r\n".encode() + b"Content-Length: 0"
        )
    return data


def authenticated_invite(edge: Edge, call_id: str) -> list[bytes]:
    """INVITE, 407, INVITE with alice's credentials: what the edge sends for the second."""
    challenge_resp = send(edge.router, invite(call_id=call_id))
    assert challenge_resp.status == 407, challenge_resp
    challenge = DigestChallenge.parse(challenge_resp.headers.get_all("Proxy-Authenticate")[0])
    auth = build_authorization(
        challenge,
        username="alice",
        password=PASSWORD,
        method="INVITE",
        uri=f"sip:{NUMBER}@sip.example.com",
        cnonce="c0ffee",
    )
    out = edge.router.handle_message(invite(call_id=call_id, auth=auth), PEER, now=NOW, wall=NOW)
    return [o.data for o in out]


@pytest.mark.parametrize("refusal", ["starting", "not_ready", "draining"])
def test_invite_while_not_ready_is_503_with_retry_after_before_any_challenge(refusal: str) -> None:
    edge = Edge()
    edge.refusal = refusal
    resp = send(edge.router, invite())
    assert (resp.status, resp.reason) == (503, "Service Unavailable")
    assert resp.headers.get("Retry-After") == str(RETRY_AFTER)
    assert resp.headers.get("Warning") == f'399 sipserver "{refusal}"'
    assert "Proxy-Authenticate" not in resp.headers
    assert edge.chosen == 0
    assert edge.attempts(refusal) == 1


def test_checks_before_readiness_still_answer_as_usual() -> None:
    """While starting, every number this source may try gets the same 503 (its own, nobody's,
    one whose list excludes it: none told apart, docs/security.md); a ban is still 403 first."""
    edge = Edge()
    edge.refusal = "starting"
    for number in (NUMBER, "+15009999999", FENCED):
        assert send(edge.router, invite(number, call_id=number)).status == 503
    for _ in range(3):  # ban.max_failures
        edge.router._tracker.record_failure(PEER.host, now=NOW)
    assert send(edge.router, invite("+15009999999", call_id="inv-2")).status == 403


def test_ready_edge_challenges_then_routes_to_the_worker() -> None:
    edge = Edge()
    assert send(edge.router, invite()).status == 407
    sent = authenticated_invite(edge, "inv-3")
    forwarded, trying = (parse_message(d) for d in sent)
    assert isinstance(trying, SipResponse) and trying.status == 100
    assert not isinstance(forwarded, SipResponse) and forwarded.method == "INVITE"
    assert edge.attempts("routed") == 1


def test_all_workers_busy_is_503_and_no_pool_at_all_is_480() -> None:
    busy = Edge(chooser="full")
    (raw,) = authenticated_invite(busy, "inv-4")
    resp = parse_message(raw)
    assert isinstance(resp, SipResponse)
    assert (resp.status, resp.headers.get("Retry-After")) == (503, str(RETRY_AFTER))
    # 480 is left for an edge that has no worker pool at all (a configuration that cannot take
    # calls); a pool whose workers are not up yet is refused with 503 by the admission.
    no_pool = Edge(chooser="none")
    (raw,) = authenticated_invite(no_pool, "inv-5")
    resp = parse_message(raw)
    assert isinstance(resp, SipResponse) and resp.status == 480


def test_options_gets_what_an_invite_would_get() -> None:
    edge = Edge()
    options = request("OPTIONS", contact=None, expires=None)
    assert send(edge.router, options).status == 200
    edge.refusal = "draining"
    resp = send(edge.router, request("OPTIONS", contact=None, expires=None, call_id="o2"))
    assert resp.status == 503
    assert resp.headers.get("Retry-After") == str(RETRY_AFTER)


# ------------------------------------------------------------------ the server's waits


def idle_server(drain_timeout: float = 60.0) -> Server:
    """A server with nobody taking SIP calls (no worker pool), built but not started."""
    raw = {"server": {"store": "memory", "drain_timeout": drain_timeout}, "agents": []}
    return Server(parse_config(yaml.safe_dump(raw), env={}))


async def test_drain_ends_when_the_last_websocket_call_leaves() -> None:
    """The drain waits on the server's state changes, not on a clock: the gateway reports a
    call that left, and the drain (60 s allowed) returns then."""
    server = idle_server(drain_timeout=60)
    call = object()
    server.gateway.calls.add(call)  # type: ignore[arg-type]  # stands for a StreamCall
    drain = asyncio.create_task(server.drain())
    await asyncio.sleep(0.05)
    assert not drain.done()
    # What MediaStreamGateway.media_stream does when a call ends.
    server.gateway.calls.discard(call)  # type: ignore[arg-type]
    assert server.gateway._on_call_ended is not None
    server.gateway._on_call_ended()
    await asyncio.wait_for(drain, 5)
    assert server.calls_in_progress() == 0


async def test_a_second_stop_request_ends_the_drain() -> None:
    server = idle_server(drain_timeout=60)
    server.gateway.calls.add(object())  # type: ignore[arg-type]
    server.request_stop()
    drain = asyncio.create_task(server.drain())
    await asyncio.sleep(0.05)
    assert not drain.done()
    server.request_stop()
    await asyncio.wait_for(drain, 5)
    assert server.calls_in_progress() == 1  # left for stop() to end


async def test_ready_is_logged_once_the_start_up_steps_are_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = idle_server()
    logged: list[str] = []
    monkeypatch.setattr(server_module.log, "info", lambda event, **kw: logged.append(event))
    watcher = asyncio.create_task(server._log_ready(0.0))
    for step in STARTUP_STEPS:
        await asyncio.sleep(0.05)
        assert not watcher.done() and logged == []
        server.readiness.step_done(step)  # as start() does, with the state change
        server._state_changed()
    await asyncio.wait_for(watcher, 5)
    assert logged == ["ready"]
    # A stop before the server was ever ready: the watcher ends without logging it.
    server = idle_server()
    watcher = asyncio.create_task(server._log_ready(0.0))
    await asyncio.sleep(0.05)
    server.request_stop()
    await asyncio.wait_for(watcher, 5)
    assert logged == ["ready", "stopping"]  # no second "ready"
