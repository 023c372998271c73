"""The provider registry: names to implementations, options, credential resolution, knowledge;
and the LiveKit Inference adapter's offline parts (model IDs, credentials, missing extra)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sipserver.config import LiveKitInferenceModel, ProviderSpec
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers import inference
from sipserver.pipeline.providers.base import ChatMessage, ProviderError
from sipserver.pipeline.providers.local_llm import KnowledgeBaseLlm
from sipserver.pipeline.providers.openai import OpenAiLlm, OpenAiStt, OpenAiTts
from sipserver.pipeline.providers.registry import (
    LLM_PROVIDERS,
    STT_PROVIDERS,
    TTS_PROVIDERS,
    make_llm,
    make_stt,
    make_tts,
    resolve_credential,
)
from sipserver.pipeline.providers.retrieval import KnowledgeContextLlm, with_knowledge

CREDENTIALS = {"openai": {"api_key": "sk-model"}, "other": {"api_key": "sk-other"}, "empty": {}}
KB = KnowledgeBase.from_texts(
    {"hours.md": "# Opening hours\nWe are open from 9 am to 5 pm, Monday to Friday."}
)


def spec(provider: str, **options: Any) -> ProviderSpec:
    return ProviderSpec.model_validate({"provider": provider, **options})


def test_every_stage_has_local_and_openai() -> None:
    for table in (STT_PROVIDERS, LLM_PROVIDERS, TTS_PROVIDERS):
        assert {"local", "openai"} <= set(table)


def test_local_llm_answers_from_the_knowledge_base() -> None:
    llm = make_llm(spec("local"), knowledge=KB)
    assert isinstance(llm, KnowledgeBaseLlm)


def test_local_llm_takes_no_options() -> None:
    with pytest.raises(ProviderError, match=r"models\.m\.llm: unknown option\(s\) model"):
        make_llm(spec("local", model="x"), where="models.m.llm")


def test_openai_stages_use_the_models_credential() -> None:
    where = "models.m"
    llm = make_llm(spec("openai"), credentials=CREDENTIALS, credential="openai", where=where)
    stt = make_stt(spec("openai", language="en"), credentials=CREDENTIALS, credential="openai")
    tts = make_tts(spec("openai", voice="coral"), credentials=CREDENTIALS, credential="openai")
    assert isinstance(llm, OpenAiLlm) and llm.settings.api_key == "sk-model"
    assert llm.settings.model == "gpt-4o-mini"
    assert isinstance(stt, OpenAiStt) and stt.settings.model == "gpt-4o-mini-transcribe"
    assert stt.language == "en"
    assert isinstance(tts, OpenAiTts) and tts.settings.model == "gpt-4o-mini-tts"
    assert tts.voice == "coral" and tts.sample_rate == 24000


def test_a_stage_credential_overrides_the_models() -> None:
    llm = make_llm(
        spec("openai", credential="other", model="gpt-4.1-mini", temperature=0.3, timeout=5),
        credentials=CREDENTIALS,
        credential="openai",
    )
    assert isinstance(llm, OpenAiLlm)
    assert llm.settings.api_key == "sk-other" and llm.settings.model == "gpt-4.1-mini"
    assert llm.settings.timeout == 5.0 and llm.temperature == 0.3


def test_openai_compatible_server_without_a_key() -> None:
    llm = make_llm(spec("openai", base_url="http://127.0.0.1:8081/v1", model="smollm2"))
    assert isinstance(llm, OpenAiLlm) and llm.settings.api_key is None
    assert llm.settings.base_url == "http://127.0.0.1:8081/v1"


@pytest.mark.parametrize(
    ("options", "credential", "message"),
    [
        ({}, None, r"models\.m\.llm: needs a credential with api_key"),
        ({}, "nope", r"credential of the model: unknown credential 'nope' \(defined: empty,"),
        ({"credential": "nope"}, None, r"models\.m\.llm\.credential: unknown credential 'nope'"),
        ({}, "empty", r"credential 'empty' has no api_key \(credentials\.empty\.api_key\)"),
        ({"voice": "x"}, "openai", r"unknown option\(s\) voice; known: base_url, max_retries"),
        ({"timeout": "soon"}, "openai", r"models\.m\.llm\.timeout: must be a number >= 0"),
        ({"temperature": "hot"}, "openai", None),  # reaches the API, which refuses it
    ],
)
def test_openai_configuration_errors(
    options: dict[str, Any], credential: str | None, message: str | None
) -> None:
    def build() -> object:
        return make_llm(
            spec("openai", **options),
            credentials=CREDENTIALS,
            credential=credential,
            where="models.m.llm",
        )

    if message is None:
        build()
        return
    with pytest.raises(ProviderError, match=message):
        build()


def test_unknown_provider_lists_the_choices() -> None:
    with pytest.raises(ProviderError, match=r"stt: unknown provider 'deepgram'; choose one of"):
        make_stt(spec("deepgram"))


def test_resolve_credential() -> None:
    assert resolve_credential(spec("openai"), CREDENTIALS, None, "w") == (None, None)
    assert resolve_credential(spec("openai"), CREDENTIALS, "openai", "w")[0] == "openai"
    assert resolve_credential(spec("openai", credential="other"), CREDENTIALS, "openai", "w")[
        1
    ] == {"api_key": "sk-other"}


def test_hosted_llms_get_the_knowledge_base_passages() -> None:
    url = {"base_url": "http://127.0.0.1:1/v1"}
    llm = make_llm(spec("openai", **url), knowledge=KB)
    assert isinstance(llm, KnowledgeContextLlm) and llm.passages == 3
    llm = make_llm(spec("openai", knowledge_passages=1, **url), knowledge=KB)
    assert isinstance(llm, KnowledgeContextLlm) and llm.passages == 1
    assert isinstance(
        make_llm(spec("openai", knowledge_passages=0, **url), knowledge=KB), OpenAiLlm
    )
    assert isinstance(make_llm(spec("openai", **url), knowledge=KnowledgeBase(())), OpenAiLlm)
    with pytest.raises(ProviderError, match="knowledge_passages: must be an integer >= 0"):
        make_llm(spec("openai", knowledge_passages=-1, **url), knowledge=KB)


def test_relevant_passages_go_after_the_instructions() -> None:
    messages = [
        ChatMessage("system", "You are the Lakeside agent."),
        ChatMessage("user", "When are you open?"),
    ]
    out = with_knowledge(messages, KB, 3)
    assert [m.role for m in out] == ["system", "system", "user"]
    assert out[0] == messages[0] and out[2] == messages[1]
    assert "9 am to 5 pm" in out[1].content and "[Opening hours]" in out[1].content
    unrelated = [ChatMessage("user", "Do you sell bicycles?")]
    assert with_knowledge(unrelated, KB, 3) == unrelated


# --------------------------------------------------------------------------- LiveKit Inference

Id = inference.ModelId


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("stt", "deepgram/nova-3:en", Id("deepgram", "nova-3", "en")),
        ("stt", "assemblyai/universal-streaming", Id("assemblyai", "universal-streaming")),
        ("llm", "openai/gpt-4o-mini", Id("openai", "gpt-4o-mini")),
        ("llm", "moonshotai/kimi-k2/instruct", Id("moonshotai", "kimi-k2/instruct")),
        ("tts", "cartesia/sonic-3:9626c31c-bec5", Id("cartesia", "sonic-3", "9626c31c-bec5")),
    ],
)
def test_parse_model_id(kind: Any, value: str, expected: inference.ModelId) -> None:
    parsed = inference.parse_model_id(kind, value)
    assert parsed == expected and parsed.name == f"{expected.provider}/{expected.model}"


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("llm", "openai/gpt-4o:latest"),
        ("stt", "deepgram"),
        ("tts", "cartesia/sonic-3:"),
        ("stt", "/x"),
    ],
)
def test_parse_model_id_refuses(kind: Any, value: str) -> None:
    with pytest.raises(ProviderError, match=f"{kind}: '{value}' is not provider/model"):
        inference.parse_model_id(kind, value)


LIVEKIT = LiveKitInferenceModel(
    credential="lk", stt="deepgram/nova-3:en", llm="openai/gpt-4o-mini", tts="cartesia/sonic-3:v"
)


def test_livekit_credential_needs_key_and_secret() -> None:
    with pytest.raises(
        ProviderError, match=r"models\.g\.credential: 'lk' lacks credentials\.lk\.api_secret"
    ):
        inference.LiveKitCredential.from_entry("lk", {"api_key": "k"}, "models.g")
    entry = {"api_key": "k", "api_secret": "sekrit", "url": "wss://p.livekit.cloud"}
    credential = inference.LiveKitCredential.from_entry("lk", entry, "models.g")
    assert credential.kwargs() == {"api_key": "k", "api_secret": "sekrit"}
    assert "sekrit" not in repr(credential)


def test_livekit_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "livekit_available", lambda: False)
    with pytest.raises(ProviderError, match=r"models\.g: .*pip install 'sipserver\[livekit\]'"):
        inference.livekit_stages(
            LIVEKIT, {"lk": {"api_key": "k", "api_secret": "s"}}, where="models.g"
        )


needs_livekit = pytest.mark.skipif(
    not inference.livekit_available(),
    reason="livekit-agents is not installed (pip install 'sipserver[livekit]')",
)


@needs_livekit
async def test_livekit_clients_are_built_from_the_model_ids() -> None:
    entry = {"api_key": "k" * 32, "api_secret": "s" * 32, "inference_url": "http://127.0.0.1:1/v1"}
    stt, llm, tts = inference.livekit_stages(LIVEKIT, {"lk": entry}, where="models.g")
    assert isinstance(stt, inference.LiveKitStt) and isinstance(tts, inference.LiveKitTts)
    assert isinstance(llm, inference.LiveKitLlm)
    stt_client = stt.client()
    assert (stt_client.model, stt_client._opts.language) == ("deepgram/nova-3", "en")
    assert stt_client._opts.sample_rate == stt.sample_rate == 16000
    tts_client = tts.client()
    assert (tts_client._opts.model, tts_client._opts.voice) == ("cartesia/sonic-3", "v")
    assert tts_client.sample_rate == tts.sample_rate
    assert llm.client().model == "openai/gpt-4o-mini"
    assert stt_client._opts.base_url == "http://127.0.0.1:1/v1"
    await stt.close()
    await tts.close()


@needs_livekit
async def test_livekit_gateway_unreachable_is_a_provider_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = {
        "api_key": "k" * 32,
        "api_secret": "s" * 32,
        "inference_url": f"http://127.0.0.1:{port}/v1",
    }
    stt, llm, tts = inference.livekit_stages(LIVEKIT, {"lk": entry}, where="models.g")
    with pytest.raises(ProviderError, match=r"models\.g\.llm: LiveKit Inference failed"):
        await asyncio.wait_for(_drain(llm.stream([ChatMessage("user", "hi")])), 60)
    await stt.close()  # type: ignore[attr-defined]
    await tts.close()  # type: ignore[attr-defined]


async def _drain(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]
