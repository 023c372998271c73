"""SDES-SRTP: a=crypto lines (RFC 4568) and libsrtp protection both ways."""

from __future__ import annotations

import base64

import pytest
from aiortc.rtp import RtcpRrPacket, RtpPacket

from sipserver.rtp.sdes import SrtpContext, SrtpError, make_crypto, parse_crypto
from sipserver.rtp.sdp import negotiate, parse_sdp
from tests.unit.test_sdp import PJSUA2, PJSUA2_SRTP

KEY = base64.b64encode(bytes(range(30))).decode()


def test_crypto_lines_we_can_and_cannot_use() -> None:
    line = parse_crypto(f"3 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")  # a lifetime is fine
    assert (line.tag, line.suite, line.key) == (3, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    assert str(line) == f"3 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"
    for bad, says in [
        (f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}", "suite"),  # no libsrtp profile for it
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4", "MKI"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!", "base64"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "not 30"),
        (f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY}", "tag"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}", "several"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_crypto(bad)


def test_negotiate_picks_the_first_usable_crypto_line_only_when_srtp_is_allowed() -> None:
    offer = parse_sdp(PJSUA2_SRTP)  # AES_256 first (not usable), then AES_CM_128_HMAC_SHA1_80
    assert negotiate(offer) is None
    chosen = negotiate(offer, srtp=True)
    assert chosen is not None and chosen.crypto is not None
    assert parse_crypto(chosen.crypto).tag == 3
    # RTP/AVP with crypto lines: SRTP as an option (pjsip's "optional")
    optional = parse_sdp(PJSUA2 + PJSUA2_SRTP.split(b"a=ssrc")[1].split(b"\r\n", 1)[1])
    assert optional.protocol == "RTP/AVP" and optional.crypto
    with_srtp = negotiate(optional, srtp=True)
    assert with_srtp is not None and with_srtp.crypto is not None
    plain = negotiate(optional)
    assert plain is not None and plain.crypto is None


def test_srtp_context_protects_both_directions_and_rejects_tampering() -> None:
    ours, theirs = make_crypto(1), make_crypto(1)
    we, they = SrtpContext(ours, theirs), SrtpContext(theirs, ours)
    rtp = RtpPacket(payload_type=0, sequence_number=7, timestamp=160, ssrc=1, payload=b"a" * 160)
    wire = we.protect(rtp.serialize())
    assert wire != rtp.serialize() and b"a" * 32 not in wire  # encrypted, with an auth tag
    assert they.unprotect(wire) == rtp.serialize()
    with pytest.raises(SrtpError):
        they.unprotect(wire)  # a replay
    tampered = bytearray(we.protect(rtp.serialize()[:2] + b"\x00\x08" + rtp.serialize()[4:]))
    tampered[20] ^= 1
    with pytest.raises(SrtpError):
        they.unprotect(bytes(tampered))
    rtcp = bytes(RtcpRrPacket(ssrc=2))
    assert we.unprotect_rtcp(they.protect_rtcp(rtcp)) == rtcp
