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
