"""The console's configuration document: round-trip edits, masking, validation, atomic save,
conflicts and the audit log (sipserver/console/)."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sipserver.config import load_config
from sipserver.console.audit import CHANGED_SECRET, AuditLog, masked_diff
from sipserver.console.document import (
    ConfigDocument,
    Conflict,
    Invalid,
    NotFound,
    ReadOnly,
)
from sipserver.console.masking import MASK, BodyError, shown, written

ALICE_SECRET = "alice-websocket-secret-0123456789"
ENV = {"ALICE_PASSWORD": "alice-password-from-env", "OPENAI_KEY": "sk-test-key-0123456789"}

TEXT = """\
# The operator's file: these comments must survive the console.
server:
  public_url: http://127.0.0.1:8080   # where Twilio reaches us

credentials:
  openai:
    api_key: "${OPENAI_KEY}"   # from the environment

models:
  # the default model
  m:
    type: custom
    vad:
      activation_threshold: 0.5

agents:
  # Alice answers the sales line.
  - slug: alice
    name: Alice   # shown on the card
    sip:
      enabled: true
      numbers: ["+15005550101"]
      username: alice
      password: "${ALICE_PASSWORD}"
    websocket:
      enabled: true
      secret: "ALICE_SECRET"
  - slug: bob
    sip:
      enabled: true
      numbers:
        - "+15005550102"
      username: bob
      password: "bob-password-123"
""".replace("ALICE_SECRET", ALICE_SECRET)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sipserver.yaml"
    path.write_text(TEXT)
    return path


@pytest.fixture
def doc(config_file: Path) -> ConfigDocument:
    return ConfigDocument(config_file, env=ENV)


def test_get_masks_secrets_and_names_references(doc: ConfigDocument) -> None:
    alice = doc.get("agent", "alice")
    assert alice["sip"]["password"] == {"from_env": "ALICE_PASSWORD"}
    assert alice["websocket"]["secret"] == MASK
    assert alice["sip"]["numbers"] == ["+15005550101"]
    assert doc.get("agent", "bob")["sip"]["password"] == MASK
    assert doc.get("credential", "openai") == {"api_key": {"from_env": "OPENAI_KEY"}}
    assert ALICE_SECRET not in json.dumps(alice)
    assert doc.names("agent") == ["alice", "bob"]
    with pytest.raises(NotFound):
        doc.get("agent", "carol")


def test_a_put_keeps_comments_key_order_references_and_masked_secrets(
    doc: ConfigDocument, config_file: Path
) -> None:
    alice = doc.get("agent", "alice")
    alice["name"] = "Alice Smith"
    alice["sip"]["allowed_ips"] = ["192.0.2.0/24"]
    saved = doc.put("agent", "alice", alice)  # the masked secret and the reference sent back
    text = config_file.read_text()
    for comment in (
        "# The operator's file: these comments must survive the console.",
        "# where Twilio reaches us",
        "# from the environment",
        "# the default model",
        "# Alice answers the sales line.",
        "# shown on the card",
    ):
        assert comment in text
    assert 'password: "${ALICE_PASSWORD}"' in text
    assert f'secret: "{ALICE_SECRET}"' in text
    assert 'numbers: ["+15005550101"]' in text  # untouched flow list keeps its style
    assert text.index('name: "Alice Smith"') < text.index("sip:") < text.index("websocket:")
    assert saved.action == "replace"
    config = load_config(config_file, env=ENV)
    agent = config.agent_by_slug("alice")
    assert agent is not None and agent.name == "Alice Smith"
    assert agent.sip.password == ENV["ALICE_PASSWORD"]
    assert agent.websocket.secret == ALICE_SECRET
    assert agent.sip.allowed_ips == ["192.0.2.0/24"]
    # Nothing else changed: the rest of the file reads the same.
    before, after = yaml.safe_load(TEXT), yaml.safe_load(text)
    assert after["agents"][1] == before["agents"][1]
    assert after["models"] == before["models"] and after["server"] == before["server"]


def test_a_left_out_secret_is_kept_null_removes_a_value(doc: ConfigDocument) -> None:
    body = {"slug": "bob", "sip": {"enabled": True, "numbers": ["+15005550102"], "username": "bob"}}
    doc.put("agent", "bob", body)
    assert doc.raw("agent", "bob")["sip"]["password"] == "bob-password-123"
    assert doc.get("agent", "bob")["sip"]["password"] == MASK


def test_a_reference_stays_unless_replaced(doc: ConfigDocument, config_file: Path) -> None:
    alice = doc.get("agent", "alice")
    alice["sip"]["password"] = "a-brand-new-password"
    doc.put("agent", "alice", alice)
    assert doc.raw("agent", "alice")["sip"]["password"] == "a-brand-new-password"
    alice["sip"]["password"] = {"from_env": "ALICE_PASSWORD"}
    doc.put("agent", "alice", alice)
    assert '"${ALICE_PASSWORD}"' in config_file.read_text()


def test_create_quotes_new_strings_and_reads_back(doc: ConfigDocument, config_file: Path) -> None:
    carol = {
        "name": "on",  # YAML 1.1 would read an unquoted on as true
        "instructions": "Be brief.\nBe kind.",
        "sip": {
            "enabled": True,
            "numbers": ["+15005550103", "0123"],
            "username": "carol",
            "password": "carol-password-1",
        },
    }
    saved = doc.put("agent", "carol", carol)
    assert saved.action == "create"
    agent = load_config(config_file, env=ENV).agent_by_slug("carol")
    assert agent is not None
    assert agent.name == "on" and agent.sip.numbers == ["+15005550103", "0123"]
    assert agent.instructions == "Be brief.\nBe kind."
    assert doc.names("agent") == ["alice", "bob", "carol"]


def test_invalid_changes_name_the_key_and_leave_the_file(
    doc: ConfigDocument, config_file: Path
) -> None:
    alice = doc.get("agent", "alice")
    alice["sip"]["allowed_ips"] = ["10.0.0.0/8", "10.0.0.5"]
    with pytest.raises(Invalid) as caught:
        doc.put("agent", "alice", alice)
    locs = dict(caught.value.errors)
    assert "agents[0].sip.allowed_ips[1]" in locs
    assert "10.0.0.5/32" in locs["agents[0].sip.allowed_ips[1]"]
    assert config_file.read_text() == TEXT
    assert not (config_file.parent / "sipserver.yaml.bak").exists()
    # A rule across objects: bob's number on a new agent.
    with pytest.raises(Invalid) as caught:
        body = {"sip": {"enabled": True, "numbers": ["+15005550102"], "username": "dave"}}
        body["sip"]["password"] = "dave-password-1"
        doc.put("agent", "dave", body)
    assert "agents[2].sip.numbers[0]" in dict(caught.value.errors)
    # Deleting a model an agent uses is refused the same way.
    bob = {**doc.get("agent", "bob"), "realtime": {"enabled": True, "model": "m"}}
    doc.put("agent", "bob", bob)
    with pytest.raises(Invalid) as caught:
        doc.delete("model", "m")
    assert "agents[1].realtime.model" in dict(caught.value.errors)


def test_the_mask_where_no_secret_is_stored_is_refused(doc: ConfigDocument) -> None:
    body = {"sip": {"enabled": True, "username": "erin", "password": MASK}}
    with pytest.raises(Invalid) as caught:
        doc.put("agent", "erin", body)
    assert caught.value.errors[0][0] == "agents[2].sip.password"


def test_recording_and_webhooks_as_the_agent_page_edits_them(
    doc: ConfigDocument, config_file: Path
) -> None:
    """What the agent settings page relies on (agent.js): the webhook secret masked and kept
    when the URL changes, an entry left out removed, and a bad URL or short secret refused
    with the key path of its field."""
    hook_secret = "hook-secret-0123456789abcdef"
    alice = doc.get("agent", "alice")
    alice["recording"] = {"enabled": True, "channels": "mixed", "format": "wav"}
    alice["webhooks"] = {"call_ended": {"url": "https://crm.example/a", "secret": hook_secret}}
    doc.put("agent", "alice", alice)
    shown_now = doc.get("agent", "alice")
    assert shown_now["webhooks"]["call_ended"] == {"url": "https://crm.example/a", "secret": MASK}
    assert shown_now["recording"] == {"enabled": True, "channels": "mixed", "format": "wav"}

    shown_now["webhooks"]["call_ended"]["url"] = "https://crm.example/b"  # secret: the mask
    shown_now["webhooks"]["transcript"] = {"url": "ftp://x", "secret": "short"}
    shown_now["webhooks"]["call_started"] = {"secret": hook_secret}  # a secret, no URL
    with pytest.raises(Invalid) as caught:
        doc.put("agent", "alice", shown_now)
    locs = dict(caught.value.errors)
    assert "http://" in locs["agents[0].webhooks.transcript.url"]
    assert "at least 16" in locs["agents[0].webhooks.transcript.secret"]
    assert "agents[0].webhooks.call_started.url" in locs
    del shown_now["webhooks"]["transcript"], shown_now["webhooks"]["call_started"]
    doc.put("agent", "alice", shown_now)
    agent = load_config(config_file, env=ENV).agent_by_slug("alice")
    assert agent is not None and agent.webhooks.call_ended is not None
    assert agent.webhooks.call_ended.url == "https://crm.example/b"
    assert agent.webhooks.call_ended.secret == hook_secret  # kept through the mask
    assert agent.recording.format == "wav" and agent.recording.channels == "mixed"

    alice = doc.get("agent", "alice")
    del alice["webhooks"]  # the page removes an entry whose URL was emptied
    doc.put("agent", "alice", alice)
    assert hook_secret not in config_file.read_text()
    agent = load_config(config_file, env=ENV).agent_by_slug("alice")
    assert agent is not None and agent.webhooks.call_ended is None


def test_conflict_when_the_file_changed_on_disk(doc: ConfigDocument, config_file: Path) -> None:
    alice = doc.get("agent", "alice")
    loaded = doc.fingerprint
    config_file.write_text(TEXT.replace("name: Alice", "name: Alicia"))
    with pytest.raises(Conflict):
        doc.put("agent", "alice", alice)
    assert "Alicia" in config_file.read_text()
    # The document loaded the new file: a client that read it again may save...
    assert doc.get("agent", "alice")["name"] == "Alicia"
    # ...but one that still holds the old version is refused.
    with pytest.raises(Conflict):
        doc.put("agent", "alice", {**doc.get("agent", "alice"), "name": "A"}, expected=loaded)
    doc.put("agent", "alice", {**doc.get("agent", "alice"), "name": "A"}, expected=doc.fingerprint)


def test_save_keeps_a_backup_and_writes_0600(doc: ConfigDocument, config_file: Path) -> None:
    os.chmod(config_file, 0o644)
    saved = doc.delete("agent", "bob")
    backup = config_file.with_name("sipserver.yaml.bak")
    assert backup.read_text() == TEXT
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert "slug: bob" not in config_file.read_text()
    assert saved.action == "delete" and saved.after is None
    assert [p.name for p in config_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_symlinked_file_is_written_through(tmp_path: Path, config_file: Path) -> None:
    link = tmp_path / "link.yaml"
    link.symlink_to(config_file)
    doc = ConfigDocument(link, env=ENV)
    doc.put("model", "fast", {"type": "custom", "vad": {"sample_rate": 8000}})
    assert link.is_symlink() and "fast:" in config_file.read_text()


def test_models_and_credentials(doc: ConfigDocument, config_file: Path) -> None:
    doc.put("credential", "livekit", {"api_key": "lk-key", "api_secret": "lk-secret-value"})
    assert doc.get("credential", "livekit") == {"api_key": MASK, "api_secret": MASK}
    body = {
        "type": "livekit_inference",
        "credential": "livekit",
        "stt": "deepgram/nova-3:en",
        "llm": "openai/gpt-4o-mini",
        "tts": "cartesia/sonic-2",
    }
    doc.put("model", "lk", body)
    assert doc.get("model", "lk") == body
    with pytest.raises(Invalid) as caught:
        doc.put("model", "m", {"type": "custom", "vad": {"activation_threshold": 1.5}})
    assert "models.m.vad.activation_threshold" in dict(caught.value.errors)
    config = load_config(config_file, env=ENV)
    assert config.credentials["livekit"]["api_secret"] == "lk-secret-value"


def test_read_only_on_the_embedded_default() -> None:
    doc = ConfigDocument(None)
    assert "demo" in doc.names("agent")  # read from the embedded file
    assert doc.read_only_reason is not None and "-c FILE" in doc.read_only_reason
    with pytest.raises(ReadOnly):
        doc.put("model", "x", {"type": "custom"})


def test_the_audit_line_has_no_secret(tmp_path: Path, doc: ConfigDocument) -> None:
    audit = AuditLog(tmp_path / "data" / "console-audit.jsonl")
    alice = doc.get("agent", "alice")
    alice["websocket"]["secret"] = "a-new-websocket-secret-98765"
    alice["name"] = "Alice B"
    saved = doc.put("agent", "alice", alice)
    audit.append(
        user="root", role="admin", kind="agent", name="alice", action=saved.action,
        before=saved.before, after=saved.after,
    )  # fmt: skip
    line = (tmp_path / "data" / "console-audit.jsonl").read_text()
    assert ALICE_SECRET not in line and "a-new-websocket-secret-98765" not in line
    assert stat.S_IMODE((tmp_path / "data" / "console-audit.jsonl").stat().st_mode) == 0o600
    [record] = audit.read()
    assert record["user"] == "root" and record["kind"] == "agent" and record["name"] == "alice"
    assert record["action"] == "replace"
    assert "-name: Alice\n" in record["diff"] and "+name: Alice B\n" in record["diff"]
    assert f"+  secret: {CHANGED_SECRET}" in record["diff"]


def test_masking_round_trip_rules() -> None:
    stored = {"password": "${PW:-fallback-secret}", "url": "http://${HOST}:8080", "n": 1}
    view = shown("agent", stored)
    assert view == {
        "password": {"from_env": "PW", "default": MASK},
        "url": {"template": "http://${HOST}:8080"},
        "n": 1,
    }
    assert written("agent", view, stored) == stored
    assert written("agent", {"url": {"from_env": "URL"}}, stored)["url"] == "${URL}"
    with pytest.raises(BodyError):
        written("agent", {"url": {"from_env": "1BAD"}}, stored)
    assert "fallback-secret" not in masked_diff("agent", "x", stored, {**stored, "n": 2})


def test_new_objects_follow_the_files_indentation(tmp_path: Path) -> None:
    path = tmp_path / "four.yaml"
    original = (
        "models:\n    m:\n        type: custom\n"
        "agents:\n    - slug: a\n      sip:\n          enabled: false\n"
    )
    path.write_text(original)
    doc = ConfigDocument(path)
    doc.put("agent", "b", {"sip": {"enabled": False, "numbers": ["200"]}})
    text = path.read_text()
    added = '    - slug: "b"\n      sip:\n          enabled: false\n          numbers:\n'
    assert text.startswith(original) and text[len(original) :].startswith(added), text
    agent = load_config(path).agent_by_slug("b")
    assert agent is not None and agent.sip.numbers == ["200"]


_SAVER = """
import sys
from sipserver.console.document import ConfigDocument
doc = ConfigDocument(sys.argv[1], env={"ALICE_PASSWORD": "x" * 16, "OPENAI_KEY": "k"})
print("ready", flush=True)
i = 0
while True:
    i += 1
    alice = doc.get("agent", "alice")
    alice["name"] = "A" if i % 2 else "B"
    doc.put("agent", "alice", alice)
"""


def test_a_kill_during_saves_leaves_a_whole_file(config_file: Path) -> None:
    """SIGKILL a process that saves in a loop: the file is always the old or a new one."""
    names = set()
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(config_file)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        agent = load_config(config_file, env=ENV).agent_by_slug("alice")
        assert agent is not None and agent.name in ("Alice", "A", "B")
        names.add(agent.name)
        backup = config_file.with_name("sipserver.yaml.bak")
        if backup.exists():  # absent only when the kill came before the first save
            assert len(yaml.safe_load(backup.read_text())["agents"]) == 2
    assert names & {"A", "B"}  # the saves did run
    # A later save removes what the killed processes may have left half written.
    (config_file.parent / f".sipserver.yaml.{proc.pid}.1.tmp").write_text("agents: [")
    doc = ConfigDocument(config_file, env=ENV)
    doc.put("agent", "alice", doc.get("agent", "alice") | {"name": "C"})
    assert [p.name for p in config_file.parent.iterdir() if p.name.endswith(".tmp")] == []
