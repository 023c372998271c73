"""``sipserver init [DIR]``: the embedded default and its knowledge base are written to DIR, the
result validates and finds its knowledge base, and nothing is overwritten without --force."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sipserver.cli import main
from sipserver.config import embedded_config_path, load_config
from sipserver.console import starter
from sipserver.pipeline.knowledge import knowledge_base_warnings


def test_init_writes_the_default_config_and_its_knowledge_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "new" / "site"
    assert main(["init", str(target)]) == 0
    config_file = target / "sipserver.yaml"
    assert config_file.read_bytes() == embedded_config_path().read_bytes()
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    kb = sorted(p.name for p in (target / "kb" / "demo").iterdir())
    shipped = sorted(p.name for p in (embedded_config_path().parent / "kb" / "demo").iterdir())
    assert kb == shipped and "pricing.md" in kb
    config = load_config(config_file)
    assert config.agents[0].knowledge_base == ["kb/demo/*.md"]
    assert knowledge_base_warnings(config, target) == []  # the copied documents are found
    empty = tmp_path / "empty"
    empty.mkdir()
    assert knowledge_base_warnings(config, empty)  # (the check can fail)
    out = capsys.readouterr().out
    assert f"wrote {config_file}" in out and "sipserver run -c" in out


def test_init_defaults_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / "sipserver.yaml").is_file()
    assert (tmp_path / "kb" / "demo" / "company.md").is_file()


def test_init_refuses_to_overwrite_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "kb" / "demo").mkdir(parents=True)
    mine = tmp_path / "kb" / "demo" / "pricing.md"
    mine.write_text("my own pricing\n")
    assert main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "exist already" in err and "pricing.md" in err and "--force" in err
    assert mine.read_text() == "my own pricing\n"
    assert not (tmp_path / "sipserver.yaml").exists()  # all or nothing
    assert main(["init", "--force", str(tmp_path)]) == 0
    assert mine.read_text() != "my own pricing\n"
    assert (tmp_path / "sipserver.yaml").is_file()


def test_init_copies_every_relative_file_the_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Knowledge base globs and sound files given by a relative path travel with the config;
    shipped sound names and absolute paths are not files to copy."""
    embedded = tmp_path / "embedded"
    (embedded / "docs" / "sub").mkdir(parents=True)
    (embedded / "docs" / "a.md").write_text("a")
    (embedded / "docs" / "sub" / "b.md").write_text("b")
    (embedded / "docs" / "skip.txt").write_text("not matched")
    (embedded / "ding.wav").write_bytes(b"RIFF")
    (embedded / "sipserver.yaml").write_text(
        "models:\n  m:\n    audio_feedback: {thinking_sound: ding.wav, ambient_sound: hold_music}\n"
        "agents:\n  - slug: a\n    knowledge_base: [docs/*.md, docs/sub/*.md, /etc/hostname]\n"
    )
    monkeypatch.setattr(starter, "embedded_config_path", lambda: embedded / "sipserver.yaml")
    assert sorted(str(p) for p in starter.starter_files()) == [
        "ding.wav",
        "docs/a.md",
        "docs/sub/b.md",
        "sipserver.yaml",
    ]
    target = tmp_path / "out"
    written = starter.write_starter(target)
    assert written[0] == target / "sipserver.yaml"
    assert (target / "docs" / "sub" / "b.md").read_text() == "b"
    assert (target / "ding.wav").read_bytes() == b"RIFF"
