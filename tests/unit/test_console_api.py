"""The console API's own rules on an in-process aiohttp site (a fake login gate; the real
dashboard session is covered by tests/integration/test_console_api.py): read-only on the
embedded default, JSON bodies only, and saves that reload in the order they were made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.admission import CallLedger
from sipserver.config import Config, load_config
from sipserver.console.api import ConsoleApi
from sipserver.console.audit import AuditLog
from sipserver.console.document import ConfigDocument
from sipserver.registrar.bindings import MemoryStore

TEXT = """\
models:
  m: {type: custom}   # a comment
agents:
- slug: alice
  sip: {enabled: true, username: alice, password: "alice-password-1", numbers: ["100"]}
"""


@dataclass(frozen=True)
class FakeLogin:
    name: str
    role: str


class FakeGate:
    """Logs every request in as ``X-Test-Role`` (none: no session)."""

    def login_of(self, request: web.Request) -> FakeLogin | None:
        role = request.headers.get("X-Test-Role")
        return FakeLogin(role, role) if role else None

    def same_origin(self, request: web.Request) -> bool:
        return "Origin" not in request.headers


class Reloads:
    """Records the configurations it is given; the first one takes a while."""

    def __init__(self) -> None:
        self.seen: list[Config] = []

    async def __call__(self, config: Config) -> Mapping[str, Any]:
        if not self.seen:
            await asyncio.sleep(0.2)
        self.seen.append(config)
        return {"applied": True, "changed": ("agents",), "restart_needed": ()}


async def client_for(path: Path | None, tmp_path: Path, reloads: Reloads) -> TestClient:
    config = load_config(path)
    api = ConsoleApi(
        document=ConfigDocument(path),
        audit=AuditLog(tmp_path / "data" / "console-audit.jsonl"),
        gate=FakeGate(),
        config=lambda: config,
        reload=reloads,
        bindings=MemoryStore,
        ledger=CallLedger(config, cores=2),
        wall_clock=lambda: 0.0,
    )
    app = web.Application()
    api.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def writable(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Reloads, Path]]:
    path = tmp_path / "sipserver.yaml"
    path.write_text(TEXT)
    reloads = Reloads()
    client = await client_for(path, tmp_path, reloads)
    yield client, reloads, path
    await client.close()


async def test_the_embedded_default_is_read_only(tmp_path: Path) -> None:
    client = await client_for(None, tmp_path, Reloads())
    try:
        resp = await client.get("/api/agents", headers={"X-Test-Role": "admin"})
        body = await resp.json()
        assert resp.status == 200 and "demo" in [a["slug"] for a in body["agents"]]
        assert "-c FILE" in body["read_only"] and resp.headers["X-Console-Read-Only"] == "1"
        resp = await client.put(
            "/api/models/x", json={"type": "custom"}, headers={"X-Test-Role": "admin"}
        )
        body = await resp.json()
        assert resp.status == 403 and body["read_only"] is True and "-c FILE" in body["error"]
    finally:
        await client.close()


async def test_bodies_must_be_json(writable: tuple[TestClient, Reloads, Path]) -> None:
    client, _, path = writable
    admin = {"X-Test-Role": "admin"}
    resp = await client.put("/api/models/x", data="type=custom", headers=admin)
    assert resp.status == 415
    resp = await client.put(
        "/api/models/x", data="{not json", headers={**admin, "Content-Type": "application/json"}
    )
    assert resp.status == 422 and (await resp.json())["errors"][0]["loc"] == ""
    resp = await client.put("/api/models/x", json=["a list"], headers=admin)
    assert resp.status == 422
    resp = await client.get("/api/agents")
    assert resp.status == 401
    assert path.read_text() == TEXT


async def test_saves_reload_in_their_order(writable: tuple[TestClient, Reloads, Path]) -> None:
    client, reloads, path = writable
    admin = {"X-Test-Role": "workspace_admin"}
    first = client.put("/api/models/one", json={"type": "custom"}, headers=admin)
    second = client.put("/api/models/two", json={"type": "custom"}, headers=admin)
    answers = await asyncio.gather(first, second)
    assert [r.status for r in answers] == [200, 200]
    assert len(reloads.seen) == 2
    # The last reload carries both models: never an older save after a newer one.
    assert set(reloads.seen[-1].models) == {"m", "one", "two"}
    assert "# a comment" in path.read_text()
    body = await answers[0].json()
    assert body["reload"] == {"applied": True, "changed": ["agents"], "restart_needed": []}
