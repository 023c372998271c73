"""Issue [2/7], "the dashboard login limit can be raced": 200 parallel wrong passwords from one
address while the real user logs in from another (127.0.0.2, also on loopback).

Before the fix every one of them was hashed (the limit was checked before the scrypt check and
recorded after it) and the real login waited behind them for 16 s. Now each attempt is counted
when it arrives and one address has at most two checks in flight: the rest get 429 at once,
without a hash (from the 11th attempt on, for good), and the real login waits for one hash at
most.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from sipserver.listens.passwords import hash_password
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

WRONG = 200
PASSWORD = "correct horse battery staple"
PER_SOURCE = 10  # server.login_limit.max_failures_per_source (the default)


def with_users(config: dict[str, Any]) -> None:
    config["users"] = [
        # The default scrypt cost: the check costs what it costs in production.
        {"name": "admin", "role": "admin", "password_hash": hash_password(PASSWORD)}
    ]


async def post_login(
    http: aiohttp.ClientSession, base: str, name: str, password: str
) -> tuple[int, float]:
    started = time.monotonic()
    async with http.post(
        f"{base}/dashboard/login",
        data={"name": name, "password": password},
        allow_redirects=False,
    ) as response:
        await response.read()
        ok = response.status == 303 and "sipserver_session" in response.cookies
        return (303 if ok else response.status), time.monotonic() - started


async def flood_and_log_in(base: str) -> tuple[list[int], int, float]:
    # One client at 127.0.0.1 with many connections at once, one client at 127.0.0.2.
    attacker = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
    user = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    async with attacker, user:
        flood = [
            asyncio.create_task(post_login(attacker, base, "admin", f"guess-{i}"))
            for i in range(WRONG)
        ]
        await asyncio.sleep(0.2)  # the flood is in full swing
        status, latency = await post_login(user, base, "admin", PASSWORD)
        results = await asyncio.gather(*flood)
    return [s for s, _ in results], status, latency


def test_parallel_wrong_logins_are_throttled_before_hashing(server_factory: Any) -> None:
    server: ServerProcess = server_factory(with_users)
    base = server.http_url
    statuses, login_status, latency = asyncio.run(flood_and_log_in(base))
    print(f"legitimate login from 127.0.0.2 during the flood: {latency * 1e3:.0f} ms")

    assert login_status == 303, f"the real user could not log in: {login_status}"
    # Generous (the target is < 1 s; the bug made it 16 s): speed is measured, not asserted.
    assert latency < 8.0
    hashed = statuses.count(401)
    assert 1 <= hashed <= PER_SOURCE, f"{hashed} wrong passwords were hashed"
    assert statuses.count(429) == WRONG - hashed, sorted(set(statuses))

    # The metrics say the same: few hashes, the rest throttled and counted as refusals.
    assert server.metric("sipserver_dashboard_logins_total", result="ok") == 1
    assert server.metric("sipserver_dashboard_logins_total", result="bad_credentials") == hashed
    throttled = server.metric("sipserver_dashboard_logins_total", result="throttled")
    assert throttled == WRONG - hashed
    refused = sum(
        server.metric("sipserver_refusals_total", ingress="login", reason=reason)
        for reason in ("per_source_limit", "per_source_concurrency")
    )
    assert refused == throttled
    assert server.get("/healthz")[0] == 200
    assert any(
        e.get("event") == "refused" and e.get("ingress") == "login" for e in server.log_events()
    )
