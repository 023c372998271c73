"""RTCP reports of one stream (RFC 3550 §6.4): SR or RR with a report block on the peer's
stream, an SDES CNAME, a BYE at the end. Pure: times and counters are passed in; aiortc's
packet classes do the wire format.
"""

from __future__ import annotations

from typing import Final

from aiortc.rtp import (
    RtcpByePacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    clamp_packets_lost,
)

from sipserver.media.jitter import RtpJitterBuffer

__all__ = ["RtcpReporter", "ntp_timestamp"]

_NTP_EPOCH: Final = 2208988800  # seconds from 1900 to 1970 (RFC 3550 §4)


def ntp_timestamp(unix_time: float) -> int:
    """The 64-bit NTP timestamp of a Unix time (RFC 3550 §4)."""
    wall = unix_time + _NTP_EPOCH
    return (int(wall) << 32) | int((wall % 1) * (1 << 32))


class RtcpReporter:
    """Builds one stream's compound RTCP packets and keeps what the next report needs (the
    previous report's counts, the peer's last SR).

    Args:
        ssrc: our SSRC.
        cname: our SDES CNAME (RFC 3550 §6.5.1).
    """

    __slots__ = ("_cname", "_last_sr", "_prior_expected", "_prior_received", "_sent", "ssrc")

    def __init__(self, ssrc: int, cname: bytes) -> None:
        self.ssrc = ssrc
        self._cname = cname
        self._prior_expected = 0
        self._prior_received = 0
        self._last_sr: tuple[int, float] | None = None  # (middle 32 NTP bits, arrival)
        self._sent = 0  # our packet count at the last report

    def sender_report_received(self, ntp: int, now: float) -> None:
        """The peer's SR arrived (its LSR and our DLSR go in our next report block)."""
        self._last_sr = ((ntp >> 16) & 0xFFFFFFFF, now)

    def report(
        self,
        now: float,
        *,
        jitter: RtpJitterBuffer | None,
        peer_ssrc: int | None,
        sent: tuple[int, int, int, int],
        bye: bool = False,
    ) -> bytes:
        """One compound packet: an SR when we sent since the last report, else an RR.

        Args:
            now: the monotonic time (for DLSR).
            jitter: the buffer of the peer's stream (its counters make the report block).
            peer_ssrc: the peer's SSRC (no report block without it).
            sent: (NTP timestamp, RTP timestamp, packets, octets) of what we sent.
            bye: append a BYE (the stream is closing).
        """
        blocks = self._blocks(now, jitter, peer_ssrc)
        ntp, rtp_timestamp, packets, octets = sent
        report: RtcpSrPacket | RtcpRrPacket
        if packets > self._sent:
            self._sent = packets
            info = RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_timestamp,
                packet_count=packets & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            )
            report = RtcpSrPacket(ssrc=self.ssrc, sender_info=info, reports=blocks)
        else:
            report = RtcpRrPacket(ssrc=self.ssrc, reports=blocks)
        sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self.ssrc, items=[(1, self._cname)])])
        compound = bytes(report) + bytes(sdes)
        if bye:
            compound += bytes(RtcpByePacket(sources=[self.ssrc]))
        return compound

    def _blocks(
        self, now: float, jb: RtpJitterBuffer | None, peer_ssrc: int | None
    ) -> list[RtcpReceiverInfo]:
        """RFC 3550 §6.4.1 report block: A.3 loss (cumulative and over the interval), A.8
        jitter, LSR/DLSR."""
        if jb is None or peer_ssrc is None or not jb.received_unique:
            return []
        expected, received = jb.expected, jb.received_unique
        if expected < self._prior_expected:  # the receive side started over (a new SSRC)
            self._prior_expected = self._prior_received = 0
        interval_expected = expected - self._prior_expected
        interval_lost = interval_expected - (received - self._prior_received)
        self._prior_expected, self._prior_received = expected, received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        lsr = dlsr = 0
        if self._last_sr is not None:
            lsr = self._last_sr[0]
            dlsr = int((now - self._last_sr[1]) * 65536) & 0xFFFFFFFF
        block = RtcpReceiverInfo(
            ssrc=peer_ssrc,
            fraction_lost=fraction,
            packets_lost=clamp_packets_lost(expected - received),
            highest_sequence=jb.highest_seq & 0xFFFFFFFF,
            jitter=jb.jitter_units,
            lsr=lsr,
            dlsr=dlsr,
        )
        return [block]
