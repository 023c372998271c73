"""G.711 (mu-law, A-law) and L16 conversions, vectorised with numpy (resampling:
:mod:`sipserver.media.resample`).

Every conversion works on whole buffers: the G.711 encoders index a 64 Ki-entry table with the
16-bit samples, the decoders a 256-entry table with the code bytes, so no Python code runs per
sample (Python's ``audioop``, which did this in C, is gone in 3.13). The tables follow ITU-T
G.711 as the classic Sun reference implementation computes it (mu-law on 14 bits, A-law on 13
bits, truncating); the tests check them against ``audioop`` for every input.

PCM is always signed 16-bit little-endian mono (s16le), the pipeline's format. ``audio/L16``
(RFC 2586, RFC 3551 §4.5.11) is network byte order: big-endian.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "l16_to_pcm",
    "pcm_to_l16",
    "ulaw_decode",
    "ulaw_encode",
]

_U8 = npt.NDArray[np.uint8]
_I16 = npt.NDArray[np.int16]


def _ulaw_encode_table() -> _U8:
    """mu-law code of every 16-bit sample, indexed by the sample's bits as uint16."""
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x) >> 2  # 14-bit, arithmetic shift (floor)
    negative = x < 0
    magnitude = np.minimum(np.where(negative, -x, x), 8159) + 33
    segment_ends = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    segment = np.searchsorted(segment_ends, magnitude)  # first end >= magnitude
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0xF)
    code = np.where(segment >= 8, 0x7F, code)
    mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(np.uint8)


def _ulaw_decode_table() -> _I16:
    """Linear value of every mu-law code."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_encode_table() -> _U8:
    """A-law code of every 16-bit sample, indexed by the sample's bits as uint16."""
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x) >> 3  # 13-bit, arithmetic shift (floor)
    negative = x < 0
    magnitude = np.where(negative, -x - 1, x)
    segment_ends = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(segment_ends, magnitude)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((magnitude >> shift) & 0xF)
    code = np.where(segment >= 8, 0x7F, code)
    mask = np.where(negative, 0x55, 0xD5)
    return (code ^ mask).astype(np.uint8)


def _alaw_decode_table() -> _I16:
    """Linear value of every A-law code."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(segment == 0, t + 8, t + 0x108)
    t = np.where(segment > 1, t << np.maximum(segment - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENCODE = _ulaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()


def _samples_u16(pcm: bytes) -> npt.NDArray[np.uint16]:
    if len(pcm) % 2:
        raise ValueError(f"PCM of odd length {len(pcm)}: not whole 16-bit samples")
    return np.frombuffer(pcm, dtype="<u2")


def ulaw_encode(pcm: bytes) -> bytes:
    """s16le PCM to G.711 mu-law, one byte per sample.

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    return _ULAW_ENCODE[_samples_u16(pcm)].tobytes()


def ulaw_decode(data: bytes) -> bytes:
    """G.711 mu-law to s16le PCM."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_encode(pcm: bytes) -> bytes:
    """s16le PCM to G.711 A-law, one byte per sample.

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    return _ALAW_ENCODE[_samples_u16(pcm)].tobytes()


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law to s16le PCM."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def l16_to_pcm(data: bytes) -> bytes:
    """``audio/L16`` (big-endian) to s16le PCM.

    Raises:
        ValueError: ``data`` has an odd length.
    """
    return _samples_u16(data).byteswap().tobytes()


def pcm_to_l16(pcm: bytes) -> bytes:
    """s16le PCM to ``audio/L16`` (big-endian).

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    return _samples_u16(pcm).byteswap().tobytes()
