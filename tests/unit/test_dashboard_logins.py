"""The dashboard's login handler in process (aiohttp's test server, a real HTTP client): the
limiter's order, the bounded hash queue and the refusals it counts. The parallel case over real
sockets from two addresses is tests/stress/test_logins.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipserver.config import parse_config
from sipserver.listens.dashboard import Dashboard
from sipserver.listens.monitor import ListensHub
from sipserver.listens.passwords import hash_password
from sipserver.observability import Metrics

PASSWORD = "right-password-1"


def dashboard(**limits: Any) -> Dashboard:
    raw = {
        "server": {"login_limit": limits},
        "users": [
            {"name": "ann", "role": "admin", "password_hash": hash_password(PASSWORD, n=1024)}
        ],
    }
    config = parse_config(yaml.safe_dump(raw), env={})
    return Dashboard(lambda: config, ListensHub(), Metrics())


def sample(board: Dashboard, name: str, **labels: str) -> float:
    return board.metrics.registry.get_sample_value(name, labels) or 0.0


async def client_for(board: Dashboard) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    board.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def login(client: TestClient[web.Request, web.Application], password: str) -> int:
    response = await client.post(
        "/dashboard/login", data={"name": "ann", "password": password}, allow_redirects=False
    )
    await response.read()
    return response.status


async def test_the_eleventh_failure_is_refused_without_a_hash() -> None:
    board = dashboard()
    client = await client_for(board)
    try:
        assert [await login(client, f"wrong-{i}") for i in range(10)] == [401] * 10
        checks = 0
        real_check = board._check

        def counting(password: str, encoded: str | None) -> bool:
            nonlocal checks
            checks += 1
            return real_check(password, encoded)

        board._check = counting  # type: ignore[method-assign]
        assert await login(client, PASSWORD) == 429  # even the right password: the address waits
        assert checks == 0
        assert sample(board, "sipserver_dashboard_logins_total", result="throttled") == 1
        refused = {"ingress": "login", "reason": "per_source_limit"}
        assert sample(board, "sipserver_refusals_total", **refused) == 1
    finally:
        await client.close()


async def test_a_full_hash_queue_answers_503_and_gives_the_attempt_back() -> None:
    board = dashboard(concurrent_checks=1, max_waiting=0)
    release = threading.Event()
    real_check = board._check

    def slow(password: str, encoded: str | None) -> bool:
        release.wait(10)
        return real_check(password, encoded)

    board._check = slow  # type: ignore[method-assign]
    client = await client_for(board)
    try:
        first = asyncio.create_task(login(client, "wrong"))
        while not board._waiting:
            await asyncio.sleep(0.01)
        response = await client.post(
            "/dashboard/login", data={"name": "ann", "password": "x"}, allow_redirects=False
        )
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        release.set()
        assert await first == 401
        assert sample(board, "sipserver_dashboard_logins_total", result="busy") == 1
        assert sample(board, "sipserver_refusals_total", ingress="login", reason="busy") == 1
        # Only the hashed attempt counts against the address.
        now = asyncio.get_running_loop().time()
        assert board.limiter._count(board.limiter._by_source, "127.0.0.1", now) == 1
        assert await login(client, PASSWORD) == 303
    finally:
        release.set()
        await client.close()
