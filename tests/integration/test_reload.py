"""Config reload on a running server: `sipserver reload` and SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.integration.conftest import DEMO_PASSWORD, ServerProcess, run_sipp

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
    wait_for_reloads(server, "ok", 1)

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

    # A bare SIGHUP with the invalid file: logged, counted, old config kept.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_for_reloads(server, "invalid", 1)
    assert "config_reload_failed" in server.log_path.read_text()
    assert server.proc.poll() is None
    assert run_sipp("register.xml", server.sip_port).returncode == 0
