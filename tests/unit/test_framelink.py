"""Frame link: byte-exact codec, incremental decoder, errors, and the asyncio adapter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipserver.rtp.framelink import (
    MAX_RECORD_LENGTH,
    RELAY_CALL_BASE,
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Dtmf,
    Event,
    FrameLink,
    FrameLinkError,
    Hello,
    LinkRecord,
    Ping,
    Pong,
    RecordDecoder,
    RelayedCallStarted,
    Stats,
    encode,
    open_link,
    serve_links,
)

PCM = bytes(range(256)) + bytes(64)  # 320 bytes: 160 samples, 20 ms at 8 kHz

RECORDS: list[LinkRecord] = [
    Hello("pjsua2-0", 4242, "pjsua2", "127.0.0.1", 5070, 4, 8000),
    Hello("n", 1, "native", "::1", 1, 400, 16000, frame_ms=10),
    CallStarted(
        7,
        "abc@host",
        "<sip:+14155550123@pbx>;tag=1",
        "<sip:+14155550100@edge>",
        "sip:+14155550100@127.0.0.1:5070",
        "PCMU/8000",
        "203.0.113.5:40000",
        {"X-Tenant": "acme", "User-Agent": "Ünïcode"},
    ),
    CallEnded(7, "bye"),
    CallEnded(0xFFFFFFFF, "cancel", 487),
    Audio((AudioFrame(1, 0, 0, PCM),)),
    Audio(tuple(AudioFrame(c, 100 + c, 160 * c, PCM) for c in range(4))),
    Audio(()),
    Audio((AudioFrame(3, 0xFFFFFFFF, 0xFFFFFFFF, b""),)),
    Dtmf(7, "#", 120, "rfc4733"),
    Dtmf(7, "D", 0, "info"),
    Stats({"calls": 3, "capacity": 4, "rx_overflow": 0, "tx_underflow": 12}),
    Stats({}),
    Ping(0),
    Pong(2**64 - 1),
]


def _json_payload(call: int | None, text: bytes) -> bytes:
    return (b"" if call is None else struct.pack("<I", call)) + text


def _record(rtype: int, payload: bytes) -> bytes:
    return struct.pack("<IB", len(payload) + 1, rtype) + payload


# Wire vectors written out by hand from docs/framelink.md.
VECTORS: list[tuple[LinkRecord, bytes]] = [
    (Ping(0x0102030405060708), bytes.fromhex("09000000 07 0807060504030201")),
    (Pong(1), bytes.fromhex("09000000 08 0100000000000000")),
    (Dtmf(2, "5", 250, "info"), bytes.fromhex("09000000 05 02000000 35 fa00 02")),
    (
        Audio((AudioFrame(1, 2, 3, b"\x10\x20"),)),
        bytes.fromhex("13000000 04 0100 01000000 02000000 03000000 0200 1020"),
    ),
    (
        CallEnded(9, "bye", 200),
        _record(3, _json_payload(9, b'{"reason":"bye","status":200}')),
    ),
    (Stats({"calls": 1}), _record(6, b'{"calls":1}')),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip_is_byte_exact(record: LinkRecord) -> None:
    data = encode(record)
    assert struct.unpack_from("<I", data)[0] == len(data) - 4
    (decoded,) = RecordDecoder().feed(data)
    assert decoded == record
    assert encode(decoded) == data


@pytest.mark.parametrize(("record", "wire"), VECTORS, ids=[type(v[0]).__name__ for v in VECTORS])
def test_wire_vectors(record: LinkRecord, wire: bytes) -> None:
    assert encode(record) == wire
    assert RecordDecoder().feed(wire) == [record]


def test_call_started_uses_from_and_to_keys() -> None:
    data = encode(RECORDS[2])
    assert b'"from":"<sip:+14155550123@pbx>;tag=1"' in data
    assert b'"to":"<sip:+14155550100@edge>"' in data


def test_optional_json_fields_default() -> None:
    hello = _record(
        1,
        b'{"worker_id":"w","pid":1,"kind":"pjsua2","sip_host":"h","sip_port":2,'
        b'"capacity":4,"sample_rate":8000,"extra":true}',
    )
    ended = _record(3, _json_payload(5, b'{"reason":"x"}'))
    started = _record(
        2,
        _json_payload(
            1,
            b'{"sip_call_id":"c","from":"f","to":"t","request_uri":"r","codec":"PCMU",'
            b'"remote_rtp":"1.2.3.4:5"}',
        ),
    )
    hello_rec, ended_rec, started_rec = RecordDecoder().feed(hello + ended + started)
    assert hello_rec == Hello("w", 1, "pjsua2", "h", 2, 4, 8000, 20)
    assert ended_rec == CallEnded(5, "x", 0)
    assert isinstance(started_rec, CallStarted)
    assert started_rec.headers == {}


def test_decoder_split_at_every_byte_boundary() -> None:
    stream = b"".join(encode(r) for r in RECORDS)
    for cut in range(len(stream) + 1):
        decoder = RecordDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == RECORDS, cut
        assert decoder.buffered == 0


def test_decoder_one_byte_at_a_time() -> None:
    stream = b"".join(encode(r) for r in RECORDS)
    decoder = RecordDecoder()
    got: list[LinkRecord] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == RECORDS


def test_many_records_per_feed() -> None:
    records = [Audio((AudioFrame(1, seq, seq * 160, PCM),)) for seq in range(500)]
    stream = b"".join(encode(r) for r in records)
    assert RecordDecoder().feed(stream) == records


def test_decoder_keeps_incomplete_tail() -> None:
    data = encode(RECORDS[0])
    decoder = RecordDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:] + data[:3]) == [RECORDS[0]]
    assert decoder.buffered == 3


ERRORS: list[tuple[str, bytes]] = [
    ("zero length", struct.pack("<IB", 0, 7)),
    ("too long", struct.pack("<IB", MAX_RECORD_LENGTH + 1, 4)),
    ("unknown type", _record(9, b"")),
    ("type zero", _record(0, b"")),
    ("ping short", _record(7, b"\x00" * 7)),
    ("pong long", _record(8, b"\x00" * 9)),
    ("audio no count", _record(4, b"\x01")),
    ("audio missing frame", _record(4, b"\x01\x00")),
    ("audio short header", _record(4, b"\x01\x00" + b"\x00" * 13)),
    ("audio short pcm", _record(4, b"\x01\x00" + struct.pack("<IIIH", 1, 0, 0, 4) + b"\x00\x00")),
    ("audio odd pcm", _record(4, b"\x01\x00" + struct.pack("<IIIH", 1, 0, 0, 1) + b"\x00")),
    ("audio trailing", _record(4, b"\x00\x00\x00")),
    ("dtmf bad digit", _record(5, struct.pack("<IBHB", 1, ord("E"), 0, 1))),
    ("dtmf nul digit", _record(5, struct.pack("<IBHB", 1, 0, 0, 1))),
    ("dtmf bad method", _record(5, struct.pack("<IBHB", 1, ord("1"), 0, 4))),
    ("dtmf short", _record(5, b"\x00" * 7)),
    ("hello bad json", _record(1, b"{not json")),
    ("hello bad utf8", _record(1, b'{"worker_id":"\xff"}')),
    ("hello not object", _record(1, b"[1,2]")),
    ("hello missing key", _record(1, b'{"worker_id":"w"}')),
    (
        "hello bool as int",
        _record(
            1,
            b'{"worker_id":"w","pid":true,"kind":"k","sip_host":"h","sip_port":1,'
            b'"capacity":1,"sample_rate":8000}',
        ),
    ),
    ("started short", _record(2, b"\x01\x00")),
    (
        "started bad headers",
        _record(
            2,
            _json_payload(
                1,
                b'{"sip_call_id":"c","from":"f","to":"t","request_uri":"r","codec":"P",'
                b'"remote_rtp":"a","headers":{"X":1}}',
            ),
        ),
    ),
    ("ended status str", _record(3, _json_payload(1, b'{"reason":"x","status":"200"}'))),
    ("stats non-int", _record(6, b'{"calls":1.5}')),
]


@pytest.mark.parametrize(("name", "data"), ERRORS, ids=[e[0] for e in ERRORS])
def test_decoder_errors(name: str, data: bytes) -> None:
    with pytest.raises(FrameLinkError):
        RecordDecoder().feed(data)


def test_oversized_length_is_rejected_before_the_payload_arrives() -> None:
    with pytest.raises(FrameLinkError, match="length"):
        RecordDecoder().feed(struct.pack("<I", MAX_RECORD_LENGTH + 1) + b"\x04")


def test_frame_link_error_is_a_value_error() -> None:
    assert issubclass(FrameLinkError, ValueError)


@pytest.mark.parametrize(
    "record",
    [
        Dtmf(1, "E", 0, "info"),
        Dtmf(1, "12", 0, "info"),
        Dtmf(1, "1", 0, "sip"),  # type: ignore[arg-type]
        Dtmf(1, "1", 70000, "info"),
        Audio((AudioFrame(1, 0, 0, b"\x00"),)),
        Audio((AudioFrame(-1, 0, 0, b""),)),
        Audio((AudioFrame(1, 2**32, 0, b""),)),
        Audio((AudioFrame(1, 0, 0, b"\x00" * 65536),)),
        Ping(-1),
        CallEnded(2**32, "x"),
        Audio(tuple([AudioFrame(1, 0, 0, b"")] * 70000)),
    ],
)
def test_encode_rejects_out_of_range_fields(record: LinkRecord) -> None:
    with pytest.raises(ValueError):
        encode(record)


def test_encode_rejects_records_above_one_mib() -> None:
    big = Audio(tuple(AudioFrame(1, i, 0, b"\x00" * 60000) for i in range(18)))
    with pytest.raises(ValueError, match="exceeds"):
        encode(big)


_u32 = st.integers(0, 2**32 - 1)
_text = st.text(max_size=20)
_pcm = st.binary(max_size=200).map(lambda b: b[: len(b) & ~1])
_records: st.SearchStrategy[LinkRecord] = st.one_of(
    st.builds(
        Hello,
        _text,
        st.integers(0, 2**31),
        _text,
        _text,
        st.integers(0, 65535),
        st.integers(0, 1000),
        st.sampled_from([8000, 16000, 48000]),
        st.integers(1, 60),
    ),
    st.builds(
        CallStarted,
        st.integers(0, RELAY_CALL_BASE - 1),
        _text,
        _text,
        _text,
        _text,
        _text,
        _text,
        st.dictionaries(_text, _text, max_size=3),
    ),
    st.builds(CallEnded, _u32, _text, st.integers(0, 699)),
    st.builds(
        Audio,
        st.lists(st.builds(AudioFrame, _u32, _u32, _u32, _pcm), max_size=5).map(tuple),
    ),
    st.builds(
        Dtmf,
        _u32,
        st.sampled_from(sorted("0123456789*#ABCD")),
        st.integers(0, 65535),
        st.sampled_from(["rfc4733", "info", "stream"]),
    ),
    st.builds(
        RelayedCallStarted,
        st.integers(RELAY_CALL_BASE, 0xFFFFFFFF),
        _text,
        _text,
        _text,
        _text,
        _text,
        st.integers(0, 2**31),
    ),
    st.builds(
        Event,
        _u32,
        st.fixed_dictionaries({"type": _text}, optional={"text": _text, "n": st.integers()}),
    ),
    st.builds(Stats, st.dictionaries(_text, st.integers(-(2**63), 2**63), max_size=4)),
    st.builds(Ping, st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**64 - 1)),
)


@given(st.lists(_records, max_size=6), st.integers(1, 50))
def test_hypothesis_round_trip(records: list[LinkRecord], chunk: int) -> None:
    stream = b"".join(encode(r) for r in records)
    decoder = RecordDecoder()
    got: list[LinkRecord] = []
    for i in range(0, len(stream), chunk):
        got += decoder.feed(stream[i : i + chunk])
    assert got == records
    assert b"".join(encode(r) for r in got) == stream


@given(st.binary(max_size=300))
def test_hypothesis_garbage_never_crashes_otherwise(data: bytes) -> None:
    with contextlib.suppress(FrameLinkError):
        RecordDecoder().feed(data)


# --------------------------------------------------------------------------------------------
# FrameLink over a real unix socket pair
# --------------------------------------------------------------------------------------------


async def _pair(max_queued_frames: int = 500) -> tuple[FrameLink, FrameLink]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    return (
        FrameLink(ra, wa, max_queued_frames=max_queued_frames),
        FrameLink(rb, wb, max_queued_frames=max_queued_frames),
    )


async def _collect(link: FrameLink) -> list[LinkRecord]:
    return [r async for r in link.records()]


def _frames(records: list[LinkRecord]) -> list[AudioFrame]:
    return [f for r in records if isinstance(r, Audio) for f in r.frames]


async def test_records_flow_both_ways() -> None:
    worker, main = await _pair()
    to_main: list[LinkRecord] = [
        *RECORDS[:3],
        Audio((AudioFrame(7, 0, 0, PCM),)),
        Dtmf(7, "1", 80, "rfc4733"),
    ]
    to_worker: list[LinkRecord] = [Audio((AudioFrame(7, 0, 0, PCM),)), CallEnded(7, "session")]
    for r in to_main:
        worker.send(r)
    for r in to_worker:
        main.send(r)
    main_rx = asyncio.create_task(_collect(main))
    worker_rx = asyncio.create_task(_collect(worker))
    await worker.close()  # flushes, then EOF ends main's records()
    assert await main_rx == to_main
    await main.close()
    assert await worker_rx == to_worker
    assert worker.sent_records == len(to_main)
    assert main.received_records == len(to_main)


async def test_ping_is_answered_with_pong() -> None:
    a, b = await _pair()
    a.send(Ping(99))
    b_iter = b.records()
    assert await anext(b_iter) == Ping(99)
    a_iter = a.records()
    assert await anext(a_iter) == Pong(99)
    await a.close()
    await b.close()
    await b_iter.aclose()
    await a_iter.aclose()


async def test_send_batches_several_records_per_write() -> None:
    a, b = await _pair()
    writes: list[int] = []
    real_write = a._writer.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        real_write(data)

    a._writer.write = counting_write  # type: ignore[method-assign]
    for seq in range(10):
        a.send(Audio((AudioFrame(1, seq, seq * 160, PCM),)))
    a.send(CallEnded(1, "bye"))
    rx = asyncio.create_task(_collect(b))
    await a.close()
    got = await rx
    assert len(got) == 11
    assert len(writes) == 1
    await b.close()


async def test_slow_peer_drops_oldest_audio_and_keeps_control_records() -> None:
    sender, receiver = await _pair(max_queued_frames=20)
    sent = 0
    controls: list[LinkRecord] = []
    # The receiver does not read: the socket and transport buffers fill, drain() blocks the
    # writer, and the queue starts dropping its oldest frames.
    for i in range(20_000):
        sender.send(Audio((AudioFrame(1, sent, sent * 160, PCM), AudioFrame(2, sent, 0, PCM))))
        sent += 1
        if i % 100 == 0:
            ctl = Dtmf(1, "5", i % 65536, "info")
            sender.send(ctl)
            controls.append(ctl)
        await asyncio.sleep(0)  # let the writer task run (no wall-clock wait)
        if sender.dropped_frames > 100:
            break
    assert sender.dropped_frames > 0
    assert sender.queued_frames <= 20
    sender.send(CallEnded(1, "bye"))
    controls.append(CallEnded(1, "bye"))
    rx = asyncio.create_task(_collect(receiver))
    await sender.close(flush_timeout=30)
    got = await rx
    assert [r for r in got if not isinstance(r, Audio)] == controls
    frames = _frames(got)
    assert len(frames) + sender.dropped_frames == 2 * sent
    # The newest frames survive; the receiver sees the drops as seq gaps of call 2 (call 1's
    # state was forgotten at CALL_ENDED, so count gaps from the frames directly).
    assert frames[-1].seq == sent - 1
    for call in (1, 2):
        seqs = [f.seq for f in frames if f.call == call]
        assert seqs == sorted(seqs)
    assert receiver.lost_frames > 0
    await receiver.close()


async def test_close_does_not_wait_for_a_stuck_peer() -> None:
    sender, receiver = await _pair(max_queued_frames=20)
    seq = 0
    while sender.dropped_frames == 0 and seq < 100_000:
        sender.send(Audio((AudioFrame(1, seq, 0, PCM),)))
        seq += 1
        await asyncio.sleep(0)
    assert sender.dropped_frames > 0
    await sender.close(flush_timeout=0)  # returns although the peer never reads
    got = await _collect(receiver)  # a prefix of what was sent, then EOF
    seqs = [f.seq for f in _frames(got)]
    assert seqs == sorted(seqs)
    assert 0 < len(seqs) < seq
    await receiver.close()


async def test_send_rejects_bad_records_in_the_caller() -> None:
    a, b = await _pair()
    with pytest.raises(ValueError):
        a.send(Audio((AudioFrame(1, 0, 0, b"\x00"),)))
    with pytest.raises(ValueError):
        a.send(Dtmf(1, "x", 0, "info"))
    a.send(Ping(3))  # the writer is unharmed
    assert a.queued_records == 1
    rx = asyncio.create_task(_collect(b))
    await a.close()
    assert await rx == [Ping(3)]
    await b.close()


async def test_overflow_drops_oldest_frames_within_a_record() -> None:
    a, b = await _pair(max_queued_frames=3)
    # No await between sends: everything is still queued, so the overflow is deterministic.
    a.send(Audio(tuple(AudioFrame(1, s, 0, PCM) for s in range(2))))
    a.send(CallStarted(2, "c", "f", "t", "r", "PCMU/8000", "h:1"))
    a.send(Audio(tuple(AudioFrame(1, s, 0, PCM) for s in range(2, 4))))
    a.send(Audio((AudioFrame(1, 4, 0, PCM),)))
    assert a.dropped_frames == 2
    assert a.queued_frames == 3
    rx = asyncio.create_task(_collect(b))
    await a.close()
    got = await rx
    assert isinstance(got[0], CallStarted)
    assert [f.seq for f in _frames(got)] == [2, 3, 4]
    assert b.lost_frames == 0  # first frame seen of call 1 is seq 2: nothing known was lost
    await b.close()


async def test_lost_frames_counts_seq_gaps_per_call() -> None:
    a, b = await _pair()
    for call, seq in [(1, 10), (2, 0), (1, 11), (1, 14), (2, 1), (2, 5), (1, 15), (1, 3)]:
        a.send(Audio((AudioFrame(call, seq, 0, PCM),)))
    a.send(Audio((AudioFrame(3, 0xFFFFFFFF, 0, b""), AudioFrame(3, 1, 0, b""))))  # wraps: 1 lost
    a.send(CallEnded(1, "bye"))
    a.send(Audio((AudioFrame(1, 100, 0, PCM),)))  # call 1 forgotten: no gap
    rx = asyncio.create_task(_collect(b))
    await a.close()
    await rx
    # call 1: 11->14 loses 2; 15->3 is a step back (not a loss); call 2: 1->5 loses 3; call 3: 1.
    assert b.lost_frames == 2 + 3 + 1
    await b.close()


async def test_close_ends_own_records_and_send_after_close_is_discarded() -> None:
    a, b = await _pair()
    a_rx = asyncio.create_task(_collect(a))
    await a.close()
    assert await a_rx == []
    assert a.closed
    a.send(Ping(1))
    assert a.queued_records == 0
    await a.close()  # idempotent
    assert await _collect(b) == []
    await b.close()


async def test_protocol_error_closes_link_and_raises() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    link = FrameLink(rb, wb)
    a.sendall(encode(Ping(1)) + _record(42, b""))
    with pytest.raises(FrameLinkError, match="unknown record type 42"):
        async for _ in link.records():
            pass
    assert link.closed
    a.close()


async def test_serve_links_and_open_link(tmp_path: Path) -> None:
    path = tmp_path / "run" / "sub" / "framelink.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a stale socket file from a previous run
    stale.close()
    received: list[LinkRecord] = []
    done = asyncio.Event()

    async def on_link(link: FrameLink) -> None:
        async for record in link.records():
            received.append(record)
            if isinstance(record, Hello):
                link.send(Ping(7))
        done.set()

    server = await serve_links(str(path), on_link)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    worker = await open_link(str(path))
    worker.send(RECORDS[0])
    records = worker.records()
    assert await anext(records) == Ping(7)  # answered with Pong(7) by the worker's link
    await records.aclose()
    await worker.close()
    await done.wait()
    assert received == [RECORDS[0], Pong(7)]
    server.close()
    await server.wait_closed()


async def test_serve_links_creates_parent_dirs_and_refuses_a_regular_file(tmp_path: Path) -> None:
    async def on_link(link: FrameLink) -> None:
        return None

    path = tmp_path / "a" / "b" / "framelink.sock"
    server = await serve_links(str(path), on_link)
    assert path.exists()
    server.close()
    await server.wait_closed()
    regular = tmp_path / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(FileExistsError):
        await serve_links(str(regular), on_link)
