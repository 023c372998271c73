"""Real-process fixtures: a sipserver subprocess on loopback ports and a SIPp runner."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp_scenarios"

DEMO_USER = "alice"
DEMO_PASSWORD = "alice-password-1"


async def until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms on the running loop: True as soon as it holds, False
    when ``timeout`` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


_handed_out: collections.deque[range] = collections.deque(maxlen=256)
"""Ports recently returned by :func:`free_port` (one-port ranges) and :func:`free_port_range`:
nothing is bound to them until the server or SIPp starts, so the kernel may offer the same
number again (a SIP port and an admin port of one test server were once equal), and several
SIPp callers of one test take their media ranges before any of them binds."""


def _overlaps_handed_out(start: int, count: int) -> bool:
    return any(start < r.stop and r.start < start + count for r in _handed_out)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1, not handed out lately."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if _overlaps_handed_out(port, 1):
            continue
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(range(port, port + 1))
        return port
    raise RuntimeError("no free port")


def free_port_range(count: int) -> int:
    """The first port of ``count`` UDP ports on 127.0.0.1 that are free now and overlap no
    port or range handed out lately (other tests and processes on the machine hold ports in
    the same span: a SIPp media port picked at random once collided, and SIPp exits when it
    cannot bind)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count, 2)
        if _overlaps_handed_out(base, count):
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        _handed_out.append(range(base, base + count))
        return base
    raise RuntimeError(f"no {count} free UDP ports in a row")


def base_config(
    sip_port: int, http_port: int, data_dir: Path, admin_port: int | None = None
) -> dict[str, Any]:
    """A small config: two agents on loopback, SQLite bindings under data_dir; the admin
    listener (/status, /metrics) on ``admin_port`` (a free one by default)."""
    admin_port = admin_port or free_port(socket.SOCK_STREAM)
    return {
        "server": {
            "public_host": "127.0.0.1",
            "public_url": f"http://127.0.0.1:{http_port}",
            "http": f"127.0.0.1:{http_port}",
            "admin_http": f"127.0.0.1:{admin_port}",
            "data_dir": str(data_dir),
            "sip": {
                "udp": [f"127.0.0.1:{sip_port}"],
                "tcp": [f"127.0.0.1:{sip_port}"],
                "ban": {"max_failures": 3, "window": 60, "duration": 120},
            },
        },
        "models": {"m": {"type": "custom"}},
        "agents": [
            {
                "slug": "alice",
                # No realtime model: the agent answers as an echo test line (chime + echo).
                "realtime": {"enabled": False},
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550101"],
                    "username": DEMO_USER,
                    "password": DEMO_PASSWORD,
                },
            },
            {
                "slug": "fenced",
                "sip": {
                    "enabled": True,
                    "numbers": ["+15005550102"],
                    "username": "fenced",
                    "password": "fenced-password-1",
                    "allowed_ips": ["192.0.2.0/24"],
                },
            },
        ],
    }


@dataclass
class ServerProcess:
    """A sipserver subprocess started from a config dict."""

    config: dict[str, Any]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    nofile: int | None = None
    """Open-file limit (soft and hard) of the process; None: inherited."""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    @property
    def sip_port(self) -> int:
        return int(self.config["server"]["sip"]["udp"][0].rsplit(":", 1)[1])

    @property
    def http_url(self) -> str:
        """The public listener (webhooks, websockets, dashboard, /healthz, /readyz)."""
        return f"http://{self.config['server']['http']}"

    @property
    def admin_url(self) -> str:
        """The admin listener (/status, /metrics): ``server.admin_http``, which :meth:`spawn`
        sets to a free loopback port when the test's config leaves it out (the default,
        127.0.0.1:8081, would be shared by every server the tests start)."""
        admin = self.config["server"].get("admin_http")
        assert admin, "this server has no admin listener (server.admin_http: null)"
        return f"http://{admin}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "sipserver.yaml"

    def spawn(self) -> None:
        """Start the process and return at once (see :meth:`wait_until`)."""
        cfg = self.config_file
        server = self.config.setdefault("server", {})
        server.setdefault("admin_http", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}")
        if server.get("media", {}).get("engine", "native") == "native":
            # One call worker unless the test asks for more: every native worker starts at once
            # (imports, loads and warms its models), and two cost a 2-core box with a busy core
            # ~1 s more per server start (1.6-2.5 s vs 2.6-3.6 s measured). pjsua2 starts one
            # media worker either way (min_workers).
            server.setdefault("workers", 1)
        cfg.write_text(yaml.safe_dump(self.config))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipserver", "run", "-c", str(cfg), "--log-format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=self._lower_nofile if self.nofile is not None else None,
        )

    def _lower_nofile(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, path: str = "/readyz") -> None:
        """Start the process and wait until ``path`` answers 200: ``/readyz`` (the default)
        once calls are taken, ``/healthz`` as soon as HTTP is up."""
        self.spawn()
        self.wait_until(path)

    def wait_until(self, path: str = "/readyz", timeout: float = 60.0) -> None:
        """Wait for ``GET path`` to answer 200. The deadline is generous for a loaded 2-core
        machine (a cold start takes seconds: bench/cold_start.py); it costs nothing when the
        server is quick."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipserver exited early:\n{self.log_path.read_text()}")
            if self.get(path)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"sipserver: {path} not 200 in {timeout} s:\n{self.log_path.read_text()}"
        )

    def get(self, path: str) -> tuple[int, Any]:
        """``(status, JSON body)`` of ``GET path``; ``(0, None)`` when HTTP is not up.
        ``/status`` and ``/metrics`` are asked of the admin listener, the rest of the public
        one."""
        admin = path.split("?")[0] in ("/status", "/metrics")
        base = self.admin_url if admin else self.http_url
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=2) as r:
                body = r.read()
                return int(r.status), json.loads(body) if body.startswith(b"{") else None
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return int(exc.code), json.loads(body) if body.startswith(b"{") else None
        except OSError:
            return 0, None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (``--log-format json``), parsed."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample from /metrics (0.0 when absent)."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


def spawn_server(workdir: Path, mutate: Any = None, *, nofile: int | None = None) -> ServerProcess:
    """A server from base_config (changed by ``mutate``) on free loopback ports, its config,
    log and data under ``workdir``, spawned and not waited for; the caller stops it. Servers
    running at the same time need a ``workdir`` each (their logs and data would mix)."""
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    config = base_config(sip_port, http_port, workdir / "data")
    if mutate is not None:
        mutate(config)
    server = ServerProcess(config, workdir, nofile=nofile)
    server.spawn()
    return server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def make(
        mutate: Any = None, *, wait: str | None = "/readyz", nofile: int | None = None
    ) -> ServerProcess:
        """A server from base_config (changed by ``mutate``), started and waited for until
        ``wait`` answers 200 (None: not waited for at all), with an open-file limit of
        ``nofile`` (soft and hard) when given."""
        server = spawn_server(tmp_path, mutate, nofile=nofile)
        started.append(server)
        if wait is not None:
            server.wait_until(wait)
        return server

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture
def server(server_factory: Any) -> ServerProcess:
    s: ServerProcess = server_factory()
    return s


@dataclass
class SippResult:
    returncode: int
    output: str


def sipp_path() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("SIPp is not installed (apt-get install sip-tester; scripts/test does it)")
    return path


def sipp_command(
    scenario: str,
    port: int,
    *,
    service: str = DEMO_USER,
    password: str = DEMO_PASSWORD,
    auth_user: str | None = None,
    transport: str = "udp",
    calls: int = 1,
    extra: tuple[str, ...] = (),
    workdir: Path | None = None,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
) -> list[str]:
    """The SIPp command line of :func:`run_sipp` (for tests that run SIPp in the background)."""
    remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [
        sipp_path(),
        remote,
        "-sf",
        str(SCENARIOS / scenario),
        "-s",
        service,
        "-au",
        auth_user or service,
        "-ap",
        password,
        "-i",
        host,
        "-p",
        str(free_port(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)),
        "-m",
        str(calls),
        "-t",
        "t1" if transport == "tcp" else "u1",
        "-timeout",
        f"{timeout:g}s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(_sipp_error_file(scenario, workdir)),
        *extra,
    ]


def _sipp_error_file(scenario: str, workdir: Path | None) -> Path:
    return (workdir or Path("/tmp")) / f"sipp_{scenario}_{os.getpid()}.err"


def run_sipp(
    scenario: str,
    port: int,
    *,
    workdir: Path | None = None,
    timeout: float = 15.0,
    **options: Any,
) -> SippResult:
    """Run one SIPp scenario from tests/sipp_scenarios against host:port (IPv4 or IPv6); the
    options are those of :func:`sipp_command`.

    ``timeout`` is SIPp's global ``-timeout`` (seconds): past it the scenario fails.
    """
    cmd = sipp_command(scenario, port, workdir=workdir, timeout=timeout, **options)
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout + 45, cwd=workdir)
    err_file = _sipp_error_file(scenario, workdir)
    errors = err_file.read_text(errors="replace") if err_file.exists() else ""
    return SippResult(proc.returncode, proc.stdout.decode(errors="replace") + errors)


def caller_args(
    sip_port: int,
    number: str,
    *,
    user: str,
    password: str,
    play: Path,
    record: Path,
    seconds: float,
    dtmf: str = "",
    wait_bye: float = 5.0,
    transport: str = "udp",
    srtp: str = "off",
    tls: tuple[str, ...] = (),
) -> list[str]:
    """The command line of tests/integration/pjsua2_caller.py calling ``number`` at the edge
    (``sip_port`` is the TLS listener's with ``transport="tls"``, or ``"sips"`` for a sips:
    URI over TLS; ``tls``: more options of the caller, e.g. ``("--tls-ca", path)``)."""
    uri = f"sip:{number}@127.0.0.1:{sip_port}"
    if transport == "sips":  # a SIPS URI: TLS, with sips: in the dialog (RFC 5630)
        uri, transport = f"sips:{number}@127.0.0.1:{sip_port}", "tls"
    elif transport != "udp":
        uri += f";transport={transport}"
    args = [
        sys.executable, str(Path(__file__).with_name("pjsua2_caller.py")),
        "--uri", uri, "--transport", transport, "--srtp", srtp, *tls,
        "--user", user, "--password", password,
        "--play", str(play), "--record", str(record),
        "--seconds", f"{seconds:.1f}", "--wait-bye", f"{wait_bye:g}",
    ]  # fmt: skip
    if dtmf:
        args += ["--dtmf", dtmf]
    return args


def place_call(*, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run the pjsua2 caller (see :func:`caller_args`); its JSON result line."""
    proc = subprocess.run(caller_args(**kwargs), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
