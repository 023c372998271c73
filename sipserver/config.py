"""The sipserver YAML configuration: pydantic models, every validation rule, loading.

One YAML file describes the server (listeners, public URL, store), the credentials of model
providers, the realtime voice models, the agents (SIP numbers and accounts, websocket and Twilio
URLs, AI Listens) and the dashboard users. :func:`load_config` reads it, expands ``${VAR}`` and
``${VAR:-default}`` from the environment, validates it and returns a frozen :class:`Config`, or
raises :class:`ConfigError` listing *every* problem, each as ``key.path: reason``::

    agents[1].sip.allowed_ips[0]: '10.0.0.5' is not CIDR; did you mean 10.0.0.5/32?
    models.support-voice.vad.activation_threshold: must be <= 1 (got 1.5)

Validation runs in three layers:

1. single values (numbers, CIDRs, host:port, ...): the ``check_*`` rules of
   :mod:`sipserver._config_rules`, attached to the field types;
2. rules inside one object (``sip.enabled`` needs a password): model validators that raise
   ``RuleErrors``, which carry the key of each violation;
3. rules across objects (unique slugs, numbers and usernames, model and credential references,
   listens numbers that are SIP numbers): :func:`_cross_field_issues`. When other fields are
   invalid it still runs over the models, agents and users that are valid on their own.

Relative file paths that belong to the configuration (knowledge base patterns
``agents[].knowledge_base`` and sound files) are relative to the directory of the configuration
file, so a configuration travels with its documents (the embedded default's are relative to its
packaged copy); :func:`sipserver.pipeline.knowledge.knowledge_base_warnings` names the patterns
that match no file. Paths of
state the server writes (``data_dir``, a relative ``sqlite://`` store) are relative to the
working directory of the process.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import os
import pathlib
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from sipserver import _config_rules as rules
from sipserver._config_rules import (
    DEFAULT_INSTRUCTIONS,
    SHIPPED_SOUNDS,
    Issue,
    RuleErrors,
    normalize_number,
    parse_host_port,
)
from sipserver._config_server import (
    BanConfig,
    HttpLimitsConfig,
    MediaConfig,
    MediaStreamsConfig,
    NumberingPlan,
    RecordsConfig,
    ServerConfig,
    SipServerConfig,
    WebhooksConfig,
    WebhookSettings,
    WebhookTarget,
)
from sipserver._config_tls import SipTlsConfig
from sipserver._config_types import Duration, Fraction
from sipserver._config_types import StrictModel as _Model

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "SHIPPED_SOUNDS",
    "Agent",
    "AudioFeedbackSettings",
    "BanConfig",
    "Config",
    "ConfigError",
    "CustomModel",
    "EndpointingSettings",
    "HttpLimitsConfig",
    "InterruptionSettings",
    "ListensSettings",
    "LiveKitInferenceModel",
    "MediaConfig",
    "MediaStreamsConfig",
    "ModelSpec",
    "NumberingPlan",
    "ProviderSpec",
    "RealtimeSettings",
    "RecordingSettings",
    "RecordsConfig",
    "Role",
    "ServerConfig",
    "SipServerConfig",
    "SipSettings",
    "SipTlsConfig",
    "TurnDetectionSettings",
    "User",
    "VadSettings",
    "WebhookSettings",
    "WebhookTarget",
    "WebhooksConfig",
    "WebsocketSettings",
    "called_number",
    "config_dir",
    "embedded_config_path",
    "format_key_path",
    "generate_secret",
    "is_listens_number",
    "load_config",
    "normalize_number",
    "parse_config",
    "parse_host_port",
    "read_raw_config",
    "srtp_warnings",
]

Role = Literal["admin", "workspace_admin", "supervisor", "agent", "viewer"]
"""Dashboard roles, from most to least privileged."""


class ConfigError(Exception):
    """The configuration is invalid; :attr:`errors` lists every problem found.

    Attributes:
        errors: One line per problem, ``key.path: reason`` (YAML syntax errors and unreadable
            files name the source, with line and column, instead of a key path).
        source: The file name, or ``"<string>"`` for text given to :func:`parse_config`.
        located: The same problems as ``(key path, reason)`` pairs (the key path is ``""``
            for a problem of the whole file, such as a YAML syntax error), for callers that
            show each reason beside its key (the console's API).
    """

    def __init__(
        self,
        errors: Iterable[str],
        *,
        source: str = "<string>",
        located: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        self.located: list[tuple[str, str]] = (
            list(located) if located is not None else [("", line) for line in self.errors]
        )
        super().__init__("\n".join(self.errors))


# --- models ------------------------------------------------------------------------------------


class ProviderSpec(BaseModel):
    """An STT, LLM or TTS provider: a bare name (``local``) or ``{provider: name, <options>}``."""

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)

    provider: str = Field(min_length=1)
    """Provider name, e.g. ``local`` (offline, on this machine) or ``openai``."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"provider": data}
        if not isinstance(data, dict | ProviderSpec):
            raise ValueError("must be a provider name (e.g. local) or a mapping with a provider")
        return data

    @property
    def options(self) -> dict[str, Any]:
        """Every key besides ``provider`` (model name, voice, language, ...)."""
        return dict(self.model_extra or {})


def _local() -> ProviderSpec:
    return ProviderSpec(provider="local")


class InterruptionSettings(_Model):
    """When caller speech interrupts the agent."""

    allow_interruptions: bool = True
    """Caller speech may stop the agent."""
    min_interruption_duration: Duration = 0.5
    """Seconds; speech shorter than this never interrupts."""
    min_interruption_words: int = Field(0, ge=0)
    """Words (from STT) required before speech counts as an interruption."""
    false_interruption_timeout: Duration = 2.0
    """Seconds; no transcript within this after the agent paused: the interruption was false."""
    resume_false_interruption: bool = True
    """After a false interruption the agent resumes where it paused."""


class EndpointingSettings(_Model):
    """How much silence ends the caller's turn."""

    min_endpointing_delay: Duration = 0.5
    """Seconds of silence before end of turn when the turn model says "done"."""
    max_endpointing_delay: Duration = 3.0
    """Seconds of silence that force the end of turn."""

    @model_validator(mode="after")
    def _ordered(self) -> EndpointingSettings:
        if self.min_endpointing_delay > self.max_endpointing_delay:
            message = f"must be <= max_endpointing_delay ({self.max_endpointing_delay})"
            raise RuleErrors([(("min_endpointing_delay",), message)])
        return self


class VadSettings(_Model):
    """Silero voice activity detection."""

    min_speech_duration: Duration = 0.05
    """Seconds; shorter blips are not speech."""
    min_silence_duration: Duration = 0.55
    """Seconds of silence that end a speech segment."""
    activation_threshold: Fraction = 0.5
    """Silero speech probability threshold, 0..1."""
    prefix_padding_duration: Duration = 0.5
    """Seconds of audio kept before the start of speech."""
    max_buffered_speech: Duration = 60.0
    """Seconds; cap on one utterance's buffered audio."""
    sample_rate: Annotated[Literal[8000, 16000], BeforeValidator(rules.int_text)] = 16000
    """Hz the VAD runs at."""


def _base_dir(info: ValidationInfo) -> pathlib.Path | None:
    """The directory relative file paths are taken from (the configuration file's)."""
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return pathlib.Path(base) if base is not None else None


def _thinking_sound(value: str, info: ValidationInfo) -> str:
    return rules.check_thinking_sound(value, base_dir=_base_dir(info))


def _ambient_sound(value: str, info: ValidationInfo) -> str:
    return rules.check_ambient_sound(value, base_dir=_base_dir(info))


class AudioFeedbackSettings(_Model):
    """Sounds played while the agent thinks, and an ambient bed."""

    enabled: bool = False
    """Play the sounds."""
    thinking_sound: Annotated[str, AfterValidator(_thinking_sound)] = "keyboard_typing"
    """A shipped clip (:data:`SHIPPED_SOUNDS`) or the path of an audio file (a relative one is
    taken from the configuration file's directory and kept as an absolute path)."""
    thinking_volume: Fraction = 0.8
    """0..1."""
    ambient_sound: Annotated[str, AfterValidator(_ambient_sound)] = "none"
    """A shipped clip, the path of an audio file (as for ``thinking_sound``), or ``none``."""
    ambient_volume: Fraction = 0.3
    """0..1."""


class TurnDetectionSettings(_Model):
    """End-of-turn detection."""

    model: Annotated[
        Literal["vad", "stt", "multilingual", "english"], BeforeValidator(rules.check_turn_model)
    ] = "multilingual"
    """``vad`` (silence only), ``stt`` (provider-native), ``multilingual``/``english`` (Smart Turn
    v3.2, offline). LiveKit's ``livekit_multilingual``/``livekit_english`` are refused with the
    reason: they run only inside a LiveKit Agents job."""


class CustomModel(_Model):
    """A realtime voice model assembled from STT, LLM and TTS providers (``type: custom``)."""

    type: Literal["custom"] = "custom"
    stt: ProviderSpec = Field(default_factory=_local)
    """Speech to text."""
    llm: ProviderSpec = Field(default_factory=_local)
    """Language model."""
    tts: ProviderSpec = Field(default_factory=_local)
    """Text to speech."""
    credential: str | None = None
    """Name of an entry of ``credentials`` the providers use."""
    interruptions: InterruptionSettings = Field(default_factory=InterruptionSettings)
    endpointing: EndpointingSettings = Field(default_factory=EndpointingSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    audio_feedback: AudioFeedbackSettings = Field(default_factory=AudioFeedbackSettings)
    preemptive_generation: bool = True
    """Start the LLM on the final transcript before end of turn is committed; discard the reply
    if the caller goes on."""
    turn_detection: TurnDetectionSettings = Field(default_factory=TurnDetectionSettings)


class LiveKitInferenceModel(_Model):
    """A model served by LiveKit Inference (``type: livekit_inference``)."""

    type: Literal["livekit_inference"] = "livekit_inference"
    credential: str
    """Name of an entry of ``credentials`` (``api_key``, ``api_secret``)."""
    stt: Annotated[str, AfterValidator(rules.check_livekit_spec("stt"))]
    """``provider/model[:language]``, e.g. ``deepgram/nova-3:en``."""
    llm: Annotated[str, AfterValidator(rules.check_livekit_spec("llm"))]
    """``provider/model``, e.g. ``openai/gpt-4o-mini``."""
    tts: Annotated[str, AfterValidator(rules.check_livekit_spec("tts"))]
    """``provider/model[:voice]``, e.g. ``cartesia/sonic-2:<voice-id>``."""
    interruptions: InterruptionSettings | None = None
    """``None``: the pipeline defaults (likewise below)."""
    endpointing: EndpointingSettings | None = None
    vad: VadSettings | None = None
    turn_detection: TurnDetectionSettings | None = None


ModelSpec = Annotated[CustomModel | LiveKitInferenceModel, Field(discriminator="type")]
"""A realtime voice model, told apart by its ``type`` key."""


# --- agents and users --------------------------------------------------------------------------


class RealtimeSettings(_Model):
    """Whether the agent answers calls itself, and with which model."""

    enabled: bool = False
    """The agent answers calls with a realtime voice pipeline."""
    model: str | None = None
    """Name of an entry of ``models``; required when enabled."""
    end_call_digit: Annotated[str, AfterValidator(rules.check_dtmf_digit)] | None = None
    """A DTMF key that ends the call when the caller presses it (e.g. ``"#"``); none by
    default. The agent can also end calls itself (its ``end_call`` tool)."""

    @model_validator(mode="after")
    def _model_required(self) -> RealtimeSettings:
        if self.enabled and self.model is None:
            raise RuleErrors([(("model",), "required when realtime.enabled is true")])
        return self


class SipSettings(_Model):
    """The agent's SIP numbers, account and allow-list."""

    enabled: bool = False
    """PBXs and trunks may register and call the agent over SIP."""
    numbers: list[Annotated[str, AfterValidator(rules.check_sip_number)]] = Field(
        default_factory=list
    )
    """Called numbers routed to the agent: E.164 (``+14155550100``) or a dial string (``100``)."""
    username: Annotated[str, AfterValidator(rules.check_sip_username)] | None = None
    """Digest username (the SIP user part); required when enabled; unique across agents."""
    password: Annotated[str, AfterValidator(rules.check_sip_password)] | None = Field(
        None, repr=False
    )
    """Digest password, >= 12 characters (``sipserver gen-secret``); required when enabled.
    Quote it in YAML: an unquoted ``123456789012`` is a number and is refused (never shown)."""
    allowed_ips: list[Annotated[str, AfterValidator(rules.check_cidr)]] = Field(
        default_factory=list
    )
    """CIDR networks allowed to talk to the agent; empty: every address."""
    invite_auth: Literal["digest", "ip"] = "digest"
    """How INVITEs are authenticated: a digest challenge, or the source address alone."""
    allow_open: bool = False
    """Accept ``invite_auth: ip`` with ``allowed_ips`` that cover every address (``0.0.0.0/0``,
    ``::/0``): anyone on the internet may then call the agent without a password. Refused
    unless this is true."""
    srtp: Literal["off", "optional", "required"] = "off"
    """SDES-SRTP (RFC 4568) on the call's media: ``off`` answers plain RTP (RTP/AVP; an offer
    of RTP/SAVP only gets 488), ``optional`` answers SRTP when the offer has crypto
    attributes and plain RTP otherwise, ``required`` answers 488 to an offer without them.
    SDES keys travel in the SDP: without SIP over TLS (``server.sip.tls``) an eavesdropper on
    the signalling reads them."""
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = PrivateAttr(())

    def model_post_init(self, context: Any, /) -> None:
        """Parse :attr:`allowed_ips` once."""
        self._networks = tuple(ipaddress.ip_network(item) for item in self.allowed_ips)

    @model_validator(mode="after")
    def _account(self) -> SipSettings:
        issues: list[Issue] = []
        if self.enabled:
            issues += [
                ((key,), "required when sip.enabled is true")
                for key in ("username", "password")
                if getattr(self, key) is None
            ]
        if self.invite_auth == "ip" and not self.allowed_ips:
            issues.append((("invite_auth",), "'ip' requires allowed_ips (the trusted networks)"))
        open_to = rules.everyone_in(self.allowed_ips)
        if self.invite_auth == "ip" and open_to and not self.allow_open:
            message = (
                f"{', '.join(open_to)} with invite_auth: ip lets anyone on the internet call"
                " this agent without a password (free calls on your bill); list your PBX's or"
                " trunk's networks, use invite_auth: digest, or write allow_open: true if that"
                " is really meant"
            )
            issues.append((("allowed_ips",), message))
        RuleErrors.raise_if_any(issues)
        return self

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """:attr:`allowed_ips` parsed; empty means every address is allowed."""
        return self._networks


class WebsocketSettings(_Model):
    """The agent's websocket media stream and Twilio webhook."""

    enabled: bool = False
    """Serve ``/ws/<slug>/<secret>`` and ``/incoming-call/<slug>/<secret>``."""
    secret: Annotated[str, AfterValidator(rules.check_secret)] | None = Field(None, repr=False)
    """URL secret, >= 16 URL-safe characters (``sipserver gen-secret``); required when enabled."""
    twilio_auth_token: str | None = Field(None, min_length=1, repr=False)
    """When set, ``X-Twilio-Signature`` is verified with it."""

    @model_validator(mode="after")
    def _secret_required(self) -> WebsocketSettings:
        if self.enabled and self.secret is None:
            message = "required when websocket.enabled is true; generate one: sipserver gen-secret"
            raise RuleErrors([(("secret",), message)])
        return self


class ListensSettings(_Model):
    """AI Listens: forked calls transcribed live, with suggestions for the human agent."""

    enabled: bool = False
    """Serve ``/listens/<slug>/<secret>`` (the secret is ``websocket.secret``)."""
    numbers: list[Annotated[str, AfterValidator(rules.check_e164)]] = Field(default_factory=list)
    """E.164 numbers whose calls are forked; never one of the SIP numbers."""
    channel: Literal["inbound", "outbound", "both_tracks"] = "inbound"
    """Tracks transcribed: the caller's, the agent's, or both. A Twilio fork streams the chosen
    tracks; a SIP listens call carries one stream, which is the caller (``inbound``), the human
    agent (``outbound``) or both parties mixed by the PBX (``both_tracks``)."""
    forward_to: str | None = Field(None, min_length=1)
    """Where a Twilio fork dials the call to (the human agent: a number or a ``sip:`` URI);
    required unless the agent's listens calls come over SIP only (``sip.enabled``)."""
    roles: list[Role] = Field(["admin", "workspace_admin", "supervisor"])
    """Dashboard roles that see the live transcripts and suggestions."""


class RecordingSettings(_Model):
    """Recording of the agent's calls (docs/records.md, "Recording"): the operator's legal
    responsibility; off by default."""

    enabled: bool = False
    """Record every call the agent answers."""
    channels: Literal["stereo", "mixed"] = "stereo"
    """``stereo``: the caller on the left channel, the agent on the right; ``mixed``: one channel
    with both."""
    format: Literal["opus", "wav"] = "opus"
    """``opus``: Ogg/Opus (about 6 KB per second of a stereo call); ``wav``: 16-bit PCM (64 KB per
    second of a 16 kHz stereo call)."""


class Agent(_Model):
    """One AI voice agent and the ways calls reach it."""

    slug: Annotated[str, AfterValidator(rules.check_slug)]
    """Identifier in URLs and logs: ``[a-z0-9][a-z0-9-]*``, unique."""
    name: str = ""
    """Display name; defaults to the slug."""
    instructions: str = DEFAULT_INSTRUCTIONS
    """System prompt of the agent."""
    greeting: str | None = None
    """Said when the call is answered; ``None``: wait for the caller."""
    knowledge_base: list[str] = Field(default_factory=list)
    """Files or glob patterns of the knowledge base (relative ones: from the directory of the
    configuration file)."""
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    websocket: WebsocketSettings = Field(default_factory=WebsocketSettings)
    listens: ListensSettings = Field(default_factory=ListensSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    max_concurrent_calls: int | None = Field(None, ge=0)
    """Calls in progress this agent takes, over every door (SIP, websocket, Twilio, AI Listens
    forks); past it new calls are refused as at ``server.max_calls``. ``null``: only the
    server's limit; 0: every new call refused (the agent is paused)."""
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    """The agent's own webhook targets; a kind left out uses ``server.webhooks``' target."""

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None and "slug" in data:
            return {**data, "name": data["slug"]}
        return data

    @model_validator(mode="after")
    def _listens_needs(self) -> Agent:
        issues: list[Issue] = []
        if self.listens.enabled and self.realtime.model is None:
            issues.append((("realtime", "model"), "required when listens.enabled is true"))
        if self.listens.enabled and self.websocket.secret is None:
            message = "required when listens.enabled is true (the listens URL ends with it)"
            issues.append((("websocket", "secret"), message))
        if self.listens.enabled and self.listens.forward_to is None and not self.sip.enabled:
            message = (
                "required when listens.enabled is true: the Twilio webhook forks the call and"
                " dials this number or sip: URI (the human agent); only an agent with"
                " sip.enabled, whose PBX sends listens calls over SIP, may leave it out"
            )
            issues.append((("listens", "forward_to"), message))
        RuleErrors.raise_if_any(issues)
        return self

    def urls(self, public_url: str) -> dict[str, str]:
        """The agent's public URLs, for the enabled ingresses that have a secret.

        Args:
            public_url: ``http(s)://host[:port]``, normally ``config.server.public_url``.

        Returns:
            ``websocket`` (``ws(s)://…/ws/<slug>/<secret>``, ``wss`` for an https public URL)
            and ``twilio_webhook`` (``…/incoming-call/<slug>/<secret>``) when the websocket is
            enabled; ``listens`` (``…/listens/<slug>/<secret>``, the webhook) and
            ``listens_stream`` (``ws(s)://…/listens/<slug>/<secret>/stream``, the fork) when
            listens is enabled.
            Empty without a ``websocket.secret``.

        Raises:
            ValueError: ``public_url`` is not http or https.
        """
        base = public_url.rstrip("/")
        scheme, sep, rest = base.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise ValueError(f"public_url {public_url!r} must start with http:// or https://")
        secret, urls = self.websocket.secret, {}
        if secret is not None and self.websocket.enabled:
            ws_scheme = "wss" if scheme.lower() == "https" else "ws"
            urls["websocket"] = f"{ws_scheme}://{rest}/ws/{self.slug}/{secret}"
            urls["twilio_webhook"] = f"{base}/incoming-call/{self.slug}/{secret}"
        if secret is not None and self.listens.enabled:
            urls["listens"] = f"{base}/listens/{self.slug}/{secret}"
            ws_scheme = "wss" if scheme.lower() == "https" else "ws"
            urls["listens_stream"] = f"{ws_scheme}://{rest}/listens/{self.slug}/{secret}/stream"
        return urls


class User(_Model):
    """A dashboard login."""

    name: str = Field(min_length=1)
    """Login name, unique."""
    password_hash: Annotated[str, AfterValidator(rules.check_password_hash)] = Field(repr=False)
    """``scrypt$…`` or ``pbkdf2_sha256$…``; never a plain password."""
    role: Role
    """What the user may see and change."""


# --- the whole file ----------------------------------------------------------------------------


class Config(_Model):
    """The validated configuration. Build it with :func:`load_config` or :func:`parse_config`."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    credentials: dict[str, dict[str, str]] = Field(default_factory=dict, repr=False)
    """Named provider credentials, e.g. ``openai: {api_key: ...}``."""
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    """Realtime voice models by name."""
    agents: list[Agent] = Field(default_factory=list)
    users: list[User] = Field(default_factory=list)
    """Dashboard logins."""
    _by_slug: dict[str, Agent] = PrivateAttr(default_factory=dict)
    _by_username: dict[str, Agent] = PrivateAttr(default_factory=dict)
    _by_number: dict[str, Agent] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index the agents once for the O(1) lookups."""
        for agent in reversed(self.agents):  # on duplicates (invalid anyway) the first one wins
            self._by_slug[agent.slug] = agent
            if agent.sip.username is not None:
                self._by_username[agent.sip.username] = agent
            for number in agent.sip.numbers:
                self._by_number[self.server.sip.numbering.normalize(number)] = agent

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        issues = _cross_field_issues(
            credentials=self.credentials,
            model_types={name: model.type for name, model in self.models.items()},
            models=list(self.models.items()),
            agents=list(enumerate(self.agents)),
            users=list(enumerate(self.users)),
            normalize=self.server.sip.numbering.normalize,
        )
        RuleErrors.raise_if_any(issues)
        return self

    def agent_by_slug(self, slug: str) -> Agent | None:
        """The agent with this slug, or None."""
        return self._by_slug.get(slug)

    def agent_by_sip_username(self, username: str) -> Agent | None:
        """The agent whose ``sip.username`` is exactly ``username``, or None.

        Also when that agent's SIP is disabled: check ``agent.sip.enabled``.
        """
        return self._by_username.get(username)

    def agent_by_number(self, number: str) -> Agent | None:
        """The agent owning a SIP number, compared with :func:`normalize_number`, or None.

        ``+14155550100`` matches ``14155550100``. Also when that agent's SIP is disabled: check
        ``agent.sip.enabled``.
        """
        return self._by_number.get(self.server.sip.numbering.normalize(number))


def _cross_field_issues(
    *,
    credentials: Collection[str] | None,
    model_types: Mapping[str, str | None],
    models: Sequence[tuple[str, CustomModel | LiveKitInferenceModel]],
    agents: Sequence[tuple[int, Agent]],
    users: Sequence[tuple[int, User]],
    normalize: Callable[[str], str] = normalize_number,
) -> list[Issue]:
    """Rules across objects.

    ``model_types`` maps every defined model name to its type (``None``: unknown, for a model
    that is invalid itself); ``credentials=None`` (not a mapping) skips the credential checks.
    """
    issues: list[Issue] = []
    seen: dict[str, dict[str, rules.Loc]] = {
        "slug": {},
        "username": {},
        "number": {},
        "listens": {},
        "user": {},
        "secret": {},
    }

    def unique(table: str, key: str, shown: str, loc: rules.Loc) -> None:
        first = seen[table].setdefault(key, loc)
        if first != loc:
            issues.append((loc, f"{shown!r} is already used by {rules.format_path(first)}"))

    def defined(names: Collection[str]) -> str:
        return f"defined: {', '.join(sorted(names))}" if names else "none are defined"

    for name, model in models:
        if credentials is None:
            break
        if model.credential not in (None, *credentials):
            message = f"unknown credential {model.credential!r} ({defined(credentials)})"
            issues.append((("models", name, "credential"), message))
        if isinstance(model, CustomModel):
            for stage in ("stt", "llm", "tts"):
                own = getattr(model, stage).options.get("credential")
                if own is None or (isinstance(own, str) and own in credentials):
                    continue
                message = f"unknown credential {own!r} ({defined(credentials)})"
                issues.append((("models", name, stage, "credential"), message))
    for i, agent in agents:
        unique("slug", agent.slug, agent.slug, ("agents", i, "slug"))
        wanted, where = agent.realtime.model, ("agents", i, "realtime", "model")
        if wanted is not None and wanted not in model_types:
            issues.append((where, f"unknown model {wanted!r} ({defined(model_types)})"))
        elif wanted is not None and agent.listens.enabled:
            kind = model_types[wanted]
            if kind not in ("custom", None):
                message = f"listens needs a model of type custom; {wanted!r} is {kind!r}"
                issues.append((where, message))
        if agent.sip.username is not None:
            username = agent.sip.username
            unique("username", username, username, ("agents", i, "sip", "username"))
        for j, number in enumerate(agent.sip.numbers):
            unique("number", normalize(number), number, ("agents", i, "sip", "numbers", j))
        if agent.websocket.secret is not None:  # never shown: only where it is used first
            at: rules.Loc = ("agents", i, "websocket", "secret")
            first = seen["secret"].setdefault(agent.websocket.secret, at)
            if first != at:
                message = (
                    f"the same secret as {rules.format_path(first)}: one leaked URL would open"
                    " both agents; give each its own (sipserver gen-secret)"
                )
                issues.append((at, message))
    for i, agent in agents:  # every SIP number is known now
        for j, number in enumerate(agent.listens.numbers):
            loc = ("agents", i, "listens", "numbers", j)
            sip = seen["number"].get(normalize(number))
            if sip is not None:
                message = f"{number!r} is also a SIP number ({rules.format_path(sip)})"
                issues.append((loc, message))
            elif agent.listens.enabled:  # one agent per monitored number
                unique("listens", normalize(number), number, loc)
    for i, user in users:
        unique("user", user.name, user.name, ("users", i, "name"))
    return issues


def _partial_cross_field_issues(tree: dict[str, Any], context: dict[str, Any]) -> list[Issue]:
    """The cross-field rules over the models, agents and users that are valid on their own."""

    def section(key: str, kind: type[dict[Any, Any]] | type[list[Any]]) -> Any:
        value = tree.get(key)
        return value if isinstance(value, kind) else kind()

    def valid(check: Callable[..., Any], raw: Any) -> Any:
        try:
            return check(raw, context=context)
        except ValidationError:
            return None

    raw_models: dict[Any, Any] = section("models", dict)
    adapter: TypeAdapter[CustomModel | LiveKitInferenceModel] = TypeAdapter(ModelSpec)
    credentials = tree.get("credentials", {})
    return _cross_field_issues(
        credentials=credentials if isinstance(credentials, dict) else None,
        model_types={n: _model_type(m) for n, m in raw_models.items()},
        models=[
            (n, m) for n, raw in raw_models.items() if (m := valid(adapter.validate_python, raw))
        ],
        agents=[
            (i, a)
            for i, raw in enumerate(section("agents", list))
            if (a := valid(Agent.model_validate, raw))
        ],
        users=[
            (i, u)
            for i, raw in enumerate(section("users", list))
            if (u := valid(User.model_validate, raw))
        ],
    )


def _model_type(raw: Any) -> str | None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    return kind if kind in ("custom", "livekit_inference") else None


# --- loading -----------------------------------------------------------------------------------


def embedded_config_path() -> pathlib.Path:
    """The embedded default configuration file.

    Returns:
        ``sipserver/_embedded/sipserver.yaml`` of the installed package (wheels carry it),
        else ``config/sipserver.yaml`` of the source checkout (editable installs).
    """
    packaged = (
        importlib.resources.files("sipserver").joinpath("_embedded").joinpath("sipserver.yaml")
    )
    if packaged.is_file():
        return pathlib.Path(str(packaged))
    return pathlib.Path(__file__).resolve().parent.parent / "config" / "sipserver.yaml"


def config_dir(path: str | os.PathLike[str] | None) -> pathlib.Path:
    """The directory relative file paths of the configuration at ``path`` are taken from.

    Args:
        path: The configuration file; ``None``: the embedded default.
    """
    return (embedded_config_path() if path is None else pathlib.Path(path)).resolve().parent


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read, expand and validate a configuration file.

    Args:
        path: The YAML file; ``None`` loads :func:`embedded_config_path`. Relative sound
            paths in it are taken from its directory.
        env: Variables for ``${VAR}`` expansion; defaults to ``os.environ``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file cannot be read or is invalid; every problem is listed.
    """
    file = embedded_config_path() if path is None else pathlib.Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{file}: cannot read: {reason}"], source=str(file)) from exc
    return parse_config(text, source=str(file), env=env, base_dir=config_dir(file))


def read_raw_config(text: str, *, source: str = "<string>") -> dict[str, Any]:
    """The document as the loader reads it, before ``${VAR}`` expansion and validation (what
    the console shows and compares: the very reading :func:`parse_config` starts from).

    Raises:
        ConfigError: The YAML is malformed or its top level is not a mapping.
    """
    raw, syntax_error = rules.read_yaml(text, source)
    if raw is None:
        raise ConfigError([syntax_error or f"{source}: unreadable"], source=source)
    return raw


GENERATED_SECRET_LENGTH = 32
"""Length of :func:`generate_secret`'s secrets unless asked otherwise (and the least)."""


def generate_secret(length: int = GENERATED_SECRET_LENGTH) -> str:
    """A random URL-safe secret of exactly ``length`` characters: ``sipserver gen-secret`` and
    the console's Generate button (websocket secrets, SIP passwords).

    Raises:
        ValueError: ``length`` is below :data:`GENERATED_SECRET_LENGTH`.
    """
    if length < GENERATED_SECRET_LENGTH:
        raise ValueError(f"a generated secret has at least {GENERATED_SECRET_LENGTH} characters")
    # token_urlsafe(n) yields about 1.3 characters per byte; trim to the exact length asked.
    return secrets.token_urlsafe(length)[:length]


def format_key_path(loc: Sequence[int | str]) -> str:
    """``("agents", 1, "sip", "numbers", 0)`` -> ``agents[1].sip.numbers[0]``."""
    return rules.format_path(tuple(loc))


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Parse, expand and validate configuration YAML.

    Args:
        text: The YAML document.
        source: Where it came from, for error messages.
        env: Variables for ``${VAR}`` expansion; defaults to ``os.environ``.
        base_dir: Directory relative sound paths are taken from; ``None``: the working
            directory.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The YAML is malformed or invalid; every problem is listed.
    """
    raw, syntax_error = rules.read_yaml(text, source)
    if raw is None:
        raise ConfigError([syntax_error or f"{source}: unreadable"], source=source)
    unset: list[Issue] = []
    tree = rules.expand_env(raw, os.environ if env is None else env, unset)
    issues: list[Issue] = []
    context = {"base_dir": pathlib.Path(base_dir) if base_dir is not None else None}
    try:
        config = Config.model_validate(tree, context=context)
    except ValidationError as exc:
        issues, cross_checked = rules.issues_from_validation(exc, Config)
        if not cross_checked:
            issues += _partial_cross_field_issues(tree, context)
    else:
        if not unset:
            return config

    # A value with an unset variable was validated unexpanded: drop what that caused.
    def caused_by_unset(issue: Issue) -> bool:
        loc, message = issue
        return not message.startswith("unknown key") and any(loc[: len(u)] == u for u, _ in unset)

    issues = [issue for issue in issues if not caused_by_unset(issue)]
    located = list(
        dict.fromkeys((rules.format_path(loc), message) for loc, message in unset + issues)
    )
    lines = [f"{path}: {message}" for path, message in located]
    raise ConfigError(lines, source=source, located=located)


def srtp_warnings(config: Config) -> list[str]:
    """Agents with SRTP but no SIP over TLS to carry its keys (``check-config`` prints these).

    SDES (RFC 4568 §8.1) puts the media keys in the SDP: over UDP or TCP anyone who sees the
    signalling can decrypt the media, so SRTP alone protects nothing against that eavesdropper.
    """
    if config.server.sip.tls.listen:
        return []
    return [
        f"agents[{index}].sip.srtp is {agent.sip.srtp!r} but server.sip.tls has no listener:"
        " SDES keys travel in the SDP, readable by anyone who sees the signalling"
        for index, agent in enumerate(config.agents)
        if agent.sip.enabled and agent.sip.srtp != "off"
    ]


_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?]+)")


def called_number(uri: str) -> str:
    """The user part of a SIP or tel URI (``<sip:+1500@host>`` -> ``+1500``), else ``uri``."""
    match = _URI_USER.search(uri)
    return match.group(1) if match else uri


def is_listens_number(config: Config, agent: Agent, number: str) -> bool:
    """True when ``number`` is one of ``agent``'s listens numbers (through the numbering plan)."""
    if not agent.listens.enabled:
        return False
    normalize = config.server.sip.numbering.normalize
    wanted = normalize(number)
    return bool(wanted) and any(normalize(n) == wanted for n in agent.listens.numbers)
