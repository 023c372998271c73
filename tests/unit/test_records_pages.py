"""The call history pages' handlers (sipserver/records/pages.py) on an in-process aiohttp site
with a real RecordStore in a temporary directory and a fake login: the login redirect, the
agent filter's choices per role, the call page's server-rendered timeline, 404 for a call
that is missing or not the user's to see, the Delete button for admins only, the headers.
The pages in a browser: tests/integration/test_records_pages.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.pipeline.call_record import CallRecord, RecordEvent, new_record_id
from sipserver.records.pages import RecordPages
from sipserver.records.store import RecordStore


@dataclass(frozen=True)
class User:
    name: str
    role: str


USERS = {"admin": User("admin", "admin"), "viewer": User("vi<ew>er", "viewer")}


def login_of(request: web.Request) -> User | None:
    return USERS.get(request.headers.get("X-Test-User", ""))


def visible(role: str) -> Collection[str] | None:
    return None if role == "admin" else {"bob"}


def turn_event(offset: float) -> RecordEvent:
    stages = {"end_of_turn": 400, "stt": 150, "turn_model": 30, "llm": 250, "tts": 120,
              "transport": 30}  # fmt: skip
    return RecordEvent(
        "turn", offset, {"index": 0, "text": "what <time> is it", "stages": stages,
                         "voice_to_voice": 800}
    )  # fmt: skip


Site = tuple[TestClient[web.Request, web.Application], dict[str, str]]
"""A client of the pages and the ids of alice's and bob's calls."""


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = RecordStore(tmp_path / "records.db", flush_interval=0.05)
    store.open()
    ids = {}
    for agent in ("alice", "bob"):
        record = CallRecord(id=new_record_id(), agent=agent, ingress="sip",
                            started_at=time.time(), answered_at=time.time())  # fmt: skip
        store.save(record)
        store.append(record.id, [RecordEvent("transcript", 0.5, {"speaker": "caller",
                                                                 "text": "hi"}),
                                 turn_event(1.0)])  # fmt: skip
        ids[agent] = record.id
    assert store.flush()
    app = web.Application()
    RecordPages(
        login=login_of,
        visible=visible,
        agents=lambda: ["alice", "bob", "carol"],
        top_links=lambda role: '<a href="/x">Users</a>' if role == "admin" else "",
        store=lambda: store,
    ).add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, ids
    finally:
        await client.close()
        store.close()


async def test_pages_redirect_to_the_login(site: Site) -> None:
    client, ids = site
    for path in ("/dashboard/calls?agent=bob", f"/dashboard/calls/{ids['alice']}"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/dashboard/login?next=/dashboard/calls")
    resp = await client.get("/dashboard/calls?agent=bob", allow_redirects=False)
    assert "agent%3Dbob" in resp.headers["Location"]


async def test_the_agent_filter_offers_the_agents_the_role_may_see(
    site: Site,
) -> None:
    client, _ = site
    resp = await client.get("/dashboard/calls?agent=bob", headers={"X-Test-User": "admin"})
    page = await resp.text()
    assert resp.status == 200
    assert '<option value="alice">' in page and '<option value="carol">' in page
    assert '<option value="bob" selected>' in page
    assert '<a href="/x">Users</a>' in page and "{{" not in page
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "media-src 'self'" in csp
    viewer = await (await client.get("/dashboard/calls", headers={"X-Test-User": "viewer"})).text()
    assert '<option value="bob">' in viewer and "alice" not in viewer
    assert "vi&lt;ew&gt;er (viewer)" in viewer and '<a href="/x">' not in viewer


async def test_the_call_page_holds_the_timeline_and_hides_other_agents_calls(
    site: Site,
) -> None:
    client, ids = site
    resp = await client.get(f"/dashboard/calls/{ids['bob']}", headers={"X-Test-User": "viewer"})
    page = await resp.text()
    assert resp.status == 200
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img"' in page
    assert 'data-stage="llm"' in page and "1. what &lt;time&gt; is it" in page
    assert f'data-id="{ids["bob"]}"' in page and 'data-can-delete="false"' in page
    assert f'href="/api/calls/{ids["bob"]}/export.jsonl"' in page
    admin = await client.get(f"/dashboard/calls/{ids['alice']}", headers={"X-Test-User": "admin"})
    assert admin.status == 200 and 'data-can-delete="true"' in await admin.text()
    # Another agent's call, an unknown id and a malformed one: the same 404 page.
    for path in (ids["alice"], "0" * 26, "..%2Fetc"):
        hidden = await client.get(f"/dashboard/calls/{path}", headers={"X-Test-User": "viewer"})
        assert hidden.status == 404, path
        assert "no such call" in (await hidden.text()).lower()


async def test_assets(site: Site) -> None:
    client, _ = site
    js = await client.get("/dashboard/static/calls/call.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    css = await client.get("/dashboard/static/calls/records.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert (await client.get("/dashboard/static/calls/call.html")).status == 404


async def test_records_off(tmp_path: Path) -> None:
    app = web.Application()
    RecordPages(login=login_of, visible=visible, agents=lambda: ["alice"],
                top_links=lambda role: "", store=lambda: None).add_routes(app)  # fmt: skip
    async with TestClient(TestServer(app)) as client:
        page = await (await client.get("/dashboard/calls", headers={"X-Test-User": "admin"})).text()
        assert '<p id="records-off" class="banner" role="status" >' in page
        missing = await client.get(f"/dashboard/calls/{'a' * 26}", headers={"X-Test-User": "admin"})
        assert missing.status == 404
