"""Server.reload: what changes at once and what needs a restart (no sockets involved)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipserver import server as server_module
from sipserver.config import Config, parse_config
from sipserver.edge.dispatcher import WorkerPool
from sipserver.edge.proxy import Endpoint
from sipserver.edge.router import Peer
from sipserver.reload import (
    SERVER_KEYS,
    ReloadResult,
    classify,
    plan_reload,
    read_result,
    result_path,
    server_key_paths,
)
from sipserver.server import Server, pid_file_path
from sipserver.sip.digest import DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message


def raw_config(*, sip_agent: bool = True, **sip: Any) -> dict[str, Any]:
    return {
        "server": {"store": "memory", "sip": {"udp": ["127.0.0.1:5060"], "tcp": [], **sip}},
        "agents": [
            {
                "slug": "a",
                "sip": {
                    "enabled": sip_agent,
                    "numbers": ["+15005550101"],
                    "username": "a",
                    "password": "a-password-1",
                },
            }
        ],
    }


def config(*, sip_agent: bool = True, server: dict[str, Any] | None = None, **sip: Any) -> Config:
    raw = raw_config(sip_agent=sip_agent, **sip)
    raw["server"].update(server or {})
    return parse_config(yaml.safe_dump(raw), env={})


@pytest.fixture(autouse=True)
def pool_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[WorkerPool]:
    """The worker pools started (recorded, not started: no worker processes in unit tests).
    The tests run in ``tmp_path``: the default data_dir (``./var``, where reloads write their
    result) lands there."""
    monkeypatch.chdir(tmp_path)
    started: list[WorkerPool] = []

    async def start(pool: WorkerPool) -> None:
        started.append(pool)

    monkeypatch.setattr(WorkerPool, "start", start)
    return started


def started(cfg: Config, **kwargs: Any) -> Server:
    """A server as after :meth:`Server.start` (which reloads wait for); no sockets."""
    server = Server(cfg, **kwargs)
    server._start_done.set()
    return server


def reloads(server: Server, result: str) -> float | None:
    return server.metrics.registry.get_sample_value(
        "sipserver_config_reloads_total", {"result": result}
    )


def test_every_server_key_is_classified() -> None:
    """A new ``server.`` key must say whether a reload applies it: add it to SERVER_KEYS."""
    keys = server_key_paths()
    assert "server.media.rtp_port_min" in keys and "server.public_host" in keys
    unclassified = [k for k in keys if classify(k) is None]
    assert unclassified == []
    # ...and the table names no key that does not exist (a renamed key leaves no stale entry).
    stale = [e for e in SERVER_KEYS if not any(k == e or k.startswith(e + ".") for k in keys)]
    assert stale == []


def test_the_applied_config_keeps_the_running_value_of_every_key_not_applied() -> None:
    running = config(udp=["0.0.0.0:5060"], ban={"max_failures": 5}, server={"data_dir": "/a"})
    new = config(
        udp=["10.0.0.5:5080"],
        ban={"max_failures": 9, "duration": 60},
        min_expires=120,
        server={"data_dir": "/b", "public_host": "sip.example.net", "media": {"min_se": 120}},
    )
    plan = plan_reload(running, new, pool_runs=True)
    assert plan.changed == ("server.public_host", "server.sip.min_expires")
    assert plan.restart_needed == (
        "server.sip.udp",
        "server.sip.ban.max_failures",
        "server.sip.ban.duration",
        "server.media.min_se",
        "server.data_dir",
    )
    applied = plan.config
    # Restart keys, and worker settings of a running pool, keep their running values...
    assert applied.server.sip.udp == ["0.0.0.0:5060"]
    assert applied.server.sip.ban == running.server.sip.ban
    assert applied.server.data_dir == "/a"
    assert applied.server.media.min_se == 90
    # ...live keys (and the sections) take the new ones.
    assert applied.server.public_host == "sip.example.net"
    assert applied.server.sip.min_expires == 120
    assert applied.agents == new.agents
    # Without a pool the worker settings are applied (the pool the reload builds uses them).
    plan = plan_reload(running, new, pool_runs=False)
    assert "server.media.min_se" in plan.changed and plan.config.server.media.min_se == 120
    # Nothing to put back: the new configuration itself.
    assert plan_reload(running, running, pool_runs=True).config is running


async def test_reload_swaps_router_and_keeps_transactions() -> None:
    server = started(config())
    before = server.router
    result = await server.reload(config(min_expires=120))
    assert result == ReloadResult(applied=True, changed=("server.sip.min_expires",))
    assert server.router is not before
    assert server.listeners.router is server.router
    assert server.router.transactions is before.transactions
    assert reloads(server, "ok") == 1


async def test_reload_reports_settings_that_need_a_restart() -> None:
    server = started(config())
    result = await server.reload(config(udp=["127.0.0.1:5070"], ban={"max_failures": 9}))
    assert result.applied
    assert result.restart_needed == ("server.sip.udp", "server.sip.ban.max_failures")
    assert result.changed == ()


def response(server: Server, data: bytes) -> SipResponse:
    (out,) = server.router.handle_message(
        data, Peer("udp", "198.51.100.7", 5062), now=100.0, wall=1_800_000_000.0
    )
    parsed = parse_message(out.data)
    assert isinstance(parsed, SipResponse)
    return parsed


#: One of the machine's addresses, served by a listener on 0.0.0.0 (and not the public host).
HOST = "192.0.2.10"


def register_request(*, cseq: int, authorization: str | None = None) -> bytes:
    lines = [
        f"REGISTER sip:a@{HOST}:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-r{cseq};rport",
        f"From: <sip:a@{HOST}:5060>;tag=f1",
        f"To: <sip:a@{HOST}:5060>",
        "Call-ID: reload-1",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:a@198.51.100.7:5062>",
        "Max-Forwards: 70",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()


async def test_a_listener_change_needing_a_restart_keeps_the_running_address_served(
    tmp_path: Path,
) -> None:
    """The listeners are bound at start-up: after a reload that moves them (needs a restart),
    requests to the address still bound are still for this server, and the digest uri naming
    it (SIPp's default) is still accepted; the pid file stays where the running server is."""
    public = {"public_host": "sip.example.com"}
    server = started(
        config(udp=["0.0.0.0:5060"], server={**public, "data_dir": str(tmp_path / "data")})
    )
    pid_file = server.pid_file
    result = await server.reload(
        config(udp=["10.0.0.5:5080"], server={**public, "data_dir": str(tmp_path / "elsewhere")})
    )
    assert result.restart_needed == ("server.sip.udp", "server.data_dir")
    assert server.config.server.sip.udp == ["0.0.0.0:5060"]
    assert server.pid_file == pid_file == pid_file_path(server.config)

    challenge = response(server, register_request(cseq=1))
    assert challenge.status == 401  # not 403 "Domain Not Served"
    (header,) = challenge.headers.get_all("WWW-Authenticate")
    authorization = build_authorization(
        DigestChallenge.parse(header),
        username="a",
        password="a-password-1",
        method="REGISTER",
        uri=f"sip:{HOST}:5060",  # not the Request-URI: it names this server
        cnonce="c1",
    )
    assert response(server, register_request(cseq=2, authorization=authorization)).status == 200


async def test_after_a_realm_change_cached_credentials_are_challenged_not_banned() -> None:
    """The realm follows public_host, which a reload applies live: a phone answering with the
    credentials it cached for the old realm gets the new realm's challenge, never a ban."""
    server = started(config(udp=["0.0.0.0:5060"], server={"public_host": "old.example.com"}))
    (header,) = response(server, register_request(cseq=1)).headers.get_all("WWW-Authenticate")
    cached = DigestChallenge.parse(header)
    assert cached.realm == "old.example.com"
    await server.reload(config(udp=["0.0.0.0:5060"], server={"public_host": "new.example.com"}))
    for cseq in range(2, 8):  # more than ban.max_failures
        authorization = build_authorization(
            cached,
            username="a",
            password="a-password-1",
            method="REGISTER",
            uri=f"sip:a@{HOST}:5060",
            cnonce="c1",
            nc=cseq,
        )
        answer = response(server, register_request(cseq=cseq, authorization=authorization))
        assert answer.status == 401
        (header,) = answer.headers.get_all("WWW-Authenticate")
        assert DigestChallenge.parse(header).realm == "new.example.com"
    assert not server.tracker.is_banned("198.51.100.7", now=100.0)


async def test_first_sip_agent_by_reload_builds_and_starts_the_worker_pool(
    pool_starts: list[WorkerPool],
) -> None:
    server = started(config(sip_agent=False))
    assert server.pool is None and server.sessions is None
    assert "media_workers" not in server.readiness_report().waiting_for
    result = await server.reload(config())
    assert result.applied and result.changed == ("agents",)
    assert server.pool is not None
    assert any("media worker pool started" in n for n in result.notes)
    # Started by the reload itself, whoever called it (SIGHUP, a test, the console)...
    assert pool_starts == [server.pool]
    # ...and calls to the new agent wait for a worker: 503 (admission), never 480.
    assert "media_workers" in server.readiness_report().waiting_for


async def test_worker_settings_apply_to_a_new_pool_and_need_a_restart_once_it_runs() -> None:
    media = {
        "media": {
            "rtp_port_min": 30000,
            "rtp_port_max": 30999,
            "answer_delay": 1.0,
            "sample_rate": 16000,
        }
    }
    # No pool yet: the pool the reload builds uses the new settings.
    server = started(config(sip_agent=False))
    result = await server.reload(config(server=media))
    assert result.restart_needed == ()
    assert "server.media.rtp_port_min" in result.changed
    assert server.pool is not None
    assert server.pool.settings.rtp_port_start == 30000
    assert server.pool.settings.answer_delay == 1.0
    # The pool's calls get sessions at the pool's rate (a session host built with it).
    assert server.sessions is not None
    assert server.sessions._rate == server.pool.settings.sample_rate == 16000
    # A running pool keeps its workers (and their calls): named, not applied.
    server = started(config())
    assert server.pool is not None
    result = await server.reload(config(server={**media, "workers": 3}))
    assert result.restart_needed == (
        "server.workers",
        "server.media.rtp_port_min",
        "server.media.rtp_port_max",
        "server.media.sample_rate",
        "server.media.answer_delay",
    )
    assert server.pool.settings.rtp_port_start == 20000
    assert server.pool.settings.answer_delay == 0.0
    assert server.config.server.media.answer_delay == 0.0


async def test_public_host_is_applied_to_the_router_and_the_call_proxy() -> None:
    server = started(config())
    assert server.proxy is not None
    result = await server.reload(config(server={"public_host": "sip.example.net"}))
    assert result.changed == ("server.public_host",) and result.restart_needed == ()
    assert server.proxy.outside == Endpoint("udp", "sip.example.net", 5060)
    # The router serves the new domain (the realm follows public_host when not set).
    assert server.router._is_local("sip.example.net")


async def test_last_sip_agent_removed_leaves_the_pool_running() -> None:
    server = started(config())
    pool = server.pool
    result = await server.reload(config(sip_agent=False))
    assert result.applied and server.pool is pool
    assert any("keep running" in n for n in result.notes)
    assert "media_workers" not in server.readiness_report().waiting_for


async def test_reload_while_draining_changes_nothing(pool_starts: list[WorkerPool]) -> None:
    server = started(config(sip_agent=False))
    server.readiness.drain()
    before = server.config
    result = await server.reload(config())
    assert not result.applied and "stopping" in result.errors[0]
    assert server.config is before and server.pool is None and pool_starts == []
    assert reloads(server, "invalid") == 1


async def test_reload_waits_for_start() -> None:
    server = Server(config(sip_agent=False))
    reload = asyncio.create_task(server.reload(config(sip_agent=False, min_expires=120)))
    await asyncio.sleep(0.05)
    assert not reload.done()
    server._start_done.set()
    assert (await reload).changed == ("server.sip.min_expires",)


async def test_the_file_and_the_voice_parts_are_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML parsing, file checks and knowledge-base indexing block: they run on a thread while
    the loop keeps answering SIP; only the swap runs on the loop."""
    path = tmp_path / "sipserver.yaml"
    path.write_text(yaml.safe_dump(raw_config(sip_agent=False)))
    server = started(parse_config(path.read_text(), env={}), config_path=path)
    threads: dict[str, int] = {}

    def recorded(name: str, function: Any) -> Any:
        def call(*args: Any) -> Any:
            threads[name] = threading.get_ident()
            return function(*args)

        return call

    monkeypatch.setattr(server_module, "load_config", recorded("load", server_module.load_config))
    monkeypatch.setattr(server.voice, "prepare", recorded("prepare", server.voice.prepare))
    monkeypatch.setattr(server.voice, "apply", recorded("apply", server.voice.apply))
    assert (await server.reload()).applied
    loop_thread = threading.get_ident()
    assert threads["load"] != loop_thread and threads["prepare"] != loop_thread
    assert threads["apply"] == loop_thread


async def test_reload_from_the_file_writes_the_result_and_an_invalid_file_changes_nothing(
    tmp_path: Path,
) -> None:
    raw = raw_config(sip_agent=False)
    raw["server"]["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "sipserver.yaml"
    path.write_text(yaml.safe_dump(raw))
    server = started(parse_config(path.read_text(), env={}), config_path=path)
    before = server.config

    raw["agents"][0]["sip"]["password"] = "${SIPSERVER_UNSET_FOR_TEST}"
    path.write_text(yaml.safe_dump(raw))
    result = await server.reload()
    assert not result.applied
    assert any("agents[0].sip.password" in e for e in result.errors)
    assert server.config is before
    written = read_result(result_path(server.config))
    assert written is not None and written[1:] == (1, result)

    raw["agents"][0]["sip"]["password"] = "a-password-2"
    raw["server"]["sip"]["tcp"] = ["127.0.0.1:5060"]
    path.write_text(yaml.safe_dump(raw))
    result = await server.reload()
    assert result.applied and result.changed == ("agents",)
    assert result.restart_needed == ("server.sip.tcp",)
    assert result_path(server.config).stat().st_mode & 0o777 == 0o600
    record = json.loads(result_path(server.config).read_text())
    assert record["sequence"] == 2 and record["source"] == str(path)
    assert record["restart_needed"] == ["server.sip.tcp"]
    await server.voice.close()


async def test_capacity_keys_apply_at_once() -> None:
    server = started(config(server={"max_calls": 5}))
    held = server.ledger.reserve("a", "websocket")
    raw = raw_config()
    raw["server"]["max_calls"] = 1
    raw["agents"][0]["max_concurrent_calls"] = 0
    result = await server.reload(parse_config(yaml.safe_dump(raw), env={}))
    assert result.applied and "server.max_calls" in result.changed
    assert result.restart_needed == ()
    assert server.ledger.max_calls == 1 and server.ledger.limit_of("a") == 0
    assert held.held and server.ledger.refusal("a") == "server_full"  # the call goes on
    held.release()
    assert server.ledger.refusal("a") == "agent_full"


def test_media_engine_needs_a_restart_even_before_the_pool_runs() -> None:
    """Which processes answer calls (and where sessions run) is chosen at start-up."""
    running = config()
    new = config(server={"media": {"engine": "pjsua2", "calls_per_worker": 50}})
    for pool_runs in (False, True):
        plan = plan_reload(running, new, pool_runs=pool_runs)
        assert "server.media.engine" in plan.restart_needed
        assert plan.config.server.media.engine == "native"  # the default, running
    # The capacity is a worker setting: applied when the reload builds the pool.
    assert "server.media.calls_per_worker" in plan_reload(running, new, pool_runs=False).changed
    assert (
        "server.media.calls_per_worker" in plan_reload(running, new, pool_runs=True).restart_needed
    )
