"""Media load on the call workers: N concurrent G.711 calls held through the edge, per engine.

For each engine asked (``server.media.engine``: ``native`` or ``pjsua2``; ``both`` runs them one
after the other in the same run and prints them side by side with the ratio) one sipserver
process serves an echo line (an agent without a realtime model). The load generator
(bench/_media_calls.py, in processes of its own) places ``--concurrent`` calls at ``--rate``
calls/s, each INVITE -> 407 -> digest INVITE -> 200 -> ACK, then RTP both ways (a PCMU tone, 50
packets/s) for ``--hold`` seconds, then BYE; it checks the echo coming back. Meanwhile a thread
probes the edge from another address (127.0.0.2): SIP OPTIONS and an unauthenticated REGISTER
(answered 401) over UDP, one after the other every ``--probe-every`` seconds (the same probes,
first for 3 s on the idle server: the reference).

Once every call is up (``sipserver_calls_active`` = N) and settled, a window of the hold is
measured: CPU of the main process and of the call workers (utime+stime from /proc), RSS (VmRSS)
of the workers against their idle RSS, and the workers' STATS counters (``/status``) turned into
late frames and lost/concealed packets per call-minute. Printed per engine: calls established,
failed, ended by the server; INVITE->200 p50/p99 (the authenticated INVITE); echo received;
client-side gaps > 60 ms; CPU % of a core per call and calls per core (all server processes);
RSS per call; probe p99s; the generator's own CPU and late sends (a saturated generator is shown).

Usage (from the repository root)::

    python -m bench.media_load --concurrent 40 --hold 20 --rate 50 --engine pjsua2
    python -m bench.media_load --concurrent 500 --hold 30 --engine both --procs 2 --out /tmp/l.json
    python -m bench.media_load --engine native --set server.media.calls_per_worker=600

``--workers`` sets ``server.workers`` (default: ceil(N / 4) for pjsua2, whose workers hold 4 calls
each; 1 for native: one worker = one core, the per-core figure). ``--set dotted.key=value``
(YAML value) changes any other key of the server's config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydantic
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench._common import cpu_seconds, free_port, stop
from bench._media_calls import LoadSettings, command
from bench._soak_probes import PROBE_SOURCE, Probes
from bench._soak_report import machine, percentile
from sipserver._config_server import MediaConfig

NUMBER = "+15005550199"
USER = "bench"
PASSWORD = "bench-password-01"
ENGINES = ("native", "pjsua2")
PROBE_KINDS = ("options_udp", "register_udp")
LATE_KEYS = {"pjsua2": "tx_underflow", "native": "late_frames"}
"""STATS key of frames the session did not have ready in time, per engine (docs/framelink.md)."""
FRAME_KEYS = {"pjsua2": ("tx_frames",), "native": ("frames", "sent")}
LOST_KEYS = ("rtp_lost", "lost")
"""STATS keys of lost caller packets (docs/framelink.md; the second: the RTP stream's name)."""
PAGE = os.sysconf("SC_PAGE_SIZE")


def engine_supported(engine: str) -> bool:
    """Whether ``server.media.engine: <engine>`` validates in this tree (the key is new in
    issue [3/7]: without it, pjsua2 is the only engine and the key is left out)."""
    try:
        MediaConfig.model_validate({"engine": engine})
    except pydantic.ValidationError:
        return False
    return True


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def _set(config: dict[str, Any], dotted: str) -> None:
    key, _, raw = dotted.partition("=")
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def server_config(
    wd: Path, engine: str, workers: int, calls: int, extra: list[str]
) -> dict[str, Any]:
    sip_port = free_port()
    http_port, admin_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    rtp_min = 30000
    media: dict[str, Any] = {
        "min_workers": workers,
        "rtp_port_min": rtp_min,
        "rtp_port_max": min(65535, rtp_min + max(400, 4 * calls + 16 * workers)),
    }
    if engine_supported(engine):
        media["engine"] = engine
    elif engine != "pjsua2":
        raise SystemExit(f"server.media.engine: {engine} is not accepted by this tree")
    config: dict[str, Any] = {
        "server": {
            "http": f"127.0.0.1:{http_port}",
            "admin_http": f"127.0.0.1:{admin_port}",
            "public_url": f"http://127.0.0.1:{http_port}",
            "data_dir": str(wd / "data"),
            "store": "memory",
            "workers": workers,
            "max_calls": calls,  # every worker at its capacity once all calls are up
            "media": media,
            "sip": {"udp": [f"127.0.0.1:{sip_port}"], "tcp": []},
        },
        "agents": [
            {
                "slug": "bench",  # no realtime model: an echo test line
                "sip": {"enabled": True, "numbers": [NUMBER], "username": USER,
                        "password": PASSWORD},
            }
        ],
    }  # fmt: skip
    for item in extra:
        _set(config, item)
    return config


class Server:
    def __init__(self, wd: Path, config: dict[str, Any]) -> None:
        self.wd = wd
        self.config = config
        (wd / "sipserver.yaml").write_text(yaml.safe_dump(config))
        self.log = wd / "sipserver.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipserver", "run", "-c", "sipserver.yaml",
             "--log-level", "warning"],
            cwd=wd, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip
        self.admin = f"http://{config['server']['admin_http']}"
        self.sip_port = int(config["server"]["sip"]["udp"][0].rsplit(":", 1)[1])

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def metrics(self) -> dict[str, float]:
        """Every unlabelled sample, and labelled ones as ``name{a=b}``, summed by name too."""
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = json.loads(self.get("/status"))["media_workers"]
        return workers

    def wait_workers(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                if self.metrics().get("sipserver_media_workers_up", 0) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{n} media workers not up in {timeout:.0f} s")


def stats_sum(workers: list[dict[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for w in workers:
        for key, value in (w.get("stats") or {}).items():
            if isinstance(value, int | float):
                total[key] = total.get(key, 0) + value
    return total


def run_engine(engine: str, a: argparse.Namespace) -> dict[str, Any]:
    """One engine's run: start the server, the idle probes, the load, the window; figures."""
    n = a.concurrent
    workers = a.workers or (math.ceil(n / 4) if engine == "pjsua2" else 1)
    with tempfile.TemporaryDirectory(prefix=f"sipserver-load-{engine}-") as tmp:
        wd = Path(a.keep) / engine if a.keep else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        server = Server(wd, server_config(wd, engine, workers, n, a.set or []))
        gen: subprocess.Popen[bytes] | None = None
        try:
            server.wait_workers(workers)
            time.sleep(1.0)
            idle_workers = server.workers()
            idle_rss = sum(rss_mb(int(w["pid"])) for w in idle_workers)
            main_rss_idle = rss_mb(server.proc.pid)
            probes = Probes(server.sip_port, None, a.probe_every, kinds=PROBE_KINDS)
            probes.start()
            time.sleep(3.0)
            idle_probes = {k: w.figures() for k, w in probes.take().items()}
            settings = LoadSettings(
                target=("127.0.0.1", server.sip_port), number=NUMBER, user=USER,
                password=PASSWORD, calls=n, rate=a.rate, hold=a.hold,
            )  # fmt: skip
            gen = subprocess.Popen(command(settings, a.procs), stdout=subprocess.PIPE)
            out_holder: dict[str, bytes] = {}
            reader = threading.Thread(
                target=lambda: out_holder.setdefault("out", gen.communicate()[0] if gen else b"")
            )
            reader.start()
            ramp_deadline = time.monotonic() + n / a.rate + 20
            all_up = False
            while time.monotonic() < ramp_deadline and gen.poll() is None:
                if server.metrics().get("sipserver_calls_active", 0) >= n:
                    all_up = True
                    break
                time.sleep(0.2)
            probes.take()  # the ramp is not the hold
            window: dict[str, Any] = {}
            if all_up:
                window = measure(server, engine, n, window_seconds(a))
            load_probes = {k: w.figures() for k, w in probes.take().items()}
            reader.join(timeout=n / a.rate + a.hold + 60)
            probes.stop()
            gen_result: dict[str, Any] = json.loads(out_holder.get("out") or b"{}")
            end_metrics = server.metrics()
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
            stop(server.proc)
    return summarize(
        engine, n, workers, gen_result, window, idle_probes, load_probes,
        idle_rss, main_rss_idle, end_metrics, all_up,
    )  # fmt: skip


def window_seconds(a: argparse.Namespace) -> float:
    """The measured window: from 2 s after the last call is up to 1 s before the first ends."""
    return float(a.hold - a.concurrent / a.rate - 3.0)


def measure(server: Server, engine: str, n: int, length: float) -> dict[str, Any]:
    """CPU, RSS and the STATS deltas over ``length`` s of the hold (all N calls up)."""
    time.sleep(2.0)  # settle; STATS come every 5 s: the window spans a few
    w0 = server.workers()
    wpids = [int(w["pid"]) for w in w0]
    main = server.proc.pid
    c_main0, c_work0, t0 = cpu_seconds([main]), cpu_seconds(wpids), time.monotonic()
    time.sleep(length)
    c_main1, c_work1, t1 = cpu_seconds([main]), cpu_seconds(wpids), time.monotonic()
    w1 = server.workers()
    s0, s1 = stats_sum(w0), stats_sum(w1)
    delta = {k: s1.get(k, 0) - s0.get(k, 0) for k in s1}
    if engine == "native" and "late_frames" not in s1:  # not reported: every call per late tick
        delta["late_frames"] = delta.get("late_ticks", 0) * n
    call_minutes = n * (t1 - t0) / 60
    frames_key = next((k for k in FRAME_KEYS[engine] if k in delta), "")
    if delta.get(frames_key, 0) > 0:  # the STATS' own span (they come every few seconds)
        call_minutes = delta[frames_key] / 50 / 60
    return {
        "seconds": t1 - t0,
        "cpu_main_pct": 100 * (c_main1 - c_main0) / (t1 - t0),
        "cpu_workers_pct": 100 * (c_work1 - c_work0) / (t1 - t0),
        "worker_rss_mb": sum(rss_mb(p) for p in wpids),
        "main_rss_mb": rss_mb(main),
        "call_minutes": call_minutes,
        "stats_delta": delta,
        "jitter_ms_max": max((w.get("stats", {}).get("jitter_ms_max", 0) for w in w1), default=0),
        "workers_at_capacity": sum(1 for w in w1 if w["calls"] >= w["capacity"] > 0),
    }


def summarize(
    engine: str,
    n: int,
    workers: int,
    gen: dict[str, Any],
    window: dict[str, Any],
    idle_probes: dict[str, Any],
    load_probes: dict[str, Any],
    idle_rss: float,
    main_rss_idle: float,
    end_metrics: dict[str, float],
    all_up: bool,
) -> dict[str, Any]:
    calls = gen.get("calls", [])
    states: dict[str, int] = {}
    for c in calls:
        states[c["state"]] = states.get(c["state"], 0) + 1
    setup = [c["setup_ms"] for c in calls if c["setup_ms"] is not None]
    failed_statuses: dict[str, int] = {}
    for c in calls:
        if c["state"] == "failed":
            failed_statuses[str(c["status"])] = failed_statuses.get(str(c["status"]), 0) + 1
    tx = sum(c["tx"] for c in calls)
    rx = sum(c["rx"] for c in calls)
    echo = sum(c["echo"] for c in calls)
    held_minutes = sum(c["tx"] for c in calls) * 0.02 / 60
    out: dict[str, Any] = {
        "engine": engine,
        "concurrent": n,
        "workers": workers,
        "all_up": all_up,
        "states": states,
        "established": len(setup),
        "failed_statuses": failed_statuses,
        "setup_p50_ms": percentile(setup, 0.5),
        "setup_p99_ms": percentile(setup, 0.99),
        "rtp_tx": tx,
        "rtp_rx": rx,
        "echo_pct": 100 * echo / rx if rx else 0.0,
        "client_gaps_per_call_min": sum(c["gaps"] for c in calls) / held_minutes
        if held_minutes
        else None,
        "generator_cpu_s": gen.get("cpu_s"),
        "generator_late_sends": sum(c["late_sends"] for c in calls),
        "generator_errors": gen.get("errors", {}),
        "generator_samples": gen.get("samples", {}),
        "probes_idle": idle_probes,
        "probes_load": load_probes,
        "window": window,
        "idle_worker_rss_mb": idle_rss,
        "idle_main_rss_mb": main_rss_idle,
        "metrics_end": {
            k: v
            for k, v in end_metrics.items()
            if k.startswith(_EXPORTED) and not k.endswith("_created")
        },
    }
    if window:
        total_pct = window["cpu_main_pct"] + window["cpu_workers_pct"]
        d, cm = window["stats_delta"], window["call_minutes"]
        out.update(
            cpu_per_call_pct=total_pct / n,
            calls_per_core=100 * n / total_pct if total_pct else None,
            worker_calls_per_core=100 * n / window["cpu_workers_pct"]
            if window["cpu_workers_pct"]
            else None,
            rss_per_call_mb=window["worker_rss_mb"] / n,
            rss_delta_per_call_mb=(window["worker_rss_mb"] - idle_rss) / n,
            late_per_call_min=d.get(LATE_KEYS[engine], 0) / cm,
            lost_per_call_min=next((d[k] / cm for k in LOST_KEYS if k in d), None),
            concealed_per_call_min=d.get("concealed_frames", 0) / cm
            if "concealed_frames" in d
            else None,
        )
    return out


_EXPORTED = ("sipserver_media_", "sipserver_rtp_")


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec) if isinstance(value, int | float) else str(value)


ROWS: list[tuple[str, str, str]] = [
    ("calls established (200)", "ok", "d"),
    ("  failed / timed out / ended by the server", "bad", ""),
    ("INVITE->200 p50 (ms)", "setup_p50_ms", ".1f"),
    ("INVITE->200 p99 (ms)  [target <= 20]", "setup_p99_ms", ".1f"),
    ("echo in received RTP (%)", "echo_pct", ".1f"),
    ("client gaps > 60 ms per call-minute", "client_gaps_per_call_min", ".2f"),
    ("server CPU main (% of a core)", "cpu_main", ".1f"),
    ("server CPU workers (% of a core)", "cpu_workers", ".1f"),
    ("CPU per call (% of a core)", "cpu_per_call_pct", ".3f"),
    ("calls per core (all server processes)", "calls_per_core", ".0f"),
    ("RSS per call (workers / N, MB) [<= 2]", "rss_per_call_mb", ".2f"),
    ("RSS delta per call (MB)", "rss_delta_per_call_mb", ".2f"),
    ("late frames per call-minute [0]", "late_per_call_min", ".2f"),
    ("lost RTP per call-minute", "lost_per_call_min", ".2f"),
    ("concealed frames per call-minute", "concealed_per_call_min", ".2f"),
    ("workers at capacity during the window", "at_capacity", ""),
    ("OPTIONS p99 idle / load (ms) [<= 20]", "options", ""),
    ("REGISTER p99 idle / load (ms) [<= 20]", "register", ""),
    ("generator CPU (s) / late sends", "gen", ""),
]


def _cell(r: dict[str, Any], key: str, spec: str) -> str:
    st = r["states"]
    w = r.get("window") or {}
    if key == "ok":
        return f"{r['established']} ({st.get('completed', 0)} completed)"
    if key == "bad":
        return f"{st.get('failed', 0)} / {st.get('timeout', 0)} / {st.get('ended_by_server', 0)}"
    if key == "cpu_main":
        return _fmt(w.get("cpu_main_pct"), spec)
    if key == "cpu_workers":
        return _fmt(w.get("cpu_workers_pct"), spec)
    if key in ("options", "register"):
        kind = f"{key}_udp"
        idle, load = r["probes_idle"].get(kind, {}), r["probes_load"].get(kind, {})
        lost = load.get("timeouts", 0) + load.get("errors", 0)
        return f"{_fmt(idle.get('p99_ms'))} / {_fmt(load.get('p99_ms'))}" + (
            f" ({lost} unanswered)" if lost else ""
        )
    if key == "at_capacity":
        return f"{w.get('workers_at_capacity', '-')} of {r['workers']}"
    if key == "gen":
        return f"{_fmt(r['generator_cpu_s'])} / {r['generator_late_sends']}"
    return _fmt(r.get(key), spec)


def print_table(results: list[dict[str, Any]], info: dict[str, Any], a: argparse.Namespace) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])} at the start"
    )
    print(
        f"{a.concurrent} concurrent PCMU calls held {a.hold:g} s, {a.rate:g} calls/s, echo line; "
        f"probes from {PROBE_SOURCE} every {a.probe_every:g} s"
    )
    names = [f"{r['engine']} ({r['workers']} w)" for r in results]
    header = f"{'':<44}" + "".join(f"{n:>28}" for n in names)
    if len(results) == 2:
        header += f"{'ratio':>10}"
    print(header)
    for label, key, spec in ROWS:
        cells = [_cell(r, key, spec) for r in results]
        line = f"{label:<44}" + "".join(f"{c:>28}" for c in cells)
        if len(results) == 2:
            x, y = results[1].get(key), results[0].get(key)
            if isinstance(x, int | float) and isinstance(y, int | float) and y:
                line += f"{x / y:>10.2f}"
        print(line)
    if len(results) == 2:
        print(f"ratio = {results[1]['engine']} / {results[0]['engine']}")
    for r in results:
        if not r["all_up"]:
            print(f"{r['engine']}: not every call was up at once: no window measured")
        if r["generator_errors"]:
            print(f"{r['engine']}: generator errors {r['generator_errors']}")
        if r["failed_statuses"]:
            print(f"{r['engine']}: failed calls by final status {r['failed_statuses']}")
        if r["generator_late_sends"] > 0.01 * max(1, r["rtp_tx"]):
            print(
                f"{r['engine']}: the load generator was starved ({r['generator_late_sends']} of "
                f"{r['rtp_tx']} packets sent > 10 ms late): these figures measure the machine; "
                "try fewer calls or more --procs"
            )
        ended = r["metrics_end"]
        if ended:
            shown = ", ".join(f"{k} {v:g}" for k, v in sorted(ended.items()))
            print(f"{r['engine']} /metrics at the end: {shown}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrent", type=int, default=40, help="calls held at once")
    p.add_argument("--hold", type=float, default=20.0, help="seconds each call is held")
    p.add_argument("--rate", type=float, default=50.0, help="new calls per second")
    p.add_argument("--engine", choices=[*ENGINES, "both"], default="pjsua2")
    p.add_argument("--workers", type=int, help="server.workers (default: see the doc)")
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--probe-every", type=float, default=0.05)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--keep", help="keep each server's config and log under this directory")
    a = p.parse_args()
    if window_seconds(a) < 8:
        least = a.concurrent / a.rate + 11
        p.error(
            f"--hold must be >= {least:g} s: every call is up N / rate s after the first, and "
            "the measured window (>= 8 s: STATS come every 5 s) must end before the first ends"
        )
    engines = list(ENGINES) if a.engine == "both" else [a.engine]
    info = machine()
    results = [run_engine(e, a) for e in engines]
    print_table(results, info, a)
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": info, "args": vars(a), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
