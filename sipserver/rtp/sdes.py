"""SDES-SRTP (RFC 4568 keys in the SDP, RFC 3711 protection through libsrtp via pylibsrtp).

The SDP's ``a=crypto:<tag> <suite> inline:<base64 key||salt>[|lifetime][|MKI:length]`` lines
carry each side's master key; each direction is protected with its sender's key. The suites
libsrtp's profiles give us: ``AES_CM_128_HMAC_SHA1_80`` and ``AES_CM_128_HMAC_SHA1_32``
(RFC 4568 §6.2), 16-byte key + 14-byte salt. A key with an MKI is not taken (we would have to
carry it in every packet); a lifetime is accepted and ignored (a call never reaches 2^31
packets).
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Final

import pylibsrtp

__all__ = ["SUITES", "CryptoLine", "SrtpContext", "SrtpError", "make_crypto", "parse_crypto"]

SrtpError = pylibsrtp.Error
"""What libsrtp raises: a packet that fails authentication, a replay."""

SUITES: Final = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
"""Crypto suites we answer, with their libsrtp profile."""

_KEY_SALT = 30  # 128-bit master key + 112-bit master salt (RFC 4568 §6.2.1)


class CryptoLine:
    """One ``a=crypto`` value: tag, suite and master key||salt."""

    __slots__ = ("key", "suite", "tag")

    def __init__(self, tag: int, suite: str, key: bytes) -> None:
        self.tag = tag
        self.suite = suite
        self.key = key

    def __str__(self) -> str:
        encoded = base64.b64encode(self.key).decode()
        return f"{self.tag} {self.suite} inline:{encoded}"


def parse_crypto(value: str) -> CryptoLine:
    """Parse an ``a=crypto`` value (without ``a=crypto:``).

    Raises:
        ValueError: not RFC 4568 syntax, a suite we do not do, several keys, an MKI, or a key
            of the wrong length.
    """
    fields = value.split()
    if len(fields) < 3 or not fields[0].isdigit() or len(fields[0]) > 9:
        raise ValueError(f"a=crypto {value[:60]!r} is not '<tag> <suite> <key-params>'")
    suite = fields[1]
    if suite not in SUITES:
        raise ValueError(f"crypto suite {suite!r} is not one of {sorted(SUITES)}")
    params = fields[2]
    if ";" in params:
        raise ValueError("several master keys in one a=crypto line are not supported")
    if not params.startswith("inline:"):
        raise ValueError(f"key method of {params[:20]!r} is not inline")
    key_info, *extra = params[len("inline:") :].split("|")
    if any(part.startswith("MKI") or ":" in part for part in extra):
        raise ValueError("a master key identifier (MKI) is not supported")
    try:
        key = base64.b64decode(key_info, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the inline key is not base64") from None
    if len(key) != _KEY_SALT:
        raise ValueError(f"the inline key is {len(key)} bytes, not {_KEY_SALT}")
    return CryptoLine(int(fields[0]), suite, key)


def make_crypto(tag: int = 1, suite: str = "AES_CM_128_HMAC_SHA1_80") -> CryptoLine:
    """A fresh random master key||salt for our side (os.urandom)."""
    if suite not in SUITES:
        raise ValueError(f"crypto suite {suite!r} is not one of {sorted(SUITES)}")
    return CryptoLine(tag, suite, os.urandom(_KEY_SALT))


class SrtpContext:
    """Both directions of one stream: ours protected with our key, theirs checked with theirs.

    Args:
        local: our ``a=crypto`` (its key protects what we send).
        remote: the peer's (its key authenticates and decrypts what we receive).
    """

    __slots__ = ("_rx", "_tx")

    def __init__(self, local: CryptoLine, remote: CryptoLine) -> None:
        policy = pylibsrtp.Policy
        self._tx = pylibsrtp.Session(
            policy(
                key=local.key, ssrc_type=policy.SSRC_ANY_OUTBOUND, srtp_profile=SUITES[local.suite]
            )
        )
        self._rx = pylibsrtp.Session(
            policy(
                key=remote.key, ssrc_type=policy.SSRC_ANY_INBOUND, srtp_profile=SUITES[remote.suite]
            )
        )

    def protect(self, packet: bytes) -> bytes:
        """RTP to SRTP (raises ``pylibsrtp.Error`` on a replayed sequence number)."""
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP to RTP (raises ``pylibsrtp.Error``: bad tag, replay)."""
        return self._rx.unprotect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """RTCP to SRTCP."""
        return self._tx.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP to RTCP (raises ``pylibsrtp.Error``)."""
        return self._rx.unprotect_rtcp(packet)
