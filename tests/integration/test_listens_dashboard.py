"""The AI Listens dashboard in a real browser: headless Chromium driven over the Chrome
DevTools Protocol (tests/integration/cdp.py: aiohttp, no extra dependency).

A supervisor logs in, opens the agent card's menu, picks "AI Listens", and sees a forked call
appear and a suggestion arrive live; a user with the ``agent`` role is refused. Screenshots go
to the test's temporary directory. Skipped when chromium is not installed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess, free_port
from tests.integration.console_ui import log_in_as
from tests.integration.listens_client import ForkClient
from tests.integration.test_listens import (
    ENGINES,
    NUMBER,
    SECRET,
    listens_config,
    on_engine,
    password_of,
    start_on,
)
from tests.speech import HEARD_COST, espeak

pytestmark = pytest.mark.integration


async def log_in(page: Page, base: str, name: str, next_path: str = "/dashboard") -> None:
    await log_in_as(page, base, name, password_of(name), next_path)


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """The server on each engine (native: the fork is transcribed in a call worker)."""
    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), tmp_path / "data")
    proc = ServerProcess(on_engine(config, request.param), tmp_path)
    start_on(proc, request.param)
    yield proc
    proc.stop()


async def test_supervisor_sees_the_call_and_a_suggestion_live_agent_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    base = server.http_url
    question = espeak("How much does it cost?", tmp_path, rate=8000)
    async with (
        aiohttp.ClientSession() as http,
        open_page(
            "about:blank", tmp_path / "chromium-profile", ("--window-size=1280,800",)
        ) as page,
    ):
        await log_in(page, base, "supervisor")
        await page.eval("document.querySelector('[data-agent=copilot] summary').click(); true")
        assert await page.until(
            "getComputedStyle(document.querySelector("
            "'[data-agent=copilot] nav a[href$=listens]')).display !== 'none'"
        )
        await page.screenshot(tmp_path / "1-agents-menu.png")
        await page.eval(
            "document.querySelector('[data-agent=copilot] nav a[href$=listens]').click(); true"
        )
        await page.until("location.pathname === '/dashboard/agents/copilot/listens'")
        await page.until("document.getElementById('status').textContent.includes('No call')")

        ws = await http.ws_connect(f"{base}/listens/copilot/{SECRET}/stream")
        fork = ForkClient(ws)
        await fork.start({"caller": "+14155550123", "called": NUMBER, "callSid": "CA1"})
        try:
            listed = await page.until("document.querySelector('#calls button')?.textContent")
            assert NUMBER in listed
            await asyncio.sleep(0.5)
            fork.say("inbound", question)
            caller_line = await page.until(
                "document.querySelector('#transcript li.caller')?.textContent", timeout=30
            )
            suggestion = await page.until(
                "document.querySelector('#suggestions .suggestion')?.textContent", timeout=30
            )
            await page.screenshot(tmp_path / "2-listens-live.png")
        finally:
            await fork.stop()
        await page.until("document.getElementById('call-title').textContent.includes('ended')")
        await page.until("document.getElementById('status').textContent.includes('No call')")
        await page.screenshot(tmp_path / "3-call-ended.png")

        await page.eval(
            "document.querySelector('form[action=\"/dashboard/logout\"] button').click()"
        )
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "agent")
        agents_html = await page.eval("document.body.innerHTML")
        assert "not for your role" in agents_html
        await page.goto(f"{base}/dashboard/agents/copilot/listens")
        status = await page.until("document.getElementById('error-status')?.textContent")
        await page.screenshot(tmp_path / "4-agent-refused.png")
    print(f"caller line {caller_line!r}\nsuggestion {suggestion[:80]!r}...\nscreenshots {tmp_path}")
    assert HEARD_COST.search(caller_line.lower())
    assert "19 dollars" in suggestion and "pricing.md" in suggestion
    assert status == "403"
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("2-listens-live.png",))
