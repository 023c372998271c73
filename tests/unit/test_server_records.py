"""The server's side of call records: a SIP call's record joins the edge's events and its
worker's, closes once both said the call is over (or after a grace period), capacity refusals
of a known agent become refused records, and the AI Listens hub records what it publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipserver import server_records as server_records_module
from sipserver.config import Config, parse_config
from sipserver.edge.calls import CallAnswered, CallEnded, CallRouted, Endpoint, EndReason
from sipserver.listens.monitor import CallSummary, ListensHub
from sipserver.observability import Metrics, RefusalLog
from sipserver.pipeline.call_record import CallRecord, MediaQuality
from sipserver.records.store import RecordStore
from sipserver.rtp import framelink
from sipserver.server_records import ServerRecords, sip_ended_by
from sipserver.sip.headers import AGENT_HEADER

CALL_ID = "a84b4c76e66710@pc33.example.com"


def _config(tmp_path: Path, store: str = "sqlite") -> Config:
    raw: dict[str, Any] = {
        "server": {
            "store": "memory",
            "data_dir": str(tmp_path / "var"),
            "records": {"store": store, "flush_interval": 0.02},
        },
        "agents": [{"slug": "support", "sip": {"enabled": False}}],
    }
    return parse_config(yaml.safe_dump(raw), env={})


@pytest.fixture
async def records(tmp_path: Path) -> AsyncIterator[ServerRecords]:
    config = _config(tmp_path)
    recs = ServerRecords(lambda: config, Metrics(), max_calls=lambda: 10)
    await recs.start()
    yield recs
    await recs.stop()


def _routed(call_id: str = CALL_ID) -> CallRouted:
    return CallRouted(call_id, "support", "w1", Endpoint("udp", "192.0.2.1", 5060), at=1.0)


def _ended(reason: EndReason, call_id: str = CALL_ID, status: int | None = 200) -> CallEnded:
    return CallEnded(call_id, "support", "w1", reason, status, at=9.0, duration=7.0)


def _started(call: int = 7, call_id: str = CALL_ID) -> framelink.CallStarted:
    return framelink.CallStarted(
        call=call,
        sip_call_id=call_id,
        from_uri="<sip:+14155550123@192.0.2.1>;tag=1928301774",
        to_uri="<sip:+15005550101@192.0.2.9>",
        request_uri="sip:+15005550101@127.0.0.1:5070",
        codec="PCMU/8000",
        remote_rtp="192.0.2.1:4000",
        headers={AGENT_HEADER: "support"},
        hosted=True,
    )


async def _stored(recs: ServerRecords, record_id: str) -> CallRecord:
    assert recs.store is not None
    await asyncio.to_thread(recs.store.flush)
    record = await asyncio.to_thread(recs.store.get, record_id)
    assert record is not None
    return record


async def test_a_sip_call_record_waits_for_its_worker_s_last_events(
    records: ServerRecords,
) -> None:
    ended: list[CallRecord] = []
    records.on_ended = ended.append
    records.proxy_event(_routed())
    assert records.book is not None
    record = records.book.get(("sip", CALL_ID))
    assert record is not None and record.answered_at is None
    records.call_started("w1", _started())
    records.proxy_event(CallAnswered(CALL_ID, "support", "w1", at=1.5, setup_time=0.5))
    line = {"type": "transcript", "offset": 1.0, "speaker": "caller", "text": "What time?"}
    records.record_events("w1", 7, {"type": "record", "events": [line]})
    records.record_events("w2", 7, {"type": "record", "events": [line]})  # another worker's
    # The caller's BYE passes the edge before the worker's last events and CALL_ENDED.
    records.proxy_event(_ended(EndReason.CALLER_BYE))
    assert ended == []
    last = {"type": "transcript", "offset": 3.0, "speaker": "agent", "text": "Nine."}
    records.record_events("w1", 7, {"type": "record", "events": [last]})
    media = {"type": "record_media", "lost": 4, "concealed": 2, "late": 1, "codec": "PCMU"}
    records.record_events("w1", 7, media)
    records.call_ended("w1", framelink.CallEnded(7, "bye"))
    assert [r.id for r in ended] == [record.id]
    stored = await _stored(records, record.id)
    assert stored.ingress == "sip" and stored.sip_call_id == CALL_ID
    assert (stored.caller, stored.called, stored.codec) == ("+14155550123", "+15005550101", "PCMU")
    assert stored.answered_at is not None
    assert (stored.end_reason, stored.ended_by) == ("caller_bye", "caller")
    assert stored.media == MediaQuality(lost=4, concealed=2, late=1)
    assert [e.data["text"] for e in stored.events] == ["What time?", "Nine."]


async def test_the_worker_ending_first_and_a_dtmf_hangup(records: ServerRecords) -> None:
    records.proxy_event(_routed())
    records.call_started("w1", _started())
    end = {"type": "end", "offset": 5.0, "reason": "dtmf #", "ended_by": "dtmf"}
    records.record_events("w1", 7, {"type": "record", "events": [end]})
    records.call_ended("w1", framelink.CallEnded(7, "session"))
    assert records.book is not None and ("sip", CALL_ID) in records.book
    records.proxy_event(_ended(EndReason.WORKER_BYE))
    assert ("sip", CALL_ID) not in records.book
    assert records.store is not None
    await asyncio.to_thread(records.store.flush)
    page = await asyncio.to_thread(records.store.search)
    assert [(r.end_reason, r.ended_by) for r in page.records] == [("worker_bye", "dtmf")]


async def test_a_silent_worker_does_not_keep_the_record_open(
    records: ServerRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_records_module, "WORKER_END_GRACE", 0.05)
    records.proxy_event(_routed())
    records.call_started("w1", _started())
    records.proxy_event(_ended(EndReason.SESSION_EXPIRED))
    assert records.book is not None and len(records.book) == 1
    for _ in range(100):
        if not len(records.book):
            break
        await asyncio.sleep(0.02)
    assert len(records.book) == 0
    # A call cancelled before its worker answered closes at once.
    records.proxy_event(_routed("other@x"))
    records.proxy_event(_ended(EndReason.CANCELLED, "other@x", 487))
    assert len(records.book) == 0
    assert records.store is not None
    await asyncio.to_thread(records.store.flush)
    page = await asyncio.to_thread(records.store.search)
    assert {(r.end_reason, r.ended_by) for r in page.records} == {
        ("session_expired", "timeout"),
        ("cancelled", "caller"),
    }


def test_edge_end_reasons_map_to_who_ended_the_call() -> None:
    assert sip_ended_by(EndReason.CALLER_BYE, 200) == "caller"
    assert sip_ended_by(EndReason.WORKER_BYE, 200) == "agent"
    assert sip_ended_by(EndReason.TIMEOUT, 408) == "timeout"
    assert sip_ended_by(EndReason.WORKER_LOST, None) == "error"
    assert sip_ended_by(EndReason.REJECTED, 503) == "refused"
    assert sip_ended_by(EndReason.REJECTED, 500) == "error"


async def test_capacity_refusals_of_an_agent_become_refused_records(
    records: ServerRecords,
) -> None:
    log = RefusalLog(Metrics())
    log.on_refused = records.refused
    log.refuse(
        "sip", "agent_full", agent="support", source="192.0.2.1", call_id="r@x", caller="+1415"
    )
    log.refuse("websocket", "server_full", agent="support", source="192.0.2.1")
    log.refuse("sip", "acl_denied", agent="support", source="192.0.2.1")  # not capacity
    log.refuse("sip", "server_full", agent=None, source="192.0.2.1")  # no agent
    log.refuse("login", "busy", source="192.0.2.1")
    assert records.store is not None
    await asyncio.to_thread(records.store.flush)
    page = await asyncio.to_thread(records.store.search)
    got = sorted((r.ingress, r.end_reason, r.sip_call_id, r.caller) for r in page.records)
    assert got == [("sip", "agent_full", "r@x", "+1415"), ("websocket", "server_full", None, "")]
    assert all(r.ended_by == "refused" for r in page.records)


async def test_the_listens_hub_records_transcripts_suggestions_and_the_end(
    records: ServerRecords,
) -> None:
    hub = ListensHub(records=records)
    summary = CallSummary("MZ123", "support", "+15005550102", "+1415", "both_tracks", "twilio", 0)
    hub.note_call_sid("MZ123", "CA42")
    call = hub.open(summary)
    assert call is not None
    call.publish("transcript", {"speaker": "caller", "text": "My order is late", "offset": 1.5})
    call.publish("suggestion_delta", {"text": "Apol"})  # streamed pieces are not recorded
    call.publish(
        "suggestion",
        {"text": "Apologise", "sources": [{"title": "Delays", "source": "kb/d.md"}], "mode": "x"},
    )
    call.publish("transcript", {"speaker": "agent", "text": "Sorry about that", "offset": 3.0})
    call.end("stop")
    assert records.store is not None
    await asyncio.to_thread(records.store.flush)
    (record,) = (await asyncio.to_thread(records.store.search)).records
    full = await _stored(records, record.id)
    assert (full.ingress, full.called) == ("listens_twilio", "+15005550102")
    assert full.ended_by == "caller" and full.call_sid == "CA42"
    assert [(e.type, e.data.get("speaker")) for e in full.events] == [
        ("transcript", "caller"),
        ("suggestion", None),
        ("transcript", "agent"),
    ]
    assert full.events[1].data == {"text": "Apologise", "title": "Delays", "source": "kb/d.md"}

    # A SIP listens call shares the SIP call's record, which the SIP side closes.
    records.proxy_event(_routed())
    sip = hub.open(CallSummary(CALL_ID, "support", "+15005550102", "+1415", "inbound", "sip", 0))
    assert sip is not None
    sip.publish("transcript", {"speaker": "caller", "text": "Hello", "offset": 0.5})
    sip.end("bye")
    assert records.book is not None
    open_record = records.book.get(("sip", CALL_ID))
    assert open_record is not None and open_record.ingress == "listens_sip"
    records.proxy_event(_ended(EndReason.CALLER_BYE))
    assert ("sip", CALL_ID) not in records.book


async def test_records_off_is_a_quiet_no_op(tmp_path: Path) -> None:
    config = _config(tmp_path, store="none")
    recs = ServerRecords(lambda: config, Metrics(), max_calls=lambda: 10)
    await recs.start()
    assert recs.book is None and recs.store is None
    recs.proxy_event(_routed())
    recs.refused("sip", "agent_full", {"agent": "support"})
    assert recs.open("k", agent="support", ingress="websocket") is None
    await recs.stop()
    assert not (tmp_path / "var" / "records.db").exists()


async def test_a_relayed_call_s_record_waits_for_its_last_events(
    records: ServerRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_records_module, "RELAYED_END_GRACE", 0.05)
    key = ("ws", "MZ1")
    records.relayed_call("w1", 0x8000_0001, key)
    records.open(key, agent="support", ingress="twilio", call_sid="CA1")
    assert records.close(key, end_reason="stop", ended_by="caller") is None  # not yet
    last = {"type": "transcript", "offset": 2.0, "speaker": "agent", "text": "Bye now"}
    records.record_events("w1", 0x8000_0001, {"type": "record", "events": [last]})
    assert records.book is not None and key in records.book
    for _ in range(100):
        if key not in records.book:
            break
        await asyncio.sleep(0.02)
    assert key not in records.book
    assert records.store is not None
    await asyncio.to_thread(records.store.flush)
    (row,) = (await asyncio.to_thread(records.store.search)).records
    full = await _stored(records, row.id)
    assert (full.end_reason, full.ended_by) == ("stop", "caller")
    assert [e.data["text"] for e in full.events] == ["Bye now"]
    # A relayed call still closing at stop keeps its own end.
    records.relayed_call("w1", 0x8000_0002, ("ws", "MZ2"))
    records.open(("ws", "MZ2"), agent="support", ingress="websocket")
    records.close(("ws", "MZ2"), end_reason="hangup", ended_by="agent")
    assert records.store is not None
    path = records.store.path
    await records.stop()
    reader = RecordStore(path)
    reader.open()
    page = reader.search(agents=["support"])
    reader.close()
    assert {(r.end_reason, r.ended_by) for r in page.records} == {
        ("stop", "caller"),
        ("hangup", "agent"),
    }
