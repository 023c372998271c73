"""The media-stream gateway against a running server, with a real Twilio-protocol client.

Calls reach the echo test line (an agent without a realtime model): a chime, then the caller's
audio 200 ms later, DTMF # hangs up. The voice agent path is in test_websocket_voice.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from signal import SIGKILL
from typing import Any

import aiohttp
import numpy as np
import pytest

from sipserver.config import parse_config
from sipserver.server import Server
from tests.integration.conftest import ServerProcess, free_port
from tests.integration.media_stream_client import MediaStreamClient

pytestmark = pytest.mark.integration

SECRET = "echo-ws-secret-0123456789"
FENCED_SECRET = "fenced-ws-secret-0123456789"


def _echo_ws(config: dict[str, Any]) -> None:
    config["agents"][0]["websocket"] = {"enabled": True, "secret": SECRET}
    config["agents"][1]["websocket"] = {"enabled": False, "secret": FENCED_SECRET}
    config["server"]["media_streams"] = {"stall_timeout": 1.5, "max_message_bytes": 8192}
    config["server"]["demo_page"] = True


@pytest.fixture(params=["pjsua2", "native"])
def echo_server(server_factory: Any, request: pytest.FixtureRequest) -> ServerProcess:
    """The echo line; with the native engine its sessions run in a call worker (relayed)."""
    engine = request.param

    def mutate(config: dict[str, Any]) -> None:
        _echo_ws(config)
        config["server"]["media"] = {"engine": engine}

    server: ServerProcess = server_factory(mutate)
    return server


def _in_workers(server: ServerProcess) -> int:
    status, body = server.get("/status")
    assert status == 200
    count: int = body["websocket_calls_in_workers"]
    return count


def _noise(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * rate))
    kernel = np.ones(4) / 4  # a little low-pass: speech-like band
    return (np.convolve(white, kernel, mode="same") * 4000).astype(np.int16)


async def _connect(http: aiohttp.ClientSession, server: ServerProcess, **kw: Any) -> Any:
    return await http.ws_connect(f"{server.http_url}/ws/alice/{SECRET}", **kw)


@pytest.mark.parametrize("l16", [False, True], ids=["mulaw-8k", "l16-16k"])
async def test_echo_line_returns_the_callers_audio(echo_server: ServerProcess, l16: bool) -> None:
    async with aiohttp.ClientSession() as http:
        client = MediaStreamClient(await _connect(http, echo_server), l16=l16)
        await client.start()
        rate = client.rate
        signal = _noise(2.0, rate)
        await asyncio.sleep(1.0)  # the chime plays first
        native = echo_server.config["server"]["media"]["engine"] == "native"
        assert _in_workers(echo_server) == (1 if native else 0)
        sent_at = asyncio.get_running_loop().time() - client.t0
        client.say(signal)
        await client.idle()
        await asyncio.sleep(1.0)
        await client.stop()
    assert client.close_code == 1000 and client.close_reason == "stream stopped"
    got = client.audio(sent_at - 0.5).astype(np.float64)
    ref = signal.astype(np.float64)
    corr = np.correlate(got, ref, mode="valid")
    lag = int(np.argmax(corr))
    window = got[lag : lag + ref.size]
    score = corr[lag] / (np.linalg.norm(ref) * np.linalg.norm(window) + 1e-9)
    delay = (lag / rate) - 0.5
    print(f"echo correlation {score:.3f}, delay {delay * 1000:.0f} ms")
    assert score > (0.95 if l16 else 0.9)
    assert 0.1 < delay < 0.6  # 200 ms echo + jitter buffer - lead, plus scheduling
    assert client.marks and client.marks[0].startswith("t")


async def test_dtmf_hash_hangs_up_and_metrics_follow(echo_server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        client = MediaStreamClient(await _connect(http, echo_server))
        await client.start()
        await asyncio.sleep(0.5)
        assert echo_server.metric("sipserver_ws_calls_active") == 1
        await client.ws.send_str(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}}))
        await asyncio.wait_for(client.closed.wait(), 5)
        await client.aclose()
    assert client.close_code == 1000
    assert client.close_reason == "call ended: dtmf"
    assert "tend" in client.marks  # the last mark: the audio sent played out before closing
    await asyncio.sleep(0.2)
    assert echo_server.metric("sipserver_ws_calls_active") == 0
    assert echo_server.metric("sipserver_ws_closes_total", reason="hangup") == 1
    assert echo_server.metric("sipserver_ws_messages_total", direction="in", type="dtmf") == 1


async def test_a_lost_call_worker_closes_its_websocket_calls_with_1011(
    server_factory: Any,
) -> None:
    def mutate(config: dict[str, Any]) -> None:
        _echo_ws(config)
        config["server"]["media"] = {"engine": "native"}

    server: ServerProcess = server_factory(mutate)
    async with aiohttp.ClientSession() as http:
        client = MediaStreamClient(await _connect(http, server))
        await client.start()
        await asyncio.sleep(0.5)
        assert _in_workers(server) == 1
        _, status = server.get("/status")
        (worker,) = [w for w in status["media_workers"] if w["calls"] == 1]
        os.kill(worker["pid"], SIGKILL)
        await asyncio.wait_for(client.closed.wait(), 10)
        await client.aclose()
    assert client.close_code == 1011
    assert client.close_reason == "call worker lost"
    assert server.metric("sipserver_ws_closes_total", reason="worker_lost") == 1
    assert _in_workers(server) == 0


async def test_a_call_no_call_worker_has_room_for_is_closed_1013_and_counted(
    server_factory: Any,
) -> None:
    """One call worker of one call: a second stream, admitted at the door (server.max_calls 4),
    finds every worker full at its ``start``: 1013 "try again later" (RFC 6455 §7.4.1), not
    1011, counted as a websocket refusal; the first call goes on."""

    def mutate(config: dict[str, Any]) -> None:
        _echo_ws(config)
        config["server"]["workers"] = 1
        config["server"]["max_calls"] = 4
        config["server"]["media"] = {"engine": "native", "calls_per_worker": 1}

    server: ServerProcess = server_factory(mutate)
    async with aiohttp.ClientSession() as http:
        first = MediaStreamClient(await _connect(http, server))
        await first.start()
        await asyncio.sleep(0.5)
        assert _in_workers(server) == 1
        second = MediaStreamClient(await _connect(http, server), sid="MZ" + "2" * 32)
        await second.start()
        await asyncio.wait_for(second.closed.wait(), 10)
        await second.aclose()
        assert not first.closed.is_set()
        assert _in_workers(server) == 1
        await first.stop()
    assert (second.close_code, second.close_reason) == (1013, "call workers full")
    assert (first.close_code, first.close_reason) == (1000, "stream stopped")
    refusals = server.metric("sipserver_refusals_total", ingress="websocket", reason="workers_full")
    assert refusals == 1
    assert server.metric("sipserver_ws_closes_total", reason="workers_full") == 1


async def test_403_and_404_say_nothing_about_the_agent(echo_server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for path, status in (
            (f"/ws/alice/{SECRET}-wrong", 403),
            (f"/ws/nobody/{SECRET}", 403),
            (f"/ws/fenced/{FENCED_SECRET}", 404),
            ("/demo/nobody", 404),
        ):
            async with http.get(echo_server.http_url + path) as resp:
                assert resp.status == status, path
        async with http.get(f"{echo_server.http_url}/demo/alice") as resp:
            page = await resp.text()
            assert resp.status == 200 and f"/ws/alice/{SECRET}" in page
    assert echo_server.metric("sipserver_ws_rejected_total", status="403") == 2


async def test_bad_messages_close_only_their_socket(echo_server: ServerProcess) -> None:
    cases = [
        ("{not json", 1007, "invalid JSON"),
        ('{"event":"media","media":{"payload":"%%%"}}', 1007, "invalid base64 in media.payload"),
        ("x" * 9000, 1009, "message too big (9000 > 8192 bytes)"),
        (b"\x00\x01", 1003, "binary messages are not supported"),
    ]
    async with aiohttp.ClientSession() as http:
        keeper = MediaStreamClient(await _connect(http, echo_server), sid="MZkeeper")
        await keeper.start()
        for text, code, reason in cases:
            bad = MediaStreamClient(await _connect(http, echo_server), sid="MZbad")
            await bad.start(pump=False)
            await bad.ws.send_str('{"event":"wobble"}')  # unknown: ignored
            if isinstance(text, bytes):
                await bad.ws.send_bytes(text)
            else:
                await bad.ws.send_str(text)
            await asyncio.wait_for(bad.closed.wait(), 5)
            await bad.aclose()
            assert bad.close_code == code, (text[:20], bad.close_code)
            assert bad.close_reason == reason
        received_before = len(keeper.frames)
        await asyncio.sleep(0.5)
        assert not keeper.ws.closed and len(keeper.frames) >= received_before + 20
        await keeper.stop()
    assert echo_server.metric("sipserver_ws_closes_total", reason="invalid_json") == 1
    assert echo_server.metric("sipserver_ws_closes_total", reason="bad_base64") == 1
    assert echo_server.metric("sipserver_ws_closes_total", reason="too_big") == 1
    assert echo_server.metric("sipserver_ws_messages_total", direction="in", type="unknown") == 4


async def test_a_stalled_socket_ends_its_own_call(echo_server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        keeper = MediaStreamClient(await _connect(http, echo_server), sid="MZkeeper")
        await keeper.start()
        stalled = MediaStreamClient(await _connect(http, echo_server), sid="MZstalled")
        await stalled.start(pump=False)  # sends nothing after start
        await asyncio.wait_for(stalled.closed.wait(), 5)
        assert stalled.close_code == 1001 and "stalled" in stalled.close_reason
        assert not keeper.ws.closed
        await stalled.aclose()
        await keeper.stop()
    assert echo_server.metric("sipserver_ws_closes_total", reason="stalled") == 1


@pytest.mark.parametrize("engine", ["pjsua2", "native"])
async def test_many_calls_leave_no_tasks_or_calls_behind(tmp_path: Any, engine: str) -> None:
    """In process: after 40 calls (ended every way) the task count is back to its baseline;
    native: the sessions ran in a call worker, and no relayed call is left on either side."""
    http_port, sip_port = free_port(socket.SOCK_STREAM), free_port()
    config = parse_config(
        json.dumps(
            {
                "server": {
                    "http": f"127.0.0.1:{http_port}",
                    "store": "memory",
                    "data_dir": str(tmp_path),
                    "sip": {"udp": [f"127.0.0.1:{sip_port}"], "tcp": []},
                    "media_streams": {"stall_timeout": 0.5},
                    "media": {"engine": engine},
                    "workers": 1,
                },
                "agents": [{"slug": "alice", "websocket": {"enabled": True, "secret": SECRET}}],
            }
        )
    )
    server = Server(config)
    await server.start()
    url = f"http://127.0.0.1:{http_port}/ws/alice/{SECRET}"
    try:
        if engine == "native":
            async with asyncio.timeout(60):
                while not server.readiness_report().ready:
                    await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> None:
                client = MediaStreamClient(await http.ws_connect(url), sid=f"MZ{i}")
                await client.start()
                await asyncio.sleep(0.1 + (i % 3) * 0.05)
                assert (len(server.relayed) > 0) == (engine == "native")
                if i % 4 == 0:
                    await client.stop()
                elif i % 4 == 1:
                    await client.ws.send_str("{broken")
                    await asyncio.wait_for(client.closed.wait(), 5)
                    await client.aclose()
                elif i % 4 == 2:
                    await client.aclose()  # drop the socket without stop
                else:
                    await client.ws.send_str('{"event":"dtmf","dtmf":{"digit":"#"}}')
                    await asyncio.wait_for(client.closed.wait(), 5)
                    await client.aclose()

            await one(-1)  # warm-up: lazily created objects
            await asyncio.sleep(0.3)
            gc.collect()
            baseline = len(asyncio.all_tasks())
            for batch in range(4):
                await asyncio.gather(*(one(batch * 10 + i) for i in range(10)))
            for _ in range(50):
                if not server.gateway.calls and len(asyncio.all_tasks()) <= baseline:
                    break
                await asyncio.sleep(0.1)
        assert not server.gateway.calls
        assert len(asyncio.all_tasks()) <= baseline, [t.get_name() for t in asyncio.all_tasks()]
        assert len(server.relayed) == 0
        if engine == "native":
            assert server.pool is not None
            (worker,) = server.pool.workers
            assert worker.load == 0
            relayed = server.metrics.render().decode()
            assert 'sipserver_refusals_total{ingress="websocket"' not in relayed
        metrics = server.metrics.render().decode()
        assert "sipserver_ws_calls_active 0.0" in metrics
        gc.collect()
        from sipserver.gateway.websocket import StreamCall

        assert not [o for o in gc.get_objects() if isinstance(o, StreamCall)]
    finally:
        await server.stop()
