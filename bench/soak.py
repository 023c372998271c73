"""Soak: a real sipserver under a steady mix of traffic for N minutes, sampled as it goes.

One sipserver process on loopback ports serves three agents: ``echo`` (an echo test line over SIP
and websocket: the media path without models), ``demo`` (the embedded default's voice agent on
its local models; left out when no voice calls are asked for) and ``phones`` (``--contacts`` dial
strings that phones register). For ``--minutes`` this script keeps up, at the rates given:

- REGISTER refreshes: SIPp (bench/sipp/reg_auth.xml, digest auth) cycling through the contacts
  at ``--register-rate`` per second, so each binding is refreshed every contacts/rate seconds;
- SIP calls through the edge: SIPp (bench/sipp/call_rtp_hold.xml: 407 challenge, PCMU RTP from
  a pcap) holding ``--sip-calls`` concurrent calls to the echo line (a tone) and
  ``--sip-voice-calls`` to the demo agent (silence, an espeak-ng question, silence), each
  ``--call-seconds`` long, a new one as one ends;
- websocket calls speaking Twilio Media Streams (tests/integration/media_stream_client.py):
  ``--ws-calls`` concurrent to the echo line and ``--ws-voice-calls`` to the demo agent, each
  sending a 20 ms mu-law frame every 20 ms for ``--call-seconds`` (voice calls say one espeak-ng
  question after the greeting), then ``stop``, then a new one;
- probes from another address (127.0.0.2), every ``--probe-every`` seconds: SIP OPTIONS over
  UDP, SIP OPTIONS over a kept-open TCP connection, ``GET /readyz``; each one's latency is kept.

Every ``--sample-every`` seconds it prints one row: the server's RSS (main process, and its child
processes - media workers, model runners - summed apart), open fds, CPU, asyncio tasks
(``sipserver_event_loop_tasks``), calls in progress, refusals, the work done in the interval and
p50/p99 of each probe. When the load stops it waits for the calls to drain, takes a last sample
and prints a summary (RSS idle/first/peak/end, fds, tasks, p99 of each probe over the run and the
worst interval, errors and timeouts, calls completed per kind, refusals by reason, the server's
warnings and errors); the series and summary go to ``--out`` (JSON) and the same path with
``.csv`` (one row per sample).

Usage (from the repository root; SIPp: ``apt-get install sip-tester``)::

    python -m bench.soak                          # 30 minutes at the default rates
    python -m bench.soak --quick                  # 1 minute, samples every 5 s: does it run?
    python -m bench.soak --minutes 60 --register-rate 50 --ws-calls 20 --out /tmp/soak.json
    python -m bench.soak --ws-voice-calls 0 --sip-voice-calls 0   # no models: media paths only

The load generators (SIPp, this process's websocket clients and probes) share the machine with
the server; the client's own CPU is printed so a saturated generator is seen, not hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench._common import cpu_seconds, free_port, process_tree, sipp_counts
from bench._soak_probes import Probes
from bench._soak_report import (
    LOAD_COUNTERS,
    ProbeWindow,
    format_row,
    header,
    machine,
    print_summary,
    summarize,
    write_outputs,
)
from sipserver.config import embedded_config_path
from tests.integration.media_stream_client import MediaStreamClient

HERE = Path(__file__).resolve().parent
REGISTER_SCENARIO = HERE / "sipp" / "reg_auth.xml"
CALL_SCENARIO = HERE / "sipp" / "call_rtp_hold.xml"
ECHO_NUMBER, ECHO_USER, ECHO_PASSWORD = "+15005550181", "echo", "echo-soak-password-1"
ECHO_SECRET = "echo-soak-websocket-secret-01"
PHONES_USER, PHONES_PASSWORD = "phones", "phones-soak-password-1"
VOICE_QUESTION = "Hello, what can you do for me?"


# --- the server ---------------------------------------------------------------------------------


def free_sip_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the SIP listeners share one)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for UDP and TCP")


def contact_number(i: int) -> str:
    return f"4421{i:07d}"


def build_config(args: argparse.Namespace, workdir: Path, voice: bool) -> dict[str, Any]:
    """The embedded default's server section on free ports, with the echo and phones agents; the
    demo agent (local voice models) is kept only when ``voice``."""
    embedded = embedded_config_path()
    config: dict[str, Any] = yaml.safe_load(embedded.read_text())
    sip_port, http_port = free_sip_port(), free_port(socket.SOCK_STREAM)
    admin_port = free_port(socket.SOCK_STREAM)
    sip_calls = args.sip_calls + args.sip_voice_calls
    concurrent = sip_calls + args.ws_calls + args.ws_voice_calls
    server_section_max_calls = args.max_calls if args.max_calls is not None else concurrent + 2
    # A pjsua2 worker holds 4 calls; a native call worker holds them all (one per core).
    workers = max(1, math.ceil(sip_calls / 4)) if args.engine == "pjsua2" else 2
    rtp_base = random.randrange(40000, 60000, 2)
    server = config["server"]
    server.update(
        http=f"127.0.0.1:{http_port}",
        admin_http=f"127.0.0.1:{admin_port}",  # /metrics is read here
        max_calls=server_section_max_calls,
        public_url=f"http://127.0.0.1:{http_port}",
        data_dir=str(workdir / "data"),
        workers=workers,
        media={
            "engine": args.engine,
            "min_workers": workers,
            "rtp_port_min": rtp_base,
            "rtp_port_max": rtp_base + 399,
        },
    )
    server["sip"].update(udp=[f"127.0.0.1:{sip_port}"], tcp=[f"127.0.0.1:{sip_port}"])
    agents: list[dict[str, Any]] = []
    for agent in config["agents"]:
        if voice:
            agent["knowledge_base"] = [str(embedded.parent / p) for p in agent["knowledge_base"]]
            agents.append(agent)
    agents.append(
        {
            "slug": "echo",
            "realtime": {"enabled": False},  # no model: the echo test line
            "sip": {
                "enabled": True,
                "numbers": [ECHO_NUMBER],
                "username": ECHO_USER,
                "password": ECHO_PASSWORD,
            },
            "websocket": {"enabled": True, "secret": ECHO_SECRET},
        }
    )
    agents.append(
        {
            "slug": "phones",
            "realtime": {"enabled": False},
            "sip": {
                "enabled": True,
                "numbers": [contact_number(i) for i in range(1, args.contacts + 1)],
                "username": PHONES_USER,
                "password": PHONES_PASSWORD,
            },
        }
    )
    config["agents"] = agents
    if not voice:
        config["models"] = {}
    return config


def voice_agent(config: dict[str, Any]) -> dict[str, Any]:
    """The demo agent of the embedded default (its number, SIP credentials, websocket secret)."""
    agent: dict[str, Any] = next(a for a in config["agents"] if a["slug"] == "demo")
    return agent


def metrics_urls(config: dict[str, Any]) -> list[str]:
    """Where ``/metrics`` may be served, in the order to try: the admin listener
    (``server.admin_http``, when the config has one) first, then the public HTTP listener.
    The one place that knows; :class:`MetricsReader` keeps the first that answers."""
    server = config["server"]
    urls = []
    admin = server.get("admin_http")
    if isinstance(admin, str) and admin:
        urls.append(f"http://{admin}/metrics")
    urls.append(f"http://{server['http']}/metrics")
    return urls


class MetricsReader:
    """Reads the server's Prometheus metrics (sums over labels, refusals kept by label)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def read(self) -> tuple[dict[str, float], dict[str, float]]:
        """(value of each sample name summed over its labels, refusals by ``ingress/reason``)."""
        last: Exception | None = None
        for url in list(self.urls):
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read().decode()
            except (OSError, urllib.error.URLError) as exc:
                last = exc
                continue
            self.urls = [url, *(u for u in self.urls if u != url)]
            totals: dict[str, float] = {}
            refusals: dict[str, float] = {}
            for family in text_string_to_metric_families(body):
                for sample in family.samples:
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
                    if sample.name == "sipserver_refusals_total":
                        key = f"{sample.labels.get('ingress')}/{sample.labels.get('reason')}"
                        refusals[key] = float(sample.value)
            return totals, refusals
        raise OSError(f"no /metrics at {self.urls}: {last}")


@dataclass
class Server:
    """The sipserver process under test."""

    config: dict[str, Any]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sip_port(self) -> int:
        return int(self.config["server"]["sip"]["udp"][0].rsplit(":", 1)[1])

    @property
    def http_url(self) -> str:
        return f"http://{self.config['server']['http']}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 180.0) -> float:
        """Spawn ``sipserver run`` and wait for ``/readyz`` 200; returns the seconds it took."""
        cfg = self.workdir / "sipserver.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipserver", "run", "-c", str(cfg), "--log-format", "json"],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipserver exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sipserver not ready in {timeout:.0f} s: see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_levels(self) -> tuple[Counter[str], Counter[str]]:
        """(lines per level, events of the warning and error lines) of the JSON log."""
        levels: Counter[str] = Counter()
        events: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                levels["unparsed"] += 1
                continue
            level = str(entry.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                events[f"{level}:{entry.get('event')}"] += 1
        return levels, events


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# --- load: SIPp ---------------------------------------------------------------------------------


class Sipp:
    """One SIPp process running for the whole soak; counts read from its statistics file."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        """SIPp's working directory (its pcap/ files, statistics, errors and stderr)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.stat = workdir / "stat.csv"
        self.log = workdir / "stderr.log"
        self.cmd = [
            "sipp", *args, "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
            "-nostdin", "-trace_stat", "-stf", str(self.stat), "-fd", "1",
            "-trace_err", "-error_file", str(workdir / "errors.log"),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._last = (0, 0)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def counts(self) -> tuple[int, int]:
        """(successful, failed) so far; the last good reading while the file is being written."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            self._last = sipp_counts(self.stat)
        return self._last

    def soft_stop(self) -> None:
        """No new calls; the calls in progress go on to their end (SIGUSR1: SIPp's soft exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def wait(self, timeout: float) -> int | None:
        """Wait for SIPp to exit, killing it after ``timeout`` seconds; its exit status."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout) if timeout > 0 else self.proc.wait(0.001)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def sipp_register(
    server: Server, workdir: Path, rate: float, contacts: int, seconds: float
) -> Sipp:
    """REGISTER with digest at ``rate``, cycling through the contacts (each one refreshed every
    contacts/rate seconds)."""
    sipp_dir = workdir / "sipp_register"
    sipp_dir.mkdir(parents=True, exist_ok=True)
    users = sipp_dir / "contacts.csv"
    lines = ["SEQUENTIAL", *(contact_number(i) for i in range(1, contacts + 1))]
    users.write_text("\n".join(lines) + "\n")
    return Sipp(
        sipp_dir,
        [
            f"127.0.0.1:{server.sip_port}", "-sf", str(REGISTER_SCENARIO),
            "-inf", str(users), "-au", PHONES_USER, "-ap", PHONES_PASSWORD,
            "-r", f"{rate:g}", "-l", str(max(10, int(rate * 2))),
            "-m", str(int(rate * seconds * 1.2) + 100), "-recv_timeout", "10000",
        ],
    )  # fmt: skip


def sipp_calls(
    sipp_dir: Path,
    server: Server,
    concurrent: int,
    hold: float,
    creds: tuple[str, str, str],
    audio: np.ndarray,
) -> Sipp:
    """``concurrent`` calls of ``hold`` seconds kept going (a new one as one ends), each playing
    ``audio`` (8 kHz int16) as PCMU RTP."""
    from tests.integration.rtp_signals import write_pcmu_pcap

    (sipp_dir / "pcap").mkdir(parents=True, exist_ok=True)
    write_pcmu_pcap(sipp_dir / "pcap" / "pcmu_tone.pcap", audio)  # the name the scenario plays
    number, user, password = creds
    return Sipp(
        sipp_dir,
        [
            f"127.0.0.1:{server.sip_port}", "-sf", str(CALL_SCENARIO),
            "-s", number, "-au", user, "-ap", password,
            "-auth_uri", f"{number}@127.0.0.1:{server.sip_port}",
            "-l", str(concurrent), "-r", str(concurrent), "-d", str(int(hold * 1000)),
            "-m", "100000000", "-recv_timeout", "15000",
        ],
    )  # fmt: skip


# --- load: websocket calls ----------------------------------------------------------------------


@dataclass
class WsTally:
    """What one kind of websocket call did (``refused``: 503 before the upgrade, or closed 1013
    after it; ``failures``: what went wrong, by kind)."""

    ok: int = 0
    failed: int = 0
    refused: int = 0
    frames: int = 0
    failures: Counter[str] = field(default_factory=Counter)


async def ws_call(
    http: aiohttp.ClientSession,
    url: str,
    seconds: float,
    tally: WsTally,
    sid: str,
    speech: np.ndarray | None = None,
) -> None:
    """One websocket call: start, real-time 20 ms frames for ``seconds``, stop, close."""
    try:
        ws = await asyncio.wait_for(http.ws_connect(url), 10)
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 503:
            tally.refused += 1
        else:
            tally.failed += 1
            tally.failures[f"handshake {exc.status}"] += 1
        await asyncio.sleep(1.0)  # as a Twilio retry would, not a tight loop
        return
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        tally.failed += 1
        tally.failures[type(exc).__name__] += 1
        await asyncio.sleep(1.0)
        return
    client = MediaStreamClient(ws, sid=sid)
    try:
        await client.start({"caller": "+14155550123"})
        if speech is not None:
            await asyncio.sleep(min(2.0, seconds / 3))  # after (the start of) the greeting
            client.say(speech)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), seconds)
        if client.closed.is_set():  # the server ended it early
            if client.close_code == 1013:
                tally.refused += 1
            else:
                tally.failed += 1
                tally.failures[f"closed {client.close_code} {client.close_reason}"[:60]] += 1
            await asyncio.sleep(1.0)  # no tight loop against a server that turns calls away
            return
        await client.stop()
        if client.close_code == 1000 and client.frames:
            tally.ok += 1
        else:
            tally.failed += 1
            tally.failures[f"stop: close {client.close_code}, {len(client.frames)} frames"] += 1
    except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
        tally.failed += 1
        tally.failures[type(exc).__name__] += 1
    finally:
        tally.frames += len(client.frames)
        await client.aclose()


async def ws_slot(
    http: aiohttp.ClientSession,
    url: str,
    seconds: float,
    tally: WsTally,
    stopping: asyncio.Event,
    ids: itertools.count[int],
    speech: np.ndarray | None = None,
) -> None:
    """Keeps one websocket call going until ``stopping``: a new call as the last one ends."""
    while not stopping.is_set():
        await ws_call(http, url, seconds, tally, f"MZsoak{next(ids):026d}", speech)


def question_audio(workdir: Path) -> np.ndarray | None:
    """The question voice calls ask (8 kHz int16), or None without espeak-ng and sox."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        return None
    from tests.speech import espeak

    return espeak(VOICE_QUESTION, workdir, rate=8000)


def tone(seconds: float) -> np.ndarray:
    """A 440 Hz PCMU-friendly tone (8 kHz int16): what the echo line's SIP callers send."""
    from tests.integration.rtp_signals import tone as make_tone

    return make_tone(seconds)


def voice_call_audio(speech: np.ndarray, seconds: float) -> np.ndarray:
    """What a SIP caller to the voice agent sends: 2 s of silence (the greeting), the question,
    silence to the end of the call."""
    total = int((seconds + 2) * 8000)
    audio = np.zeros(max(total, speech.size + 16000), dtype=np.int16)
    audio[16000 : 16000 + speech.size] = speech
    return audio


# --- sampling and the run -----------------------------------------------------------------------


@dataclass
class Load:
    """Everything that generates traffic, and the counters the sampler turns into deltas."""

    sipps: dict[str, Sipp]
    ws: dict[str, WsTally]
    probes: Probes
    previous: dict[str, float] = field(default_factory=dict)

    def totals(self) -> dict[str, float]:
        """Cumulative counts: :data:`LOAD_COUNTERS` (zero for a load that is not running)."""
        out = dict.fromkeys(LOAD_COUNTERS, 0.0)
        for name, sipp in self.sipps.items():
            ok, failed = sipp.counts()
            out[f"{name}_ok"], out[f"{name}_failed"] = ok, failed
        for name, tally in self.ws.items():
            out[f"{name}_ok"], out[f"{name}_failed"] = tally.ok, tally.failed
            out[f"{name}_refused"] = tally.refused
        return out


class Sampler:
    """Takes the rows: /proc figures of the server's process tree, its metrics, and what the
    load and the probes did since the previous row."""

    def __init__(self, server: Server, load: Load, metrics: MetricsReader) -> None:
        self.server, self.load, self.metrics = server, load, metrics
        assert server.proc is not None
        self.pid = server.proc.pid
        self.t0 = time.monotonic()
        self._cpu = (time.monotonic(), cpu_seconds(process_tree(self.pid)), time.process_time())

    def sample(self, phase: str) -> dict[str, Any]:
        """One row: process figures, metrics, the load's work and the probes since last time."""
        now = time.monotonic()
        tree = process_tree(self.pid)
        cpu = cpu_seconds(tree)
        own = time.process_time()
        t_prev, cpu_prev, own_prev = self._cpu
        self._cpu = (now, cpu, own)
        elapsed = max(1e-6, now - t_prev)
        row: dict[str, Any] = {
            "phase": phase,
            "t": round(now - self.t0, 1),
            "rss_mb": round(rss_kib(self.pid) / 1024, 1),
            "children_rss_mb": round(sum(rss_kib(p) for p in tree[1:]) / 1024, 1),
            "children": len(tree) - 1,
            "fds": open_fds(self.pid),
            "cpu_pct": round(100 * (cpu - cpu_prev) / elapsed, 1),
            "client_cpu_pct": round(100 * (own - own_prev) / elapsed, 1),
        }
        try:
            values, refusals = self.metrics.read()
            row.update(
                tasks=values.get("sipserver_event_loop_tasks"),
                calls_active=values.get("sipserver_calls_active"),
                ws_calls_active=values.get("sipserver_ws_calls_active"),
                voice_sessions=values.get("sipserver_voice_sessions_active"),
                registrations=values.get("sipserver_registrations_active"),
                refusals=sum(refusals.values()),
                refusals_by_reason=refusals,
            )
        except OSError as exc:
            row["metrics_error"] = str(exc)[:100]
        totals = self.load.totals()
        for key, value in totals.items():
            row[key] = int(value - self.load.previous.get(key, 0))
        self.load.previous = totals
        row["reg_per_s"] = round(row["reg_ok"] / elapsed, 1)
        row["sip_done"] = row["sip_ok"] + row["sip_voice_ok"]
        row["ws_done"] = row["ws_ok"] + row["ws_voice_ok"]
        row["errors"] = sum(row[k] for k in LOAD_COUNTERS if k.endswith("_failed"))
        for kind, window in self.load.probes.take().items():
            for name, value in window.figures().items():
                row[f"{kind}_{name}"] = value
            row["errors"] += window.timeouts + sum(window.errors.values())
        return row


@dataclass
class Run:
    """What a run measured: filled as it goes, so an interrupted run still reports."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    ws: dict[str, WsTally] = field(default_factory=lambda: {"ws": WsTally(), "ws_voice": WsTally()})
    probes: dict[str, ProbeWindow] = field(default_factory=dict)
    """Every probe outcome of the run, by kind."""


async def run_load(args: argparse.Namespace, server: Server, workdir: Path, run: Run) -> None:
    """Start every load, sample until the time is up, stop the load, sample once more."""
    sipps: dict[str, Sipp] = {}
    probes = Probes(server.sip_port, server.config["server"]["http"], args.probe_every)
    run.probes = probes.whole
    try:
        await _run_load(args, server, workdir, run, sipps, probes)
    finally:
        for sipp in sipps.values():
            sipp.wait(0)  # killed if still running (an interrupted run)
        if probes.is_alive():
            probes.stop()
        probes.take()


async def _run_load(
    args: argparse.Namespace,
    server: Server,
    workdir: Path,
    run: Run,
    sipps: dict[str, Sipp],
    probes: Probes,
) -> None:
    seconds = args.minutes * 60
    voice = args.sip_voice_calls > 0 or args.ws_voice_calls > 0
    if args.register_rate > 0:
        sipps["reg"] = sipp_register(server, workdir, args.register_rate, args.contacts, seconds)
    speech = question_audio(workdir) if voice else None
    if args.sip_calls > 0:
        creds = (ECHO_NUMBER, ECHO_USER, ECHO_PASSWORD)
        sipps["sip"] = sipp_calls(
            workdir / "sipp_echo", server, args.sip_calls, args.call_seconds, creds,
            tone(args.call_seconds + 2),
        )  # fmt: skip
    if args.sip_voice_calls > 0:
        demo = voice_agent(server.config)["sip"]
        creds = (demo["numbers"][0], demo["username"], demo["password"])
        sipps["sip_voice"] = sipp_calls(
            workdir / "sipp_voice", server, args.sip_voice_calls, args.call_seconds, creds,
            voice_call_audio(speech, args.call_seconds) if speech is not None
            else tone(args.call_seconds + 2),
        )  # fmt: skip
    ws = run.ws
    load = Load(sipps, ws, probes)
    sampler = Sampler(server, load, MetricsReader(metrics_urls(server.config)))
    samples = run.samples

    def record(phase: str) -> None:
        row = sampler.sample(phase)
        samples.append(row)
        print(format_row(row), flush=True)

    loop = asyncio.get_running_loop()
    probes.start()
    await asyncio.sleep(min(args.sample_every, 2.0))  # the idle row: ~20 probe rounds
    print(header(), flush=True)
    record("idle")
    for sipp in sipps.values():
        sipp.start()
    stopping = asyncio.Event()
    ids = itertools.count(1)
    ws_base = server.http_url.replace("http", "ws", 1)
    slots: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        echo_url = f"{ws_base}/ws/echo/{ECHO_SECRET}"
        for _ in range(args.ws_calls):
            slot = ws_slot(http, echo_url, args.call_seconds, ws["ws"], stopping, ids)
            slots.append(loop.create_task(slot))
        if args.ws_voice_calls > 0:
            demo_ws = voice_agent(server.config)["websocket"]
            voice_url = f"{ws_base}/ws/demo/{demo_ws['secret']}"
            for _ in range(args.ws_voice_calls):
                slot = ws_slot(
                    http, voice_url, args.call_seconds, ws["ws_voice"], stopping, ids, speech
                )
                slots.append(loop.create_task(slot))
        try:
            await _sample_until(args, server, seconds, record)
            # Stop: no new calls anywhere; the calls in progress end by themselves.
            stopping.set()
            grace = args.call_seconds + 30
            for sipp in sipps.values():
                sipp.soft_stop()
            sipps_done = asyncio.to_thread(lambda: {s.wait(grace) for s in sipps.values()})
            if slots:  # no websocket calls asked: nothing to wait for here
                await asyncio.wait(slots, timeout=grace)
            await sipps_done
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
    await drain(sampler)
    record("load")  # the last stretch of the load, so nothing is left uncounted
    await asyncio.sleep(args.sample_every)  # the after row: settled
    record("after")


async def _sample_until(
    args: argparse.Namespace, server: Server, seconds: float, record: Callable[[str], None]
) -> None:
    """A ``load`` row every ``--sample-every`` s until ``seconds`` are up or the server exits
    (the last stretch is recorded after the calls have ended)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    assert server.proc is not None
    while server.proc.poll() is None:
        await asyncio.sleep(max(0.0, min(args.sample_every, end - loop.time())))
        if loop.time() >= end - 0.5:
            return
        await asyncio.to_thread(record, "load")
    print(f"sipserver exited ({server.proc.returncode}): stopping", flush=True)


async def drain(sampler: Sampler, timeout: float = 60.0) -> None:
    """Wait (up to ``timeout``) for the server to report no call in progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            values, _ = await asyncio.to_thread(sampler.metrics.read)
        except OSError:
            return
        if not values.get("sipserver_calls_active") and not values.get("sipserver_ws_calls_active"):
            return
        await asyncio.sleep(0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--minutes", type=float, default=30.0, help="how long the load runs (default 30)")
    add("--quick", action="store_true", help="a check run: 1 minute, samples every 5 s")
    add("--register-rate", type=float, default=20.0, help="REGISTERs per second (default 20)")
    add("--contacts", type=int, default=1000, help="distinct AORs registered (default 1000)")
    add("--sip-calls", type=int, default=2, help="concurrent SIP calls to the echo line (2)")
    add("--sip-voice-calls", type=int, default=1, help="concurrent SIP calls to the demo agent (1)")
    add("--ws-calls", type=int, default=4, help="concurrent websocket calls to the echo line (4)")
    add(
        "--ws-voice-calls",
        type=int,
        default=1,
        help="concurrent websocket calls to the demo agent (1)",
    )
    add(
        "--max-calls",
        type=int,
        help="server.max_calls of the soaked server (default: the concurrent calls asked + 2, "
        "so the load is admitted; lower it to soak a server at capacity)",
    )
    add(
        "--engine",
        choices=("pjsua2", "native"),
        default="pjsua2",
        help="server.media.engine: pjsua2 media workers (sessions and models in the main "
        "process) or native call workers (media, sessions and models in the workers)",
    )
    add("--call-seconds", type=float, default=10.0, help="length of each call (default 10)")
    add("--probe-every", type=float, default=0.1, help="seconds between probe rounds (0.1)")
    add("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    add("--out", type=Path, help="JSON file for the series and summary (default ./soak-TIME.json)")
    add("--keep", type=Path, help="work in this directory and keep it (config, logs, SIPp stats)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.sample_every = 1.0, 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sipp") is None and (args.register_rate > 0 or args.sip_calls > 0):
        print("SIPp is required: apt-get install sip-tester", file=sys.stderr)
        return 2
    out = args.out or Path(f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json")
    voice = args.sip_voice_calls > 0 or args.ws_voice_calls > 0
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep.resolve()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        server = Server(build_config(args, workdir, voice), workdir)
        info = machine()
        print(
            f"soak: {args.minutes:g} min on {info['cores']} cores ({info['cpu']}), load average "
            f"{info['loadavg_at_start'][0]:.1f}; server in {workdir}",
            flush=True,
        )
        run, interrupted, ready = Run(), False, None
        try:
            ready = server.start()
            print(f"sipserver ready in {ready:.1f} s (voice agent: {voice})", flush=True)
            asyncio.run(run_load(args, server, workdir, run))
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: the summary covers what was measured", flush=True)
        finally:
            server.stop()
        levels, warnings = server.log_levels()
    samples = run.samples
    summary = summarize(samples, run.probes)
    summary.update(
        refusals=samples[-1].get("refusals_by_reason") if samples else None,
        ws_failures={n: dict(t.failures.most_common(5)) for n, t in run.ws.items() if t.failures},
        ws_frames_received={name: t.frames for name, t in run.ws.items()},
        log_levels=dict(levels),
        log_warnings=dict(warnings.most_common(10)),
        interrupted=interrupted,
        ready_seconds=None if ready is None else round(ready, 2),
    )
    print_summary(summary)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_outputs(out, {"settings": settings, "machine": info, "samples": samples,
                        "summary": summary})  # fmt: skip
    print(f"\nseries and summary: {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
