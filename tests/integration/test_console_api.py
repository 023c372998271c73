"""The console's JSON API against a real server started with a configuration file
(docs/console.md): the role matrix, a saved agent that SIPp then registers to (the reload),
422 with the key path, 409 on a file changed underneath, the audit log, and secrets that never
come back in a GET or show up in the log. The client is aiohttp, logged in through the
dashboard's form."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sipserver.listens.passwords import hash_password
from tests.integration.conftest import DEMO_PASSWORD, ServerProcess, run_sipp
from tests.integration.listens_client import login

pytestmark = pytest.mark.integration

ROLES = ("admin", "workspace_admin", "supervisor", "agent")
CAROL_PASSWORD = "carol-sip-password-1"


def password_of(role: str) -> str:
    return f"{role}-console-password"


def with_users(config: dict[str, Any]) -> None:
    config["users"] = [
        {"name": role, "role": role, "password_hash": hash_password(password_of(role), n=1024)}
        for role in ROLES
    ]


@pytest.fixture
def server(server_factory: Any) -> ServerProcess:
    s: ServerProcess = server_factory(with_users)
    return s


class Client:
    """A logged-in aiohttp session against the server's public site."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base, self.http = base, http

    async def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, f"{self.base}{path}", **kwargs) as resp:
            text = await resp.text()
            data = json.loads(text) if text.startswith(("{", "[")) else text
            return resp.status, data, resp.headers


@pytest.fixture
async def clients(server: ServerProcess) -> AsyncIterator[dict[str, Client]]:
    sessions = {}
    for role in ROLES:
        http, resp = await login(server.http_url, role, password_of(role))
        assert resp.status == 303, f"login as {role}: {resp.status}"
        sessions[role] = Client(server.http_url, http)
    anonymous = aiohttp.ClientSession()
    sessions["nobody"] = Client(server.http_url, anonymous)
    yield sessions
    for client in sessions.values():
        await client.http.close()


async def test_role_matrix(clients: dict[str, Client]) -> None:
    expected_read = {"admin": 200, "workspace_admin": 200, "supervisor": 200}
    for role, client in clients.items():
        want = expected_read.get(role, 401 if role == "nobody" else 403)
        for path in ("/api/agents", "/api/agents/alice", "/api/models", "/api/credentials",
                     "/api/registrations", "/api/calls/active"):  # fmt: skip
            status, _, _ = await client.call("GET", path)
            assert status == want, (role, path, status)
    generated = []
    for role, client in clients.items():
        status, body, _ = await client.call("POST", "/api/secrets/generate")
        if role in ("admin", "workspace_admin"):
            assert status == 200 and len(body["secret"]) >= 32
            generated.append(body["secret"])
        else:
            assert status == (401 if role == "nobody" else 403), (role, status)
    assert len(set(generated)) == 2
    status, body, _ = await clients["supervisor"].call("PUT", "/api/models/m2", {"type": "custom"})
    assert status == 403 and "may only read" in body["error"]
    status, body, _ = await clients["agent"].call("DELETE", "/api/agents/alice")
    assert status == 403
    status, body, _ = await clients["admin"].call(
        "PUT", "/api/models/m2", {"type": "custom"}, Origin="http://evil.example"
    )
    assert status == 403 and "cross-site" in body["error"]
    status, _, _ = await clients["workspace_admin"].call("GET", "/api/audit")
    assert status == 403
    status, _, _ = await clients["admin"].call("GET", "/api/audit")
    assert status == 200


async def test_a_saved_agent_takes_registrations_after_the_reload(
    server: ServerProcess, clients: dict[str, Client]
) -> None:
    admin = clients["admin"]
    status, body, _ = await admin.call("POST", "/api/secrets/generate")
    secret = body["secret"]
    carol = {
        "name": "Carol",
        "sip": {
            "enabled": True,
            "numbers": ["+15005550103"],
            "username": "carol",
            "password": CAROL_PASSWORD,
        },
        "websocket": {"enabled": True, "secret": secret},
    }
    status, body, _ = await admin.call("PUT", "/api/agents/carol", carol)
    assert status == 200, body
    assert body["agent"]["sip"]["password"] == "********"
    assert body["agent"]["websocket"]["secret"] == "********"
    assert body["urls"]["websocket"].endswith(f"/ws/carol/{secret}")
    assert body["urls"]["twilio_webhook"].endswith(f"/incoming-call/carol/{secret}")
    assert body["reload"]["applied"] is True and "agents" in body["reload"]["changed"]

    result = run_sipp("register.xml", server.sip_port, service="carol", password=CAROL_PASSWORD)
    assert result.returncode == 0, result.output
    status, body, _ = await clients["supervisor"].call("GET", "/api/registrations")
    assert any(r["agent"] == "carol" and r["expires_in"] > 0 for r in body["registrations"])
    status, body, _ = await clients["supervisor"].call("GET", "/api/calls/active")
    assert {"agent": "carol", "calls": 0, "limit": None, "in_progress": []} in body["agents"]

    # Secrets never come back in a GET, nor in the log.
    for path in ("/api/agents", "/api/agents/carol", "/api/agents/alice"):
        status, body, _ = await admin.call("GET", path)
        text = json.dumps(body)
        assert secret not in text and CAROL_PASSWORD not in text and DEMO_PASSWORD not in text
    status, body, _ = await admin.call("GET", "/api/agents")
    [summary] = [a for a in body["agents"] if a["slug"] == "carol"]
    assert summary["urls"]["websocket"].endswith("/ws/carol/********")
    log_text = server.log_path.read_text()
    assert secret not in log_text and CAROL_PASSWORD not in log_text

    # The file kept its other agents, and the save is in the audit log (secrets masked).
    saved = yaml.safe_load(server.config_file.read_text())
    assert [a["slug"] for a in saved["agents"]] == ["alice", "fenced", "carol"]
    assert server.config_file.with_name("sipserver.yaml.bak").exists()
    status, body, _ = await admin.call("GET", "/api/audit")
    [record] = [r for r in body["records"] if r["name"] == "carol"]
    assert record["user"] == "admin" and record["action"] == "create"
    assert secret not in json.dumps(record) and CAROL_PASSWORD not in json.dumps(record)

    # And it goes away again.
    status, body, _ = await admin.call("DELETE", "/api/agents/carol")
    assert status == 200 and body["reload"]["applied"] is True
    status, _, _ = await admin.call("GET", "/api/agents/carol")
    assert status == 404


async def test_invalid_input_is_422_with_the_key_and_changes_nothing(
    server: ServerProcess, clients: dict[str, Client]
) -> None:
    before = server.config_file.read_bytes()
    body = {
        "sip": {
            "enabled": True,
            "numbers": ["+15005550104"],
            "username": "dave",
            "password": "dave-password-12",
            "allowed_ips": ["10.0.0.5"],
        }
    }
    status, answer, _ = await clients["workspace_admin"].call("PUT", "/api/agents/dave", body)
    assert status == 422
    errors = {e["loc"]: e["msg"] for e in answer["errors"]}
    assert "agents[2].sip.allowed_ips[0]" in errors, errors
    assert "10.0.0.5/32" in errors["agents[2].sip.allowed_ips[0]"]
    status, answer, _ = await clients["admin"].call("DELETE", "/api/models/nope")
    assert status == 404
    assert server.config_file.read_bytes() == before


async def test_a_file_changed_on_disk_is_409(
    server: ServerProcess, clients: dict[str, Client]
) -> None:
    admin = clients["admin"]
    status, alice, headers = await admin.call("GET", "/api/agents/alice")
    version = headers["ETag"]
    path: Path = server.config_file
    path.write_text(path.read_text() + "# an operator's edit\n")
    alice["name"] = "Alice the second"
    status, body, _ = await admin.call("PUT", "/api/agents/alice", alice, **{"If-Match": version})
    assert status == 409, body
    assert "an operator's edit" in path.read_text() and "Alice the second" not in path.read_text()
    # Loaded again, the save goes through (and the operator's edit stays).
    status, alice, headers = await admin.call("GET", "/api/agents/alice")
    alice["name"] = "Alice the second"
    status, body, _ = await admin.call(
        "PUT", "/api/agents/alice", alice, **{"If-Match": headers["ETag"]}
    )
    assert status == 200, body
    text = path.read_text()
    assert "an operator's edit" in text and "Alice the second" in text


async def test_models_and_credentials(server: ServerProcess, clients: dict[str, Client]) -> None:
    admin = clients["admin"]
    key = {"api_key": "lk-api-key-value", "api_secret": "lk-api-secret-value"}
    status, body, _ = await admin.call("PUT", "/api/credentials/livekit", key)
    assert status == 200, body
    assert body["credential"] == {"api_key": "********", "api_secret": "********"}
    model = {
        "type": "livekit_inference",
        "credential": "livekit",
        "stt": "deepgram/nova-3:en",
        "llm": "openai/gpt-4o-mini",
        "tts": "cartesia/sonic-2",
    }
    status, body, _ = await admin.call("PUT", "/api/models/lk", model)
    assert status == 200 and body["model"] == model, body
    status, body, _ = await clients["supervisor"].call("GET", "/api/credentials")
    assert body["credentials"] == [
        {"name": "livekit", "keys": ["api_key", "api_secret"], "used_by": ["lk"]}
    ]
    assert "lk-api" not in json.dumps(body)
    status, body, _ = await clients["supervisor"].call("GET", "/api/models")
    assert {"name": "lk", "type": "livekit_inference", "credential": "livekit", "used_by": []} in (
        body["models"]
    )
    # A credential a model uses cannot go; the masked value sent back keeps the stored one.
    status, body, _ = await admin.call("DELETE", "/api/credentials/livekit")
    assert status == 422 and "models.lk.credential" in {e["loc"] for e in body["errors"]}
    masked = {"api_key": "********", "api_secret": "a-new-secret-value"}
    status, body, _ = await admin.call("PUT", "/api/credentials/livekit", masked)
    assert status == 200
    stored = yaml.safe_load(server.config_file.read_text())["credentials"]["livekit"]
    assert stored == {"api_key": "lk-api-key-value", "api_secret": "a-new-secret-value"}
    status, body, _ = await admin.call(
        "PUT", "/api/models/m", {"type": "custom", "vad": {"sample_rate": 11025}}
    )
    assert status == 422 and "models.m.vad.sample_rate" in {e["loc"] for e in body["errors"]}
