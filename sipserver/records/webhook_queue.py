"""The webhook sender's persistent queue: table ``webhook_deliveries`` in a SQLite file.

Every delivery (one POST of one payload to one URL, however many attempts it takes) is a row,
written when it is queued, so deliveries survive a restart: the next sender resumes the rows
left ``pending``. The file is shared with the call record store (``<data_dir>/records.db``);
this module owns only the tables and indexes named ``webhook_*`` and never sets the database's
``user_version``.

:class:`DeliveryQueue` is synchronous and not thread-safe: the sender calls it from one
dedicated thread only (it opens its connection on first use, on that thread), never on the
event loop. The database runs in WAL mode with ``synchronous=NORMAL`` (a committed row survives
the death of the process) and waits up to :data:`BUSY_TIMEOUT_MS` for the record store's
writers.

Row life: ``pending`` (``next_attempt_at`` says when) -> ``delivered`` (2xx; the body is then
dropped, the receiver has it) or ``failed`` (a 4xx answer, ``retry_for`` passed, queue full,
the webhook removed from the configuration; the body is kept for an operator to look at).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from sipserver.data_dir import make_private_dir, make_private_file, make_private_if_present

__all__ = ["BUSY_TIMEOUT_MS", "DeliveryQueue", "DueDelivery", "Outcome", "encode_body"]

BUSY_TIMEOUT_MS: Final = 5000
"""How long a statement waits for another connection's write lock (the record store's)."""

Outcome = Literal["delivered", "retry", "failed"]
"""What one attempt led to: done, another attempt later, or given up."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,              -- the delivery id: X-Sipserver-Delivery, same on retries
    record_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,               -- call_started | call_ended | transcript
    url TEXT NOT NULL,                -- resolved when queued; the secret is read at send time
    body BLOB,                        -- the JSON bytes posted (NULL once delivered)
    status TEXT NOT NULL,             -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,         -- wall clock, seconds since the epoch (all times)
    first_attempt_at REAL,
    last_attempt_at REAL,
    next_attempt_at REAL,             -- pending rows only
    last_status INTEGER,              -- HTTP status of the last answer (NULL: none)
    last_error TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_age
    ON webhook_deliveries (created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_record ON webhook_deliveries (record_id);
"""

_CHUNK: Final = 500
"""Record ids per statement of :meth:`DeliveryQueue.forget` (SQLite's variable limit)."""

_PUBLIC_COLUMNS: Final = (
    "id",
    "record_id",
    "agent",
    "kind",
    "url",
    "status",
    "attempts",
    "created_at",
    "first_attempt_at",
    "last_attempt_at",
    "next_attempt_at",
    "last_status",
    "last_error",
    "delivered_at",
)


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery whose next attempt is due."""

    id: str
    kind: str
    agent: str
    record_id: str
    url: str
    body: bytes
    attempts: int
    """Attempts made so far."""
    first_attempt_at: float | None
    """When the first attempt was made (``retry_for`` counts from it); None: not yet."""


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The compact UTF-8 JSON of ``payload``; a NaN or infinite number becomes ``null`` (JSON
    has neither, and receivers' parsers refuse them)."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(
            _finite(payload), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _not_in(column: str, values: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """`` AND column NOT IN (?, ...)`` and its parameters ('' for no values)."""
    if not values:
        return "", ()
    return f" AND {column} NOT IN ({', '.join('?' * len(values))})", tuple(values)


class DeliveryQueue:
    """The ``webhook_deliveries`` table (module doc); call it from one thread only.

    Args:
        path: the database file (``<data_dir>/records.db``); its directory is created 0700 and
            the file 0600. ``":memory:"``: a private in-memory database (tests).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self.pending = 0
        """Rows ``pending`` now (kept in step with every write of this queue)."""

    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and the schema created) on first use."""
        if self._conn is not None:
            return self._conn
        if self._path != ":memory:":
            make_private_dir(Path(self._path).parent, key="server.data_dir")
            make_private_file(self._path)
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if self._path != ":memory:":
            make_private_if_present(f"{self._path}-wal", f"{self._path}-shm")
        self._conn, self.pending = conn, int(count)
        return conn

    def open(self) -> int:
        """Open the database (if not yet) and return the number of pending deliveries."""
        self._db()
        return self.pending

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def insert(
        self,
        *,
        delivery_id: str,
        kind: str,
        agent: str,
        record_id: str,
        url: str,
        payload: Mapping[str, Any],
        now: float,
        max_pending: int,
        in_flight: Collection[str] = (),
    ) -> list[str]:
        """Queue one delivery, due at once; then, past ``max_pending`` pending rows, mark the
        oldest pending ones (except those in flight) ``failed`` (queue full).

        Returns:
            The kinds of the deliveries dropped for room (empty: none).
        """
        body = encode_body(payload)
        db = self._db()
        with db:
            db.execute(
                "INSERT INTO webhook_deliveries (id, record_id, agent, kind, url, body, status,"
                " attempts, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending',"
                " 0, ?, ?)",
                (delivery_id, record_id, agent, kind, url, body, now, now),
            )
            self.pending += 1
            excess = self.pending - max_pending
            if excess <= 0:
                return []
            clause, params = _not_in("id", in_flight)
            oldest = db.execute(
                "SELECT id, kind FROM webhook_deliveries WHERE status = 'pending'"
                f"{clause} ORDER BY created_at, rowid LIMIT ?",
                (*params, excess),
            ).fetchall()
            error = (
                f"queue full: more than {max_pending} deliveries were waiting"
                " (server.webhooks.max_pending); the oldest were dropped unsent"
            )
            db.executemany(
                "UPDATE webhook_deliveries SET status = 'failed', last_error = ?,"
                " next_attempt_at = NULL WHERE id = ? AND status = 'pending'",
                [(error, row_id) for row_id, _ in oldest],
            )
            self.pending -= len(oldest)
        return [kind for _, kind in oldest]

    def due(
        self,
        now: float,
        limit: int,
        *,
        skip_ids: Collection[str] = (),
        skip_urls: Collection[str] = (),
    ) -> tuple[list[DueDelivery], float | None]:
        """The pending deliveries due at ``now`` (at most ``limit``, earliest first), leaving
        out ``skip_ids`` (in flight) and ``skip_urls`` (at their concurrency limit).

        Returns:
            The due deliveries, and the earliest ``next_attempt_at`` of the other pending rows
            outside the skipped ones (None: there are none): when to look again.
        """
        db = self._db()
        ids_clause, id_params = _not_in("id", skip_ids)
        urls_clause, url_params = _not_in("url", skip_urls)
        rows = []
        if limit > 0:
            rows = db.execute(
                "SELECT id, kind, agent, record_id, url, body, attempts, first_attempt_at"
                " FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
                f"{ids_clause}{urls_clause} ORDER BY next_attempt_at, rowid LIMIT ?",
                (now, *id_params, *url_params, limit),
            ).fetchall()
        due = [
            DueDelivery(r[0], r[1], r[2], r[3], r[4], bytes(r[5] or b""), r[6], r[7]) for r in rows
        ]
        later_clause, later_params = _not_in("id", [*skip_ids, *(d.id for d in due)])
        (next_at,) = db.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'"
            f"{later_clause}{urls_clause}",
            (*later_params, *url_params),
        ).fetchone()
        return due, next_at

    def record_attempt(
        self,
        delivery_id: str,
        outcome: Outcome,
        *,
        attempts: int,
        now: float,
        last_status: int | None,
        last_error: str | None,
        next_attempt_at: float | None = None,
    ) -> bool:
        """Write what an attempt led to (``next_attempt_at``: when to retry, for ``retry``).

        Returns:
            False when the row was no longer pending (dropped meanwhile: queue full, forgotten);
            nothing was changed then.
        """
        status = "pending" if outcome == "retry" else outcome
        db = self._db()
        with db:
            changed = db.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_status = ?,"
                " last_error = ?, last_attempt_at = ?,"
                " first_attempt_at = COALESCE(first_attempt_at, ?), next_attempt_at = ?,"
                " delivered_at = ?, body = CASE WHEN ? THEN NULL ELSE body END"
                " WHERE id = ? AND status = 'pending'",
                (
                    status,
                    attempts,
                    last_status,
                    last_error,
                    now,
                    now,
                    next_attempt_at if outcome == "retry" else None,
                    now if outcome == "delivered" else None,
                    outcome == "delivered",
                    delivery_id,
                ),
            ).rowcount
        if changed and outcome != "retry":
            self.pending -= 1
        return bool(changed)

    def deliveries(self, record_id: str) -> list[dict[str, Any]]:
        """Every delivery of one record, oldest first, as dictionaries of
        :data:`_PUBLIC_COLUMNS` (the body left out)."""
        rows = (
            self._db()
            .execute(
                f"SELECT {', '.join(_PUBLIC_COLUMNS)} FROM webhook_deliveries"
                " WHERE record_id = ? ORDER BY created_at, rowid",
                (record_id,),
            )
            .fetchall()
        )
        return [dict(zip(_PUBLIC_COLUMNS, row, strict=True)) for row in rows]

    def forget(self, record_ids: Collection[str]) -> int:
        """Delete the deliveries of these records, pending ones included (the records are
        gone: retention, an operator's delete). Returns the rows deleted."""
        ids = list(record_ids)
        db = self._db()
        deleted = 0
        with db:
            for start in range(0, len(ids), _CHUNK):
                chunk = tuple(ids[start : start + _CHUNK])
                marks = ", ".join("?" * len(chunk))
                (pending,) = db.execute(
                    "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"
                    f" AND record_id IN ({marks})",
                    chunk,
                ).fetchone()
                deleted += db.execute(
                    f"DELETE FROM webhook_deliveries WHERE record_id IN ({marks})", chunk
                ).rowcount
                self.pending -= int(pending)
        return deleted
