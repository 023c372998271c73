"""A stopped media worker (SIGSTOP: its process lives, nothing answers) is found by the frame
link's liveness check, killed and replaced; its call ends with a BYE to the caller and new
calls go to a healthy worker (issue [2/7]: it took ~21 s; the bound is now
server.media.worker_timeout + 0.5 s, 4.5 s by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_calls
from tests.integration.conftest import DEMO_PASSWORD, DEMO_USER, ServerProcess, sipp_command
from tests.integration.rtp_signals import tone, write_pcmu_pcap
from tests.integration.test_calls import NUMBER, edge_call, wait_metric

pytestmark = pytest.mark.integration

# Every test on both engines (pjsua2 media workers, native call workers): see test_calls.py.
engine = test_calls.engine
server_factory = test_calls.server_factory


def two_workers(config: dict[str, Any]) -> None:
    config["server"]["workers"] = 2
    config["server"]["media"] = {"min_workers": 2, "rtp_port_min": 32000, "rtp_port_max": 32599}


def still_stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def lost_event(server: ServerProcess, worker: str) -> dict[str, Any] | None:
    return next(
        (
            e
            for e in server.log_events()
            if e.get("event") == "media_worker_lost" and e.get("worker") == worker
        ),
        None,
    )


def test_a_stopped_worker_is_declared_lost_and_its_call_ended(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory(two_workers)
    wait_metric(server, "sipserver_media_workers_up", 2)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    command = sipp_command(
        "uac_edge_call_wait_bye.xml",
        server.sip_port,
        service=NUMBER,
        auth_user=DEMO_USER,
        password=DEMO_PASSWORD,
        workdir=tmp_path,
        timeout=60,
    )
    sipp = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL)
    victim: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while '"call_answered"' not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline and sipp.poll() is None, "the call was not answered"
            time.sleep(0.1)
        (victim,) = [w for w in server.get("/status")[1]["media_workers"] if w["calls"]]
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        deadline = stopped_at + 30  # generous: the bound (4.5 s) is measured, not asserted
        while (event := lost_event(server, victim["id"])) is None:
            assert time.monotonic() < deadline, "the stopped worker was never declared lost"
            time.sleep(0.05)
        print(f"stopped worker declared lost after {time.monotonic() - stopped_at:.2f} s")
        assert "frame link" in event["why"] and event["calls"] == 1
        # The caller got the edge's BYE (the scenario waits for it and answers 200).
        assert sipp.wait(timeout=60) == 0
    finally:
        if sipp.poll() is None:
            sipp.kill()
        if victim and still_stopped(victim["pid"]):  # never leave a stopped process behind
            os.kill(victim["pid"], signal.SIGKILL)
    assert server.metric("sipserver_calls_ended_total", reason="worker_lost") == 1
    unresponsive = [e for e in server.log_events() if e.get("event") == "media_worker_unresponsive"]
    assert [e["worker"] for e in unresponsive] == [victim["id"]]
    # New calls go to a healthy worker (the other one, or the replacement).
    edge_call(server, tmp_path)
    wait_metric(server, "sipserver_media_workers_up", 2)
