"""The console's users API rules on an in-process aiohttp site (a fake login gate; the real
dashboard login is covered by tests/integration/test_console_users.py): admins only, the last
admin stays, passwords are stored as scrypt hashes the login accepts and never shown."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.admission import CallLedger
from sipserver.config import Config, User, load_config
from sipserver.console.api import ConsoleApi
from sipserver.console.audit import AuditLog
from sipserver.console.document import ConfigDocument
from sipserver.console.model_pages import ModelPages
from sipserver.console.user_pages import UserPages
from sipserver.console.users import ROLES, UsersApi
from sipserver.listens.dashboard import LoginSessions
from sipserver.listens.passwords import hash_password, verify_password
from sipserver.registrar.bindings import MemoryStore

ADMIN_HASH = hash_password("admin-password", n=16)
TEXT = f"""\
# the operators
users:
  - name: root   # the first admin
    password_hash: "{ADMIN_HASH}"
    role: admin
  - name: wsa
    password_hash: "${{WSA_HASH}}"
    role: workspace_admin
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


@dataclass
class Site:
    client: TestClient
    path: Path
    audit: Path
    reloads: list[Config]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    path = tmp_path / "sipserver.yaml"
    path.write_text(TEXT)
    env = {"WSA_HASH": hash_password("wsa-password", n=16)}
    config = load_config(path, env=env)
    reloads: list[Config] = []

    async def reload(new: Config) -> Mapping[str, Any]:
        reloads.append(new)
        return {"applied": True, "changed": ["users"], "restart_needed": []}

    audit = tmp_path / "data" / "console-audit.jsonl"
    console = ConsoleApi(
        document=ConfigDocument(path, env=env),
        audit=AuditLog(audit),
        gate=FakeGate(),
        config=lambda: config,
        reload=reload,
        bindings=MemoryStore,
        ledger=CallLedger(config, cores=2),
        wall_clock=lambda: 0.0,
    )
    app = web.Application()
    console.add_routes(app)
    UsersApi(console=console, hash_password=functools.partial(hash_password, n=16)).add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield Site(client, path, audit, reloads)
    await client.close()


ADMIN = {"X-Test-Role": "admin"}


def users_in(path: Path) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in yaml.safe_load(path.read_text())["users"]}


async def test_only_admins_manage_users(site: Site) -> None:
    client = site.client
    for role in ("workspace_admin", "supervisor", "agent", "viewer"):
        who = {"X-Test-Role": role}
        for resp in (
            await client.get("/api/users", headers=who),
            await client.put("/api/users/x", json={"role": "viewer"}, headers=who),
            await client.post("/api/users/root/password", json={"password": "p" * 9}, headers=who),
            await client.delete("/api/users/wsa", headers=who),
        ):
            body = await resp.json()
            assert resp.status == 403, (role, resp.status)
            assert body["error"] == f"only an admin manages the users; the role {role} may not"
    assert (await client.get("/api/users")).status == 401
    # An admin's write from another site is refused like every console write.
    resp = await client.delete("/api/users/wsa", headers={**ADMIN, "Origin": "http://evil"})
    assert resp.status == 403
    assert site.path.read_text() == TEXT


async def test_list_names_and_roles_never_hashes(site: Site) -> None:
    resp = await site.client.get("/api/users", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200 and resp.headers["ETag"]
    assert body["users"] == [
        {"name": "root", "role": "admin"},
        {"name": "wsa", "role": "workspace_admin"},
    ]
    assert body["roles"] == list(ROLES) and "viewer" in body["roles"]
    assert body["min_password_length"] == 8
    assert "scrypt" not in json.dumps(body)


async def test_add_a_user_stores_a_scrypt_hash(site: Site) -> None:
    resp = await site.client.put(
        "/api/users/sue", json={"role": "supervisor", "password": "sue-secret-1"}, headers=ADMIN
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["user"] == {"name": "sue", "role": "supervisor"}
    assert "sue-secret-1" not in json.dumps(body) and "scrypt" not in json.dumps(body)
    stored = users_in(site.path)["sue"]
    assert stored["role"] == "supervisor" and stored["password_hash"].startswith("scrypt$")
    assert verify_password("sue-secret-1", stored["password_hash"])
    assert not verify_password("sue-secret-2", stored["password_hash"])
    text = site.path.read_text()
    assert "sue-secret-1" not in text
    # The rest of the file is as the operator wrote it: comments and the ${VAR} reference.
    assert "# the first admin" in text and '"${WSA_HASH}"' in text
    assert [u.name for u in site.reloads[-1].users] == ["root", "wsa", "sue"]
    # The audit record names the change with the hash masked, and never the password.
    record = json.loads(site.audit.read_text().splitlines()[-1])
    assert (record["kind"], record["name"], record["action"]) == ("user", "sue", "create")
    assert "role: supervisor" in record["diff"]
    assert "password_hash: <changed secret>" in record["diff"]
    assert "scrypt" not in site.audit.read_text() and "sue-secret-1" not in site.audit.read_text()


async def test_new_users_need_a_password_a_role_and_a_long_enough_password(site: Site) -> None:
    client = site.client
    cases = [
        ({"role": "viewer"}, "users[2].password", "a new user needs a password"),
        ({"password": "long-enough"}, "users[2].role", "a new user needs a role"),
        ({"role": "viewer", "password": "short"}, "users[2].password", "at least 8 characters"),
        ({"role": "viewer", "password": "x" * 1025}, "users[2].password", "at most 1024"),
        ({"role": "viewer", "password": 12345678}, "users[2].password", "must be a string"),
        ({"role": "boss", "password": "long-enough"}, "users[2].role", "'admin'"),
        ({"role": "viewer", "password_hash": "scrypt$1"}, "password_hash", "not a field"),
    ]
    for body, loc, msg in cases:
        resp = await client.put("/api/users/newbie", json=body, headers=ADMIN)
        errors = (await resp.json())["errors"]
        assert resp.status == 422, body
        assert errors[0]["loc"] == loc and msg in errors[0]["msg"], errors
    assert site.path.read_text() == TEXT and not site.audit.exists()


async def test_change_role_keeps_the_hash_and_reset_replaces_it(site: Site) -> None:
    client = site.client
    resp = await client.put("/api/users/wsa", json={"role": "supervisor"}, headers=ADMIN)
    assert resp.status == 200, await resp.json()
    stored = users_in(site.path)["wsa"]
    assert stored == {"name": "wsa", "password_hash": "${WSA_HASH}", "role": "supervisor"}
    version = resp.headers["ETag"]
    resp = await client.post(
        "/api/users/wsa/password",
        json={"password": "brand-new-pass"},
        headers={**ADMIN, "If-Match": version},
    )
    assert resp.status == 200, await resp.json()
    stored = users_in(site.path)["wsa"]
    assert stored["role"] == "supervisor"
    assert verify_password("brand-new-pass", stored["password_hash"])
    record = json.loads(site.audit.read_text().splitlines()[-1])
    assert record["action"] == "replace" and "<changed secret>" in record["diff"]
    assert "scrypt" not in site.audit.read_text()  # only the reference was shown, by name
    # An old version is refused: the file changed since.
    resp = await client.post(
        "/api/users/wsa/password",
        json={"password": "another-pass"},
        headers={**ADMIN, "If-Match": version},
    )
    assert resp.status == 409
    resp = await client.post("/api/users/ghost/password", json={"password": "p" * 8}, headers=ADMIN)
    assert resp.status == 404
    resp = await client.post("/api/users/wsa/password", json={"password": "short"}, headers=ADMIN)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["loc"] == "users[1].password"


async def test_the_last_admin_is_neither_demoted_nor_deleted(site: Site) -> None:
    client = site.client
    resp = await client.put("/api/users/root", json={"role": "workspace_admin"}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422
    assert body["errors"] == [
        {
            "loc": "users[0].role",
            "msg": "the last admin cannot be given another role; make another user admin first",
        }
    ]
    resp = await client.delete("/api/users/root", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 422 and body["errors"][0]["loc"] == "users[0]"
    assert "cannot be deleted" in body["errors"][0]["msg"]
    assert site.path.read_text() == TEXT
    # With a second admin, the first may go.
    resp = await client.put("/api/users/wsa", json={"role": "admin"}, headers=ADMIN)
    assert resp.status == 200
    resp = await client.delete("/api/users/root", headers=ADMIN)
    assert resp.status == 200, await resp.json()
    assert list(users_in(site.path)) == ["wsa"]
    resp = await client.delete("/api/users/wsa", headers=ADMIN)
    assert resp.status == 422 and (await resp.json())["errors"][0]["loc"] == "users[0]"
    resp = await client.delete("/api/users/ghost", headers=ADMIN)
    assert resp.status == 404


async def test_the_pages_are_for_admins_and_their_links_too(tmp_path: Path) -> None:
    path = tmp_path / "sipserver.yaml"
    path.write_text(TEXT)
    document = ConfigDocument(path)
    app = web.Application()
    UserPages(gate=FakeGate(), document=document).add_routes(app)
    ModelPages(gate=FakeGate(), document=document).add_routes(app)
    async with TestClient(TestServer(app)) as client:
        for page in ("users", "audit"):
            resp = await client.get(f"/dashboard/settings/{page}", headers=ADMIN)
            text = await resp.text()
            assert resp.status == 200 and 'data-can-write="true"' in text
            assert f"/dashboard/settings/static/{page}.js" in text and "{{" not in text
            script = await client.get(f"/dashboard/settings/static/{page}.js")
            assert script.status == 200 and "/api/" in await script.text()
            resp = await client.get(f"/dashboard/settings/{page}", allow_redirects=False)
            assert resp.status == 303 and "/dashboard/login" in resp.headers["Location"]
        for role in ("workspace_admin", "supervisor", "viewer"):
            resp = await client.get("/dashboard/settings/users", headers={"X-Test-Role": role})
            assert resp.status == 403
            assert f"Only an admin manages the users; the role {role} may not." in await resp.text()
            resp = await client.get("/dashboard/settings/audit", headers={"X-Test-Role": role})
            assert resp.status == 403 and "reads the audit log" in await resp.text()
        assert (await client.get("/dashboard/settings/static/x.js")).status == 404
        # The console pages' top bar links to Users and Audit for an admin only.
        resp = await client.get("/dashboard/models", headers=ADMIN)
        assert 'href="/dashboard/settings/users"' in await resp.text()
        resp = await client.get("/dashboard/models", headers={"X-Test-Role": "workspace_admin"})
        text = await resp.text()
        assert 'href="/dashboard/settings/users"' not in text and "{{ADMIN_LINKS}}" not in text


def test_a_new_password_ends_the_users_sessions() -> None:
    old = User(name="sue", password_hash=hash_password("first-pass", n=16), role="supervisor")
    sessions = LoginSessions()
    token = sessions.create(old, now=0.0)
    config = Config(users=[old])
    assert sessions.get(token, config, now=1.0) is not None
    new = old.model_copy(update={"password_hash": hash_password("second-pass", n=16)})
    assert sessions.get(token, Config(users=[new]), now=2.0) is None
    assert sessions.get(token, config, now=3.0) is None  # gone for good
