"""RTP/RTCP media streams of the native engine: ports, codecs, jitter, DTMF, one media clock.

One :class:`RtpStream` per call, two UDP sockets (RTP on an even port, RTCP on the next odd
one, RFC 3550 §11) from a :class:`RtpPortPool`. The call worker's single :class:`MediaClock`
calls :meth:`RtpStream.read_frame` and :meth:`RtpStream.write_frame` of every call once per
20 ms; the stream itself runs no timer and no task, so a worker holds hundreds of them:

- inbound packets are parsed on arrival (the 12-byte fixed header with ``struct``; aiortc's
  :class:`~aiortc.rtp.RtpPacket` for the rare packet with CSRCs, an extension or padding, which
  costs ~1.8 us against ~0.1 us), checked against the negotiated payload types and pushed into
  an adaptive :class:`~sipserver.media.jitter.RtpJitterBuffer` still encoded;
- ``read_frame`` pops and decodes them in sequence order (G.711 through numpy tables, G.722
  through PyAV with one decoder per stream), conceals losses (the last frame fading out, then
  silence) and always returns exactly one 20 ms frame;
- ``write_frame`` encodes and sends one packet, keeping sequence number and timestamp
  continuous (RFC 3550 §5.1), or sends the RFC 4733 event packets of a queued digit instead;
- symmetric RTP (RFC 4961): the first packet with our payload type fixes the peer's source
  address; when it differs from the SDP's (a NAT), we send there from then on (``latched``)
  and ignore other sources until the next offer/answer;
- every ~5 s (RFC 3550 §6.2, randomised) an RTCP SR (we sent) or RR with a report block on
  the caller's stream (loss, RFC 3550 A.8 jitter, LSR/DLSR) and an SDES CNAME;
- no RTP for ``rtp_timeout`` seconds while the peer should be sending calls ``on_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    clamp_packets_lost,
)

from sipserver.media.codecs import (
    G722Decoder,
    G722Encoder,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from sipserver.media.frames import FRAME_MS, frame_bytes
from sipserver.media.jitter import Gap, JitterSettings, RtpJitterBuffer
from sipserver.media.resample import Resampler
from sipserver.observability import get_logger
from sipserver.rtp.sdp import Negotiated

__all__ = [
    "DTMF_EVENTS",
    "JitterSettings",
    "MediaClock",
    "NoPortsError",
    "RtpPortPool",
    "RtpStream",
]

log = get_logger(__name__)

DTMF_EVENTS: Final = "0123456789*#ABCD"
"""RFC 4733 §3.2 event codes 0-15, by code."""

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")
_RTCP_INTERVAL = 5.0  # RFC 3550 §6.2: minimum interval, randomised x0.5..1.5 (§6.3.1)
_HOUSEKEEPING_READS = 50  # timeout, RTCP and DTMF checks once a second of frames
_DTMF_VOLUME = 10  # -10 dBm0 (RFC 4733 §2.3.4)
_DTMF_END_REPEATS = 3  # RFC 4733 §2.5.1.4
_DTMF_STALE = 1.0  # an event without its end packets is reported after this many seconds
_NTP_EPOCH = 2208988800  # seconds from 1900 to 1970 (RFC 3550 §4)


class NoPortsError(RuntimeError):
    """Every RTP port pair of the range is in use (the UA answers 503)."""


class _Codec:
    """One payload format: PCM rate, 20 ms PCM frame size, encode/decode of whole frames."""

    __slots__ = ("decode", "encode", "name", "pcm_frame", "rate")

    def __init__(self, name: str) -> None:
        self.name = name
        self.encode: Callable[[bytes], bytes]
        self.decode: Callable[[bytes], bytes]
        if name == "PCMU":
            self.rate, self.encode, self.decode = 8000, ulaw_encode, ulaw_decode
        elif name == "PCMA":
            self.rate, self.encode, self.decode = 8000, alaw_encode, alaw_decode
        elif name == "G722":
            self.rate = 16000
            self.encode, self.decode = G722Encoder().encode, G722Decoder().decode
        else:
            raise ValueError(f"codec {name!r} is not one of PCMU, PCMA, G722")
        self.pcm_frame = frame_bytes(self.rate)


class _RtpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("datagram_received",)

    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.datagram_received = on_datagram  # type: ignore[method-assign,assignment]

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the peer is not listening yet: not our problem


class RtpStream:
    """One call's RTP/RTCP media (open it with :meth:`RtpPortPool.open_stream`).

    Attributes:
        local_port: our RTP port for the SDP (RTCP on ``local_port + 1``).
        sample_rate: the PCM rate of :meth:`read_frame`/:meth:`write_frame` (8000 or 16000).
        remote: where RTP goes (None before the peer's address is known); after latching the
            source of the peer's RTP.
        on_dtmf: called with ``(digit, duration_ms)`` once per RFC 4733 event.
        on_timeout: called once when no RTP came for ``rtp_timeout`` seconds (never while the
            peer holds the call or only listens).
    """

    def __init__(
        self,
        *,
        local_port: int,
        sample_rate: int,
        rtp_timeout: float,
        jitter: JitterSettings | None,
        release: Callable[[], None],
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError(f"sample rate {sample_rate} is not 8000 or 16000")
        self.local_port = local_port
        self.sample_rate = sample_rate
        self.remote: tuple[str, int] | None = None
        self.on_dtmf: Callable[[str, int], None] | None = None
        self.on_timeout: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._release: Callable[[], None] | None = release
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._timeout = rtp_timeout
        self._jitter_settings = jitter
        self._frame_bytes = frame_bytes(sample_rate)
        self._silence = bytes(self._frame_bytes)
        # negotiated state
        self._negotiated: Negotiated | None = None
        self._codec: _Codec | None = None
        self._pt = -1
        self._dtmf_pt = -1
        self._sending = False
        self._receiving = False
        self._resample_in: Resampler | None = None
        self._resample_out: Resampler | None = None
        self._tx_pcm = bytearray()
        # outbound RTP (RFC 3550 §5.1: random initial values)
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._ts_step = 8000 * FRAME_MS // 1000
        self._marker = True
        self._sent = 0
        self._octets = 0
        self._dtmf_queue: deque[tuple[int, int]] = deque(maxlen=32)
        self._dtmf_tx: list[int] | None = None  # [event, start ts, duration, total, ends left]
        # inbound RTP
        self._source: Any = None  # the peer's RTP source address (symmetric RTP)
        self._rx_ssrc: int | None = None
        self._jb: RtpJitterBuffer | None = None
        self._rx_pcm = bytearray()
        self._last_frame = self._silence
        self._fades = 0
        self._playing = False
        self._last_rx = self._loop.time()
        self._timed_out = False
        self._latched = 0
        self._concealed = 0
        self._foreign = 0
        self._ignored = 0
        self._invalid = 0
        self._resyncs = 0
        # DTMF in: (timestamp, event, duration, last seen) of the event in progress
        self._dtmf_rx: tuple[int, int, int, float] | None = None
        self._dtmf_ended: int | None = None
        self._dtmf_received = 0
        # RTCP
        self._rtcp_remote: tuple[str, int] | None = None
        self._rtcp_source: Any = None
        self._rtcp_sent = 0
        self._rtcp_received = 0
        self._rtcp_invalid = 0
        self._next_rtcp = self._loop.time() + _RTCP_INTERVAL * random.uniform(0.5, 1.5)
        self._sent_at_report = 0
        self._prior_expected = 0
        self._prior_received = 0
        self._last_sr: tuple[int, float] | None = None  # (middle NTP bits, arrival)
        self._cname = f"sipserver-{os.getpid()}-{local_port}@rtp".encode()
        self._reads = 0
        self._closed = False

    def _attach(self, rtp: asyncio.DatagramTransport, rtcp: asyncio.DatagramTransport) -> None:
        self._rtp, self._rtcp = rtp, rtcp

    # ------------------------------------------------------------------------- negotiation

    def apply(self, negotiated: Negotiated) -> None:
        """Set or change codec, remote address and direction (the answer, and each
        re-INVITE/UPDATE's).

        Raises:
            ValueError: the negotiated codec is not one we implement.
        """
        previous = self._negotiated
        self._negotiated = negotiated
        codec = negotiated.codec
        if self._codec is None or previous is None or previous.codec != codec:
            self._codec = _Codec(codec.name)
            self._pt = codec.payload_type
            self._ts_step = codec.clock_rate * FRAME_MS // 1000
            rate = self._codec.rate
            same = rate == self.sample_rate
            self._resample_in = None if same else Resampler(rate, self.sample_rate)
            self._resample_out = None if same else Resampler(self.sample_rate, rate)
            # A resampler's output lags its input: one frame of silence keeps every packet whole.
            self._tx_pcm = bytearray(0 if same else self._codec.pcm_frame)
            self._reset_inbound()
            self._marker = True
        self._dtmf_pt = negotiated.dtmf.payload_type if negotiated.dtmf is not None else -1
        host, port = negotiated.remote
        sdp_remote = None if host in ("0.0.0.0", "::") or port == 0 else (host, port)
        if previous is None or previous.remote != negotiated.remote:
            self._source = None  # a new address in the SDP: latch again
            self._rtcp_source = None
            self.remote = sdp_remote
            rhost, rport = negotiated.remote_rtcp
            self._rtcp_remote = None if sdp_remote is None else (rhost, rport)
        direction = negotiated.direction
        was_receiving = self._receiving
        self._sending = not negotiated.on_hold and direction in ("sendrecv", "sendonly")
        self._receiving = not negotiated.on_hold and direction in ("sendrecv", "recvonly")
        if self._receiving and not was_receiving:
            self._reset_inbound()  # what came during the hold is stale
            self._last_rx = self._loop.time()
            self._timed_out = False
        if not self._sending:
            self._marker = True  # RFC 3551 §4.1: the first packet after a pause has the marker

    def _reset_inbound(self) -> None:
        codec = self._negotiated.codec if self._negotiated is not None else None
        if codec is not None:
            self._jb = RtpJitterBuffer(codec.clock_rate, self._jitter_settings)
        self._rx_ssrc = None
        self._rx_pcm.clear()
        self._playing = False
        self._fades = 0

    # ------------------------------------------------------------------------------ inbound

    def _on_rtp(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            self._invalid += 1
            return
        first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
        if first & 0xC0 != 0x80:
            self._invalid += 1
            return
        pt = second & 0x7F
        if addr != self._source:
            if self._source is not None:
                self._foreign += 1  # not the latched peer (RFC 4961 §3): ignored
                return
            if pt != self._pt and pt != self._dtmf_pt:
                self._ignored += 1
                return
            self._latch(addr)
        if first & 0x3F:  # padding, extension or CSRCs: the full parser
            try:
                payload = RtpPacket.parse(data).payload
            except (ValueError, IndexError, struct.error):
                self._invalid += 1
                return
        else:
            payload = data[12:]
        now = self._loop.time()
        self._last_rx = now
        jb = self._jb
        if jb is None or not self._receiving:
            return
        if ssrc != self._rx_ssrc:
            if self._rx_ssrc is not None:
                self._resyncs += 1  # a new source (a transfer, a media server): start over
                self._reset_inbound()
                jb = self._jb
                assert jb is not None
            self._rx_ssrc = ssrc
        if pt == self._pt:
            jb.push(seq, timestamp, payload, now)
            return
        if pt == self._dtmf_pt:
            self._dtmf_packet(payload, timestamp, now)
        else:
            self._ignored += 1  # comfort noise and the like: a slot without audio
        jb.push(seq, timestamp, b"", now)

    def _latch(self, addr: Any) -> None:
        self._source = addr
        peer = (addr[0], addr[1])
        if peer != self.remote:
            self.remote = peer
            self._latched = 1
            if self._rtcp_source is None:
                self._rtcp_remote = (addr[0], addr[1] + 1)

    def _dtmf_packet(self, payload: bytes, timestamp: int, now: float) -> None:
        """RFC 4733 §2.5.2: one event per timestamp, reported at its end (the end packet is
        repeated three times: reported once), or when a new event starts without it."""
        if len(payload) < 4:
            return
        event, flags, duration = _EVENT.unpack_from(payload)
        if event >= len(DTMF_EVENTS) or timestamp == self._dtmf_ended:
            return
        current = self._dtmf_rx
        if current is not None and current[0] != timestamp:
            self._report_dtmf(current[1], current[2])  # its end packets were lost
        self._dtmf_rx = (timestamp, event, duration, now)
        if flags & 0x80:
            self._dtmf_rx = None
            self._dtmf_ended = timestamp
            self._report_dtmf(event, duration)

    def _report_dtmf(self, event: int, duration: int) -> None:
        self._dtmf_received += 1
        clock = (
            self._negotiated.dtmf.clock_rate if self._negotiated and self._negotiated.dtmf else 8000
        )
        if self.on_dtmf is not None:
            self.on_dtmf(DTMF_EVENTS[event], duration * 1000 // clock)

    def _on_rtcp(self, data: bytes, addr: Any) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except (ValueError, IndexError, struct.error):
            self._rtcp_invalid += 1
            return
        self._rtcp_received += 1
        if self._rtcp_source is None:
            self._rtcp_source = addr
            self._rtcp_remote = (addr[0], addr[1])
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                self._last_sr = ((ntp >> 16) & 0xFFFFFFFF, self._loop.time())

    # ------------------------------------------------------------------------------ frames

    def read_frame(self) -> bytes:
        """Exactly one 20 ms s16le frame at :attr:`sample_rate`: the caller's audio through
        the jitter buffer, concealment for what is lost or late, silence before the first
        packet and while on hold."""
        self._reads += 1
        if self._reads % _HOUSEKEEPING_READS == 0:
            self._housekeeping()
        jb = self._jb
        if jb is None or not self._receiving:
            return self._silence
        jb.tick()
        fb = self._frame_bytes
        pending = self._rx_pcm
        if not pending:  # the common case: one 20 ms packet makes the frame
            item = jb.pop()
            if type(item) is bytes and item:
                pcm = self._decode(item)
                if len(pcm) == fb:
                    self._playing = True
                    self._fades = 0
                    self._last_frame = pcm
                    return pcm
                pending += pcm
            elif item is Gap.WAIT:
                return self._conceal() if self._playing else self._silence
            else:
                self._fill(item)
        while len(pending) < fb:
            item = jb.pop()
            if item is Gap.WAIT:
                break
            if type(item) is bytes and item:
                pending += self._decode(item)
                self._fades = 0
                self._playing = True
            else:
                self._fill(item)
        if len(pending) >= fb:
            frame = bytes(pending[:fb])
            del pending[:fb]
            self._last_frame = frame
            return frame
        if not self._playing:
            return self._silence
        return self._conceal()  # dry: the buffer primes again meanwhile

    def _decode(self, payload: bytes) -> bytes:
        codec = self._codec
        assert codec is not None
        pcm = codec.decode(payload)
        resampler = self._resample_in
        return pcm if resampler is None else resampler.process(pcm)

    def _fill(self, item: bytes | Gap) -> None:
        """Put one packet's time of concealment (lost) or silence (an event packet)."""
        if item is Gap.WAIT:
            return
        jb = self._jb
        assert jb is not None
        nbytes = jb.packet_ms * self.sample_rate // 1000 * 2
        if item is Gap.LOST and self._playing:
            frames = max(1, -(-nbytes // self._frame_bytes))
            self._rx_pcm += b"".join(self._conceal() for _ in range(frames))[:nbytes]
        else:
            self._rx_pcm += bytes(nbytes)

    def _conceal(self) -> bytes:
        """The last frame at half the level, then a quarter, then silence."""
        self._concealed += 1
        self._fades += 1
        if self._fades > 2:
            return self._silence
        gain = 0.5**self._fades
        last = np.frombuffer(self._last_frame, dtype="<i2")
        return (last * gain).astype("<i2").tobytes()

    def write_frame(self, pcm: bytes) -> None:
        """Encode and send one 20 ms s16le frame at :attr:`sample_rate` (nothing is sent on
        hold or before the peer's address is known; the timestamp advances all the same)."""
        ts = self._ts
        self._ts = (ts + self._ts_step) & 0xFFFFFFFF
        codec = self._codec
        remote = self.remote
        if codec is None or remote is None or not self._sending or self._rtp is None:
            self._marker = True
            return
        if self._dtmf_tx is not None or self._dtmf_queue:
            self._send_event(ts, remote)
            return
        resampler = self._resample_out
        if resampler is not None:
            tx = self._tx_pcm
            tx += resampler.process(pcm)
            size = codec.pcm_frame
            if len(tx) < size:
                tx += bytes(size - len(tx))
            pcm = bytes(tx[:size])
            del tx[:size]
        payload = codec.encode(pcm)
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        second = self._pt | 0x80 if self._marker else self._pt
        self._marker = False
        self._rtp.sendto(_HEADER.pack(0x80, second, seq, ts, self._ssrc) + payload, remote)
        self._sent += 1
        self._octets += len(payload)

    # -------------------------------------------------------------------------------- DTMF

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Queue one RFC 4733 event (sent instead of audio on the next frames); ignored when
        ``telephone-event`` was not negotiated.

        Raises:
            ValueError: ``digit`` is not one of ``0-9 * # A-D``.
        """
        code = DTMF_EVENTS.find(digit.upper()) if len(digit) == 1 else -1
        if code < 0:
            raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
        if self._dtmf_pt < 0:
            return
        units = max(1, min(duration_ms, 8000)) * self._ts_step // FRAME_MS
        self._dtmf_queue.append((code, units))

    def _send_event(self, ts: int, remote: tuple[str, int]) -> None:
        """One RFC 4733 packet in this frame's slot: the event's timestamp is its start
        (§2.5.1.2), the duration grows per packet, the end packet goes three times (§2.5.1.4)."""
        state = self._dtmf_tx
        marker = 0
        if state is None:
            code, total = self._dtmf_queue.popleft()
            state = self._dtmf_tx = [code, ts, 0, total, _DTMF_END_REPEATS]
            marker = 0x80
        code, start, duration, total, ends = state
        duration = min(duration + self._ts_step, total, 0xFFFF)
        end = duration >= total
        if end:
            state[4] = ends - 1
            if ends <= 1:
                self._dtmf_tx = None
        state[2] = duration
        flags = (0x80 if end else 0) | _DTMF_VOLUME
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        header = _HEADER.pack(0x80, self._dtmf_pt | marker, seq, start, self._ssrc)
        assert self._rtp is not None
        self._rtp.sendto(header + _EVENT.pack(code, flags, duration), remote)
        self._sent += 1
        self._octets += 4
        self._marker = True  # the audio after the event starts a talk spurt

    # -------------------------------------------------------------------- timers and RTCP

    def _housekeeping(self) -> None:
        now = self._loop.time()
        if (
            self._timeout > 0
            and self._receiving
            and not self._timed_out
            and now - self._last_rx > self._timeout
        ):
            self._timed_out = True
            if self.on_timeout is not None:
                self.on_timeout()
        event = self._dtmf_rx
        if event is not None and now - event[3] > _DTMF_STALE:
            self._dtmf_rx = None
            self._dtmf_ended = event[0]
            self._report_dtmf(event[1], event[2])
        if now >= self._next_rtcp:
            self._next_rtcp = now + _RTCP_INTERVAL * random.uniform(0.5, 1.5)
            self._send_rtcp(now)

    def _report_blocks(self, now: float) -> list[RtcpReceiverInfo]:
        """RFC 3550 §6.4.1 report block on the peer's stream (A.3 loss, A.8 jitter)."""
        jb = self._jb
        if jb is None or self._rx_ssrc is None or not jb.received_unique:
            return []
        expected, received = jb.expected, jb.received_unique
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
        return [
            RtcpReceiverInfo(
                ssrc=self._rx_ssrc,
                fraction_lost=fraction,
                packets_lost=clamp_packets_lost(expected - received),
                highest_sequence=jb.highest_seq & 0xFFFFFFFF,
                jitter=jb.jitter_units,
                lsr=lsr,
                dlsr=dlsr,
            )
        ]

    def _send_rtcp(self, now: float, *, bye: bool = False) -> None:
        remote = self._rtcp_remote
        if remote is None or self._rtcp is None or self._negotiated is None:
            return
        reports = self._report_blocks(now)
        report: RtcpSrPacket | RtcpRrPacket
        if self._sent > self._sent_at_report:
            self._sent_at_report = self._sent
            wall = time.time() + _NTP_EPOCH
            ntp = (int(wall) << 32) | int((wall % 1) * (1 << 32))
            info = RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=self._ts,
                packet_count=self._sent & 0xFFFFFFFF,
                octet_count=self._octets & 0xFFFFFFFF,
            )
            report = RtcpSrPacket(ssrc=self._ssrc, sender_info=info, reports=reports)
        else:
            report = RtcpRrPacket(ssrc=self._ssrc, reports=reports)
        sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self._cname)])])
        compound = bytes(report) + bytes(sdes)
        if bye:
            compound += bytes(RtcpByePacket(sources=[self._ssrc]))
        self._rtcp.sendto(compound, remote)
        self._rtcp_sent += 1

    # ------------------------------------------------------------------------------- state

    def stats(self) -> dict[str, int]:
        """Counters of this stream (cumulative): received, lost, late, duplicates,
        concealed_frames, underruns, sent, rtcp_sent, rtcp_received, jitter_ms, latched, and
        overflow, catchup, dtmf_received, foreign, ignored, invalid, target_ms."""
        jb = self._jb
        jstats = jb.stats if jb is not None else None
        return {
            "received": jstats.received if jstats else 0,
            "lost": jstats.lost if jstats else 0,
            "late": jstats.late if jstats else 0,
            "duplicates": jstats.duplicates if jstats else 0,
            "concealed_frames": self._concealed,
            "underruns": jstats.underruns if jstats else 0,
            "sent": self._sent,
            "rtcp_sent": self._rtcp_sent,
            "rtcp_received": self._rtcp_received,
            "jitter_ms": round(jb.jitter_ms) if jb is not None else 0,
            "latched": self._latched,
            "overflow": jstats.overflow_frames if jstats else 0,
            "catchup": jstats.catchup_frames if jstats else 0,
            "dtmf_received": self._dtmf_received,
            "foreign": self._foreign,
            "ignored": self._ignored,
            "invalid": self._invalid + self._rtcp_invalid,
            "target_ms": jb.target_ms if jb is not None else 0,
        }

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Send an RTCP BYE, close both sockets and return the ports (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._send_rtcp(self._loop.time(), bye=True)
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self.on_dtmf = self.on_timeout = None
        release, self._release = self._release, None
        if release is not None:
            release()


class RtpPortPool:
    """The RTP port range of one engine: even RTP ports, RTCP on the next odd one.

    Ports are handed out round-robin (a port just freed is the last to come back, so late
    packets of an ended call do not reach the next one); a pair another program holds is
    skipped.

    Args:
        host: address to bind.
        first: first port of the range (rounded up to even).
        count: ports in the range (pairs = count // 2).
    """

    def __init__(self, host: str, first: int, count: int) -> None:
        start = first + (first & 1)
        self.host = host
        self._free: deque[int] = deque(range(start, first + count - 1, 2))
        self._used: set[int] = set()
        if not self._free:
            raise ValueError(f"RTP port range {first}+{count} holds no even/odd pair")

    def in_use(self) -> int:
        """Port pairs held by open streams."""
        return len(self._used)

    async def open_stream(
        self,
        *,
        sample_rate: int,
        rtp_timeout: float,
        jitter: JitterSettings | None = None,
    ) -> RtpStream:
        """Bind the next free pair and return a stream on it (:meth:`RtpStream.apply` it).

        Raises:
            NoPortsError: every pair is in use (or held by another program).
        """
        loop = asyncio.get_running_loop()
        for _ in range(len(self._free)):
            port = self._free.popleft()
            self._used.add(port)
            stream = RtpStream(
                local_port=port,
                sample_rate=sample_rate,
                rtp_timeout=rtp_timeout,
                jitter=jitter,
                release=functools.partial(self._release, port),
            )
            rtp: asyncio.DatagramTransport | None = None
            try:
                rtp, _ = await loop.create_datagram_endpoint(
                    functools.partial(_RtpProtocol, stream._on_rtp), local_addr=(self.host, port)
                )
                rtcp, _ = await loop.create_datagram_endpoint(
                    functools.partial(_RtpProtocol, stream._on_rtcp),
                    local_addr=(self.host, port + 1),
                )
            except OSError as exc:
                if rtp is not None:
                    rtp.close()
                log.info("rtp_port_busy", port=port, error=str(exc))
                self._used.discard(port)
                self._free.append(port)
                continue
            stream._attach(rtp, rtcp)
            return stream
        raise NoPortsError(f"no free RTP port pair in {self.host} range")

    def _release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)


class MediaClock:
    """One drift-free 20 ms clock per process (``loop.call_at`` on absolute deadlines).

    Tick ``k`` is due at ``start + k * interval`` whatever the previous ticks cost, so the
    clock never drifts. A tick that runs more than one interval after its deadline counts as
    late; ticks missed while the loop was busy run back to back, at most 5, and the rest are
    skipped (counted in ``skipped_ticks``) so a stall does not turn into a burst.

    Args:
        on_tick: called once per tick (an exception is logged and the clock goes on).
        interval: seconds between ticks.
    """

    MAX_CATCH_UP: Final = 5

    def __init__(self, on_tick: Callable[[], None], *, interval: float = 0.02) -> None:
        self._on_tick = on_tick
        self.interval = interval
        self.ticks = 0
        """Ticks run."""
        self.late_ticks = 0
        """Ticks that ran more than one interval after their deadline."""
        self.skipped_ticks = 0
        """Ticks not run at all (more than :attr:`MAX_CATCH_UP` behind)."""
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        """Whether the clock is started."""
        return self._handle is not None

    def start(self) -> None:
        """Start ticking (the first tick one interval from now); needs a running loop."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._deadline, self._run)

    def stop(self) -> None:
        """Stop ticking (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        interval = self.interval
        due = self._deadline
        runs = 0
        while due <= now and runs <= self.MAX_CATCH_UP:
            if now - due > interval:
                self.late_ticks += 1
            self.ticks += 1
            runs += 1
            try:
                self._on_tick()
            except Exception:
                log.exception("media_clock_tick_failed")
            due += interval
            if self._handle is None:  # stopped by the tick
                return
        if due <= now:
            behind = int((now - due) / interval) + 1
            self.skipped_ticks += behind
            due += behind * interval
        self._deadline = due
        self._handle = loop.call_at(due, self._run)
