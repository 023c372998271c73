"""SDP parsing (RFC 4566) and offer/answer (RFC 3264) on bodies as real peers send them.

PJSUA2, BARESIP and SIPP were captured from the real programs (pjsua2 2.15.1 through
tests/integration/pjsua2_caller.py, Debian's baresip 1.0, ``sipp -sn uac``) on loopback;
ASTERISK follows chan_pjsip's offer layout.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.rtp.sdp import (
    MediaFormat,
    SdpError,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)

PJSUA2 = (
    b"v=0\r\no=- 4005565882 4005565882 IN IP4 127.0.0.1\r\ns=pjmedia\r\nb=AS:84\r\nt=0 0\r\n"
    b"a=X-nat:0\r\nm=audio 4000 RTP/AVP 0 120\r\nc=IN IP4 127.0.0.1\r\nb=TIAS:64000\r\n"
    b"a=rtcp:4001 IN IP4 127.0.0.1\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:120 telephone-event/8000\r\na=fmtp:120 0-16\r\n"
    b"a=ssrc:802225520 cname:5163b1bc7590a852\r\n"
)
PJSUA2_SRTP = PJSUA2.replace(b"RTP/AVP", b"RTP/SAVP") + (
    b"a=crypto:1 AES_256_CM_HMAC_SHA1_80 "
    b"inline:jvgKph0qUVpLg2T7ColwcxkZbjGPNOVcItnjr4W5wxouvi/V/WxxijYZXGaoKA==\r\n"
    b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:WKN4Mz7oB2ZdT5z+QA8xRDdgHarhHRmIbe4jcdww\r\n"
)
BARESIP = (
    b"v=0\r\no=- 1973680749 620277975 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\n"
    b"t=0 0\r\na=tool:baresip 1.0.0\r\nm=audio 24760 RTP/AVP 9 0 8 101\r\n"
    b"a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\n"
    b"a=rtcp-rsize\r\na=ssrc:2375192244 cname:sip:u@127.0.0.1\r\na=minptime:20\r\n"
    b"a=ptime:20\r\n"
)
SIPP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
ASTERISK = (
    b"v=0\r\no=- 1681 1683 IN IP4 10.0.0.5\r\ns=Asterisk\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 10000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
    b"a=maxptime:150\r\na=sendrecv\r\n"
)
# A softphone with video, Opus first and a G722 whose DTMF is at 16 kHz only (LF line ends).
VIDEO_FIRST = (
    b"v=0\no=alice 1 2 IN IP6 2001:db8::1\ns= \nt=0 0\n"
    b"m=video 5002 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    b"m=audio 5000 RTP/AVP 111 9 102\nc=IN IP6 2001:db8::1\n"
    b"a=rtpmap:111 opus/48000/2\na=rtpmap:102 telephone-event/16000\na=recvonly\n"
)


def test_pjsua2_offer_is_parsed_in_full() -> None:
    offer = parse_sdp(PJSUA2)
    assert (offer.session_id, offer.session_version) == (4005565882, 4005565882)
    assert offer.connection == "127.0.0.1" and offer.port == 4000 and offer.rtcp_port == 4001
    assert offer.formats == (
        MediaFormat(0, "PCMU", 8000),
        MediaFormat(120, "telephone-event", 8000, 1, "0-16"),
    )
    assert offer.direction == "sendrecv" and offer.ptime is None and offer.protocol == "RTP/AVP"
    assert offer.crypto == () and offer.other_media == ()


def test_pjsua2_offer_gets_a_byte_exact_answer() -> None:
    offer = parse_sdp(PJSUA2)
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.remote == ("127.0.0.1", 4000)
    assert negotiated.remote_rtcp == ("127.0.0.1", 4001)
    answer = build_answer(
        offer, negotiated, host="127.0.0.1", port=20000, session_id=7, session_version=7
    )
    assert answer == (
        b"v=0\r\no=sipserver 7 7 IN IP4 127.0.0.1\r\ns=sipserver\r\nc=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\nm=audio 20000 RTP/AVP 0 120\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:120 telephone-event/8000\r\na=fmtp:120 0-16\r\na=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    assert negotiate(parse_sdp(answer)) is not None  # our answer is itself valid SDP


def test_baresip_offer_chooses_g722_first_in_its_order() -> None:
    offer = parse_sdp(BARESIP)
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.codec == MediaFormat(9, "G722", 8000)
    assert negotiated.dtmf == MediaFormat(101, "telephone-event", 8000, 1, "0-15")
    assert negotiated.remote_rtcp == ("192.0.2.2", 24761)  # no a=rtcp: port + 1
    assert negotiated.ptime == 20
    limited = negotiate(offer, codecs=("PCMA", "PCMU"))
    assert limited is not None and limited.codec.name == "PCMU"  # offerer's order, not ours


def test_sipp_offer_without_dtmf() -> None:
    negotiated = negotiate(parse_sdp(SIPP))
    assert negotiated is not None
    assert negotiated.codec.name == "PCMU" and negotiated.dtmf is None
    offer = parse_sdp(SIPP)
    answer = build_answer(offer, negotiated, host="::1", port=4002, session_id=1, session_version=2)
    assert answer == (
        b"v=0\r\no=sipserver 1 2 IN IP6 ::1\r\ns=sipserver\r\nc=IN IP6 ::1\r\nt=0 0\r\n"
        b"m=audio 4002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )


def test_asterisk_offer_prefers_pcma() -> None:
    negotiated = negotiate(parse_sdp(ASTERISK))
    assert negotiated is not None
    assert negotiated.codec == MediaFormat(8, "PCMA", 8000)
    assert negotiated.dtmf is not None and negotiated.dtmf.payload_type == 101


def test_other_media_are_rejected_with_port_zero_in_their_place() -> None:
    offer = parse_sdp(VIDEO_FIRST)
    assert offer.other_media == ("video",)
    assert offer.connection == "2001:db8::1"
    assert [f.name for f in offer.formats] == ["OPUS", "G722", "telephone-event"]
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.codec.name == "G722"
    assert negotiated.dtmf is None  # telephone-event/16000 does not match G722's 8000 clock
    assert negotiated.direction == "sendonly" and not negotiated.on_hold  # they only listen
    answer = build_answer(
        offer, negotiated, host="2001:db8::2", port=30000, session_id=5, session_version=5
    )
    lines = answer.decode().split("\r\n")
    assert lines[5] == "m=video 0 RTP/AVP 96"  # RFC 3264 §6: same order, rejected
    assert lines[6] == "m=audio 30000 RTP/AVP 9"
    assert "a=sendonly" in lines


@pytest.mark.parametrize(
    ("edit", "direction", "on_hold"),
    [
        (b"a=sendrecv", "sendrecv", False),
        (b"a=sendonly", "recvonly", True),
        (b"a=inactive", "inactive", True),
        (b"a=recvonly", "sendonly", False),
    ],
)
def test_hold_by_direction(edit: bytes, direction: str, on_hold: bool) -> None:
    negotiated = negotiate(parse_sdp(PJSUA2.replace(b"a=sendrecv", edit)))
    assert negotiated is not None
    assert negotiated.direction == direction and negotiated.on_hold is on_hold


def test_legacy_hold_by_zero_address() -> None:
    offer = parse_sdp(SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0"))
    negotiated = negotiate(offer)
    assert negotiated is not None and negotiated.on_hold  # RFC 3264 §8.4
    assert negotiated.direction == "sendrecv"


def test_session_level_direction_applies_unless_the_media_says_otherwise() -> None:
    body = SIPP.replace(b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n")
    assert parse_sdp(body).direction == "inactive"
    assert parse_sdp(body + b"a=sendrecv\r\n").direction == "sendrecv"


@pytest.mark.parametrize(
    "body",
    [
        SIPP.replace(b"RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", b"RTP/AVP 18\r\na=rtpmap:18 G729/8000"),
        SIPP.replace(b"m=audio 6000", b"m=audio 0"),  # audio removed
        SIPP.replace(b"m=audio", b"m=video"),  # no audio at all
        SIPP.replace(b"RTP/AVP", b"UDP/TLS/RTP/SAVPF"),  # WebRTC DTLS-SRTP
        PJSUA2_SRTP,  # SDES but no SRTP on our side
    ],
)
def test_offers_we_cannot_take_negotiate_to_none(body: bytes) -> None:
    assert negotiate(parse_sdp(body)) is None


def test_savp_with_srtp_picks_a_suite_we_support() -> None:
    offer = parse_sdp(PJSUA2_SRTP)
    assert offer.protocol == "RTP/SAVP" and len(offer.crypto) == 2
    negotiated = negotiate(offer, srtp=True)
    assert negotiated is not None
    assert negotiated.crypto is not None
    assert negotiated.crypto.startswith("3 AES_CM_128_HMAC_SHA1_80")
    answer = build_answer(
        offer,
        negotiated,
        host="127.0.0.1",
        port=20000,
        session_id=1,
        session_version=1,
        crypto="3 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
    )
    assert b"m=audio 20000 RTP/SAVP 0 120\r\n" in answer
    assert b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\n" in answer


def test_build_offer_round_trips_through_our_own_negotiation() -> None:
    offer_bytes = build_offer(host="127.0.0.1", port=4000, session_id=9, session_version=10)
    assert offer_bytes == (
        b"v=0\r\no=sipserver 9 10 IN IP4 127.0.0.1\r\ns=sipserver\r\nc=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\nm=audio 4000 RTP/AVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    held = parse_sdp(
        build_offer(
            host="127.0.0.1",
            port=4000,
            session_id=9,
            session_version=11,
            codecs=("G722",),
            direction="sendonly",
        )
    )
    negotiated = negotiate(held)
    assert negotiated is not None and negotiated.on_hold and negotiated.codec.name == "G722"
    with pytest.raises(ValueError):
        build_offer(host="h", port=1, session_id=1, session_version=1, codecs=("OPUS",))


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"o=- 1 1 IN IP4 1.2.3.4\r\n", "first line"),
        (b"v=1\r\n", "version"),
        (SIPP.replace(b"o=user1 53655765 2353687637", b"o=user1 x 1"), "line 2"),
        (SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 example.com"), "line 4"),
        (SIPP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP6 127.0.0.1"), "not IP6"),
        (SIPP.replace(b"m=audio 6000", b"m=audio 70000"), "line 6"),
        (SIPP.replace(b"RTP/AVP 0", b"RTP/AVP 0 200"), "payload type"),
        (SIPP.replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:0 PCMU"), "line 7"),
        (SIPP.replace(b"s=-\r\n", b""), "no s="),
        (SIPP.replace(b"c=IN IP4 127.0.0.1\r\n", b""), "no c="),
        (SIPP + b"X=1\r\n", "line 8"),
        (SIPP + b"a=ptime:abc\r\n", "ptime"),
        (b"v=0\r\n\xff\r\n", "UTF-8"),
    ],
)
def test_malformed_sdp_is_rejected_naming_the_line(body: bytes, says: str) -> None:
    with pytest.raises(SdpError, match=says):
        parse_sdp(body)


_LINE = st.one_of(
    st.sampled_from(SIPP.split(b"\r\n") + BARESIP.split(b"\r\n") + PJSUA2.split(b"\r\n")),
    st.binary(max_size=40),
    st.builds(
        lambda t, v: t + b"=" + v,
        st.sampled_from([b"v", b"o", b"c", b"m", b"a", b"t", b"s"]),
        st.text(max_size=30).map(str.encode),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=14))
def test_parse_raises_only_sdp_error(lines: list[bytes]) -> None:
    try:
        offer = parse_sdp(b"\r\n".join(lines))
    except SdpError:
        return
    negotiate(offer)  # whatever parsed is safe to negotiate too


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_raises_only_sdp_error_on_any_bytes(body: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(body)
