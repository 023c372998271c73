"""Frame link records of relayed calls (main -> worker CALL_STARTED, EVENT, DTMF "stream") and
the JSON form of session events they carry."""

from __future__ import annotations

import json
import struct

import pytest

from sipserver.pipeline.events import (
    AgentState,
    AgentText,
    CallEndRequested,
    Interruption,
    ProviderFailed,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
    TurnPrediction,
    event_from_json,
    event_to_json,
)
from sipserver.rtp.framelink import (
    RELAY_CALL_BASE,
    CallStarted,
    Dtmf,
    Event,
    FrameLinkError,
    LinkRecord,
    RecordDecoder,
    RelayedCallStarted,
    encode,
)

RELAYED = RelayedCallStarted(
    RELAY_CALL_BASE + 5, "MZ123", "support", "+14155550123", "+14155550100", "twilio", 8000
)


def _record(rtype: int, payload: bytes) -> bytes:
    return struct.pack("<IB", len(payload) + 1, rtype) + payload


def _decode_one(data: bytes) -> LinkRecord:
    records = RecordDecoder().feed(data)
    assert len(records) == 1
    return records[0]


@pytest.mark.parametrize(
    "record",
    [
        RELAYED,
        RelayedCallStarted(0xFFFFFFFF, "ü", "", "", "", "websocket", 16000),
        Event(RELAY_CALL_BASE, {"type": "interruption", "at": 1.5, "kind": "paused", "heard": ""}),
        Event(RELAY_CALL_BASE + 1, {"type": "rewind", "ms": 200}),
        Dtmf(RELAY_CALL_BASE, "#", 0, "stream"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_round_trip(record: LinkRecord) -> None:
    data = encode(record)
    assert _decode_one(data) == record
    assert encode(_decode_one(data)) == data


def test_relayed_call_started_wire_layout() -> None:
    body = (
        b'{"call_id":"MZ123","agent":"support","caller":"+14155550123",'
        b'"called":"+14155550100","transport":"twilio","sample_rate":8000}'
    )
    assert encode(RELAYED) == _record(2, struct.pack("<I", RELAY_CALL_BASE + 5) + body)


def test_event_wire_layout_is_the_documented_json() -> None:
    data = encode(Event(RELAY_CALL_BASE + 2, {"type": "rewind", "ms": 200}))
    assert data[4] == 10
    assert json.loads(data[5:]) == {
        "call": RELAY_CALL_BASE + 2,
        "event": {"type": "rewind", "ms": 200},
    }


def test_dtmf_stream_method_code_is_3() -> None:
    assert encode(Dtmf(RELAY_CALL_BASE, "5", 0, "stream"))[-1] == 3


def test_call_started_below_the_relay_base_stays_a_worker_call() -> None:
    sip = CallStarted(RELAY_CALL_BASE - 1, "c", "f", "t", "r", "PCMU/8000", "h:1")
    assert isinstance(_decode_one(encode(sip)), CallStarted)


@pytest.mark.parametrize(
    "record",
    [
        RelayedCallStarted(RELAY_CALL_BASE - 1, "c", "a", "", "", "websocket", 8000),
        Event(1, {"no": "type"}),
        Event(-1, {"type": "x"}),
        Event(1, {"type": "x", "bad": object()}),
    ],
)
def test_encode_rejects(record: LinkRecord) -> None:
    with pytest.raises(ValueError):
        encode(record)


@pytest.mark.parametrize(
    "data",
    [
        # relayed CALL_STARTED without its sample rate
        _record(
            2,
            struct.pack("<I", RELAY_CALL_BASE) + b'{"call_id":"a","agent":"b","caller":"",'
            b'"called":"","transport":"websocket"}',
        ),
        _record(10, b'{"call":1}'),  # no event
        _record(10, b'{"call":1,"event":{"ms":1}}'),  # event without type
        _record(10, b'{"call":-1,"event":{"type":"x"}}'),
        _record(10, b'{"call":true,"event":{"type":"x"}}'),
        _record(10, b"[1]"),
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(FrameLinkError):
        RecordDecoder().feed(data)


EVENTS: list[SessionEvent] = [
    StateChanged(1.0, AgentState.LISTENING, AgentState.SPEAKING),
    TranscriptReceived(2.0, "hello there", False),
    TurnCommitted(3.0, "hello there", 0.91),
    TurnCommitted(3.5, "x", None),
    TurnPrediction(3.2, "skipped_question"),
    AgentText(4.0, "Hi! How can I help?"),
    Interruption(5.0, "interrupted", "Hi! How"),
    TurnLatency(6.0, 1.0, 1.2, 1.5, 1.7, 1.8, True),
    TurnLatency(6.5, None, None, None, None, None, False),
    CallEndRequested(7.0, "goodbye"),
    ProviderFailed(8.0, "llm", "timeout"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_json_round_trip(event: SessionEvent) -> None:
    obj = event_to_json(event)
    assert isinstance(obj["type"], str)
    # Through real JSON text, as on the wire.
    assert event_from_json(json.loads(json.dumps(obj))) == event


def test_event_json_tags_are_stable() -> None:
    assert [event_to_json(e)["type"] for e in EVENTS] == [
        "state",
        "transcript",
        "turn",
        "turn",
        "turn_prediction",
        "agent_text",
        "interruption",
        "latency",
        "latency",
        "end_requested",
        "provider_failed",
    ]
    assert event_to_json(EVENTS[0]) == {
        "type": "state",
        "at": 1.0,
        "old": "listening",
        "new": "speaking",
    }


def test_unknown_event_type_is_ignored_not_an_error() -> None:
    assert event_from_json({"type": "from_the_future", "x": 1}) is None


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "state", "at": 1, "old": "listening", "new": "dancing"},
        {"type": "transcript", "at": 1, "text": "x", "final": "yes"},
        {"type": "agent_text", "text": "x"},
        {"type": "agent_text", "at": True, "text": "x"},
        {"type": "interruption", "at": 1, "kind": 3},
    ],
)
def test_malformed_known_event_raises(obj: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        event_from_json(obj)
