"""G.711 (mu-law, A-law), G.722 and L16 conversions, without Python code per sample
(resampling: :mod:`sipserver.media.resample`).

Every conversion works on whole buffers: the G.711 encoders index a 64 Ki-entry table with the
16-bit samples, the decoders a 256-entry table with the code bytes, so no Python code runs per
sample (Python's ``audioop``, which did this in C, is gone in 3.13). The tables follow ITU-T
G.711 as the classic Sun reference implementation computes it (mu-law on 14 bits, A-law on 13
bits, truncating); the tests check them against ``audioop`` for every input.

G.722 (ITU-T G.722, 64 kbit/s sub-band ADPCM, 16 kHz audio) is FFmpeg's ``g722`` codec through
PyAV. It is stateful (ADPCM predictors), so each direction of each stream has its own
:class:`G722Encoder` / :class:`G722Decoder`; its RTP clock is 8000 although it samples at
16 kHz (RFC 3551 §4.5.2).

PCM is always signed 16-bit little-endian mono (s16le), the pipeline's format. ``audio/L16``
(RFC 2586, RFC 3551 §4.5.11) is network byte order: big-endian.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "G722Decoder",
    "G722Encoder",
    "alaw_decode",
    "alaw_encode",
    "l16_to_pcm",
    "pcm_to_l16",
    "ulaw_decode",
    "ulaw_encode",
]

if TYPE_CHECKING:
    import av

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


G722_RATE = 16000
"""Sample rate of G.722's PCM in Hz (its RTP clock is 8000, RFC 3551 §4.5.2)."""


class G722Encoder:
    """16 kHz s16le PCM to G.722 (one byte per two samples), keeping the ADPCM state between
    calls: one per outbound stream.

    PyAV is imported on first use (it is heavy and only G.722 calls need it).
    """

    __slots__ = ("_context", "_pts")

    def __init__(self) -> None:
        import av

        context: Any = av.CodecContext.create("g722", "w")
        context.sample_rate = G722_RATE
        context.format = "s16"
        context.layout = "mono"
        context.open()
        self._context: av.AudioCodecContext = context
        self._pts = 0

    def encode(self, pcm: bytes) -> bytes:
        """Encode whole samples (an even count keeps bytes and samples aligned).

        Raises:
            ValueError: ``pcm`` has an odd length.
        """
        import av

        samples = np.frombuffer(pcm, dtype="<i2")
        if len(pcm) % 2:
            raise ValueError(f"PCM of odd length {len(pcm)}: not whole 16-bit samples")
        if not len(samples):
            return b""
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
        plane = frame.planes[0]
        if plane.buffer_size == len(pcm):  # copy straight in (half the cost of from_ndarray)
            plane.update(pcm)
        else:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = G722_RATE
        frame.pts = self._pts
        self._pts += len(samples)
        return b"".join(bytes(packet) for packet in self._context.encode(frame))


class G722Decoder:
    """G.722 bytes to 16 kHz s16le PCM (two samples per byte), keeping the ADPCM state between
    calls: one per inbound stream."""

    __slots__ = ("_context",)

    def __init__(self) -> None:
        import av

        context: Any = av.CodecContext.create("g722", "r")
        context.sample_rate = G722_RATE
        context.layout = "mono"
        context.open()
        self._context: av.AudioCodecContext = context

    def decode(self, data: bytes) -> bytes:
        """Decode one payload (any length)."""
        import av

        if not data:
            return b""
        frames = self._context.decode(av.Packet(data))
        return b"".join(frame.to_ndarray().astype("<i2", copy=False).tobytes() for frame in frames)
