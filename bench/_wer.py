"""Word error rate with the text normalisation a telephone-agent benchmark needs.

:func:`normalize` maps a reference and a transcript to the same word sequence whatever the
spelling conventions: case, punctuation, contractions (``what's`` = ``what is``), and numbers.
Numbers are compared *digit by digit*: ``"1, 2, 3"``, ``"one two three"`` and ``"123"`` all
become ``1 2 3``; ``"$20"`` and ``"twenty dollars"`` become ``2 0 dollars``; ``"9:30"`` and
``"nine thirty"`` become ``9 3 0``. Reading every number as its digits makes a phone number
spoken digit by digit (``"five five five, zero one nine two"``) agree with the ``555-0192`` a
recogniser writes, and counts each wrong digit as one error, which is what a caller suffers.
(The price: ``"twenty five"`` and ``"two five"`` agree too; a benchmark can live with that.)

:func:`word_errors` is the Levenshtein distance on words (substitutions, deletions,
insertions); :func:`corpus_wer` sums errors over reference words for a whole set.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ErrorCounts", "corpus_wer", "normalize", "word_errors"]

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ORDINAL_UNITS = {
    1: "first",
    2: "second",
    3: "third",
    4: "fourth",
    5: "fifth",
    6: "sixth",
    7: "seventh",
    8: "eighth",
    9: "ninth",
    10: "tenth",
    11: "eleventh",
    12: "twelfth",
    13: "thirteenth",
    14: "fourteenth",
    15: "fifteenth",
    16: "sixteenth",
    17: "seventeenth",
    18: "eighteenth",
    19: "nineteenth",
}
_TENS_WORDS = {value: word for word, value in _TENS.items()}

_CONTRACTIONS = {
    "won't": "will not",
    "can't": "can not",
    "cannot": "can not",
    "shan't": "shall not",
    "let's": "let us",
    "i'm": "i am",
    "it's": "it is",
    "that's": "that is",
    "what's": "what is",
    "where's": "where is",
    "when's": "when is",
    "how's": "how is",
    "who's": "who is",
    "there's": "there is",
    "here's": "here is",
    "he's": "he is",
    "she's": "she is",
}
_SUFFIX_CONTRACTIONS = (("n't", " not"), ("'re", " are"), ("'ve", " have"), ("'ll", " will"))
_SPELLING = {
    # British and American spellings and common variants a recogniser may pick either way.
    "canceled": "cancelled",
    "canceling": "cancelling",
    "cancelation": "cancellation",
    "e-mail": "email",
    "ok": "okay",
    "o.k.": "okay",
    "a.m.": "am",
    "p.m.": "pm",
    "mr.": "mister",
    "mr": "mister",
    "mrs.": "missus",
    "dr.": "doctor",
    "st.": "street",
    "postcode": "post code",
    "zipcode": "zip code",
    "colour": "color",
    "centre": "center",
    "cheque": "check",
    "organisation": "organization",
}
_CURRENCIES = {"$": "dollars", "£": "pounds", "€": "euros"}

_MONEY = re.compile(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_ORDINAL_DIGITS = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DIGITS = re.compile(r"\d+")
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)")
_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def _number_words(value: int) -> str:
    """``value`` (0..99) in words, for ordinals like ``21st`` -> ``twenty first``."""
    if value < 10:
        return next(word for word, unit in _UNITS.items() if unit == value)
    if value < 20:
        return next(word for word, teen in _TEENS.items() if teen == value)
    tens, unit = divmod(value, 10)
    return _TENS_WORDS[tens * 10] + ("" if unit == 0 else " " + _number_words(unit))


def _ordinal(match: re.Match[str]) -> str:
    value = int(match.group(1))
    if value == 0 or value >= 100:
        return match.group(1)  # "100th": rare; read as its digits
    if value in _ORDINAL_UNITS:
        return _ORDINAL_UNITS[value]
    tens, unit = divmod(value, 10)
    if unit == 0:
        return _TENS_WORDS[tens * 10][:-1] + "ieth"  # twentieth, thirtieth
    return f"{_TENS_WORDS[tens * 10]} {_ORDINAL_UNITS[unit]}"


def _money(match: re.Match[str]) -> str:
    symbol, whole, cents = match.groups()
    text = f"{whole.replace(',', '')} {_CURRENCIES[symbol]}"
    if cents and int(cents):
        text += f" {int(cents.ljust(2, '0'))}"
    return text


def _time(match: re.Match[str]) -> str:
    hour, minute = match.groups()
    return hour if minute == "00" else f"{hour} {minute}"


def _words_to_numbers(words: list[str]) -> list[str]:
    """Replace each run of number words by its value in digits (as one token).

    A unit after a unit starts a new number (``five five five`` is 5 5 5, not 15); a unit
    after a round ten joins it (``twenty five`` is 25); ``hundred`` and ``thousand`` scale
    what precedes them; ``and`` inside a number (``one hundred and five``) is dropped.
    """
    out: list[str] = []
    big = 0  # thousands and millions already complete
    cur: int | None = None  # the part under construction, None outside a number
    last = ""  # kind of the previous number word: unit, teen, tens, scale

    def flush() -> None:
        nonlocal big, cur, last
        if cur is not None:
            out.append(str(big + cur))
        big, cur, last = 0, None, ""

    for index, word in enumerate(words):
        if word in _UNITS:
            value = _UNITS[word]
            if cur is not None and (last == "scale" or (last == "tens" and cur % 10 == 0)):
                cur += value
            else:
                flush()
                cur = value
            last = "unit"
        elif word in _TEENS or word in _TENS:
            value = _TEENS.get(word) or _TENS[word]
            if cur is not None and last == "scale":
                cur += value
            else:
                flush()
                cur = value
            last = "tens" if word in _TENS else "teen"
        elif word in _SCALES and cur is not None:
            scale = _SCALES[word]
            if scale == 100:
                cur = (cur % 100 or 1) * 100 + (cur - cur % 100)
            else:
                big += (cur or 1) * scale
                cur = 0
            last = "scale"
        elif (
            word == "and"
            and last == "scale"
            and index + 1 < len(words)
            and (
                words[index + 1] in _UNITS
                or words[index + 1] in _TEENS
                or words[index + 1] in _TENS
            )
        ):
            continue
        else:
            flush()
            out.append(word)
    flush()
    return out


def normalize(text: str) -> list[str]:
    """The words of ``text`` in the comparable form (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = _MONEY.sub(_money, text)
    text = _THOUSANDS.sub("", text)
    text = _TIME.sub(_time, text)
    text = _ORDINAL_DIGITS.sub(_ordinal, text)
    text = _DECIMAL.sub(" point ", text)
    text = _DIGIT_LETTER.sub(" ", text)  # "9am" -> "9 am"
    text = text.replace("%", " percent ").replace("&", " and ").replace("+", " plus ")
    words: list[str] = []
    for raw in text.split():
        token = _SPELLING.get(raw.strip(',;:!?"()'), raw)
        words.extend(token.split())
    text = " ".join(words)
    text = _NON_WORD.sub(" ", text.replace("-", " "))
    expanded: list[str] = []
    for word in text.split():
        word = word.strip("'")
        if word in _CONTRACTIONS:
            expanded.extend(_CONTRACTIONS[word].split())
            continue
        for suffix, replacement in _SUFFIX_CONTRACTIONS:
            if word.endswith(suffix) and len(word) > len(suffix):
                word = word[: -len(suffix)] + replacement
                break
        expanded.extend(_SPELLING.get(part, part) for part in word.replace("'", "").split())
    out: list[str] = []
    for word in _words_to_numbers([w for w in expanded if w]):
        if _DIGITS.fullmatch(word):
            out.extend(word)  # every number is compared digit by digit
        else:
            out.append(word)
    return out


@dataclass(frozen=True, slots=True)
class ErrorCounts:
    """Edit operations between a reference and a hypothesis (word lists)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word (0.0 for an empty reference with no insertion)."""
        if self.reference_words == 0:
            return 0.0 if self.insertions == 0 else float(self.insertions)
        return self.errors / self.reference_words

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> ErrorCounts:
    """Minimum edits turning ``reference`` into ``hypothesis`` (Levenshtein on words).

    A plain dynamic programme over two rows: sentences here are ~20 words, so the 400-cell
    table costs microseconds and a vectorised (numpy) version would only obscure the
    backtrace-free counting. Each cell carries (cost, substitutions, deletions, insertions);
    ties prefer substitutions, as jiwer and sclite do.
    """
    prev = [(j, 0, 0, j) for j in range(len(hypothesis) + 1)]
    for i, ref_word in enumerate(reference, 1):
        row = [(i, 0, i, 0)]
        for j, hyp_word in enumerate(hypothesis, 1):
            cost, s, d, n = prev[j - 1]
            same = ref_word == hyp_word
            best = (cost + (0 if same else 1), s + (0 if same else 1), d, n)
            cost, s, d, n = prev[j]
            if cost + 1 < best[0]:
                best = (cost + 1, s, d + 1, n)
            cost, s, d, n = row[j - 1]
            if cost + 1 < best[0]:
                best = (cost + 1, s, d, n + 1)
            row.append(best)
        prev = row
    _, s, d, n = prev[-1]
    return ErrorCounts(s, d, n, len(reference))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> ErrorCounts:
    """Summed edits of (reference, hypothesis) texts after :func:`normalize`: the WER of a
    set is its total errors over its total reference words (not a mean of sentence WERs)."""
    total = ErrorCounts(0, 0, 0, 0)
    for reference, hypothesis in pairs:
        total = total + word_errors(normalize(reference), normalize(hypothesis))
    return total
