"""Binding stores: one suite for the BindingStore protocol, plus SqliteStore persistence."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.registrar.bindings import (
    Binding,
    BindingStore,
    ChangeBatch,
    MemoryStore,
    SqliteStore,
    open_store,
)

T0 = 1_700_000_000.0
AOR_A = "sip:alice@example.com"
AOR_B = "sip:bob@example.com"


def make(
    aor: str = AOR_A,
    contact: str = "sip:alice@192.0.2.4:5062",
    *,
    expires_at: float = T0 + 3600,
    registered_at: float = T0,
    cseq: int = 1,
    **fields: object,
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        registered_at=registered_at,
        call_id=str(fields.pop("call_id", "call-1")),
        cseq=cseq,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BindingStore]:
    s: BindingStore
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "b.db")
    yield s
    s.close()


# --- Binding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_at", "now", "expected"),
    [
        (T0 + 3600, T0, 3600),
        (T0 + 3600, T0 + 0.25, 3600),  # rounded up: an unexpired binding never reports 0
        (T0 + 3600, T0 + 3599.5, 1),
        (T0 + 3600, T0 + 3600, 0),
        (T0 + 3600, T0 + 4000, 0),
        (T0 + 0.123 + 3600, T0 + 0.123, 3600),  # float noise does not make it 3601
        (1.0000004, 0.0, 1),  # under half a microsecond over: noise
        (1.0000006, 0.0, 2),  # over it: time left
        (0.0000004, 0.0, 0),
    ],
)
def test_expires_in(expires_at: float, now: float, expected: int) -> None:
    assert make(expires_at=expires_at).expires_in(now) == expected


@given(st.floats(0, 10_000, allow_nan=False), st.floats(0, 10_000, allow_nan=False))
@settings(max_examples=2000, deadline=None)
def test_expires_in_is_the_ceiling_of_the_remaining_microseconds(at: float, now: float) -> None:
    # The reference: whole seconds up from the remaining time rounded to microseconds. The two
    # may differ only where the remainder is within float error of half a microsecond.
    remaining = (T0 + at) - (T0 + now)
    reference = 0 if remaining <= 0 else math.ceil(round(remaining, 6))
    got = make(expires_at=T0 + at).expires_in(T0 + now)
    if got != reference:
        assert abs(remaining - math.floor(remaining) - 5e-7) < 1e-9, (remaining, got, reference)


def test_binding_is_frozen_and_slotted() -> None:
    b = make()
    with pytest.raises(AttributeError):
        b.cseq = 2  # type: ignore[misc]
    assert not hasattr(b, "__dict__")


# --- BindingStore protocol (MemoryStore and SqliteStore) ------------------------------------


def test_empty_store(store: BindingStore) -> None:
    assert store.get(AOR_A) == []
    assert list(store.aors()) == []
    assert list(store.all()) == []
    assert store.count() == 0
    assert store.expire(now=T0 + 10**6) == []


def test_replace_and_get(store: BindingStore) -> None:
    b1 = make(contact="sip:alice@192.0.2.4")
    b2 = make(contact="sip:alice@192.0.2.5")
    store.replace(AOR_A, [b1, b2])
    assert store.get(AOR_A) == [b1, b2]
    assert list(store.aors()) == [AOR_A]
    assert list(store.all()) == [b1, b2]
    assert store.count() == 2


def test_get_returns_a_copy(store: BindingStore) -> None:
    store.replace(AOR_A, [make()])
    store.get(AOR_A).clear()
    assert len(store.get(AOR_A)) == 1


def test_replace_with_empty_removes_the_aor(store: BindingStore) -> None:
    store.replace(AOR_A, [make()])
    store.replace(AOR_B, [make(AOR_B)])
    store.replace(AOR_A, [])
    assert store.get(AOR_A) == []
    assert list(store.aors()) == [AOR_B]
    assert store.count() == 1
    store.replace(AOR_A, [])  # removing an unknown AOR is harmless
    assert store.count() == 1


def test_count_through_every_operation(store: BindingStore) -> None:
    store.replace(AOR_A, [make(contact="sip:a@h1"), make(contact="sip:a@h2")])
    assert store.count() == 2
    store.replace(AOR_B, [make(AOR_B, expires_at=T0 + 10)])
    assert store.count() == 3
    store.replace(AOR_A, [make(contact="sip:a@h1")])  # shrink
    assert store.count() == 2
    store.replace(AOR_A, [make(contact=f"sip:a@h{i}") for i in range(5)])  # grow
    assert store.count() == 6
    assert len(store.expire(now=T0 + 10)) == 1
    assert store.count() == 5
    store.replace(AOR_A, [])
    assert store.count() == 0
    assert store.count() == sum(1 for _ in store.all())


def test_iteration_is_a_snapshot(store: BindingStore) -> None:
    store.replace(AOR_A, [make()])
    store.replace(AOR_B, [make(AOR_B)])
    for aor in store.aors():
        store.replace(aor, [])
    assert store.count() == 0


def test_expire_removes_only_due_bindings(store: BindingStore) -> None:
    early = make(contact="sip:a@h1", expires_at=T0 + 60)
    late = make(contact="sip:a@h2", expires_at=T0 + 120)
    other = make(AOR_B, expires_at=T0 + 60)
    store.replace(AOR_A, [early, late])
    store.replace(AOR_B, [other])
    assert store.expire(now=T0 + 59) == []
    # expires_at <= now is expired.
    assert sorted(store.expire(now=T0 + 60), key=lambda b: b.aor) == [early, other]
    assert store.get(AOR_A) == [late]
    assert store.get(AOR_B) == []
    assert list(store.aors()) == [AOR_A]
    assert store.expire(now=T0 + 119) == []
    assert store.expire(now=T0 + 120) == [late]
    assert store.count() == 0
    assert list(store.aors()) == []


def test_expire_after_refresh_keeps_the_binding(store: BindingStore) -> None:
    """A refreshed binding must not be expired at its old time."""
    store.replace(AOR_A, [make(expires_at=T0 + 60)])
    refreshed = make(expires_at=T0 + 3600, cseq=2)
    store.replace(AOR_A, [refreshed])
    assert store.expire(now=T0 + 60) == []
    assert store.expire(now=T0 + 61) == []
    assert store.get(AOR_A) == [refreshed]
    assert store.expire(now=T0 + 3600) == [refreshed]
    assert store.count() == 0


def test_expire_after_shortening(store: BindingStore) -> None:
    """A change that moves the deadline earlier is expired at the new time."""
    store.replace(AOR_A, [make(expires_at=T0 + 3600)])
    short = make(expires_at=T0 + 60, cseq=2)
    store.replace(AOR_A, [short])
    assert store.expire(now=T0 + 60) == [short]
    assert store.expire(now=T0 + 3600) == []  # the older, stale entry is skipped
    assert store.count() == 0


def test_expire_after_removal_and_readd(store: BindingStore) -> None:
    store.replace(AOR_A, [make(expires_at=T0 + 60)])
    store.replace(AOR_A, [])
    again = make(expires_at=T0 + 100, cseq=5)
    store.replace(AOR_A, [again])
    assert store.expire(now=T0 + 60) == []
    assert store.expire(now=T0 + 100) == [again]


def test_expire_keeps_rescheduling(store: BindingStore) -> None:
    """Refreshing many times, each later, expires exactly once at the last deadline."""
    for i in range(1, 50):
        store.replace(AOR_A, [make(expires_at=T0 + 60 * i, cseq=i)])
        assert store.expire(now=T0 + 60 * i - 1) == []
    assert [b.cseq for b in store.expire(now=T0 + 60 * 49)] == [49]


def test_expire_partial_within_aor_then_rest(store: BindingStore) -> None:
    store.replace(
        AOR_A,
        [make(contact=f"sip:a@h{i}", expires_at=T0 + 10 * i) for i in range(1, 4)],
    )
    assert [b.contact for b in store.expire(now=T0 + 15)] == ["sip:a@h1"]
    assert [b.contact for b in store.expire(now=T0 + 25)] == ["sip:a@h2"]
    assert [b.contact for b in store.expire(now=T0 + 35)] == ["sip:a@h3"]
    assert store.count() == 0


# --- MemoryStore internals: the expiry index stays small ------------------------------------


def test_expire_is_one_comparison_when_nothing_is_due() -> None:
    store = MemoryStore()
    for i in range(1000):
        store.replace(f"sip:u{i}@h", [make(f"sip:u{i}@h", expires_at=T0 + 3600 + i)])
    assert store._heap[0][0] == T0 + 3600
    assert store.expire(now=T0 + 3599) == []
    assert len(store._heap) == 1000


def test_refreshes_do_not_grow_the_heap() -> None:
    store = MemoryStore()
    for i in range(10_000):
        store.replace(AOR_A, [make(expires_at=T0 + 3600 + i, cseq=i)])
    assert len(store._heap) == 1


def test_heap_is_compacted_when_deadlines_move_earlier() -> None:
    store = MemoryStore()
    for i in range(10_000):
        store.replace(AOR_A, [make(expires_at=T0 + 100_000 - i, cseq=i)])
    assert len(store._heap) <= 1024 + 1
    last = store.get(AOR_A)
    assert store.expire(now=T0 + 100_000) == last


# --- SqliteStore ----------------------------------------------------------------------------


def rich_bindings() -> list[Binding]:
    return [
        make(
            contact="sip:alice@192.0.2.4:5062;transport=udp",
            q=0.5,
            agent="support",
            source="udp:203.0.113.7:5060",
            path=("sip:p1.example.com;lr", "sip:p2.example.com;lr"),
            user_agent="Phone/1.0",
            instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        ),
        make(contact="sip:alice@192.0.2.5", expires_at=T0 + 60, registered_at=T0 - 5),
    ]


def test_sqlite_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    store.replace(AOR_A, rich_bindings())
    store.replace(AOR_B, [make(AOR_B)])
    store.replace(AOR_B, [])
    store.close()

    reopened = SqliteStore(db)
    assert reopened.get(AOR_A) == rich_bindings()
    assert reopened.get(AOR_B) == []
    assert reopened.count() == 2
    assert reopened.take_changes() == ChangeBatch(0)  # loading is not a change
    assert reopened.pending_commit() is None
    reopened.close()


def test_sqlite_loads_expired_rows_for_the_next_expire(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    store.replace(AOR_A, rich_bindings())
    store.close()

    reopened = SqliteStore(db)
    assert reopened.count() == 2  # nothing dropped at load
    assert [b.contact for b in reopened.expire(now=T0 + 60)] == ["sip:alice@192.0.2.5"]
    reopened.close()
    assert [b.contact for b in SqliteStore(db).get(AOR_A)] == [rich_bindings()[0].contact]


def test_sqlite_creates_parent_dirs_and_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "sipserver" / "bindings.db"
    SqliteStore(db).close()
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_persists_nothing_until_written(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    store.replace(AOR_A, [make()])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 0
    assert store.flush() == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 1
    assert store.flush() == 0
    store.close()


def test_take_changes_snapshots_and_clears(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    b1 = make()
    store.replace(AOR_A, [make(cseq=0)])
    store.replace(AOR_A, [b1])  # two changes of one AOR: one entry, the latest bindings
    store.replace(AOR_B, [make(AOR_B)])
    store.replace(AOR_B, [])
    batch = store.take_changes()
    assert batch.seq == 4
    assert sorted(batch.changes) == [(AOR_A, (b1,)), (AOR_B, ())]
    assert store.take_changes() == ChangeBatch(4)
    store.close()


def test_expire_marks_changes(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    store.replace(AOR_A, [make(expires_at=T0 + 60)])
    store.flush()
    store.expire(now=T0 + 60)
    assert store.pending_commit() == 2
    batch = store.take_changes()
    assert batch.changes == ((AOR_A, ()),)
    store.write_changes(batch.changes)
    store.committed(batch)
    assert store.pending_commit() is None
    store.close()
    assert SqliteStore(db).count() == 0


def test_write_changes_from_a_writer_thread(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    for i in range(600):  # more than one statement's worth of rows and AORs
        store.replace(f"sip:u{i}@h", [make(f"sip:u{i}@h", contact=f"sip:u{i}@192.0.2.1")])
    store.replace("sip:u0@h", [])
    store.flush()
    store.replace("sip:u1@h", [])
    two = [make("sip:u2@h", contact="sip:u2@192.0.2.1"), make("sip:u2@h", contact="sip:u2@b")]
    store.replace("sip:u2@h", two)
    batch = store.take_changes()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            store.write_changes(batch.changes)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert errors == []
    store.committed(batch)
    assert store.flush() == 0
    store.close()

    reopened = SqliteStore(db)
    assert reopened.count() == 599
    assert reopened.get("sip:u0@h") == [] and reopened.get("sip:u1@h") == []
    assert reopened.get("sip:u2@h") == two
    assert reopened.get("sip:u7@h") == [make("sip:u7@h", contact="sip:u7@192.0.2.1")]
    reopened.close()


def test_failed_write_rolls_memory_back_to_the_database(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    kept = make(contact="sip:alice@192.0.2.9")
    store.replace(AOR_A, [kept])
    store.flush()
    woken: list[int] = []
    store.on_change = lambda: woken.append(1)
    store.replace(AOR_A, [kept, make()])  # in the batch that fails
    store.replace(AOR_B, [make(AOR_B)])
    batch = store.take_changes()
    store.replace(AOR_A, [make()])  # made on top of the failing batch
    store.replace("sip:carol@example.com", [make("sip:carol@example.com")])  # after it
    # A CSeq beyond SQLite's 64-bit INTEGER: the insert fails after the batch's DELETEs, inside
    # the transaction (a binding of the wrong type cannot be built: the class is compiled).
    invalid = Binding(AOR_A, "sip:x", T0, T0, "c", 2**63)
    with pytest.raises(OverflowError):
        store.write_changes([*batch.changes, (AOR_A, (invalid,))])
    woken.clear()
    assert sorted(store.rollback()) == sorted([AOR_A, AOR_B, "sip:carol@example.com"])
    assert woken == []  # restoring the database's state is nothing to commit
    assert store.get(AOR_A) == [kept]
    assert store.get(AOR_B) == [] and store.get("sip:carol@example.com") == []
    assert store.count() == 1
    assert store.pending_commit() is None
    assert store.take_changes().changes == ()
    store.close()
    assert SqliteStore(db).get(AOR_A) == [kept]


def test_rollback_restores_expired_bindings_for_the_next_expire(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    binding = make(expires_at=T0 + 60)
    store.replace(AOR_A, [binding])
    store.flush()
    assert store.expire(now=T0 + 60) == [binding]
    store.take_changes()
    store.rollback()  # the expiry was not written: memory is the database again
    assert store.get(AOR_A) == [binding]
    assert store.expire(now=T0 + 61) == [binding]  # and expires again
    assert store.flush() == 1
    store.close()


def test_committed_view_and_pending_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    woken: list[int] = []
    store.on_change = lambda: woken.append(1)
    first, second = make(cseq=1), make(cseq=2)
    assert store.pending_commit() is None
    store.replace(AOR_A, [first])
    store.replace(AOR_B, [make(AOR_B)])
    assert woken == [1]  # once, when the first AOR became dirty
    assert store.pending_commit() == 2
    assert store.get(AOR_A) == [first]
    assert store.get_committed(AOR_A) == []  # not acknowledged yet
    batch = store.take_changes()
    store.replace(AOR_A, [second])  # while the batch is written
    assert woken == [1, 1]
    store.write_changes(batch.changes)
    store.committed(batch)
    assert store.pending_commit() == 3  # the change after the batch
    assert store.get_committed(AOR_A) == [first]  # what the database holds
    assert store.get_committed(AOR_B) == [make(AOR_B)]
    assert store.get(AOR_A) == [second]
    assert store.flush() == 1
    assert store.get_committed(AOR_A) == [second]
    assert store.pending_commit() is None
    store.close()


def test_memory_store_has_nothing_to_commit() -> None:
    store = MemoryStore()
    store.replace(AOR_A, [make()])
    assert store.pending_commit() is None
    assert store.get_committed(AOR_A) == [make()]


def test_failed_flush_rolls_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    store.replace(AOR_A, [make()])
    store._conn.close()  # simulate a broken database
    with pytest.raises(sqlite3.ProgrammingError):
        store.flush()
    # Rolled back: memory is what the database holds, and nothing is claimed committed.
    assert store.get(AOR_A) == []
    assert store.pending_commit() is None


def test_sqlite_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        SqliteStore(db)


def test_close_is_idempotent_and_memory_stays_readable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    store.replace(AOR_A, [make()])
    store.close()
    store.close()
    assert store.count() == 1


def test_sqlite_in_memory_database() -> None:
    store = SqliteStore(":memory:")
    store.replace(AOR_A, [make()])
    assert store.flush() == 1
    store.close()


# --- open_store -----------------------------------------------------------------------------


def test_open_store(tmp_path: Path) -> None:
    assert type(open_store("memory", None)) is MemoryStore
    sqlite_store = open_store("sqlite", str(tmp_path / "b.db"))
    assert isinstance(sqlite_store, SqliteStore)
    sqlite_store.close()


@pytest.mark.parametrize(("kind", "path"), [("sqlite", None), ("sqlite", ""), ("redis", "x")])
def test_open_store_rejects(kind: str, path: str | None) -> None:
    with pytest.raises(ValueError, match="store"):
        open_store(kind, path)


def test_sqlite_files_are_private_even_under_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "new.db"
        store = SqliteStore(db)
        store.replace(AOR_A, [make()])
        store.flush()
        files = [db, *(p for p in (tmp_path / "new.db-wal", tmp_path / "new.db-shm") if p.exists())]
        assert len(files) == 3  # WAL mode: both side files exist while the store is open
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
            p.name: "0o600" for p in files
        }
        store.close()
        # A database an older version left world-readable is tightened when it is opened.
        old_db = tmp_path / "old.db"
        sqlite3.connect(old_db).close()
        old_db.chmod(0o644)
        SqliteStore(old_db).close()
        assert stat.S_IMODE(old_db.stat().st_mode) == 0o600
    finally:
        os.umask(old)
