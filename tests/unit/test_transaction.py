"""Non-INVITE server transactions (RFC 3261 §17.2.2), time stepped by hand."""

from __future__ import annotations

from sipserver.sip.transaction import TIMER_J, ServerTransactions, transaction_key

KEY = transaction_key("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "call-1", "1 REGISTER")


def test_new_request_then_retransmission_gets_stored_response() -> None:
    tx = ServerTransactions()
    assert tx.receive(KEY, now=0.0).is_new
    tx.respond(KEY, b"SIP/2.0 200 OK\r\n\r\n", status=200, reliable=False, now=0.0)
    match = tx.receive(KEY, now=1.0)
    assert not match.is_new
    assert match.response == b"SIP/2.0 200 OK\r\n\r\n"


def test_retransmission_while_trying_is_absorbed() -> None:
    tx = ServerTransactions()
    assert tx.receive(KEY, now=0.0).is_new
    match = tx.receive(KEY, now=0.5)
    assert not match.is_new and match.response is None


def test_provisional_response_is_resent_in_proceeding() -> None:
    tx = ServerTransactions()
    tx.receive(KEY, now=0.0)
    tx.respond(KEY, b"100", status=100, reliable=False, now=0.0)
    assert tx.receive(KEY, now=0.1).response == b"100"
    tx.respond(KEY, b"200", status=200, reliable=False, now=0.2)
    assert tx.receive(KEY, now=0.3).response == b"200"


def test_timer_j_ends_completed_transaction() -> None:
    tx = ServerTransactions()
    tx.receive(KEY, now=10.0)
    tx.respond(KEY, b"200", status=200, reliable=False, now=10.0)
    assert tx.get_timer() is not None
    tx.handle_timer(now=10.0 + TIMER_J - 0.001)
    assert not tx.receive(KEY, now=10.0 + TIMER_J - 0.001).is_new
    assert tx.handle_timer(now=10.0 + TIMER_J) == 1
    assert len(tx) == 0
    # After Timer J the same request is new again.
    assert tx.receive(KEY, now=10.0 + TIMER_J + 1).is_new


def test_reliable_transport_ends_at_once() -> None:
    # RFC 3261 §17.2.2: Timer J is zero seconds for reliable transports.
    tx = ServerTransactions()
    tx.receive(KEY, now=0.0)
    tx.respond(KEY, b"200", status=200, reliable=True, now=0.0)
    assert len(tx) == 0


def test_timer_is_earliest_deadline_and_table_empties() -> None:
    tx = ServerTransactions(timer_j=32.0, trying_timeout=32.0)
    for i in range(5):
        key = transaction_key(f"via{i}", "c", "1 OPTIONS")
        tx.receive(key, now=float(i))
        tx.respond(key, b"200", status=200, reliable=False, now=float(i))
    assert tx.get_timer() == 32.0
    tx.handle_timer(now=34.0)
    assert len(tx) == 2
    tx.handle_timer(now=100.0)
    assert len(tx) == 0
    assert tx.get_timer() is None


def test_unanswered_transaction_is_dropped_after_trying_timeout() -> None:
    tx = ServerTransactions(trying_timeout=5.0)
    tx.receive(KEY, now=0.0)
    tx.handle_timer(now=5.0)
    assert len(tx) == 0


def test_table_is_bounded() -> None:
    tx = ServerTransactions(max_entries=100)
    for i in range(1000):
        key = transaction_key(f"via{i}", "c", "1 OPTIONS")
        tx.receive(key, now=0.0)
        tx.respond(key, b"200", status=200, reliable=False, now=0.0)
    assert len(tx) == 100
    # The newest ones are kept.
    assert not tx.receive(transaction_key("via999", "c", "1 OPTIONS"), now=0.0).is_new


def test_trying_deadline_does_not_end_a_transaction_completed_since() -> None:
    # Answered 5 s in: the Trying deadline (10 s) passes, the Completed one (5 + Timer J) holds.
    tx = ServerTransactions(trying_timeout=10.0)
    tx.receive(KEY, now=0.0)
    tx.respond(KEY, b"200", status=200, reliable=False, now=5.0)
    assert tx.handle_timer(now=10.0) == 0
    assert tx.receive(KEY, now=20.0).response == b"200"
    assert tx.handle_timer(now=5.0 + TIMER_J) == 1
    assert len(tx) == 0


def test_expired_records_do_not_end_the_same_request_started_again() -> None:
    # The request ends on Timer J and comes again: the first transaction's queue records are
    # gone or stale, and the second one lives its own Timer J.
    tx = ServerTransactions(trying_timeout=1.0)
    tx.receive(KEY, now=0.0)
    tx.handle_timer(now=1.0)  # never answered: dropped
    assert tx.receive(KEY, now=1.5).is_new
    tx.respond(KEY, b"200", status=200, reliable=False, now=1.5)
    assert tx.handle_timer(now=2.5) == 0
    assert tx.receive(KEY, now=3.0).response == b"200"


def test_entries_are_not_tracked_by_the_garbage_collector() -> None:
    # ~128,000 entries live at 2,000 REGISTERs a second: none may be an object a full
    # collection walks (what is left after a young collection is untracked atoms).
    import gc

    tx = ServerTransactions()
    for i in range(100):
        key = transaction_key(f"via{i}", "c", "1 REGISTER")
        tx.receive(key, now=0.0)
        tx.respond(key, b"200", status=200, reliable=False, now=0.0)
    # Keys are strings and the expiry queues hold deadlines and keys apart, atoms the collector
    # never tracks; an entry (a tuple of atoms) is untracked by the first collection that
    # finds it.
    queued = [*tx._completed.deadlines, *tx._completed.keys, *tx._pending.keys]
    assert len(queued) == 300
    assert not any(gc.is_tracked(item) for item in [*tx._entries, *queued])
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in tx._entries.values())
