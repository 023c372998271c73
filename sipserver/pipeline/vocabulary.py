"""What a call already knows, as text for the recogniser: the agent's own words.

A recogniser that is told which names to expect spells them right: on the telephone set of
``bench/stt_accuracy.py`` Whisper tiny.en writes "FiberMax" and "Zentrio" instead of "Fiber
Max" and "Zen Trio" once they are in its prompt (the product-name utterances go from 58% to
~13% word errors). This module builds that text without the operator writing it:

- :func:`knowledge_terms` picks the distinctive words of an agent's knowledge base: names
  (runs of capitalised words inside a sentence: "Harbour Street", "Lakeside Voice"), words
  written in mixed case ("FiberMax") or upper case ("PBX"), and capitalised words that never
  appear in lower case and are no common word. Most frequent first, bounded.
- :func:`agent_vocabulary` joins the agent's name and those terms into one short line, built
  once per agent when the runtime is built (not per call).
- :func:`stt_prompt` adds, per turn, the question the agent just asked (the caller's answer
  follows it): what the STT gets as its prompt on final decodes.

Whisper reads at most 224 prompt tokens and keeps the last ones, so everything here is bounded
in terms and characters (:data:`MAX_TERMS`, :data:`MAX_VOCABULARY_CHARS`,
:data:`MAX_QUESTION_CHARS`); English text runs at about 4 characters a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

from sipserver.pipeline.knowledge import KnowledgeBase

__all__ = [
    "MAX_QUESTION_CHARS",
    "MAX_TERMS",
    "MAX_VOCABULARY_CHARS",
    "agent_vocabulary",
    "knowledge_terms",
    "last_question",
    "stt_prompt",
]

MAX_TERMS: Final = 40
"""Most knowledge-base terms in an agent's vocabulary."""
MAX_VOCABULARY_CHARS: Final = 480
"""Most characters of an agent's vocabulary line (~120 Whisper tokens)."""
MAX_QUESTION_CHARS: Final = 200
"""Most characters of the agent's last question added per turn (its end is kept)."""

_COMMON_TEXT: Final = """
    i im ive id ill mr mrs ms dr st mon tue wed thu fri sat sun monday tuesday wednesday
    thursday friday saturday sunday mondays tuesdays wednesdays thursdays fridays saturdays
    sundays january february march april may june july august september october november
    december am pm ok okay
"""
_COMMON_CAPITALISED: Final = frozenset(_COMMON_TEXT.split())
"""Words often capitalised that every recogniser knows (days, months, ``I``): no help."""

_STOP_TEXT: Final = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each every few for
    from further had has have having he her here hers him his how if in into is it its just
    many may me might more most must my no nor not now of off on once one only or other our out
    over own please same she should so some such than that the their them then there these
    they this those through to too two under until up very was we were what when where which
    while who whom why will with would yes you your
"""
_STOP: Final = frozenset(_STOP_TEXT.split())
"""English function words: capitalised at the start of a sentence, never a name."""

_SENTENCE: Final = re.compile(r"(?<=[.!?])\s+|\n+")
_ADDRESS: Final = re.compile(r"\S+@\S+|\b\w+://\S+|\bwww\.\S+")
_TOKEN: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:['\u2019\-][A-Za-z0-9]+)*|[^\sA-Za-z]")
"""Words (with inner apostrophes or hyphens) and single other characters (punctuation and
digits break a run of capitalised words)."""


def _is_marked(word: str) -> bool:
    """Mixed case after the first letter ("FiberMax", "iPhone") or an acronym ("PBX")."""
    return any(c.isupper() for c in word[1:]) and len(word) > 1


def _plain(word: str) -> str:
    return word.lower().replace("\u2019", "'").removesuffix("'s").replace("'", "")


def _runs(sentence: str) -> Iterator[tuple[list[str], bool]]:
    """Runs of capitalised words in one sentence, each with True when it starts the sentence
    with a plain word (which may be capitalised only because it comes first)."""
    run: list[str] = []
    run_at_start = False
    for index, word in enumerate(_TOKEN.findall(sentence)):
        token = word.removesuffix("'s").removesuffix("\u2019s")  # "Brightline's" is Brightline
        if token[0].isalpha() and token[0].isupper():
            if index == 0 and _plain(token) in _STOP and not _is_marked(token):
                continue  # "The", "For", "Each": not part of a name
            if not run:
                run_at_start = index == 0 and not _is_marked(token)
            run.append(token)
            continue
        if run:
            yield run, run_at_start
        run = []
    if run:
        yield run, run_at_start


def knowledge_terms(texts: Iterable[str], *, limit: int = MAX_TERMS) -> list[str]:
    """The distinctive terms of ``texts`` (an agent's knowledge base), most frequent first.

    A term is a run of capitalised words ("Harbour Street", "Lakeside Voice"), one capitalised
    word inside a sentence that is no common word (days, months, ``I``), or a word in mixed or
    upper case anywhere ("FiberMax", "PBX"). A lone capitalised word that starts a sentence
    counts only when the text also uses it inside a sentence ("Invoices are sent" gives no
    term); a longer run that starts a sentence loses its first word when the rest is a term
    used elsewhere ("Ask Brightline" gives "Brightline"), and is kept whole otherwise
    ("Kestrel Plus costs more"). Ties keep the order of first appearance, so the result is
    deterministic.

    Args:
        texts: Plain text (markdown markup already removed: passages).
        limit: Most terms returned.

    Returns:
        Up to ``limit`` terms as written in the text (their most frequent spelling).
    """
    runs = [
        run
        for text in texts
        for sentence in _SENTENCE.split(_ADDRESS.sub(" ", text))
        for run in _runs(sentence)
    ]
    inside = {" ".join(words).lower() for words, at_start in runs if not at_start}
    counts: dict[str, int] = {}
    spelling: dict[str, dict[str, int]] = {}
    for words, at_start in runs:
        if at_start and " ".join(words).lower() not in inside:
            rest = " ".join(words[1:]).lower()
            if len(words) == 1 or rest in inside:
                words = words[1:]  # "Invoices", "Ask Brightline": Brightline is the name
            # else a run of two capitalised words or more is a name ("Kestrel Plus costs...")
        if not words or (len(words) == 1 and _plain(words[0]) in _COMMON_CAPITALISED):
            continue
        term = " ".join(words)
        key = term.lower()
        counts[key] = counts.get(key, 0) + 1
        forms = spelling.setdefault(key, {})
        forms[term] = forms.get(term, 0) + 1
    ranked = sorted(counts, key=lambda k: -counts[k])  # stable: first appearance breaks ties
    return [max(spelling[k].items(), key=lambda kv: kv[1])[0] for k in ranked[:limit]]


def agent_vocabulary(
    name: str,
    knowledge: KnowledgeBase,
    *,
    limit: int = MAX_TERMS,
    max_chars: int = MAX_VOCABULARY_CHARS,
) -> str:
    """One line of the agent's words for the recogniser: ``"<name>: term, term, ..."``.

    Args:
        name: The agent's display name (empty: left out).
        knowledge: Its knowledge base (its headings, then its passages).
        limit: Most terms.
        max_chars: Most characters of the line; the least frequent terms are dropped first.

    Returns:
        The line, or ``""`` when the agent has neither a name nor distinctive terms.
    """
    texts = [*knowledge.titles, *(p.text for p in knowledge.passages)]
    terms = knowledge_terms(texts, limit=limit)
    name = " ".join(name.split())
    terms = [t for t in terms if t.lower() != name.lower()]
    head = f"{name}: " if name and terms else name
    line = head + ", ".join(terms)
    while terms and len(line) + 1 > max_chars:
        terms.pop()
        line = (head if terms else name) + ", ".join(terms)
    return f"{line}." if line else ""


def last_question(agent_texts: Iterable[str]) -> str | None:
    """The question the agent just asked: the last sentence of its latest utterance when that
    ends with ``?`` (None otherwise: an older question is no longer what the caller answers).

    Args:
        agent_texts: The agent's utterances, oldest first.
    """
    latest = None
    for text in agent_texts:
        latest = text
    if latest is None:
        return None
    latest = " ".join(latest.split())
    if not latest.endswith("?"):
        return None
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", latest) if s]
    question = sentences[-1]
    # A short question ("Anything else?") reads better with the sentence before it.
    if len(question) < 40 and len(sentences) > 1:
        question = f"{sentences[-2]} {question}"
    return question[-MAX_QUESTION_CHARS:].lstrip()


def stt_prompt(vocabulary: str, question: str | None) -> str | None:
    """The prompt of one final decode: the agent's vocabulary, then its last question (the text
    that comes right before the caller's answer). None when both are empty."""
    parts = [p for p in (vocabulary.strip(), (question or "").strip()) if p]
    return " ".join(parts) or None
