"""Knowledge base: splitting documents into passages, loading globs, BM25 search."""

from __future__ import annotations

import pathlib

import pytest

from sipserver.config import load_config
from sipserver.pipeline.knowledge import KnowledgeBase, Passage, split_passages, tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"


@pytest.fixture(scope="module")
def demo() -> KnowledgeBase:
    """The demo agent's knowledge base, loaded the way the embedded config names it."""
    agent = load_config(CONFIG_DIR / "sipserver.yaml").agents[0]
    kb = KnowledgeBase.from_globs(agent.knowledge_base, CONFIG_DIR)
    assert not kb.unmatched
    return kb


def test_tokenize_drops_stop_words_and_stems() -> None:
    assert tokenize("When are you OPEN on Saturdays?") == ["open", "saturday"]
    assert tokenize("opening hours") == tokenize("open hour")
    assert tokenize("pricing") == tokenize("prices") == tokenize("price")
    assert tokenize("cancelled") == tokenize("cancel")
    assert tokenize("the and of") == []


def test_split_keeps_headings_as_titles_and_strips_markup() -> None:
    text = """Intro line without a heading.

# Opening hours

We are **open** from 9 to 5. Closed on [Sundays](https://example.com/sundays).

## Parking
- Free parking behind the building
- Bikes go in the yard

```
code is not spoken
```
"""
    passages = split_passages(text, "docs/office_info.md")
    assert [(p.title, p.text) for p in passages] == [
        ("Office info", "Intro line without a heading."),
        ("Opening hours", "We are open from 9 to 5. Closed on Sundays."),
        ("Parking", "Free parking behind the building. Bikes go in the yard"),
    ]
    assert all(p.source == "docs/office_info.md" for p in passages)


def test_long_paragraph_is_cut_between_sentences() -> None:
    paragraph = " ".join(f"Sentence number {i} is here." for i in range(10))
    passages = split_passages(f"# Long\n\n{paragraph}\n", "long.md")
    assert [p.text.count(".") for p in passages] == [4, 4, 2]
    assert " ".join(p.text for p in passages) == paragraph
    assert {p.title for p in passages} == {"Long"}


@pytest.mark.parametrize(
    ("question", "title", "words"),
    [
        ("When are you open?", "Opening hours", "Monday to Friday"),
        ("Are you open on Saturday afternoon?", "Opening hours", "Saturday"),
        ("How much does it cost?", "Pricing", "19 dollars"),
        ("Where is your office located?", "Address and directions", "Harbour Street"),
        ("How do I connect my phone system to you?", "Registering a PBX", "username and password"),
        ("Do I need a credit card for the trial?", "Free trial", "No credit card"),
        ("How can I reach support?", "Contacting support", "support@"),
        ("I want to stop my subscription", "Cancelling a subscription", "cancel"),
        ("What is sipserver?", "What sipserver does", "SIP server"),
        ("Is it secure?", "Security", "allowed IP ranges"),
    ],
)
def test_search_finds_the_passage_for_a_paraphrase(
    demo: KnowledgeBase, question: str, title: str, words: str
) -> None:
    best = demo.search(question, k=3)[0]
    assert best.title == title
    assert words in best.text
    assert best.score > 0.6


def test_search_results_are_ranked_and_limited(demo: KnowledgeBase) -> None:
    results = demo.search("price of a plan and free minutes", k=2)
    assert len(results) == 2
    assert results[0].score >= results[1].score > 0


def test_search_without_a_match_is_empty(demo: KnowledgeBase) -> None:
    assert demo.search("Do you sell pizza?") == []
    assert demo.search("the of and") == []
    assert demo.search("opening hours", k=0) == []


def test_min_score_filters(demo: KnowledgeBase) -> None:
    best = demo.search("opening hours")[0]
    assert demo.search("opening hours", min_score=best.score) == []


def test_titles_list_topics(demo: KnowledgeBase) -> None:
    assert "Pricing" in demo.titles
    assert len(demo.titles) == len(set(demo.titles))


def test_empty_knowledge_base() -> None:
    kb = KnowledgeBase.from_globs([])
    assert len(kb) == 0 and kb.titles == []
    assert kb.search("anything at all") == []


def test_globs_resolve_from_base_dir(tmp_path: pathlib.Path) -> None:
    (tmp_path / "kb" / "deep").mkdir(parents=True)
    (tmp_path / "kb" / "a.md").write_text("# Alpha\n\nAlpha facts about zebras.\n")
    (tmp_path / "kb" / "deep" / "b.txt").write_text("Beta facts about giraffes.\n")
    kb = KnowledgeBase.from_globs(["kb/*.md", "kb/**/*.txt", "kb/a.md", "nothing/*.md"], tmp_path)
    assert [p.title for p in kb.passages] == ["Alpha", "B"]
    assert kb.unmatched == ("nothing/*.md",)
    assert kb.search("giraffes")[0].source == str(tmp_path / "kb" / "deep" / "b.txt")
    absolute = KnowledgeBase.from_globs([str(tmp_path / "kb" / "a.md")], "/nonexistent")
    assert len(absolute) == 1


def test_files_that_are_not_text_are_skipped_and_reported(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.md").write_text("# Alpha\n\nAlpha facts about zebras.\n")
    (tmp_path / "manual.pdf").write_bytes(b"%PDF-1.7\n\xe2\x28\xa1 binary")
    kb = KnowledgeBase.from_globs(["*"], tmp_path)
    assert [p.title for p in kb.passages] == ["Alpha"]
    assert kb.unreadable == ((str(tmp_path / "manual.pdf"), "not UTF-8 text (byte 9)"),)


def test_from_texts() -> None:
    kb = KnowledgeBase.from_texts({"faq.md": "# Refunds\n\nRefunds take five days."})
    [found] = kb.search("how long does a refund take")
    assert found == Passage("Refunds take five days.", "faq.md", "Refunds", found.score)
    # One distinctive word found (twice: title and text): a relevance of one or two, even in a
    # one-passage knowledge base.
    assert 1.0 < kb.search("refund")[0].score < 2.0
