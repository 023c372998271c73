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


@pytest.mark.parametrize("command", ["run", "check-config", "agents", "models", "gen-secret"])
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


MODELS_YAML = """
credentials:
  openai: {api_key: sk-very-secret-1}
  lk: {api_key: lk-key-2, api_secret: lk-very-secret-3}
  partial: {api_key: lk-key-4}
models:
  hosted: {type: custom, credential: openai, llm: {provider: openai, model: gpt-4o-mini},
           tts: {provider: openai, voice: coral}}
  llama: {type: custom, llm: {provider: openai, base_url: "http://127.0.0.1:8081/v1", model: s}}
  nokey: {type: custom, stt: {provider: openai}}
  gateway: {type: livekit_inference, credential: lk, stt: "deepgram/nova-3:en",
            llm: openai/gpt-4o-mini, tts: "cartesia/sonic-3:voice-1"}
  half: {type: livekit_inference, credential: partial, stt: deepgram/nova-3,
         llm: openai/gpt-4o-mini, tts: cartesia/sonic-3}
agents:
  - {slug: support, realtime: {enabled: true, model: hosted}}
"""


def test_models_lists_types_providers_and_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS_YAML)
    assert main(["models", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hosted  (type custom; used by support)" in out
    assert "  stt  local  [credential: not needed]" in out
    assert "  llm  openai model=gpt-4o-mini  [credential: openai (ok)]" in out
    assert "  tts  openai voice=coral  [credential: openai (ok)]" in out
    assert "base_url=http://127.0.0.1:8081/v1  [credential: none (server without keys)]" in out
    assert "  stt  openai  [credential: missing (openai needs an api_key)]" in out
    assert "gateway  (type livekit_inference; used by no agent)" in out
    assert "  stt  deepgram/nova-3:en" in out and "  tts  cartesia/sonic-3:voice-1" in out
    assert "  credential lk (ok)" in out
    assert "  credential partial (no api_secret)" in out
    for secret in ("sk-very-secret-1", "lk-key-2", "lk-very-secret-3", "lk-key-4"):
        assert secret not in out


def test_check_config_names_a_bad_model_id(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MODELS_YAML.replace("openai/gpt-4o-mini,", "openai/gpt-4o-mini:latest,"))
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert (
        "models.gateway.llm: 'openai/gpt-4o-mini:latest' is not provider/model "
        "(e.g. openai/gpt-4o-mini)"
    ) in result.stderr


def test_run_refuses_a_model_it_cannot_build(tmp_path: Path) -> None:
    path = tmp_path / "nokey.yaml"
    path.write_text(
        "models: {m: {type: custom, llm: openai}}\n"
        "agents: [{slug: a, realtime: {enabled: true, model: m}}]\n"
        f"server: {{data_dir: {tmp_path}, http: '127.0.0.1:65000'}}\n"
    )
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2
    assert "cannot start: models.m.llm: needs a credential with api_key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("key", "where"),
    [("server.data_dir", "data_dir: {file}"), ("server.store", "store: 'sqlite://{file}/b.db'")],
)
def test_run_names_the_key_of_a_state_directory_it_cannot_create(
    tmp_path: Path, key: str, where: str
) -> None:
    """A state directory that cannot be made (here a file is in the way) stops the start with
    one line naming the key, before anything is bound."""
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    path = tmp_path / "state.yaml"
    setting = where.format(file=in_the_way)
    data_dir = "" if key == "server.data_dir" else f"data_dir: {tmp_path / 'data'}, "
    path.write_text(
        f"server: {{{data_dir}{setting}, http: '127.0.0.1:65000', sip: {{udp: [], tcp: []}}}}\n"
    )
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert f"cannot start: {key}: {in_the_way} exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


NUMERIC_PASSWORD_YAML = """
agents:
  - slug: a
    sip:
      enabled: true
      username: a
      password: 918273645501
"""


@pytest.mark.parametrize(
    "args",
    [("check-config", "{}"), ("run", "-c", "{}", "--log-format", "json"), ("reload", "-c", "{}")],
)
def test_an_unquoted_numeric_password_is_refused_and_never_printed(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "numeric.yaml"
    path.write_text(NUMERIC_PASSWORD_YAML)
    result = run_cli(*(arg.format(path) for arg in args))
    assert result.returncode in (1, 2)
    assert "agents[0].sip.password: must be a string" in result.stderr
    assert "put it in quotes" in result.stderr
    assert "918273645501" not in result.stdout + result.stderr


@pytest.mark.parametrize("model", ["livekit_multilingual", "livekit_english"])
def test_check_config_refuses_livekit_turn_models_before_run_would_crash(
    tmp_path: Path, model: str
) -> None:
    path = tmp_path / "turn.yaml"
    path.write_text(
        f"models: {{m: {{type: custom, turn_detection: {{model: {model}}}}}}}\n"
        "agents: [{slug: a, realtime: {enabled: true, model: m}}]\n"
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert "models.m.turn_detection.model:" in result.stderr
    assert "runs only inside a LiveKit Agents job" in result.stderr


def test_check_config_warns_about_a_knowledge_base_left_behind(tmp_path: Path) -> None:
    from sipserver.config import embedded_config_path

    copy = tmp_path / "sipserver.yaml"
    copy.write_text(embedded_config_path().read_text())
    result = run_cli("check-config", str(copy))
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "OK" in result.stdout and "1 warning(s)" in result.stdout
    assert (
        f"warning: agents[0].knowledge_base[0]: 'kb/demo/*.md' matches no file (looked for "
        f"{tmp_path / 'kb/demo/*.md'}"
    ) in result.stderr
