"""The model and credential pages' server side (sipserver/console/model_pages.py and
model_fields.py): every setting of a custom model is on the page with a default the server
uses; the shells know who may write; the read-only banner on the embedded default says how to
get a writable file; only the shipped sounds are served. The page's behaviour in a browser is in
tests/integration/test_console_pages_models.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from sipserver.config import SHIPPED_SOUNDS, CustomModel
from sipserver.console.document import ConfigDocument
from sipserver.console.model_fields import GROUPS, page_schema
from sipserver.console.model_pages import ModelPages

STAGE_KEYS = {"type", "stt", "llm", "tts", "credential"}  # drawn apart from the groups


def settings_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        if not prefix and name in STAGE_KEYS:
            continue
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= settings_of(kind, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_custom_setting_is_on_the_page_and_nothing_else() -> None:
    on_page = [f.key for _, fields in GROUPS for f in fields]
    assert len(on_page) == len(set(on_page))
    assert set(on_page) == settings_of(CustomModel)
    titles = [title for title, _ in GROUPS]
    assert titles == ["Interruption Handling", "VAD", "Audio Feedback", "Other", "Turn Detection"]


def test_the_schema_carries_the_servers_defaults_and_units() -> None:
    schema = page_schema()
    fields = {f["key"]: f for g in schema["groups"] for f in g["fields"]}
    default = CustomModel()
    assert fields["vad.min_silence_duration"]["default"] == default.vad.min_silence_duration
    assert fields["turn_detection.model"]["default"] == default.turn_detection.model
    assert fields["vad.min_silence_duration"]["unit"] == "s"
    assert fields["vad.activation_threshold"]["max"] == 1
    assert fields["audio_feedback.ambient_sound"]["choices"][-1] == "none"
    assert all(f["help"] for f in fields.values())
    assert "local" in schema["providers"]["stt"] and schema["sounds"] == list(SHIPPED_SOUNDS)
    assert "provider/model" in schema["livekit_help"]["llm"]


@dataclass
class Who:
    name: str
    role: str


class Gate:
    """Stands in for the dashboard's session: the login is set by the test."""

    def __init__(self) -> None:
        self.who: Who | None = None

    def login_of(self, request: web.Request) -> Who | None:
        return self.who

    def same_origin(self, request: web.Request) -> bool:
        return True


async def client_for(document: ConfigDocument, gate: Gate) -> TestClient[Any, Any]:
    app = web.Application()
    ModelPages(gate=gate, document=document).add_routes(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def writable(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Gate]]:
    config = tmp_path / "sipserver.yaml"
    config.write_text("models: {}\n")
    gate = Gate()
    client = await client_for(ConfigDocument(config), gate)
    yield client, gate
    await client.close()


async def test_the_shell_tells_the_script_who_may_write(
    writable: tuple[TestClient[Any, Any], Gate],
) -> None:
    client, gate = writable
    resp = await client.get("/dashboard/models/new", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/login?next=")
    for role, can_write in (("admin", "true"), ("workspace_admin", "true"),
                            ("supervisor", "false")):  # fmt: skip
        gate.who = Who("u", role)
        for path in ("/dashboard/models", "/dashboard/models/support",
                     "/dashboard/settings/credentials"):  # fmt: skip
            resp = await client.get(path)
            text = await resp.text()
            assert resp.status == 200, (role, path)
            assert f'data-can-write="{can_write}"' in text
            assert "read-only-banner" not in text
            assert "media-src 'self'" in resp.headers["Content-Security-Policy"]
    gate.who = Who("u", "agent")
    resp = await client.get("/dashboard/models")
    assert resp.status == 403 and "may not see the configuration" in await resp.text()


async def test_the_model_page_embeds_its_schema_and_escapes_the_name(
    writable: tuple[TestClient[Any, Any], Gate],
) -> None:
    client, gate = writable
    gate.who = Who("u", "admin")
    resp = await client.get('/dashboard/models/a"b<x>')
    text = await resp.text()
    assert 'data-model="a&quot;b&lt;x&gt;"' in text and "<x>" not in text
    found = re.search(r'<script type="application/json" id="schema">(.*?)</script>', text, re.S)
    assert found is not None
    assert json.loads(found.group(1)) == json.loads(json.dumps(page_schema()))


async def test_the_embedded_default_shows_the_read_only_banner() -> None:
    gate = Gate()
    gate.who = Who("u", "admin")
    client = await client_for(ConfigDocument(None), gate)
    try:
        text = await (await client.get("/dashboard/models")).text()
    finally:
        await client.close()
    assert 'id="read-only-banner"' in text
    assert "sipserver init DIR" in text and "sipserver run -c DIR/sipserver.yaml" in text
    assert 'data-can-write="false"' in text  # even for an admin


async def test_only_the_shipped_sounds_are_served(
    writable: tuple[TestClient[Any, Any], Gate],
) -> None:
    client, gate = writable
    resp = await client.get("/dashboard/sounds/keyboard_typing.wav", allow_redirects=False)
    assert resp.status == 303  # behind the login like the pages
    gate.who = Who("u", "supervisor")
    for sound in SHIPPED_SOUNDS:
        resp = await client.get(f"/dashboard/sounds/{sound}.wav")
        assert resp.status == 200 and resp.content_type == "audio/wav"
        assert (await resp.read())[:4] == b"RIFF"
    for bad in ("none.wav", "keyboard_typing", "..%2F__init__.py", "x.wav"):
        resp = await client.get(f"/dashboard/sounds/{bad}")
        assert resp.status == 404, bad
    resp = await client.get("/dashboard/console/model.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    assert (await client.get("/dashboard/console/other.js")).status == 404
