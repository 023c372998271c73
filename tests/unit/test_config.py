"""sipserver.config: every validation rule, env expansion, error reporting, the shipped YAML files.

Each rule is asserted by the key path it reports and a piece of its reason.
"""

from __future__ import annotations

import copy
import ipaddress
import pathlib
import types
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from sipserver import config as config_module
from sipserver.config import (
    SHIPPED_SOUNDS,
    Config,
    ConfigError,
    CustomModel,
    LiveKitInferenceModel,
    ProviderSpec,
    config_dir,
    embedded_config_path,
    load_config,
    normalize_number,
    parse_config,
)
from sipserver.pipeline.knowledge import knowledge_base_warnings

REPO = pathlib.Path(__file__).resolve().parents[2]
FULL_EXAMPLE = REPO / "config" / "examples" / "full.yaml"
FULL_EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-test",
    "LIVEKIT_API_KEY": "lk-key",
    "LIVEKIT_API_SECRET": "lk-secret",
    "SUPPORT_SIP_PASSWORD": "support-password",
    "SUPPORT_WS_SECRET": "support-ws-secret-0123456789",
    "TWILIO_AUTH_TOKEN": "twilio-token",
    "SALES_SIP_PASSWORD": "sales-password",
    "SALES_WS_SECRET": "sales-ws-secret-0123456789",
    "ALICE_PASSWORD_HASH": "scrypt$16384$8$1$salt$hash",
    "CALLS_WEBHOOK_SECRET": "calls-webhook-secret-0123456789",
    "SUPPORT_WEBHOOK_SECRET": "support-webhook-secret-0123456789",
}
SECRET = "0123456789abcdef"


def base() -> dict[str, Any]:
    """A valid config: two models, two agents, one user."""
    return {
        "credentials": {"lk": {"api_key": "k", "api_secret": "s"}},
        "models": {
            "voice": {"type": "custom"},
            "gateway": {
                "type": "livekit_inference",
                "credential": "lk",
                "stt": "deepgram/nova-3",
                "llm": "openai/gpt-4o-mini",
                "tts": "cartesia/sonic-2",
            },
        },
        "agents": [
            {
                "slug": "support",
                "realtime": {"enabled": True, "model": "voice"},
                "sip": {
                    "enabled": True,
                    "numbers": ["+14155550100"],
                    "username": "support",
                    "password": "pw-support-0001",
                },
                "websocket": {"enabled": True, "secret": SECRET},
            },
            {
                "slug": "sales",
                "sip": {
                    "enabled": True,
                    "numbers": ["200"],
                    "username": "sales",
                    "password": "pw-sales-00001",
                },
            },
        ],
        "users": [{"name": "alice", "password_hash": "scrypt$abc", "role": "admin"}],
    }


def parse(doc: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(yaml.safe_dump(doc, sort_keys=False), env=env or {})


def errors_of(doc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc, env)
    return info.value.errors


def assert_error(doc: dict[str, Any], path: str, reason: str) -> list[str]:
    errors = errors_of(doc)
    matching = [e for e in errors if e.startswith(f"{path}: ") and reason in e]
    assert matching, f"no '{path}: ...{reason}...' in {errors}"
    return errors


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path ("agents.0.sip.numbers") set to value."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for part in parents:
        node = node[part]
    node[last] = value
    return doc


# --- the shipped YAML files --------------------------------------------------------------------


def test_embedded_default_loads_with_no_environment() -> None:
    config = load_config(None, env={})
    server = config.server
    assert server.sip.udp == ["127.0.0.1:5060"]
    assert server.sip.tcp == ["127.0.0.1:5060"]
    assert server.http_host_port == ("127.0.0.1", 8080)
    assert server.public_url == "http://127.0.0.1:8080"
    assert server.store_url == ("sqlite", str(pathlib.Path("./var") / "bindings.db"))
    assert config.credentials == {}
    model = config.models["demo-voice"]
    assert isinstance(model, CustomModel)
    assert (model.stt.provider, model.llm.provider, model.tts.provider) == ("local",) * 3
    demo = config.agent_by_slug("demo")
    assert demo is not None
    assert demo.realtime.enabled and demo.realtime.model == "demo-voice"
    assert demo.greeting and demo.instructions
    assert demo.sip.enabled and demo.sip.username == "demo"
    assert demo.sip.password == "demo-secret-password"
    assert demo.sip.allowed_ips == [] and demo.sip.networks == ()
    assert demo.websocket.enabled and demo.websocket.secret and len(demo.websocket.secret) >= 16
    # The AI Listens demo: a monitored number, both tracks, a user per role.
    assert demo.listens.enabled and demo.listens.numbers == ["+15005550199"]
    assert demo.listens.channel == "both_tracks" and demo.listens.forward_to
    assert sorted(u.role for u in config.users) == sorted(
        ["admin", "workspace_admin", "supervisor", "agent", "viewer"]
    )
    assert config.agent_by_number(demo.sip.numbers[0]) is demo


def test_knowledge_base_patterns_are_taken_from_the_config_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = load_config(None, env={})
    assert knowledge_base_warnings(embedded, config_dir(None)) == []
    # A copy of the embedded config without its kb/ directory: a loud warning naming the key.
    copy_path = tmp_path / "sipserver.yaml"
    copy_path.write_text(embedded_config_path().read_text())
    monkeypatch.chdir(REPO)  # the working directory has a kb/demo: it must not be used
    assert config_dir(copy_path) == tmp_path
    assert knowledge_base_warnings(load_config(copy_path, env={}), config_dir(copy_path)) == [
        f"agents[0].knowledge_base[0]: 'kb/demo/*.md' matches no file (looked for"
        f" {tmp_path / 'kb/demo/*.md'}, relative to the config); the agent answers without"
        " these documents"
    ]
    # With its documents beside it, the copy works wherever it is started from.
    (tmp_path / "kb" / "demo").mkdir(parents=True)
    (tmp_path / "kb" / "demo" / "faq.md").write_text("# FAQ\nOpen 9 to 5.\n")
    assert knowledge_base_warnings(load_config(copy_path, env={}), config_dir(copy_path)) == []
    absolute = with_(base(), "agents.1.knowledge_base", [str(tmp_path / "nothing" / "*.md")])
    (warning,) = knowledge_base_warnings(parse(absolute), tmp_path)
    assert warning.startswith("agents[1].knowledge_base[0]: ") and "relative" not in warning


def test_embedded_default_listens_on_loopback_only() -> None:
    server = load_config(None, env={}).server
    hosts = [h for h, _ in server.sip.udp_addresses + server.sip.tcp_addresses]
    hosts.append(server.http_host_port[0])
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts)


def test_embedded_config_path_is_the_repository_copy_in_a_checkout() -> None:
    path = embedded_config_path()
    assert path.is_file()
    assert path.read_text() == (REPO / "config" / "sipserver.yaml").read_text()


def test_load_config_defaults_env_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FULL_EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    assert load_config(FULL_EXAMPLE).credentials["openai"]["api_key"] == "sk-test"


def test_full_example_loads_with_its_environment() -> None:
    config = load_config(FULL_EXAMPLE, env=FULL_EXAMPLE_ENV)
    assert config.credentials["livekit_inference"]["api_secret"] == "lk-secret"
    assert isinstance(config.models["gateway-voice"], LiveKitInferenceModel)
    support = config.agent_by_slug("support")
    assert support is not None and support.sip.password == "support-password"
    assert config.server.store_url == ("sqlite", "/var/lib/sipserver/bindings.db")
    assert config.server.sip.udp_addresses == [("0.0.0.0", 5060), ("::", 5060)]


def test_full_example_reports_every_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(FULL_EXAMPLE, env={})
    assert {line.rsplit(" variable ", 1)[1].split()[0] for line in info.value.errors} == set(
        FULL_EXAMPLE_ENV
    )
    assert "agents[0].sip.password: environment variable SUPPORT_SIP_PASSWORD is not set" in (
        info.value.errors
    )


def _model_of(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The model class a raw value is validated as (None for scalars)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            fields = getattr(member, "model_fields", {})
            if "type" in fields and isinstance(value, dict):
                if fields["type"].default == value.get("type"):
                    return typing.cast(type[BaseModel], member)
            elif member is not type(None):
                found = _model_of(member, value)
                if found is not None:
                    return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _keys_used(model: type[BaseModel], raw: dict[str, Any], seen: dict[type, set[str]]) -> None:
    seen.setdefault(model, set()).update(raw)
    for key, value in raw.items():
        if key not in model.model_fields:  # provider options (ProviderSpec allows extra keys)
            continue
        annotation = model.model_fields[key].annotation
        items: list[tuple[Any, Any]] = [(annotation, value)]
        origin = typing.get_origin(annotation)
        if origin is list:
            items = [(typing.get_args(annotation)[0], v) for v in value]
        elif origin is dict:
            items = [(typing.get_args(annotation)[1], v) for v in value.values()]
        for item_annotation, item in items:
            sub = _model_of(item_annotation, item)
            if sub is not None and isinstance(item, dict):
                _keys_used(sub, item, seen)


def test_full_example_uses_every_key() -> None:
    raw = yaml.safe_load(FULL_EXAMPLE.read_text())
    seen: dict[type, set[str]] = {}
    _keys_used(Config, raw, seen)
    models = [
        cls
        for cls in vars(config_module).values()
        if isinstance(cls, type)
        and issubclass(cls, BaseModel)
        and cls.__module__ == "sipserver.config"
    ]
    missing = {cls.__name__: set(cls.model_fields) - seen.get(cls, set()) for cls in models}
    assert {name: keys for name, keys in missing.items() if keys} == {}


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_follow_the_settings_table() -> None:
    config = parse({"models": {"m": {"type": "custom"}}, "agents": [{"slug": "a"}]})
    model = config.models["m"]
    assert isinstance(model, CustomModel)
    assert model.interruptions.model_dump() == {
        "allow_interruptions": True,
        "min_interruption_duration": 0.5,
        "min_interruption_words": 0,
        "false_interruption_timeout": 2.0,
        "resume_false_interruption": True,
    }
    assert model.endpointing.model_dump() == {
        "min_endpointing_delay": 0.5,
        "max_endpointing_delay": 3.0,
    }
    assert model.vad.model_dump() == {
        "min_speech_duration": 0.05,
        "min_silence_duration": 0.55,
        "activation_threshold": 0.5,
        "prefix_padding_duration": 0.5,
        "max_buffered_speech": 60.0,
        "sample_rate": 16000,
    }
    assert model.audio_feedback.model_dump() == {
        "enabled": False,
        "thinking_sound": "keyboard_typing",
        "thinking_volume": 0.8,
        "ambient_sound": "none",
        "ambient_volume": 0.3,
    }
    assert model.preemptive_generation is True
    assert model.turn_detection.model == "multilingual"
    agent = config.agents[0]
    assert agent.name == "a"
    assert agent.instructions == config_module.DEFAULT_INSTRUCTIONS
    assert agent.greeting is None and agent.knowledge_base == []
    assert (agent.realtime.enabled, agent.realtime.model) == (False, None)
    assert (agent.sip.enabled, agent.sip.invite_auth, agent.sip.srtp) == (False, "digest", "off")
    assert agent.listens.channel == "inbound"
    assert agent.listens.roles == ["admin", "workspace_admin", "supervisor"]
    sip = config.server.sip
    assert sip.digest_algorithms == ["MD5"]  # one MD5 challenge, as Kamailio and Asterisk
    assert sip.digest_uri_check == "server"
    assert (sip.nonce_ttl, sip.min_expires, sip.max_expires, sip.default_expires) == (
        300.0,
        60,
        3600,
        3600,
    )
    assert (sip.max_contacts_per_aor, sip.max_message_size) == (10, 65535)
    assert (sip.tls.listen, sip.tls.verify_client, sip.tls.min_version) == ([], False, "1.2")
    assert sip.ban.model_dump() == {
        "max_failures": 5,
        "window": 60.0,
        "duration": 600.0,
        "max_tracked_sources": 100000,
    }
    assert config.server.workers == "auto"
    assert config.server.effective_realm == "127.0.0.1"


def test_livekit_blocks_are_none_when_absent() -> None:
    model = parse(base()).models["gateway"]
    assert isinstance(model, LiveKitInferenceModel)
    assert (model.interruptions, model.endpointing, model.vad, model.turn_detection) == (None,) * 4


def test_provider_spec_name_or_mapping() -> None:
    doc = with_(base(), "models.voice.stt", {"provider": "openai", "model": "whisper-1"})
    model = parse(doc).models["voice"]
    assert isinstance(model, CustomModel)
    assert model.stt.provider == "openai" and model.stt.options == {"model": "whisper-1"}
    assert model.llm == ProviderSpec(provider="local")
    assert_error(
        with_(base(), "models.voice.tts", {"model": "x"}), "models.voice.tts.provider", "required"
    )


def test_config_is_frozen_and_hides_secrets_in_repr() -> None:
    config = parse(base())
    with pytest.raises(ValidationError):
        config.agents[0].sip.enabled = False  # type: ignore[misc]
    text = repr(config)
    assert "pw-support-0001" not in text and SECRET not in text and "scrypt$abc" not in text


# --- realtime and models -----------------------------------------------------------------------


def test_realtime_enabled_requires_a_model() -> None:
    doc = with_(base(), "agents.0.realtime", {"enabled": True})
    assert_error(doc, "agents[0].realtime.model", "required when realtime.enabled is true")


def test_realtime_model_must_exist() -> None:
    doc = with_(base(), "agents.0.realtime.model", "nope")
    assert_error(doc, "agents[0].realtime.model", "unknown model 'nope' (defined: gateway, voice)")


@pytest.mark.parametrize("model", ["custom", "gateway"])
def test_model_credential_must_exist(model: str) -> None:
    doc = base()
    doc["models"]["custom"] = {"type": "custom", "credential": "openai"}
    doc["models"]["gateway"]["credential"] = "openai"
    assert_error(doc, f"models.{model}.credential", "unknown credential 'openai' (defined: lk)")


@pytest.mark.parametrize("stage", ["stt", "llm", "tts"])
def test_stage_credential_must_exist(stage: str) -> None:
    doc = with_(base(), f"models.voice.{stage}", {"provider": "openai", "credential": "openai"})
    assert_error(
        doc, f"models.voice.{stage}.credential", "unknown credential 'openai' (defined: lk)"
    )


def test_stage_credential_that_exists_is_accepted() -> None:
    doc = with_(base(), "models.voice.llm", {"provider": "openai", "credential": "lk"})
    model = parse(doc).models["voice"]
    assert isinstance(model, CustomModel) and model.llm.options == {"credential": "lk"}


def test_livekit_model_requires_a_credential() -> None:
    doc = base()
    del doc["models"]["gateway"]["credential"]
    assert_error(doc, "models.gateway.credential", "required")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("stt", "deepgram", "is not provider/model[:language] (e.g. deepgram/nova-3:en)"),
        ("stt", "deepgram/nova-3:", "is not provider/model[:language]"),
        ("stt", "/nova-3", "is not provider/model[:language]"),
        ("stt", "deepgram/ nova", "is not provider/model[:language]"),
        ("llm", "openai/gpt-4o:latest", "is not provider/model (e.g. openai/gpt-4o-mini)"),
        ("llm", "openai/", "is not provider/model"),
        ("tts", "cartesia", "is not provider/model[:voice]"),
        ("tts", "cartesia/sonic-3:", "is not provider/model[:voice] (e.g. cartesia/sonic-2:"),
        ("tts", "/sonic-3:voice", "is not provider/model[:voice]"),
        ("stt", ":en", "is not provider/model[:language]"),
        ("stt", "deepgram/nova-3: en", "is not provider/model[:language]"),
        ("llm", "openai/gpt-4o-mini:", "is not provider/model"),
        ("llm", "gpt-4o-mini", "is not provider/model"),
    ],
)
def test_livekit_model_strings(key: str, value: str, expected: str) -> None:
    assert_error(with_(base(), f"models.gateway.{key}", value), f"models.gateway.{key}", expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stt", "deepgram/nova-3:en"),
        ("stt", "assemblyai/universal-streaming"),
        ("tts", "cartesia/sonic-2:a1b2-c3"),
        ("tts", "rime/arcana"),
        ("llm", "a/b/c"),
    ],
)
def test_livekit_model_strings_accepted(key: str, value: str) -> None:
    parse(with_(base(), f"models.gateway.{key}", value))


def test_model_type_unknown_or_missing() -> None:
    doc = base()
    doc["models"]["bad"] = {"type": "openai_realtime"}
    doc["models"]["untyped"] = {"stt": "local"}
    errors = errors_of(doc)
    assert (
        "models.bad: unknown type 'openai_realtime'; expected 'custom' or 'livekit_inference'"
        in (errors)
    )
    assert "models.untyped.type: required: 'custom' or 'livekit_inference'" in errors


@pytest.mark.parametrize(
    "path",
    [
        "interruptions.min_interruption_duration",
        "interruptions.false_interruption_timeout",
        "endpointing.min_endpointing_delay",
        "endpointing.max_endpointing_delay",
        "vad.min_speech_duration",
        "vad.min_silence_duration",
        "vad.prefix_padding_duration",
        "vad.max_buffered_speech",
    ],
)
def test_every_duration_is_at_least_zero(path: str) -> None:
    group, key = path.split(".")
    doc = with_(base(), f"models.voice.{group}", {key: -0.1})
    assert_error(doc, f"models.voice.{path}", "must be >= 0 (got -0.1)")


def test_min_interruption_words_at_least_zero() -> None:
    doc = with_(base(), "models.voice.interruptions", {"min_interruption_words": -1})
    assert_error(doc, "models.voice.interruptions.min_interruption_words", "must be >= 0")


@pytest.mark.parametrize(("value", "reason"), [(1.5, "must be <= 1 (got 1.5)"), (-0.1, ">= 0")])
def test_vad_activation_threshold_in_unit_interval(value: float, reason: str) -> None:
    doc = with_(base(), "models.voice.vad", {"activation_threshold": value})
    assert_error(doc, "models.voice.vad.activation_threshold", reason)


def test_vad_sample_rate_8000_or_16000() -> None:
    doc = with_(base(), "models.voice.vad", {"sample_rate": 44100})
    assert_error(doc, "models.voice.vad.sample_rate", "must be 8000 or 16000 (got 44100)")
    parse(with_(base(), "models.voice.vad", {"sample_rate": 8000}))


def test_min_endpointing_delay_at_most_max() -> None:
    doc = with_(
        base(), "models.voice.endpointing", {"min_endpointing_delay": 4, "max_endpointing_delay": 3}
    )
    assert_error(
        doc,
        "models.voice.endpointing.min_endpointing_delay",
        "must be <= max_endpointing_delay (3.0)",
    )


@pytest.mark.parametrize("key", ["thinking_volume", "ambient_volume"])
@pytest.mark.parametrize("value", [1.01, -0.5])
def test_volumes_in_unit_interval(key: str, value: float) -> None:
    doc = with_(base(), "models.voice.audio_feedback", {key: value})
    assert_error(doc, f"models.voice.audio_feedback.{key}", "must be")


@pytest.mark.parametrize("sound", SHIPPED_SOUNDS)
def test_shipped_sounds_accepted(sound: str) -> None:
    parse(
        with_(
            base(), "models.voice.audio_feedback", {"thinking_sound": sound, "ambient_sound": sound}
        )
    )


def test_sound_may_be_an_existing_file(tmp_path: pathlib.Path) -> None:
    clip = tmp_path / "beep.wav"
    clip.write_bytes(b"RIFF")
    parse(with_(base(), "models.voice.audio_feedback", {"thinking_sound": str(clip)}))
    doc = with_(base(), "models.voice.audio_feedback", {"ambient_sound": str(tmp_path / "no.wav")})
    assert_error(doc, "models.voice.audio_feedback.ambient_sound", "nor an existing file")
    doc = with_(base(), "models.voice.audio_feedback", {"ambient_sound": str(tmp_path)})
    assert_error(doc, "models.voice.audio_feedback.ambient_sound", "nor an existing file")


def test_none_is_an_ambient_sound_only() -> None:
    parse(with_(base(), "models.voice.audio_feedback", {"ambient_sound": "none"}))
    doc = with_(base(), "models.voice.audio_feedback", {"thinking_sound": "none"})
    assert_error(doc, "models.voice.audio_feedback.thinking_sound", "is neither a shipped sound")


def test_turn_detection_model_choices() -> None:
    doc = with_(base(), "models.voice.turn_detection", {"model": "smart"})
    assert_error(doc, "models.voice.turn_detection.model", "must be 'vad', 'stt'")


@pytest.mark.parametrize(
    ("value", "instead"),
    [("livekit_multilingual", "'multilingual'"), ("livekit_english", "'english'")],
)
@pytest.mark.parametrize("model", ["voice", "gateway"])
def test_livekit_turn_models_are_refused_with_the_reason(
    model: str, value: str, instead: str
) -> None:
    # They passed check-config and then `sipserver run` died: "no job context found".
    doc = with_(base(), f"models.{model}.turn_detection", {"model": value})
    errors = assert_error(
        doc, f"models.{model}.turn_detection.model", "runs only inside a LiveKit Agents job"
    )
    assert f"use {instead} (Smart Turn v3.2, offline)" in "\n".join(errors)


def test_relative_sound_files_are_taken_from_the_config_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sounds").mkdir()
    (tmp_path / "sounds" / "beep.wav").write_bytes(b"RIFF")
    doc = with_(base(), "models.voice.audio_feedback", {"thinking_sound": "sounds/beep.wav"})
    cfg = tmp_path / "sipserver.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory has no sounds/
    model = load_config(cfg, env={}).models["voice"]
    assert isinstance(model, CustomModel)
    assert model.audio_feedback.thinking_sound == str(tmp_path / "sounds" / "beep.wav")
    doc = with_(base(), "models.voice.audio_feedback", {"ambient_sound": "sounds/none.wav"})
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, env={})
    assert (
        "models.voice.audio_feedback.ambient_sound: 'sounds/none.wav' is neither a shipped sound"
        in info.value.errors[0]
    )
    assert f"(looked for {tmp_path / 'sounds' / 'none.wav'})" in info.value.errors[0]


# --- SIP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["+14155550100", "+4930123456", "+1 (415) 555-0100", "100", "0049301234567"]
)
def test_sip_numbers_accepted(number: str) -> None:
    parse(with_(base(), "agents.0.sip.numbers", [number]))


@pytest.mark.parametrize(
    "number", ["+1", "+1415555", "+0414155550100", "+1234567890123456", "1", "1" * 21, "ext-100"]
)
def test_sip_numbers_rejected(number: str) -> None:
    doc = with_(base(), "agents.0.sip.numbers", ["100", number])
    assert_error(doc, "agents[0].sip.numbers[1]", "is not a phone number: use E.164")


def test_unquoted_number_is_a_yaml_integer() -> None:
    text = yaml.safe_dump(base()).replace("'+14155550100'", "+14155550100")
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert info.value.errors == [
        "agents[0].sip.numbers[0]: must be a string, got int 14155550100; put it in quotes"
    ]


def test_sip_numbers_unique_across_agents_normalised() -> None:
    doc = with_(base(), "agents.1.sip.numbers", ["200", "1 415 555 0100"])
    assert_error(
        doc,
        "agents[1].sip.numbers[1]",
        "'1 415 555 0100' is already used by agents[0].sip.numbers[0]",
    )


def test_sip_numbers_unique_within_an_agent() -> None:
    doc = with_(base(), "agents.1.sip.numbers", ["200", "200"])
    assert_error(doc, "agents[1].sip.numbers[1]", "is already used by agents[1].sip.numbers[0]")


def test_sip_username_unique_across_agents() -> None:
    doc = with_(base(), "agents.1.sip.username", "support")
    assert_error(
        doc, "agents[1].sip.username", "'support' is already used by agents[0].sip.username"
    )


@pytest.mark.parametrize("key", ["username", "password"])
def test_sip_enabled_requires_username_and_password(key: str) -> None:
    doc = base()
    del doc["agents"][1]["sip"][key]
    assert_error(doc, f"agents[1].sip.{key}", "required when sip.enabled is true")
    doc["agents"][1]["sip"]["enabled"] = False
    parse(doc)


def test_sip_username_is_a_sip_user_part() -> None:
    doc = with_(base(), "agents.1.sip.username", "sales@example.com")
    assert_error(doc, "agents[1].sip.username", "is not a SIP user name")


def test_bare_ipv4_address_suggests_slash_32() -> None:
    errors = errors_of(with_(base(), "agents.1.sip.allowed_ips", ["10.0.0.5"]))
    assert errors == [
        "agents[1].sip.allowed_ips[0]: '10.0.0.5' is not CIDR; did you mean 10.0.0.5/32?"
    ]


def test_bare_ipv6_address_suggests_slash_128() -> None:
    doc = with_(base(), "agents.1.sip.allowed_ips", ["10.0.0.0/8", "2001:db8::7"])
    assert_error(doc, "agents[1].sip.allowed_ips[1]", "did you mean 2001:db8::7/128?")


def test_cidr_with_host_bits_names_the_network() -> None:
    doc = with_(base(), "agents.1.sip.allowed_ips", ["192.168.1.5/24"])
    assert_error(
        doc,
        "agents[1].sip.allowed_ips[0]",
        "'192.168.1.5/24' has host bits set; did you mean 192.168.1.0/24?",
    )


@pytest.mark.parametrize("value", ["10.0.0.0/33", "example.com", "10.0.0.0/x"])
def test_cidr_garbage(value: str) -> None:
    assert_error(
        with_(base(), "agents.1.sip.allowed_ips", [value]), "agents[1].sip.allowed_ips[0]", "CIDR"
    )


def test_allowed_ips_networks() -> None:
    config = parse(with_(base(), "agents.1.sip.allowed_ips", ["203.0.113.0/24", "2001:db8::/32"]))
    assert config.agents[1].sip.networks == (
        ipaddress.ip_network("203.0.113.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_invite_auth_ip_requires_allowed_ips() -> None:
    doc = with_(base(), "agents.1.sip.invite_auth", "ip")
    assert_error(doc, "agents[1].sip.invite_auth", "'ip' requires allowed_ips")
    doc["agents"][1]["sip"]["allowed_ips"] = ["198.51.100.0/24"]
    assert parse(doc).agents[1].sip.invite_auth == "ip"


@pytest.mark.parametrize(
    ("networks", "named"),
    [
        (["0.0.0.0/0"], "0.0.0.0/0"),
        (["::/0"], "::/0"),
        (["198.51.100.0/24", "0.0.0.0/1", "128.0.0.0/1"], "0.0.0.0/0"),  # split, same door
    ],
)
def test_an_open_door_needs_allow_open(networks: list[str], named: str) -> None:
    doc = with_(base(), "agents.1.sip.allowed_ips", networks)
    doc["agents"][1]["sip"]["invite_auth"] = "ip"
    errors = assert_error(doc, "agents[1].sip.allowed_ips", f"{named} with invite_auth: ip")
    assert "anyone on the internet call this agent without a password" in "\n".join(errors)
    assert "allow_open: true" in "\n".join(errors)
    doc["agents"][1]["sip"]["allow_open"] = True
    assert parse(doc).agents[1].sip.allow_open is True
    doc["agents"][1]["sip"].update(allow_open=False, invite_auth="digest")  # a password still
    assert parse(doc).agents[1].sip.allow_open is False


def test_sip_password_at_least_12_characters() -> None:
    doc = with_(base(), "agents.1.sip.password", "elevenchars")
    errors = assert_error(doc, "agents[1].sip.password", "must be at least 12 characters, got 11")
    assert "brute force" in "\n".join(errors)
    assert "elevenchars" not in "\n".join(errors)
    assert parse(with_(base(), "agents.1.sip.password", "twelve-chars")).agents[1].sip.password


@pytest.mark.parametrize(
    "yaml_value", ["123456789012", "012345670123", "1_234_567_890_123", "0x1234ABCD", "1234.5678"]
)
def test_unquoted_numeric_secrets_are_refused_and_never_shown(yaml_value: str) -> None:
    text = f"""
credentials:
  openai:
    api_key: {yaml_value}
agents:
  - slug: a
    sip:
      enabled: true
      username: a
      password: {yaml_value}
    websocket:
      twilio_auth_token: {yaml_value}
      secret: {yaml_value}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    errors = info.value.errors
    for path in (
        "credentials.openai.api_key",
        "agents[0].sip.password",
        "agents[0].websocket.twilio_auth_token",
        "agents[0].websocket.secret",
    ):
        assert any(e.startswith(f"{path}: must be a string") for e in errors), errors
        assert any(e.startswith(path) and "put it in quotes" in e for e in errors), errors
    shown = "\n".join(errors)
    parsed = yaml.safe_load(f"v: {yaml_value}")["v"]
    for digits in {yaml_value, str(parsed), repr(parsed)}:
        assert digits not in shown, shown


# --- websocket, slug ---------------------------------------------------------------------------


def test_websocket_secret_at_least_16_characters() -> None:
    doc = with_(base(), "agents.0.websocket.secret", "a" * 15)
    errors = assert_error(
        doc, "agents[0].websocket.secret", "must be at least 16 characters, got 15"
    )
    assert "a" * 15 not in "".join(errors)  # the secret is not echoed


def test_websocket_enabled_requires_a_secret() -> None:
    doc = with_(base(), "agents.0.websocket", {"enabled": True})
    assert_error(doc, "agents[0].websocket.secret", "required when websocket.enabled is true")


def test_websocket_secret_goes_in_urls() -> None:
    doc = with_(base(), "agents.0.websocket.secret", "0123456789abcdef/x")
    assert_error(doc, "agents[0].websocket.secret", "must contain only A-Z a-z 0-9 - _ . ~")


def test_websocket_secret_is_not_one_character_repeated() -> None:
    doc = with_(base(), "agents.0.websocket.secret", "x" * 32)
    errors = assert_error(doc, "agents[0].websocket.secret", "is one character repeated")
    assert "x" * 16 not in "\n".join(errors)


def test_websocket_secret_is_not_shared_by_two_agents() -> None:
    doc = with_(base(), "agents.1.websocket", {"enabled": False, "secret": SECRET})
    errors = assert_error(
        doc, "agents[1].websocket.secret", "the same secret as agents[0].websocket.secret"
    )
    assert "one leaked URL would open both agents" in "\n".join(errors)
    assert SECRET not in "\n".join(errors)
    doc["agents"][1]["websocket"]["secret"] = SECRET[::-1]
    parse(doc)


@pytest.mark.parametrize("slug", ["Support", "-support", "sup port", "sup_port", ""])
def test_slug_pattern(slug: str) -> None:
    assert_error(
        with_(base(), "agents.0.slug", slug), "agents[0].slug", "must match [a-z0-9][a-z0-9-]*"
    )


def test_slug_unique() -> None:
    doc = with_(base(), "agents.1.slug", "support")
    assert_error(doc, "agents[1].slug", "'support' is already used by agents[0].slug")


# --- listens -----------------------------------------------------------------------------------


def listens_doc(**listens: Any) -> dict[str, Any]:
    doc = base()
    doc["agents"][0]["listens"] = {"enabled": True, "numbers": ["+14155550199"], **listens}
    return doc


def test_listens_valid() -> None:
    config = parse(listens_doc(channel="both_tracks", forward_to="+14155550123", roles=["admin"]))
    assert config.agents[0].listens.channel == "both_tracks"


def test_listens_requires_a_custom_model() -> None:
    doc = with_(listens_doc(), "agents.0.realtime.model", "gateway")
    assert_error(
        doc,
        "agents[0].realtime.model",
        "listens needs a model of type custom; 'gateway' is 'livekit_inference'",
    )


def test_listens_requires_a_model() -> None:
    doc = with_(listens_doc(), "agents.0.realtime", {"enabled": False})
    assert_error(doc, "agents[0].realtime.model", "required when listens.enabled is true")


def test_listens_requires_the_url_secret() -> None:
    doc = with_(listens_doc(), "agents.0.websocket", {"enabled": False})
    assert_error(doc, "agents[0].websocket.secret", "required when listens.enabled is true")


@pytest.mark.parametrize("number", ["14155550199", "100", "+0123456789", "+1"])
def test_listens_numbers_are_e164(number: str) -> None:
    doc = listens_doc(numbers=[number])
    assert_error(doc, "agents[0].listens.numbers[0]", "is not E.164: '+', the country code")


@pytest.mark.parametrize("number", ["+14155550100", "+1 415 555 0100"])
def test_listens_numbers_may_not_be_sip_numbers(number: str) -> None:
    doc = listens_doc(numbers=["+14155550199", number])
    assert_error(
        doc, "agents[0].listens.numbers[1]", "is also a SIP number (agents[0].sip.numbers[0])"
    )


def test_listens_number_of_another_agent_sip_number() -> None:
    doc = with_(base(), "agents.1.sip.numbers", ["+14155550177"])
    doc["agents"][0]["listens"] = {"enabled": True, "numbers": ["+14155550177"]}
    assert_error(
        doc, "agents[0].listens.numbers[0]", "is also a SIP number (agents[1].sip.numbers[0])"
    )


def test_listens_number_monitored_by_two_agents() -> None:
    doc = listens_doc()
    doc["agents"][1]["listens"] = {"enabled": True, "numbers": ["+1 415 555 0199"]}
    doc["agents"][1]["realtime"] = doc["agents"][0]["realtime"]
    doc["agents"][1]["websocket"] = doc["agents"][0]["websocket"]
    assert_error(
        doc,
        "agents[1].listens.numbers[0]",
        "'+1 415 555 0199' is already used by agents[0].listens.numbers[0]",
    )


def test_listens_channel_and_roles() -> None:
    assert_error(
        listens_doc(channel="stereo"),
        "agents[0].listens.channel",
        "must be 'inbound', 'outbound' or 'both_tracks'",
    )
    assert_error(listens_doc(roles=["boss"]), "agents[0].listens.roles[0]", "must be 'admin'")


def test_twilio_listens_requires_forward_to() -> None:
    doc = listens_doc()
    doc["agents"][0]["sip"]["enabled"] = False  # listens calls can only come from Twilio
    errors = assert_error(
        doc, "agents[0].listens.forward_to", "required when listens.enabled is true"
    )
    assert "only an agent with sip.enabled" in "\n".join(errors)
    doc["agents"][0]["listens"]["forward_to"] = "sip:desk@pbx.example.com"
    assert parse(doc).agents[0].listens.forward_to == "sip:desk@pbx.example.com"


def test_sip_only_listens_may_omit_forward_to() -> None:
    config = parse(listens_doc(channel="outbound"))  # agents[0] has sip.enabled
    assert config.agents[0].listens.forward_to is None


# --- server ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://voice.example.com/", "https://voice.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_public_url_accepted(value: str, expected: str) -> None:
    assert parse({"server": {"public_url": value}}).server.public_url == expected


@pytest.mark.parametrize(
    "value",
    [
        "voice.example.com",
        "ftp://voice.example.com",
        "https://voice.example.com/app",
        "https://voice.example.com?x=1",
        "https://voice.example.com:99999",
        "https://user@voice.example.com",
        "https://",
    ],
)
def test_public_url_rejected(value: str) -> None:
    assert_error(
        {"server": {"public_url": value}}, "server.public_url", "is not http(s)://host[:port]"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:1", ("localhost", 1)),
        ("sip.example.com:65535", ("sip.example.com", 65535)),
    ],
)
def test_http_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse({"server": {"http": value}}).server.http_host_port == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("8080", "is not host:port"),
        (":8080", "is not host:port"),
        ("::1:8080", "put an IPv6 address in brackets, [::1]:8080"),
        ("[::1]8080", "is not [IPv6]:port"),
        ("[fe80::zz]:80", "is not an IPv6 address"),
        ("host:0", "is not a number in 1-65535"),
        ("host:65536", "is not a number in 1-65535"),
        ("host:http", "is not a number in 1-65535"),
        ("bad_host:80", "is not an IP address or a host name"),
        ("1.2.3.999:80", "is not an IP address or a host name"),
    ],
)
def test_http_host_port_rejected(value: str, reason: str) -> None:
    assert_error({"server": {"http": value}}, "server.http", reason)


def test_sip_listeners_one_string_or_list_or_none() -> None:
    sip = parse({"server": {"sip": {"udp": "[::]:5060", "tcp": []}}}).server.sip
    assert sip.udp == ["[::]:5060"] and sip.tcp == [] and sip.tcp_addresses == []
    doc = {"server": {"sip": {"udp": ["0.0.0.0:5060", "0.0.0.0:0"]}}}
    assert_error(doc, "server.sip.udp[1]", "port '0' is not a number in 1-65535")


def test_tls_null_is_off() -> None:
    # The rules of a TLS block with files are in test_tls_config.py.
    assert parse({"server": {"sip": {"tls": None}}}).server.sip.tls.listen == []
    assert_error({"server": {"sip": {"tls": {"port": 5061}}}}, "server.sip.tls.port", "unknown")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must not be empty"),
        (["MD5", "MD5"], "MD5 listed more than once"),
        (["SHA1"], "must be 'MD5' or 'SHA-256' (got 'SHA1')"),
    ],
)
def test_digest_algorithms(value: list[str], reason: str) -> None:
    path = "server.sip.digest_algorithms" + ("[0]" if value == ["SHA1"] else "")
    assert_error({"server": {"sip": {"digest_algorithms": value}}}, path, reason)


def test_digest_algorithms_order_kept() -> None:
    sip = parse({"server": {"sip": {"digest_algorithms": ["SHA-256", "MD5"]}}}).server.sip
    assert sip.digest_algorithms == ["SHA-256", "MD5"]


def test_digest_uri_check() -> None:
    assert parse(
        {"server": {"sip": {"digest_uri_check": "strict"}}}
    ).server.sip.digest_uri_check == ("strict")
    reason = "must be 'server' or 'strict' (got 'loose')"
    assert_error(
        {"server": {"sip": {"digest_uri_check": "loose"}}}, "server.sip.digest_uri_check", reason
    )


@pytest.mark.parametrize(
    ("sip", "path", "reason"),
    [
        ({"nonce_ttl": 0}, "nonce_ttl", "must be > 0"),
        ({"min_expires": 0}, "min_expires", "must be > 0"),
        ({"max_contacts_per_aor": 0}, "max_contacts_per_aor", "must be >= 1"),
        ({"min_expires": 600, "max_expires": 300}, "min_expires", "must be <= max_expires (300)"),
        ({"default_expires": 30}, "default_expires", "must be between min_expires (60) and"),
        ({"default_expires": 7200}, "default_expires", "and max_expires (3600)"),
        ({"ban": {"max_failures": 0}}, "ban.max_failures", "must be >= 1"),
        ({"ban": {"window": 0}}, "ban.window", "must be > 0"),
        ({"max_message_size": 100}, "max_message_size", "must be >= 1024"),
    ],
)
def test_sip_server_limits(sip: dict[str, Any], path: str, reason: str) -> None:
    assert_error({"server": {"sip": sip}}, f"server.sip.{path}", reason)


@pytest.mark.parametrize(
    ("value", "ok"), [("auto", True), (4, True), (0, False), ("many", False), (True, False)]
)
def test_workers(value: Any, ok: bool) -> None:
    doc = {"server": {"workers": value}}
    if ok:
        assert parse(doc).server.workers == value
    else:
        assert_error(doc, "server.workers", "must be 'auto' or an integer >= 1")


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("memory", ("memory", None)),
        ("sqlite", ("sqlite", str(pathlib.Path("/data") / "bindings.db"))),
        ("sqlite:///var/lib/sipserver/b.db", ("sqlite", "/var/lib/sipserver/b.db")),
        ("sqlite://rel/b.db", ("sqlite", "rel/b.db")),
    ],
)
def test_store_url(store: str, expected: tuple[str, str | None]) -> None:
    assert parse({"server": {"store": store, "data_dir": "/data"}}).server.store_url == expected


@pytest.mark.parametrize("store", ["redis://localhost", "sqlite://", "postgres", ""])
def test_store_rejected(store: str) -> None:
    assert_error(
        {"server": {"store": store}}, "server.store", "use memory, sqlite or sqlite://PATH"
    )


def test_realm_and_domains() -> None:
    server = parse(
        {"server": {"public_host": "sip.example.com", "domains": ["a.example.com"]}}
    ).server
    assert server.effective_realm == "sip.example.com" and server.domains == ["a.example.com"]
    assert parse({"server": {"realm": "voice"}}).server.effective_realm == "voice"
    assert_error({"server": {"realm": 'a"b'}}, "server.realm", "without")
    assert_error(
        {"server": {"domains": ["not a host"]}}, "server.domains[0]", "is not an IP address"
    )


# --- users -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["hunter2", "scrypt$", "md5$abc", "bcrypt$x"])
def test_password_hash_must_be_a_hash(value: str) -> None:
    doc = with_(base(), "users.0.password_hash", value)
    assert_error(
        doc, "users[0].password_hash", "must be a 'scrypt$...' or 'pbkdf2_sha256$...' hash"
    )


def test_user_role_and_unique_name() -> None:
    assert_error(
        with_(base(), "users.0.role", "root"), "users[0].role", "must be 'admin', 'workspace_admin'"
    )
    doc = base()
    doc["users"].append({"name": "alice", "password_hash": "pbkdf2_sha256$1$s$h", "role": "viewer"})
    assert_error(doc, "users[1].name", "'alice' is already used by users[0].name")


# --- unknown keys, YAML ------------------------------------------------------------------------


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    doc = base()
    doc["agnets"] = []
    doc["agents"][0]["sip"]["pasword"] = "x"
    doc["models"]["voice"]["vad"] = {"activation_treshold": 0.4}
    errors = errors_of(doc)
    assert "agnets: unknown key; did you mean 'agents'?" in errors
    assert "agents[0].sip.pasword: unknown key; did you mean 'password'?" in errors
    assert (
        "models.voice.vad.activation_treshold: unknown key; did you mean 'activation_threshold'?"
        in errors
    )


def test_wrong_types_in_plain_words() -> None:
    doc = {"server": None, "agents": ["demo"], "models": {"m": {"type": "custom", "stt": ["a"]}}}
    assert errors_of(doc) == [
        "server: must be a mapping (got null)",
        "models.m.stt: must be a provider name (e.g. local) or a mapping with a provider",
        "agents[0]: must be a mapping (got string 'demo')",
    ]
    assert errors_of({"server": {"sip": {"nonce_ttl": "soon"}}}) == [
        "server.sip.nonce_ttl: must be a number (got string 'soon')"
    ]


def test_unknown_key_without_suggestion() -> None:
    assert errors_of({"server": {"zzz": 1}}) == ["server.zzz: unknown key"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  http: [1\n", source="x.yaml")
    assert info.value.errors[0].startswith("x.yaml: YAML syntax error at line 3, column 1:")


def test_duplicate_yaml_keys_are_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server: {}\nagents: []\nserver: {}\n")
    assert "line 3, column 1: found duplicate key 'server'" in str(info.value)


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = "agents:\n  - &first {slug: one, greeting: hi}\n  - <<: *first\n    slug: two\n"
    assert [(a.slug, a.greeting) for a in parse_config(text).agents] == [
        ("one", "hi"),
        ("two", "hi"),
    ]


@pytest.mark.parametrize(
    ("text", "got"), [("", "an empty document"), ("- a\n", "a list"), ("3\n", "3")]
)
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == (
        "<string>: the top level must be a mapping (server, credentials, models, agents, users),"
        f" got {got}"
    )


def test_unreadable_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.errors == [
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    ]


# --- environment -------------------------------------------------------------------------------


def test_env_expansion_everywhere_in_strings() -> None:
    doc = with_(base(), "agents.0.sip.password", "${PW}")
    doc["agents"][0]["instructions"] = "You work for ${COMPANY}, ${COMPANY} sells ${THING:-tea}."
    doc["server"] = {"http": "${HOST:-127.0.0.1}:${PORT}", "sip": {"nonce_ttl": "${TTL}"}}
    config = parse(
        doc, env={"PW": "s3cret-s3cret", "COMPANY": "ACME", "PORT": "9090", "TTL": "12.5"}
    )
    agent = config.agents[0]
    assert agent.sip.password == "s3cret-s3cret"
    assert agent.instructions == "You work for ACME, ACME sells tea."
    assert config.server.http_host_port == ("127.0.0.1", 9090)
    assert config.server.sip.nonce_ttl == 12.5


def test_env_numbers_and_booleans_from_strings() -> None:
    doc = with_(base(), "models.voice.vad", {"sample_rate": "${RATE}"})
    doc["models"]["voice"]["preemptive_generation"] = "${PREEMPT}"
    doc["server"] = {"workers": "${WORKERS}", "sip": {"ban": {"window": "${WINDOW}"}}}
    config = parse(doc, env={"RATE": "8000", "PREEMPT": "false", "WORKERS": "3", "WINDOW": "1.5"})
    model = config.models["voice"]
    assert isinstance(model, CustomModel)
    assert (model.vad.sample_rate, model.preemptive_generation) == (8000, False)
    assert (config.server.workers, config.server.sip.ban.window) == (3, 1.5)


def test_env_default_used_when_unset_or_empty() -> None:
    doc = with_(base(), "agents.0.greeting", "${A:-hi}|${B:-there}|${C:-}|${D}")
    greeting = parse(doc, env={"B": "", "D": ""}).agents[0].greeting
    assert greeting == "hi|there||"


def test_missing_env_variable_names_variable_and_key() -> None:
    doc = with_(base(), "agents.0.sip.password", "${SUPPORT_SIP_PASSWORD}")
    doc["agents"][0]["websocket"]["secret"] = "${WS_SECRET}"  # would also be too short unexpanded
    doc["agents"][1]["sip"]["numbers"] = ["${SALES_NUMBER}"]
    assert errors_of(doc) == [
        "agents[0].sip.password: environment variable SUPPORT_SIP_PASSWORD is not set",
        "agents[0].websocket.secret: environment variable WS_SECRET is not set",
        "agents[1].sip.numbers[0]: environment variable SALES_NUMBER is not set",
    ]


def test_missing_env_variable_with_other_errors() -> None:
    doc = with_(base(), "agents.0.sip.password", "${NOPE}")
    doc["agents"][0]["sip"]["allowed_ips"] = ["10.0.0.1"]
    errors = errors_of(doc)
    assert errors[0] == "agents[0].sip.password: environment variable NOPE is not set"
    assert (
        "agents[0].sip.allowed_ips[0]: '10.0.0.1' is not CIDR; did you mean 10.0.0.1/32?" in errors
    )


@pytest.mark.parametrize("value", ["${}", "${1X}", "${A B}", "${A-b}"])
def test_invalid_env_reference(value: str) -> None:
    assert_error(
        with_(base(), "agents.0.greeting", value), "agents[0].greeting", "invalid reference"
    )


def test_env_not_applied_to_keys_or_non_strings() -> None:
    doc = base()
    doc["credentials"]["${KEY}"] = {"n": "${V}"}
    config = parse(doc, env={"KEY": "k", "V": "v"})
    assert config.credentials["${KEY}"] == {"n": "v"}


# --- every error at once -----------------------------------------------------------------------


def test_all_field_errors_are_reported_together() -> None:
    doc = base()
    doc["server"] = {"http": "nowhere", "sip": {"udp": "1.2.3.4:0"}}
    doc["models"]["voice"]["vad"] = {"activation_threshold": 2, "sample_rate": 1}
    doc["agents"][1]["sip"]["allowed_ips"] = ["10.0.0.5"]
    doc["users"][0]["role"] = "root"
    paths = {line.split(": ", 1)[0] for line in errors_of(doc)}
    assert paths == {
        "server.http",
        "server.sip.udp[0]",
        "models.voice.vad.activation_threshold",
        "models.voice.vad.sample_rate",
        "agents[1].sip.allowed_ips[0]",
        "users[0].role",
    }


def test_all_cross_field_errors_are_reported_together() -> None:
    doc = base()
    doc["agents"].append(copy.deepcopy(doc["agents"][0]))
    doc["agents"][0]["realtime"]["model"] = "missing"
    doc["users"].append(copy.deepcopy(doc["users"][0]))
    assert errors_of(doc) == [
        "agents[0].realtime.model: unknown model 'missing' (defined: gateway, voice)",
        "agents[2].slug: 'support' is already used by agents[0].slug",
        "agents[2].sip.username: 'support' is already used by agents[0].sip.username",
        "agents[2].sip.numbers[0]: '+14155550100' is already used by agents[0].sip.numbers[0]",
        "agents[2].websocket.secret: the same secret as agents[0].websocket.secret: one leaked"
        " URL would open both agents; give each its own (sipserver gen-secret)",
        "users[1].name: 'alice' is already used by users[0].name",
    ]


def test_cross_field_errors_reported_alongside_field_errors() -> None:
    doc = with_(base(), "agents.1.sip.username", "support")
    doc["models"]["voice"]["vad"] = {"sample_rate": 1}  # a field error elsewhere
    errors = errors_of(doc)
    assert "models.voice.vad.sample_rate: must be 8000 or 16000 (got 1)" in errors
    assert "agents[1].sip.username: 'support' is already used by agents[0].sip.username" in errors
    # voice is invalid on its own, but it is defined: no "unknown model" for agents[0]
    assert not any("unknown model" in line for line in errors)


def test_config_error_str_joins_lines() -> None:
    error = ConfigError(["a: x", "b: y"], source="f.yaml")
    assert str(error) == "a: x\nb: y" and error.source == "f.yaml"


# --- URLs and lookups --------------------------------------------------------------------------


def test_urls_follow_the_public_url_scheme() -> None:
    agent = parse(listens_doc()).agents[0]
    assert agent.urls("https://voice.example.com/") == {
        "websocket": f"wss://voice.example.com/ws/support/{SECRET}",
        "twilio_webhook": f"https://voice.example.com/incoming-call/support/{SECRET}",
        "listens": f"https://voice.example.com/listens/support/{SECRET}",
        "listens_stream": f"wss://voice.example.com/listens/support/{SECRET}/stream",
    }
    assert (
        agent.urls("http://127.0.0.1:8080")["websocket"]
        == f"ws://127.0.0.1:8080/ws/support/{SECRET}"
    )


def test_urls_only_for_enabled_ingresses_with_a_secret() -> None:
    config = parse(with_(base(), "agents.0.websocket.enabled", False))
    assert config.agents[0].urls("http://h") == {}
    assert config.agents[1].urls("http://h") == {}
    with pytest.raises(ValueError, match="must start with http"):
        config.agents[0].urls("ftp://h")


def test_lookups() -> None:
    config = parse(with_(base(), "agents.0.sip.numbers", ["+1 (415) 555-0100", "100"]))
    support, sales = config.agents
    assert config.agent_by_slug("support") is support
    assert config.agent_by_slug("nobody") is None
    assert config.agent_by_sip_username("sales") is sales
    assert config.agent_by_sip_username("SALES") is None
    assert config.agent_by_number("+14155550100") is support
    assert config.agent_by_number("14155550100") is support
    assert config.agent_by_number("100") is support
    assert config.agent_by_number("200") is sales
    assert config.agent_by_number("+14155550101") is None


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+14155550100", "14155550100"),
        ("+1 (415) 555-0100", "14155550100"),
        ("+1.415.555.0100", "14155550100"),
        ("100", "100"),
        ("", ""),
    ],
)
def test_normalize_number(number: str, expected: str) -> None:
    assert normalize_number(number) == expected


def test_media_port_range_must_hold_a_worker() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            "server:\n  media:\n    rtp_port_min: 30000\n    rtp_port_max: 30010\n", env={}
        )
    assert any(
        e.startswith("server.media.rtp_port_max: must be at least") for e in info.value.errors
    )


def test_workers_auto_means_cores() -> None:
    import os

    config = parse_config("server:\n  workers: auto\n", env={})
    assert config.server.max_workers == max(1, os.cpu_count() or 1)
    assert parse_config("server:\n  workers: 3\n", env={}).server.max_workers == 3


def test_media_session_timer_defaults() -> None:
    media = parse_config("server: {}\n", env={}).server.media
    assert (media.session_timers, media.session_expires, media.min_se) == ("optional", 1800, 90)
    assert media.answer_delay == 0


def test_media_min_se_has_the_rfc_4028_floor() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  media:\n    min_se: 60\n", env={})
    assert any(e.startswith("server.media.min_se:") for e in info.value.errors), info.value.errors


def test_media_min_se_must_not_exceed_session_expires() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  media:\n    min_se: 600\n    session_expires: 300\n", env={})
    assert "server.media.min_se: must be <= session_expires (300)" in info.value.errors


def test_media_answer_delay_and_session_timers_values() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            "server:\n  media:\n    answer_delay: -1\n    session_timers: sometimes\n", env={}
        )
    errors = info.value.errors
    assert any(e.startswith("server.media.answer_delay:") for e in errors), errors
    assert any(e.startswith("server.media.session_timers:") for e in errors), errors


def test_numbering_plan_normalises_both_sides() -> None:
    from sipserver.config import NumberingPlan

    uk = NumberingPlan(country_code="44", national_prefix="0", international_prefix="00")
    for dialled in ("+44 20 7123 4567", "00442071234567", "020 7123 4567", "442071234567"):
        assert uk.normalize(dialled) == "442071234567", dialled
    assert uk.normalize("100") == "100"  # an extension is never rewritten
    pbx = NumberingPlan(strip_prefixes=["9"], international_prefix="00")
    assert pbx.normalize("900442071234567") == "442071234567"
    assert pbx.normalize("+9123456789") == "9123456789"  # '+' numbers are left alone


def test_numbering_plan_rules_name_the_key() -> None:
    import yaml

    from sipserver.config import ConfigError, parse_config

    raw = {"server": {"sip": {"numbering": {"national_prefix": "0"}}}}
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw), env={})
    assert "server.sip.numbering.national_prefix: needs country_code" in str(err.value.errors)
    raw = {"server": {"sip": {"numbering": {"international_prefix": "+00"}}}}
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw), env={})
    assert "server.sip.numbering.international_prefix" in str(err.value.errors)


def test_numbers_that_collide_under_the_plan_are_an_error() -> None:
    import yaml

    from sipserver.config import ConfigError, parse_config

    def agent(slug: str, number: str) -> dict[str, Any]:
        return {
            "slug": slug,
            "sip": {
                "enabled": True,
                "numbers": [number],
                "username": slug,
                "password": "pw-1234567890",
            },
        }

    raw = {
        "server": {"sip": {"numbering": {"country_code": "44", "national_prefix": "0"}}},
        "agents": [agent("a", "+442071234567"), agent("b", "02071234567")],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(raw), env={})
    assert "agents[1].sip.numbers[0]" in str(err.value.errors)


@pytest.mark.parametrize(("value", "reason"), [(-1, "must be >= 0"), (5000, "must be <= 1000")])
def test_store_commit_ms_is_bounded(value: float, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"server:\n  store_commit_ms: {value}\n", env={})
    assert any(e.startswith("server.store_commit_ms: ") and reason in e for e in info.value.errors)
    assert parse_config("server:\n  store_commit_ms: 0\n", env={}).server.store_commit_ms == 0


def test_media_engine_defaults_to_native_with_auto_capacity() -> None:
    media = parse_config("server: {}\n", env={}).server.media
    assert (media.engine, media.calls_per_worker) == ("native", "auto")
    media = parse({"server": {"media": {"engine": "pjsua2", "calls_per_worker": 250}}}).server.media
    assert (media.engine, media.calls_per_worker) == ("pjsua2", 250)


def test_media_engine_must_be_native_or_pjsua2() -> None:
    assert_error({"server": {"media": {"engine": "asterisk"}}}, "server.media.engine", "native")


@pytest.mark.parametrize("value", [0, -3, "lots", True])
def test_calls_per_worker_is_auto_or_a_positive_integer(value: Any) -> None:
    doc = {"server": {"media": {"calls_per_worker": value}}}
    assert_error(doc, "server.media.calls_per_worker", "must be 'auto' or an integer >= 1")
