"""The ``server:`` block of the configuration: listeners, SIP edge, media workers, gateway.

Private to :mod:`sipserver.config`, which re-exports these models.
"""

from __future__ import annotations

import os
import pathlib
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from sipserver import _config_rules as rules
from sipserver._config_rules import RuleErrors, normalize_number, parse_host_port
from sipserver._config_tls import SipTlsConfig
from sipserver._config_types import DigestAlgorithm, Host, HostPort, Listeners
from sipserver._config_types import StrictModel as _Model

__all__ = [
    "BanConfig",
    "HttpLimitsConfig",
    "LoginLimitConfig",
    "MediaConfig",
    "MediaStreamsConfig",
    "NumberingPlan",
    "RecordsConfig",
    "ServerConfig",
    "SipServerConfig",
    "SipTlsConfig",
    "WebhookSettings",
    "WebhookTarget",
    "WebhooksConfig",
]


class BanConfig(_Model):
    """Temporary bans of sources that fail digest authentication repeatedly."""

    max_failures: int = Field(5, ge=1)
    """Failed authentications within ``window`` that ban the source address."""
    window: float = Field(60.0, gt=0)
    """Seconds over which failures are counted."""
    duration: float = Field(600.0, gt=0)
    """Seconds a banned source is answered 403."""
    max_tracked_sources: int = Field(100_000, ge=1)
    """Cap on the addresses tracked at once (bounds memory under a spray attack)."""


class NumberingPlan(_Model):
    """How dialled numbers are normalised before they are matched against agents' numbers.

    Both sides (the number in the Request-URI and the configured ``sip.numbers``) go through the
    same steps, so ``+442071234567``, ``00442071234567``, ``02071234567`` (with country code 44
    and national prefix 0) and ``902071234567`` (with strip prefix 9) all reach the same agent:

    1. punctuation (spaces, ``-``, ``(``, ``)``, ``.``) is removed;
    2. a number starting with ``+`` is international already: the ``+`` goes, nothing else;
    3. otherwise the first matching ``strip_prefixes`` entry is removed (PBX outside-line codes);
    4. then ``international_prefix`` is replaced by nothing (the country code follows it), or
       ``national_prefix`` by ``country_code``.
    """

    country_code: Annotated[str, AfterValidator(rules.check_digits)] | None = None
    """Country code added to nationally dialled numbers, e.g. ``"44"`` or ``"1"``; none: off."""
    national_prefix: Annotated[str, AfterValidator(rules.check_digits)] | None = None
    """Trunk prefix of national numbers, e.g. ``"0"`` (UK, DE) or ``"1"`` (NANP); needs
    ``country_code``."""
    international_prefix: Annotated[str, AfterValidator(rules.check_digits)] | None = None
    """Exit code before a country code, e.g. ``"00"`` or ``"011"``."""
    strip_prefixes: list[Annotated[str, AfterValidator(rules.check_digits)]] = Field(
        default_factory=list
    )
    """Prefixes removed first (the first that matches), e.g. ``["9"]`` for a PBX outside line."""
    min_length: int = Field(6, ge=1)
    """Numbers shorter than this (after punctuation) are extensions: only punctuation and ``+``
    are removed, so short dial strings such as ``100`` are never rewritten."""

    @model_validator(mode="after")
    def _national_needs_country(self) -> NumberingPlan:
        if self.national_prefix and not self.country_code:
            raise RuleErrors([(("national_prefix",), "needs country_code")])
        return self

    def normalize(self, number: str) -> str:
        """The digits a number is compared by (see the class doc)."""
        compact = number.translate(rules.NUMBER_PUNCTUATION)
        if compact.startswith("+") or len(compact) < self.min_length:
            return normalize_number(compact)
        for prefix in self.strip_prefixes:
            if compact.startswith(prefix):
                compact = compact[len(prefix) :]
                break
        if self.international_prefix and compact.startswith(self.international_prefix):
            return compact[len(self.international_prefix) :]
        if self.national_prefix and compact.startswith(self.national_prefix):
            return f"{self.country_code}{compact[len(self.national_prefix) :]}"
        return compact


class SipServerConfig(_Model):
    """The SIP edge: listeners, digest authentication and registrar limits."""

    numbering: NumberingPlan = Field(default_factory=NumberingPlan)
    """Normalisation of dialled numbers (international/national prefixes, PBX prefixes)."""

    udp: Listeners = Field(default_factory=lambda: ["127.0.0.1:5060"])
    """UDP listeners, ``host:port`` (``[::]:5060`` for IPv6); one string or a list; ``[]``: off."""
    tcp: Listeners = Field(default_factory=lambda: ["127.0.0.1:5060"])
    """TCP listeners, like ``udp``."""
    tls: Annotated[SipTlsConfig, BeforeValidator(rules.none_is_empty)] = Field(
        default_factory=SipTlsConfig
    )
    """SIP over TLS listeners, certificate and client verification; ``null``: off."""
    digest_algorithms: Annotated[list[DigestAlgorithm], AfterValidator(rules.check_unique)] = Field(
        ["MD5"], min_length=1
    )
    """Digest algorithms accepted; 401/407 carry one challenge, with the first. One challenge
    because user agents mishandle several (RFC 8760 §2.4 allows them): MD5 first serves every
    UA, SHA-256 first or alone locks out MD5-only ones."""
    digest_uri_check: Literal["server", "strict"] = "server"
    """Which digest ``uri`` is accepted: ``server``, the Request-URI or any URI naming this
    server (a served domain or listener address, a listener port, any user part), as Kamailio
    and Asterisk do; ``strict``, only the Request-URI (RFC 7616 §3.4.6)."""
    nonce_ttl: float = Field(300.0, gt=0)
    """Seconds a nonce stays valid; older ones get ``stale=true``."""
    min_expires: int = Field(60, gt=0)
    """Shortest registration accepted; shorter requests get 423 (RFC 3261 §10.3 step 7)."""
    max_expires: int = Field(3600, gt=0)
    """Longer registrations are clamped to this."""
    default_expires: int = Field(3600, gt=0)
    """Expiry used when a REGISTER gives none."""
    max_contacts_per_aor: int = Field(10, ge=1)
    """Contacts one address of record may register at once."""
    ban: BanConfig = Field(default_factory=BanConfig)
    """Temporary bans after authentication failures."""
    max_message_size: int = Field(65535, ge=1024)
    """Bytes; larger SIP messages are rejected."""
    force_rport: bool = True
    """Answer UDP requests at their source address and port even without ``;rport`` (RFC 3581),
    which reaches peers behind NAT."""
    max_connections: Annotated[Literal["auto"] | int, BeforeValidator(rules.check_workers)] = "auto"
    """Stream connections (TCP and TLS together) open at once; past it a new one is closed as it
    is accepted. ``auto``: half the open-file limit less 256, between 64 and 10,000."""
    max_connections_per_source: int = Field(256, ge=1)
    """Stream connections open at once from one address (IPv6: one /64). A PBX needs one or
    a few; an office NAT with phones registering over TCP needs one per phone."""
    connection_idle_timeout: float = Field(300.0, gt=0)
    """Seconds a stream connection may go without a complete message or a keepalive ping
    (RFC 5626 §4.4.1: clients ping every 95-120 s); bytes of an unfinished message do not
    count. A connection carrying a call in progress is kept (its BYE goes back on it)."""
    message_timeout: float = Field(20.0, gt=0)
    """Seconds a SIP message may take over a stream from its first byte to its last (a new
    connection's first message counts from the connection); then the connection is closed."""

    @model_validator(mode="after")
    def _connections_order(self) -> SipServerConfig:
        _check_per_source_cap(self)
        return self

    @model_validator(mode="after")
    def _expires_order(self) -> SipServerConfig:
        low, default, high = self.min_expires, self.default_expires, self.max_expires
        if low > high:
            raise RuleErrors([(("min_expires",), f"must be <= max_expires ({high})")])
        if not low <= default <= high:
            message = f"must be between min_expires ({low}) and max_expires ({high})"
            raise RuleErrors([(("default_expires",), message)])
        return self

    @property
    def udp_addresses(self) -> list[tuple[str, int]]:
        """The UDP listeners as ``(host, port)``; IPv6 hosts without brackets."""
        return [parse_host_port(item) for item in self.udp]

    @property
    def tcp_addresses(self) -> list[tuple[str, int]]:
        """The TCP listeners as ``(host, port)``; IPv6 hosts without brackets."""
        return [parse_host_port(item) for item in self.tcp]

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        """The TLS listeners as ``(host, port)``; IPv6 hosts without brackets."""
        return [parse_host_port(item) for item in self.tls.listen]


class MediaConfig(_Model):
    """Media workers: the processes that answer calls (SIP on loopback) and carry their RTP."""

    worker_host: Host = "127.0.0.1"
    """Address the workers' SIP listeners bind to; the edge forwards calls there."""
    rtp_host: Host = "127.0.0.1"
    """Address RTP binds to and that the workers put in their SDP."""
    rtp_port_min: int = Field(20000, ge=1024, le=65535)
    """First UDP port of the RTP range (split between workers, 2 ports per call)."""
    rtp_port_max: int = Field(20999, ge=1024, le=65535)
    """Last UDP port of the RTP range."""
    min_workers: int = Field(1, ge=1)
    """Workers kept running even when idle; ``server.workers`` is the maximum."""
    sample_rate: Literal[8000, 16000] = 8000
    """PCM rate of the frames between workers and sessions."""
    session_timers: Literal["optional", "always", "off"] = "optional"
    """RFC 4028 session timers in the workers: ``optional`` (used when the caller asks for them
    with ``Session-Expires``), ``always`` (also for callers that do not: the worker is then the
    refresher and re-INVITEs/UPDATEs every ``session_expires / 2``; a caller that vanished fails
    the refresh and the call ends) or ``off`` (Session-Expires is ignored)."""
    session_expires: int = Field(1800, ge=90)
    """RFC 4028 session interval, seconds, for sessions the worker starts itself
    (``session_timers: always`` and a caller without ``Session-Expires``); a caller's own
    ``Session-Expires`` (>= ``min_se``) is used as it is. When refreshes stop, the
    non-refresher ends the call with BYE before the interval is over (pjsip: at
    ``max(SE - 32, SE - SE/3)`` seconds after the last refresh)."""
    min_se: int = Field(90, ge=90)
    """RFC 4028 ``Min-SE``, seconds: a shorter ``Session-Expires`` gets ``422 Session Interval
    Too Small`` with this ``Min-SE``. RFC 4028 §4 sets the floor at 90, and so does pjsip
    (``ABS_MIN_SE``: a smaller value is an assertion failure in the worker), so no lower value
    is accepted, not even for tests."""
    rtp_timeout: float = Field(60.0, ge=0)
    """Seconds without an RTP packet from the caller after which the worker hangs up (BYE),
    except while the caller holds the call; 0 never does."""
    worker_timeout: float = Field(4.0, ge=1.0)
    """Seconds without any sign of life on a worker's frame link (it is pinged twice a
    second) after which the worker is declared lost: killed, its calls ended with BYE,
    replaced. Finds a stopped or hung worker within this plus 0.5 s."""
    answer_delay: float = Field(0.0, ge=0, le=60)
    """Seconds the worker rings (180 Ringing) before it answers (200 OK), like a PBX's ring
    time; 0 answers at once."""
    engine: Literal["native", "pjsua2"] = "native"
    """What answers the calls: ``pjsua2`` (the reference engine: media workers of 4 calls each;
    the sessions run in the main process) or ``native`` (the default: call workers, one per
    core (``server.workers``), all started at start-up: our own SIP UA and RTP engine, and
    each call's session and models run in the worker that holds the call; websocket and Twilio
    calls too, their frames relayed from the main process). See docs/calls.md, "Call workers",
    and docs/websocket.md."""
    calls_per_worker: Annotated[Literal["auto"] | int, BeforeValidator(rules.check_workers)] = (
        "auto"
    )
    """Calls one call worker (``engine: native``) takes: ``auto`` = ``server.max_calls``
    divided among ``server.workers`` (rounded up), and never more than its RTP port slice
    holds (2 ports per call). pjsua2 workers read their capacity from the library (4)."""

    @model_validator(mode="after")
    def _port_order(self) -> MediaConfig:
        if self.rtp_port_min + 16 > self.rtp_port_max:
            message = f"must be at least rtp_port_min + 16 ({self.rtp_port_min + 16})"
            raise RuleErrors([(("rtp_port_max",), message)])
        if self.min_se > self.session_expires:
            message = f"must be <= session_expires ({self.session_expires})"
            raise RuleErrors([(("min_se",), message)])
        return self


class MediaStreamsConfig(_Model):
    """The websocket media-stream gateway (Twilio Media Streams and browsers)."""

    lead_ms: int = Field(100, ge=20, le=2000)
    """Agent audio sent ahead of real time, in ms: the far side's buffer, all that a ``clear``
    has to throw away."""
    jitter_ms: int = Field(60, ge=0, le=1000)
    """Caller audio buffered before it reaches the session (reordering, bursts)."""
    stall_timeout: float = Field(10.0, gt=0)
    """Seconds without media from the far side after which its call is ended."""
    max_message_bytes: int = Field(65536, ge=1024)
    """Largest websocket message accepted; a larger one closes that socket (1009). Messages
    over four times this are refused while being read."""
    mark_interval_ms: int = Field(1000, ge=100)
    """How often (ms of agent audio) a ``mark`` follows the media, to learn what was heard."""


class HttpLimitsConfig(_Model):
    """Connection caps and read deadlines of the HTTP listener."""

    max_connections: Annotated[Literal["auto"] | int, BeforeValidator(rules.check_workers)] = "auto"
    """Connections open at once (websocket calls included); past it a new one is closed as
    it is accepted. ``auto``: a quarter of the open-file limit less 256, between 64 and
    10,000."""
    max_connections_per_source: int = Field(256, ge=1)
    """Connections open at once from one address (IPv6: one /64). Behind a reverse proxy every
    connection comes from the proxy: raise it to ``max_connections``."""
    header_timeout: float = Field(10.0, gt=0)
    """Seconds a request head may take from its first byte (a new connection: from the
    connection) to its end; then 408 and the connection is closed."""
    body_timeout: float = Field(30.0, gt=0)
    """Seconds a request body may take after its head; then the connection is closed. Not
    applied to websockets."""
    keepalive_timeout: float = Field(60.0, gt=0)
    """Seconds an idle keep-alive connection waits for its next request."""

    @model_validator(mode="after")
    def _connections_order(self) -> HttpLimitsConfig:
        _check_per_source_cap(self)
        return self


def _check_per_source_cap(limits: SipServerConfig | HttpLimitsConfig) -> None:
    """A per-source connection cap set explicitly must not exceed the total one (an unset one
    is clamped to it)."""
    total = limits.max_connections
    explicit = "max_connections_per_source" in limits.model_fields_set
    if explicit and total != "auto" and limits.max_connections_per_source > total:
        message = f"must be <= max_connections ({total})"
        raise RuleErrors([(("max_connections_per_source",), message)])


class LogRateLimitConfig(_Model):
    """How many log lines each event kind may write (a flood folds into ``suppressed=N``)."""

    per_second: float = Field(20.0, gt=0)
    """Lines per second each event kind may write, sustained."""
    burst: int = Field(200, ge=1)
    """Lines a kind may write at once after a quiet spell."""


def _check_admin_token(value: str) -> str:
    if len(value) < 16 or any(c.isspace() for c in value) or not value.isprintable():
        raise ValueError("must be at least 16 printable characters without spaces")
    return value


class LoginLimitConfig(_Model):
    """The dashboard's login limiter (see docs/security.md): attempts are counted before the
    password hash is checked, per source address and per user name."""

    max_failures_per_source: int = Field(10, ge=1)
    """Failed (or in-flight) logins per source address within ``window``; more get 429."""
    max_failures_per_user: int = Field(30, ge=1)
    """Failed (or in-flight) logins at one user name within ``window``, all sources together,
    that lock the name: then only addresses it logged in from before keep their allowance,
    any other address gets one attempt at it per window."""
    window: float = Field(300.0, gt=0)
    """Seconds over which failures are counted."""
    concurrent_checks: int = Field(2, ge=1, le=64)
    """Password hashes (scrypt, ~35 ms of a core each) computed at once, on threads."""
    max_waiting: int = Field(16, ge=0)
    """Logins waiting for a hash slot; more get 503 with Retry-After (no hash, not counted)."""


class RecordsConfig(_Model):
    """Call records ([5/7]): every call's record, events and recording (docs/records.md)."""

    store: Literal["sqlite", "none"] = "sqlite"
    """``sqlite``: records in ``<data_dir>/records.db``; ``none``: no records are kept (the
    calls pages are empty, no end-of-call webhooks)."""
    retention_days: float = Field(30.0, gt=0)
    """Records (and their recordings) older than this many days are deleted."""
    max_size_mb: float = Field(1024.0, gt=0)
    """Most megabytes the records database and the recordings may take; past it the oldest
    records go first."""
    flush_interval: float = Field(0.5, gt=0, le=1.0)
    """Seconds between two batched writes: a crash loses at most this much of a call's events."""


WEBHOOK_SECRET_MIN_LENGTH = 16
"""Shortest webhook signing secret accepted (characters)."""


def _check_webhook_url(value: str) -> str:
    """An ``http(s)://host[:port]/path?query`` URL without user info (the value is not repeated
    in the error: a receiver's URL may carry a token of its own)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters (percent-encode them)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not hold user:password@ (the console shows URLs unmasked); the receiver"
            " authenticates the requests by their signature (secret)"
        )
    if parts.fragment:
        raise ValueError("must not have a #fragment (it is never sent)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def _check_webhook_secret(value: str) -> str:
    if len(value) < WEBHOOK_SECRET_MIN_LENGTH:
        raise ValueError(
            f"must be at least {WEBHOOK_SECRET_MIN_LENGTH} characters, got {len(value)};"
            " generate one: sipserver gen-secret"
        )
    if any(c.isspace() for c in value) or not value.isprintable():
        raise ValueError("must be printable characters without spaces")
    if len(set(value)) == 1:
        raise ValueError("is one character repeated, which anyone can guess")
    return value


class WebhookTarget(_Model):
    """Where one kind of webhook is posted and the secret that signs it."""

    url: Annotated[str, AfterValidator(_check_webhook_url)]
    """``http(s)://`` URL the JSON is POSTed to (redirects are not followed)."""
    secret: Annotated[str, AfterValidator(_check_webhook_secret)] = Field(repr=False)
    """HMAC-SHA256 key of ``X-Sipserver-Signature``, >= 16 printable characters without spaces
    (``sipserver gen-secret``); shared with the receiver only."""


class WebhookSettings(_Model):
    """The webhooks of an agent (``agents[].webhooks``), one target per kind; each is optional.

    An agent's entry for a kind replaces ``server.webhooks``' entry for that kind."""

    call_started: WebhookTarget | None = None
    """Posted when a call is answered (the record so far, no events yet)."""
    call_ended: WebhookTarget | None = None
    """Posted when a call's record is final (the whole record with its events)."""
    transcript: WebhookTarget | None = None
    """Posted for every turn of a call (the transcript lines of that turn)."""


class WebhooksConfig(WebhookSettings):
    """``server.webhooks``: the server-wide targets (for agents without their own entry for a
    kind) and the sender's settings. Deliveries wait in a queue in ``<data_dir>/records.db``
    and are retried with exponential back-off (docs/records.md, "Webhooks")."""

    max_concurrent_per_url: int = Field(4, ge=1, le=256)
    """Requests in flight at once to one URL; the rest wait their turn in the queue."""
    max_concurrent: int = Field(32, ge=1, le=1024)
    """Requests in flight at once over every URL."""
    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds one request may take (connect to last response byte); then it is retried."""
    retry_for: float = Field(86400.0, gt=0)
    """Seconds after its first attempt a delivery is retried (24 h); then it is ``failed``."""
    initial_backoff: float = Field(5.0, gt=0)
    """Seconds before the first retry; each retry doubles it (with up to 50% random jitter)."""
    max_backoff: float = Field(3600.0, gt=0)
    """Longest wait between two attempts, seconds (a receiver's ``Retry-After`` may ask more)."""
    max_pending: int = Field(100_000, ge=1)
    """Deliveries waiting at once; past it the oldest pending are marked ``failed`` (queue
    full) and counted in ``sipserver_webhook_deliveries_total{outcome="queue_full"}``."""

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhooksConfig:
        if self.initial_backoff > self.max_backoff:
            message = f"must be <= max_backoff ({self.max_backoff:g})"
            raise RuleErrors([(("initial_backoff",), message)])
        return self


class ServerConfig(_Model):
    """Listeners, public identity, worker count and bindings store of the server."""

    public_host: Host = "127.0.0.1"
    """Host name or address peers use to reach the SIP edge."""
    public_url: Annotated[str, AfterValidator(rules.check_public_url)] = "http://127.0.0.1:8080"
    """``http(s)://host[:port]`` of the HTTP side as seen from outside (the agents' URLs)."""
    realm: Annotated[str, AfterValidator(rules.check_realm)] | None = None
    """Digest realm; ``None``: ``public_host`` (see :attr:`effective_realm`)."""
    domains: list[Host] = Field(default_factory=list)
    """Extra SIP domains served besides ``public_host`` and the listener addresses."""
    http: HostPort = "127.0.0.1:8080"
    """Public HTTP listener, ``host:port``: webhooks, websockets, the dashboard, the demo page,
    ``/healthz`` and ``/readyz`` (``/status`` and ``/metrics`` only with ``admin_token``)."""
    http_limits: HttpLimitsConfig = Field(default_factory=HttpLimitsConfig)
    """Connection caps and read deadlines of the public HTTP listener (the admin listener has
    the same deadlines and a cap of its own, 64 connections)."""
    admin_http: HostPort | None = "127.0.0.1:8081"
    """Admin HTTP listener, ``host:port``: ``/status``, ``/metrics``, ``/healthz``, ``/readyz``
    without a token. Keep it on loopback or a private network; null: no admin listener."""
    admin_token: Annotated[str, AfterValidator(_check_admin_token)] | None = Field(None, repr=False)
    """Bearer token that opens ``/status`` and ``/metrics`` on the public listener
    (``Authorization: Bearer <token>``, >= 16 characters); null: they are not served there."""
    sip: SipServerConfig = Field(default_factory=SipServerConfig)
    """The SIP edge."""
    workers: Annotated[Literal["auto"] | int, BeforeValidator(rules.check_workers)] = "auto"
    """Most media worker processes: ``auto`` (one per core) or a number >= 1."""
    media: MediaConfig = Field(default_factory=MediaConfig)
    """Media workers and RTP."""
    store: Annotated[str, AfterValidator(rules.check_store)] = "sqlite"
    """Bindings store: ``memory``, ``sqlite`` (``<data_dir>/bindings.db``) or ``sqlite://PATH``."""
    store_commit_ms: float = Field(20.0, ge=0, le=1000)
    """With ``sqlite``: a REGISTER's 200 goes out once its binding is committed; changes that
    arrive within this many milliseconds of each other share one transaction (group commit)."""
    data_dir: str = Field("./var", min_length=1)
    """Directory for state files (the bindings database, ...)."""
    media_streams: MediaStreamsConfig = Field(default_factory=MediaStreamsConfig)
    """The websocket media-stream gateway."""
    records: RecordsConfig = Field(default_factory=RecordsConfig)
    """Call records: where they are kept and for how long."""
    demo_page: bool = False
    """Serve the browser demo at ``/demo/<slug>`` for agents with a websocket (anyone who can
    reach the HTTP port can talk to them)."""
    log_rate_limit: LogRateLimitConfig = Field(default_factory=LogRateLimitConfig)
    """Per event kind, the lines the log may take: past it lines are dropped and the next one
    written says how many (``suppressed``), so no flood can fill a disk."""
    max_calls: Annotated[Literal["auto"] | int, BeforeValidator(rules.check_workers)] = "auto"
    """Calls in progress the whole server takes, every agent and door (SIP, websocket, Twilio,
    AI Listens forks); past it new calls are refused (SIP 503 + Retry-After, websocket HTTP 503,
    Twilio ``<Reject reason="busy"/>``). ``auto``: what one core measurably serves for the most
    expensive kind of agent configured, times the cores: 3 per core with local models, 60 with
    hosted ones, 150 for echo lines (measured on a 2-core Xeon VM with bench/models.py,
    bench/sessions.py and bench/websocket.py: see docs/security.md, "Capacity and admission")."""
    login_limit: LoginLimitConfig = Field(default_factory=LoginLimitConfig)
    """Dashboard login limits (per source, per user name, concurrent password checks)."""
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    """Server-wide webhook targets (``call_started``, ``call_ended``, ``transcript``) and the
    sender's retry and concurrency settings."""
    drain_timeout: float = Field(5.0, ge=0)
    """Seconds a stop (SIGTERM/SIGINT) waits for calls in progress to end before it ends them;
    new calls get 503 meanwhile. A second signal stops at once. Keep it below the supervisor's
    kill timeout (Docker: 10 s, Kubernetes: 30 s, systemd: 90 s)."""

    @model_validator(mode="after")
    def _admin_apart(self) -> ServerConfig:
        if self.admin_http is not None:
            (host, port), (http_host, http_port) = self.admin_host_port, self.http_host_port
            wildcard = {"0.0.0.0", "::", ""}
            if port == http_port and (host == http_host or {host, http_host} & wildcard):
                message = f"must not be the public listener's address ({self.http})"
                raise RuleErrors([(("admin_http",), message)])
        return self

    @property
    def admin_host_port(self) -> tuple[str, int]:
        """:attr:`admin_http` as ``(host, port)`` (call only when it is set)."""
        assert self.admin_http is not None
        return parse_host_port(self.admin_http)

    @property
    def max_workers(self) -> int:
        """:attr:`workers` as a number (``auto``: the number of CPU cores)."""
        if self.workers == "auto":
            return max(1, os.cpu_count() or 1)
        return self.workers

    @property
    def effective_realm(self) -> str:
        """The digest realm: :attr:`realm` when set, else :attr:`public_host`."""
        return self.realm if self.realm is not None else self.public_host

    @property
    def http_host_port(self) -> tuple[str, int]:
        """The HTTP listener as ``(host, port)``; an IPv6 host without brackets."""
        return parse_host_port(self.http)

    @property
    def records_path(self) -> pathlib.Path | None:
        """The records database (``<data_dir>/records.db``); None with ``records.store: none``."""
        if self.records.store == "none":
            return None
        return pathlib.Path(self.data_dir) / "records.db"

    @property
    def store_url(self) -> tuple[Literal["memory", "sqlite"], str | None]:
        """The bindings store as ``(kind, path)``: ``("memory", None)`` or ``("sqlite", path)``;
        plain ``sqlite`` is ``<data_dir>/bindings.db``."""
        kind, path = rules.parse_store(self.store)
        if kind == "sqlite" and path is None:
            path = str(pathlib.Path(self.data_dir) / "bindings.db")
        return kind, path
