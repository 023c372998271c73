"""The AI Listens dashboard in a real browser: headless Chromium driven over the Chrome
DevTools Protocol (aiohttp websocket, no extra dependency).

A supervisor logs in, opens the agent card's menu, picks "AI Listens", and sees a forked call
appear and a suggestion arrive live; a user with the ``agent`` role is refused. Screenshots go
to the test's temporary directory. Skipped when ``/usr/bin/chromium`` is not installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import ServerProcess, free_port
from tests.integration.listens_client import ForkClient
from tests.integration.test_listens import NUMBER, SECRET, listens_config, password_of
from tests.integration.test_voice_calls import _speech

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page:
    """One browser tab over CDP: navigate, evaluate JavaScript, wait, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def js(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def until(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # a navigation may destroy the context
                value = await self.js(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1280,800",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1).read()
                break
            time.sleep(0.2)
        else:
            pytest.fail("chromium did not open its DevTools port")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.asynccontextmanager
async def open_page(http: aiohttp.ClientSession, port: int) -> AsyncIterator[Page]:
    targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
    target = next(t for t in targets if t["type"] == "page")
    page = Page(await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
    await page.send("Page.enable")
    try:
        yield page
    finally:
        await page.close()


async def log_in(page: Page, base: str, name: str, next_path: str = "/dashboard") -> None:
    await page.goto(f"{base}/dashboard/login?next={next_path}")
    await page.js(
        f"document.getElementById('name').value = {json.dumps(name)};"
        f"document.getElementById('password').value = {json.dumps(password_of(name))};"
        "document.getElementById('login').click(); true"
    )
    try:
        await page.until(f"location.pathname === {json.dumps(next_path)}")
    except AssertionError:
        shown = await page.js("location.href + ' ' + document.body.innerText")
        raise AssertionError(f"login as {name} failed: {shown}") from None
    await page.until("document.readyState === 'complete'")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = listens_config(free_port(), free_port(socket.SOCK_STREAM), tmp_path / "data")
    proc = ServerProcess(config, tmp_path)
    proc.start()
    yield proc
    proc.stop()


async def test_supervisor_sees_the_call_and_a_suggestion_live_agent_is_refused(
    server: ServerProcess, chromium: int, tmp_path: Path
) -> None:
    base = server.http_url
    question = _speech("How much does it cost?", tmp_path / "q.wav", tmp_path)
    async with aiohttp.ClientSession() as http, open_page(http, chromium) as page:
        await log_in(page, base, "supervisor")
        await page.js("document.querySelector('[data-agent=copilot] summary').click(); true")
        assert await page.until(
            "getComputedStyle(document.querySelector('[data-agent=copilot] nav a')).display"
            " !== 'none'"
        )
        await page.screenshot(tmp_path / "1-agents-menu.png")
        await page.js("document.querySelector('[data-agent=copilot] nav a').click(); true")
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

        await page.js("document.querySelector('form[action=\"/dashboard/logout\"] button').click()")
        await page.until("location.pathname === '/dashboard/login'")
        await log_in(page, base, "agent")
        agents_html = await page.js("document.body.innerHTML")
        assert "not for your role" in agents_html
        await page.goto(f"{base}/dashboard/agents/copilot/listens")
        status = await page.until("document.getElementById('error-status')?.textContent")
        await page.screenshot(tmp_path / "4-agent-refused.png")
    print(f"caller line {caller_line!r}\nsuggestion {suggestion[:80]!r}...\nscreenshots {tmp_path}")
    assert "cost" in caller_line.lower()
    assert "19 dollars" in suggestion and "pricing.md" in suggestion
    assert status == "403"
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("2-listens-live.png",))
