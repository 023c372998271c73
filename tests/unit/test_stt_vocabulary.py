"""The agent's vocabulary for the STT: term extraction, the prompt of each final decode, the
``stt.vocabulary`` setting, and the providers that take or ignore the prompt."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from aiohttp import web

from sipserver.config import ProviderSpec, embedded_config_path, parse_config
from sipserver.pipeline.clock import VirtualClock
from sipserver.pipeline.endpointing import EndpointingOptions
from sipserver.pipeline.interruptions import InterruptionOptions
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.openai import OpenAiSettings, OpenAiStt
from sipserver.pipeline.providers.registry import make_stt
from sipserver.pipeline.runtime import VoiceRuntime
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.vocabulary import (
    MAX_QUESTION_CHARS,
    agent_vocabulary,
    knowledge_terms,
    last_question,
    stt_prompt,
)
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession
from tests.unit.test_openai_provider import _pcm, stub  # noqa: F401  (a fixture)
from tests.unit.test_voice_session import Rig
from tests.unit.voice_fakes import EnergyVad, FakeLlm, FakeStt, FakeTts, call_info

KB = """\
# Brightline

Welcome to Brightline. FiberMax is the fibre plan of Brightline, and every FiberMax contract comes
with a Zentrio router. The Kestrel Plus bundle adds SecureVault backup.

## Opening hours

The office at Harbour Street is open from Monday to Friday. Invoices are sent by email, and
past invoices are on the dashboard. Register your PBX over SIP.
"""


# ------------------------------------------------------------------------- term extraction


def test_terms_are_names_mixed_case_words_and_acronyms_most_frequent_first() -> None:
    kb = KnowledgeBase.from_texts({"kb.md": KB})
    terms = knowledge_terms([*kb.titles, *(p.text for p in kb.passages)])
    assert terms[:2] == ["Brightline", "FiberMax"]  # twice each (a heading counts), then once
    assert set(terms) == {
        "FiberMax",
        "Brightline",
        "Zentrio",
        "Kestrel Plus",
        "SecureVault",
        "Harbour Street",
        "PBX",
        "SIP",
    }


def test_common_capitalised_words_and_sentence_starts_are_no_terms() -> None:
    terms = knowledge_terms(
        [
            "Invoices are sent monthly. You can see invoices online.",  # lower case elsewhere
            "Outside the hours, leave a message.",  # starts one sentence, once
            "We open on Monday and in March. I call back.",  # days, months, I
            "Write to support@Example.com or see https://Example.com/Help now.",  # addresses
        ]
    )
    assert terms == []


def test_a_word_that_only_starts_sentences_is_no_term() -> None:
    assert knowledge_terms(["Ask us. Ask again.", "Zentrio is a router."]) == []
    assert knowledge_terms(["Monday to Friday.", "Open on Monday."]) == []
    assert knowledge_terms(["Zentrio is a router.", "Reset the Zentrio."]) == ["Zentrio"]
    assert knowledge_terms(["We like Brightline's plans.", "Ask Brightline."]) == ["Brightline"]
    assert knowledge_terms(["Kestrel Plus costs more."]) == ["Kestrel Plus"]  # a run is a name


def test_term_extraction_is_deterministic_and_bounded() -> None:
    texts = [f"Buy the Alpha{i} today." for i in range(60)] + ["Ask Beta. We sell Beta."]
    terms = knowledge_terms(texts, limit=5)
    assert terms == ["Beta", "Alpha0", "Alpha1", "Alpha2", "Alpha3"]  # Beta twice, the rest once
    assert knowledge_terms(texts, limit=5) == terms


def test_agent_vocabulary_puts_the_name_first_and_bounds_the_line() -> None:
    kb = KnowledgeBase.from_texts({"kb.md": KB})
    line = agent_vocabulary("Brightline support", kb)
    assert line.startswith("Brightline support: Brightline, FiberMax, ")
    assert line.endswith(".")
    long_kb = KnowledgeBase.from_texts(
        {"kb.md": " ".join(f"Ask for Item{i:03d} now." for i in range(200))}
    )
    short = agent_vocabulary("Shop", long_kb, max_chars=100)
    assert len(short) <= 100 and short.startswith("Shop: Item000, Item001")
    assert len(agent_vocabulary("Shop", long_kb).split(", ")) == 40  # MAX_TERMS
    assert agent_vocabulary("", KnowledgeBase(())) == ""
    assert agent_vocabulary("Shop", KnowledgeBase(())) == "Shop."


def test_the_demo_agents_vocabulary_holds_its_names() -> None:
    kb = KnowledgeBase.from_globs(["kb/demo/*.md"], embedded_config_path().parent)
    line = agent_vocabulary("Demo agent", kb)
    for term in ("Lakeside Voice", "Harbour Street", "Starter", "Enterprise", "PBX", "Twilio"):
        assert term in line
    assert len(line) < 480


def test_last_question_is_the_latest_agent_utterance_when_it_asks() -> None:
    assert last_question([]) is None
    assert last_question(["Which plan?", "It costs 19 dollars."]) is None  # answered since
    assert last_question(["Hi.", "Sure. Which of our plans would you like to change to?"]) == (
        "Which of our plans would you like to change to?"
    )
    # a short question keeps the sentence before it
    assert last_question(["Hello, this is the demo agent. How can I help you?"]) == (
        "Hello, this is the demo agent. How can I help you?"
    )
    long = "Tell me " + "more " * 100 + "please?"
    question = last_question([long])
    assert question is not None and len(question) <= MAX_QUESTION_CHARS
    assert question.endswith("please?")


def test_stt_prompt_joins_vocabulary_and_question() -> None:
    assert stt_prompt("Shop: A, B.", "Which one?") == "Shop: A, B. Which one?"
    assert stt_prompt("Shop: A, B.", None) == "Shop: A, B."
    assert stt_prompt("", "Which one?") == "Which one?"
    assert stt_prompt("", None) is None


# ---------------------------------------------------------------- the session's final decodes


def _rig(vocabulary: str | None, *, greeting: str | None, early_stt: float | None) -> Rig:
    clock = VirtualClock()
    stt = FakeStt(clock, ["I want FiberMax", "yes"])
    llm = FakeLlm(clock, reply=lambda m: "Sure. Which speed would you like?")
    tts = FakeTts(clock)
    vad = EnergyVad()
    options = VoiceOptions(
        interruptions=InterruptionOptions(),
        endpointing=EndpointingOptions(0.5, 3.0),
        early_stt=early_stt,
    )
    session = VoiceSession(
        AgentProfile("Be brief.", greeting=greeting, vocabulary=vocabulary),
        options,
        stt=stt,
        llm=llm,
        tts=tts,
        vad=vad,
        clock=clock,
    )
    session.on_start(call_info())
    return Rig(session, clock, stt, llm, tts, vad)


@pytest.mark.parametrize("early_stt", [None, 0.1])
async def test_each_final_decode_gets_the_vocabulary_and_the_agents_last_question(
    early_stt: float | None,
) -> None:
    rig = _rig("Brightline: FiberMax.", greeting="Welcome. How can I help?", early_stt=early_stt)
    await rig.run(12.0, speech=[(3.0, 4.0), (9.0, 9.6)])
    assert [c.text for c in rig.commits()] == ["I want FiberMax", "yes"]
    assert rig.stt.prompts == [
        "Brightline: FiberMax. Welcome. How can I help?",
        "Brightline: FiberMax. Sure. Which speed would you like?",
    ]


async def test_without_a_vocabulary_no_prompt_is_passed() -> None:
    rig = _rig(None, greeting="Welcome. How can I help?", early_stt=None)
    await rig.run(6.0, speech=[(3.0, 4.0)])
    assert [c.text for c in rig.commits()] == ["I want FiberMax"]
    assert rig.stt.prompts == [None]


# ------------------------------------------------------------------- configuration, runtime

INFO = CallInfo("c1", "demo", "+1555", "+15005550100", 8000, "test")


def _config(stt: object) -> Any:
    data = yaml.safe_load(embedded_config_path().read_text())
    data["models"]["demo-voice"]["stt"] = stt
    return parse_config(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("stt", "expected"),
    [
        ("local", True),
        ({"provider": "local", "vocabulary": "auto"}, True),
        ({"provider": "local", "vocabulary": "off"}, False),
        ({"provider": "local", "vocabulary": False}, False),  # YAML 1.1 reads `off` as false
        ({"provider": "local", "model": "moonshine-base"}, False),  # takes no prompt
    ],
)
async def test_runtime_builds_the_agents_vocabulary_once_when_the_stt_takes_it(
    stt: object, expected: bool
) -> None:
    config = _config(stt)
    runtime = VoiceRuntime(config, config_path=embedded_config_path())
    agent = config.agents[0]
    session = runtime.new_session(agent, INFO)
    assert session is not None
    vocabulary = session.profile.vocabulary
    if expected:
        assert vocabulary is not None and vocabulary.startswith("Demo agent: Lakeside Voice")
        other = runtime.new_session(agent, INFO)
        assert other is not None and other.profile.vocabulary is vocabulary  # built once
        other.on_hangup("test")
    else:
        assert vocabulary is None
    session.on_hangup("test")
    await runtime.close()


@pytest.mark.parametrize("value", ["maybe", 3, "on"])
def test_a_bad_vocabulary_setting_names_the_key(value: object) -> None:
    with pytest.raises(ProviderError, match=r"models\.demo-voice\.stt\.vocabulary: must be one"):
        make_stt(
            ProviderSpec.model_validate({"provider": "local", "vocabulary": value}),
            where="models.demo-voice.stt",
        )


def test_openai_stt_takes_the_vocabulary_only_when_asked() -> None:
    credentials = {"openai": {"api_key": "sk-test"}}
    off = make_stt(ProviderSpec(provider="openai"), credentials=credentials, credential="openai")
    on = make_stt(
        ProviderSpec.model_validate({"provider": "openai", "vocabulary": "auto"}),
        credentials=credentials,
        credential="openai",
    )
    assert getattr(off, "vocabulary", None) is False
    assert getattr(on, "vocabulary", None) is True


async def test_openai_stt_sends_its_prompt_then_the_calls(stub: Any) -> None:  # noqa: F811
    seen: list[dict[str, Any]] = []

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append({k: v for k, v in form.items() if k != "file"})
        return web.json_response({"text": "fibermax"})

    url = await stub("/v1/audio/transcriptions", transcriptions)
    settings = OpenAiSettings("whisper-1", api_key="sk-test", base_url=url)
    stt = OpenAiStt(settings, prompt="Brightline.", vocabulary=True)
    await stt.transcribe(_pcm(0.2, 16000), prompt="FiberMax. Which plan?")
    await stt.transcribe(_pcm(0.2, 16000))
    assert [s.get("prompt") for s in seen] == ["Brightline. FiberMax. Which plan?", "Brightline."]
