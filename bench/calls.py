"""Call setup through the edge: sipserver's edge vs the Kamailio reference edge, same run.

SIPp places calls (INVITE -> 407 -> authenticated INVITE -> 200 -> ACK -> 150 ms -> BYE) at a
fixed rate. The figure is the authenticated INVITE -> 200 time, p50/p99, plus the CPU and RSS
of the processes involved. The time is taken twice: by SIPp (``-trace_rtt``; whole 4 ms ticks
on this machine) and, when the script may open a packet socket (root or CAP_NET_RAW), by a tap
on the loopback with the kernel's packet timestamps (bench/_sip_timing.py, microseconds): the
ratios use the tap's when it ran. Both edges forward to the same kind of media worker,
sipserver's own pjsua2 worker process, two of them (a worker holds 4 calls): sipserver's edge
starts two, and for the Kamailio run two standalone workers listen on 127.0.0.1:5070 and :5072
behind bench/kamailio/proxy_two_workers.cfg (../shared/bench/kamailio/proxy.cfg with the second
worker: alternate, and the other one when a worker is full), with a tiny frame link server in
this script that echoes their audio.

With ``--sweep 4,8,16`` it measures media instead: for each N, N concurrent calls with RTP
(bench/sipp/call_rtp_hold.xml, a PCMU tone) held ``--hold`` seconds through sipserver's edge to
ceil(N/4) pjsua2 workers; over the steady part of the calls it reports CPU per call (% of one
core, the whole process tree), worker RSS per call (sum of the workers' RSS / N) and frame
trouble per call-minute from the workers' STATS counters (``/status``): ``tx_underflow`` (ticks
the session had no frame ready: silence played), ``rx_overflow`` and the frame link's
``dropped_frames``/``lost_frames``.

Many concurrent calls per media engine, side by side (CPU, RSS, late frames, signalling
probes): bench/media_load.py.

Usage::

    python bench/calls.py                     # 20 calls/s, 200 calls
    python bench/calls.py --rate 10 --calls 100 --no-kamailio
    python bench/calls.py --sweep 4,8,16 --hold 30
    python bench/calls.py --pure              # pure-Python modules (SIPSERVER_PURE_PYTHON=1)
    python bench/calls.py --both              # the mypyc build, then the pure one, then Kamailio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import yaml
from _common import (
    build_label,
    cpu_seconds,
    free_port,
    process_tree,
    run_sipp_load,
    server_env,
    stop,
)
from _sip_timing import SipTimer

from sipserver.rtp.framelink import Audio, FrameLink, serve_links

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "sipp" / "call_auth.xml"
MEDIA_SCENARIO = HERE / "sipp" / "call_rtp_hold.xml"
FRAME_COUNTERS = ("tx_underflow", "rx_overflow", "dropped_frames", "lost_frames")
NUMBER = "+15005550199"
USER = "bench"
PASSWORD = "bench-password-01"  # sipserver refuses SIP passwords under 12 characters
KAMAILIO_PASSWORD = "secret"  # fixed by ../shared/bench/kamailio/proxy.cfg
PAGE = os.sysconf("SC_PAGE_SIZE")
TAP_UNAVAILABLE = SipTimer.available()
KAMAILIO_WORKERS = (5070, 5072)  # bench/kamailio/proxy_two_workers.cfg relays to these


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6
    except FileNotFoundError:
        return 0.0


def run_sipp(
    port: int, rate: int, calls: int, wd: Path, password: str = PASSWORD
) -> tuple[int, int, list[float], list[float], list[float]]:
    """Returns (successful, failed, INVITE->200 times in ms from SIPp, the same from the loopback
    tap, the edge's own share of them from the tap: both empty when it cannot open)."""
    for old in wd.glob("*_rtt.csv"):
        old.unlink()
    tap = SipTimer(port) if TAP_UNAVAILABLE is None else contextlib.nullcontext()
    with tap:
        ok, failed = run_sipp_load(
            port, SCENARIO, rate, calls, wd,
            "-s", NUMBER, "-au", USER, "-ap", password, "-auth_uri", f"{NUMBER}@127.0.0.1:{port}",
            "-trace_rtt", "-rtt_freq", "1",
        )  # fmt: skip
    times: list[float] = []
    for path in wd.glob("*_rtt.csv"):
        with path.open() as f:
            for row in csv.reader(f, delimiter=";"):
                try:
                    times.append(float(row[1]))
                except (IndexError, ValueError):
                    continue
    if isinstance(tap, SipTimer):
        return ok, failed, times, tap.times(), tap.own_times()
    return ok, failed, times, [], []


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_sipserver(
    wd: Path, workers: int = 2, *, pure: bool = False
) -> tuple[subprocess.Popen[bytes], int, str]:
    sip_port, http_port, admin_port = free_port(), free_port(), free_port()
    config = {
        "server": {
            "http": f"127.0.0.1:{http_port}",
            "admin_http": f"127.0.0.1:{admin_port}",  # /metrics and /status
            "public_url": f"http://127.0.0.1:{http_port}",
            "data_dir": str(wd / "data"),
            "store": "memory",
            "workers": workers,
            "media": {"min_workers": workers, "rtp_port_min": 33000, "rtp_port_max": 33999},
            "sip": {"udp": [f"127.0.0.1:{sip_port}"], "tcp": []},
        },
        "agents": [
            {
                "slug": "bench",
                "sip": {
                    "enabled": True,
                    "numbers": [NUMBER],
                    "username": USER,
                    "password": PASSWORD,
                },
            }
        ],
    }
    (wd / "sipserver.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sipserver",
            "run",
            "-c",
            "sipserver.yaml",
            "--log-level",
            "warning",
        ],
        cwd=wd,
        env=server_env(pure=pure),
        stdout=subprocess.DEVNULL,
        stderr=(wd / "sipserver.log").open("wb"),
    )
    url = f"http://127.0.0.1:{admin_port}/metrics"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(url, timeout=1).read().decode()
            if f"sipserver_media_workers_up {workers:.1f}" in body:
                return proc, sip_port, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((wd / "sipserver.log").read_text())
        time.sleep(0.2)
    raise RuntimeError("sipserver did not start its media workers")


class EchoLinkServer:
    """A frame link server in a background thread that echoes each worker's audio."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve_links(self.path, self._serve), self._loop).result(5)

    async def _serve(self, link: FrameLink) -> None:
        async for record in link.records():
            if isinstance(record, Audio):
                link.send(record)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


class Figures(NamedTuple):
    """One server's INVITE->200 p50/p99 (ms), CPU seconds per call, and the edge's own share's
    p50/p99 (ms; NaN without the tap)."""

    p50: float
    p99: float
    cpu: float
    own_p50: float
    own_p99: float


def report(
    name: str,
    ok: int,
    failed: int,
    times: list[float],
    tapped: tuple[list[float], list[float]],
    cpu: float,
    rss: float,
) -> Figures:
    """Print one server's lines; return its figures: the tap's times when it ran
    (microseconds), SIPp's otherwise (whole 4 ms ticks; no own times)."""
    per_call = 1e3 * cpu / ok if ok else float("nan")
    print(
        f"{name:<15} ok {ok:>5} failed {failed:>4}  INVITE->200 p50 {pct(times, 0.5):6.1f} ms "
        f"p99 {pct(times, 0.99):6.1f} ms (SIPp)  CPU {per_call:6.2f} ms/call  "
        f"worker RSS {rss:5.1f} MB"
    )
    total, own = tapped
    if total:
        print(
            f"{'':<15} loopback tap: {len(total)} calls  INVITE->200 p50 "
            f"{pct(total, 0.5):6.2f} ms  p99 {pct(total, 0.99):6.2f} ms  "
            f"max {max(total):6.2f} ms  mean {statistics.fmean(total):6.2f} ms"
        )
    if own:
        print(
            f"{'':<15} the edge's own share (INVITE in -> relayed, worker's 200 in -> out): "
            f"p50 {pct(own, 0.5):6.2f} ms  p99 {pct(own, 0.99):6.2f} ms  max {max(own):6.2f} ms"
        )
    best = total or times
    return Figures(pct(best, 0.5), pct(best, 0.99), cpu / max(ok, 1), pct(own, 0.5), pct(own, 0.99))


def http_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: dict[str, object] = json.load(r)
    return body


def frame_totals(status_url: str) -> tuple[dict[str, int], list[int]]:
    """Sum of the workers' frame counters (their last STATS) and the worker pids."""
    totals = dict.fromkeys(FRAME_COUNTERS, 0)
    pids: list[int] = []
    workers = http_json(status_url)["media_workers"]
    assert isinstance(workers, list)
    for w in workers:
        pids.append(int(w["pid"]))
        for name in FRAME_COUNTERS:
            totals[name] += int(w.get("stats", {}).get(name, 0))
    return totals, pids


def sweep_one(n: int, hold: float, wd: Path) -> None:
    """N concurrent calls with RTP for ``hold`` seconds; print the per-call figures."""
    workers = math.ceil(n / 4)
    proc, port, metrics_url = start_sipserver(wd, workers)
    status_url = metrics_url.replace("/metrics", "/status")
    sipp: subprocess.Popen[bytes] | None = None
    try:
        sipp = subprocess.Popen(
            [
                "sipp", f"127.0.0.1:{port}", "-sf", str(MEDIA_SCENARIO),
                "-s", NUMBER, "-au", USER, "-ap", PASSWORD,
                "-auth_uri", f"{NUMBER}@127.0.0.1:{port}",
                "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
                "-m", str(n), "-l", str(n), "-r", str(n), "-d", str(int(hold * 1000)),
                "-timeout", f"{hold + 30:.0f}s",
            ],
            cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            body = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
            if f"sipserver_calls_active {n:.1f}" in body:
                break
            time.sleep(0.2)
        else:
            print(f"N={n}: the calls did not all start", file=sys.stderr)
            return
        time.sleep(min(3.0, hold / 4))  # let media settle
        window = max(5.0, hold - 6.0)
        pids = process_tree(proc.pid)
        frames0, _ = frame_totals(status_url)
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        frames1, worker_pids = frame_totals(status_url)
        rss = sum(rss_mb(p) for p in worker_pids)
        call_minutes = n * (t1 - t0) / 60
        trouble = "  ".join(
            f"{k} {(frames1[k] - frames0[k]) / call_minutes:6.1f}" for k in FRAME_COUNTERS
        )
        print(
            f"N={n:>3} ({workers} workers)  CPU {100 * (cpu1 - cpu0) / (t1 - t0) / n:5.2f} % "
            f"of a core per call  worker RSS {rss / n:5.1f} MB per call ({rss:.0f} MB)  "
            f"per call-minute: {trouble}"
        )
        sipp.wait(timeout=hold + 40)
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
        stop(proc)


def sweep(sizes: list[int], hold: float) -> None:
    """The per-N media sweep (see the module docstring)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.integration.rtp_signals import tone, write_pcmu_pcap

    print(f"{hold:.0f} s calls with a PCMU tone, STATS every 5 s (counters at 5 s granularity)")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="sipserver-sweep-") as tmp:
            wd = Path(tmp)
            (wd / "pcap").mkdir()
            write_pcmu_pcap(wd / "pcap" / "pcmu_tone.pcap", tone(hold + 2))
            sweep_one(n, hold, wd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20, help="calls per second")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--no-kamailio", action="store_true")
    parser.add_argument("--sweep", help="media sweep instead: concurrent calls, e.g. 4,8,16")
    parser.add_argument("--hold", type=float, default=30.0, help="sweep call length, seconds")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--pure", action="store_true", help="SIPSERVER_PURE_PYTHON=1 for sipserver")
    build.add_argument("--both", action="store_true", help="the compiled build, then the pure one")
    args = parser.parse_args()
    builds = [False, True] if args.both else [args.pure]
    if shutil.which("sipp") is None:
        print("SIPp is required: apt-get install sip-tester", file=sys.stderr)
        return 2
    if args.sweep:
        sweep([int(n) for n in args.sweep.split(",")], args.hold)
        return 0
    results: dict[str, Figures] = {}
    names = [build_label(pure) for pure in builds]
    with tempfile.TemporaryDirectory(prefix="sipserver-calls-") as tmp:
        wd = Path(tmp)
        for pure, name in zip(builds, names, strict=True):
            proc, port, _ = start_sipserver(wd, pure=pure)
            try:
                pids = process_tree(proc.pid)
                before = cpu_seconds(pids)
                ok, failed, times, total, own = run_sipp(port, args.rate, args.calls, wd)
                cpu = cpu_seconds(pids) - before
                rss = max((rss_mb(p) for p in pids[1:]), default=0.0)
                results[name] = report(name, ok, failed, times, (total, own), cpu, rss)
            finally:
                stop(proc)
        cfg = HERE / "kamailio" / "proxy_two_workers.cfg"
        if not args.no_kamailio and shutil.which("kamailio"):
            link = EchoLinkServer(str(wd / "kam-link.sock"))
            link.start()
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "sipserver.rtp.pjsua2_worker",
                        "--link",
                        str(wd / "kam-link.sock"),
                        "--worker-id",
                        f"kam{i}",
                        "--sip-host",
                        "127.0.0.1",
                        "--sip-port",
                        str(sip_port),
                        "--rtp-port",
                        str(34000 + 100 * i),
                        "--rtp-port-count",
                        "40",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(wd / f"kam-worker{i}.log").open("wb"),
                )
                for i, sip_port in enumerate(KAMAILIO_WORKERS)
            ]
            kam = subprocess.Popen(
                ["kamailio", "-f", str(cfg), "-P", str(wd / "kam.pid"), "-m", "64", "-DD", "-E"],
                stdout=subprocess.DEVNULL,
                stderr=(wd / "kamailio.log").open("wb"),
            )
            time.sleep(2.0)
            try:
                pids = [*process_tree(kam.pid), *(w.pid for w in workers)]
                before = cpu_seconds(pids)
                ok, failed, times, total, own = run_sipp(
                    5092, args.rate, args.calls, wd, KAMAILIO_PASSWORD
                )
                cpu = cpu_seconds(pids) - before
                rss = max(rss_mb(w.pid) for w in workers)
                results["kamailio"] = report("kamailio", ok, failed, times, (total, own), cpu, rss)
            finally:
                stop(kam)
                for worker in workers:
                    stop(worker)
                link.stop()
    if "kamailio" in results:
        ref = results["kamailio"]
        print("times from the loopback tap" if TAP_UNAVAILABLE is None else TAP_UNAVAILABLE)
        for name in names:
            ours = results[name]
            print(
                f"{name} at {args.rate} calls/s: INVITE->200 p50 ratio {ours.p50 / ref.p50:.2f}, "
                f"p99 ratio {ours.p99 / ref.p99:.2f}, CPU per call ratio {ours.cpu / ref.cpu:.2f} "
                "(/ kamailio; targets p99 <= 1.2, CPU <= 1.2)"
            )
            if not math.isnan(ours.own_p50) and not math.isnan(ref.own_p50):
                print(
                    f"{name} at {args.rate} calls/s: the edge's own share p50 ratio "
                    f"{ours.own_p50 / ref.own_p50:.2f}, p99 ratio {ours.own_p99 / ref.own_p99:.2f} "
                    "(/ kamailio)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
