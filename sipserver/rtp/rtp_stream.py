"""RTP/RTCP media streams of the native engine: ports, codecs, jitter, DTMF, one media clock.

One :class:`RtpStream` per call, two UDP sockets (RTP on an even port, RTCP on the next odd
one, RFC 3550 §11) from a :class:`RtpPortPool`. The call worker's single :class:`MediaClock`
(:mod:`sipserver.rtp.media_clock`) calls :meth:`RtpStream.read_frame` and
:meth:`RtpStream.write_frame` of every call once per 20 ms; the stream itself runs no timer
and no task, so a worker holds hundreds of them:

- inbound packets are parsed on arrival (the 12-byte fixed header with ``struct``; aiortc's
  :class:`~aiortc.rtp.RtpPacket` for the rare packet with CSRCs, an extension or padding, which
  costs ~1.8 us against ~0.1 us), checked against the negotiated payload types and pushed into
  an adaptive :class:`~sipserver.media.jitter.RtpJitterBuffer` still encoded;
- ``read_frame`` pops and decodes them in sequence order (G.711 through numpy tables, G.722
  through PyAV with one decoder per stream), conceals losses (the last frame fading out, then
  silence) and always returns exactly one 20 ms frame;
- ``write_frame`` encodes and sends one packet, keeping sequence number and timestamp
  continuous (RFC 3550 §5.1), or sends the RFC 4733 event packets of a queued digit instead
  (:mod:`sipserver.rtp.rfc4733` holds the event logic, both ways);
- symmetric RTP (RFC 4961): the first packet with our payload type fixes the peer's source
  address; when it differs from the SDP's (a NAT), we send there from then on (``latched``)
  and ignore other sources until the next offer/answer;
- every ~5 s (RFC 3550 §6.2, randomised) an RTCP SR (we sent) or RR with a report block on
  the caller's stream (loss, RFC 3550 A.8 jitter, LSR/DLSR) and an SDES CNAME
  (:mod:`sipserver.rtp.rtcp`);
- no RTP for ``rtp_timeout`` seconds while the peer should be sending calls ``on_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc.rtp import (
    RtcpPacket,
    RtcpSrPacket,
    RtpPacket,
)

from sipserver.media.codecs import PayloadCodec
from sipserver.media.frames import FRAME_MS, frame_bytes
from sipserver.media.jitter import Gap, JitterSettings, RtpJitterBuffer
from sipserver.media.resample import Resampler
from sipserver.observability import get_logger
from sipserver.rtp.media_clock import MediaClock
from sipserver.rtp.rfc4733 import DTMF_EVENTS, DtmfReceiver, DtmfSender, event_code
from sipserver.rtp.rtcp import RtcpReporter, ntp_timestamp
from sipserver.rtp.sdes import CryptoLine, SrtpContext, SrtpError, make_crypto, parse_crypto
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

_HEADER = struct.Struct("!BBHII")
_RTCP_INTERVAL = 5.0  # RFC 3550 §6.2: minimum interval, randomised x0.5..1.5 (§6.3.1)
_HOUSEKEEPING_READS = 50  # timeout, RTCP and DTMF checks once a second of frames
_TAKEOVER_SILENCE = 1.0  # seconds the latched source must be silent before another takes over
_TAKEOVER_PACKETS = 5  # consecutive audio packets the new source must send


def _not_open(data: bytes, addr: tuple[str, int]) -> None:
    raise OSError("RTP socket not open")


class NoPortsError(RuntimeError):
    """Every RTP port pair of the range is in use (the UA answers 503)."""


#: Datagrams read per socket per readiness callback. The reader drains what is waiting
#: (asyncio's datagram transport reads one per loop pass, ~3 us of overhead each) but stops
#: after this many so one flooded socket cannot hold the loop; epoll is level-triggered, so
#: the rest is read on the next pass.
_READS_PER_WAKE = 16


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
        self._rtp: socket.socket | None = None
        self._sendto: Callable[[bytes, tuple[str, int]], object] = _not_open
        self._recvfrom: Callable[[int], tuple[bytes, Any]] | None = None
        self._send_errors = 0
        self._rtcp: socket.socket | None = None
        self._timeout = rtp_timeout
        self._jitter_settings = jitter
        self._frame_bytes = frame_bytes(sample_rate)
        self._silence = bytes(self._frame_bytes)
        # negotiated state
        self._negotiated: Negotiated | None = None
        self._codec: PayloadCodec | None = None
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
        self._dtmf_out = DtmfSender()
        # inbound RTP
        self._source: Any = None  # the peer's RTP source address (symmetric RTP)
        self._candidate: Any = None  # a new source that may take over (NAT rebinding)
        self._candidate_packets = 0
        self._relatched = 0
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
        self._srtp: SrtpContext | None = None
        self._srtp_keys: tuple[bytes, bytes] | None = None
        self._local_crypto: CryptoLine | None = None
        self._srtp_errors = 0
        self._resyncs = 0
        self._dtmf_in = DtmfReceiver()
        # RTCP
        self._rtcp_remote: tuple[str, int] | None = None
        self._rtcp_source: Any = None
        self._rtcp_sent = 0
        self._rtcp_received = 0
        self._rtcp_invalid = 0
        self._next_rtcp = self._loop.time() + _RTCP_INTERVAL * random.uniform(0.5, 1.5)
        cname = f"sipserver-{os.getpid()}-{local_port}@rtp".encode()
        self._reporter = RtcpReporter(self._ssrc, cname)
        # Streams opened together must not all do their once-a-second work (and send their
        # RTCP) on the same tick: each starts at a random point of the cycle.
        self._reads = random.randrange(_HOUSEKEEPING_READS)
        self._closed = False
        self._watching = False

    def _attach(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        """Take the two bound non-blocking sockets and start reading them.

        Plain sockets with ``loop.add_reader``, not asyncio datagram transports: opening a
        transport takes two loop passes (``connection_made`` is scheduled), closing one a
        third, and each pass of a busy call worker can wait behind a slice of the media tick;
        this way a call is set up and torn down within the callback that asks for it
        (INVITE->200 under load, bench/media_load.py). Sending calls ``sendto`` directly
        (asyncio's adds ~5 us of checks per packet); a full socket buffer drops the packet,
        as the network would.
        """
        self._rtp, self._rtcp = rtp, rtcp
        self._sendto = rtp.sendto
        self._recvfrom = rtp.recvfrom

    def _watch(self) -> None:
        """Read both sockets whenever the loop finds datagrams waiting."""
        assert self._rtp is not None and self._rtcp is not None
        self._loop.add_reader(self._rtp.fileno(), self._read_rtp)
        self._loop.add_reader(self._rtcp.fileno(), self._read_rtcp)
        self._watching = True

    def _read_rtp(self) -> None:
        self._read(self._rtp, self._on_rtp)

    def _read_rtcp(self) -> None:
        self._read(self._rtcp, self._on_rtcp)

    @staticmethod
    def _read(sock: socket.socket | None, handle: Callable[[bytes, Any], None]) -> None:
        if sock is None:
            return
        recvfrom = sock.recvfrom
        for _ in range(_READS_PER_WAKE):
            try:
                data, addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP port unreachable while the peer is not listening yet (an error queued on
                # the socket): not our problem; what follows it is read normally.
                continue
            handle(data, addr)

    def _drain(self) -> None:
        """Read every datagram waiting on the RTP socket now.

        asyncio reads one datagram per socket per loop pass; when the loop is slow (a long
        clock tick) packets pile up in the kernel and would reach the buffer late. So before
        concealing, the tick looks for itself (one ``recvfrom`` returning EAGAIN when nothing
        is there).
        """
        recvfrom = self._recvfrom
        if recvfrom is None:
            return
        on_rtp = self._on_rtp
        for _ in range(64):
            try:
                data, addr = recvfrom(2048)
            except OSError:  # BlockingIOError: nothing waiting
                return
            on_rtp(data, addr)

    def _send(self, data: bytes, remote: tuple[str, int]) -> None:
        srtp = self._srtp
        try:
            self._sendto(data if srtp is None else srtp.protect(data), remote)
        except (OSError, SrtpError):
            self._send_errors += 1
            return
        self._sent += 1

    # ------------------------------------------------------------------------------- SRTP

    def srtp_offer(self, suite: str = "AES_CM_128_HMAC_SHA1_80") -> str:
        """Our ``a=crypto`` value for an offer of ours (RFC 4568 §7.1.1; a fresh key, kept
        for :meth:`apply` of the answer)."""
        self._local_crypto = make_crypto(1, suite)
        return str(self._local_crypto)

    def srtp_answer(self, negotiated: Negotiated) -> str | None:
        """Our ``a=crypto`` value answering ``negotiated.crypto`` (the same tag and suite, our
        own key: RFC 4568 §7.1.2), for :func:`~sipserver.rtp.sdp.build_answer`; None for
        plain RTP. A re-offer with the same tag and suite keeps our key (§7.1.4).

        Raises:
            ValueError: ``negotiated.crypto`` is not a line we can use.
        """
        if negotiated.crypto is None:
            return None
        remote = parse_crypto(negotiated.crypto)
        local = self._local_crypto
        if local is None or (local.tag, local.suite) != (remote.tag, remote.suite):
            local = self._local_crypto = make_crypto(remote.tag, remote.suite)
        return str(local)

    def _apply_srtp(self, negotiated: Negotiated) -> None:
        if negotiated.crypto is None:
            self._srtp = None
            self._srtp_keys = None
            return
        remote = parse_crypto(negotiated.crypto)
        if self._local_crypto is None:
            self.srtp_answer(negotiated)
        local = self._local_crypto
        assert local is not None
        if self._srtp_keys != (local.key, remote.key):  # same keys: keep the crypto state
            self._srtp = SrtpContext(local, remote)
            self._srtp_keys = (local.key, remote.key)

    # ------------------------------------------------------------------------- negotiation

    def apply(self, negotiated: Negotiated) -> None:
        """Set or change codec, remote address and direction (the answer, and each
        re-INVITE/UPDATE's).

        Raises:
            ValueError: the negotiated codec is not one we implement, or its crypto line is
                not one we can use.
        """
        previous = self._negotiated
        self._apply_srtp(negotiated)
        self._negotiated = negotiated
        codec = negotiated.codec
        if self._codec is None or previous is None or previous.codec != codec:
            self._codec = PayloadCodec(codec.name)
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
        dtmf = negotiated.dtmf
        self._dtmf_pt = dtmf.payload_type if dtmf is not None else -1
        if dtmf is not None and (previous is None or previous.dtmf != dtmf):
            self._dtmf_in = DtmfReceiver(dtmf.clock_rate)
            self._dtmf_out.step = self._ts_step
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
        srtp = self._srtp
        if srtp is not None:
            try:
                data = srtp.unprotect(data)  # RFC 3711 §3.3: authenticated before anything
            except SrtpError:
                self._srtp_errors += 1
                return
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
                if not self._takes_over(addr, pt):
                    self._foreign += 1  # not the latched peer (RFC 4961 §3): ignored
                    return
            elif pt != self._pt and pt != self._dtmf_pt:
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
            for digit, duration_ms in self._dtmf_in.packet(payload, timestamp, now):
                self._report_dtmf(digit, duration_ms)
        else:
            self._ignored += 1  # comfort noise and the like: a slot without audio
        jb.push(seq, timestamp, b"", now)

    def _takes_over(self, addr: Any, pt: int) -> bool:
        """Whether a new source replaces the latched one: a NAT that rebinds moves the peer to
        a new port mid-call. Only once the latched source has been silent for a second and
        the new one has sent 5 audio packets in a row (a stray or injected packet cannot)."""
        if pt != self._pt or self._loop.time() - self._last_rx < _TAKEOVER_SILENCE:
            self._candidate = None
            return False
        if addr != self._candidate:
            self._candidate, self._candidate_packets = addr, 1
            return False
        self._candidate_packets += 1
        if self._candidate_packets < _TAKEOVER_PACKETS:
            return False
        self._candidate = None
        self._relatched += 1
        self._rtcp_source = None  # RTCP follows (its own packets latch it again)
        return True

    def _latch(self, addr: Any) -> None:
        self._source = addr
        peer = (addr[0], addr[1])
        if peer != self.remote:
            self.remote = peer
            self._latched = 1
            if self._rtcp_source is None:
                self._rtcp_remote = (addr[0], addr[1] + 1)

    def _report_dtmf(self, digit: str, duration_ms: int) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(digit, duration_ms)

    def _on_rtcp(self, data: bytes, addr: Any) -> None:
        srtp = self._srtp
        try:
            if srtp is not None:
                data = srtp.unprotect_rtcp(data)
            packets = RtcpPacket.parse(data)
        except (ValueError, IndexError, struct.error, SrtpError):
            self._rtcp_invalid += 1
            return
        self._rtcp_received += 1
        if self._rtcp_source is None:
            self._rtcp_source = addr
            self._rtcp_remote = (addr[0], addr[1])
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                self._reporter.sender_report_received(ntp, self._loop.time())

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
        if not jb.has_next():
            self._drain()
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
                return self._conceal(lost=False) if self._playing else self._silence
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
            if not self._fades:  # real audio only: concealment fades from it, not from itself
                self._last_frame = frame
            return frame
        if not self._playing:
            return self._silence
        return self._conceal(lost=False)  # dry: the buffer primes again meanwhile

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
            concealment = b"".join(self._conceal(lost=True) for _ in range(frames))
            self._rx_pcm += concealment[:nbytes]
        else:
            self._rx_pcm += bytes(nbytes)

    def _conceal(self, *, lost: bool) -> bytes:
        """The last frame at half the level, then a quarter, then silence.

        Counted as concealed: every frame of a lost packet's time, and the faded frames of a
        dry buffer (its silence after the fade is a caller who stopped sending: DTX, the end
        of the call, a hold without re-INVITE).
        """
        self._fades += 1
        if lost or self._fades <= 2:
            self._concealed += 1
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
        if self._dtmf_out.busy:
            self._send_event(ts, remote)
            return
        if len(pcm) != self._frame_bytes:  # not one frame: padded with silence or cut
            pcm = (pcm + self._silence)[: self._frame_bytes]
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
        self._send(_HEADER.pack(0x80, second, seq, ts, self._ssrc) + payload, remote)
        self._octets += len(payload)

    # -------------------------------------------------------------------------------- DTMF

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Queue one RFC 4733 event (sent instead of audio on the next frames); ignored when
        ``telephone-event`` was not negotiated.

        Raises:
            ValueError: ``digit`` is not one of ``0-9 * # A-D``.
        """
        event_code(digit)  # an invalid digit is an error, negotiated or not
        if self._dtmf_pt >= 0:
            self._dtmf_out.queue(digit, duration_ms)

    def _send_event(self, ts: int, remote: tuple[str, int]) -> None:
        """This frame's slot carries an RFC 4733 packet instead of audio."""
        packet = self._dtmf_out.next_packet(ts)
        assert packet is not None
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        second = self._dtmf_pt | 0x80 if packet.marker else self._dtmf_pt
        header = _HEADER.pack(0x80, second, seq, packet.timestamp, self._ssrc)
        self._send(header + packet.payload, remote)
        self._octets += len(packet.payload)
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
        for digit, duration_ms in self._dtmf_in.expire(now):
            self._report_dtmf(digit, duration_ms)
        if now >= self._next_rtcp:
            self._next_rtcp = now + _RTCP_INTERVAL * random.uniform(0.5, 1.5)
            self._send_rtcp(now)

    def _send_rtcp(self, now: float, *, bye: bool = False) -> None:
        remote = self._rtcp_remote
        if remote is None or self._rtcp is None or self._negotiated is None:
            return
        sent = (ntp_timestamp(time.time()), self._ts, self._sent, self._octets)
        compound = self._reporter.report(
            now, jitter=self._jb, peer_ssrc=self._rx_ssrc, sent=sent, bye=bye
        )
        if self._srtp is not None:
            compound = self._srtp.protect_rtcp(compound)
        with contextlib.suppress(OSError):  # a full buffer drops it, as the network would
            self._rtcp.sendto(compound, remote)
        self._rtcp_sent += 1

    # ------------------------------------------------------------------------------- state

    def stats(self) -> dict[str, int]:
        """Counters of this stream (cumulative): received, lost, late, duplicates,
        concealed_frames, underruns, sent, rtcp_sent, rtcp_received, jitter_ms, latched, and
        overflow, catchup, dtmf_received, foreign, ignored, invalid, send_errors, srtp (0/1),
        srtp_errors, resyncs (a new SSRC restarted the receive side), relatched (a new source
        took over), target_ms."""
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
            "dtmf_received": self._dtmf_in.reported,
            "foreign": self._foreign,
            "ignored": self._ignored,
            "invalid": self._invalid + self._rtcp_invalid,
            "send_errors": self._send_errors,
            "srtp": int(self._srtp is not None),
            "srtp_errors": self._srtp_errors,
            "resyncs": self._resyncs,
            "relatched": self._relatched,
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
        self._sending = self._receiving = False
        with contextlib.suppress(OSError):
            self._send_rtcp(self._loop.time(), bye=True)
        rtp, rtcp = self._rtp, self._rtcp
        self._rtp = self._rtcp = None
        self._sendto = _not_open
        self._recvfrom = None
        for sock in (rtp, rtcp):
            if sock is not None:
                if self._watching and not self._loop.is_closed():
                    self._loop.remove_reader(sock.fileno())
                sock.close()
        self._watching = False
        self.on_dtmf = self.on_timeout = None
        release, self._release = self._release, None
        if release is not None:
            release()  # both sockets are closed now: the pair may be bound again


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
        """:meth:`open_stream_now` from a coroutine."""
        return self.open_stream_now(sample_rate=sample_rate, rtp_timeout=rtp_timeout, jitter=jitter)

    def open_stream_now(
        self,
        *,
        sample_rate: int,
        rtp_timeout: float,
        jitter: JitterSettings | None = None,
    ) -> RtpStream:
        """Bind the next free pair and return a stream on it (:meth:`RtpStream.apply` it);
        called on the event loop's thread, it does not wait for the loop.

        Raises:
            NoPortsError: every pair is in use (or held by another program).
        """
        for _ in range(len(self._free)):
            port = self._free.popleft()
            self._used.add(port)
            rtp_socket = self._socket()
            rtcp_socket = self._socket()
            try:
                rtp_socket.bind((self.host, port))
                rtcp_socket.bind((self.host, port + 1))
            except OSError as exc:
                rtp_socket.close()
                rtcp_socket.close()
                self._release(port)
                log.info("rtp_port_busy", port=port, error=str(exc))
                continue
            stream = RtpStream(
                local_port=port,
                sample_rate=sample_rate,
                rtp_timeout=rtp_timeout,
                jitter=jitter,
                release=functools.partial(self._release, port),
            )
            stream._attach(rtp_socket, rtcp_socket)
            stream._watch()
            return stream
        raise NoPortsError(f"no free RTP port pair in {self.host} range")

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock

    def _release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)
