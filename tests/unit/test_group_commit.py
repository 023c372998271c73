"""Durable registrations: a REGISTER's 200 waits for its binding's group commit.

The router, registrar and store are the real ones; the store's writer is wrapped to record each
transaction (the AORs it wrote, the thread it ran on), to hold it at a gate, or to fail it the
way a full disk does. The committer runs on a real event loop with a real writer thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from sipserver.config import parse_config
from sipserver.edge.group_commit import GroupCommitter
from sipserver.edge.held import HeldResponses
from sipserver.edge.router import HeldRegister, Outgoing, Peer, SipRouter, server_names
from sipserver.observability import Metrics, RefusalLog
from sipserver.registrar.auth import DigestAuthenticator, FailureTracker, NonceManager
from sipserver.registrar.bindings import Binding, SqliteStore
from sipserver.registrar.registrar import Registrar
from sipserver.sip.digest import DigestAlgorithm, DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message
from tests.integration.conftest import until
from tests.unit.test_router import request

NOW = 1_800_000_000.0
URI = "sip:sip.example.com"
PASSWORD = "pbx-password-1"
NUMBERS = [f"4420{i:07d}" for i in range(1, 41)]


class RecordingStore(SqliteStore):
    """A real (in-memory) SQLite store whose writes are recorded, gated or failed."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.transactions: list[list[str]] = []
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def write_changes(self, changes: Sequence[tuple[str, tuple[Binding, ...]]]) -> None:
        self.threads.append(threading.current_thread().name)
        self.gate.wait(10)
        self.transactions.append(sorted(aor for aor, _ in changes))
        if self.fail is not None:
            raise self.fail
        super().write_changes(changes)

    def rows(self) -> int:
        count: int = self._conn.execute("SELECT count(*) FROM bindings").fetchone()[0]
        return count


def make_router(
    store: RecordingStore, held: HeldResponses[HeldRegister] | None = None
) -> tuple[SipRouter, Metrics]:
    raw = {
        "server": {"public_host": "sip.example.com", "sip": {"udp": ["0.0.0.0:5060"], "tcp": []}},
        "agents": [
            {
                "slug": "pbx",
                "sip": {
                    "enabled": True,
                    "numbers": NUMBERS,
                    "username": "pbx",
                    "password": PASSWORD,
                },
            }
        ],
    }
    config = parse_config(yaml.safe_dump(raw), env={})
    metrics = Metrics()
    auth = DigestAuthenticator(
        realm=config.server.effective_realm,
        algorithms=[DigestAlgorithm.MD5],
        nonces=NonceManager(b"s" * 32, ttl=300),
        password_for={"pbx": PASSWORD}.get,
    )
    router = SipRouter(
        config,
        registrar=Registrar(store),
        authenticator=auth,
        tracker=FailureTracker(max_failures=3, window=60, ban_duration=300),
        metrics=metrics,
        names=server_names(config),
        held=held,
        refusals=RefusalLog(metrics),
    )
    return router, metrics


def register(
    router: SipRouter, number: str, *, port: int = 5062, cseq: int = 1, **kw: Any
) -> list[Outgoing]:
    """REGISTER ``number`` (401, then the authenticated request with CSeq ``cseq + 1``); return
    what the router sent for the authenticated one (nothing while its 200 waits for the
    commit)."""
    peer = Peer("udp", "198.51.100.7", port)
    call_id = kw.pop("call_id", f"call-{number}-{port}")
    contact = kw.pop("contact", f"<sip:{number}@198.51.100.7:{port}>")
    first = request(user=number, cseq=cseq, call_id=call_id, contact=contact, **kw)
    (challenge_out,) = router.handle_message(first, peer, now=NOW, wall=NOW)
    challenge = parse_message(challenge_out.data)
    assert isinstance(challenge, SipResponse) and challenge.status == 401
    header = challenge.headers.get_all("WWW-Authenticate")[0]
    auth = build_authorization(
        DigestChallenge.parse(header),
        username="pbx",
        password=PASSWORD,
        method="REGISTER",
        uri=URI,
        cnonce="c0",
    )
    final = request(
        user=number, cseq=cseq + 1, call_id=call_id, contact=contact, authorization=auth, **kw
    )
    return router.handle_message(final, peer, now=NOW, wall=NOW)


def responses(out: list[Outgoing]) -> list[SipResponse]:
    parsed = [parse_message(o.data) for o in out]
    assert all(isinstance(p, SipResponse) for p in parsed)
    return parsed  # type: ignore[return-value]


def aor(number: str) -> str:
    return f"sip:{number}@sip.example.com"


def test_the_200_waits_for_the_commit_and_retransmissions_are_absorbed() -> None:
    store = RecordingStore()
    router, metrics = make_router(store)
    assert register(router, NUMBERS[0]) == []  # held: the binding is not committed
    assert len(router.held) == 1
    # Visible to the registrar (a refresh's CSeq check) but not to call routing.
    assert store.get(aor(NUMBERS[0])) != []
    assert Registrar(store).lookup(aor(NUMBERS[0]), now=NOW) == []
    batch = store.take_changes()
    store.write_changes(batch.changes)
    assert router.release_committed(batch.seq - 1, now=NOW) == []  # an older commit: still held
    store.committed(batch)
    (out,) = router.release_committed(batch.seq, now=NOW)
    (ok,) = responses([out])
    assert ok.status == 200
    assert f"<sip:{NUMBERS[0]}@198.51.100.7:5062>;expires=3600" in ok.headers.get_all("Contact")
    assert (out.host, out.port, out.transport, out.listener) == ("198.51.100.7", 5062, "udp", 0)
    assert [b.contact for b in Registrar(store).lookup(aor(NUMBERS[0]), now=NOW)] == [
        f"sip:{NUMBERS[0]}@198.51.100.7:5062"
    ]
    assert metrics.registry.get_sample_value("sipserver_register_requests_total", {"result": "ok"})
    assert store.rows() == 1


@pytest.mark.parametrize(
    ("change", "contact", "expires", "left"),
    [
        ("refresh", None, 1800, 1),
        ("remove", None, 0, 0),
        ("wildcard", "*", 0, 0),
        ("query", "", None, 1),  # reports the committed binding: nothing to wait for
    ],
)
def test_every_binding_change_waits_for_its_commit(
    change: str, contact: str | None, expires: int | None, left: int
) -> None:
    store = RecordingStore()
    router, _ = make_router(store)
    number = NUMBERS[0]
    assert register(router, number) == []
    store.flush()
    assert len(router.release_committed(store.take_changes().seq, now=NOW)) == 1
    kw: dict[str, Any] = {"cseq": 3, "expires": expires}
    if contact is not None:
        kw["contact"] = contact or None
    out = register(router, number, **kw)
    if change == "query":
        (ok,) = responses(out)
    else:
        assert out == [] and len(router.held) == 1  # held until committed
        ticket = store.pending_commit()
        assert ticket is not None and store.flush() == 1
        (ok,) = responses(router.release_committed(ticket, now=NOW))
    assert ok.status == 200
    assert len(ok.headers.get_all("Contact")) == left
    assert len(Registrar(store).lookup(aor(number), now=NOW)) == left
    assert store.rows() == left


def test_a_retransmission_before_the_commit_gets_nothing_and_after_it_the_200() -> None:
    store = RecordingStore()
    router, _ = make_router(store)
    peer = Peer("udp", "198.51.100.7", 5062)
    number = NUMBERS[0]
    first = request(user=number, cseq=1, call_id="c-rt")
    (challenge_out,) = router.handle_message(first, peer, now=NOW, wall=NOW)
    challenge = parse_message(challenge_out.data)
    assert isinstance(challenge, SipResponse)
    auth = build_authorization(
        DigestChallenge.parse(challenge.headers.get_all("WWW-Authenticate")[0]),
        username="pbx",
        password=PASSWORD,
        method="REGISTER",
        uri=URI,
        cnonce="c0",
    )
    final = request(user=number, cseq=2, call_id="c-rt", authorization=auth, branch="z9hG4bKrt")
    assert router.handle_message(final, peer, now=NOW, wall=NOW) == []
    # RFC 3261 §17.2.2: a retransmission in Trying is absorbed (no 200 before the commit).
    assert router.handle_message(final, peer, now=NOW + 0.5, wall=NOW + 0.5) == []
    assert store.flush() == 1
    (released,) = router.release_committed(store.take_changes().seq, now=NOW + 0.6)
    (again,) = router.handle_message(final, peer, now=NOW + 1, wall=NOW + 1)
    assert again.data == released.data  # the stored 200, from the transaction


async def test_many_registrations_share_one_transaction_and_are_released_after_it() -> None:
    store = RecordingStore()
    router, _ = make_router(store)
    sent: list[Outgoing] = []
    with ThreadPoolExecutor(1, thread_name_prefix="bindings-writer") as writer:
        committer = GroupCommitter(
            store,
            writer,
            on_committed=lambda seq: sent.extend(router.release_committed(seq, now=NOW)),
            on_failed=lambda exc: sent.extend(router.refuse_uncommitted(now=NOW)),
            window=0.05,
        )
        store.on_change = committer.wake
        committer.start()
        store.gate.clear()  # the writer will wait inside its transaction
        for number in NUMBERS[:20]:
            assert register(router, number) == []
        assert await until(lambda: store.threads, 5)
        # The transaction is open on the writer thread: nothing is acknowledged yet.
        await asyncio.sleep(0.05)
        assert sent == []
        # Registrations arriving during the write form the next batch.
        for number in NUMBERS[20:30]:
            assert register(router, number) == []
        store.gate.set()
        assert await until(lambda: len(sent) == 30, 5)
        await committer.stop()
    assert store.transactions == [
        sorted(aor(n) for n in NUMBERS[:20]),
        sorted(aor(n) for n in NUMBERS[20:30]),
    ]
    assert set(store.threads) == {"bindings-writer_0"}  # never the event loop's thread
    oks = responses(sent)
    assert [r.status for r in oks] == [200] * 30
    # Each answers its own REGISTER, in arrival order.
    assert [r.to().uri.user for r in oks] == NUMBERS[:30]
    assert store.rows() == 30
    assert store.pending_commit() is None


async def test_a_failed_commit_refuses_every_waiting_registration_and_keeps_nothing() -> None:
    store = RecordingStore()
    router, metrics = make_router(store)
    sent: list[Outgoing] = []
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        sent.extend(router.refuse_uncommitted(now=NOW))

    with ThreadPoolExecutor(1) as writer:
        committer = GroupCommitter(
            store,
            writer,
            on_committed=lambda seq: sent.extend(router.release_committed(seq, now=NOW)),
            on_failed=failed,
            window=0.01,
        )
        store.on_change = committer.wake
        committer.start()
        store.fail = sqlite3.OperationalError("database or disk is full")
        for number in NUMBERS[:3]:
            assert register(router, number) == []
        assert await until(lambda: len(sent) == 3, 5)
        refused = responses(sent)
        assert [r.status for r in refused] == [503] * 3
        assert all(r.headers.get("Retry-After") for r in refused)
        assert "bindings not stored" in (refused[0].headers.get("Warning") or "")
        assert [str(f) for f in failures] == ["database or disk is full"]
        # Rolled back: nothing a 200 was not sent for stays in memory either.
        assert all(store.get(aor(n)) == [] for n in NUMBERS[:3])
        assert store.count() == 0 and store.rows() == 0
        refusals = metrics.registry.get_sample_value(
            "sipserver_refusals_total", {"ingress": "sip", "reason": "bindings_not_stored"}
        )
        assert refusals == 3
        # The disk recovers: the next registration is committed and acknowledged.
        store.fail = None
        sent.clear()
        assert register(router, NUMBERS[0], port=5070) == []
        assert await until(lambda: len(sent) == 1, 5)
        await committer.stop()
    assert responses(sent)[0].status == 200
    assert store.rows() == 1


def test_a_full_backlog_refuses_at_once_and_changes_nothing() -> None:
    store = RecordingStore()
    router, metrics = make_router(store, HeldResponses(limit=2))
    assert register(router, NUMBERS[0]) == []
    assert register(router, NUMBERS[1]) == []
    (out,) = register(router, NUMBERS[2])
    (refused,) = responses([out])
    assert refused.status == 503 and refused.headers.get("Retry-After")
    assert store.get(aor(NUMBERS[2])) == []
    assert metrics.registry.get_sample_value(
        "sipserver_refusals_total", {"ingress": "sip", "reason": "bindings_backlog"}
    )


async def test_stop_commits_what_is_pending_and_releases_it() -> None:
    store = RecordingStore()
    router, _ = make_router(store)
    sent: list[Outgoing] = []
    with ThreadPoolExecutor(1) as writer:
        committer = GroupCommitter(
            store,
            writer,
            on_committed=lambda seq: sent.extend(router.release_committed(seq, now=NOW)),
            on_failed=lambda exc: pytest.fail(repr(exc)),
            window=10.0,  # far longer than the test: only stop() commits
        )
        store.on_change = committer.wake
        committer.start()
        assert register(router, NUMBERS[0]) == []
        await asyncio.sleep(0.05)
        assert sent == []
        await committer.stop()
    assert [r.status for r in responses(sent)] == [200]
    assert store.rows() == 1


def test_held_responses_release_in_ticket_order_and_are_bounded() -> None:
    held: HeldResponses[str] = HeldResponses(limit=3)
    held.hold(1, "a")
    held.hold(3, "b")
    held.hold(3, "c")
    assert held.full
    with pytest.raises(ValueError, match="full"):
        held.hold(4, "d")
    assert held.release(2) == ["a"]
    with pytest.raises(ValueError, match="ticket"):
        held.hold(2, "e")
    assert held.release(3) == ["b", "c"]
    held.hold(5, "f")
    assert held.take_all() == ["f"] and len(held) == 0
    with pytest.raises(ValueError):
        HeldResponses(limit=0)
