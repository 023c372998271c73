"""Readiness and graceful stop of a real sipserver process, with SIPp as the caller.

Start-up: ``/healthz`` answers as soon as HTTP is up; ``/readyz`` answers 503 (naming what is
still starting) until a media worker said HELLO, and an INVITE in that window gets 503 with
Retry-After, never 480. To hold the window open for as long as the test needs, the test stops
the first worker process (SIGSTOP) before it says HELLO and lets it go on (SIGCONT) later: a
worker that is slow to boot, with nothing changed in the server.

Stop: from SIGTERM on, ``/readyz`` answers 503 ``draining`` and new INVITEs get 503; a call in
progress continues until it ends (within ``server.drain_timeout``) or is ended by the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sipserver.edge.router import RETRY_AFTER
from tests.integration import test_calls
from tests.integration.conftest import (
    DEMO_PASSWORD,
    DEMO_USER,
    ServerProcess,
    run_sipp,
    sipp_command,
)
from tests.integration.rtp_signals import tone, write_pcmu_pcap
from tests.integration.test_calls import NUMBER, edge_call, wait_metric

pytestmark = pytest.mark.integration

# Every test on both engines (pjsua2 media workers, native call workers): see test_calls.py.
engine = test_calls.engine
server_factory = test_calls.server_factory


def _worker_pids(parent: int) -> list[int]:
    """Media worker processes whose parent is ``parent``, read from /proc (not from the
    server's /status, which its event loop answers late while it loads the models)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent and (b"pjsua2_worker" in cmdline or b"call_worker" in cmdline):
            pids.append(int(stat.parent.name))
    return pids


def frozen_worker(server: ServerProcess) -> int:
    """SIGSTOP the first media worker before it says HELLO; its pid."""
    assert server.proc is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = _worker_pids(server.proc.pid)
        if pids:
            os.kill(pids[0], signal.SIGSTOP)
            # Had it said HELLO already, the premise of the test would not hold.
            assert not server.get("/status")[1]["media_workers"][0]["up"]
            return pids[0]
        time.sleep(0.005)
    pytest.fail(f"no media worker process appeared:\n{server.log_path.read_text()[-3000:]}")


def unavailable_call(server: ServerProcess, workdir: Path) -> str:
    """An INVITE that must get 503 + Retry-After (uac_call_unavailable.xml); SIPp's log."""
    log = workdir / "sipp_unavailable.log"
    log.unlink(missing_ok=True)
    result = run_sipp(
        "uac_call_unavailable.xml",
        server.sip_port,
        service=NUMBER,
        workdir=workdir,
        extra=("-trace_logs", "-log_file", str(log)),
    )
    assert result.returncode == 0, result.output
    return log.read_text()


def test_calls_wait_for_the_first_media_worker(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(wait="/healthz")
    pid = frozen_worker(server)
    try:
        deadline = time.monotonic() + 30
        while (report := server.get("/readyz"))[1]["waiting_for"] != ["media_workers"]:
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        status, body = report
        assert status == 503
        assert body["status"] == "starting" and not body["ready"]
        assert server.get("/healthz")[0] == 200  # alive, not ready
        assert server.metric("sipserver_ready") == 0

        log = unavailable_call(server, tmp_path)
        assert f"retry_after={RETRY_AFTER}" in log
        assert 'warning=399 sipserver "starting"' in log
        assert server.metric("sipserver_call_attempts_total", result="starting") == 1
        assert server.metric("sipserver_call_attempts_total", result="no_worker") == 0
    finally:
        os.kill(pid, signal.SIGCONT)

    server.wait_until("/readyz")
    assert server.get("/readyz") == (
        200,
        {"status": "ready", "ready": True, "waiting_for": [], "media_workers_up": 1, "calls": 0},
    )
    assert server.metric("sipserver_ready") == 1
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    edge_call(server, tmp_path)
    assert server.metric("sipserver_call_attempts_total", result="routed") == 1
    # "ready" is logged once, when the worker's HELLO made the server ready (the server waits
    # for that change; it does not poll).
    (ready,) = log_events(server, "ready")
    assert ready["seconds"] > 0


def long_call(server: ServerProcess, workdir: Path) -> subprocess.Popen[bytes]:
    """A 10 s call through the edge (uac_edge_call_long.xml) in the background; SIPp writes
    every message to ``workdir/long_messages.log``."""
    (workdir / "pcap").mkdir(exist_ok=True)
    write_pcmu_pcap(workdir / "pcap" / "pcmu_tone.pcap", tone(3.0))
    cmd = sipp_command(
        "uac_edge_call_long.xml",
        server.sip_port,
        service=NUMBER,
        auth_user=DEMO_USER,
        password=DEMO_PASSWORD,
        workdir=workdir,
        timeout=40,
        extra=(
            "-auth_uri",
            f"{NUMBER}@127.0.0.1:{server.sip_port}",
            "-trace_msg",
            "-message_file",
            str(workdir / "long_messages.log"),
        ),
    )
    sipp = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_metric(server, "sipserver_calls_active", 1)
    return sipp


def log_events(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in server.log_events() if e.get("event") == name]


def with_drain_timeout(seconds: float) -> Any:
    def mutate(config: dict[str, Any]) -> None:
        config["server"]["drain_timeout"] = seconds

    return mutate


@pytest.mark.slow
def test_sigterm_drains_calls_in_progress_and_refuses_new_ones(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory(with_drain_timeout(60))
    sipp = long_call(server, tmp_path)
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (report := server.get("/readyz"))[1]["status"] != "draining":
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        assert report == (
            503,
            {
                "status": "draining",
                "ready": False,
                "waiting_for": [],
                "media_workers_up": 1,
                "calls": 1,
            },
        )
        log = unavailable_call(server, tmp_path)
        assert 'warning=399 sipserver "draining"' in log
        assert server.metric("sipserver_call_attempts_total", result="draining") == 1
        # The call in progress goes on: the caller ends it with its own BYE after 10 s.
        assert sipp.wait(timeout=40) == 0, sipp.stderr.read() if sipp.stderr else ""
        assert server.proc.wait(timeout=30) == 0
    finally:
        if sipp.poll() is None:
            sipp.kill()
    (ended,) = log_events(server, "call_ended")
    assert ended["reason"] == "caller_bye"
    (drained,) = log_events(server, "drained")
    assert drained["calls_left"] == 0


def test_drain_timeout_ends_the_calls_left(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(with_drain_timeout(1))
    sipp = long_call(server, tmp_path)
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        assert sipp.wait(timeout=40) == 0, sipp.stderr.read() if sipp.stderr else ""
    finally:
        if sipp.poll() is None:
            sipp.kill()
    (drained,) = log_events(server, "drained")
    assert drained["calls_left"] == 1
    # The worker hung up as it stopped and the edge, still listening, relayed its BYE: the
    # caller got a BYE (and did not have to send its own).
    messages = (tmp_path / "long_messages.log").read_text()
    assert re.search(r"message received \[\d+\] bytes :\s+BYE sip:", messages), messages[-3000:]
    assert not re.search(r"message sent \(\d+ bytes\):\s+BYE sip:", messages)
