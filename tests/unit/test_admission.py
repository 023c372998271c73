"""Admission control: the ledger's limits and counts, and the edge's 503 past them.

The router runs with the real parser, digest code, call proxy and a real :class:`CallLedger`
fed by the proxy's call events, as the server wires them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml
from aiohttp import WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.admission import (
    CALLS_PER_CORE,
    CallLedger,
    Reservation,
    default_max_calls,
    model_kind,
)
from sipserver.config import Config, ConfigError, parse_config
from sipserver.edge.proxy import CallEnded, CallProxy, CallRouted, Endpoint, ProxyEvent
from sipserver.edge.router import RETRY_AFTER
from sipserver.gateway.websocket import MediaStreamGateway
from sipserver.heap import HeapTrimmer, trim_heap
from sipserver.observability import Metrics, RefusalLog
from sipserver.pipeline.echo import EchoSession, tone_greeting
from sipserver.pipeline.session import CallInfo
from sipserver.reload import classify
from sipserver.sip.message import SipResponse, parse_message
from tests.unit.test_readiness import WORKER, authenticated_invite, invite
from tests.unit.test_router import make_router, request, send

WS_SECRET = "support-ws-secret-0123456789"


def config(max_calls: Any = "auto", **agents: int | None) -> Config:
    raw: dict[str, Any] = {
        "server": {"store": "memory", "max_calls": max_calls},
        "models": {"local": {"type": "custom"}},
        "agents": [{"slug": slug, "max_concurrent_calls": n} for slug, n in agents.items()],
    }
    return parse_config(yaml.safe_dump(raw), env={})


# ------------------------------------------------------------------ the ledger


def test_agent_limit_then_server_limit() -> None:
    ledger = CallLedger(config(3, a=2, b=None))
    held = [ledger.admit("a", "websocket"), ledger.admit("a", "sip")]
    assert all(isinstance(r, Reservation) for r in held)
    assert ledger.refusal("a") == "agent_full" and ledger.admit("a", "sip") == "agent_full"
    assert isinstance(ledger.admit("b", "websocket"), Reservation)
    assert ledger.refusal("b") == "server_full" and ledger.refusal("a") == "server_full"
    assert (ledger.total, ledger.in_progress("a"), ledger.in_progress("b")) == (3, 2, 1)
    assert ledger.by_ingress() == {"websocket": 2, "sip": 1}


def test_the_ledger_lists_the_calls_in_progress_with_id_door_and_start() -> None:
    clock = iter([100.0, 101.5, 103.0])
    ledger = CallLedger(config(5, a=None, b=None), wall_clock=lambda: next(clock))
    sip = ledger.reserve("a", "sip", "abc@host")
    ws = ledger.admit("a", "websocket")
    other = ledger.admit("b", "listens")
    assert isinstance(ws, Reservation) and isinstance(other, Reservation)
    assert [(r.label, r.ingress, r.started_at) for r in ledger.calls("a")] == [
        ("abc@host", "sip", 100.0),
        ("websocket-2", "websocket", 101.5),  # no id of its own: the door and the number
    ]
    assert [r.label for r in ledger.calls()] == ["abc@host", "websocket-2", "listens-3"]
    sip.release()
    sip.release()
    assert [r.label for r in ledger.calls()] == ["websocket-2", "listens-3"]
    ws.release()
    other.release()
    assert ledger.calls() == [] and ledger.total == 0


def test_a_reservation_is_released_exactly_once() -> None:
    ledger = CallLedger(config(5))
    first = ledger.reserve("a", "websocket")
    second = ledger.reserve("a", "websocket")
    first.release()
    first.release()  # a call that ends twice (a drop during a hangup) counts once
    assert not first.held and second.held
    assert ledger.total == 1 and ledger.in_progress("a") == 1
    second.release()
    assert ledger.total == 0 and ledger.by_ingress() == {} and ledger.in_progress("a") == 0


def test_limits_are_live_and_never_cut_calls_in_progress() -> None:
    ledger = CallLedger(config(10, a=None))
    held = [ledger.reserve("a", "websocket") for _ in range(3)]
    ledger.configure(config(10, a=2))
    assert ledger.refusal("a") == "agent_full" and ledger.over_limit("a")
    assert ledger.total == 3 and all(r.held for r in held)
    held[0].release()
    assert not ledger.over_limit("a") and ledger.refusal("a") == "agent_full"
    held[1].release()
    assert ledger.refusal("a") is None


def test_zero_pauses_an_agent() -> None:
    ledger = CallLedger(config(10, a=0))
    assert ledger.admit("a", "sip") == "agent_full" and ledger.refusal("a") == "agent_full"


def test_auto_capacity_follows_the_most_expensive_model_kind() -> None:
    echo = parse_config(yaml.safe_dump({"agents": [{"slug": "e"}]}), env={})
    assert model_kind(echo, echo.agents[0]) == "echo"
    assert default_max_calls(echo, cores=2) == 2 * CALLS_PER_CORE["echo"]
    raw = {
        "models": {
            "local": {"type": "custom"},
            "hosted": {"type": "custom", "stt": "openai", "llm": "openai", "tts": "openai"},
        },
        "credentials": {"openai": {"api_key": "sk-test"}},
        "agents": [
            {"slug": "h", "realtime": {"enabled": True, "model": "hosted"}},
            {"slug": "e"},
        ],
    }
    hosted = parse_config(yaml.safe_dump(raw), env={})
    assert model_kind(hosted, hosted.agents[0]) == "hosted"
    assert default_max_calls(hosted, cores=2) == 2 * CALLS_PER_CORE["hosted"]
    raw["agents"].append({"slug": "l", "realtime": {"enabled": True, "model": "local"}})
    mixed = parse_config(yaml.safe_dump(raw), env={})
    assert default_max_calls(mixed, cores=4) == 4 * CALLS_PER_CORE["local"]
    assert CallLedger(mixed, cores=4).max_calls == 4 * CALLS_PER_CORE["local"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("server.max_calls", 0), ("server.max_calls", "many"), ("agents[0].max_concurrent_calls", -1)],
)
def test_bad_limits_name_the_key(key: str, value: Any) -> None:
    raw: dict[str, Any] = {"server": {}, "agents": [{"slug": "a"}]}
    if key.startswith("server"):
        raw["server"]["max_calls"] = value
    else:
        raw["agents"][0]["max_concurrent_calls"] = value
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(raw), env={})
    assert key in str(info.value)


def test_capacity_keys_are_live_on_reload() -> None:
    assert classify("server.max_calls") == "live"


# ------------------------------------------------------------------ the edge


class LedgerEdge:
    """A router whose capacity is a real ledger fed by the proxy's events (as in server.py)."""

    def __init__(self, max_calls: int, alice: int | None) -> None:
        raw = {
            "server": {"store": "memory", "max_calls": max_calls},
            "agents": [{"slug": "alice", "max_concurrent_calls": alice}, {"slug": "bob"}],
        }
        self.ledger = CallLedger(parse_config(yaml.safe_dump(raw), env={}))
        self.reservations: dict[str, Any] = {}
        metrics = Metrics()
        self.refusals = RefusalLog(metrics)
        proxy = CallProxy(
            outside=Endpoint("udp", "sip.example.com", 5060),
            inside=Endpoint("udp", "127.0.0.1", 5060),
            instance="t",
        )
        self.router, self.metrics = make_router(
            router_options={
                "proxy": proxy,
                "choose_worker": lambda agent, call_id: ("w1", WORKER),
                "capacity": self.ledger.refusal,
                "refusals": self.refusals,
                "on_call_event": self.event,
            }
        )
        self.refusal_metrics = metrics

    def event(self, event: ProxyEvent) -> None:
        if isinstance(event, CallRouted):
            self.reservations[event.call_id] = self.ledger.reserve(event.agent, "sip")
        elif isinstance(event, CallEnded):
            self.reservations.pop(event.call_id).release()


def _status(raw: bytes) -> SipResponse:
    resp = parse_message(raw)
    assert isinstance(resp, SipResponse)
    return resp


def test_invite_past_the_agents_limit_is_503_with_retry_after_once_authenticated() -> None:
    edge = LedgerEdge(max_calls=10, alice=1)
    sent = authenticated_invite(edge, "c1")  # type: ignore[arg-type]
    assert _status(sent[1]).status == 100 and edge.ledger.in_progress("alice") == 1
    # Before authentication the answer must not depend on the number (a scanner would learn
    # it exists): the usual challenge...
    assert send(edge.router, invite(call_id="c2")).status == 407
    # ...and with the agent's credentials, 503 with Retry-After naming the agent's limit.
    (raw,) = authenticated_invite(edge, "c3")  # type: ignore[arg-type]
    resp = _status(raw)
    assert (resp.status, resp.headers.get("Retry-After")) == (503, str(RETRY_AFTER))
    assert resp.headers.get("Warning") == '399 sipserver "agent_full"'
    counted = edge.refusal_metrics.registry.get_sample_value(
        "sipserver_refusals_total", {"ingress": "sip", "reason": "agent_full"}
    )
    assert counted == 1


def test_server_limit_and_options_still_answered() -> None:
    edge = LedgerEdge(max_calls=1, alice=None)
    authenticated_invite(edge, "c1")  # type: ignore[arg-type]
    resp = send(edge.router, invite(call_id="c2"))
    # The server's own limit does not depend on the number: 503 before any challenge, for a
    # number that exists and for one that does not alike.
    assert resp.status == 503 and resp.headers.get("Warning") == '399 sipserver "server_full"'
    assert "Proxy-Authenticate" not in resp.headers
    unknown = send(edge.router, invite("+15009999999", call_id="c3"))
    assert (unknown.status, unknown.headers.get("Warning")) == (
        resp.status,
        resp.headers.get("Warning"),
    )
    # OPTIONS answers 200 at capacity: the edge is up, the calls are what is full.
    assert send(edge.router, request("OPTIONS", contact=None, expires=None)).status == 200


# ------------------------------------------------------------------ the heap after calls


def test_heap_is_trimmed_when_a_burst_ends_and_every_n_calls_at_most_every_interval() -> None:
    trimmer = HeapTrimmer(every_calls=3, min_interval=10.0)
    assert trimmer.call_ended(2, now=0.0) is None  # calls go on: wait for more ends
    assert trimmer.call_ended(1, now=1.0) is None
    assert trimmer.call_ended(1, now=2.0) == 0.0  # the 3rd end: trim now
    assert trimmer.call_ended(0, now=3.0) is None  # one is scheduled already
    trimmer.trimmed(now=2.5)
    assert trimmer.call_ended(0, now=4.0) == pytest.approx(8.5)  # burst over, interval left
    trimmer.trimmed(now=12.5)
    assert trimmer.call_ended(0, now=30.0) == 0.0
    assert trimmer.trims == 2


def test_trim_heap_runs_here() -> None:
    assert trim_heap() in (True, False)  # glibc here; a no-op elsewhere


# ------------------------------------------------------------------ the websocket gateway


async def gateway_client(max_calls: int, agent: int | None) -> tuple[Any, CallLedger, Metrics]:
    cfg = parse_config(
        yaml.safe_dump(
            {
                "server": {"max_calls": max_calls},
                "agents": [
                    {
                        "slug": "support",
                        "max_concurrent_calls": agent,
                        "websocket": {"enabled": True, "secret": WS_SECRET},
                    }
                ],
            }
        ),
        env={},
    )
    metrics = Metrics()
    ledger = CallLedger(cfg)

    def session(info: CallInfo, on_event: Any) -> EchoSession:
        return EchoSession(tone_greeting(info.sample_rate), sample_rate=info.sample_rate)

    gateway = MediaStreamGateway(
        lambda: cfg, session, metrics, ledger=ledger, refusals=RefusalLog(metrics)
    )
    app = web.Application()
    gateway.add_routes(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client, ledger, metrics


def _start(sid: str) -> str:
    start = {"streamSid": sid, "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw"}}
    return json.dumps({"event": "start", "streamSid": sid, "start": start})


def _refusals(metrics: Metrics, ingress: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "sipserver_refusals_total", {"ingress": ingress, "reason": reason}
    )


async def test_websocket_past_capacity_is_503_before_the_upgrade_and_a_drop_frees_the_place() -> (
    None
):
    client, ledger, metrics = await gateway_client(max_calls=1, agent=None)
    try:
        first = await client.ws_connect(f"/ws/support/{WS_SECRET}")
        await first.send_str(_start("MZ1"))
        assert ledger.total == 1
        refused = await client.get(f"/ws/support/{WS_SECRET}")  # a plain GET: no upgrade
        assert refused.status == 503 and refused.headers["Retry-After"] == str(RETRY_AFTER)
        with pytest.raises(WSServerHandshakeError) as second:
            await client.ws_connect(f"/ws/support/{WS_SECRET}")
        assert second.value.status == 503
        assert _refusals(metrics, "websocket", "server_full") == 2
        # The Twilio webhook at capacity: busy.
        busy = await client.post(f"/incoming-call/support/{WS_SECRET}", data={"CallSid": "CA2"})
        assert '<Reject reason="busy" />' in await busy.text()
        assert _refusals(metrics, "twilio", "server_full") == 1
        await first.close()  # the caller drops: no stop message
        for _ in range(100):
            if ledger.total == 0:
                break
            await asyncio.sleep(0.01)
        assert ledger.total == 0
        again = await client.ws_connect(f"/ws/support/{WS_SECRET}")
        await again.close()
    finally:
        await client.close()
    assert ledger.total == 0


async def test_a_stream_upgraded_before_its_agents_limit_was_lowered_is_closed_1013() -> None:
    client, ledger, metrics = await gateway_client(max_calls=10, agent=None)
    try:
        ws = await client.ws_connect(f"/ws/support/{WS_SECRET}")
        other = await client.ws_connect(f"/ws/support/{WS_SECRET}")
        await other.send_str(_start("MZ0"))
        assert (await other.receive(timeout=5)).type is WSMsgType.TEXT  # started: media flows
        # A reload lowers the agent's limit to 1 while ``ws`` is upgraded but not started.
        cfg = parse_config(
            yaml.safe_dump(
                {
                    "agents": [
                        {
                            "slug": "support",
                            "max_concurrent_calls": 1,
                            "websocket": {"enabled": True, "secret": WS_SECRET},
                        }
                    ]
                }
            ),
            env={},
        )
        ledger.configure(cfg)
        await ws.send_str(_start("MZ1"))
        msg = await ws.receive(timeout=5)
        while msg.type is WSMsgType.TEXT:
            msg = await ws.receive(timeout=5)
        assert ws.close_code == 1013
        assert _refusals(metrics, "websocket", "agent_full") == 1
        await other.close()
    finally:
        await client.close()
    assert ledger.total == 0
