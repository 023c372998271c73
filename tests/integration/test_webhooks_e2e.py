"""End-of-call webhooks from a real server to a real receiver (an aiohttp app on loopback that
checks every request's signature with :func:`sipserver.records.webhooks.verify`).

The calls are Twilio Media Streams calls (tests/integration/media_stream_client.py) to an echo
test line on native call workers: no models, so the server starts in seconds. One test has the
receiver fail twice before it takes the delivery; the other stops the server while a delivery
waits for a receiver that is down, and a new server process on the same data directory
delivers it once the receiver is up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sipserver.records.webhooks import verify
from tests.integration.conftest import ServerProcess, base_config, free_port
from tests.integration.media_stream_client import MediaStreamClient

pytestmark = pytest.mark.integration

HOOK_SECRET = "hook-secret-0123456789abcdef"
WS_SECRET = "echo-line-secret-0123456789"


class Receiver:
    """The webhook receiver: answers 500 to the first ``fail_first`` attempts of each delivery,
    then 204; keeps what it accepted."""

    def __init__(self, port: int, fail_first: int = 0) -> None:
        self.port = port
        self.fail_first = fail_first
        self.attempts: Counter[str] = Counter()
        self.accepted: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.forged = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(
            HOOK_SECRET,
            body,
            request.headers.get("X-Sipserver-Timestamp"),
            request.headers.get("X-Sipserver-Signature"),
            now=time.time(),
        )
        if not ok:
            self.forged += 1
            return web.Response(status=401)
        delivery = request.headers["X-Sipserver-Delivery"]
        self.attempts[delivery] += 1
        if self.attempts[delivery] <= self.fail_first:
            return web.Response(status=500)
        self.accepted.append((dict(request.headers), json.loads(body)))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_accepted(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(self.accepted) >= count, (self.attempts, self.accepted)


def _server(workdir: Path, hook_port: int) -> ServerProcess:
    config = base_config(free_port(), free_port(socket.SOCK_STREAM), workdir / "data")
    config["server"]["media"] = {"engine": "native"}
    config["server"]["workers"] = 1
    config["server"]["webhooks"] = {
        "call_ended": {"url": f"http://127.0.0.1:{hook_port}/hooks", "secret": HOOK_SECRET},
        "initial_backoff": 0.3,
        "max_backoff": 1.0,
    }
    config["agents"].append(
        {
            "slug": "echo",
            "realtime": {"enabled": False},  # the echo test line
            "websocket": {"enabled": True, "secret": WS_SECRET},
        }
    )
    return ServerProcess(config, workdir)


async def _call(server: ServerProcess, sid: str) -> None:
    """A short Twilio Media Streams call to the echo line, hung up by the caller."""
    base = server.http_url.replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base}/ws/echo/{WS_SECRET}")
        client = MediaStreamClient(ws, sid=sid)
        await client.start({"caller": "+14155550123", "called": "+15005550100"})
        await asyncio.sleep(1.0)
        await client.stop()


async def test_a_call_ended_webhook_is_signed_and_retried(tmp_path: Path) -> None:
    hook_port = free_port(socket.SOCK_STREAM)
    receiver = Receiver(hook_port, fail_first=2)
    await receiver.start()
    server = _server(tmp_path, hook_port)
    await asyncio.to_thread(server.start)
    try:
        await _call(server, "MZhooks00000000000000000000000001")
        await receiver.wait_accepted(1)
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.stop()
    headers, record = receiver.accepted[0]
    assert receiver.forged == 0
    assert receiver.attempts[headers["X-Sipserver-Delivery"]] == 3  # two 500s, then taken
    assert headers["X-Sipserver-Event"] == "call_ended"
    assert record["agent"] == "echo" and record["ingress"] == "twilio"
    assert record["ended_by"] == "caller" and record["ended_at"] is not None
    assert record["call_sid"], record


async def test_a_pending_webhook_survives_a_server_restart(tmp_path: Path) -> None:
    hook_port = free_port(socket.SOCK_STREAM)  # nobody listens there yet: every attempt fails
    server = _server(tmp_path, hook_port)
    await asyncio.to_thread(server.start)
    try:
        await _call(server, "MZhooks00000000000000000000000002")
        deadline = time.monotonic() + 30
        retried = 0.0
        while time.monotonic() < deadline:
            retried = server.metric(
                "sipserver_webhook_deliveries_total", kind="call_ended", outcome="retry"
            )
            if retried >= 1:
                break
            await asyncio.sleep(0.2)
        assert retried >= 1  # tried, failed, waiting for its next attempt
    finally:
        await asyncio.to_thread(server.stop)
    receiver = Receiver(hook_port)
    await receiver.start()
    again = ServerProcess(server.config, tmp_path)  # a new process on the same data_dir
    await asyncio.to_thread(again.start)
    try:
        await receiver.wait_accepted(1)
    finally:
        await asyncio.to_thread(again.stop)
        await receiver.stop()
    headers, record = receiver.accepted[0]
    assert receiver.forged == 0 and headers["X-Sipserver-Event"] == "call_ended"
    assert record["agent"] == "echo" and record["ended_by"] == "caller"
