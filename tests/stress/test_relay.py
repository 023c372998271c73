"""Websocket calls relayed to call workers (server.media.engine: native) under a worker crash:
20 Twilio-protocol calls over two call workers, one worker killed with SIGKILL. Only its calls
close (1011 "call worker lost"); the others keep echoing, end normally, and a new call after
the crash reaches a worker again.

Real peers: the sipserver process, its call worker processes, and the Twilio Media Streams
client of tests/integration/media_stream_client.py. The agent is the echo test line (no models).
"""

from __future__ import annotations

import asyncio
import os
from signal import SIGKILL
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, until
from tests.integration.media_stream_client import MediaStreamClient

pytestmark = pytest.mark.integration

SECRET = "relay-ws-secret-0123456789"
CALLS = 20


def _native_echo(config: dict[str, Any]) -> None:
    config["agents"][0]["websocket"] = {"enabled": True, "secret": SECRET}
    config["server"]["media"] = {"engine": "native"}
    config["server"]["workers"] = 2
    config["server"]["media_streams"] = {"stall_timeout": 5}


def _noise(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 4000).astype(np.int16)


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


async def test_killing_a_call_worker_ends_only_its_websocket_calls(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_native_echo)
    url = f"{server.http_url}/ws/alice/{SECRET}"

    def workers_ready() -> int:
        return sum(w["ready"] for w in server.get("/status")[1]["media_workers"])

    assert await until(lambda: workers_ready() == 2, 30.0), "the second call worker is not ready"
    async with aiohttp.ClientSession() as http:
        clients = [
            MediaStreamClient(await http.ws_connect(url), sid=f"MZrelay{i:02d}")
            for i in range(CALLS)
        ]
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.sleep(1.0)
        _, status = server.get("/status")
        assert status["websocket_calls_in_workers"] == CALLS
        loads = {w["pid"]: w["calls"] for w in status["media_workers"]}
        assert len(loads) == 2 and sum(loads.values()) == CALLS
        victim = max(loads, key=lambda pid: loads[pid])
        lost_expected = loads[victim]
        assert 0 < lost_expected < CALLS  # both workers hold calls (least loaded first)
        os.kill(victim, SIGKILL)

        def closed() -> int:
            return sum(c.closed.is_set() for c in clients)

        assert await until(lambda: closed() >= lost_expected, 10.0), closed()
        await asyncio.sleep(0.5)  # and no other call follows
        lost = [c for c in clients if c.closed.is_set()]
        alive = [c for c in clients if not c.closed.is_set()]
        assert len(lost) == lost_expected
        for c in lost:
            assert (c.close_code, c.close_reason) == (1011, "call worker lost")

        # The survivors still reach their sessions: what they say comes back (the echo).
        loop = asyncio.get_running_loop()
        said_at = {id(c): loop.time() - c.t0 for c in alive}
        for i, c in enumerate(alive):
            c.say(_noise(0.6, c.rate, seed=i))
        await asyncio.sleep(1.5)
        for c in alive:
            t = said_at[id(c)]
            assert _rms(c.audio(t + 0.1, t + 1.2)) > 1000, "no echo after the other worker died"

        # The pool replaces the dead worker; a new call is relayed again.
        fresh = MediaStreamClient(await http.ws_connect(url), sid="MZrelayfresh")
        await fresh.start()
        await asyncio.sleep(1.0)
        assert not fresh.closed.is_set()
        await asyncio.gather(*(c.stop() for c in [*alive, fresh]))
        for c in lost:
            await c.aclose()
    for c in [*alive, fresh]:
        assert (c.close_code, c.close_reason) == (1000, "stream stopped")
    assert server.metric("sipserver_ws_closes_total", reason="worker_lost") == lost_expected
    assert server.metric("sipserver_ws_calls_active") == 0
    _, status = server.get("/status")
    assert status["websocket_calls_in_workers"] == 0
