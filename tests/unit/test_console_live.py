"""``GET /api/workers`` and the live page's shell on an in-process aiohttp site (a fake login
gate, as in test_console_api.py; the real session and real workers are covered by
tests/integration/test_console_live.py): the answer's shape, the roles, and the CPU time read
from /proc."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.console.live import COUNTERS, LiveViews, cpu_seconds, worker_rows
from tests.unit.test_console_api import FakeGate

NATIVE = {
    "id": "w1",
    "pid": 4321,
    "up": True,
    "kind": "native",
    "ready": True,
    "sip_port": 5070,
    "capacity": 8,
    "calls": 3,
    "stats": {
        "ready": 1,
        "calls": 3,
        "frames": 1500,
        "late_frames": 4,
        "ticks": 600,
        "late_ticks": 2,
        "rtp_received": 1490,
        "rtp_lost": 3,
        "rtp_late": 1,
        "concealed_frames": 3,
    },
}
STARTING = {
    "id": "w2",
    "pid": None,
    "up": False,
    "kind": None,
    "ready": False,
    "sip_port": None,
    "capacity": 8,
    "calls": 0,
    "stats": {},
}
PJSUA2 = {
    "id": "m1",
    "pid": 99,
    "up": True,
    "kind": "pjsua2",
    "ready": True,
    "sip_port": 5071,
    "capacity": 0,
    "calls": 1,
    "stats": {"tx_frames": 250, "tx_underflow": 7, "rtp_received": 240, "ready": True},
}


def fake_cpu(pid: int | None) -> float | None:
    return None if pid is None else pid / 1000


def test_rows_give_the_load_the_state_and_the_stats_counters() -> None:
    native, starting = worker_rows([NATIVE, STARTING], "native", fake_cpu)
    assert native == {
        "id": "w1",
        "engine": "native",
        "pid": 4321,
        "up": True,
        "ready": True,
        "calls": 3,
        "capacity": 8,
        "cpu_seconds": 4.321,
        "stats_received": True,
        "counters": {key: NATIVE["stats"][key] for key in COUNTERS},  # type: ignore[index]
    }
    # No HELLO yet: the engine in force, no pid, no counters (not zeros: nothing was sent).
    assert starting["engine"] == "native" and starting["pid"] is None
    assert starting["ready"] is False and starting["up"] is False
    assert starting["cpu_seconds"] is None and starting["stats_received"] is False
    assert set(starting["counters"].values()) == {None}


def test_a_pjsua2_worker_has_its_frame_counters_renamed_and_no_capacity() -> None:
    (row,) = worker_rows([PJSUA2], "pjsua2", fake_cpu)
    counters = row["counters"]
    assert counters["frames"] == 250 and counters["late_frames"] == 7
    assert counters["rtp_received"] == 240 and counters["late_ticks"] is None
    assert row["capacity"] is None and row["calls"] == 1


def test_cpu_seconds_of_this_process_and_of_no_process() -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc here (Linux only): the API answers null")
    sum(i * i for i in range(200_000))  # some CPU time to see
    mine = cpu_seconds(os.getpid())
    assert mine is not None and mine > 0
    assert cpu_seconds(None) is None
    assert cpu_seconds(2**22 + 12345) is None  # above pid_max's default: no such process


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    status: list[dict[str, Any]] = [NATIVE, STARTING]
    live = LiveViews(gate=FakeGate(), workers=lambda: status, engine=lambda: "native")
    app = web.Application()
    live.add_routes(app)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


@pytest.mark.parametrize("role", ["admin", "workspace_admin", "supervisor"])
async def test_readers_get_the_workers(client: TestClient, role: str) -> None:
    resp = await client.get("/api/workers", headers={"X-Test-Role": role})
    body = await resp.json()
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert body["engine"] == "native" and body["calls"] == 3 and body["capacity"] == 16
    assert [w["id"] for w in body["workers"]] == ["w1", "w2"]
    assert [w["ready"] for w in body["workers"]] == [True, False]
    assert body["workers"][0]["counters"]["late_frames"] == 4


@pytest.mark.parametrize("role", ["agent", "viewer", "listener"])
async def test_other_roles_get_403_and_no_session_401(client: TestClient, role: str) -> None:
    resp = await client.get("/api/workers", headers={"X-Test-Role": role})
    assert resp.status == 403 and role in (await resp.json())["error"]
    resp = await client.get("/dashboard/live", headers={"X-Test-Role": role})
    assert resp.status == 403
    resp = await client.get("/api/workers")
    assert resp.status == 401 and (await resp.json())["error"] == "login required"


async def test_the_page_shell(client: TestClient) -> None:
    resp = await client.get("/dashboard/live", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/dashboard/login?next=/dashboard/live"
    resp = await client.get("/dashboard/live", headers={"X-Test-Role": "supervisor"})
    text = await resp.text()
    assert resp.status == 200 and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "supervisor (supervisor)" in text and "{{" not in text
    assert text.count('scope="col"') == 16 and text.count("<caption>") == 3
    assert 'aria-live="polite"' in text and 'href="/dashboard/live" aria-current="page"' in text
    assert "/dashboard/settings/users" not in text  # the Users/Audit links are an admin's
    resp = await client.get("/dashboard/live", headers={"X-Test-Role": "admin"})
    text = await resp.text()
    assert "/dashboard/settings/users" in text and "/dashboard/settings/audit" in text
    for name, kind in (("live.js", "text/javascript"), ("live.css", "text/css")):
        resp = await client.get(f"/dashboard/live/{name}")
        assert resp.status == 200 and resp.content_type == kind
    assert (await client.get("/dashboard/live/other.js")).status == 404
