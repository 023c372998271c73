"""Calls through the edge to real pjsua2 media workers, placed by SIPp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DEMO_PASSWORD, DEMO_USER, ServerProcess, run_sipp
from tests.integration.test_pjsua2_worker import tone, write_pcmu_pcap

pytestmark = pytest.mark.integration

NUMBER = "+15005550101"  # agent "alice" in the test config


def wait_metric(server: ServerProcess, name: str, value: float, **labels: str) -> None:
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.metric(name, **labels) >= value:
            return
        time.sleep(0.1)
    pytest.fail(f"{name}{labels} never reached {value}:\n{server.log_path.read_text()[-3000:]}")


def test_authenticated_call_with_rtp_through_the_edge(
    server: ServerProcess, tmp_path: Path
) -> None:
    wait_metric(server, "sipserver_media_workers_up", 1)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    result = run_sipp(
        "uac_edge_call.xml",
        server.sip_port,
        service=NUMBER,
        auth_user=DEMO_USER,
        password=DEMO_PASSWORD,
        workdir=tmp_path,
        # SIPp's digest uri defaults to remote_ip:remote_port; make it the Request-URI.
        extra=("-auth_uri", f"{NUMBER}@127.0.0.1:{server.sip_port}"),
    )
    assert result.returncode == 0, result.output
    assert server.metric("sipserver_call_attempts_total", result="challenged") == 1
    assert server.metric("sipserver_call_attempts_total", result="routed") == 1
    wait_metric(server, "sipserver_calls_ended_total", 1, reason="caller_bye")
    assert server.metric("sipserver_calls_active") == 0


def test_unknown_number_is_404(server: ServerProcess, tmp_path: Path) -> None:
    result = run_sipp(
        "uac_call_rejected.xml", server.sip_port, service="+15009999999", workdir=tmp_path
    )
    assert result.returncode == 0, result.output
    assert server.metric("sipserver_call_attempts_total", result="no_such_number") == 1


def test_source_outside_cidr_cannot_call(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory()
    result = run_sipp(
        "uac_call_rejected.xml", server.sip_port, service="+15005550102", workdir=tmp_path
    )
    assert result.returncode == 0, result.output
    assert server.metric("sipserver_call_attempts_total", result="acl_denied") == 1


def test_killing_a_worker_ends_only_its_calls(server_factory: Any, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from tests.integration.conftest import SCENARIOS, free_port, sipp_path

    def two_workers(config: dict[str, Any]) -> None:
        config["server"]["workers"] = 2
        config["server"]["media"] = {"min_workers": 2, "rtp_port_min": 31000, "rtp_port_max": 31399}

    server = server_factory(two_workers)
    wait_metric(server, "sipserver_media_workers_up", 2)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    sipp = subprocess.Popen(
        [
            sipp_path(),
            f"127.0.0.1:{server.sip_port}",
            "-sf",
            str(SCENARIOS / "uac_edge_call_long.xml"),
            "-s",
            NUMBER,
            "-au",
            DEMO_USER,
            "-ap",
            DEMO_PASSWORD,
            "-auth_uri",
            f"{NUMBER}@127.0.0.1:{server.sip_port}",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port(socket.SOCK_DGRAM)),
            "-m",
            "4",
            "-l",
            "4",
            "-r",
            "4",
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_metric(server, "sipserver_calls_active", 4)
        with urllib.request.urlopen(f"{server.http_url}/status", timeout=5) as r:
            workers = json.load(r)["media_workers"]
        assert sorted(w["calls"] for w in workers) == [2, 2]
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        # The victim's two calls end at once (the edge sends BYE); the other two run their
        # full length and end with the caller's BYE.
        wait_metric(server, "sipserver_calls_ended_total", 2, reason="worker_lost")
        assert server.metric("sipserver_calls_ended_total", reason="caller_bye") == 0
        assert sipp.wait(timeout=40) == 0
    finally:
        if sipp.poll() is None:
            sipp.kill()
    assert server.metric("sipserver_calls_ended_total", reason="worker_lost") == 2
    assert server.metric("sipserver_calls_ended_total", reason="caller_bye") == 2
    # The pool starts a replacement and new calls go through.
    deadline = time.monotonic() + 20
    while server.metric("sipserver_media_workers_up") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("sipserver_media_workers_up") == 2
    result = run_sipp(
        "uac_edge_call.xml",
        server.sip_port,
        service=NUMBER,
        auth_user=DEMO_USER,
        password=DEMO_PASSWORD,
        workdir=tmp_path,
        extra=("-auth_uri", f"{NUMBER}@127.0.0.1:{server.sip_port}"),
    )
    assert result.returncode == 0, result.output
