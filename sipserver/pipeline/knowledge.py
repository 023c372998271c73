"""An agent's knowledge base: markdown/text files split into passages, searched with BM25.

The agent's ``knowledge_base`` entries are files or glob patterns; :meth:`KnowledgeBase.from_globs`
reads them (relative patterns against the directory of the configuration file), splits each
document into short passages (a paragraph of one to four sentences, titled by the markdown
heading above it) and indexes them with Okapi BM25 (``rank_bm25``). :meth:`KnowledgeBase.search`
returns the best passages for a question.

Tokenisation is deliberately simple: lowercase words, stop words removed, and a light suffix
stemmer so that "opening" finds "open" and "prices" finds "pricing". Markdown markup (emphasis,
links, code, list bullets) is removed from the passage text, which is meant to be spoken.
"""

from __future__ import annotations

import glob
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from rank_bm25 import BM25Okapi

if TYPE_CHECKING:
    from sipserver.config import Config

__all__ = ["KnowledgeBase", "Passage", "knowledge_base_warnings", "split_passages", "tokenize"]

MAX_SENTENCES: Final = 4
"""Most sentences in one passage; longer paragraphs are cut into several passages."""
MAX_CHARS: Final = 600
"""Soft cap on a passage's length (a sentence is never cut)."""
LEAD_BONUS: Final = 1.1
"""Score factor of the first passage of a section (it usually sums the section up)."""

_STOP_TEXT: Final = """
    a about above after again against all am an and any are aren arent as at be because been
    before being below between both but by can cannot could couldn did didn didnt do does doesn
    doesnt doing don dont down during each few for from further had has have having he her here
    hers herself him himself his how i if im in into is isn isnt it its itself ive just let lets
    me might more most must my myself no nor not now of off on once only or other ought our ours
    ourselves out over own please same shall she should so some such tell than that thats the
    their theirs them themselves then there theres these they this those through to too under
    until up us very want was we were what whats when where which while who whom why will with
    would you your youre yours yourself yourselves know like get got okay ok yes yeah hi hello
    thanks thank um uh er erm hmm oh ah well alright right sure great
"""
_STOP_WORDS: Final = frozenset(_STOP_TEXT.split())
"""English function words (and chat filler) that carry no topic."""

_SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = {
    "much": ("cost", "price"),
    "expensive": ("cost", "price"),
    "cheap": ("cost", "price"),
    "fee": ("cost", "price"),
    "fees": ("cost", "price"),
    "located": ("address",),
    "location": ("address",),
    "find": ("address",),
    "reach": ("contact",),
    "help": ("support",),
    "where": ("address",),
}
"""Question words that stand for a topic word the documents use (applied to queries only)."""

_WORD: Final = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)*")
_VOWEL: Final = re.compile(r"[aeiouy]")
_HEADING: Final = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET: Final = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_LINK: Final = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP: Final = re.compile(r"[*_`~]+|<[^>]+>")


class _Bm25(BM25Okapi):  # type: ignore[misc]  # rank_bm25 is untyped
    """Okapi BM25 with Lucene's idf, ``log(1 + (N - n + 0.5) / (n + 0.5))``.

    rank_bm25's Okapi idf is zero or negative for a term found in half of the documents or more,
    which is every term of a one- or two-document knowledge base; Lucene's form stays positive
    and still ranks rare terms above common ones.
    """

    def _calc_idf(self, nd: Mapping[str, int]) -> None:
        n = self.corpus_size
        self.idf = {word: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for word, df in nd.items()}


def _stem(word: str) -> str:
    """Strip common English suffixes; both sides of a comparison are stemmed alike."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ation", "ity", "ing", "ed", "ly"):
        stem = word[: -len(suffix)]
        if (
            word.endswith(suffix)
            and len(stem) >= 3
            and _VOWEL.search(stem)
            and not (suffix == "ed" and stem.endswith("e"))
        ):
            word = stem
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiousz":
        word = word[:-1]  # cancell(ed) -> cancel, call -> cal
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]  # price, pricing, priced -> pric
    return word


def tokenize(text: str, *, expand: bool = False) -> list[str]:
    """Index terms of ``text``: lowercase words without stop words, stemmed.

    Args:
        text: Any text.
        expand: Add the topic words of :data:`_SYNONYMS` (for queries).

    Returns:
        The terms, in order (duplicates kept: BM25 counts them).
    """
    terms: list[str] = []
    for raw in _WORD.findall(text.lower()):
        word = raw.replace("\u2019", "'")
        word = word.removesuffix("'s").replace("'", "")
        if expand and word in _SYNONYMS:
            terms.extend(_stem(synonym) for synonym in _SYNONYMS[word])
        if word and word not in _STOP_WORDS:
            terms.append(_stem(word))
    return terms


@dataclass(frozen=True, slots=True)
class Passage:
    """A short piece of a document, the unit of retrieval."""

    text: str
    """One to a few sentences, plain text (markdown markup removed)."""
    source: str
    """The file it comes from."""
    title: str
    """The heading it sits under (or the document's name when it has no heading)."""
    score: float = 0.0
    """Relevance to the query that found it (0 outside search results): the BM25 score in units
    of one distinctive word, i.e. divided by the idf of a word found in a single passage. About
    1 per distinctive query word the passage contains, whatever the size of the knowledge base."""


def _plain(line: str) -> str:
    """Markdown inline markup removed: links keep their text, emphasis and code marks go."""
    return _MARKUP.sub("", _LINK.sub(r"\1", line)).strip()


def _title_of(source: str) -> str:
    stem = pathlib.PurePath(source).stem.replace("_", " ").replace("-", " ").strip()
    return stem[:1].upper() + stem[1:] if stem else source


def _paragraphs(text: str, default_title: str) -> Iterable[tuple[str, str]]:
    """``(title, paragraph)`` pairs: blank lines and headings separate paragraphs."""
    title = default_title
    lines: list[str] = []
    in_code = False

    def flush() -> Iterable[tuple[str, str]]:
        if lines:
            yield title, " ".join(lines)
            lines.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            yield from flush()
            in_code = not in_code
            continue
        if in_code:
            continue  # code is not something to say on the phone
        heading = _HEADING.match(line)
        if heading:
            yield from flush()
            title = _plain(heading.group(2)) or title
            continue
        if not line.strip():
            yield from flush()
            continue
        bullet = _BULLET.match(line)
        content = _plain(line[bullet.end() :] if bullet else line)
        if not content:
            continue
        if bullet and lines and not lines[-1].endswith((".", "!", "?", ":", ";")):
            lines[-1] += "."  # each list item reads as a sentence of its own
        lines.append(content)
    yield from flush()


def split_passages(text: str, source: str) -> list[Passage]:
    """Split a markdown or plain-text document into passages.

    Paragraphs (separated by blank lines or headings) become passages; a paragraph longer than
    :data:`MAX_SENTENCES` sentences or :data:`MAX_CHARS` characters is cut between sentences.
    Each passage is titled by the nearest heading above it.

    Args:
        text: The document.
        source: Where it comes from (kept in each passage).

    Returns:
        The passages in document order.
    """
    passages: list[Passage] = []
    for title, paragraph in _paragraphs(text, _title_of(source)):
        chunk: list[str] = []
        for sentence in _SENTENCE_END.split(paragraph):
            if chunk and (
                len(chunk) >= MAX_SENTENCES or sum(map(len, chunk)) + len(sentence) > MAX_CHARS
            ):
                passages.append(Passage(" ".join(chunk), source, title))
                chunk = []
            chunk.append(sentence)
        if chunk:
            passages.append(Passage(" ".join(chunk), source, title))
    return passages


class KnowledgeBase:
    """Passages of an agent's documents, searchable with BM25 (Okapi, Lucene's idf).

    Args:
        passages: The passages to index (see :func:`split_passages`); may be empty.
        unmatched: Patterns that matched no file (kept for the caller to report).
        unreadable: Files matched but left out, with the reason (kept for the caller to report).
    """

    __slots__ = ("_index", "_lead", "_unit", "passages", "unmatched", "unreadable")

    def __init__(
        self,
        passages: Sequence[Passage],
        *,
        unmatched: Sequence[str] = (),
        unreadable: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.passages: tuple[Passage, ...] = tuple(passages)
        """Every passage, in document order."""
        self.unmatched: tuple[str, ...] = tuple(unmatched)
        """Patterns given to :meth:`from_globs` that matched no file."""
        self.unreadable: tuple[tuple[str, str], ...] = tuple(unreadable)
        """``(file, reason)`` of matched files that could not be read as UTF-8 text."""
        corpus = [tokenize(f"{p.title} {p.text}") for p in self.passages]
        # BM25Okapi divides by the corpus size: an empty knowledge base has no index.
        self._index = _Bm25(corpus) if corpus else None
        n = len(corpus)
        self._unit = math.log(1.0 + (n - 0.5) / 1.5) if n else 1.0  # idf of a word in one passage
        # The first passage of a section usually sums it up: it wins a near tie.
        sections = [(p.source, p.title) for p in self.passages]
        self._lead = [
            LEAD_BONUS if i == 0 or sections[i - 1] != section else 1.0
            for i, section in enumerate(sections)
        ]

    @classmethod
    def from_globs(
        cls, patterns: Sequence[str], base_dir: str | os.PathLike[str] | None = None
    ) -> KnowledgeBase:
        """Load the files matching ``patterns`` (an agent's ``knowledge_base``).

        Args:
            patterns: File names or glob patterns (``**`` recurses); relative ones are taken
                from ``base_dir``. Markdown and text files are expected (read as UTF-8).
            base_dir: Directory of the configuration file; ``None``: the working directory.

        Returns:
            The knowledge base; files are read in sorted order, each once. Patterns that match
            nothing are listed in :attr:`unmatched`; files that cannot be read or are not UTF-8
            text (a PDF matched by ``docs/**``) are left out and listed in :attr:`unreadable`.
        """
        base = pathlib.Path(base_dir) if base_dir is not None else pathlib.Path.cwd()
        files: dict[pathlib.Path, None] = {}
        unmatched: list[str] = []
        for pattern in patterns:
            full = pathlib.Path(pattern).expanduser()
            if not full.is_absolute():
                full = base / full
            matches = sorted(
                pathlib.Path(match)
                for match in glob.glob(str(full), recursive=True)
                if os.path.isfile(match)
            )
            if not matches:
                unmatched.append(pattern)
            files.update(dict.fromkeys(path.resolve() for path in matches))
        passages: list[Passage] = []
        unreadable: list[tuple[str, str]] = []
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                unreadable.append((str(path), f"not UTF-8 text (byte {exc.start})"))
                continue
            except OSError as exc:
                unreadable.append((str(path), exc.strerror or str(exc)))
                continue
            passages.extend(split_passages(text, str(path)))
        return cls(passages, unmatched=unmatched, unreadable=unreadable)

    @classmethod
    def from_texts(cls, documents: Mapping[str, str]) -> KnowledgeBase:
        """Build a knowledge base from documents in memory.

        Args:
            documents: Text by source name (``{"pricing.md": "# Pricing\\n..."}``).

        Returns:
            The knowledge base.
        """
        passages: list[Passage] = []
        for source, text in documents.items():
            passages.extend(split_passages(text, source))
        return cls(passages)

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def titles(self) -> list[str]:
        """Distinct passage titles, in document order (what the knowledge base is about)."""
        return list(dict.fromkeys(p.title for p in self.passages))

    def search(self, query: str, k: int = 3, *, min_score: float = 0.0) -> list[Passage]:
        """The passages that best answer ``query``.

        Args:
            query: The question, in plain words.
            k: Most passages returned.
            min_score: Passages scoring at or below this are left out (see
                :attr:`Passage.score`).

        Returns:
            Up to ``k`` passages with their :attr:`Passage.score`, best first; empty when the
            knowledge base is empty or nothing in the query matches.
        """
        terms = tokenize(query, expand=True)
        if self._index is None or not terms or k <= 0:
            return []
        raw = self._index.get_scores(terms)
        scores = [float(s) * lead / self._unit for s, lead in zip(raw, self._lead, strict=True)]
        best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        found: list[Passage] = []
        for i in best:
            score = scores[i]
            if score <= max(min_score, 0.0):
                break
            p = self.passages[i]
            found.append(Passage(p.text, p.source, p.title, score))
        return found


def knowledge_base_warnings(config: Config, base_dir: str | os.PathLike[str]) -> list[str]:
    """Knowledge base patterns that match no file, and matched files that cannot be read as
    UTF-8 text, one line each, naming the key (the files are loaded as the server loads them).

    ``check-config`` and ``reload`` print them (the server logs the same at start): a copied
    configuration whose documents stayed behind would otherwise answer from nothing.

    Args:
        config: The configuration.
        base_dir: Directory relative patterns are taken from (:func:`sipserver.config.config_dir`).

    Returns:
        ``agents[0].knowledge_base[1]: 'kb/*.md' matches no file (looked for /etc/kb/*.md,
        relative to the config); the agent answers without these documents``.
    """
    lines = []
    for i, agent in enumerate(config.agents):
        kb = KnowledgeBase.from_globs(agent.knowledge_base, base_dir)
        for j, pattern in enumerate(agent.knowledge_base):
            if pattern not in kb.unmatched:
                continue
            full = pathlib.Path(base_dir) / pathlib.Path(pattern).expanduser()
            relative = (
                "" if full == pathlib.Path(pattern).expanduser() else ", relative to the config"
            )
            lines.append(
                f"agents[{i}].knowledge_base[{j}]: {pattern!r} matches no file (looked for"
                f" {full}{relative}); the agent answers without these documents"
            )
        lines += [f"agents[{i}].knowledge_base: {f} is skipped: {why}" for f, why in kb.unreadable]
    return lines
