"""The SQLite store of call records: one row per call, its events in order, writes batched in a
thread.

Writes (:meth:`RecordStore.save`, :meth:`RecordStore.append`) never block the caller: they go
into a bounded queue that one writer thread commits in a single transaction every
``flush_interval`` (0.5 s by default), so a crash loses at most that much. When the queue is full
(the disk stalls), a write is dropped and counted (``sipserver_records_dropped_writes_total``)
instead of holding up a call. Reads (:meth:`RecordStore.get`, :meth:`RecordStore.search`...)
block: the asyncio side calls them in a thread (``asyncio.to_thread``).

Text search is a case-insensitive ``LIKE`` over a column that holds the call's transcript lines:
records are bounded by retention and size, so a scan of that column is cheap enough for an
operator's search box (measured in bench/README.md, "Call records"); FTS5 would add a second copy
of the text and triggers for no visible gain at this size.

The database is ``<data_dir>/records.db`` in WAL mode, shared by the main process (which writes)
and the webhook sender's table (:mod:`sipserver.records.webhooks`).
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from sipserver.data_dir import make_private_dir, make_private_if_present
from sipserver.observability import get_logger
from sipserver.pipeline.call_record import (
    CallRecord,
    MediaQuality,
    RecordEvent,
    RecordingInfo,
)

__all__ = ["RecordPage", "RecordStore"]

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    ingress TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT '',
    called TEXT NOT NULL DEFAULT '',
    sip_call_id TEXT,
    call_sid TEXT,
    started_at REAL NOT NULL,
    answered_at REAL,
    ended_at REAL,
    end_reason TEXT,
    ended_by TEXT,
    codec TEXT,
    media TEXT NOT NULL DEFAULT '{}',
    recording TEXT,
    webhooks TEXT NOT NULL DEFAULT '{}',
    transcript TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at, id);
CREATE INDEX IF NOT EXISTS calls_agent_started ON calls (agent, started_at, id);
CREATE TABLE IF NOT EXISTS call_events (
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    t REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "id, agent, ingress, caller, called, sip_call_id, call_sid, started_at, answered_at, "
    "ended_at, end_reason, ended_by, codec, media, recording, webhooks"
)

#: Writes waiting for the writer thread; past it a write is dropped and counted.
MAX_PENDING_WRITES = 50_000

#: Most events kept per call: a call that produces more (a runaway session) keeps its first ones
#: and the rest are counted as dropped.
MAX_EVENTS_PER_CALL = 20_000


@dataclass(frozen=True, slots=True)
class RecordPage:
    """One page of :meth:`RecordStore.search`."""

    records: list[CallRecord]
    """Newest first, without their events."""
    cursor: str | None
    """Pass it back for the next page; None: this is the last one."""


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class RecordStore:
    """Call records in SQLite (module doc).

    Args:
        path: the database file (created 0600 with its directory 0700).
        flush_interval: seconds between two batched commits.
        registry: where the store's counters are registered (None: not exported).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.5,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._queue: queue.Queue[tuple[Any, ...] | _Flush | None] = queue.Queue(MAX_PENDING_WRITES)
        self._thread: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._event_counts: dict[str, int] = {}
        self._urgent = threading.Event()
        self.dropped_writes = Counter(
            "sipserver_records_dropped_writes_total",
            "Record writes dropped because the writer queue was full (a stalled disk)",
            registry=registry,
        )
        self.dropped_events = Counter(
            "sipserver_records_dropped_events_total",
            "Call events dropped past the per-call cap",
            registry=registry,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Create the schema and start the writer thread (blocking: a few milliseconds)."""
        make_private_dir(self.path.parent, key="server.data_dir")
        conn = self._connect()
        conn.executescript(_SCHEMA)
        conn.commit()
        make_private_if_present(self.path)
        self._reader = conn
        self._thread = threading.Thread(target=self._write_loop, name="records-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close the database (blocking)."""
        if self._thread is not None:
            self._queue.put(None)
            self._urgent.set()
            self._thread.join(timeout)
            self._thread = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every write queued before this call is committed (blocking: tests, stop).

        Returns:
            False: the writer did not get there within ``timeout``.
        """
        if self._thread is None:
            return True
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        self._urgent.set()
        return marker.done.wait(timeout)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    # -- writes (any thread, never blocking) ------------------------------------------------

    def save(self, record: CallRecord) -> None:
        """Insert or update the record's row (everything but its events, which are
        :meth:`append` ed)."""
        self._put(("save", _row(record)))

    def append(self, record_id: str, events: Sequence[RecordEvent]) -> None:
        """Add events to a record (after the ones already there), in order."""
        if not events:
            return
        seen = self._event_counts.get(record_id, 0)
        room = MAX_EVENTS_PER_CALL - seen
        if room <= 0:
            self.dropped_events.inc(len(events))
            return
        if len(events) > room:
            self.dropped_events.inc(len(events) - room)
            events = events[:room]
        self._event_counts[record_id] = seen + len(events)
        rows = [
            (record_id, seen + i, e.type, e.offset, json.dumps(dict(e.data), ensure_ascii=False))
            for i, e in enumerate(events)
        ]
        text = "".join(str(e.data.get("text", "")) + "\n" for e in events if e.type == "transcript")
        self._put(("append", record_id, rows, text))

    def finished(self, record_id: str) -> None:
        """The record will get no more events (forgets its event count)."""
        self._event_counts.pop(record_id, None)

    def _put(self, op: tuple[Any, ...]) -> None:
        if self._thread is None:
            raise RuntimeError("the record store is not open")
        try:
            self._queue.put_nowait(op)
            if self._queue.qsize() > MAX_PENDING_WRITES // 2:
                self._urgent.set()
        except queue.Full:
            self.dropped_writes.inc()
            log.warning("records_write_dropped", op=op[0], reason="writer queue full")

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                batch = [first]
                if first is not None and not isinstance(first, _Flush):
                    # Sleep through the interval instead of taking each write as it comes:
                    # every wake-up of this thread takes the GIL from the event loop (measured:
                    # the SIP edge's INVITE -> 200 tail); a flush, a stop or a half-full queue
                    # wakes it early.
                    self._urgent.wait(self.flush_interval)
                self._urgent.clear()
                # Take what is queued now, without waiting.
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(
        self, conn: sqlite3.Connection, batch: list[tuple[Any, ...] | _Flush | None]
    ) -> bool:
        stop = False
        markers: list[_Flush] = []
        try:
            with conn:
                for op in batch:
                    if op is None:
                        stop = True
                    elif isinstance(op, _Flush):
                        markers.append(op)
                    elif op[0] == "save":
                        conn.execute(_UPSERT, op[1])
                    elif op[0] == "append":
                        _, record_id, rows, text = op
                        conn.executemany(
                            "INSERT OR REPLACE INTO call_events VALUES (?, ?, ?, ?, ?)", rows
                        )
                        if text:
                            conn.execute(
                                "UPDATE calls SET transcript = transcript || ? WHERE id = ?",
                                (text, record_id),
                            )
        except sqlite3.Error:
            log.exception("records_write_failed", writes=len(batch))
        for marker in markers:
            marker.done.set()
        return stop

    # -- reads (blocking: call in a thread) -------------------------------------------------

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._reader is None:
                raise RuntimeError("the record store is not open")
            return self._reader.execute(sql, args).fetchall()

    def get(self, record_id: str) -> CallRecord | None:
        """The record with its events; None when there is none of that id."""
        rows = self._read(f"SELECT {_COLUMNS} FROM calls WHERE id = ?", (record_id,))
        if not rows:
            return None
        record = _record(rows[0])
        events = self._read(
            "SELECT type, t, data FROM call_events WHERE call_id = ? ORDER BY seq",
            (record_id,),
        )
        record.events = [RecordEvent(t, o, json.loads(d)) for t, o, d in events]
        record.events.sort(key=lambda e: e.offset)
        return record

    def search(
        self,
        *,
        agents: Collection[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RecordPage:
        """Records newest first, without events.

        Args:
            agents: only these agents' calls (None: every agent; empty: none).
            since: started at or after (epoch seconds).
            until: started before.
            text: case-insensitive substring of the transcript.
            limit: rows per page (1-500).
            cursor: the previous page's :attr:`RecordPage.cursor`.

        Raises:
            ValueError: a malformed cursor.
        """
        if agents is not None and not agents:
            return RecordPage([], None)
        where: list[str] = []
        args: list[Any] = []
        if agents is not None:
            where.append(f"agent IN ({', '.join('?' * len(agents))})")
            args.extend(agents)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if until is not None:
            where.append("started_at < ?")
            args.append(until)
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("transcript LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if cursor:
            started, _, last_id = cursor.partition(":")
            try:
                started_at = float(started)
            except ValueError:
                raise ValueError(f"malformed cursor {cursor!r}") from None
            where.append("(started_at < ? OR (started_at = ? AND id < ?))")
            args.extend([started_at, started_at, last_id])
        limit = max(1, min(500, limit))
        sql = f"SELECT {_COLUMNS} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id DESC LIMIT ?"
        rows = self._read(sql, [*args, limit + 1])
        records = [_record(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = records[-1] if records else None
        next_cursor = f"{last.started_at!r}:{last.id}" if more and last is not None else None
        return RecordPage(records, next_cursor)

    def delete(self, record_id: str) -> CallRecord | None:
        """Delete a record and its events (blocking: waits for queued writes first, so a
        record still being written is not recreated). The caller deletes its recording file.

        Returns:
            The deleted record (without events); None when there was none.
        """
        self.flush()
        rows = self._read(f"SELECT {_COLUMNS} FROM calls WHERE id = ?", (record_id,))
        if not rows:
            return None
        with self._read_lock:
            assert self._reader is not None
            with self._reader:
                self._reader.execute("DELETE FROM call_events WHERE call_id = ?", (record_id,))
                self._reader.execute("DELETE FROM calls WHERE id = ?", (record_id,))
        self._event_counts.pop(record_id, None)
        return _record(rows[0])

    def oldest(self, *, before: float | None = None, limit: int = 100) -> list[CallRecord]:
        """The oldest records (without events), started before ``before`` when given."""
        sql = f"SELECT {_COLUMNS} FROM calls"
        args: list[Any] = []
        if before is not None:
            sql += " WHERE started_at < ?"
            args.append(before)
        sql += " ORDER BY started_at, id LIMIT ?"
        return [_record(r) for r in self._read(sql, [*args, limit])]

    def turn_latencies(self, agent: str, since: float) -> list[float]:
        """Voice-to-voice times (ms) of an agent's turns in calls started since ``since``."""
        rows = self._read(
            "SELECT e.data FROM call_events e JOIN calls c ON c.id = e.call_id "
            "WHERE c.agent = ? AND c.started_at >= ? AND e.type = 'turn'",
            (agent, since),
        )
        out: list[float] = []
        for (data,) in rows:
            value = json.loads(data).get("voice_to_voice")
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append(float(value))
        return out


_UPSERT = (
    f"INSERT INTO calls ({_COLUMNS}) VALUES ({', '.join('?' * 16)}) "
    "ON CONFLICT (id) DO UPDATE SET agent = excluded.agent, ingress = excluded.ingress, "
    "caller = excluded.caller, called = excluded.called, sip_call_id = excluded.sip_call_id, "
    "call_sid = excluded.call_sid, started_at = excluded.started_at, "
    "answered_at = excluded.answered_at, ended_at = excluded.ended_at, "
    "end_reason = excluded.end_reason, ended_by = excluded.ended_by, codec = excluded.codec, "
    "media = excluded.media, recording = excluded.recording, webhooks = excluded.webhooks"
)


def _row(record: CallRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.agent,
        record.ingress,
        record.caller,
        record.called,
        record.sip_call_id,
        record.call_sid,
        record.started_at,
        record.answered_at,
        record.ended_at,
        record.end_reason,
        record.ended_by,
        record.codec,
        json.dumps(record.media.to_json()),
        None if record.recording is None else json.dumps(record.recording.to_json()),
        json.dumps(record.webhook_status),
    )


def _record(row: Sequence[Any]) -> CallRecord:
    recording = row[14]
    return CallRecord(
        id=row[0],
        agent=row[1],
        ingress=row[2],
        caller=row[3],
        called=row[4],
        sip_call_id=row[5],
        call_sid=row[6],
        started_at=row[7],
        answered_at=row[8],
        ended_at=row[9],
        end_reason=row[10],
        ended_by=row[11],
        codec=row[12],
        media=MediaQuality.from_json(json.loads(row[13])),
        recording=None if not recording else RecordingInfo.from_json(json.loads(recording)),
        webhook_status=json.loads(row[15]),
    )
