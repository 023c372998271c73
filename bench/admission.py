"""Admission control and per-call memory, against the embedded default (the demo agent).

Three measurements on a sipserver subprocess running ``config/sipserver.yaml`` (ports moved to
free loopback ones, a fresh data directory):

1. **flood**: ``--flood`` websocket calls at once to the demo agent, each sending 20 ms of
   mu-law silence every 20 ms for ``--seconds`` (the issue's attack): how many were admitted
   and refused (HTTP 503 before the upgrade), the server's RSS before, at the peak and after.
2. **signalling at capacity**: the server held at its capacity of such calls while SIP
   OPTIONS and REGISTER (UDP, from 127.0.0.2) and ``GET /readyz`` (HTTP) are sent 20 times a
   second each: p50/p99/max response times.
3. **memory**: ``--calls`` short calls (``--call-seconds`` each), as many at once as the
   capacity allows: RSS after the first 10 and after every 100, then after all of them.

Usage::

    python bench/admission.py                       # flood 100, 30 s at capacity, 1000 calls
    python bench/admission.py --calls 200 --flood 50 --probe-seconds 10
    python bench/admission.py --max-calls 40        # a larger capacity than the default
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from argparse import SUPPRESS
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._common import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "demo-websocket-secret-0001"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(
    workdir: Path, max_calls: int | None
) -> tuple[subprocess.Popen[bytes], str, str, int]:
    """The server, its public URL, its admin URL (``/metrics``) and its SIP port."""
    shutil.copytree(ROOT / "config" / "kb", workdir / "kb")
    config = yaml.safe_load((ROOT / "config" / "sipserver.yaml").read_text())
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    admin_port = free_port(socket.SOCK_STREAM)
    server = config["server"]
    server.update(
        http=f"127.0.0.1:{http_port}",
        public_url=f"http://127.0.0.1:{http_port}",
        data_dir=str(workdir / "var"),
        admin_http=f"127.0.0.1:{admin_port}",
    )
    server["sip"].update(udp=[f"127.0.0.1:{sip_port}"], tcp=[])
    if max_calls is not None:
        server["max_calls"] = max_calls
    path = workdir / "sipserver.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipserver", "run", "-c", str(path), "--log-level", "warning"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "server.log").open("wb"),
    )
    url = f"http://127.0.0.1:{http_port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/readyz", timeout=1).read()
            return proc, url, f"http://127.0.0.1:{admin_port}", sip_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("sipserver did not become ready")


def metric(url: str, name: str) -> float:
    body = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


SILENCE = bytes([0xFF] * 160)
"""20 ms of mu-law silence."""


def speech_frames(text: str) -> list[bytes]:
    """``text`` spoken by espeak-ng as 20 ms mu-law frames at 8 kHz, then 3 s of silence."""
    from sipserver.media.codecs import ulaw_encode
    from sipserver.media.resample import resample

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=30)
        with wave.open(str(wav)) as w:
            pcm = resample(w.readframes(w.getnframes()), w.getframerate(), 8000)
    ulaw = ulaw_encode(pcm)
    frames = [ulaw[i : i + 160].ljust(160, b"\xff") for i in range(0, len(ulaw), 160)]
    return frames + [SILENCE] * 150


async def call(
    http: aiohttp.ClientSession,
    url: str,
    i: int,
    seconds: float,
    talk: list[bytes] | None = None,
) -> bool:
    """One websocket call of silence (or of ``talk`` frames over and over); False when refused
    (HTTP 503 before the upgrade)."""
    try:
        ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/demo/{SECRET}")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 503, exc
        return False
    sid = f"MZbench{i:026d}"
    start = {"streamSid": sid, "callSid": f"CA{i}", "mediaFormat": {"encoding": "audio/x-mulaw"}}
    await ws.send_str(json.dumps({"event": "start", "streamSid": sid, "start": start}))
    silence = base64.b64encode(SILENCE).decode()
    spoken = [base64.b64encode(f).decode() for f in talk or ()]

    async def drain() -> None:
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("event") == "mark":
                await ws.send_str(json.dumps({"event": "mark", "mark": data["mark"]}))

    loop = asyncio.get_running_loop()
    reader = loop.create_task(drain())
    t0 = loop.time()
    n = 0
    while loop.time() - t0 < seconds and not ws.closed:
        n += 1
        payload = spoken[(n + 37 * i) % len(spoken)] if spoken else silence
        media = {"chunk": str(n), "timestamp": str(n * 20), "payload": payload}
        await ws.send_str(json.dumps({"event": "media", "streamSid": sid, "media": media}))
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
    if not ws.closed:
        await ws.send_str(json.dumps({"event": "stop", "streamSid": sid}))
    await asyncio.wait_for(reader, 10)
    return True


def sip_probe(port: int, method: str, n: int) -> float | None:
    """Seconds until the answer to one OPTIONS or REGISTER from 127.0.0.2 (None: none in 2 s)."""
    extra = "Contact: <sip:bench@127.0.0.2:5999>\r\nExpires: 60\r\n" if method == "REGISTER" else ""
    user = "demo" if method == "REGISTER" else "probe"
    message = (
        f"{method} sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bK-bench-{method}-{n}\r\n"
        f"From: <sip:{user}@127.0.0.1>;tag=b{n}\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: bench-{method}-{n}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(2.0)
        started = time.perf_counter()
        s.sendto(message, ("127.0.0.1", port))
        try:
            s.recv(65535)
        except TimeoutError:
            return None
        return time.perf_counter() - started


def http_probe(url: str) -> float | None:
    started = time.perf_counter()
    try:
        urllib.request.urlopen(f"{url}/readyz", timeout=2).read()
    except OSError:
        return None
    return time.perf_counter() - started


def summary(name: str, times: list[float | None]) -> str:
    got = sorted(t for t in times if t is not None)
    lost = len(times) - len(got)
    if not got:
        return f"{name}: no answer ({lost} lost)"
    p99 = got[min(len(got) - 1, int(0.99 * len(got)))]
    return (
        f"{name}: n={len(times)} p50 {statistics.median(got) * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms, max {got[-1] * 1e3:.1f} ms, unanswered {lost}"
    )


async def flood(url: str, pid: int, n: int, seconds: float) -> None:
    before = rss_mib(pid)
    peak = before

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.get_running_loop().create_task(watch())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(call(http, url, i, seconds) for i in range(n)))
    watcher.cancel()
    await asyncio.sleep(1.0)
    print(
        f"flood: {n} websocket calls x {seconds:g} s of silence: admitted {sum(results)}, "
        f"refused {n - sum(results)} (HTTP 503); RSS {before:.0f} MiB before, "
        f"{peak:.0f} at the peak, {rss_mib(pid):.0f} after"
    )


def probe(url: str, sip_port: int, seconds: float) -> dict[str, list[float | None]]:
    """OPTIONS, REGISTER and /readyz, 20 a second each, for ``seconds`` (run in a process of
    its own: the call load's event loop would delay the readings in this one)."""
    times: dict[str, list[float | None]] = {"OPTIONS": [], "REGISTER (401)": [], "GET /readyz": []}
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        n += 1
        times["OPTIONS"].append(sip_probe(sip_port, "OPTIONS", n))
        times["REGISTER (401)"].append(sip_probe(sip_port, "REGISTER", n))
        times["GET /readyz"].append(http_probe(url))
        time.sleep(max(0.0, t0 + n * 0.05 - time.monotonic()))
    return times


async def probe_process(url: str, sip_port: int, seconds: float) -> dict[str, Any]:
    prober = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--probe",
        url,
        str(sip_port),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await prober.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


async def at_capacity(
    url: str,
    admin: str,
    pid: int,
    sip_port: int,
    capacity: int,
    seconds: float,
    talk: list[bytes] | None,
) -> None:
    idle = await probe_process(url, sip_port, seconds / 2)
    print(f"signalling with no call in progress (reference), {seconds / 2:g} s:")
    for name, times in idle.items():
        print(summary(f"  {name}", times))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        calls = [
            loop.create_task(call(http, url, 10_000 + i, seconds + 5, talk))
            for i in range(capacity)
        ]
        while metric(admin, "sipserver_calls_admitted") < capacity:
            await asyncio.sleep(0.1)
        cpu0, wall0 = cpu_seconds([pid]), time.monotonic()
        busy = await probe_process(url, sip_port, seconds)
        core = (cpu_seconds([pid]) - cpu0) / (time.monotonic() - wall0)
        admitted = metric(admin, "sipserver_calls_admitted")
        await asyncio.gather(*calls)
    kind = "talking" if talk else "silent"
    print(
        f"signalling with {admitted:.0f} of {capacity} {kind} calls in progress, {seconds:g} s "
        f"(server process: {core:.0%} of a core, load average {os.getloadavg()[0]:.1f}):"
    )
    for name, times in busy.items():
        print(summary(f"  {name}", times))


async def memory(url: str, pid: int, calls: int, seconds: float, capacity: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        done = 0
        base = None
        started = time.monotonic()
        while done < calls:
            batch = min(capacity, calls - done, 10 if base is None else capacity)
            admitted = await asyncio.gather(
                *(call(http, url, 20_000 + done + i, seconds) for i in range(batch))
            )
            done += sum(admitted)
            if base is None and done >= 10:
                await asyncio.sleep(1.0)
                base = rss_mib(pid)
                print(f"memory: RSS after the first {done} calls {base:.1f} MiB")
            elif done % 100 < batch:
                print(f"  after {done}: {rss_mib(pid):.1f} MiB", flush=True)
    await asyncio.sleep(2.0)
    assert base is not None
    after = rss_mib(pid)
    print(
        f"memory: after {done} calls {after:.1f} MiB ({after - base:+.1f} MiB since the first 10), "
        f"{time.monotonic() - started:.0f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a flood call")
    parser.add_argument("--probe-seconds", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--call-seconds", type=float, default=1.0)
    parser.add_argument("--max-calls", type=int, default=None, help="server.max_calls (auto)")
    parser.add_argument(
        "--talk", action="store_true", help="callers at capacity ask a question every ~6 s"
    )
    parser.add_argument("--probe", nargs=3, metavar=("URL", "SIP_PORT", "SECONDS"), help=SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        url, port, seconds = args.probe
        print(json.dumps(probe(url, int(port), float(seconds))))
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, admin, sip_port = start_server(Path(tmp), args.max_calls)
        try:
            capacity = int(metric(admin, "sipserver_calls_capacity"))
            print(f"server.max_calls: {capacity}; RSS ready {rss_mib(proc.pid):.0f} MiB")
            if args.flood:
                await flood(url, proc.pid, args.flood, args.seconds)
            if args.probe_seconds:
                talk = speech_frames("What are your opening hours?") if args.talk else None
                await at_capacity(
                    url, admin, proc.pid, sip_port, capacity, args.probe_seconds, talk
                )
            if args.calls:
                await memory(url, proc.pid, args.calls, args.call_seconds, capacity)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
