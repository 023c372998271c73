"""The browser demo page in a real (headless) Chromium, with a fake microphone that asks a question.

Chromium's fake capture device plays a WAV file (espeak-ng: "How much does it cost?" after 6 s of
silence, so the greeting plays first) into getUserMedia. The test clicks "Start call" and reads
the page: the websocket opens, the agent's state changes, the caller's words and the agent's
answer from the knowledge base appear, the agent's audio arrives and plays (marks come back to
the server). Any console error or uncaught exception in the page fails the test; on failure a
screenshot and the page's console go to the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess
from tests.integration.test_voice_calls import GREETING, KB
from tests.speech import espeak, write_wav

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="chromium is not installed (apt-get install chromium; scripts/test does it)",
    ),
]

SECRET = "demo-page-secret-0123456789"
ANSWER = re.compile(r"dollars?|\$\d|plans?|starter|business", re.I)

# What the page shows, read in one go.
PROBE = """(() => {
  const call = window.sipserverDemo;
  return {
    status: document.getElementById("status").textContent,
    state: document.getElementById("state").dataset.state,
    stopEnabled: !document.getElementById("stop").disabled,
    ws: call ? call.ws.readyState : null,
    received: call ? call.received : 0,
    played: call ? call.played : 0,
    lines: [...document.querySelectorAll("#transcript p")].map((p) => [p.className, p.textContent]),
  };
})()"""


def _demo_agent(config: dict[str, Any]) -> None:
    config["server"]["demo_page"] = True
    config["agents"].append(
        {
            "slug": "voice",
            "name": "Lakeside voice",
            "greeting": GREETING,
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": True, "model": "m"},
            "websocket": {"enabled": True, "secret": SECRET},
        }
    )


def _microphone(path: Path, tmp: Path) -> Path:
    """16 kHz 16-bit mono PCM WAV: 6 s of silence, the question, 4 s of silence."""
    question = espeak("How much does it cost?", tmp, rate=16000)
    return write_wav(path, np.pad(question, (6 * 16000, 4 * 16000)), 16000)


def _answered(lines: list[list[str]]) -> bool:
    """A final caller line about the cost, then an agent line from the pricing page."""
    asked = next(
        (i for i, (kind, text) in enumerate(lines) if kind == "caller" and "cost" in text.lower()),
        None,
    )
    return asked is not None and any(
        kind == "agent" and ANSWER.search(text) for kind, text in lines[asked + 1 :]
    )


async def _watch(page: Page, done: Any, timeout: float, seen: dict[str, Any]) -> dict[str, Any]:
    """Probe the page every 100 ms until ``done(view)``; collects states and socket states seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        view: dict[str, Any] = await page.eval(PROBE)
        seen.setdefault("states", []).append(view["state"])
        seen.setdefault("ws", set()).add(view["ws"])
        if done(view) or loop.time() > deadline:
            return view
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_demo_page_talks_to_the_agent_in_chromium(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory(_demo_agent)
    mic = _microphone(tmp_path / "microphone.wav", tmp_path)
    flags = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop",
    )
    url = f"{server.http_url}/demo/voice"
    seen: dict[str, Any] = {}
    async with open_page(url, tmp_path / "chromium-profile", flags) as page:
        try:
            assert await page.eval("document.title") == "Talk to Lakeside voice - sipserver demo"
            assert await page.eval("document.getElementById('state').textContent") == "idle"
            await page.click("#start")
            view = await _watch(page, lambda v: _answered(v["lines"]), 40.0, seen)
            assert 1 in seen["ws"], f"the websocket never opened: {view}"
            assert view["status"] == "Connected: speak to the agent.", view
            assert _answered(view["lines"]), f"no question and answer on the page: {view}"
            states = seen["states"]
            assert {"listening", "speaking"} <= set(states), states
            assert "user_speaking" in states or "thinking" in states, states
            assert view["received"] >= 16000 * 3, view  # >= 3 s of the agent's audio
            assert view["played"] > 0, view  # the playback worklet runs
            await page.click("#stop")
            view = await _watch(page, lambda v: v["status"] == "You hung up.", 5.0, seen)
            assert view["status"] == "You hung up.", view
            # One paragraph per turn: the greeting, the question, the whole answer.
            assert [kind for kind, _ in view["lines"]] == ["agent", "caller", "agent"], view
            assert view["state"] == "idle" and not view["stopEnabled"], view
            assert page.errors == [], page.errors
        except BaseException:
            await page.screenshot(tmp_path / "demo-page.png")
            (tmp_path / "console.txt").write_text("\n".join(page.console))
            print(f"screenshot and console in {tmp_path}; states seen: {seen.get('states')}")
            raise
    print("page:", json.dumps(view["lines"]))
    log = server.log_path.read_text()
    said = [json.loads(x) for x in log.splitlines() if '"caller_said"' in x]
    assert any("cost" in entry["text"].lower() for entry in said), said
    assert '"ws_call_ended"' in log
    assert server.metric("sipserver_ws_messages_total", direction="in", type="start") == 1
    assert server.metric("sipserver_ws_messages_total", direction="in", type="media") > 100
    assert server.metric("sipserver_ws_messages_total", direction="in", type="mark") >= 1
    assert server.metric("sipserver_ws_messages_total", direction="out", type="sipserver") >= 3
    assert server.metric("sipserver_ws_calls_active") == 0
