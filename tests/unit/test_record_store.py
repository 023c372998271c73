"""The SQLite record store: rows and events round-trip, search pages newest first, text search,
deletes, batched writes that survive a reopen, and the per-call event cap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sipserver.pipeline.call_record import (
    CallRecord,
    MediaQuality,
    RecordEvent,
    RecordingInfo,
    new_record_id,
)
from sipserver.records import store as store_module
from sipserver.records.store import RecordStore


@pytest.fixture
def store(tmp_path: Path) -> RecordStore:
    s = RecordStore(tmp_path / "var" / "records.db", flush_interval=0.05)
    s.open()
    yield s
    s.close()


def _record(agent: str = "support", started: float = 1_700_000_000.0, **kw: object) -> CallRecord:
    return CallRecord(
        id=new_record_id(started),
        agent=agent,
        ingress="sip",
        caller="+14155550123",
        called="+15550001",
        started_at=started,
        **kw,  # type: ignore[arg-type]
    )


def test_a_record_and_its_events_round_trip(store: RecordStore) -> None:
    record = _record(
        answered_at=1_700_000_000.5,
        ended_at=1_700_000_030.5,
        end_reason="caller_bye",
        ended_by="caller",
        codec="PCMU",
        media=MediaQuality(lost=3, concealed=2, late=1),
        recording=RecordingInfo("/x/y.ogg", "opus", "stereo", 16000, 30.0, 12345),
    )
    store.save(record)
    events = [
        RecordEvent("transcript", 1.2, {"speaker": "caller", "text": "What are your hours?"}),
        RecordEvent("transcript", 3.4, {"speaker": "agent", "text": "Nine to five."}),
        RecordEvent("turn", 2.0, {"index": 0, "voice_to_voice": 812.0, "stages": {}}),
    ]
    store.append(record.id, events)
    assert store.flush()
    got = store.get(record.id)
    assert got is not None
    assert got.to_json(events=False) == record.to_json(events=False)
    assert got.duration == pytest.approx(30.0)
    # Ordered by offset, data intact.
    assert [e.type for e in got.events] == ["transcript", "turn", "transcript"]
    assert got.events[2].data["text"] == "Nine to five."
    assert store.turn_latencies("support", 0) == [812.0]
    assert store.turn_latencies("other", 0) == []


def test_files_are_private(store: RecordStore) -> None:
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode & 0o077 == 0, oct(mode)
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700


def test_search_pages_newest_first_with_filters(store: RecordStore) -> None:
    records = [_record("a" if i % 2 else "b", 1_700_000_000.0 + i) for i in range(7)]
    for r in records:
        store.save(r)
    store.append(records[3].id, [RecordEvent("transcript", 0.5, {"text": "My INVOICE is late"})])
    assert store.flush()
    seen: list[str] = []
    cursor = None
    while True:
        page = store.search(limit=3, cursor=cursor)
        seen += [r.id for r in page.records]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [r.id for r in reversed(records)]
    assert [r.id for r in store.search(agents=["a"]).records] == [
        r.id for r in reversed(records) if r.agent == "a"
    ]
    assert store.search(agents=[]).records == []
    window = store.search(since=1_700_000_002.0, until=1_700_000_004.0).records
    assert [r.id for r in window] == [records[3].id, records[2].id]
    assert [r.id for r in store.search(text="invoice").records] == [records[3].id]
    assert store.search(text="100%").records == []  # LIKE wildcards are literal
    with pytest.raises(ValueError, match="cursor"):
        store.search(cursor="nonsense:x")


def test_delete_removes_row_and_events(store: RecordStore) -> None:
    record = _record()
    store.save(record)
    store.append(record.id, [RecordEvent("dtmf", 1.0, {"digit": "5"})])
    deleted = store.delete(record.id)
    assert deleted is not None and deleted.id == record.id
    assert store.get(record.id) is None
    assert store.delete(record.id) is None
    assert store.oldest() == []


def test_oldest_for_retention(store: RecordStore) -> None:
    old, new = _record(started=1000.0), _record(started=2000.0)
    store.save(new)
    store.save(old)
    assert store.flush()
    assert [r.id for r in store.oldest(before=1500.0)] == [old.id]
    assert [r.id for r in store.oldest(limit=1)] == [old.id]


def test_writes_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    first = RecordStore(path, flush_interval=0.05)
    first.open()
    record = _record()
    first.save(record)
    first.append(record.id, [RecordEvent("transcript", 0.1, {"text": "hello"})])
    first.close()  # commits what is queued
    second = RecordStore(path)
    second.open()
    try:
        got = second.get(record.id)
        assert got is not None and got.events[0].data["text"] == "hello"
    finally:
        second.close()


def test_event_cap_per_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(store_module, "MAX_EVENTS_PER_CALL", 5)
    registry = CollectorRegistry()
    s = RecordStore(tmp_path / "r.db", flush_interval=0.05, registry=registry)
    s.open()
    try:
        record = _record()
        s.save(record)
        s.append(record.id, [RecordEvent("dtmf", float(i), {"digit": "1"}) for i in range(4)])
        s.append(record.id, [RecordEvent("dtmf", float(i), {"digit": "2"}) for i in range(4)])
        assert s.flush()
        got = s.get(record.id)
        assert got is not None and len(got.events) == 5
        assert registry.get_sample_value("sipserver_records_dropped_events_total") == 3
    finally:
        s.close()


def test_writes_before_open_are_an_error(tmp_path: Path) -> None:
    s = RecordStore(tmp_path / "r.db")
    with pytest.raises(RuntimeError, match="not open"):
        s.save(_record())


_WRITER = """
import sys, time
from pathlib import Path
from sipserver.data_dir import make_private_file
from sipserver.pipeline.call_record import CallRecord, new_record_id
from sipserver.records.store import RecordStore
store = RecordStore(Path(sys.argv[1]), flush_interval=0.05)
store.open()
make_private_file(sys.argv[1])  # as a second user of the file does (the webhook queue)
for i in range(40):
    store.save(CallRecord(id=new_record_id(), agent="a", ingress="sip", started_at=float(i)))
    store.flush()
    print(i, flush=True)
    time.sleep(0.1)
store.close()
"""


def test_another_process_sees_each_commit(tmp_path: Path) -> None:
    """A reader in another process, connecting afresh each time, sees every commit while the
    writer runs - also after the writer's process touched the file again (make_private_file
    once opened and closed it, which dropped SQLite's POSIX locks: the reader then reset the
    WAL and later commits were invisible until the writer closed)."""
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "records.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    seen: list[int] = []
    try:
        for line in writer.stdout:
            written = int(line.split()[0]) + 1
            if written % 10 == 0:
                conn = sqlite3.connect(path)
                (count,) = conn.execute("SELECT COUNT(*) FROM calls").fetchone()
                conn.close()
                seen.append(count)
                assert count >= written, seen
    finally:
        writer.wait(timeout=30)
    assert len(seen) == 4


def test_writes_wait_for_the_interval_but_a_flush_does_not(tmp_path: Path) -> None:
    """The writer sleeps through its interval (each wake-up takes the GIL from the event loop),
    so writes queued meanwhile are not committed one by one; a flush wakes it at once."""
    import threading
    import time

    s = RecordStore(tmp_path / "r.db", flush_interval=30.0)
    s.open()
    try:
        for i in range(3):
            s.save(_record(started=1_700_000_000.0 + i))
        time.sleep(0.3)
        assert s.search().records == [], "committed before the interval or a flush"
        done = threading.Event()
        threading.Thread(target=lambda: done.set() if s.flush(timeout=10.0) else None).start()
        assert done.wait(5.0), "the flush waited for the 30 s interval"
        assert len(s.search().records) == 3
    finally:
        s.close()
