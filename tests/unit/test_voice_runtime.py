"""VoiceRuntime: configuration to sessions (models are built lazily, never loaded here)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import structlog
import yaml

from sipserver.config import embedded_config_path, parse_config
from sipserver.observability import Metrics
from sipserver.pipeline.events import SessionEvent, TurnPrediction
from sipserver.pipeline.providers import inference
from sipserver.pipeline.providers.base import ProviderError
from sipserver.pipeline.providers.openai import OpenAiLlm
from sipserver.pipeline.providers.retrieval import KnowledgeContextLlm
from sipserver.pipeline.runtime import VoiceRuntime
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.voice import VoiceSession

INFO = CallInfo("c1", "demo", "+1555", "+15005550100", 8000, "test")


def _config(mutate: object = None) -> object:
    data = yaml.safe_load(embedded_config_path().read_text())
    if callable(mutate):
        mutate(data)
    return parse_config(yaml.safe_dump(data))


async def test_embedded_demo_agent_gets_a_voice_session() -> None:
    config = _config()
    runtime = VoiceRuntime(config)  # type: ignore[arg-type]
    agent = config.agents[0]  # type: ignore[attr-defined]
    assert runtime.serves(agent)
    session = runtime.new_session(agent, INFO)
    assert isinstance(session, VoiceSession)
    assert session.profile.greeting == agent.greeting
    session.on_hangup("test")
    await runtime.close()


async def test_a_knowledge_base_that_matches_nothing_is_a_warning_naming_the_key(
    tmp_path: pathlib.Path,
) -> None:
    copy = tmp_path / "sipserver.yaml"  # the embedded config copied without its kb/
    copy.write_text(embedded_config_path().read_text())
    with structlog.testing.capture_logs() as logs:
        runtime = VoiceRuntime(_config(), config_path=copy)  # type: ignore[arg-type]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["key"]) for e in warnings] == [
        ("knowledge_base_pattern_matched_nothing", "agents[0].knowledge_base[0]"),
        ("knowledge_base_empty", "agents[0].knowledge_base"),
    ]
    assert warnings[0]["looked_for"] == str(tmp_path / "kb" / "demo" / "*.md")
    await runtime.close()
    with structlog.testing.capture_logs() as logs:
        runtime = VoiceRuntime(_config())  # type: ignore[arg-type]
    assert [e for e in logs if e["log_level"] == "warning"] == []
    await runtime.close()


def _rms(frames: list[bytes]) -> float:
    x = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


@pytest.mark.parametrize("enabled", [True, False])
async def test_audio_feedback_settings_reach_the_call(enabled: bool) -> None:
    def ambient(data: dict) -> None:  # type: ignore[type-arg]
        data["models"]["demo-voice"]["audio_feedback"] = {
            "enabled": enabled,
            "ambient_sound": "office_ambience",
            "ambient_volume": 0.5,
        }
        data["agents"][0]["greeting"] = None

    config = _config(ambient)
    runtime = VoiceRuntime(config)  # type: ignore[arg-type]
    session = runtime.new_session(config.agents[0], INFO)  # type: ignore[attr-defined]
    assert session is not None
    session.on_start(INFO)
    frames = [session.next_frame() for _ in range(50)]
    # listening, nothing said: the ambient bed is all there is
    assert (_rms(frames) > 100) is enabled
    session.on_hangup("test")
    await runtime.close()


def _livekit(data: dict) -> None:  # type: ignore[type-arg]
    data["credentials"] = {"lk": {"api_key": "k", "api_secret": "s", "url": "wss://x"}}
    data["models"]["demo-voice"] = {
        "type": "livekit_inference",
        "credential": "lk",
        "stt": "deepgram/nova-3:en",
        "llm": "openai/gpt-4o-mini",
        "tts": "cartesia/sonic-2:voice",
    }
    data["agents"][0]["listens"] = {"enabled": False}  # listens needs a custom model


def test_livekit_inference_without_the_extra_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inference, "livekit_available", lambda: False)
    with pytest.raises(ProviderError, match=r"pip install 'sipserver\[livekit\]'") as info:
        VoiceRuntime(_config(_livekit))  # type: ignore[arg-type]
    assert str(info.value).startswith("models.demo-voice: type livekit_inference")


async def test_livekit_inference_agents_are_served_with_the_extra() -> None:
    if not inference.livekit_available():
        pytest.skip("livekit-agents is not installed (pip install 'sipserver[livekit]')")
    config = _config(_livekit)
    runtime = VoiceRuntime(config)  # type: ignore[arg-type]
    agent = config.agents[0]  # type: ignore[attr-defined]
    assert runtime.serves(agent)
    parts = runtime._models["demo-voice"]
    assert isinstance(parts.stt, inference.LiveKitStt)
    assert isinstance(parts.tts, inference.LiveKitTts)
    assert parts.options.endpointing.min_delay == 0.5  # the custom defaults
    session = runtime.new_session(agent, INFO)
    assert isinstance(session, VoiceSession)
    session.on_hangup("test")
    await runtime.close()


def test_livekit_inference_settings_apply_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "livekit_available", lambda: True)

    def slower(data: dict) -> None:  # type: ignore[type-arg]
        _livekit(data)
        data["models"]["demo-voice"]["endpointing"] = {"min_endpointing_delay": 0.9}
        data["models"]["demo-voice"]["vad"] = {"sample_rate": 8000}

    parts = VoiceRuntime(_config(slower))._models["demo-voice"]  # type: ignore[arg-type]
    assert parts.options.endpointing.min_delay == 0.9
    assert parts.vad.sample_rate == 8000
    assert parts.options.interruptions.min_duration == 0.5


def test_unknown_llm_provider_is_a_clear_error() -> None:
    def unknown(data: dict) -> None:  # type: ignore[type-arg]
        data["models"]["demo-voice"]["llm"] = "nosuch"

    with pytest.raises(ProviderError, match=r"models\.demo-voice\.llm: unknown provider 'nosuch'"):
        VoiceRuntime(_config(unknown))  # type: ignore[arg-type]


def test_openai_llm_without_a_key_is_a_clear_error() -> None:
    def openai(data: dict) -> None:  # type: ignore[type-arg]
        data["models"]["demo-voice"]["llm"] = "openai"

    with pytest.raises(ProviderError, match=r"models\.demo-voice\.llm: needs a credential"):
        VoiceRuntime(_config(openai))  # type: ignore[arg-type]


def test_openai_llm_of_a_local_server_gets_the_knowledge_base() -> None:
    def openai(data: dict) -> None:  # type: ignore[type-arg]
        data["models"]["demo-voice"]["llm"] = {
            "provider": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "smollm2",
        }

    config = _config(openai)
    runtime = VoiceRuntime(config)  # type: ignore[arg-type]
    llm = runtime._llms[config.agents[0].slug]  # type: ignore[attr-defined]
    assert isinstance(llm, KnowledgeContextLlm)
    assert isinstance(llm.inner, OpenAiLlm)
    assert llm.inner.settings.base_url == "http://127.0.0.1:9/v1"
    assert llm.inner.settings.api_key is None


def test_reload_keeps_unchanged_models_and_rebuilds_changed_ones() -> None:
    config = _config()
    runtime = VoiceRuntime(config)  # type: ignore[arg-type]
    before = runtime._models["demo-voice"]
    runtime.apply(runtime.prepare(_config()))  # type: ignore[arg-type]
    assert runtime._models["demo-voice"] is before

    def slower(data: dict) -> None:  # type: ignore[type-arg]
        data["models"]["demo-voice"]["endpointing"] = {"min_endpointing_delay": 0.8}

    prepared = runtime.prepare(_config(slower))  # type: ignore[arg-type]
    # Prepared, not in use: new calls still get the running parts until apply().
    assert runtime._models["demo-voice"] is before
    runtime.apply(prepared)
    after = runtime._models["demo-voice"]
    assert after is not before
    assert after.options.endpointing.min_delay == 0.8


async def test_turn_predictions_run_and_skipped_are_counted_by_outcome() -> None:
    config = _config()
    metrics = Metrics()
    runtime = VoiceRuntime(config, metrics=metrics)  # type: ignore[arg-type]
    seen: list[SessionEvent] = []
    session = runtime.new_session(config.agents[0], INFO, on_event=seen.append)  # type: ignore[attr-defined]
    assert session is not None
    published = [
        TurnPrediction(1.0, "run"),
        TurnPrediction(2.0, "skipped_question"),
        TurnPrediction(3.0, "skipped_question"),
    ]
    for event in published:
        session._emit(event)  # as _decide_turn publishes them
    assert seen == published  # still forwarded (the frame link relays them)

    def count(outcome: str) -> float:
        name = "sipserver_voice_turn_predictions_total"
        return metrics.registry.get_sample_value(name, {"outcome": outcome}) or 0.0

    assert (count("run"), count("skipped_question"), count("skipped_delays")) == (1, 2, 0)
    session.on_hangup("test")
    await runtime.close()
