"""The call record book: a record is listed while the call is in progress, collects its events,
is closed with who ended it, and hands itself to the callbacks; the open-record cap and the
refusal rate bound what a flood can write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sipserver.pipeline.call_record import CallBook, CallRecord, MediaQuality, RecordEvent
from sipserver.records.book import CallRecordBook, max_open_records
from sipserver.records.store import RecordStore


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    s = RecordStore(tmp_path / "records.db", flush_interval=0.02)
    s.open()
    yield s
    s.close()


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_call_is_listed_while_in_progress_then_closed_with_its_events(
    store: RecordStore,
) -> None:
    clock = _Clock()
    registry = CollectorRegistry()
    started: list[CallRecord] = []
    turns: list[tuple[str, int]] = []
    ended: list[CallRecord] = []
    book = CallRecordBook(
        store,
        clock=clock,
        on_started=started.append,
        on_turn=lambda r, e: turns.append((r.id, int(e.data["index"]))),
        on_ended=ended.append,
        registry=registry,
    )
    key = ("sip", "abc@host")
    record = book.open(key, agent="support", ingress="sip", sip_call_id="abc@host", answered=False)
    assert record is not None and started == [record]
    assert book.is_open(record.id) and not book.is_open("not-a-record")
    store.flush()
    listed = store.get(record.id)
    assert listed is not None and listed.ended_at is None and listed.answered_at is None

    clock.now += 0.5
    book.answered(key)
    book.update(key, caller="+14155550123", called="+15550001", codec="PCMU")
    book.add(key, [RecordEvent("transcript", 1.0, {"speaker": "caller", "text": "Hello there"})])
    book.add_json(
        key,
        [
            {"type": "turn", "offset": 2.0, "index": 0, "stages": {}, "voice_to_voice": 900},
            {"type": "transcript", "offset": 2.5, "speaker": "agent", "text": "Hi!"},
            {"offset": 3.0},  # malformed: dropped and counted
        ],
    )
    book.media(key, MediaQuality(lost=2, concealed=1, late=0))
    store.flush()
    live = store.get(record.id)
    assert live is not None
    assert live.caller == "+14155550123" and live.codec == "PCMU"
    assert live.answered_at == clock.now and live.ended_at is None
    assert [e.type for e in live.events] == ["transcript", "turn", "transcript"]
    assert turns == [(record.id, 0)]
    assert _sample(registry, "sipserver_call_record_bad_events_total") == 1
    assert _sample(registry, "sipserver_call_records_open") == 1

    clock.now += 10
    closed = book.close(key, end_reason="caller_bye", ended_by="caller")
    assert closed is record and key not in book and not book.is_open(record.id)
    assert ended == [record] and len(record.events) == 3  # the webhook gets the events
    store.flush()
    final = store.get(record.id)
    assert final is not None
    assert final.ended_at == clock.now and final.duration == pytest.approx(10.0)
    assert (final.end_reason, final.ended_by) == ("caller_bye", "caller")
    assert final.media == MediaQuality(lost=2, concealed=1, late=0)
    assert "Hello there" in final.transcript_text()
    assert _sample(registry, "sipserver_call_records_total", ingress="sip", ended_by="caller") == 1
    assert book.close(key, end_reason="again", ended_by="caller") is None


def test_opening_an_open_key_merges_facts_without_erasing_them(store: RecordStore) -> None:
    book = CallRecordBook(store)
    key = ("sip", "fork@pbx")
    first = book.open(key, agent="support", ingress="sip", caller="+1415", answered=False)
    again = book.open(key, agent="support", ingress="listens_sip", called="+1555")
    assert again is first and first is not None
    assert (first.ingress, first.caller, first.called) == ("listens_sip", "+1415", "+1555")
    assert first.answered_at is not None  # the second open says it is answered
    assert len(book) == 1


def test_the_session_end_event_says_a_dtmf_hangup_when_the_ingress_saw_the_agent(
    store: RecordStore,
) -> None:
    book = CallRecordBook(store)
    book.open("a", agent="echo", ingress="sip")
    book.add("a", [RecordEvent("end", 4.0, {"reason": "dtmf #", "ended_by": "dtmf"})])
    closed = book.close("a", end_reason="worker_bye", ended_by="agent")
    assert closed is not None and closed.ended_by == "dtmf"
    # The caller hanging up first is the caller's, whatever the session wanted.
    book.open("b", agent="echo", ingress="sip")
    book.add("b", [RecordEvent("end", 4.0, {"reason": "dtmf #", "ended_by": "dtmf"})])
    closed = book.close("b", end_reason="caller_bye", ended_by="caller")
    assert closed is not None and closed.ended_by == "caller"


def test_open_records_are_capped_and_the_rest_counted(store: RecordStore) -> None:
    registry = CollectorRegistry()
    book = CallRecordBook(store, max_open=2, registry=registry)
    assert book.open(1, agent="a", ingress="websocket") is not None
    assert book.open(2, agent="a", ingress="websocket") is not None
    assert book.open(3, agent="a", ingress="websocket") is None
    assert _sample(registry, "sipserver_call_records_not_recorded_total", reason="cap") == 1
    book.add(3, [RecordEvent("dtmf", 1.0, {"digit": "1"})])  # an unrecorded call: ignored
    book.close(1, end_reason="stop", ended_by="caller")
    assert book.open(3, agent="a", ingress="websocket") is not None
    assert max_open_records(100) == 1200


def test_refusals_become_records_at_a_bounded_rate_per_agent(store: RecordStore) -> None:
    clock = _Clock()
    registry = CollectorRegistry()
    ended: list[CallRecord] = []
    book = CallRecordBook(
        store, clock=clock, refusals_per_second=3, registry=registry, on_ended=ended.append
    )
    made = [
        book.refused(agent="support", ingress="websocket", reason="agent_full") for _ in range(5)
    ]
    assert sum(r is not None for r in made) == 3
    other = book.refused(agent="sales", ingress="sip", reason="server_full", sip_call_id="x@y")
    assert other is not None and other.sip_call_id == "x@y"
    clock.now += 1.0
    assert book.refused(agent="support", ingress="twilio", reason="agent_full") is not None
    assert (
        _sample(registry, "sipserver_call_records_not_recorded_total", reason="refusal_rate") == 2
    )
    assert len(ended) == 5 and len(book) == 0
    store.flush()
    page = store.search(agents=["support"])
    assert len(page.records) == 4
    for record in page.records:
        assert record.ended_by == "refused" and record.end_reason == "agent_full"
        assert record.answered_at is None and record.ended_at is not None


def test_close_all_ends_the_open_records_as_the_server_s(store: RecordStore) -> None:
    book = CallRecordBook(store)
    for key in ("x", "y"):
        book.open(key, agent="a", ingress="twilio", call_sid="CA1")
    assert book.close_all() == 2 and len(book) == 0
    store.flush()
    records = store.search().records
    assert {(r.ended_by, r.end_reason) for r in records} == {("server", "server_stop")}


def test_a_failing_callback_does_not_break_the_call(store: RecordStore) -> None:
    def boom(record: CallRecord) -> None:
        raise RuntimeError("webhook bug")

    book = CallRecordBook(store, on_started=boom, on_ended=boom)
    assert book.open("k", agent="a", ingress="websocket") is not None
    assert book.close("k", end_reason="stop", ended_by="caller") is not None


def test_unknown_values_are_refused_or_mapped(store: RecordStore) -> None:
    book = CallRecordBook(store)
    with pytest.raises(ValueError, match="unknown ingress"):
        book.open("k", agent="a", ingress="carrier-pigeon")
    book.open("k", agent="a", ingress="sip")
    with pytest.raises(TypeError, match="unknown fields"):
        book.update("k", ended_at=1.0)
    closed = book.close("k", end_reason="??", ended_by="martians")
    assert closed is not None and closed.ended_by == "error"


def test_the_book_is_a_call_book(store: RecordStore) -> None:
    book: CallBook = CallRecordBook(store)  # the ingresses' protocol (mypy checks it)
    assert book.offset("none") == 0.0
