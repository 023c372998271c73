"""Stream framing by Content-Length (RFC 3261 §18.3) and CRLF keepalives (RFC 5626 §3.5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip.framing import PING, FramingError, StreamFramer
from sipserver.sip.message import parse_message


def message(body: bytes = b"", *, length: str | None = None, name: str = "Content-Length") -> bytes:
    value = str(len(body)) if length is None else length
    return (
        b"OPTIONS sip:pbx.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.1:40000;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:pbx.example.com>\r\n"
        b"Call-ID: tcp@192.0.2.1\r\n"
        b"CSeq: 1 OPTIONS\r\n" + f"{name}: {value}\r\n\r\n".encode() + body
    )


M1 = message()
M2 = message(b"v=0\r\n\r\nbody with an empty line inside\r\n")


def test_one_message_in_one_chunk() -> None:
    framer = StreamFramer()
    assert framer.feed(M1) == [M1]
    assert framer.buffered == 0


def test_several_messages_in_one_chunk() -> None:
    assert StreamFramer().feed(M1 + M2 + M1) == [M1, M2, M1]


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(M2 + M1)):
        out += framer.feed((M2 + M1)[i : i + 1])
    assert out == [M2, M1]
    assert framer.buffered == 0


def test_partial_body_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(M2[:-5]) == []
    assert framer.buffered == len(M2) - 5
    assert framer.feed(M2[-5:] + M1[:10]) == [M2]
    assert framer.feed(M1[10:]) == [M1]


def test_framed_messages_parse() -> None:
    for framed in StreamFramer().feed(M2 + M1):
        assert parse_message(framed).call_id == "tcp@192.0.2.1"


@pytest.mark.parametrize("prefix", [b"\r\n", b"\n", b"\r\n\n", b"\r\n\r\n\r\n"])
def test_leading_crlfs_are_skipped(prefix: bytes) -> None:
    out = StreamFramer().feed(prefix + M1)
    assert [m for m in out if m != PING] == [M1]


def test_double_crlf_is_a_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [PING]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [PING, PING]
    assert framer.feed(M1 + b"\r\n\r\n" + M1) == [M1, PING, M1]


def test_ping_split_across_chunks() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [PING]
    assert framer.buffered == 0


def test_single_crlf_pong_before_message_is_skipped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(M1) == [M1]


@pytest.mark.parametrize("name", ["Content-Length", "content-length", "CONTENT-LENGTH", "l", "L"])
def test_content_length_any_spelling(name: str) -> None:
    data = message(b"abc", name=name)
    assert StreamFramer().feed(data + M1) == [data, M1]


def test_content_length_with_lws() -> None:
    data = message(b"abc").replace(b"Content-Length: 3", b"Content-Length \t:   3  ")
    assert StreamFramer().feed(data) == [data]


def test_bare_lf_header_section() -> None:
    data = message(b"xy").replace(b"\r\n", b"\n")
    assert data.endswith(b"\n\nxy")
    assert StreamFramer().feed(data + M1) == [data, M1]


def test_header_named_like_l_prefix_is_not_content_length() -> None:
    data = message(b"abc").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 OPTIONS\r\nLocation: 5")
    assert StreamFramer().feed(data) == [data]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (message().replace(b"Content-Length: 0\r\n", b""), "Missing Content-Length"),
        (message(length="-1"), "Invalid Content-Length"),
        (message(length="abc"), "Invalid Content-Length"),
        (message(length=""), "Invalid Content-Length"),
        (message(length="12345678901"), "Invalid Content-Length"),
        (
            message(b"ab").replace(b"CSeq", b"l: 3\r\nCSeq"),
            "Conflicting Content-Length values",
        ),
    ],
)
def test_framing_errors(data: bytes, reason: str) -> None:
    with pytest.raises(FramingError, match=reason) as info:
        StreamFramer().feed(data)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_same_content_length_twice_is_accepted() -> None:
    data = message(b"ab").replace(b"CSeq", b"l: 2\r\nCSeq")
    assert StreamFramer().feed(data) == [data]


def test_message_too_large_by_body() -> None:
    framer = StreamFramer(max_message_size=300)
    assert framer.feed(message(length="1000")[:50]) == []  # headers incomplete: not yet known
    with pytest.raises(FramingError, match="too large"):
        framer.feed(message(length="1000")[50:])


def test_message_too_large_without_end_of_headers() -> None:
    framer = StreamFramer(max_message_size=100)
    assert framer.feed(b"OPTIONS sip:a SIP/2.0\r\n") == []
    with pytest.raises(FramingError, match="too large"):
        framer.feed(b"X-Filler: " + b"a" * 200)


def test_exact_limit_is_accepted() -> None:
    data = message(b"x" * 50)
    assert StreamFramer(max_message_size=len(data)).feed(data) == [data]
    with pytest.raises(FramingError):
        StreamFramer(max_message_size=len(data) - 1).feed(data)


def test_accepts_bytearray_and_memoryview() -> None:
    framer = StreamFramer()
    assert framer.feed(bytearray(M1)) == [M1]
    assert framer.feed(memoryview(M1)) == [M1]


@given(
    st.lists(st.sampled_from([M1, M2, PING, message(b"\r\n\r\n")]), max_size=6),
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_any_chunking_gives_the_same_messages(items: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(items)
    framer = StreamFramer()
    out: list[bytes] = []
    position = 0
    index = 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        out += framer.feed(stream[position : position + size])
        position += size
        index += 1
    assert out == items
    assert framer.buffered == 0


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_garbage_raises_only_framing_error(data: bytes) -> None:
    framer = StreamFramer(max_message_size=200)
    try:
        framer.feed(data)
        framer.feed(data)
    except FramingError:
        pass


def test_large_message_trickling_in_one_byte_at_a_time() -> None:
    data = message(b"x" * 30000)
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == [data]
