"""The edge's two clocks: monotonic time for what lives in the process, wall time for what
outlives it or is shown.

Bans, nonces and transactions run on the monotonic ``now``: a wall clock stepped back or forward
by an hour (NTP correcting a VM's clock at boot, an operator) must not lift a ban early, keep it
an hour too long, revive an expired nonce or stretch a transaction. Bindings are persisted with
wall-clock expiry, so after a restart (a new monotonic clock) the registrar still counts down from
what the REGISTER asked for. The router and store are real (see test_router.py); the last test
drives the asyncio listeners over loopback UDP with injected clocks.
"""

from __future__ import annotations

import asyncio
import email.utils
from pathlib import Path

import pytest

from sipserver.edge.router import Peer
from sipserver.edge.transport import SipListeners
from sipserver.registrar.bindings import SqliteStore
from sipserver.sip.digest import DigestChallenge, build_authorization
from sipserver.sip.message import SipResponse, parse_message
from tests.unit.test_router import answer, make_router, register, request, sample, send

MONO = 5_000.0
"""Monotonic time at the start of each test (seconds since an arbitrary point, e.g. boot)."""
WALL = 1_800_000_000.0
"""Wall-clock time at the start of each test (epoch seconds)."""
HOUR = 3600.0
PEER = Peer("udp", "198.51.100.7", 5062)


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["wall-back", "wall-forward"])
def test_a_ban_lasts_its_duration_on_the_monotonic_clock(step: float) -> None:
    router, metrics = make_router()  # ban: 3 failures in 60 s -> 300 s
    for i in range(3):
        resp = register(router, password="nope", now=MONO + i, wall=WALL + i, call_id=f"c{i}")
        assert resp.status == 403
    assert sample(metrics, "sipserver_bans_total") == 1
    # The wall clock is stepped by an hour; 5 s later (monotonic) the ban still runs.
    banned = send(router, request(call_id="c5"), now=MONO + 5, wall=WALL + 5 + step)
    assert banned.status == 403 and banned.headers.get("WWW-Authenticate") is None
    router.handle_timer(now=MONO + 6, wall=WALL + 6 + step)
    assert sample(metrics, "sipserver_banned_sources") == 1
    # Still banned 1 s before the end, whatever the wall clock says...
    assert send(router, request(call_id="c6"), now=MONO + 301, wall=WALL + 301 + step).status == 403
    # ...and free once 300 s have passed since the ban began (third failure at MONO + 2).
    ok = register(router, now=MONO + 303, wall=WALL + 303 + step, call_id="c7")
    assert ok.status == 200
    router.handle_timer(now=MONO + 304, wall=WALL + 304 + step)
    assert sample(metrics, "sipserver_banned_sources") == 0


def test_a_nonce_ages_on_the_monotonic_clock() -> None:
    router, _ = make_router(nonce_ttl=30)
    challenge = send(router, request(), now=MONO, wall=WALL)
    auth = answer(challenge, "alice", "alice-pw-1234")
    # 31 s later the nonce is stale although the wall clock went back an hour meanwhile.
    resp = send(router, request(cseq=2, authorization=auth), now=MONO + 31, wall=WALL + 31 - HOUR)
    assert resp.status == 401
    assert all("stale=true" in v for v in resp.headers.get_all("WWW-Authenticate"))
    # A wall clock stepped forward an hour does not age a fresh nonce.
    challenge = send(router, request(call_id="c2"), now=MONO + 40, wall=WALL + 40)
    auth = answer(challenge, "alice", "alice-pw-1234")
    fresh = request(call_id="c2", cseq=2, authorization=auth)
    assert send(router, fresh, now=MONO + 41, wall=WALL + 41 + HOUR).status == 200


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["wall-back", "wall-forward"])
def test_transactions_time_out_on_the_monotonic_clock(step: float) -> None:
    router, metrics = make_router()
    # An OPTIONS: a REGISTER without credentials is answered statelessly (test_router.py).
    data = request("OPTIONS", contact=None, expires=None, branch="z9hG4bKretransmitted")
    first = router.handle_message(data, PEER, now=MONO, wall=WALL)
    # A retransmission 0.5 s later is answered from the transaction, wall step or not.
    again = router.handle_message(data, PEER, now=MONO + 0.5, wall=WALL + 0.5 + step)
    assert again[0].data == first[0].data
    assert sample(metrics, "sipserver_sip_retransmissions_total") == 1
    # The transaction ends 32 s (Timer J, RFC 3261 §17.2.2) after its response, not earlier
    # because the wall clock jumped ahead, nor an hour later because it went back.
    router.handle_timer(now=MONO + 31, wall=WALL + 31 + step)
    assert len(router.transactions) == 1
    router.handle_timer(now=MONO + 33, wall=WALL + 33 + step)
    assert len(router.transactions) == 0


def _contact_expires(resp: SipResponse) -> int:
    contact = resp.headers.get("Contact") or ""
    return int(contact.rsplit("expires=", 1)[1])


def test_bindings_survive_a_restart_with_their_remaining_expiry(tmp_path: Path) -> None:
    db = tmp_path / "bindings.db"
    store = SqliteStore(db)
    router, _ = make_router(store=store)
    challenge = send(router, request(cseq=1), now=MONO, wall=WALL)
    final = request(cseq=2, authorization=answer(challenge, "alice", "alice-pw-1234"))
    # The 200 waits for the binding's commit (the server's group commit does this part).
    assert router.handle_message(final, PEER, now=MONO, wall=WALL) == []
    ticket = store.pending_commit()
    assert ticket is not None and store.flush() == 1
    (out,) = router.release_committed(ticket, now=MONO)
    resp = parse_message(out.data)
    assert isinstance(resp, SipResponse)
    assert resp.status == 200 and _contact_expires(resp) == 3600
    store.close()

    # Ten minutes later (wall clock) the server starts again; its monotonic clock starts over
    # (after a reboot it counts from ~0), so only the persisted wall-clock expiry is meaningful.
    restarted = SqliteStore(db)
    router, metrics = make_router(store=restarted)
    mono, wall = 12.0, WALL + 600
    router.handle_timer(now=mono, wall=wall)  # what Server.start does first
    assert sample(metrics, "sipserver_registrations_active") == 1
    # A query REGISTER (no Contact, RFC 3261 §10.2.3) reports the time that is left.
    query = register(router, contact=None, expires=None, now=mono, wall=wall, call_id="q1")
    assert query.status == 200 and _contact_expires(query) == 3000
    router.handle_timer(now=mono + 2999, wall=wall + 2999)
    assert sample(metrics, "sipserver_registrations_active") == 1
    router.handle_timer(now=mono + 3001, wall=wall + 3001)
    assert sample(metrics, "sipserver_registrations_active") == 0
    restarted.close()


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.put_nowait(data)


async def test_the_listeners_give_the_router_loop_time_and_wall_time() -> None:
    router, metrics = make_router(nonce_ttl=30)
    mono, wall = [MONO], [WALL]
    listeners = SipListeners(router, metrics, clock=lambda: mono[0], wall_clock=lambda: wall[0])
    await listeners.start(["127.0.0.1:0"], [])
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        _Client, remote_addr=("127.0.0.1", listeners.bound[0][2])
    )

    async def exchange(data: bytes) -> SipResponse:
        transport.sendto(data)
        resp = parse_message(await asyncio.wait_for(client.received.get(), 10))
        assert isinstance(resp, SipResponse)
        return resp

    async def answered(call_id: str) -> bytes:
        challenge = await exchange(request(call_id=call_id))
        assert challenge.status == 401
        chosen = DigestChallenge.parse(challenge.headers.get_all("WWW-Authenticate")[0])
        auth = build_authorization(
            chosen,
            username="alice",
            password="alice-pw-1234",
            method="REGISTER",
            uri="sip:sip.example.com",
            cnonce="c0ffee",
        )
        return request(call_id=call_id, cseq=2, authorization=auth)

    try:
        second = await answered("l1")
        mono[0], wall[0] = MONO + 1, WALL + 1 - HOUR  # the wall clock is stepped back an hour
        ok = await exchange(second)
        assert ok.status == 200
        # Shown and persisted: the Date header and the binding's expiry are wall time...
        assert ok.headers.get("Date") == email.utils.formatdate(WALL + 1 - HOUR, usegmt=True)
        (binding,) = router._registrar.store.all()
        assert binding.expires_at == pytest.approx(WALL + 1 - HOUR + 3600)
        # ...while nonces age on the monotonic clock: 31 s on it (wall unchanged) and the
        # 30 s nonce is stale.
        second = await answered("l2")
        mono[0] += 31
        stale = await exchange(second)
        assert stale.status == 401
        assert "stale=true" in (stale.headers.get("WWW-Authenticate") or "")
    finally:
        transport.close()
        await listeners.stop()


async def test_the_listeners_default_to_the_loop_clock() -> None:
    router, metrics = make_router()
    listeners = SipListeners(router, metrics)
    before = asyncio.get_running_loop().time()
    assert before <= listeners.clock() <= asyncio.get_running_loop().time()
