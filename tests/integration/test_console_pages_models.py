"""The console's model and credential pages in a real browser: headless Chromium over the
Chrome DevTools Protocol (tests/integration/cdp.py), against a real server started with a
configuration FILE.

An admin creates a custom model (type chosen first), changes VAD settings, sees a 422 beside
its field, saves, finds the model in the list and in the file with the operator's comment kept,
plays a shipped sound; adds a LiveKit Inference credential (its value never comes back to the
page) and a LiveKit Inference model that uses it; a save over a file changed on disk is refused
with the reload offer (409). A supervisor sees the same pages read-only. Screenshots go to the
test's temporary directory (docs/console.md "Pages"). Skipped when chromium is not installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import sipserver
from sipserver.listens.passwords import hash_password
from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess
from tests.integration.console_ui import log_in_as, press, set_value

pytestmark = pytest.mark.integration

LK_SECRET = "lk-api-secret-value-1234567890"
COMMENT = "# models: kept by the console (an operator's comment)"


def password_of(role: str) -> str:
    return f"{role}-pages-password"


async def log_in(page: Page, base: str, name: str, next_path: str) -> None:
    await log_in_as(page, base, name, password_of(name), next_path)


def with_users(config: dict[str, Any]) -> None:
    config["users"] = [
        {"name": role, "role": role, "password_hash": hash_password(password_of(role), n=1024)}
        for role in ("admin", "supervisor")
    ]


async def save(page: Page) -> str:
    await page.eval("document.getElementById('status').textContent = ''; true")
    await press(page, "#save")
    status: str = await page.until(
        "(t => t && !t.startsWith('Saving') && t)(document.getElementById('status').textContent)"
    )
    return status


def file_of(server: ServerProcess) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(server.config_file.read_text())
    return data


async def test_admin_edits_models_and_credentials_supervisor_reads(
    server_factory: Any, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    server: ServerProcess = server_factory(with_users)
    text = server.config_file.read_text()
    assert "\nmodels:\n" in text
    server.config_file.write_text(text.replace("\nmodels:\n", f"\nmodels:\n  {COMMENT}\n", 1))
    base = server.http_url
    shots = tmp_path
    async with open_page(
        "about:blank", tmp_path / "chromium-profile", ("--window-size=1280,1400",)
    ) as page:
        # --- a custom model: type first, then the grouped settings
        await log_in(page, base, "admin", "/dashboard/models/new")
        await page.until("document.body.dataset.ready")
        assert await page.eval("document.getElementById('custom').hidden")
        await press(page, "#type-custom")
        await page.until("!!document.getElementById('f-vad.min_silence_duration')")
        groups = await page.eval(
            "[...document.querySelectorAll('#custom fieldset[data-group] > legend')]"
            ".map(l => l.textContent)"
        )
        assert groups == ["Interruption Handling", "VAD", "Audio Feedback", "Other",
                          "Turn Detection"]  # fmt: skip
        label = await page.eval(
            "document.querySelector('label[for=\"f-vad.min_silence_duration\"]').textContent"
            " + ' | ' + document.getElementById('help-vad.min_silence_duration').textContent"
            " + ' | ' + document.querySelector('[data-key=\"vad.min_silence_duration\"] .unit')"
            ".textContent"
        )
        assert label.startswith("Minimum silence duration | ") and label.endswith("| s")
        await set_value(page, "model-name", "support")
        await set_value(page, "f-vad.min_silence_duration", "0.8")
        await set_value(page, "f-vad.sample_rate", "8000")
        await set_value(page, "f-vad.activation_threshold", "1.5")  # out of 0..1
        status = await save(page)
        assert status.startswith("Not saved"), status
        beside = await page.until(
            "document.getElementById('err-vad.activation_threshold').textContent"
        )
        assert "1" in beside
        assert await page.eval(
            "document.getElementById('f-vad.activation_threshold').getAttribute('aria-invalid')"
        ) == "true"  # fmt: skip
        await page.screenshot(shots / "models-1-error-beside-field.png")
        assert "support" not in (file_of(server).get("models") or {})  # nothing written

        await set_value(page, "f-vad.activation_threshold", "")  # back to the default
        status = await save(page)
        assert status.startswith("Saved"), status
        assert await page.eval("location.pathname") == "/dashboard/models/support"
        saved = file_of(server)["models"]["support"]
        assert saved["type"] == "custom"
        assert saved["vad"] == {"min_silence_duration": 0.8, "sample_rate": 8000}
        assert COMMENT in server.config_file.read_text()

        # a shipped sound plays, served read-only under /dashboard/sounds
        await press(page, "button.play[data-sound=keyboard_typing]")
        await page.until("document.querySelector('button.play[data-sound=keyboard_typing]')"
                         ".dataset.played")  # fmt: skip
        served = await page.eval(
            "fetch('/dashboard/sounds/keyboard_typing.wav').then(r => r.status + ' ' +"
            " r.headers.get('Content-Type'))"
        )
        assert served == "200 audio/wav"
        await page.screenshot(shots / "models-2-custom-saved.png")

        # --- the list
        await page.goto(f"{base}/dashboard/models")
        row = await page.until("document.querySelector('tr[data-model=support]')?.innerText")
        assert "Custom" in row
        await page.screenshot(shots / "models-3-list.png")

        # --- a credential for LiveKit Inference: values write-only
        await page.goto(f"{base}/dashboard/settings/credentials")
        await page.until("document.body.dataset.ready")
        await press(page, "#add-credential")
        await set_value(page, "cred-name", "lk")
        await set_value(page, "cred-kind", "livekit")
        await set_value(page, "cred-value-api_key", "lk-api-key-1")
        await set_value(page, "cred-value-api_secret", LK_SECRET)
        await press(page, "#cred-save")
        row = await page.until("document.querySelector('tr[data-credential=lk]')?.innerText")
        assert "LiveKit Inference" in row and "********" in row
        assert file_of(server)["credentials"]["lk"] == {
            "api_key": "lk-api-key-1",
            "api_secret": LK_SECRET,
        }
        assert LK_SECRET not in await page.eval("document.documentElement.outerHTML")
        await page.screenshot(shots / "models-4-credentials.png")

        # --- a LiveKit Inference model with that credential
        await page.goto(f"{base}/dashboard/models/new")
        await page.until("document.body.dataset.ready")
        await press(page, "#type-livekit")
        await page.until("!!document.querySelector('#f-credential option[value=lk]')")
        await set_value(page, "model-name", "lk-voice")
        await set_value(page, "f-credential", "lk")
        await set_value(page, "f-stt", "deepgram/nova-3:en")
        await set_value(page, "f-llm", "openai/gpt-4o-mini")
        await set_value(page, "f-tts", "cartesia/sonic-2")
        await page.screenshot(shots / "models-5-livekit.png")
        status = await save(page)
        assert status.startswith("Saved"), status
        assert file_of(server)["models"]["lk-voice"] == {
            "type": "livekit_inference",
            "credential": "lk",
            "stt": "deepgram/nova-3:en",
            "llm": "openai/gpt-4o-mini",
            "tts": "cartesia/sonic-2",
        }
        await page.goto(f"{base}/dashboard/settings/credentials")
        row = await page.until("document.querySelector('tr[data-credential=lk]')?.innerText")
        assert "lk-voice" in row
        # replace one value (a blank one keeps the stored secret); delete is refused in use
        await press(page, "tr[data-credential=lk] button[aria-label='Replace values of lk']")
        await page.until("!!document.getElementById('cred-value-api_secret')")
        await set_value(page, "cred-value-api_key", "lk-api-key-2")
        await press(page, "#cred-save")
        await page.until("document.getElementById('status').textContent === 'Saved lk.'")
        assert file_of(server)["credentials"]["lk"] == {
            "api_key": "lk-api-key-2",
            "api_secret": LK_SECRET,
        }
        await page.eval("window.confirm = () => true; 1")
        await press(page, "tr[data-credential=lk] button[aria-label='Delete lk']")
        refused = await page.until(
            "(t => t.startsWith('Not deleted') && t)(document.getElementById('status').textContent)"
        )
        assert "models.lk-voice.credential" in refused
        assert "lk" in file_of(server)["credentials"]

        # --- 409: the file changed on disk after the page loaded it
        await page.goto(f"{base}/dashboard/models/support")
        await page.until("document.body.dataset.ready")
        assert await page.eval("document.getElementById('f-vad.min_silence_duration').value") \
            == "0.8"  # fmt: skip
        # a hand edit meanwhile, which adds a ${VAR} reference
        edited, count = re.subn(
            r"(?m)^( *)min_silence_duration: 0.8$",
            r'\g<0>\n\1prefix_padding_duration: "${VAD_PADDING:-0.4}"',
            server.config_file.read_text(),
        )
        assert count == 1
        server.config_file.write_text(edited)
        await set_value(page, "f-vad.min_speech_duration", "0.1")
        status = await save(page)
        assert status.startswith("Not saved"), status
        assert await page.eval("!document.getElementById('conflict').hidden")
        assert "min_speech_duration" not in file_of(server)["models"]["support"]["vad"]
        await page.screenshot(shots / "models-7-conflict.png")
        await press(page, "#reload")
        await page.until("document.body.dataset.ready")
        padding = "document.getElementById('f-vad.prefix_padding_duration')"
        shown = await page.until(f"{padding}.readOnly && {padding}.value")
        assert shown == "from environment variable VAD_PADDING"
        await set_value(page, "f-vad.min_speech_duration", "0.1")
        assert (await save(page)).startswith("Saved")
        assert file_of(server)["models"]["support"]["vad"]["min_speech_duration"] == 0.1
        assert '"${VAD_PADDING:-0.4}"' in server.config_file.read_text()  # kept as written
        await press(page, "[data-key='vad.prefix_padding_duration'] button.replace")
        await page.until(f"!{padding}.readOnly && {padding}.type === 'number'")
        await set_value(page, "f-vad.prefix_padding_duration", "0.3")
        assert (await save(page)).startswith("Saved")
        assert file_of(server)["models"]["support"]["vad"]["prefix_padding_duration"] == 0.3

        # a thinking sound of the operator's: a path beside the select
        own = server.config_file.parent / "my-typing.wav"
        own.write_bytes((Path(sipserver.__file__).parent / "sounds" / "keyboard_typing.wav")
                        .read_bytes())  # fmt: skip
        await set_value(page, "f-audio_feedback.thinking_sound", "__file__")
        assert not await page.eval(
            "document.getElementById('f-audio_feedback.thinking_sound-path').hidden"
        )
        await set_value(page, "f-audio_feedback.thinking_sound-path", "no-such.wav")
        assert (await save(page)).startswith("Not saved")
        beside = await page.until(
            "document.getElementById('err-audio_feedback.thinking_sound').textContent"
        )
        assert "no-such.wav" in beside
        await set_value(page, "f-audio_feedback.thinking_sound-path", "my-typing.wav")
        assert (await save(page)).startswith("Saved")
        saved = file_of(server)["models"]["support"]["audio_feedback"]
        assert saved == {"thinking_sound": "my-typing.wav"}
        await page.goto(f"{base}/dashboard/models/support")
        await page.until("document.body.dataset.ready")
        assert await page.eval(
            "document.getElementById('f-audio_feedback.thinking_sound-path').value"
        ) == "my-typing.wav"  # fmt: skip

        # --- a supervisor reads
        await page.eval(
            "document.querySelector('form[action=\"/dashboard/logout\"] button').click()"
        )
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "supervisor", "/dashboard/models/support")
        await page.until("document.body.dataset.ready")
        await page.until("!!document.getElementById('f-vad.min_silence_duration')")
        state = await page.eval(
            "({enabled: [...document.querySelectorAll('#model-form input, #model-form select')]"
            ".filter(c => !c.disabled).map(c => c.id),"
            " actions: document.getElementById('actions').hidden,"
            " note: !document.getElementById('read-only-note').hidden})"
        )
        assert state == {"enabled": [], "actions": True, "note": True}, state
        await page.screenshot(shots / "models-6-supervisor.png")
        await page.goto(f"{base}/dashboard/models")
        await page.until("!!document.querySelector('tr[data-model=support]')")
        assert await page.eval("document.getElementById('new-model').hidden")
        await page.goto(f"{base}/dashboard/settings/credentials")
        await page.until("document.body.dataset.ready")
        assert await page.eval("document.getElementById('add-credential').hidden")
        assert await page.eval("document.querySelectorAll('tr[data-credential] button').length") \
            == 0  # fmt: skip
        # The refused saves above (422, 409) are the only failed requests; no script errors.
        unexpected = [e for e in page.errors if not any(
            s in e for s in ("favicon.ico", "(Unprocessable Entity)", "(Conflict)"))]  # fmt: skip
        assert unexpected == [], page.errors
    print(f"screenshots {shots}")
    assert all((shots / f"models-{n}").stat().st_size > 1000 for n in (
        "1-error-beside-field.png", "2-custom-saved.png", "3-list.png", "4-credentials.png",
        "5-livekit.png", "6-supervisor.png", "7-conflict.png"))  # fmt: skip
