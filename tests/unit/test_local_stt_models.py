"""The local STT's model choice (``model: fast | tiny.en | moonshine-base | <directory>``), the
Whisper vocabulary options, and Moonshine's tokenizer. No model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.config import ProviderSpec
from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.local_moonshine import (
    MoonshineStt,
    default_moonshine_model_path,
    detokenize,
    read_tokenizer,
)
from sipserver.pipeline.providers.local_stt import WhisperStt, default_whisper_model_path
from sipserver.pipeline.providers.registry import make_stt


def spec(data: object) -> ProviderSpec:
    return ProviderSpec.model_validate(data)


@pytest.mark.parametrize("name", ["fast", "tiny.en"])
def test_fast_is_the_shipped_whisper_tiny_en(name: str) -> None:
    stt = make_stt(spec({"provider": "local", "model": name, "cpu_threads": 2}))
    assert isinstance(stt, WhisperStt)
    assert stt.model_path == default_whisper_model_path()
    assert stt.cpu_threads == 2


def test_moonshine_base_is_the_shipped_moonshine_model() -> None:
    stt = make_stt(spec({"provider": "local", "model": "moonshine-base", "workers": 1}))
    assert isinstance(stt, MoonshineStt)
    assert stt.model_path == default_moonshine_model_path()
    assert stt.workers == 1
    assert (stt.sample_rate, stt.native_turn_detection) == (16000, False)
    for name in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"):
        assert (stt.model_path / name).is_file()
    # English only, so language: en is accepted (and is what every transcript says).
    english = make_stt(spec({"provider": "local", "model": "moonshine-base", "language": "en"}))
    assert isinstance(english, MoonshineStt)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "moonshine-base", "language": "es"}, "stt.language: the Moonshine model is"),
        ({"model": "moonshine-base", "beam_size": 3}, "unknown option(s) beam_size"),
        ({"model": "moonshine-base", "cpu_threads": 0}, "stt.cpu_threads"),
        ({"model": "moonshine-base", "workers": -1}, "stt.workers"),
        ({"model": "small.en"}, "or one of the names fast, tiny.en, base, moonshine-base"),
        ({"prompt": 3}, "stt.prompt must be a string"),
        ({"hotwords": ["a"]}, "stt.hotwords must be a string"),
    ],
)
def test_model_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ProviderError) as info:
        make_stt(spec({"provider": "local", **data}))
    assert message in str(info.value)


def test_moonshine_directory_must_hold_its_three_files(tmp_path: Path) -> None:
    (tmp_path / "encoder_model.ort").write_bytes(b"")
    with pytest.raises(ProviderError, match=r"has no decoder_model_merged\.ort"):
        MoonshineStt(tmp_path)


def test_whisper_vocabulary_options_reach_the_provider() -> None:
    stt = make_stt(
        spec(
            {"provider": "local", "prompt": "Brightline support: FiberMax.", "hotwords": "Zentrio"}
        )
    )
    assert isinstance(stt, WhisperStt)
    assert (stt.prompt, stt.hotwords) == ("Brightline support: FiberMax.", "Zentrio")
    plain = make_stt(spec({"provider": "local", "prompt": ""}))
    assert isinstance(plain, WhisperStt)
    assert (plain.prompt, plain.hotwords) == (None, None)


def test_tokenizer_records_have_one_or_two_length_bytes(tmp_path: Path) -> None:
    long = "\u2581".encode() + b"x" * 200
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(
        b"\x05<unk>\x03<s>\x04</s>\x01\x00"  # specials, then the byte token 0x00
        + bytes([0x80 | (len(long) & 0x7F), len(long) >> 7])
        + long
        + b"\x06\xe2\x96\x81abc"
    )
    assert read_tokenizer(path) == [b"<unk>", b"<s>", b"</s>", b"\x00", long, "\u2581abc".encode()]


def test_detokenize_joins_pieces_and_drops_specials() -> None:
    vocabulary = [
        b"<unk>",
        b"<s>",
        b"</s>",
        b"\xc3",
        b"\xa9",
        "\u2581caf".encode(),
        "\u2581".encode(),
    ]
    vocabulary += ["\u2581ok".encode(), b"."]
    # Byte tokens 3 and 4 make the UTF-8 of "é"; "▁" is a space; ids 0..2 are never text.
    assert detokenize(vocabulary, [1, 5, 3, 4, 7, 8, 2, 0]) == "café ok."
    assert detokenize(vocabulary, []) == ""
    assert detokenize(vocabulary, [99]) == ""  # out of the vocabulary: dropped
