"""Outbound frame queue of the pjsua2 bridge and the worker's INVITE/INFO parsing helpers."""

from __future__ import annotations

import pytest

pytest.importorskip("pjsua2")

from sipserver.rtp.bridge import BridgeCounters, OutboundFrames, frame_bytes
from sipserver.rtp.pjsua2_ua import _dtmf_info_digit, _parse_invite


def test_frame_bytes() -> None:
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640


def test_outbound_pops_in_order_then_silence_counted_as_underflow() -> None:
    counters = BridgeCounters()
    q = OutboundFrames(4, counters, maxlen=3)
    q.push(b"\x01\x00\x01\x00")
    q.push(b"\x02\x00\x02\x00")
    assert q.pop() == b"\x01\x00\x01\x00"
    assert q.pop() == b"\x02\x00\x02\x00"
    assert q.pop() == bytes(4)
    assert (counters.tx_frames, counters.tx_underflow, counters.tx_overflow) == (2, 1, 0)


def test_outbound_overflow_drops_oldest() -> None:
    counters = BridgeCounters()
    q = OutboundFrames(2, counters, maxlen=2)
    for i in range(5):
        q.push(bytes([i, 0]))
    assert len(q) == 2
    assert counters.tx_overflow == 3
    assert [q.pop(), q.pop()] == [b"\x03\x00", b"\x04\x00"]


def test_outbound_fixes_frame_length_and_clears() -> None:
    counters = BridgeCounters()
    q = OutboundFrames(4, counters)
    q.push(b"\x01\x02")  # short: padded with silence
    q.push(b"\x01\x02\x03\x04\x05\x06")  # long: truncated
    assert q.pop() == b"\x01\x02\x00\x00"
    assert q.pop() == b"\x01\x02\x03\x04"
    q.push(b"\x01\x02\x03\x04")
    q.clear()
    assert len(q) == 0


def test_parse_invite_request_uri_and_headers() -> None:
    msg = (
        "INVITE sip:+15005550101@127.0.0.1:5080;user=phone SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n"
        "X-Folded: first\r\n second\r\n"
        "Content-Type: application/sdp\r\n"
        "\r\n"
        "v=0\r\nX-Not-A-Header: body\r\n"
    )
    uri, headers = _parse_invite(msg)
    assert uri == "sip:+15005550101@127.0.0.1:5080;user=phone"
    assert (
        headers["Via"]
        == "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2"
    )
    assert headers["X-Folded"] == "first second"
    assert "X-Not-A-Header" not in headers


@pytest.mark.parametrize(
    ("body", "expected"),
    [("5", ("5", 0)), (" #\r\n", ("#", 0)), ("a", ("A", 0)), ("", None), ("12", None), ("x", None)],
)
def test_dtmf_info_digit(body: str, expected: tuple[str, int] | None) -> None:
    assert _dtmf_info_digit(body) == expected
