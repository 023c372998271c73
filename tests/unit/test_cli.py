"""The command line, run as the console script would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sipserver.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipserver", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_accepts_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    from sipserver.config import embedded_config_path

    assert main(["check-config", str(embedded_config_path())]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_prints_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
agents:
  - slug: Bad_Slug
    sip:
      enabled: true
      numbers: ["12ab"]
      username: u
      password: p
      allowed_ips: ["10.0.0.5"]
    websocket: {enabled: true, secret: short}
"""
    )
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    err = result.stderr
    assert "agents[0].slug" in err
    assert "agents[0].sip.numbers[0]" in err
    assert "agents[0].sip.allowed_ips[0]: '10.0.0.5' is not CIDR; did you mean 10.0.0.5/32?" in err
    assert "agents[0].websocket.secret" in err


def test_check_config_names_missing_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "env.yaml"
    cfg.write_text(
        "agents:\n  - slug: a\n    sip:\n      enabled: true\n      username: a\n"
        "      password: ${SIPSERVER_TEST_UNSET_VAR}\n"
    )
    result = run_cli("check-config", str(cfg))
    assert result.returncode == 1
    assert "agents[0].sip.password" in result.stderr
    assert "SIPSERVER_TEST_UNSET_VAR" in result.stderr


def test_agents_prints_numbers_and_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agents"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "ws://127.0.0.1:8080/ws/demo/" in out
    assert "http://127.0.0.1:8080/incoming-call/demo/" in out


def test_gen_secret_is_long_and_url_safe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen-secret"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["gen-secret", "--length", "64"]) == 0
    second = capsys.readouterr().out.strip()
    assert len(first) >= 32 and len(second) == 64
    assert first != second[: len(first)]
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert set(first) <= allowed and set(second) <= allowed


def test_gen_secret_refuses_short_length() -> None:
    result = run_cli("gen-secret", "--length", "8")
    assert result.returncode == 2
    assert "at least 32" in result.stderr


@pytest.mark.parametrize("command", ["run", "check-config", "agents", "gen-secret"])
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage: sipserver" in result.stdout


def test_run_with_bad_config_exits_with_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  http: nonsense\n")
    result = run_cli("run", "-c", str(bad))
    assert result.returncode == 2
    assert "server.http" in result.stderr


def test_docker_config_validates_without_environment() -> None:
    from sipserver.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "config" / "examples" / "docker.yaml", env={})
    assert config.server.sip.udp == ["0.0.0.0:5060"]
    assert config.server.http == "0.0.0.0:8080"
    custom = load_config(
        root / "config" / "examples" / "docker.yaml",
        env={"PUBLIC_URL": "https://voice.example.com", "SIP_PASSWORD": "s3cret-s3cret"},
    )
    assert custom.server.public_url == "https://voice.example.com"
    assert custom.agents[0].sip.password == "s3cret-s3cret"
