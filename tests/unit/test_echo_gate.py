"""EchoGate: echo of played audio is recognised; caller speech, even over echo, is not."""

from __future__ import annotations

import numpy as np

from sipserver.pipeline.echo_gate import EchoGate

RATE = 8000
FRAME = 160


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Amplitude-modulated band noise: a crude stand-in for speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * np.arange(n) / RATE)
    return noise * envelope * 6000


def _run(gate: EchoGate, played: np.ndarray, heard: np.ndarray) -> list[bool]:
    verdicts = []
    for i in range(0, played.size - FRAME + 1, FRAME):
        gate.played(played[i : i + FRAME].astype("<i2").tobytes())
        gate.heard(heard[i : i + FRAME].astype("<i2").tobytes())
        verdicts.append(gate.is_echo())
    return verdicts


def test_delayed_attenuated_copy_is_echo() -> None:
    played = _speechlike(2.0, 1)
    delay = int(0.12 * RATE)
    echo = np.concatenate((np.zeros(delay), played[:-delay])) * 0.3
    echo += np.random.default_rng(2).standard_normal(echo.size) * 50
    verdicts = _run(EchoGate(RATE), played, echo)
    assert all(verdicts[20:])  # once 200 ms of echo fills the window


def test_independent_speech_is_not_echo() -> None:
    played = _speechlike(2.0, 1)
    caller = _speechlike(2.0, 7)
    assert not any(_run(EchoGate(RATE), played, caller))


def test_caller_speaking_over_the_echo_is_not_echo() -> None:
    played = _speechlike(2.0, 1)
    delay = int(0.12 * RATE)
    echo = np.concatenate((np.zeros(delay), played[:-delay])) * 0.2
    mixed = echo + _speechlike(2.0, 9)
    verdicts = _run(EchoGate(RATE), played, mixed)
    assert not any(verdicts[20:])


def test_echo_beyond_max_delay_is_not_recognised() -> None:
    played = _speechlike(3.0, 1)
    delay = int(0.9 * RATE)
    echo = np.concatenate((np.zeros(delay), played[:-delay])) * 0.3
    verdicts = _run(EchoGate(RATE, max_delay=0.5), played, echo)
    assert not any(verdicts[60:])
    assert all(_run(EchoGate(RATE, max_delay=1.0), played, echo)[60:])


def test_silence_is_not_echo() -> None:
    gate = EchoGate(RATE)
    assert gate.correlation() == 0.0
    zeros = np.zeros(RATE)
    assert not any(_run(gate, _speechlike(1.0, 1), zeros))
