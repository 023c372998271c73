"""``stt: {provider: local, model: base}``: Whisper base (multilingual) from the two wheels whose
halves of model.bin are joined once into a cache directory. No model is loaded here."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.config import ProviderSpec
from sipserver.pipeline.providers import local_stt
from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.local_stt import WhisperStt, whisper_cache_dir
from sipserver.pipeline.providers.registry import make_stt


def _fake_parts(root: Path) -> list[Path]:
    parts = [root / "part1" / "data", root / "part2" / "data"]
    for index, part in enumerate(parts, 1):
        part.mkdir(parents=True)
        (part / f"model.bin.part{index}").write_bytes(bytes([index]) * (3 << 20))  # 3 MiB
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (parts[0] / name).write_text(name)
    return parts


def test_base_is_joined_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(local_stt, "whisper_base_parts", lambda: parts)
    loads: list[str] = []
    monkeypatch.setattr(WhisperStt, "_load", staticmethod(lambda key: loads.append(key[0])))
    stt = make_stt(
        ProviderSpec.model_validate({"provider": "local", "model": "base", "language": "es"})
    )
    assert isinstance(stt, WhisperStt)
    target = tmp_path / "cache" / "sipserver" / "whisper-base-ct2"
    assert stt.model_path == target == whisper_cache_dir()
    assert not target.exists()  # building the provider joins nothing: loading does
    stt._load_model(stt._key)
    joined = (target / "model.bin").read_bytes()
    assert joined == b"\x01" * (3 << 20) + b"\x02" * (3 << 20)
    assert (target / "tokenizer.json").read_text() == "tokenizer.json"
    assert [p.name for p in target.parent.iterdir()] == ["whisper-base-ct2"]  # no temporary left
    before = (target / "model.bin").stat().st_mtime_ns
    stt._load_model(stt._key)
    assert (target / "model.bin").stat().st_mtime_ns == before  # joined once
    assert loads == [str(target), str(target)]
    assert stt.language == "es"


def test_base_without_the_wheels_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_stt, "whisper_base_parts", lambda: None)
    with pytest.raises(ProviderError, match=r"sipserver\[multilingual\]"):
        make_stt(ProviderSpec.model_validate({"provider": "local", "model": "base"}))


def test_the_installed_wheels_hold_both_halves() -> None:
    parts = local_stt.whisper_base_parts()
    if parts is None:
        pytest.skip("sipserver[multilingual] is not installed")
    assert (parts[0] / "model.bin.part1").is_file() and (parts[1] / "model.bin.part2").is_file()
    assert all((parts[0] / name).is_file() for name in ("config.json", "tokenizer.json"))
