"""Webhooks: a call's record POSTed, signed, to the operator's URL, from a persistent queue.

Three kinds (:data:`WEBHOOK_KINDS`), each configured per agent (``agents[].webhooks``) or
server-wide (``server.webhooks``; an agent's own entry for a kind replaces it):
``call_started`` (a call was answered), ``transcript`` (a turn of a call) and ``call_ended``
(the final record, :meth:`sipserver.pipeline.call_record.CallRecord.to_json`).

Every request is signed so the receiver knows it comes from this server and is not a replay::

    X-Sipserver-Timestamp: 1796083200
    X-Sipserver-Signature: sha256=<hex HMAC-SHA256(secret, b"1796083200." + body)>
    X-Sipserver-Event: call_ended
    X-Sipserver-Delivery: 5f0c...   (the same on every retry: the receiver's idempotency key)

The timestamp is inside the MAC, so a captured request replayed later (with its old
timestamp) is refused by :func:`verify`'s tolerance, and one with a new timestamp has a wrong
signature. Receivers call :func:`verify` (or do the same in their language: docs/records.md).

:class:`WebhookSender` keeps the deliveries in SQLite (:mod:`sipserver.records.webhook_queue`),
posts the due ones with aiohttp and retries failures with exponential back-off and jitter for
``server.webhooks.retry_for`` after the first attempt (:func:`retry_delay`,
:func:`attempt_outcome`). Every setting is read from the live configuration at each attempt,
so a reload applies at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import functools
import hashlib
import hmac
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, Literal, TypeVar

import aiohttp

from sipserver.config import Config, WebhooksConfig, WebhookTarget
from sipserver.observability import Metrics, get_logger
from sipserver.records.webhook_queue import DeliveryQueue, DueDelivery, Outcome
from sipserver.tasks import cancel_and_wait

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WEBHOOK_KINDS",
    "WebhookKind",
    "WebhookSender",
    "attempt_outcome",
    "delivery_status",
    "parse_retry_after",
    "retry_delay",
    "sign",
    "verify",
    "webhook_target",
]

log = get_logger("sipserver.records.webhooks")

WebhookKind = Literal["call_started", "call_ended", "transcript"]
WEBHOOK_KINDS: Final[tuple[str, ...]] = ("call_started", "call_ended", "transcript")
"""The kinds of webhook (the ``X-Sipserver-Event`` header)."""

SIGNATURE_HEADER: Final = "X-Sipserver-Signature"
TIMESTAMP_HEADER: Final = "X-Sipserver-Timestamp"
EVENT_HEADER: Final = "X-Sipserver-Event"
DELIVERY_HEADER: Final = "X-Sipserver-Delivery"

DEFAULT_TOLERANCE: Final = 300.0
"""Seconds a signed timestamp may differ from the receiver's clock (either way)."""
MAX_QUEUING: Final = 10_000
"""Deliveries handed to the database thread and not yet written; more are dropped and counted
(``queue_full``): the database is that far behind."""
_IDLE_POLL: Final = 60.0
"""Seconds the delivery loop sleeps at most when nothing is due (a safety net: every change
that makes a delivery due wakes it)."""
_CRASH_PAUSE: Final = 5.0
"""Seconds a delivery whose attempt failed unexpectedly (its outcome could not be written)
waits before it may be tried again."""
_ERROR_TEXT: Final = 300
"""Characters of an error or answer body kept in ``last_error``."""
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

_T = TypeVar("_T")


# --- signing -----------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Sipserver-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 under
    ``secret`` (UTF-8) of ``b"<timestamp>." + body``."""
    message = str(int(timestamp)).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Whether a request is a genuine, fresh webhook of this server.

    Args:
        secret: the webhook's secret.
        body: the request body exactly as received (bytes, before any JSON parsing).
        timestamp_header: ``X-Sipserver-Timestamp`` (None: missing).
        signature_header: ``X-Sipserver-Signature`` (None: missing).
        now: the receiver's clock, seconds since the epoch (``time.time()``).
        tolerance: seconds the timestamp may be off ``now``, either way.

    Returns:
        True when the timestamp is within ``tolerance`` of ``now`` and the signature is the
        HMAC of that timestamp and body (compared in constant time).
    """
    if timestamp_header is None or signature_header is None:
        return False
    stamp = timestamp_header.strip()
    if not _TIMESTAMP.fullmatch(stamp) or abs(now - int(stamp)) > tolerance:
        return False
    expected = sign(secret, body, int(stamp)).encode()
    return hmac.compare_digest(expected, signature_header.strip().encode())


# --- configuration and policy ------------------------------------------------------------------


def webhook_target(config: Config, agent: str, kind: str) -> WebhookTarget | None:
    """Where a ``kind`` webhook of ``agent``'s calls goes: the agent's own entry, else
    ``server.webhooks``' (an agent no longer configured: the server's); None: nowhere.

    Raises:
        ValueError: ``kind`` is not one of :data:`WEBHOOK_KINDS`.
    """
    if kind not in WEBHOOK_KINDS:
        raise ValueError(f"unknown webhook kind {kind!r}; expected one of {WEBHOOK_KINDS}")
    own = config.agent_by_slug(agent)
    target: WebhookTarget | None = getattr(own.webhooks, kind) if own is not None else None
    if target is not None:
        return target
    server: WebhookTarget | None = getattr(config.server.webhooks, kind)
    return server


def attempt_outcome(status: int | None) -> Outcome:
    """What an answer means: 2xx ``delivered``; no answer (network error, timeout), 408, 429 and
    5xx ``retry``; anything else (3xx: redirects are not followed; other 4xx) ``failed``."""
    if status is None or status in (408, 429) or status >= 500:
        return "retry"
    return "delivered" if 200 <= status < 300 else "failed"


def retry_delay(attempts: int, settings: WebhooksConfig, rng: Callable[[], float]) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``initial_backoff`` doubled per
    attempt, at most ``max_backoff``, times a random factor in [0.5, 1] (``rng()`` in [0, 1)),
    so receivers that failed together are not retried together."""
    base = settings.initial_backoff * 2.0 ** min(max(attempts - 1, 0), 60)
    return min(base, settings.max_backoff) * (0.5 + 0.5 * rng())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (delay-seconds or an HTTP-date,
    RFC 9110 §10.2.3); None: absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def delivery_status(deliveries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A record's deliveries (:meth:`WebhookSender.deliveries`) summed up per kind, for
    :attr:`CallRecord.webhook_status <sipserver.pipeline.call_record.CallRecord.webhook_status>`
    and the call page: ``call_started``/``call_ended`` give their latest delivery's ``status``,
    ``attempts``, ``last_status``, ``last_error``, ``delivered_at``, ``next_attempt_at``;
    ``transcript`` (one delivery per turn) gives the number of deliveries per status."""
    summary: dict[str, Any] = {}
    for row in deliveries:
        kind = str(row["kind"])
        if kind == "transcript":
            counts = summary.setdefault(kind, {"pending": 0, "delivered": 0, "failed": 0})
            counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
            continue
        keys = ("status", "attempts", "last_status", "last_error", "delivered_at")
        summary[kind] = {key: row[key] for key in (*keys, "next_attempt_at")}
    return summary


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT else text[: _ERROR_TEXT - 3] + "..."


# --- the sender --------------------------------------------------------------------------------


class WebhookSender:
    """Delivers queued webhooks: persistent, retried, with per-URL and global concurrency caps.

    :meth:`enqueue` writes a delivery to the queue (on the database thread) and returns at
    once; a delivery loop started by :meth:`start` posts due deliveries, at most
    ``max_concurrent_per_url`` at once to one URL and ``max_concurrent`` in all (a delivery
    is only taken from the queue when its URL has room, so nothing waits in memory), and
    writes each attempt's outcome back. Deliveries left pending by an earlier run (a restart
    between attempts, a crash) are resumed by :meth:`start`.

    One sender per database file. Every SQLite call runs on one dedicated thread.

    Args:
        db_path: the database file (``<data_dir>/records.db``, shared with the record store:
            this sender owns the ``webhook_*`` tables) or ``":memory:"``.
        config: returns the configuration in force (reloads apply at the next attempt).
        metrics: ``sipserver_webhook_deliveries_total`` and ``sipserver_webhook_queue_depth``.
        rng: uniform random numbers in [0, 1) for the back-off jitter.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        config: Callable[[], Config],
        metrics: Metrics,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._queue = DeliveryQueue(db_path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-db")
        self._config = config
        self._metrics = metrics
        self._rng = rng
        self._state: Literal["new", "running", "stopped"] = "new"
        self._wake = asyncio.Event()
        self._in_flight: dict[str, str] = {}
        """Delivery id -> URL of the attempts under way."""
        self._attempts: set[asyncio.Task[None]] = set()
        self._queuing = 0
        """Inserts handed to the database thread, not yet written."""
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def _db(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the queue, resume what an earlier run left pending and start delivering.

        Raises:
            RuntimeError: started before.
            sqlite3.Error, OSError: the database cannot be opened.
        """
        if self._state != "new":
            raise RuntimeError("a WebhookSender starts once")
        pending = await self._db(self._queue.open)
        self._metrics.webhook_queue_depth.set(pending)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # the sender's own caps apply
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "sipserver-webhooks"},
        )
        self._state = "running"
        self._loop_task = asyncio.create_task(self._deliver_loop(), name="webhook-sender")
        if pending:
            log.info("webhooks_resumed", pending=pending)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering: attempts under way get up to ``timeout`` seconds to finish (one
        cut short stays pending and is sent again by the next run, with the same delivery id),
        queued writes are finished, the database is closed. Idempotent."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task)
        if self._attempts:
            await asyncio.wait(set(self._attempts), timeout=timeout)
        for task in list(self._attempts):
            await cancel_and_wait(task)
        if self._session is not None:
            await self._session.close()
        await self._db(self._queue.close)  # after every write queued before it (one thread)
        self._executor.shutdown(wait=False)

    # --- queueing ------------------------------------------------------------------------------

    def enqueue(
        self, kind: str, agent: str, record_id: str, payload: Mapping[str, Any]
    ) -> str | None:
        """Queue a webhook of ``agent``'s call ``record_id``; returns at once (call it on the
        event loop). The URL is resolved now (:func:`webhook_target`); the secret at send time.

        ``payload`` is encoded to JSON on the database thread: pass a mapping nobody changes
        afterwards (``CallRecord.to_json()`` builds a new one each time).

        Returns:
            The delivery id (``X-Sipserver-Delivery``); None when ``kind`` has no URL for this
            agent (nothing queued), or when the sender was stopped or its queue is too far
            behind (logged and counted as ``queue_full``).

        Raises:
            ValueError: ``kind`` is not one of :data:`WEBHOOK_KINDS`.
        """
        config = self._config()
        target = webhook_target(config, agent, kind)
        if target is None:
            return None
        if self._state == "stopped" or self._queuing >= MAX_QUEUING:
            why = "sender stopped" if self._state == "stopped" else "database behind"
            log.warning("webhook_dropped", kind=kind, agent=agent, record=record_id, reason=why)
            self._metrics.webhook_deliveries.labels(kind, "queue_full").inc()
            return None
        delivery_id = uuid.uuid4().hex
        self._queuing += 1
        future: Future[list[str]] = self._executor.submit(
            self._queue.insert,
            delivery_id=delivery_id,
            kind=kind,
            agent=agent,
            record_id=record_id,
            url=target.url,
            payload=payload,
            now=time.time(),
            max_pending=config.server.webhooks.max_pending,
            in_flight=frozenset(self._in_flight),
        )
        loop = asyncio.get_running_loop()

        def written(done: Future[list[str]]) -> None:  # on the database thread
            with contextlib.suppress(RuntimeError):  # the loop closed without stop()
                loop.call_soon_threadsafe(self._queued, done, kind, record_id)

        future.add_done_callback(written)
        return delivery_id

    def _queued(self, future: Future[list[str]], kind: str, record_id: str) -> None:
        """Loop thread: an insert finished (or failed)."""
        self._queuing -= 1
        error = future.exception()
        if error is not None:
            log.error("webhook_queue_failed", kind=kind, record=record_id, error=repr(error))
            self._metrics.webhook_deliveries.labels(kind, "failed").inc()
            return
        dropped = future.result()
        for dropped_kind in dropped:
            self._metrics.webhook_deliveries.labels(dropped_kind, "queue_full").inc()
        if dropped:
            log.warning("webhooks_queue_full", dropped=len(dropped))
        self._metrics.webhook_queue_depth.set(self._queue.pending)
        self._wake.set()

    async def deliveries(self, record_id: str) -> list[dict[str, Any]]:
        """Every delivery of one record, oldest first: ``id``, ``record_id``, ``agent``,
        ``kind``, ``url``, ``status`` (pending, delivered, failed), ``attempts``,
        ``created_at``, ``first_attempt_at``, ``last_attempt_at``, ``next_attempt_at``,
        ``last_status`` (HTTP), ``last_error``, ``delivered_at`` (times: seconds since the
        epoch). :func:`delivery_status` sums them up per kind."""
        return await self._db(self._queue.deliveries, record_id)

    async def forget(self, record_ids: Collection[str]) -> int:
        """Delete the deliveries of records that are gone (retention, an operator's delete),
        pending ones included; returns how many rows went."""
        deleted = await self._db(self._queue.forget, list(record_ids))
        self._metrics.webhook_queue_depth.set(self._queue.pending)
        return deleted

    # --- delivering ----------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        """Start the attempts that are due and have room; sleep until the next is due or
        something changes (a delivery queued, an attempt over)."""
        while True:
            self._wake.clear()
            settings = self._config().server.webhooks
            per_url = collections.Counter(self._in_flight.values())
            full = {url for url, n in per_url.items() if n >= settings.max_concurrent_per_url}
            room = settings.max_concurrent - len(self._in_flight)
            try:
                due, next_at = await self._db(
                    self._queue.due,
                    time.time(),
                    room,
                    skip_ids=tuple(self._in_flight),
                    skip_urls=tuple(full),
                )
            except Exception as exc:  # a locked or broken database: try again shortly
                log.error("webhooks_queue_unreadable", error=repr(exc))
                await asyncio.sleep(5.0)
                continue
            skipped = False
            for delivery in due:
                if per_url[delivery.url] >= settings.max_concurrent_per_url:
                    skipped = True  # its URL filled up in this batch: asked again without it
                    continue
                per_url[delivery.url] += 1
                self._in_flight[delivery.id] = delivery.url
                task = asyncio.create_task(self._attempt(delivery), name="webhook-attempt")
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            if skipped and len(self._in_flight) < settings.max_concurrent:
                continue
            if len(self._in_flight) >= settings.max_concurrent or next_at is None:
                wait = _IDLE_POLL  # an attempt ending or a new delivery wakes the loop
            else:
                wait = min(_IDLE_POLL, max(0.0, next_at - time.time()))
            if wait > 0:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancel
                # that arrives as the wait ends, and stop() would then wait for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _attempt(self, delivery: DueDelivery) -> None:
        """One POST of a delivery, and its outcome written back."""
        try:
            settings = self._config().server.webhooks
            target = webhook_target(self._config(), delivery.agent, delivery.kind)
            now = time.time()
            status: int | None = None
            retry_after: float | None = None
            if target is None:
                outcome: Outcome = "failed"
                error: str | None = (
                    f"no {delivery.kind} webhook is configured for agent {delivery.agent!r}"
                    " any more (agents[].webhooks, server.webhooks): not sent"
                )
            else:
                status, error, retry_after = await self._post(delivery, target, settings, now)
                outcome = attempt_outcome(status)
            attempts = delivery.attempts + (target is not None)
            first = delivery.first_attempt_at if delivery.first_attempt_at is not None else now
            next_at: float | None = None
            if outcome == "retry":
                # A Retry-After is honoured as a minimum: never sooner than the back-off.
                delay = max(retry_after or 0.0, retry_delay(attempts, settings, self._rng))
                done = time.time()
                if done + delay > first + settings.retry_for:
                    outcome = "failed"
                    error = (
                        f"gave up after {attempts} attempts in {done - first:.0f} s"
                        f" (server.webhooks.retry_for: {settings.retry_for:g} s); last: {error}"
                    )
                else:
                    next_at = done + delay
            kept = await self._db(
                self._queue.record_attempt,
                delivery.id,
                outcome,
                attempts=attempts,
                now=time.time(),
                last_status=status,
                last_error=error,
                next_attempt_at=next_at,
            )
            if kept:
                self._metrics.webhook_deliveries.labels(delivery.kind, outcome).inc()
                self._metrics.webhook_queue_depth.set(self._queue.pending)
                if outcome == "failed":
                    log.warning(
                        "webhook_failed",
                        kind=delivery.kind,
                        agent=delivery.agent,
                        record=delivery.record_id,
                        delivery=delivery.id,
                        attempts=attempts,
                        error=error,
                    )
        except Exception as exc:  # never let one delivery end the sender; it stays pending
            log.error("webhook_attempt_crashed", delivery=delivery.id, error=repr(exc))
            # Held "in flight" a while: a database that cannot record outcomes must not turn
            # into a stream of repeated POSTs.
            await asyncio.sleep(_CRASH_PAUSE)
        finally:
            self._in_flight.pop(delivery.id, None)
            self._wake.set()

    async def _post(
        self,
        delivery: DueDelivery,
        target: WebhookTarget,
        settings: WebhooksConfig,
        now: float,
    ) -> tuple[int | None, str | None, float | None]:
        """POST the delivery signed with ``target``'s secret.

        Returns:
            The HTTP status (None: no answer), the error for ``last_error`` (None: 2xx) and
            the answer's ``Retry-After`` in seconds (None: not given).
        """
        assert self._session is not None
        stamp = int(now)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(target.secret, delivery.body, stamp),
            EVENT_HEADER: delivery.kind,
            DELIVERY_HEADER: delivery.id,
        }
        try:
            async with self._session.post(
                delivery.url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return status, None, None
                answer = await response.content.read(_ERROR_TEXT)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        except TimeoutError:
            return None, f"no answer within {settings.timeout:g} s (server.webhooks.timeout)", None
        except Exception as exc:  # aiohttp.ClientError, OSError, an URL aiohttp refuses...
            return None, _short(f"{type(exc).__name__}: {exc}"), None
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        text = answer.decode("utf-8", "replace")
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            reason += f" to {where}: redirects are not followed, configure the final URL"
        elif attempt_outcome(status) == "failed":
            reason += " (a 4xx answer is not retried)"
        return status, _short(f"{reason}: {text}" if text.strip() else reason), retry_after
