"""The console's agent pages in a real browser: headless Chromium over the DevTools Protocol
(tests/integration/cdp.py), against a real server started with a configuration FILE.

An admin logs in, sees the agent cards' menus (Settings, AI Listens, Calls) with live call
counts, adds an agent with SIP and a websocket, presses Generate and Save, and sees the URLs
appear; SIPp then registers with the agent's SIP username and password, and a Twilio Media
Streams client (tests/integration/media_stream_client.py) is served on the websocket URL the
page showed. A CIDR mistake comes back as a 422 shown beside its field. The admin then turns
call recording on (WAV, mixed) and sets a call_ended webhook with a generated secret: the file
holds them, a reload shows them (the secret masked), "ftp://x" gets its 422 beside the URL field
and emptying the URL removes the webhook. Finally a supervisor sees the page read-only.
Screenshots go to the test's temporary directory (printed at the end). Skipped when chromium
is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess, run_sipp, until
from tests.integration.console_ui import log_in_as
from tests.integration.media_stream_client import MediaStreamClient
from tests.integration.test_console_api import password_of, with_users

pytestmark = pytest.mark.integration

DORA_PASSWORD = "dora-sip-password-1"


@pytest.fixture
def server(server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """The base config with a user per role; alice's display name and SIP password come from
    the environment (``${VAR}`` references the page must keep)."""
    monkeypatch.setenv("ALICE_SIP_PASSWORD", "alice-env-password-1")

    def mutate(config: dict[str, Any]) -> None:
        with_users(config)
        alice = config["agents"][0]
        alice["name"] = "${ALICE_DISPLAY_NAME:-Alice}"
        alice["sip"]["password"] = "${ALICE_SIP_PASSWORD}"

    s: ServerProcess = server_factory(mutate)
    return s


async def log_in(page: Page, base: str, role: str, next_path: str = "/dashboard") -> None:
    await log_in_as(page, base, role, password_of(role), next_path)


async def set_field(page: Page, field_id: str, value: str | bool) -> None:
    prop = "checked" if isinstance(value, bool) else "value"
    await page.eval(
        f"(e => {{ e.{prop} = {json.dumps(value)}; e.dispatchEvent(new Event('change')); }})"
        f"(document.getElementById({json.dumps(field_id)})); true"
    )


async def press(page: Page, button_id: str) -> None:
    """A real click on the button, scrolled into view first."""
    await page.eval(f"document.getElementById({json.dumps(button_id)}).scrollIntoView(); true")
    await page.click(f"#{button_id}")


def text_of(field_id: str) -> str:
    return f"document.getElementById({json.dumps(field_id)}).textContent"


async def test_admin_adds_an_agent_it_takes_sip_and_websocket_supervisor_reads_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    base = server.http_url
    async with (
        aiohttp.ClientSession() as http,
        open_page(
            "about:blank", tmp_path / "chromium-profile", ("--window-size=1280,2400",)
        ) as page,
    ):
        # The agent list: the menu's entries, the live call count, "Add agent" for a writer.
        await log_in(page, base, "admin")
        await page.eval("document.querySelector('[data-agent=alice] summary').click(); true")
        menu = await page.eval("document.querySelector('[data-agent=alice] nav').innerText")
        live = await page.until("document.querySelector('[data-agent=alice] .live').textContent")
        await page.screenshot(tmp_path / "agents-1-list-menu.png")
        assert "Settings" in menu and "AI Listens" in menu and "Calls" in menu
        assert live == "0 calls in progress"

        # The menu's Settings: references show where they come from and survive a save.
        await page.eval(
            "document.querySelector('[data-agent=alice] nav a[href$=settings]').click()"
        )
        await page.until(
            "location.pathname === '/dashboard/agents/alice/settings'"
            " && document.body.dataset.loaded === 'yes'"
        )
        name = await page.eval("document.getElementById('name').value")
        name_note = await page.eval(text_of("name-ref"))
        password_note = await page.eval(text_of("sip.password-stored"))
        assert name == "${ALICE_DISPLAY_NAME:-Alice}" and "ALICE_DISPLAY_NAME" in name_note
        assert "From environment variable ALICE_SIP_PASSWORD" in password_note
        await set_field(page, "max_concurrent_calls", "5")
        await press(page, "save")
        await page.until(f"{text_of('save-status')}.startsWith('Saved.')")
        await page.screenshot(tmp_path / "agents-2-settings-references.png")
        text = server.config_file.read_text()
        assert "${ALICE_DISPLAY_NAME:-Alice}" in text and "${ALICE_SIP_PASSWORD}" in text
        assert yaml.safe_load(text)["agents"][0]["max_concurrent_calls"] == 5

        # A new agent with SIP and a websocket; Generate; Save; the URLs appear.
        await page.goto(f"{base}/dashboard")
        await page.eval("document.querySelector('a[href=\"/dashboard/agents/new\"]').click()")
        await page.until(
            "location.pathname === '/dashboard/agents/new' && document.body.dataset.loaded"
        )
        assert await page.eval("document.body.dataset.loaded") == "yes"
        assert await page.eval(text_of("url-websocket")) == "available after saving"
        models = await page.eval(
            "[...document.getElementById('realtime.model').options].map(o => o.value)"
        )
        assert "m" in models  # from /api/models
        for field_id, value in (
            ("slug", "dora"),
            ("name", "Dora"),
            ("sip.enabled", True),
            ("sip.numbers", "+15005550104"),
            ("sip.username", "dora"),
            ("sip.password", DORA_PASSWORD),
            ("websocket.enabled", True),
            ("websocket.twilio_auth_token", "twilio-auth-token-1"),
        ):
            await set_field(page, field_id, value)
        await press(page, "generate")
        secret = await page.until("document.getElementById('websocket.secret').value")
        assert len(secret) >= 32
        await page.screenshot(tmp_path / "agents-3-new-agent.png")
        await press(page, "save")
        try:
            ws_url = await page.until(
                f"(t => t.startsWith('ws://') && t)({text_of('url-websocket')})", timeout=30
            )
        except AssertionError:
            shown = await page.eval(f"{text_of('save-status')} + ' | ' + {text_of('form-error')}")
            raise AssertionError(f"no URLs after Save: {shown} {page.errors}") from None
        twilio_url = await page.eval(text_of("url-twilio_webhook"))
        saved = await page.eval(text_of("save-status"))
        path = await page.eval("location.pathname")
        await page.screenshot(tmp_path / "agents-4-saved-urls.png")
        http_base = base.removeprefix("http://")
        assert ws_url == f"ws://{http_base}/ws/dora/{secret}"
        assert twilio_url == f"{base}/incoming-call/dora/{secret}"
        assert saved.startswith("Saved.") and path == "/dashboard/agents/dora/settings"
        on_disk = yaml.safe_load(server.config_file.read_text())["agents"][-1]
        assert on_disk["slug"] == "dora" and on_disk["sip"]["numbers"] == ["+15005550104"]
        assert on_disk["websocket"] == {
            "enabled": True,
            "secret": secret,
            "twilio_auth_token": "twilio-auth-token-1",
        }
        # The write-only fields are empty again, with a note that a value is stored.
        assert await page.eval("document.getElementById('sip.password').value") == ""
        assert "stored" in await page.eval(text_of("sip.password-stored"))

        # The agent takes a SIP registration and a websocket call (the echo line: no model).
        result = run_sipp("register.xml", server.sip_port, service="dora", password=DORA_PASSWORD)
        assert result.returncode == 0, result.output
        client = MediaStreamClient(await http.ws_connect(ws_url))
        await client.start()
        try:
            served = await until(lambda: len(client.frames) >= 10, 15)
            # The agent list counts the call while it lasts, and no longer once it ended.
            await page.goto(f"{base}/dashboard")
            during = await page.until(
                "(t => t.startsWith('1 ') && t)"
                "(document.querySelector('[data-agent=dora] .live').textContent)"
            )
            await page.screenshot(tmp_path / "agents-4b-list-call-in-progress.png")
        finally:
            await client.stop()
        assert served, f"the agent's websocket sent {len(client.frames)} frames"
        assert client.close_code == 1000
        assert during == "1 call in progress"
        await page.until(
            "document.querySelector('[data-agent=dora] .live').textContent"
            " === '0 calls in progress'"
        )
        await page.goto(f"{base}/dashboard/agents/dora/settings")
        await page.until("document.body.dataset.loaded === 'yes'")

        # A bare address is not CIDR: the 422 is shown beside the field, nothing is saved.
        await set_field(page, "sip.allowed_ips", "10.0.0.5")
        await press(page, "save")
        error = await page.until(text_of("sip.allowed_ips-error"))
        invalid = await page.eval(
            "document.getElementById('sip.allowed_ips').getAttribute('aria-invalid')"
        )
        focused = await page.eval("document.activeElement.id")
        await page.screenshot(tmp_path / "agents-5-error-beside-field.png")
        assert "10.0.0.5/32" in error and invalid == "true" and focused == "sip.allowed_ips"
        on_disk = yaml.safe_load(server.config_file.read_text())["agents"][-1]
        assert "allowed_ips" not in on_disk["sip"]

        # The file changes underneath (a hand edit): Save gets 409, the page offers to reload;
        # after the reload the save goes through and the hand edit stays.
        config_file = server.config_file
        config_file.write_text(config_file.read_text() + "# a hand edit\n")
        await set_field(page, "sip.allowed_ips", "10.0.0.5/32")
        await press(page, "save")
        await page.until("!document.getElementById('conflict').hidden")
        await page.screenshot(tmp_path / "agents-6-conflict.png")
        await page.eval("window.beforeReload = true")
        await press(page, "reload-page")
        await page.until("!window.beforeReload && document.body.dataset.loaded === 'yes'")
        assert await page.eval("document.getElementById('sip.allowed_ips').value") == ""
        await set_field(page, "sip.allowed_ips", "10.0.0.5/32")
        await set_field(page, "websocket.twilio_auth_token-remove", True)  # an optional secret
        await press(page, "save")
        await page.until(f"{text_of('save-status')}.startsWith('Saved.')")
        text = config_file.read_text()
        assert "# a hand edit" in text
        dora = yaml.safe_load(text)["agents"][-1]
        assert dora["sip"]["allowed_ips"] == ["10.0.0.5/32"]
        assert dora["websocket"]["secret"] == secret  # kept: left empty
        assert dora["websocket"].get("twilio_auth_token") is None

        # Call recording and a webhook: the channels and format follow the toggle; Generate
        # fills the webhook's secret; after Save and a reload the values are kept, the secret
        # masked (the stored note, never the value), and the YAML holds them.
        await page.goto(f"{base}/dashboard/agents/dora/settings")
        await page.until("document.body.dataset.loaded === 'yes'")
        choices = "document.getElementById('recording.format').disabled"
        assert await page.eval(choices) is True  # recording is off
        await set_field(page, "recording.enabled", True)
        assert await page.eval(choices) is False
        assert "legal responsibility" in await page.eval(text_of("recording-legal"))
        await set_field(page, "recording.format", "wav")
        await set_field(page, "recording.channels", "mixed")
        hook_url = "https://crm.example.com/hooks/sipserver?tenant=7"
        await set_field(page, "webhooks.call_ended.url", hook_url)
        await press(page, "generate-webhook-call_ended")
        hook_secret = await page.until(
            "document.getElementById('webhooks.call_ended.secret').value"
        )
        assert len(hook_secret) >= 32 and hook_secret != secret
        await press(page, "webhooks-help-button")
        await page.screenshot(tmp_path / "agents-8-recording-webhooks.png")
        await press(page, "save")
        await page.until(f"{text_of('save-status')}.startsWith('Saved.')")
        dora = yaml.safe_load(config_file.read_text())["agents"][-1]
        assert dora["recording"] == {"enabled": True, "channels": "mixed", "format": "wav"}
        assert dora["webhooks"] == {"call_ended": {"url": hook_url, "secret": hook_secret}}
        assert dora["websocket"]["secret"] == secret

        await page.goto(f"{base}/dashboard/agents/dora/settings")
        await page.until("document.body.dataset.loaded === 'yes'")
        kept = await page.eval(
            "(v => ({recording: v('recording.enabled').checked,"
            " format: v('recording.format').value, channels: v('recording.channels').value,"
            " disabled: v('recording.format').disabled, url: v('webhooks.call_ended.url').value,"
            " secret: v('webhooks.call_ended.secret').value,"
            " type: v('webhooks.call_ended.secret').type,"
            " stored: v('webhooks.call_ended.secret-stored').textContent,"
            " other: v('webhooks.transcript.url').value,"
            " html: document.documentElement.outerHTML}))(id => document.getElementById(id))"
        )
        api_secret = await page.eval(
            "fetch('/api/agents/dora').then(r => r.json()).then(a => a.webhooks.call_ended.secret)"
        )
        await page.eval("document.getElementById('h-recording').scrollIntoView(); true")
        await page.screenshot(tmp_path / "agents-9-recording-webhooks-kept.png")
        assert kept["recording"] is True and kept["disabled"] is False, kept
        assert (kept["format"], kept["channels"]) == ("wav", "mixed"), kept
        assert kept["url"] == hook_url and kept["other"] == "", kept
        assert kept["secret"] == "" and kept["type"] == "password", kept
        assert "stored" in kept["stored"] and hook_secret not in kept["html"], kept
        assert api_secret == "********"

        # A URL the API refuses: the 422 beside the URL field, nothing saved.
        await set_field(page, "webhooks.call_ended.url", "ftp://x")
        await press(page, "save")
        error = await page.until(text_of("webhooks.call_ended.url-error"))
        invalid = await page.eval(
            "document.getElementById('webhooks.call_ended.url').getAttribute('aria-invalid')"
        )
        await page.eval(
            "document.getElementById('webhooks.call_ended.url').scrollIntoView({block: 'center'})"
        )
        await page.screenshot(tmp_path / "agents-10-webhook-url-error.png")
        assert "http://" in error and invalid == "true", error
        assert yaml.safe_load(config_file.read_text())["agents"][-1]["webhooks"] == dora["webhooks"]

        # Emptying the URL removes the webhook (its secret with it); recording stays.
        await set_field(page, "webhooks.call_ended.url", "")
        await press(page, "save")
        await page.until(f"{text_of('save-status')}.startsWith('Saved.')")
        dora = yaml.safe_load(config_file.read_text())["agents"][-1]
        assert "webhooks" not in dora and dora["recording"]["enabled"] is True
        assert hook_secret not in config_file.read_text()

        # A supervisor reads the page: inputs disabled, no Save, no Generate, a note why.
        await page.eval(
            "document.querySelector('form[action=\"/dashboard/logout\"] button').click()"
        )
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "supervisor")
        assert (
            await page.eval("document.querySelector('a[href=\"/dashboard/agents/new\"]')") is None
        )
        await page.goto(f"{base}/dashboard/agents/dora/settings")
        await page.until("document.body.dataset.loaded")
        state = await page.eval(
            "({disabled: [...document.querySelectorAll('#fields input, #fields select,"
            " #fields textarea')].every(e => e.disabled),"
            " help: !document.getElementById('listens-help-button').disabled,"
            " save: document.getElementById('save').offsetParent === null,"
            " generate: [...document.querySelectorAll('#generate, button.generate')]"
            ".every(b => b.offsetParent === null),"
            " recording: document.getElementById('recording.enabled').checked,"
            " note: document.getElementById('read-only-note').textContent,"
            " username: document.getElementById('sip.username').value,"
            " sip: document.getElementById('sip.enabled').checked})"
        )
        await press(page, "listens-help-button")
        instructions = await page.until(
            "!document.getElementById('listens-instructions').hidden"
            " && document.getElementById('listens-help-button').getAttribute('aria-expanded')"
        )
        await page.screenshot(tmp_path / "agents-7-supervisor-read-only.png")
        uncaught = [e for e in page.errors if e.startswith("uncaught")]
    print(f"screenshots {tmp_path}")
    assert state["disabled"] and state["save"] and state["generate"] and state["help"], state
    assert "may only read" in state["note"] and instructions == "true", state
    assert state["username"] == "dora" and state["sip"] is True, state
    assert state["recording"] is True, state
    assert uncaught == []
