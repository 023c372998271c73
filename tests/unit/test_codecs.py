"""G.711 and L16 conversions: exact against audioop (where it still exists) and known vectors."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from sipserver.media import codecs

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def _audioop():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop is gone (Python >= 3.13); the vector tests still run")


def test_ulaw_matches_audioop_for_every_sample_and_code() -> None:
    audioop = _audioop()
    assert codecs.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)
    assert codecs.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_matches_audioop_for_every_sample_and_code() -> None:
    audioop = _audioop()
    assert codecs.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)
    assert codecs.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_ulaw_known_vectors() -> None:
    # G.711: silence is 0xFF (-1 floors to -4 on 14 bits: 0x7E), full scale 0x80 / 0x00.
    pcm = np.array([0, -1, 32767, -32768, 1000, -1000], dtype="<i2").tobytes()
    assert codecs.ulaw_encode(pcm) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xCE, 0x4E])
    decoded = np.frombuffer(codecs.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])), "<i2")
    assert decoded.tolist() == [0, 0, 32124, -32124]


def test_alaw_known_vectors() -> None:
    pcm = np.array([0, -1, 32767, -32768], dtype="<i2").tobytes()
    assert codecs.alaw_encode(pcm) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    decoded = np.frombuffer(codecs.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])), "<i2")
    assert decoded.tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(codecs.ulaw_encode, codecs.ulaw_decode), (codecs.alaw_encode, codecs.alaw_decode)],
)
def test_g711_round_trip_error_is_within_the_segment_step(encode, decode) -> None:  # type: ignore[no-untyped-def]
    x = np.frombuffer(ALL_SAMPLES, "<i2").astype(np.int32)
    y = np.frombuffer(decode(encode(ALL_SAMPLES)), "<i2").astype(np.int32)
    err = np.abs(x - y)
    # Logarithmic quantisation: the error grows with the magnitude, about 1/32 of it at most.
    assert np.all(err <= np.maximum(16, np.abs(x) / 16 + 16))
    # Decoding then re-encoding a code is the identity (codes are fixed points).
    codes = encode(decode(ALL_CODES))
    ref = decode(ALL_CODES)
    assert decode(codes) == ref


def test_l16_is_big_endian_and_round_trips() -> None:
    pcm = np.array([1, -2, 0x1234], dtype="<i2").tobytes()
    l16 = codecs.pcm_to_l16(pcm)
    assert l16 == bytes([0x00, 0x01, 0xFF, 0xFE, 0x12, 0x34])
    assert codecs.l16_to_pcm(l16) == pcm


def test_odd_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="odd"):
        codecs.ulaw_encode(b"\x00")
    with pytest.raises(ValueError, match="odd"):
        codecs.l16_to_pcm(b"\x00\x01\x02")


def test_g722_round_trip_keeps_a_tone_and_its_level_with_state_across_packets() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    encoder, decoder = codecs.G722Encoder(), codecs.G722Decoder()
    packets = [encoder.encode(tone[i : i + 640]) for i in range(0, len(tone), 640)]
    assert {len(p) for p in packets} == {160}  # 64 kbit/s: 160 bytes per 20 ms
    pcm = b"".join(decoder.decode(p) for p in packets)
    assert len(pcm) == len(tone)
    y = np.frombuffer(pcm, "<i2")[1600:].astype(np.float64)  # past the ADPCM's start-up
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * rate / len(y) == pytest.approx(1000, abs=2)
    assert 0.7 < np.sqrt(np.mean(y**2)) / (8000 / np.sqrt(2)) < 1.3
    assert codecs.G722Decoder().decode(b"") == b"" and encoder.encode(b"") == b""
    with pytest.raises(ValueError, match="odd"):
        encoder.encode(b"\x00")


@pytest.mark.parametrize(("name", "rate", "pt_bytes"), [("PCMU", 8000, 160), ("G722", 16000, 160)])
def test_payload_codec_by_name(name: str, rate: int, pt_bytes: int) -> None:
    codec = codecs.PayloadCodec(name)
    assert codec.rate == rate and codec.pcm_frame == rate // 50 * 2
    assert len(codec.encode(bytes(codec.pcm_frame))) == pt_bytes
    with pytest.raises(ValueError, match="OPUS"):
        codecs.PayloadCodec("OPUS")
