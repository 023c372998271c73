"""The agent pages' shells on an in-process aiohttp site (a fake login gate; the browser test
is tests/integration/test_console_pages_agents.py): who gets the page, who gets it read-only
and why, and the static files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.console.agent_pages import AgentPages
from sipserver.console.document import ConfigDocument
from sipserver.console.pages import read_only_banner
from tests.unit.test_console_api import TEXT, FakeGate
from tests.unit.test_dashboard_logins import PASSWORD, dashboard, login
from tests.unit.test_dashboard_logins import client_for as dashboard_client


async def client_for(document: ConfigDocument) -> TestClient:
    app = web.Application()
    AgentPages(gate=FakeGate(), document=document).add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    path = tmp_path / "sipserver.yaml"
    path.write_text(TEXT)
    c = await client_for(ConfigDocument(path))
    yield c
    await c.close()


def read_only_of(page: str) -> str:
    return page.split('data-read-only="', 1)[1].split('"', 1)[0]


async def test_writers_get_an_editable_page_a_supervisor_a_read_only_one(
    client: TestClient,
) -> None:
    for role in ("admin", "workspace_admin"):
        resp = await client.get("/dashboard/agents/alice/settings", headers={"X-Test-Role": role})
        page = await resp.text()
        assert resp.status == 200 and 'data-slug="alice"' in page
        assert read_only_of(page) == ""
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    resp = await client.get("/dashboard/agents/new", headers={"X-Test-Role": "admin"})
    assert resp.status == 200 and 'data-slug=""' in await resp.text()
    resp = await client.get(
        "/dashboard/agents/alice/settings", headers={"X-Test-Role": "supervisor"}
    )
    assert read_only_of(await resp.text()) == "The role supervisor may only read the configuration."


async def test_other_roles_are_refused_and_no_session_goes_to_the_login(
    client: TestClient,
) -> None:
    for role in ("agent", "viewer"):
        resp = await client.get("/dashboard/agents/alice/settings", headers={"X-Test-Role": role})
        assert resp.status == 403, role
    resp = await client.get("/dashboard/agents/alice/settings", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/dashboard/login?next=/dashboard/agents/alice/settings"


async def test_a_slug_that_cannot_exist_is_404(client: TestClient) -> None:
    resp = await client.get('/dashboard/agents/A"b/settings', headers={"X-Test-Role": "admin"})
    assert resp.status == 404


async def test_the_embedded_default_is_read_only_for_writers_too(tmp_path: Path) -> None:
    c = await client_for(ConfigDocument(None))
    try:
        resp = await c.get("/dashboard/agents/new", headers={"X-Test-Role": "admin"})
        page = await resp.text()
        supervisor = await c.get(
            "/dashboard/agents/demo/settings", headers={"X-Test-Role": "supervisor"}
        )
        supervisor_page = await supervisor.text()
    finally:
        await c.close()
    # The fields are disabled (data-read-only) and the model pages' banner says why and how.
    assert read_only_of(page) == "The console is read-only (the banner above says why)."
    for shown in (page, supervisor_page):
        banner = shown.split('id="read-only-banner">', 1)[1].split("</p>", 1)[0]
        assert "sipserver init DIR" in banner and "sipserver run -c" in banner
    assert read_only_of(supervisor_page) == "The role supervisor may only read the configuration."


async def test_a_writable_file_shows_no_banner(client: TestClient) -> None:
    resp = await client.get("/dashboard/agents/alice/settings", headers={"X-Test-Role": "admin"})
    page = await resp.text()
    assert "read-only-banner" not in page and "{{" not in page


async def test_static_files(client: TestClient) -> None:
    for name, kind in (
        ("agent.js", "text/javascript"),
        ("agents-list.js", "text/javascript"),
        ("agent.css", "text/css"),
    ):
        resp = await client.get(f"/dashboard/static/agents/{name}")
        assert resp.status == 200 and resp.content_type == kind, name
    resp = await client.get("/dashboard/static/agents/agent.html")
    assert resp.status == 404


async def test_the_agent_list_shows_the_banner_the_server_gives_it() -> None:
    board = dashboard()  # one admin, "ann"
    client = await dashboard_client(board)
    try:
        assert await login(client, PASSWORD) == 303
        page = await (await client.get("/dashboard")).text()
        assert "read-only-banner" not in page and "{{" not in page  # a writable file
        board.read_only_banner = lambda: read_only_banner("no file was given")
        page = await (await client.get("/dashboard")).text()
    finally:
        await client.close()
    banner = page.split('id="read-only-banner">', 1)[1].split("</p>", 1)[0]
    assert "No file was given." in banner and "sipserver init DIR" in banner
    assert 'href="/dashboard/live"' in page  # the Live link beside the other top-bar links
