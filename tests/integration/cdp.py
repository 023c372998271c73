"""Headless Chromium driven over the Chrome DevTools Protocol (CDP) with aiohttp, for page tests.

No browser automation package: Chromium starts with ``--remote-debugging-port=0``, writes the
port it chose to ``DevToolsActivePort`` in its profile, and the test talks JSON over the page
target's websocket. Console errors, uncaught exceptions and failed loads are collected in
:attr:`Page.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
)


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or a ``chromium-browser``) on PATH, else None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page target: commands with :meth:`send`, JavaScript with :meth:`eval`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self.console: list[str] = []
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._on_event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed the DevTools socket"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params['type']}: {text}")
            if params["type"] in ("error", "assert"):
                self.errors.append(self.console[-1])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            exception = details.get("exception", {}).get("description", "")
            self.errors.append(f"uncaught: {details.get('text', '')} {exception}".strip())
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(f"{entry['source']} {entry['level']}: {entry['text']}")
            if entry["level"] == "error":
                self.errors.append(f"{self.console[-1]} ({entry.get('url', '')})")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one CDP command; its ``result``, or RuntimeError with the protocol's error."""
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its value, as JSON."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def until(self, expression: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expression`` every 100 ms until it is truthy; return its value.

        Raises:
            AssertionError: still falsy after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # a navigation may destroy the context
                value = await self.eval(expression)
                if value:
                    return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        """Navigate and wait until the new document has loaded."""
        await self.send("Page.navigate", url=url)
        await self.until(
            f"location.href.startsWith({json.dumps(url.split('?')[0])})"
            " && document.readyState === 'complete'"
        )

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture) in the middle of the element."""
        box = await self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def open_page(
    url: str, profile: Path, extra_flags: tuple[str, ...] = (), executable: str | None = None
) -> AsyncIterator[Page]:
    """Start headless Chromium with its own profile directory, load ``url``, yield its page."""
    executable = executable or chromium_path()
    assert executable is not None, "no chromium on PATH"
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile.parent / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [
            executable,
            *FLAGS,
            *extra_flags,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}, see {log.name}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"chromium wrote no DevToolsActivePort, see {log.name}")
        port = int(port_file.read_text().split("\n")[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            target = next(t for t in targets if t["type"] == "page")
            ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
            page = Page(ws)
            try:
                for domain in ("Runtime", "Log", "Page"):
                    await page.send(f"{domain}.enable")
                await page.send("Page.navigate", url=url)
                loaded = f"location.href === {json.dumps(url)} && document.readyState == 'complete'"
                for _ in range(200):
                    if await page.eval(loaded):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError(f"{url} did not load")
                yield page
            finally:
                await ws.close()
                page._reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
