"""Call records on the worker side: a call worker's hosted SIP calls and relayed calls send their
record events to main as EVENT records, ``record_media`` before CALL_ENDED; main's seam
(``MediaWorkers.on_record_events``) takes them, and records the pjsua2 workers' calls whose
sessions run in main (docs/framelink.md, "Call records").

The engine, clock and links are the fakes of tests/unit/test_call_worker.py; the sessions are
the real echo line's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from sipserver.pipeline.call_record import RecordEvent
from sipserver.pipeline.record_tap import RecordedSession
from sipserver.rtp.call_worker import relayed_calls
from sipserver.rtp.framelink import (
    RELAY_CALL_BASE,
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    LinkRecord,
    RelayedCallStarted,
)
from sipserver.server import Server
from tests.unit.test_call_worker import (
    FakeCall,
    OpenLink,
    RecordingWorker,
    configured,
    echo_config,
    loud,
    worker_of,
)

RATE = 8000


def record_events(records: list[LinkRecord], call: int) -> list[RecordEvent]:
    """The record events of ``call`` in EVENT ``record`` payloads, in order."""
    return [
        RecordEvent.from_json(e)
        for r in records
        if isinstance(r, Event) and r.call == call and r.event.get("type") == "record"
        for e in r.event["events"]
    ]


def kinds(records: list[LinkRecord], call: int) -> list[str]:
    """What went to main for ``call``: record types, EVENT payload types."""
    out = []
    for r in records:
        if isinstance(r, Event) and r.call == call:
            out.append(str(r.event["type"]))
        elif isinstance(r, Dtmf | CallEnded | CallStarted) and r.call == call:
            out.append(type(r).__name__)
    return out


# ------------------------------------------------------------------------- SIP calls


async def test_a_sip_call_sends_its_records_then_record_media_then_call_ended() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())  # server.records.store defaults to sqlite
    assert worker.records_on
    call = worker.fake_engine.answer(FakeCall(7))
    call.stream.incoming = [loud() for _ in range(50)]
    worker.fake_clock.run(50)
    worker.on_dtmf(call, "3", 160, "rfc4733")  # not the echo line's hang-up key
    worker.fake_clock.run(10)
    worker.on_dtmf(call, "#", 160, "rfc4733")  # the echo line hangs up
    assert kinds(worker.sent, 7) == [
        "CallStarted",
        "Dtmf",
        "record",  # the '3' (sent with its tick)
        "Dtmf",
        "record",  # the '#' and the end, at the hang-up
        "record_media",
        "CallEnded",
    ]
    events = record_events(worker.sent, 7)
    assert [(e.type, e.offset) for e in events] == [
        ("dtmf", pytest.approx(50 * 0.02)),
        ("dtmf", pytest.approx(60 * 0.02)),
        ("end", pytest.approx(60 * 0.02)),
    ]
    assert events[2].data == {"reason": "dtmf", "ended_by": "dtmf"}
    (media,) = [r for r in worker.sent_of(Event) if r.event["type"] == "record_media"]
    # FakeStream.stats(): lost 1, concealed_frames 1, no late counter.
    assert media.event == {
        "type": "record_media",
        "lost": 1,
        "concealed": 1,
        "late": 0,
        "codec": "PCMU/8000",
    }
    # The echo line played as without records: one frame per tick.
    assert len(call.stream.written) == 60


async def test_a_sip_call_recorder_gets_every_tick_and_is_closed() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config())
    adds: list[tuple[int, int]] = []
    closed: list[str] = []

    class Recorder:
        def add(self, caller_frames: Any, agent_frame: bytes) -> None:
            adds.append((len(caller_frames), len(agent_frame)))

        def close(self) -> None:
            closed.append("closed")

    worker.recorders = lambda info, send: Recorder()
    call = worker.fake_engine.answer(FakeCall(2))
    worker.fake_clock.run(25)
    worker.on_record(CallEnded(2, "admin", 0))  # main hangs up: no `end` from the session
    assert adds == [(1, 320)] * 25 and closed == ["closed"]
    assert [e.type for e in record_events(worker.sent, 2)] == []
    assert kinds(worker.sent, 2)[-2:] == ["record_media", "CallEnded"]
    assert call.stream.written


async def test_records_off_sends_no_record_events() -> None:
    worker = RecordingWorker()
    await configured(worker, echo_config(records={"store": "none"}))
    assert not worker.records_on
    call = worker.fake_engine.answer(FakeCall(3))
    worker.fake_clock.run(5)
    worker.on_dtmf(call, "#", 160, "rfc4733")
    assert kinds(worker.sent, 3) == ["CallStarted", "Dtmf", "CallEnded"]


# --------------------------------------------------------------------- relayed calls


async def test_relayed_calls_send_their_records_with_their_own_call_number() -> None:
    worker = RecordingWorker(relay_factory=relayed_calls)
    await configured(worker, echo_config())
    worker.sent.clear()
    call = RELAY_CALL_BASE + 5
    worker.on_record(RelayedCallStarted(call, "MZ9", "echo", "+1415", "", "twilio", RATE))
    for tick in range(4):
        worker.on_record(Audio((AudioFrame(call, tick, tick * 160, loud()),)))
    worker.on_record(Dtmf(call, "#", 0, "stream"))
    assert kinds(worker.sent, call) == ["record", "CallEnded"]
    events = record_events(worker.sent, call)
    assert [e.type for e in events] == ["dtmf", "end"]
    assert events[0].offset == pytest.approx(4 * 0.02)
    assert events[1].data == {"reason": "dtmf", "ended_by": "dtmf"}

    # Main ends the next one: the worker answers with what the hang-up raised.
    worker.sent.clear()
    worker.on_record(RelayedCallStarted(call + 1, "MZ10", "echo", "", "", "twilio", RATE))
    worker.on_record(Dtmf(call + 1, "1", 0, "stream"))  # recorded, not yet sent (no tick)
    worker.on_record(CallEnded(call + 1, "closed", 0))
    assert [e.type for e in record_events(worker.sent, call + 1)] == ["dtmf"]


# ---------------------------------------------------------------------- main's seam


def seam(server: Server) -> list[tuple[str, int, Mapping[str, Any]]]:
    got: list[tuple[str, int, Mapping[str, Any]]] = []
    server.media_workers.on_record_events = lambda w, c, payload: got.append((w, c, payload))
    return got


def test_main_takes_record_events_first_and_nothing_else_sees_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = Server(echo_config(media={"engine": "native"}))
    got = seam(server)
    worker = worker_of("native", ready=True)
    batch = {"type": "record", "events": [{"type": "dtmf", "offset": 1.0, "digit": "5"}]}
    media = {"type": "record_media", "lost": 0, "concealed": 2, "late": 1, "codec": "PCMA"}
    server.media_workers._worker_record(worker, Event(4, batch))
    server.media_workers._worker_record(worker, Event(RELAY_CALL_BASE, media))
    assert got == [("w1", 4, batch), ("w1", RELAY_CALL_BASE, media)]
    assert cast(OpenLink, worker.link).sent == []  # nothing answered, nothing refused
    # Other EVENTs never reach the seam.
    server.media_workers._worker_record(worker, Event(4, {"type": "state", "at": 1.0}))
    assert len(got) == 2
    # No hook: dropped quietly.
    server.media_workers.on_record_events = None
    server.media_workers._worker_record(worker, Event(4, batch))
    assert len(got) == 2


def test_pjsua2_calls_whose_sessions_run_in_main_are_recorded_through_the_seam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = Server(echo_config())  # engine pjsua2: the sessions run here
    got = seam(server)  # the pool (and its session host) exists already: passed on
    assert server.sessions is not None
    worker = worker_of("pjsua2", ready=True)
    started = CallStarted(9, "c9", "a", "<sip:+15005550101@x>", "r", "PCMU/8000", "h:1",
                          {"X-Sipserver-Agent": "echo"})  # fmt: skip
    server.media_workers._worker_record(worker, started)
    assert len(server.sessions) == 1
    for seq in range(3):
        server.media_workers._worker_record(worker, Audio((AudioFrame(9, seq, 0, loud()),)))
    server.media_workers._worker_record(worker, Dtmf(9, "#", 100, "rfc4733"))
    sent = cast(OpenLink, worker.link).sent
    assert CallEnded(9, "dtmf", 0) in sent
    (call_worker, call, payload) = got[-1]
    assert (call_worker, call, payload["type"]) == ("w1", 9, "record")
    events = [RecordEvent.from_json(e) for e in payload["events"]]
    assert [e.type for e in events] == ["dtmf", "end"]
    assert events[1].data == {"reason": "dtmf", "ended_by": "dtmf"}
    assert events[0].offset == pytest.approx(3 * 0.02)


def test_pjsua2_sessions_are_not_wrapped_with_records_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = Server(echo_config(records={"store": "none"}))
    got = seam(server)
    assert server.sessions is not None
    worker = worker_of("pjsua2", ready=True)
    started = CallStarted(9, "c9", "a", "<sip:+15005550101@x>", "r", "PCMU/8000", "h:1",
                          {"X-Sipserver-Agent": "echo"})  # fmt: skip
    server.media_workers._worker_record(worker, started)
    session = server.sessions._calls[("w1", 9)].session
    assert not isinstance(session, RecordedSession)
    server.media_workers._worker_record(worker, Dtmf(9, "#", 100, "rfc4733"))
    assert got == []
