"""bench/_wer.py: the text normalisation and word error rate of the STT accuracy benchmark."""

from __future__ import annotations

import pytest

from bench._wer import ErrorCounts, corpus_wer, normalize, word_errors


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("1, 2, 3", "one two three"),
        ("123", "one two three"),
        ("$20", "twenty dollars"),
        ("$4.50", "four dollars fifty"),
        ("£1,500", "one thousand five hundred pounds"),
        ("It's 9:30.", "it is nine thirty"),
        ("We open at 9:00 a.m.", "we open at nine am"),
        ("We open at 9am", "we open at nine AM"),
        ("Call 555-0192!", "call five five five zero one nine two"),
        ("on the 21st", "on the twenty-first"),
        ("in 2024", "in twenty twenty four"),
        ("10%", "ten percent"),
        ("What's the price?", "what is the price"),
        ("I can't log in", "I cannot log in"),
        ("We're closed, OK?", "we are closed okay"),
        ("I canceled it", "I cancelled it"),
        ("My e-mail", "my email"),
        ("one hundred and five", "105"),
        ("Fifteen hundred", "1500"),
    ],
)
def test_written_and_spoken_forms_agree(written: str, spoken: str) -> None:
    assert normalize(written) == normalize(spoken)


def test_normalize_drops_case_and_punctuation_but_keeps_words() -> None:
    assert normalize("Hello, World! (Tuesday)") == ["hello", "world", "tuesday"]
    assert normalize("  ") == []


def test_numbers_are_compared_digit_by_digit() -> None:
    assert normalize("five five five") == ["5", "5", "5"]
    assert normalize("twenty five dollars") == ["2", "5", "dollars"]
    # A wrong digit in a phone number costs one error, not the whole number.
    errors = word_errors(normalize("555 0192"), normalize("five five five zero one nine three"))
    assert errors == ErrorCounts(substitutions=1, deletions=0, insertions=0, reference_words=7)


def test_number_words_that_are_not_numbers_stay_words() -> None:
    assert normalize("a hundred ways") == ["a", "hundred", "ways"]
    assert normalize("rock and roll") == ["rock", "and", "roll"]


def test_word_errors_counts_each_operation() -> None:
    ref = normalize("please tell me the opening hours")
    assert word_errors(ref, ref) == ErrorCounts(0, 0, 0, 6)
    assert word_errors(ref, normalize("please tell me the opening hour")).substitutions == 1
    deletion = word_errors(ref, normalize("please tell me opening hours"))
    assert (deletion.deletions, deletion.errors) == (1, 1)
    insertion = word_errors(ref, normalize("please please tell me the opening hours"))
    assert (insertion.insertions, insertion.errors) == (1, 1)
    assert word_errors(ref, []).errors == 6
    assert word_errors([], ["noise"]).insertions == 1


def test_word_errors_is_the_minimum_edit_distance() -> None:
    # "How much none is cost" vs "how much does it cost": 2 substitutions, not 3 edits.
    counts = word_errors(normalize("how much does it cost"), normalize("How much none is cost?"))
    assert counts.errors == 2
    assert counts.wer == pytest.approx(0.4)


def test_corpus_wer_weights_by_reference_words() -> None:
    total = corpus_wer(
        [
            ("one", "two"),  # 1 error in 1 word
            ("a b c d e f g h i", "a b c d e f g h i"),  # 0 errors in 9 words
        ]
    )
    assert total.reference_words == 10
    assert total.wer == pytest.approx(0.1)
