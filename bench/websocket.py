"""Media-stream gateway load: N concurrent Twilio-protocol streams at real-time pace.

A sipserver subprocess serves an echo-line agent (the gateway alone: jitter buffer, 20 ms tick,
mu-law, JSON and base64 both ways, no models). This process opens N websocket streams to it, each
sending a 20 ms mu-law chunk every 20 ms and echoing marks, for ``--seconds``. Printed per N: the
server's CPU (share of one core, and per stream), its RSS growth per stream, the server's late
ticks and jitter-buffer underruns (from /metrics), and on the client side the share of 20 ms
server frames that arrived more than 60 ms after the previous one. The client load generator
runs in this process and costs CPU too (printed): on a small machine the two compete.

Usage::

    python bench/websocket.py --streams 50 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import yaml

from bench._common import cpu_seconds, free_port, process_tree

SECRET = "bench-ws-secret-0123456789"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _metric(url: str, name: str) -> float:
    """Sum of a metric's samples, from the admin listener at ``url``."""
    body = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server, its public URL and its admin URL (/metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = int(s.getsockname()[1])
    sip_port, admin_port = free_port(), free_port(socket.SOCK_STREAM)
    config = {
        "server": {
            "http": f"127.0.0.1:{http_port}",
            "admin_http": f"127.0.0.1:{admin_port}",
            "public_url": f"http://127.0.0.1:{http_port}",
            "store": "memory",
            "data_dir": str(workdir),
            "sip": {"udp": [f"127.0.0.1:{sip_port}"], "tcp": []},
        },
        "agents": [{"slug": "echo", "websocket": {"enabled": True, "secret": SECRET}}],
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipserver", "run", "-c", str(path), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http_port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).read()
            return proc, url, f"http://127.0.0.1:{admin_port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("sipserver did not start")


async def _stream(http: aiohttp.ClientSession, url: str, i: int, seconds: float) -> tuple[int, int]:
    ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/echo/{SECRET}")
    sid = f"MZbench{i}"
    start = {"streamSid": sid, "callSid": f"CA{i}", "mediaFormat": {"encoding": "audio/x-mulaw"}}
    await ws.send_str(json.dumps({"event": "start", "streamSid": sid, "start": start}))
    payload = base64.b64encode(bytes([0x55] * 160)).decode()
    loop = asyncio.get_running_loop()
    gaps = frames = 0

    async def receive() -> None:
        nonlocal gaps, frames
        last = None
        async for msg in ws:
            data = json.loads(msg.data)
            if data["event"] == "media":
                now = loop.time()
                frames += 1
                if last is not None and now - last > 0.06:
                    gaps += 1
                last = now
            elif data["event"] == "mark":
                await ws.send_str(json.dumps({"event": "mark", "mark": data["mark"]}))

    reader = loop.create_task(receive())
    t0 = loop.time()
    n = 0
    while loop.time() - t0 < seconds:
        n += 1
        media = {"chunk": str(n), "timestamp": str(n * 20), "payload": payload}
        await ws.send_str(json.dumps({"event": "media", "streamSid": sid, "media": media}))
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
    await ws.send_str(json.dumps({"event": "stop"}))
    await asyncio.wait_for(reader, 10)
    return frames, gaps


async def _run(url: str, admin: str, pid: int, streams: int, seconds: float) -> dict[str, float]:
    rss0 = _rss_kib(pid)
    late0 = _metric(admin, "sipserver_ws_late_ticks_total")
    under0 = _metric(admin, 'sipserver_ws_jitter_events_total{kind="underruns"}')
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        cpu0, own0, wall0 = cpu_seconds(process_tree(pid)), time.process_time(), time.monotonic()
        results = await asyncio.gather(*(_stream(http, url, i, seconds) for i in range(streams)))
        wall = time.monotonic() - wall0
        cpu = cpu_seconds(process_tree(pid)) - cpu0
        own = time.process_time() - own0
    rss = _rss_kib(pid)
    frames = sum(f for f, _ in results)
    gaps = sum(g for _, g in results)
    await asyncio.sleep(0.5)
    return {
        "server_core": cpu / wall,
        "server_core_per_stream": cpu / wall / streams,
        "client_core": own / wall,
        "rss_kib_per_stream": (rss - rss0) / streams,
        "late_ticks": _metric(admin, "sipserver_ws_late_ticks_total") - late0,
        "underruns": _metric(admin, 'sipserver_ws_jitter_events_total{kind="underruns"}') - under0,
        "gap_share": gaps / max(1, frames),
        "frames": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, admin = _start_server(Path(tmp))
        try:
            print(f"cores={os.cpu_count()} python={sys.version.split()[0]}")
            for n in args.streams:
                r = asyncio.run(_run(url, admin, proc.pid, n, args.seconds))
                per = r["server_core_per_stream"]
                print(
                    f"streams={n:4d} server={r['server_core'] * 100:5.1f}% of a core "
                    f"({per * 100:.2f}%/stream -> {1 / per if per else 0:.0f} streams/core) "
                    f"client={r['client_core'] * 100:5.1f}% "
                    f"rss/stream={r['rss_kib_per_stream']:.0f} KiB "
                    f"late_ticks={r['late_ticks']:.0f} underruns={r['underruns']:.0f} "
                    f"gaps>60ms={r['gap_share'] * 100:.2f}% frames={r['frames']}"
                )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
