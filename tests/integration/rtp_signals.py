"""Test signals for RTP tests: G.711 mu-law, tones, noise, SIPp pcap files, correlation.

Shared by the engine-level tests of both media engines (test_native_engine.py,
test_pjsua2_worker.py) and the call tests that give SIPp a pcap to play.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

RATE = 8000


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law of int16 samples (vectorised)."""
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes())


def tone(seconds: float, freq: float = 440.0, amplitude: float = 8000.0) -> np.ndarray:
    """A sine at ``RATE``, int16."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def noise_burst(seconds: float, seed: int = 7) -> np.ndarray:
    """Pseudo-random speech-band signal: a sharp autocorrelation peak, no periodicity."""
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.standard_normal(int(seconds * RATE)), np.ones(3) / 3, mode="same")
    scaled: np.ndarray = np.clip(x / np.abs(x).max() * 12000, -32767, 32767).astype(np.int16)
    return scaled


def write_pcmu_pcap(path: Path, pcm: np.ndarray) -> None:
    """A pcap of RTP/PCMU packets (PT 0, 20 ms) that SIPp's play_pcap_audio can replay."""
    payload = ulaw_encode(pcm)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # Ethernet linktype
    for i in range(len(payload) // 160):
        rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 0x1234ABCD)
        rtp += payload[i * 160 : (i + 1) * 160]
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
            bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        ) + udp  # fmt: skip
        eth = b"\x00" * 12 + b"\x08\x00" + ip
        usec = i * 20000
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(eth), len(eth)))
        out.append(eth)
    path.write_bytes(b"".join(out))


def echo_correlation(got: np.ndarray, ref: np.ndarray) -> tuple[int, float, float]:
    """``(lag in samples, peak / median of the cross-correlation, correlation coefficient)``
    of a recording ``got`` against the signal ``ref`` it should contain, delayed."""
    got = got.astype(np.float64)
    ref = ref.astype(np.float64)
    size = 1 << (len(got) + len(ref) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(ref, size)), size)
    corr = corr[: len(got)]  # non-negative lags: got lags behind ref
    lag = int(np.argmax(np.abs(corr)))
    peak = float(np.abs(corr[lag]))
    floor = float(np.median(np.abs(corr))) + 1e-9
    segment = got[lag : lag + len(ref)]
    coeff = float(peak / (np.linalg.norm(ref) * np.linalg.norm(segment) + 1e-9))
    return lag, peak / floor, coeff
