"""Config reload on a running server: `sipserver reload` and SIGHUP, with SIPp calls."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import DEMO_PASSWORD, ServerProcess, run_sipp
from tests.integration.rtp_signals import tone, write_pcmu_pcap
from tests.integration.test_calls import edge_call

pytestmark = pytest.mark.integration


def reload_cli(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipserver", "reload", "-c", str(server.config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=server.workdir,
    )


def wait_for_reloads(server: ServerProcess, result: str, count: float) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.metric("sipserver_config_reloads_total", result=result) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"no {result} reload seen:\n{server.log_path.read_text()[-2000:]}")


def test_reload_changes_credentials_and_keeps_bindings(server: ServerProcess) -> None:
    assert run_sipp("register.xml", server.sip_port).returncode == 0
    server.config["agents"][0]["sip"]["password"] = "rotated-password-2"
    server.config_file.write_text(yaml.safe_dump(server.config))

    result = reload_cli(server)
    assert result.returncode == 0, result.stderr
    assert "SIGHUP" in result.stdout
    assert "applied: agents" in result.stdout
    assert server.metric("sipserver_config_reloads_total", result="ok") == 1

    # The old password is refused, the new one works, the earlier binding is still there.
    assert (
        run_sipp("register_rejected.xml", server.sip_port, password=DEMO_PASSWORD).returncode == 0
    )
    assert server.metric("sipserver_registrations_active") == 1
    assert run_sipp("register.xml", server.sip_port, password="rotated-password-2").returncode == 0


def test_invalid_config_is_refused_and_the_server_keeps_running(server: ServerProcess) -> None:
    good = server.config_file.read_text()
    server.config_file.write_text(good.replace("alice-password-1", "${SIPSERVER_UNSET_FOR_TEST}"))

    # `sipserver reload` validates first and does not signal.
    result = reload_cli(server)
    assert result.returncode == 1
    assert "agents[0].sip.password" in result.stderr
    assert "SIPSERVER_UNSET_FOR_TEST" in result.stderr

    # A bare SIGHUP with the invalid file: logged, counted, old config kept, and the result
    # file (what `sipserver reload` reads) says nothing was applied, naming the key.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_for_reloads(server, "invalid", 1)
    assert "config_reload_failed" in server.log_path.read_text()
    record = json.loads(
        (Path(server.config["server"]["data_dir"]) / "reload-result.json").read_text()
    )
    assert record["applied"] is False
    assert any("agents[0].sip.password" in e for e in record["errors"])
    assert server.proc.poll() is None
    assert run_sipp("register.xml", server.sip_port).returncode == 0


def no_sip_agents(config: dict[str, Any]) -> None:
    for agent in config["agents"]:
        agent["sip"]["enabled"] = False


def test_first_sip_agent_added_by_reload_answers_calls(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(no_sip_agents)
    assert server.get("/status")[1]["media_workers"] == []  # nobody takes SIP calls: no pool

    server.config["agents"][0]["sip"]["enabled"] = True
    server.config_file.write_text(yaml.safe_dump(server.config))
    result = reload_cli(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied: agents" in result.stdout
    assert "media worker pool started" in result.stdout

    # Until its first worker is up the server is not ready (calls would get 503, not 480).
    server.wait_until("/readyz", timeout=60)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    edge_call(server, tmp_path)
    assert server.metric("sipserver_call_attempts_total", result="routed") == 1
    assert server.metric("sipserver_call_attempts_total", result="no_worker") == 0


def test_reload_names_what_needs_a_restart_and_applies_public_host(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.config["server"]["public_host"] = "edge.example.test"
    server.config["server"]["media"] = {"answer_delay": 0.5}
    server.config["server"]["sip"]["tcp"] = []
    server.config_file.write_text(yaml.safe_dump(server.config))
    result = reload_cli(server)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "applied: server.public_host" in result.stdout
    restart_line = next(line for line in result.stdout.splitlines() if "needs a restart" in line)
    assert restart_line.endswith("server.sip.tcp, server.media.answer_delay")
    assert "config_reload_needs_restart" in server.log_path.read_text()

    # public_host is in force: a new call is record-routed with it. The TCP listener (needs a
    # restart) still answers.
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    messages = tmp_path / "messages.log"
    edge_call(server, tmp_path, trace=messages)
    record_routes = re.findall(r"^Record-Route: (.*)$", messages.read_text(), re.MULTILINE)
    outside = f"<sip:edge.example.test:{server.sip_port};transport=udp;lr;r2=on>"
    assert any(outside in rr for rr in record_routes), record_routes
    assert run_sipp("register.xml", server.sip_port, transport="tcp").returncode == 0
