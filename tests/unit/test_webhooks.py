"""Webhooks: signing, the config rules, and the sender against a real aiohttp receiver on
loopback (delivered, retried, failed, resumed after a restart, concurrency caps)."""

from __future__ import annotations

import asyncio
import calendar
import collections
import json
import socket
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from sipserver.config import Config, ConfigError, WebhooksConfig, parse_config
from sipserver.observability import Metrics
from sipserver.records.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    attempt_outcome,
    delivery_status,
    parse_retry_after,
    retry_delay,
    sign,
    verify,
    webhook_target,
)

SECRET = "whsec-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789"
FAST = {"initial_backoff": 0.05, "max_backoff": 0.2}
"""Back-off settings that keep retries within a test's patience."""

RECORD = {
    "id": "0190a1b2c3d4e5f60718293a4b",
    "agent": "support",
    "ingress": "sip",
    "caller": "+14155550123",
    "called": "+14155550100",
    "started_at": 1796083200.25,
    "ended_at": 1796083260.5,
    "end_reason": "caller_bye",
    "ended_by": "caller",
    "events": [
        {"type": "transcript", "offset": 1.2, "speaker": "caller", "text": "Wie spät ist es?"},
        {"type": "turn", "offset": 2.0, "index": 0, "voice_to_voice": 812.0},
    ],
}
"""The shape of ``CallRecord.to_json()`` (non-ASCII text on purpose: the body is UTF-8)."""


# --- a real receiver ---------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool
    """verify() accepted it with the path's secret."""
    at: float


class Receiver:
    """An aiohttp server on 127.0.0.1 that checks every request's signature with verify(),
    answers from a script (then 200) and counts requests in flight."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.secrets = secrets or {}
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.delay = 0.0
        self.seen: list[Seen] = []
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self.max_total = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.in_flight[path] += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        self.max_total = max(self.max_total, sum(self.in_flight.values()))
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            signed = verify(
                self.secrets.get(path, SECRET),
                body,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                now=time.time(),
            )
            self.seen.append(Seen(path, dict(request.headers), body, signed, time.time()))
            status, headers, text = self.script.pop(0) if self.script else (200, {}, "ok")
            return web.Response(status=status, headers=headers, text=text)
        finally:
            self.in_flight[path] -= 1

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def senders() -> AsyncIterator[list[WebhookSender]]:
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        await sender.stop(timeout=0.1)


def make_config(
    server: dict[str, Any] | None = None, agent: dict[str, Any] | None = None
) -> Config:
    doc = {
        "server": {"webhooks": server or {}},
        "agents": [{"slug": "support", "webhooks": agent or {}}, {"slug": "sales"}],
    }
    return parse_config(yaml.safe_dump(doc), env={})


class LiveConfig:
    """A configuration the test can replace, as a reload does."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self) -> Config:
        return self.config


def new_sender(
    tmp_path: Path, config: Config | LiveConfig, made: list[WebhookSender]
) -> tuple[WebhookSender, Metrics]:
    metrics = Metrics()
    live = config if isinstance(config, LiveConfig) else LiveConfig(config)
    sender = WebhookSender(tmp_path / "data" / "records.db", live, metrics, rng=lambda: 0.5)
    made.append(sender)
    return sender, metrics


def counted(metrics: Metrics, kind: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "sipserver_webhook_deliveries_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


def depth(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("sipserver_webhook_queue_depth") or 0.0


async def settled(
    sender: WebhookSender,
    record_id: str,
    done: Callable[[list[dict[str, Any]]], bool] | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """The record's deliveries once ``done`` says so (default: none pending)."""
    done = done or (lambda rows: bool(rows) and all(r["status"] != "pending" for r in rows))
    deadline = time.monotonic() + timeout
    while True:
        rows = await sender.deliveries(record_id)
        if done(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries did not settle: {rows}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- delivery ----------------------------------------------------------------------------------


async def test_a_call_ended_webhook_is_delivered_once_signed(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}})
    sender, metrics = new_sender(tmp_path, config, senders)
    await sender.start()
    delivery = sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    assert delivery is not None
    (row,) = await settled(sender, RECORD["id"])
    await asyncio.sleep(0.3)  # nothing more arrives
    (seen,) = receiver.seen
    assert seen.signed
    assert json.loads(seen.body) == RECORD
    assert "Wie spät ist es?".encode() in seen.body  # UTF-8, not \u escapes
    assert seen.headers[EVENT_HEADER] == "call_ended"
    assert seen.headers[DELIVERY_HEADER] == delivery
    assert seen.headers["Content-Type"] == "application/json"
    assert abs(int(seen.headers[TIMESTAMP_HEADER]) - time.time()) < 60
    assert seen.headers[SIGNATURE_HEADER] == sign(
        SECRET, seen.body, int(seen.headers[TIMESTAMP_HEADER])
    )
    assert row["id"] == delivery and row["kind"] == "call_ended" and row["url"] == receiver.url()
    assert (row["status"], row["attempts"], row["last_status"], row["last_error"]) == (
        "delivered",
        1,
        200,
        None,
    )
    assert row["delivered_at"] >= row["created_at"] and row["next_attempt_at"] is None
    assert counted(metrics, "call_ended", "delivered") == 1 and depth(metrics) == 0
    assert delivery_status([row])["call_ended"]["status"] == "delivered"
    # The database file is private; a delivered body is not kept.
    db = tmp_path / "data" / "records.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT body FROM webhook_deliveries").fetchall() == [(None,)]


async def test_a_receiver_failing_twice_gets_it_on_the_third_attempt(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [(500, {}, "db down"), (503, {}, "busy")]
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}, **FAST})
    sender, metrics = new_sender(tmp_path, config, senders)
    await sender.start()
    delivery = sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(sender, RECORD["id"])
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)
    assert len(receiver.seen) == 3 and all(s.signed for s in receiver.seen)
    assert {s.headers[DELIVERY_HEADER] for s in receiver.seen} == {delivery}  # idempotency key
    assert {s.body for s in receiver.seen} == {receiver.seen[0].body}
    assert counted(metrics, "call_ended", "retry") == 2
    assert counted(metrics, "call_ended", "delivered") == 1


async def test_a_400_fails_at_once_and_says_why(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [(400, {}, "unknown field 'events'")]
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}, **FAST})
    sender, metrics = new_sender(tmp_path, config, senders)
    await sender.start()
    sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(sender, RECORD["id"])
    await asyncio.sleep(0.5)  # several back-offs: no retry comes
    assert len(receiver.seen) == 1
    assert (row["status"], row["attempts"], row["last_status"]) == ("failed", 1, 400)
    assert "HTTP 400" in row["last_error"] and "not retried" in row["last_error"]
    assert "unknown field 'events'" in row["last_error"]
    assert counted(metrics, "call_ended", "failed") == 1 and depth(metrics) == 0


async def test_a_redirect_is_not_followed(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [(302, {"Location": receiver.url("/elsewhere")}, "")]
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}, **FAST})
    sender, _ = new_sender(tmp_path, config, senders)
    await sender.start()
    sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(sender, RECORD["id"])
    assert (row["status"], row["last_status"]) == ("failed", 302)
    assert "/elsewhere: redirects are not followed" in row["last_error"]
    assert [s.path for s in receiver.seen] == ["/hook"]


async def test_an_attempt_cut_short_by_stop_is_sent_again_with_the_same_id(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.delay = 1.0
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}})
    first, _ = new_sender(tmp_path, config, senders)
    await first.start()
    delivery = first.enqueue("call_ended", "support", RECORD["id"], RECORD)
    for _ in range(500):
        if receiver.in_flight["/hook"]:
            break
        await asyncio.sleep(0.01)
    await first.stop(timeout=0.05)
    second, _ = new_sender(tmp_path, config, senders)
    (row,) = await second.deliveries(RECORD["id"])
    assert (row["status"], row["attempts"]) == ("pending", 0)
    receiver.delay = 0.0
    await second.start()
    (row,) = await settled(second, RECORD["id"])
    assert row["status"] == "delivered"
    assert [s.headers[DELIVERY_HEADER] for s in receiver.seen][-1] == delivery


async def test_a_restart_between_attempts_loses_nothing(
    tmp_path: Path, senders: list[WebhookSender]
) -> None:
    port = free_port()  # nobody listens there yet: connection refused
    url = f"http://127.0.0.1:{port}/hook"
    config = make_config({"call_ended": {"url": url, "secret": SECRET}, **FAST})
    first, _ = new_sender(tmp_path, config, senders)
    await first.start()
    delivery = first.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(first, RECORD["id"], lambda rows: bool(rows) and rows[0]["attempts"])
    assert row["status"] == "pending" and row["last_status"] is None
    assert "Connect" in row["last_error"]  # aiohttp's ClientConnectorError
    await first.stop()

    receiver = Receiver()
    await receiver.start(port)
    try:
        second, metrics = new_sender(tmp_path, config, senders)
        await second.start()
        assert depth(metrics) == 1  # resumed from the database
        (row,) = await settled(second, RECORD["id"])
        assert row["status"] == "delivered" and row["attempts"] >= 2
        (seen,) = receiver.seen
        assert seen.signed and seen.headers[DELIVERY_HEADER] == delivery
        assert json.loads(seen.body) == RECORD
    finally:
        await receiver.stop()


async def test_concurrency_per_url_and_in_all_never_exceeds_the_limits(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.delay = 0.3
    config = make_config(
        {
            "call_ended": {"url": receiver.url("/ended"), "secret": SECRET},
            "transcript": {"url": receiver.url("/turns"), "secret": SECRET},
            "max_concurrent_per_url": 2,
            "max_concurrent": 3,
        }
    )
    sender, _ = new_sender(tmp_path, config, senders)
    await sender.start()
    for i in range(8):
        sender.enqueue("call_ended", "support", f"rec-{i}", RECORD)
        sender.enqueue("transcript", "support", f"rec-{i}", {"turn": i})
    for i in range(8):
        rows = await settled(sender, f"rec-{i}")
        assert [r["status"] for r in rows] == ["delivered", "delivered"]
    assert len(receiver.seen) == 16 and all(s.signed for s in receiver.seen)
    assert max(receiver.max_in_flight.values()) == 2  # reached, never passed
    assert receiver.max_total <= 3


async def test_retries_stop_after_retry_for(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [(502, {}, "bad gateway")] * 1000
    config = make_config(
        {"call_ended": {"url": receiver.url(), "secret": SECRET}, "retry_for": 0.3, **FAST}
    )
    sender, metrics = new_sender(tmp_path, config, senders)
    await sender.start()
    sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(sender, RECORD["id"])
    assert row["status"] == "failed" and row["last_status"] == 502
    assert "gave up after" in row["last_error"] and "retry_for" in row["last_error"]
    assert row["attempts"] == len(receiver.seen) >= 2
    assert counted(metrics, "call_ended", "failed") == 1


async def test_retry_after_is_honoured(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.script = [(429, {"Retry-After": "1"}, "slow down")]
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}, **FAST})
    sender, _ = new_sender(tmp_path, config, senders)
    await sender.start()
    sender.enqueue("call_ended", "support", RECORD["id"], RECORD)
    (row,) = await settled(sender, RECORD["id"])
    assert row["status"] == "delivered" and row["attempts"] == 2
    assert receiver.seen[1].at - receiver.seen[0].at >= 0.9  # not the 0.05 s back-off


async def test_the_secret_is_read_at_send_time_and_a_removed_webhook_fails(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.secrets = {"/hook": OTHER_SECRET}
    receiver.script = [(500, {}, "")]
    live = LiveConfig(
        make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}, **FAST})
    )
    sender, _ = new_sender(tmp_path, live, senders)
    await sender.start()
    sender.enqueue("call_ended", "support", "rec-1", RECORD)
    await settled(sender, "rec-1", lambda rows: bool(rows) and rows[0]["attempts"] >= 1)
    # The operator rotates the secret (a reload): the retry is signed with the new one.
    live.config = make_config(
        {"call_ended": {"url": receiver.url(), "secret": OTHER_SECRET}, **FAST}
    )
    (row,) = await settled(sender, "rec-1")
    assert row["status"] == "delivered"
    assert [s.signed for s in receiver.seen] == [False, True]

    # A webhook removed from the configuration: what is still queued fails, unsent.
    receiver.script = [(500, {}, "")]
    sender.enqueue("call_ended", "support", "rec-2", RECORD)
    await settled(sender, "rec-2", lambda rows: bool(rows) and rows[0]["attempts"] >= 1)
    live.config = make_config(FAST)
    (row,) = await settled(sender, "rec-2")
    assert row["status"] == "failed" and "no call_ended webhook is configured" in row["last_error"]
    assert len(receiver.seen) == 3


async def test_a_kind_without_url_queues_nothing_and_the_agent_entry_wins(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    receiver.secrets = {"/support": OTHER_SECRET}
    config = make_config(
        {"call_ended": {"url": receiver.url("/server"), "secret": SECRET}},
        {"call_ended": {"url": receiver.url("/support"), "secret": OTHER_SECRET}},
    )
    sender, _ = new_sender(tmp_path, config, senders)
    await sender.start()
    assert sender.enqueue("call_started", "support", "rec-1", RECORD) is None
    assert sender.enqueue("transcript", "sales", "rec-1", RECORD) is None
    sender.enqueue("call_ended", "support", "rec-1", RECORD)
    sender.enqueue("call_ended", "sales", "rec-2", RECORD)
    await settled(sender, "rec-1")
    await settled(sender, "rec-2")
    assert sorted((s.path, s.signed) for s in receiver.seen) == [
        ("/server", True),
        ("/support", True),
    ]
    assert len(await sender.deliveries("rec-1")) == 1
    with pytest.raises(ValueError, match="unknown webhook kind"):
        sender.enqueue("call_finished", "support", "rec-1", RECORD)


async def test_past_max_pending_the_oldest_fail_and_are_counted(
    tmp_path: Path, senders: list[WebhookSender]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    config = make_config({"call_ended": {"url": url, "secret": SECRET}, "max_pending": 2})
    sender, metrics = new_sender(tmp_path, config, senders)  # not started: nothing is sent
    for i in range(3):
        sender.enqueue("call_ended", "support", f"rec-{i}", RECORD)
    await settled(sender, "rec-0")
    rows = [(await sender.deliveries(f"rec-{i}"))[0] for i in range(3)]
    assert [r["status"] for r in rows] == ["failed", "pending", "pending"]
    assert "queue full" in rows[0]["last_error"] and "max_pending" in rows[0]["last_error"]
    assert counted(metrics, "call_ended", "queue_full") == 1 and depth(metrics) == 2
    assert await sender.forget(["rec-1"]) == 1 and depth(metrics) == 1


async def test_after_stop_enqueue_drops_and_counts(
    tmp_path: Path, receiver: Receiver, senders: list[WebhookSender]
) -> None:
    config = make_config({"call_ended": {"url": receiver.url(), "secret": SECRET}})
    sender, metrics = new_sender(tmp_path, config, senders)
    await sender.start()
    await sender.stop()
    assert sender.enqueue("call_ended", "support", "rec-1", RECORD) is None
    assert counted(metrics, "call_ended", "queue_full") == 1


# --- signing -----------------------------------------------------------------------------------


def test_verify_accepts_the_signature_and_refuses_tampering() -> None:
    body = json.dumps(RECORD).encode()
    now = 1796083200.0
    stamp = str(int(now))
    signature = sign(SECRET, body, int(now))
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(SECRET, body, stamp, signature, now=now + 10)
    assert not verify(SECRET, body + b" ", stamp, signature, now=now)  # changed body
    assert not verify(SECRET, body.replace(b"caller", b"callee"), stamp, signature, now=now)
    assert not verify(OTHER_SECRET, body, stamp, signature, now=now)  # wrong secret
    assert not verify(SECRET, body, stamp, signature, now=now + 301)  # stale timestamp
    assert not verify(SECRET, body, stamp, signature, now=now - 301)  # from the future
    # A replay with a fresh timestamp: the old signature does not cover it.
    assert not verify(SECRET, body, str(int(now) + 200), signature, now=now + 200)
    assert not verify(SECRET, body, None, signature, now=now)
    assert not verify(SECRET, body, stamp, None, now=now)
    assert not verify(SECRET, body, "12e3", signature, now=now)
    assert not verify(SECRET, body, stamp, signature.removeprefix("sha256="), now=now)
    assert verify(SECRET, body, stamp, signature, now=now + 30, tolerance=60)
    assert not verify(SECRET, body, stamp, signature, now=now + 61, tolerance=60)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    # A fixed vector a receiver in another language can check its code against (docs).
    assert sign("whsec-0123456789abcdef", b'{"id":"x"}', 1796083200) == (
        "sha256=3990ee17b075f12684bb4291ccc3a6baeab38ed31f0e94ef3f0f757f59b866ea"
    )


# --- policy ------------------------------------------------------------------------------------


def test_which_answers_are_retried() -> None:
    assert [attempt_outcome(s) for s in (200, 201, 204, 299)] == ["delivered"] * 4
    assert [attempt_outcome(s) for s in (None, 408, 429, 500, 502, 503, 599)] == ["retry"] * 7
    assert [attempt_outcome(s) for s in (301, 302, 400, 401, 403, 404, 410, 422)] == ["failed"] * 8


def test_back_off_doubles_up_to_the_cap_with_jitter() -> None:
    settings = WebhooksConfig(initial_backoff=5, max_backoff=60)
    assert [retry_delay(n, settings, lambda: 0.999999) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [5, 10, 20, 40, 60], rel=1e-5
    )
    assert retry_delay(1, settings, lambda: 0.0) == 2.5  # at most 50% jitter
    assert retry_delay(10_000, settings, lambda: 0.0) == 30.0  # no overflow


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = 1796083200.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    midnight = float(calendar.timegm((2026, 12, 1, 0, 0, 0)))
    assert parse_retry_after("Tue, 01 Dec 2026 00:02:00 GMT", midnight) == 120.0
    assert parse_retry_after("Tue, 01 Dec 2026 00:00:00 GMT", midnight + 100) == 0.0  # past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_delivery_status_sums_up_per_kind() -> None:
    base = {
        "attempts": 1,
        "last_status": 200,
        "last_error": None,
        "delivered_at": 1.0,
        "next_attempt_at": None,
    }
    rows = [
        {**base, "kind": "call_started", "status": "delivered"},
        {**base, "kind": "transcript", "status": "delivered"},
        {**base, "kind": "transcript", "status": "pending"},
        {**base, "kind": "call_ended", "status": "failed", "last_status": 404},
    ]
    summary = delivery_status(rows)
    assert summary["transcript"] == {"pending": 1, "delivered": 1, "failed": 0}
    assert summary["call_ended"]["status"] == "failed"
    assert summary["call_ended"]["last_status"] == 404
    assert summary["call_started"]["status"] == "delivered"


# --- configuration -----------------------------------------------------------------------------


def config_errors(server: dict[str, Any], agent: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        make_config(server, agent)
    return info.value.errors


def test_config_errors_name_the_key() -> None:
    errors = config_errors(
        {"call_ended": {"url": "ftp://example.com/x", "secret": "short"}},
        {"transcript": {"url": "https://user:pw@example.com/x", "secret": SECRET}},
    )
    assert any(e.startswith("server.webhooks.call_ended.url: must be an http") for e in errors)
    assert any(
        e.startswith("server.webhooks.call_ended.secret: must be at least 16 characters")
        for e in errors
    )
    assert any(e.startswith("agents[0].webhooks.transcript.url: must not hold") for e in errors)
    assert all("short" not in e and "pw@" not in e for e in errors)  # values not repeated
    errors = config_errors({}, {"call_started": {"url": "https://a.example/x"}})
    assert errors == ["agents[0].webhooks.call_started.secret: required"]
    errors = config_errors({"call_ended": {"url": "https://a.example/x", "secret": "a" * 20}})
    assert errors == [
        "server.webhooks.call_ended.secret: is one character repeated, which anyone can guess"
    ]
    errors = config_errors({"call_ended": {"url": "https://a.example/x y", "secret": SECRET}})
    assert errors == [
        "server.webhooks.call_ended.url: must not contain spaces or control characters"
        " (percent-encode them)"
    ]
    errors = config_errors({"initial_backoff": 10, "max_backoff": 5})
    assert errors == ["server.webhooks.initial_backoff: must be <= max_backoff (5)"]
    errors = config_errors({"call_ended": {"url": "https://a.example/x", "secret": SECRET, "x": 1}})
    assert errors == ["server.webhooks.call_ended.x: unknown key"]


def test_secrets_may_come_from_the_environment_and_the_agent_entry_wins() -> None:
    text = """
server:
  webhooks:
    call_ended:
      url: https://crm.example.com/hooks
      secret: "${HOOK_SECRET}"
    transcript:
      url: https://crm.example.com/turns
      secret: "${HOOK_SECRET}"
agents:
  - slug: support
    webhooks:
      transcript:
        url: https://support.example.com/turns
        secret: "${SUPPORT_HOOK_SECRET}"
  - slug: sales
"""
    env = {"HOOK_SECRET": SECRET, "SUPPORT_HOOK_SECRET": OTHER_SECRET}
    config = parse_config(text, env=env)
    support_turns = webhook_target(config, "support", "transcript")
    assert support_turns is not None and support_turns.secret == OTHER_SECRET
    assert support_turns.url == "https://support.example.com/turns"
    sales_turns = webhook_target(config, "sales", "transcript")
    assert sales_turns is not None and sales_turns.url == "https://crm.example.com/turns"
    ended = webhook_target(config, "support", "call_ended")
    assert ended is not None and ended.secret == SECRET
    assert webhook_target(config, "gone", "call_ended") == ended  # a removed agent: the server's
    assert webhook_target(config, "support", "call_started") is None
    assert SECRET not in repr(config)  # secrets stay out of reprs (and logs)
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={"HOOK_SECRET": "tooshort"})
    assert "server.webhooks.call_ended.secret: must be at least 16 characters, got 8" in (
        " ".join(info.value.errors)
    )


def test_the_console_masks_webhook_secrets_and_shows_their_urls() -> None:
    from sipserver.console.masking import MASK, shown

    raw = {
        "slug": "support",
        "webhooks": {
            "call_ended": {"url": "https://crm.example.com/hooks", "secret": SECRET},
            "transcript": {"url": "https://crm.example.com/turns", "secret": "${TURN_SECRET}"},
        },
    }
    view = shown("agent", raw)
    assert view["webhooks"]["call_ended"] == {
        "url": "https://crm.example.com/hooks",
        "secret": MASK,
    }
    assert view["webhooks"]["transcript"]["secret"] == {"from_env": "TURN_SECRET"}
    assert SECRET not in repr(view)


async def test_stop_is_not_lost_when_the_loop_wakes_at_that_moment(
    tmp_path: Path, senders: list[WebhookSender]
) -> None:
    # Python 3.11's asyncio.wait_for drops a cancel that arrives as its wait ends: a stop()
    # right after a delivery woke the loop then waited for ever (seen once in this file).
    sender, _ = new_sender(tmp_path, make_config(), senders)
    await sender.start()
    await asyncio.sleep(0.2)  # the loop is idle, waiting to be woken
    sender._wake.set()  # what a queued delivery or a finished attempt does
    await asyncio.sleep(0)
    await asyncio.wait_for(sender.stop(), 10)
