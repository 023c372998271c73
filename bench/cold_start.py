"""Cold start: how long from ``sipserver run`` until a call is answered.

Each run starts ``python -m sipserver run`` with the embedded default configuration (the demo
agent on its local voice models: Whisper, Piper, Smart Turn, Silero) on free loopback ports and
a fresh data directory, and measures from the moment the process is spawned:

- ``healthz``: ``GET /healthz`` answers 200 (the process is alive, HTTP is up);
- ``readyz``: ``GET /readyz`` answers 200 (listeners bound, models loaded, a media worker up);
- ``answered``: the first INVITE answered 200 OK. From the spawn on, the script sends a new
  INVITE to the demo number every 100 ms (the agent takes calls from 127.0.0.1 without digest
  here, so one INVITE is one attempt) and counts the answers: 503 (starting) until the server
  is ready, never 480. The answered call is ACKed and hung up;
- ``stop``: SIGTERM to exit, sent once the call ended (nothing to drain).

Usage::

    python bench/cold_start.py               # 5 runs
    python bench/cold_start.py --runs 10

Run it from a checkout (``PYTHONPATH=$PWD`` to measure the working tree rather than an installed
copy). The first run after a boot also reads the models from disk; later runs find them in the
page cache. Prints one line per run and the median and range.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _common import free_port

from sipserver.config import embedded_config_path
from sipserver.sip.message import SipParseError, SipResponse, parse_message

NUMBER = "+15005550100"  # the demo agent's number in the embedded config
PROBE_EVERY = 0.1
DEADLINE = 120.0


def bench_config(sip_port: int, http_port: int, data_dir: Path) -> dict[str, Any]:
    """The embedded default on other ports, with the demo agent open to 127.0.0.1 without
    digest (so a raw INVITE is a call attempt) and its knowledge base found where it lives."""
    embedded = embedded_config_path()
    config: dict[str, Any] = yaml.safe_load(embedded.read_text())
    server = config["server"]
    server.update(
        public_url=f"http://127.0.0.1:{http_port}",
        http=f"127.0.0.1:{http_port}",
        admin_http=None,  # only /healthz and /readyz are read
        data_dir=str(data_dir),
    )
    server["sip"].update(udp=[f"127.0.0.1:{sip_port}"], tcp=[])
    for agent in config["agents"]:
        agent["knowledge_base"] = [str(embedded.parent / p) for p in agent["knowledge_base"]]
        agent["sip"].update(allowed_ips=["127.0.0.1/32"], invite_auth="ip")
    return config


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Caller:
    """A bare SIP UAC on UDP: INVITE attempts, and ACK + BYE for the one answered."""

    def __init__(self, edge: tuple[str, int]) -> None:
        self.edge = edge
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ids = itertools.count(1)
        self.open_calls: set[str] = set()
        """Calls answered and not yet hung up (BYE sent and answered)."""

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()

    def _send(self, lines: list[str], body: str = "") -> None:
        head = [*lines, f"Content-Length: {len(body.encode())}", "", ""]
        self.sock.sendto(("\r\n".join(head) + body).encode(), self.edge)

    def invite(self) -> None:
        n = next(self.ids)
        host, port = self.edge
        sdp = "\r\n".join(
            [
                "v=0",
                f"o=bench {n} 1 IN IP4 127.0.0.1",
                "s=-",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "",
            ]
        )
        self._send(
            [
                f"INVITE sip:{NUMBER}@{host}:{port} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-cold-{n};rport",
                "Max-Forwards: 70",
                f"From: <sip:bench@127.0.0.1>;tag=cold{n}",
                f"To: <sip:{NUMBER}@{host}:{port}>",
                f"Call-ID: cold-{n}@bench",
                "CSeq: 1 INVITE",
                f"Contact: <sip:bench@127.0.0.1:{self.port}>",
                "Content-Type: application/sdp",
            ],
            sdp,
        )

    def responses(self) -> list[SipResponse]:
        """Responses received so far; a 200 to a BYE closes its call."""
        out: list[SipResponse] = []
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return out
            try:
                message = parse_message(data)
            except SipParseError:
                continue
            if isinstance(message, SipResponse):
                if message.cseq[1] == "BYE" and message.status >= 200:
                    self.open_calls.discard(message.call_id)
                out.append(message)

    def in_dialog(self, ok: SipResponse, method: str, cseq: int) -> None:
        """ACK or BYE for the dialog of a 200 OK (route set: its Record-Route, reversed)."""
        contact = ok.headers.get("Contact") or ""
        target = contact[contact.find("<") + 1 : contact.find(">")]
        routes = [f"Route: {r}" for r in reversed(ok.headers.get_all("Record-Route"))]
        if method == "ACK":
            self.open_calls.add(ok.call_id)
        n = next(self.ids)
        self._send(
            [
                f"{method} {target} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-cold-{n};rport",
                "Max-Forwards: 70",
                *routes,
                f"From: {ok.headers.get('From')}",
                f"To: {ok.headers.get('To')}",
                f"Call-ID: {ok.call_id}",
                f"CSeq: {cseq} {method}",
            ]
        )

    def ack_failure(self, resp: SipResponse) -> None:
        """ACK of a non-2xx final response: same branch as the INVITE (RFC 3261 §17.1.1.3)."""
        host, port = self.edge
        self._send(
            [
                f"ACK sip:{NUMBER}@{host}:{port} SIP/2.0",
                f"Via: {resp.headers.get('Via')}",
                "Max-Forwards: 70",
                f"From: {resp.headers.get('From')}",
                f"To: {resp.headers.get('To')}",
                f"Call-ID: {resp.call_id}",
                "CSeq: 1 ACK",
            ]
        )


def one_run(workdir: Path) -> dict[str, Any]:
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    config_file = workdir / "sipserver.yaml"
    config_file.write_text(yaml.safe_dump(bench_config(sip_port, http_port, workdir / "data")))
    caller = Caller(("127.0.0.1", sip_port))
    url = f"http://127.0.0.1:{http_port}"
    log = (workdir / "server.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipserver", "run", "-c", str(config_file), "--log-format", "json"],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    found: dict[str, Any] = {"503": 0, "480": 0, "other": 0}
    next_probe = t0
    try:
        while "answered" not in found:
            now = time.monotonic()
            if now - t0 > DEADLINE or proc.poll() is not None:
                raise RuntimeError(f"no call answered:\n{(workdir / 'server.log').read_text()}")
            if "healthz" not in found and http_status(f"{url}/healthz") == 200:
                found["healthz"] = time.monotonic() - t0
            if "healthz" in found and "readyz" not in found:
                status = http_status(f"{url}/readyz")
                if status in (200, 404):  # 404: a version without /readyz
                    found["readyz"] = time.monotonic() - t0 if status == 200 else float("nan")
            if now >= next_probe:
                caller.invite()
                next_probe = now + PROBE_EVERY
            for resp in caller.responses():
                if resp.status < 200 or resp.cseq[1] != "INVITE":
                    continue
                if resp.status == 200 and "answered" not in found:
                    found["answered"] = time.monotonic() - t0
                    caller.in_dialog(resp, "ACK", 1)
                    caller.in_dialog(resp, "BYE", 2)
                elif resp.status >= 300:
                    key = str(resp.status) if resp.status in (480, 503) else "other"
                    found[key] += 1
                    caller.ack_failure(resp)
            time.sleep(0.01)
        # Calls end with the 200 to their BYE (an INVITE sent just before the answer may be
        # answered too): then nothing is left to drain at SIGTERM.
        bye_deadline = time.monotonic() + 10
        while caller.open_calls:
            if time.monotonic() > bye_deadline:
                raise RuntimeError(f"BYE unanswered:\n{(workdir / 'server.log').read_text()}")
            for resp in caller.responses():
                if resp.cseq[1] == "INVITE" and resp.status == 200:
                    caller.in_dialog(resp, "ACK", 1)
                    caller.in_dialog(resp, "BYE", 2)
            time.sleep(0.01)
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        found["stop"] = time.monotonic() - stop_at
    finally:
        caller.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return found


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep each run's config and server log here")
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("run  healthz  readyz  answered  503s  480s  stop   (s from spawn; stop: s from SIGTERM)")
    runs = []
    for i in range(1, args.runs + 1):
        if args.keep is not None:
            workdir = args.keep / f"run{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            r = one_run(workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="sipserver-cold-") as tmp:
                r = one_run(Path(tmp))
        runs.append(r)
        print(
            f"{i:>3}  {r['healthz']:7.2f}  {r['readyz']:6.2f}  {r['answered']:8.2f}  "
            f"{r['503']:4d}  {r['480']:4d}  {r['stop']:5.2f}"
            + (f"   other failures: {r['other']}" if r["other"] else "")
        )
    for key in ("healthz", "readyz", "answered", "stop"):
        values = [r[key] for r in runs]
        print(
            f"{key:>9}: median {statistics.median(values):.2f} s, "
            f"range {min(values):.2f}-{max(values):.2f} s"
        )
    return 1 if any(r["480"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
