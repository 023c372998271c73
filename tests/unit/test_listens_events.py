"""AI Listens in a call worker: the listens items' JSON, their trip over the frame link to main's
hub (RemoteListens), and Twilio forks relayed per track (RemoteFork -> ListensForks)."""

from __future__ import annotations

from typing import Any

import pytest

from sipserver.listens.monitor import Item, ListensHub
from sipserver.listens.remote import RemoteListens
from sipserver.observability import Metrics
from sipserver.pipeline.listens_events import listens_item_from_json, listens_item_to_json
from sipserver.pipeline.runtime import ListenParts
from sipserver.pipeline.segmenter import VadOptions
from sipserver.pipeline.session import CallInfo
from sipserver.rtp.framelink import (
    RELAY_CALL_BASE,
    Audio,
    CallEnded,
    Event,
    FrameLinkError,
    LinkRecord,
    RecordDecoder,
    RelayedCallStarted,
    encode,
)
from sipserver.rtp.listens_host import ListenSession, ListensForks, ListensHost
from sipserver.rtp.relay import RemoteSessions
from tests.unit.test_listens import KB, _FakeStt, _FakeVad, listens_config

TRANSCRIPT = {"speaker": "caller", "text": "How much?", "offset": 1.5, "at": 1700000000.0}
STARTED = {
    "call_id": "c1",
    "agent": "a",
    "number": "+15005550199",
    "caller": "+1415",
    "channel": "inbound",
    "transport": "sip",
    "started_at": 1700000000.0,
}


def _wire(record: LinkRecord) -> LinkRecord:
    """``record`` after a trip through the codec (what the peer decodes)."""
    (decoded,) = RecordDecoder().feed(encode(record))
    return decoded


def test_items_round_trip_with_a_stable_type() -> None:
    items: list[tuple[Any, dict[str, Any]]] = [
        ("started", STARTED),
        ("transcript", TRANSCRIPT),
        ("suggestion_delta", {"text": "Our plans"}),
        (
            "suggestion",
            {
                "text": "Starter costs 19 dollars.",
                "sources": [
                    {"title": "Pricing", "source": "pricing.md", "score": 2.1, "text": "x"}
                ],
                "utterance": "How much?",
                "mode": "passage",
                "at": 1.0,
            },
        ),
        ("ended", {"reason": "bye", "lines": 2, "dropped": 0, "suggestions_skipped": {}}),
    ]
    for kind, data in items:
        obj = listens_item_to_json(kind, data)
        assert obj["type"] == f"listens_{kind}"
        back = _wire(Event(7, obj))
        assert isinstance(back, Event)
        item = listens_item_from_json(back.event)
        assert item is not None and item.kind == kind and dict(item.data) == data


def test_other_events_are_not_listens_items_and_bad_fields_are_errors() -> None:
    assert listens_item_from_json({"type": "transcript", "text": "x", "final": True}) is None
    assert listens_item_from_json({"type": "listens_future_kind", "x": 1}) is None
    with pytest.raises(ValueError, match="'text' must be str"):
        listens_item_from_json({**TRANSCRIPT, "type": "listens_transcript", "text": 3})
    with pytest.raises(ValueError, match="'lines' must be int"):
        listens_item_from_json(
            {"type": "listens_ended", "reason": "x", "lines": True, "dropped": 0,
             "suggestions_skipped": {}}
        )  # fmt: skip
    with pytest.raises(ValueError):
        listens_item_to_json("transcript", {"speaker": "caller"})  # the sender's bug is loud


def test_a_bad_item_is_counted_not_a_link_error() -> None:
    remote = RemoteListens(ListensHub(), Metrics())
    assert remote.handle("w1", 1, {"type": "listens_started", "call_id": 5}) is True
    assert remote.bad_items == 1 and len(remote) == 0
    assert remote.handle("w1", 1, {"type": "state", "old": "listening"}) is None  # not ours


def _parts() -> ListenParts:
    return ListenParts(_FakeStt(), _FakeVad(), VadOptions(sample_rate=8000), KB, None)  # type: ignore[arg-type]


async def _until_ended(sub: Any) -> list[Item]:
    items = [await sub.get(timeout=5)]
    while items[-1].kind != "ended":
        items.append(await sub.get(timeout=5))
    return items


async def test_a_sip_listens_call_in_a_worker_reaches_the_hub_as_it_would_locally() -> None:
    """The worker's session publishes EVENT records; main's hub gets the same items a local
    session publishes (transcript and suggestion bodies unchanged), and the metrics count."""
    config = listens_config("inbound")
    agent = config.agents[0]
    sent: list[LinkRecord] = []
    host = ListensHost(lambda a: _parts())
    session = ListenSession(host, agent, _parts(), lambda item: sent.append(Event(3, item)))
    hub, metrics = ListensHub(), Metrics()
    remote = RemoteListens(hub, metrics)
    info = CallInfo("call-1", "a", "sip:+1415@pbx", "sip:+15005550199@127.0.0.1", 8000, "sip")
    session.on_start(info)
    for record in sent:
        assert isinstance(record, Event)
        assert remote.handle("w1", record.call, _wire(record).event) is True  # type: ignore[union-attr]
    sent.clear()
    monitored = hub.get("call-1")
    assert monitored is not None and monitored.summary.transport == "sip"
    assert metrics.listens_calls_active._value.get() == 1
    _, sub = monitored.subscribe()
    session.on_audio(bytes(320))
    assert session.next_frame() == bytes(320)  # silence back, always
    session.on_hangup("bye")
    await host.wait_closed()
    for record in sent:
        remote.handle("w1", 3, _wire(record).event)  # type: ignore[union-attr]
    items = await _until_ended(sub)
    kinds = [i.kind for i in items]
    assert kinds == ["transcript", "suggestion", "ended"], kinds
    assert items[0].data["speaker"] == "caller" and items[0].data["text"].startswith("How much")
    assert items[1].data["sources"][0]["source"] == "pricing.md"
    assert items[2].data["reason"] == "bye"
    assert hub.active == 0 and len(remote) == 0
    assert metrics.listens_calls_active._value.get() == 0


async def test_the_hub_full_refuses_and_a_lost_worker_ends_only_its_calls() -> None:
    hub = ListensHub(max_calls=2)
    remote = RemoteListens(hub, Metrics())
    started = {**STARTED}
    for worker, call, call_id in (("w1", 1, "c1"), ("w2", 1, "c2")):
        obj = listens_item_to_json("started", {**started, "call_id": call_id})
        assert remote.handle(worker, call, obj) is True
    refused = listens_item_to_json("started", {**started, "call_id": "c3"})
    assert remote.handle("w1", 2, refused) is False  # main hangs that call up
    _, sub = hub.get("c1").subscribe()  # type: ignore[union-attr]
    assert remote.worker_lost("w1") == 1
    items = await _until_ended(sub)
    assert items[-1].data["reason"] == "call worker lost"
    assert [s.call_id for s in hub.calls_of("a")] == ["c2"]
    # Items of the lost call arriving late are ignored.
    assert remote.handle("w1", 1, listens_item_to_json("transcript", TRANSCRIPT)) is True


def test_fork_call_started_carries_each_tracks_number_and_rejects_bad_ones() -> None:
    record = RelayedCallStarted(
        RELAY_CALL_BASE, "MZ1", "a", "+1415", "+1500", "twilio", 8000,
        listens={"tracks": {"inbound": RELAY_CALL_BASE, "outbound": RELAY_CALL_BASE + 1}},
    )  # fmt: skip
    assert _wire(record) == record
    plain = RelayedCallStarted(RELAY_CALL_BASE, "MZ1", "a", "+1415", "+1500", "twilio", 8000)
    assert _wire(plain) == plain and b"listens" not in encode(plain)
    bad = RelayedCallStarted(
        RELAY_CALL_BASE, "MZ1", "a", "", "", "twilio", 8000, listens={"tracks": {"inbound": 5}}
    )
    with pytest.raises(FrameLinkError, match="listens"):
        RecordDecoder().feed(encode(bad))


async def test_a_relayed_fork_feeds_each_track_and_ends_with_its_transcription() -> None:
    """Main's RemoteFork -> frame link -> the worker's ListensForks: one relayed number per
    track, frames of each track to its VAD, CALL_ENDED finishes the transcription."""
    config = listens_config("both_tracks")
    to_worker: list[LinkRecord] = []
    to_main: list[LinkRecord] = []
    host = ListensHost(lambda a: _parts())
    forks = ListensForks(host, config.agent_by_slug, to_main.append)
    sessions = RemoteSessions()
    fork = sessions.open_fork("w1", to_worker.append, ("inbound", "outbound"))
    inbound, outbound = fork.tracks["inbound"], fork.tracks["outbound"]
    assert fork.call == inbound and outbound == inbound + 1
    fork.start(CallInfo("MZ1", "a", "+1415", "+15005550199", 8000, "twilio"))
    fork.push("inbound", bytes(320))
    fork.push("outbound", bytes(320))
    fork.push("dtmf", bytes(320))  # not a transcribed track: not sent
    for record in to_worker:
        assert forks.handle(_wire(record)) is True
    assert [type(r) for r in to_worker] == [RelayedCallStarted, Audio, Audio]
    assert len(forks) == 1 and forks.owns(outbound)
    fork.close("stop")
    assert forks.handle(_wire(to_worker[-1])) is True
    assert (
        sessions.forks == 0
        and sessions.open_fork("w1", to_worker.append, ("inbound",)).call == inbound + 2
    )
    await host.wait_closed()
    kinds = [r.event["type"] for r in to_main if isinstance(r, Event)]
    assert kinds[0] == "listens_started" and kinds[-1] == "listens_ended"
    speakers = {
        r.event["speaker"] for r in to_main if isinstance(r, Event) and "speaker" in r.event
    }
    assert speakers == {"caller", "agent"}
    assert all(r.call == inbound for r in to_main if isinstance(r, Event))
    # A record of another relayed call is not the forks'.
    assert forks.handle(CallEnded(RELAY_CALL_BASE + 9, "x", 0)) is False


def test_a_fork_for_an_unknown_agent_is_ended_at_once() -> None:
    to_main: list[LinkRecord] = []
    forks = ListensForks(ListensHost(lambda a: None), lambda slug: None, to_main.append)
    record = RelayedCallStarted(
        RELAY_CALL_BASE, "MZ1", "ghost", "", "", "twilio", 8000,
        listens={"tracks": {"inbound": RELAY_CALL_BASE}},
    )  # fmt: skip
    assert forks.handle(record) is True
    assert to_main == [CallEnded(RELAY_CALL_BASE, "no listens agent for this fork", 404)]
    assert len(forks) == 0
