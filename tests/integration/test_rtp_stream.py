"""RtpStream over real UDP on loopback: two streams talking, an impaired RTP sender (loss,
jitter, reordering), RFC 4733 events, symmetric RTP latching, the RTP timeout, G.722.

The far ends are real sockets: another RtpStream, or tests/rtp_sender.py's RtpPeer, which
builds its packets with aiortc's RtpPacket. Nothing here asserts a speed: the clock-driven
loops run for a fixed number of frames and the assertions are about what came out.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc.rtp import RtcpRrPacket, RtcpSdesPacket, RtcpSrPacket

from sipserver.media.codecs import ulaw_decode, ulaw_encode
from sipserver.rtp import rtp_stream
from sipserver.rtp.rtp_stream import MediaClock, RtpPortPool, RtpStream
from sipserver.rtp.sdp import Negotiated, build_answer, build_offer, negotiate, parse_sdp
from sipserver.sip.message import SipRequest, make_response, parse_message
from tests.integration.conftest import free_port_range, until
from tests.rtp_sender import RtpPeer

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@pytest.fixture
async def pool() -> AsyncIterator[RtpPortPool]:
    yield RtpPortPool(HOST, free_port_range(40), 40)


def offer_to(port: int, codec: str = "PCMU", direction: str = "sendrecv") -> Negotiated:
    """What a stream negotiates when its peer offers ``codec`` on ``port``."""
    body = build_offer(
        host=HOST, port=port, session_id=1, session_version=1, codecs=(codec,), direction=direction
    )
    negotiated = negotiate(parse_sdp(body))
    assert negotiated is not None
    return negotiated


async def run_clock(frames: int, tick: Callable[[int], None]) -> MediaClock:
    """Run ``tick(k)`` for k in 0..frames-1 on a MediaClock and return the stopped clock."""
    done = asyncio.get_running_loop().create_future()
    count = 0

    def on_tick() -> None:
        nonlocal count
        if count < frames:
            tick(count)
            count += 1
        elif not done.done():
            done.set_result(None)

    clock = MediaClock(on_tick)
    clock.start()
    try:
        await asyncio.wait_for(done, timeout=frames * 0.02 * 10 + 10)
    finally:
        clock.stop()
    return clock


def tone(freq: float, rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


@pytest.mark.parametrize(("codec", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("G722", 16000)])
async def test_two_streams_carry_a_tone_both_ways(pool: RtpPortPool, codec: str, rate: int) -> None:
    a = await pool.open_stream(sample_rate=rate, rtp_timeout=10)
    b = await pool.open_stream(sample_rate=rate, rtp_timeout=10)
    a.apply(offer_to(b.local_port, codec))
    b.apply(offer_to(a.local_port, codec))
    fb = rate // 50 * 2
    to_b, to_a = tone(1000, rate, 3), tone(440, rate, 3)
    at_b: list[bytes] = []
    at_a: list[bytes] = []

    def tick(k: int) -> None:
        a.write_frame(to_b[k * fb : (k + 1) * fb])
        b.write_frame(to_a[k * fb : (k + 1) * fb])
        at_b.append(b.read_frame())
        at_a.append(a.read_frame())

    await run_clock(150, tick)
    assert {len(f) for f in at_b + at_a} == {fb}  # every read is exactly one frame
    assert peak_hz(b"".join(at_b[-100:]), rate) == pytest.approx(1000, abs=15)
    assert peak_hz(b"".join(at_a[-100:]), rate) == pytest.approx(440, abs=15)
    for stream in (a, b):
        stats = stream.stats()
        assert stats["sent"] == 150
        assert stats["received"] >= 140  # the last few are still in flight
        assert stats["lost"] == 0 and stats["latched"] == 0
    a.close()
    b.close()
    a.close()  # idempotent
    assert await until(lambda: pool.in_use() == 0, 5)


async def test_rtcp_reports_go_out_and_come_in(
    pool: RtpPortPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtp_stream, "_RTCP_INTERVAL", 0.3)
    a = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    peer, rtcp_peer = await RtpPeer.open_pair()
    a.apply(offer_to(peer.address[1]))
    peer.play([ulaw_encode(bytes(320))] * 150, (HOST, a.local_port))
    # RTCP is looked at once a second of frames, from a random point of the cycle, and the
    # first report is due 0.15-0.45 s in: 3 s of frames give at least two chances after it.
    await run_clock(150, lambda k: (a.write_frame(bytes(320)), a.read_frame()))
    assert a.stats()["rtcp_sent"] >= 2
    # RTCP went to port + 1 (RFC 3550 §11): SRs (we send) with a report block on their stream
    reports = [p for p in rtcp_peer.rtcp if isinstance(p, RtcpSrPacket)]
    assert len(reports) >= 2 and reports[-1].sender_info.packet_count > 0
    blocks = [r for p in reports for r in p.reports if r.ssrc == peer.ssrc]
    assert blocks and blocks[-1].packets_lost == 0 and blocks[-1].highest_sequence >= 1050
    assert any(isinstance(p, RtcpSdesPacket) for p in rtcp_peer.rtcp)  # the CNAME goes along
    # their RTCP reaches us and is counted
    rtcp_peer.send(bytes(RtcpRrPacket(ssrc=peer.ssrc)), (HOST, a.local_port + 1))
    assert await until(lambda: a.stats()["rtcp_received"] == 1, 5)
    rtcp_peer.close()
    peer.close()
    a.close()


LEVELS = [4100 + 256 * i for i in range(16)]  # 16 distinct mu-law levels in [4000, 8000)


def level_frame(label: int) -> bytes:
    return ulaw_encode(np.full(160, LEVELS[label % 16], dtype="<i2").tobytes())


async def test_impaired_sender_gives_continuous_frames_and_counts(pool: RtpPortPool) -> None:
    stream = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    peer = await RtpPeer.open()
    stream.apply(offer_to(peer.address[1]))
    count = 300
    dropped = peer.play(
        [level_frame(k) for k in range(count)],
        (HOST, stream.local_port),
        loss=0.05,
        jitter_ms=40,
        reorder=0.05,
        seed=7,
    )
    frames: list[bytes] = []
    await run_clock(count + 20, lambda k: frames.append(stream.read_frame()))
    await peer.finished()
    await asyncio.sleep(0.1)  # the last datagram is read

    decoded = {int(np.frombuffer(ulaw_decode(level_frame(i)), "<i2")[0]): i for i in range(16)}
    assert {len(f) for f in frames} == {320}
    labels: list[int] = []
    faded = silent = 0
    for frame in frames:
        samples = np.frombuffer(frame, "<i2")
        assert (samples == samples[0]).all()  # never a mix of two packets
        value = int(samples[0])
        if value in decoded:
            labels.append(decoded[value])
        elif labels:  # concealment: a faded copy of real audio (below every level), or silence
            assert 0 <= value < 4000
            faded += value > 0
            silent += value == 0
    steps = [(b - a) % 16 for a, b in itertools.pairwise(labels)]
    assert all(1 <= s <= 8 for s in steps)  # the sender's order, never backwards or repeated
    assert steps.count(1) >= 0.8 * len(steps)
    assert len(labels) >= count - len(dropped) - 40

    stats = stream.stats()
    assert peer.reordered > 0 and len(dropped) > 0
    assert stats["received"] == count - len(dropped)
    assert 1 <= stats["lost"] <= len(dropped) + stats["late"] + 5
    # every lost packet was concealed, and so were the first (faded) frames of each dry spell
    assert faded <= stats["concealed_frames"] <= faded + silent
    assert stats["lost"] <= stats["concealed_frames"] <= stats["lost"] + 2 * stats["underruns"]
    assert stats["jitter_ms"] >= 5  # uniform 0-40 ms delays: ~13 ms by RFC 3550 A.8
    assert stats["target_ms"] > 40  # the playout delay grew with the jitter
    assert stats["duplicates"] == 0
    peer.close()
    stream.close()


async def test_rfc4733_events_are_reported_once_each(pool: RtpPortPool) -> None:
    stream = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    peer = await RtpPeer.open()
    stream.apply(offer_to(peer.address[1]))
    digits: list[tuple[str, int]] = []
    stream.on_dtmf = lambda digit, ms: digits.append((digit, ms))
    dest = (HOST, stream.local_port)
    audio = [peer.packet(100 + k, 8000 + 160 * k, level_frame(k)) for k in range(3)]
    # "5", "5" again (a new event: new timestamp), then "#" whose end packets are all lost
    events = peer.event_packets(5, seq=103, timestamp=8480)
    events += peer.event_packets(5, seq=111, timestamp=9760)
    events += peer.event_packets(11, seq=119, timestamp=11040)[:-3]
    for data in audio + events:
        peer.send(data, dest)
    await run_clock(30, lambda k: stream.read_frame())
    assert digits == [("5", 100), ("5", 100)]  # 5 x 160 units at 8 kHz; 3 ends = 1 event
    await run_clock(100, lambda k: stream.read_frame())  # the unfinished "#" goes stale
    assert digits == [("5", 100), ("5", 100), ("#", 100)]
    assert stream.stats()["lost"] == 0  # event packets fill their slots: no audio was lost
    peer.close()
    stream.close()


async def test_send_dtmf_reaches_the_other_stream_once(pool: RtpPortPool) -> None:
    a = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    b = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    a.apply(offer_to(b.local_port))
    b.apply(offer_to(a.local_port))
    digits: list[tuple[str, int]] = []
    b.on_dtmf = lambda digit, ms: digits.append((digit, ms))
    a.send_dtmf("7", 100)
    a.send_dtmf("#", 60)
    with pytest.raises(ValueError):
        a.send_dtmf("x")

    def tick(k: int) -> None:
        a.write_frame(bytes(320))
        b.read_frame()

    await run_clock(40, tick)
    assert digits == [("7", 100), ("#", 60)]
    a.close()
    b.close()


async def test_symmetric_rtp_latches_to_the_real_source(pool: RtpPortPool) -> None:
    stream = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    peer = await RtpPeer.open()  # behind a "NAT": its packets come from another port
    stranger = await RtpPeer.open()
    sdp_port = peer.address[1] + 2 if peer.address[1] < 65000 else peer.address[1] - 2
    stream.apply(offer_to(sdp_port))
    assert stream.remote == (HOST, sdp_port)
    dest = (HOST, stream.local_port)
    peer.send(peer.packet(1, 160, level_frame(1)), dest)
    assert await until(lambda: stream.remote == peer.address, 5)
    stranger.send(stranger.packet(2, 320, level_frame(2)), dest)
    await run_clock(5, lambda k: stream.write_frame(bytes(320)))
    assert await until(lambda: len(peer.received) == 5, 5)  # our RTP goes where theirs comes from
    assert [p.payload_type for p in peer.received] == [0] * 5
    assert peer.received[0].marker == 1
    seqs = [p.sequence_number for p in peer.received]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2, 3, 4]
    stamps = [p.timestamp for p in peer.received]
    assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [0, 160, 320, 480, 640]
    stats = stream.stats()
    assert stats["latched"] == 1 and stats["foreign"] == 1 and stats["received"] == 1
    assert stranger.received == []
    peer.close()
    stranger.close()
    stream.close()


async def test_rtp_timeout_fires_once_but_never_on_hold(pool: RtpPortPool) -> None:
    silent = await pool.open_stream(sample_rate=8000, rtp_timeout=0.3)
    held = await pool.open_stream(sample_rate=8000, rtp_timeout=0.3)
    silent.apply(offer_to(held.local_port))
    held.apply(offer_to(silent.local_port, direction="sendonly"))  # the peer holds us
    fired: list[str] = []
    silent.on_timeout = lambda: fired.append("silent")
    held.on_timeout = lambda: fired.append("held")
    outgoing: list[bytes] = []

    def tick(k: int) -> None:
        held.write_frame(bytes(320))  # on hold: nothing is sent
        outgoing.append(held.read_frame())
        silent.read_frame()

    await run_clock(150, tick)
    assert fired == ["silent"]
    assert held.stats()["sent"] == 0 and set(outgoing) == {bytes(320)}
    silent.close()
    held.close()


async def test_port_pool_runs_out_cleanly() -> None:
    pool = RtpPortPool(HOST, free_port_range(4), 4)  # two pairs, free now
    streams: list[RtpStream] = []
    for _ in range(2):
        streams.append(await pool.open_stream(sample_rate=8000, rtp_timeout=0))
    assert pool.in_use() == 2
    assert {s.local_port % 2 for s in streams} == {0}
    with pytest.raises(rtp_stream.NoPortsError):
        await pool.open_stream(sample_rate=8000, rtp_timeout=0)
    streams[0].close()
    assert await until(lambda: pool.in_use() == 1, 5)  # once both sockets are really closed
    again = await pool.open_stream(sample_rate=8000, rtp_timeout=0)
    assert again.local_port == streams[0].local_port
    again.close()
    streams[1].close()
    assert await until(lambda: pool.in_use() == 0, 5)


async def test_two_streams_over_sdes_srtp_and_plain_rtp_is_refused(pool: RtpPortPool) -> None:
    a = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    b = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    # a offers RTP/SAVP with its key; b answers with its own; both apply the exchange
    offer = build_offer(host=HOST, port=a.local_port, session_id=1, session_version=1)
    offer = offer.replace(b"RTP/AVP", b"RTP/SAVP") + f"a=crypto:{a.srtp_offer()}\r\n".encode()
    at_b = negotiate(parse_sdp(offer), srtp=True)
    assert at_b is not None and at_b.crypto is not None
    answer = build_answer(
        parse_sdp(offer),
        at_b,
        host=HOST,
        port=b.local_port,
        session_id=2,
        session_version=2,
        crypto=b.srtp_answer(at_b),
    )
    b.apply(at_b)
    at_a = negotiate(parse_sdp(answer), srtp=True)
    assert at_a is not None and at_a.crypto is not None
    a.apply(at_a)
    intruder = await RtpPeer.open()
    intruder.send(intruder.packet(1, 160, level_frame(3)), (HOST, b.local_port))  # plain RTP
    to_b = tone(1000, 8000, 2)
    heard: list[bytes] = []

    def tick(k: int) -> None:
        a.write_frame(to_b[k * 320 : (k + 1) * 320])
        b.write_frame(bytes(320))
        heard.append(b.read_frame())
        a.read_frame()

    await run_clock(100, tick)
    assert peak_hz(b"".join(heard[-60:]), 8000) == pytest.approx(1000, abs=15)
    stats_b = b.stats()
    assert stats_b["srtp"] == 1 and stats_b["srtp_errors"] == 1  # the intruder's packet
    assert stats_b["latched"] == 0 and b.remote == (HOST, a.local_port)
    assert a.stats()["received"] >= 90 and a.stats()["srtp_errors"] == 0
    intruder.close()
    a.close()
    b.close()


def echo(stream: RtpStream) -> None:
    stream.write_frame(stream.read_frame())


async def test_pjsua2_caller_talks_sdes_srtp_with_a_stream(
    pool: RtpPortPool, tmp_path: Path
) -> None:
    """A real SRTP peer: pjsua2 (libsrtp inside pjsip) offers RTP/SAVP with SRTP required and
    plays a 1 kHz tone; a minimal UAS here answers with our key and echoes through an
    RtpStream; the tone comes back, decrypted and re-encrypted both ways."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    class Sip(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            inbox.put_nowait((data, addr))

    sip, _ = await loop.create_datagram_endpoint(Sip, local_addr=(HOST, 0))
    sip_port = sip.get_extra_info("sockname")[1]
    play, record = tmp_path / "tone.wav", tmp_path / "heard.wav"
    with wave.open(str(play), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(tone(1000, 8000, 3))
    caller = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("pjsua2_caller.py")),
        *("--uri", f"sip:echo@{HOST}:{sip_port}", "--srtp", "required"),
        *("--play", str(play), "--record", str(record), "--seconds", "3", "--wait-bye", "0.5"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stream: RtpStream | None = None
    clock: MediaClock | None = None
    try:
        while True:
            data, addr = await asyncio.wait_for(inbox.get(), 30)
            message = parse_message(data)
            if not isinstance(message, SipRequest):
                continue
            if message.method == "INVITE" and stream is None:
                offer = parse_sdp(message.body)
                assert offer.protocol == "RTP/SAVP"
                negotiated = negotiate(offer, srtp=True)
                assert negotiated is not None and negotiated.crypto is not None
                stream = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
                body = build_answer(
                    offer,
                    negotiated,
                    host=HOST,
                    port=stream.local_port,
                    session_id=1,
                    session_version=1,
                    crypto=stream.srtp_answer(negotiated),
                )
                stream.apply(negotiated)
                clock = MediaClock(functools.partial(echo, stream))
                clock.start()
                ok = make_response(
                    message,
                    200,
                    to_tag="rtpmedia",
                    headers=[
                        ("Contact", f"<sip:echo@{HOST}:{sip_port}>"),
                        ("Content-Type", "application/sdp"),
                    ],
                )
                ok.body = body
                sip.sendto(ok.encode(), addr)
            elif message.method == "BYE":
                sip.sendto(make_response(message, 200).encode(), addr)
                break
        out, err = await asyncio.wait_for(caller.communicate(), 30)
    finally:
        if caller.returncode is None:
            caller.kill()
            await caller.wait()
        if clock is not None:
            clock.stop()
        sip.close()
    assert caller.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["srtp"] == "AES_CM_128_HMAC_SHA1_80"
    assert stream is not None
    stats = stream.stats()
    assert stats["srtp"] == 1 and stats["srtp_errors"] == 0 and stats["received"] >= 100
    with wave.open(str(record), "rb") as w:
        heard = w.readframes(w.getnframes())
    assert len(heard) >= 8000 * 2  # a second or more came back
    assert peak_hz(heard[-16000:], 8000) == pytest.approx(1000, abs=15)
    stream.close()


async def test_a_rebound_nat_port_takes_over_only_after_the_old_one_fell_silent(
    pool: RtpPortPool,
) -> None:
    stream = await pool.open_stream(sample_rate=8000, rtp_timeout=10)
    before, after = await RtpPeer.open(), await RtpPeer.open()  # the caller's NAT, rebound
    after.ssrc = before.ssrc
    stream.apply(offer_to(before.address[1]))
    dest = (HOST, stream.local_port)
    for k in range(3):
        before.send(before.packet(k, 160 * k, level_frame(k)), dest)
    assert await until(lambda: stream.stats()["received"] == 3, 5)
    for k in range(3, 8):  # while the latched source is alive: ignored, however many
        after.send(after.packet(k, 160 * k, level_frame(k)), dest)
    assert await until(lambda: stream.stats()["foreign"] == 5, 5)
    assert stream.remote == before.address
    await asyncio.sleep(1.1)  # the old port falls silent
    for k in range(8, 14):
        after.send(after.packet(k, 160 * k, level_frame(k)), dest)
    assert await until(lambda: stream.remote == after.address, 5)
    stats = stream.stats()
    assert stats["relatched"] == 1 and stats["foreign"] == 5 + 4  # the 5th took over
    stream.write_frame(bytes(320))
    assert await until(lambda: len(after.received) == 1, 5) and before.received == []
    before.close()
    after.close()
    stream.close()
