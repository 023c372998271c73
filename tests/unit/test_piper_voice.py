"""Our Piper voice runner's pure parts: phoneme ids, sentence and clause splitting, config checks.
No model is run and espeak-ng is not called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.local_tts import default_piper_voice_path
from sipserver.pipeline.providers.piper_voice import (
    clauses_of,
    phoneme_ids,
    read_config,
    sentences_of,
)

# ----------------------------------------------------------------------------- phoneme ids


def joe_id_map() -> dict[str, list[int]]:
    config = json.loads(Path(f"{default_piper_voice_path()}.json").read_text(encoding="utf-8"))
    id_map: dict[str, list[int]] = config["phoneme_id_map"]
    return id_map


def test_ids_of_a_fixed_ipa_string_match_pipers() -> None:
    # "Hello, world!" as espeak-ng phonemises it; the expected ids are what piper-tts 1.8.0 gave
    # for the same phonemes with en_US-joe-medium (recorded before it was removed).
    ipa = "h\u0259l\u02c8o\u028a, w\u02c8\u025c\u02d0ld!"
    assert phoneme_ids(ipa, joe_id_map()) == [
        1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 8, 0, 3, 0,
        35, 0, 120, 0, 62, 0, 122, 0, 24, 0, 17, 0, 4, 0, 2,
    ]  # fmt: skip


def test_ids_are_bos_pad_each_phoneme_then_pad_and_eos() -> None:
    id_map = {"^": [1], "$": [2], "_": [0], "a": [5], "b": [6, 7], " ": [3]}
    assert phoneme_ids("", id_map) == [1, 0, 2]
    assert phoneme_ids("ab a", id_map) == [1, 0, 5, 0, 6, 7, 0, 3, 0, 5, 0, 2]


def test_unknown_phonemes_are_dropped_and_code_points_are_nfd() -> None:
    id_map = {"^": [1], "$": [2], "_": [0], "e": [5], "\u0301": [9]}
    # U+00E9 decomposes into e + combining acute; "x" is not in the voice.
    assert phoneme_ids("\u00e9x", id_map) == [1, 0, 5, 0, 9, 0, 2]


def test_phoneme_map_replaces_before_ids() -> None:
    id_map = {"^": [1], "$": [2], "_": [0], "a": [5], "b": [6]}
    assert phoneme_ids("ca", id_map, {"c": ["a", "b"]}) == [1, 0, 5, 0, 6, 0, 5, 0, 2]


# ------------------------------------------------------------------------ sentences, clauses


def test_sentences_keep_their_punctuation() -> None:
    text = (
        "Our office opens early in the morning. It closes late in the afternoon. "
        "On Saturdays we are open until noon."
    )
    assert sentences_of(text) == [
        "Our office opens early in the morning.",
        "It closes late in the afternoon.",
        "On Saturdays we are open until noon.",
    ]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello, world! How are you?", ["Hello, world!", "How are you?"]),
        ('He said "stop." Then he left', ['He said "stop."', "Then he left"]),
        ("It costs 3.5 dollars, e.g. today.", ["It costs 3.5 dollars, e.g. today."]),
        ("First line\n\nsecond   paragraph", ["First line", "second paragraph"]),
        ("  \n ", []),
    ],
)
def test_sentence_boundaries(text: str, sentences: list[str]) -> None:
    assert sentences_of(text) == sentences


@pytest.mark.parametrize(
    ("sentence", "clauses"),
    [
        ("Hello, world!", [("Hello,", ","), ("world!", "!")]),
        ("Well: yes; no.", [("Well:", ":"), ("yes;", ";"), ("no.", ".")]),
        ("Wait... what?!", [("Wait...", "."), ("what?!", "?")]),
        ("No \u2014 never", [("No \u2014", ";"), ("never", "")]),
        ("It costs 3.5 dollars, e.g. today", [("It costs 3.5 dollars,", ","), ("e.g. today", "")]),
        ('He said "hi," twice.', [('He said "hi,"', ","), ("twice.", ".")]),
    ],
)
def test_clauses_and_their_punctuation(sentence: str, clauses: list[tuple[str, str]]) -> None:
    assert clauses_of(sentence) == clauses


# --------------------------------------------------------------------------------- config


def test_config_of_the_shipped_voice_is_accepted() -> None:
    config = read_config(Path(f"{default_piper_voice_path()}.json"))
    assert config["espeak"]["voice"] == "en-us"
    assert config["audio"]["sample_rate"] == 22050


def test_config_problems_are_provider_errors(tmp_path: Path) -> None:
    path = tmp_path / "v.onnx.json"
    base = {
        "audio": {"sample_rate": 22050},
        "espeak": {"voice": "en-us"},
        "phoneme_id_map": {"^": [1], "$": [2], "_": [0]},
    }
    path.write_text(json.dumps({**base, "phoneme_type": "text"}))
    with pytest.raises(ProviderError, match="only espeak voices"):
        read_config(path)
    path.write_text(json.dumps({**base, "phoneme_id_map": {"a": [1]}}))
    with pytest.raises(ProviderError, match="lacks"):
        read_config(path)
    path.write_text("{not json")
    with pytest.raises(ProviderError, match="unreadable"):
        read_config(path)
