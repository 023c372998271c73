"""EchoSession (greeting, frame-accurate echo, hangup digit) and the pipeline clocks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sipserver.pipeline.clock import Clock, MonotonicClock, VirtualClock
from sipserver.pipeline.echo import EchoSession, tone_greeting
from sipserver.pipeline.session import CallInfo, CallSession, frame_bytes

RATE = 8000
FB = frame_bytes(RATE)


def _frame(value: int) -> bytes:
    return np.full(FB // 2, value, dtype="<i2").tobytes()


def _info(rate: int = RATE) -> CallInfo:
    return CallInfo("call-1", "support", "+14155550123", "+14155550100", rate, "test")


def test_frame_bytes() -> None:
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640


@pytest.mark.parametrize("rate", [8000, 16000])
def test_tone_greeting_is_a_pleasant_chime(rate: int) -> None:
    pcm = tone_greeting(rate)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert len(pcm) % frame_bytes(rate) == 0
    assert len(samples) == rate * 6 // 10
    peak = np.max(np.abs(samples))
    assert 0.3 * 32767 < peak <= 0.36 * 32767  # loud enough, far from clipping
    assert abs(samples[-1]) < 50  # fades out: no click at the end
    # Two notes: E5 dominates the first half, C5 the second.
    half = len(samples) // 2
    freqs = np.fft.rfftfreq(half, 1 / rate)
    for part, note in ((samples[:half], 659.25), (samples[half:], 523.25)):
        spectrum = np.abs(np.fft.rfft(part))
        assert abs(freqs[np.argmax(spectrum)] - note) < 10


def test_echo_session_satisfies_the_protocol() -> None:
    session: CallSession = EchoSession(None, sample_rate=RATE)
    session.on_start(_info())
    assert session.hangup_requested is None


def test_greeting_first_then_echo_with_exact_delay() -> None:
    greeting = tone_greeting(RATE)
    session = EchoSession(greeting, sample_rate=RATE, echo_delay_ms=200)
    session.on_start(_info())
    g = session.greeting_ticks
    assert g == 30
    out: list[bytes] = []
    # Caller talks from tick 0: frame value = tick + 1 (never 0, so silence is distinguishable).
    for tick in range(g + 40):
        session.on_audio(_frame(tick + 1))
        out.append(session.next_frame())
    assert b"".join(out[:g]) == greeting
    delay = 200 // 20
    # Frames received during the greeting are not echoed: silence until the first echo.
    assert out[g : g + delay] == [bytes(FB)] * delay
    for tick in range(g + delay, g + 40):
        assert out[tick] == _frame(tick - delay + 1), tick
    assert session.dropped_frames == g
    assert session.echoed_frames == 40 - delay


@pytest.mark.parametrize("delay_ms", [0, 20, 200, 460])
def test_echo_delay_in_ticks(delay_ms: int) -> None:
    session = EchoSession(None, sample_rate=RATE, echo_delay_ms=delay_ms)
    received_at = {3: 1, 4: 2, 9: 3}  # tick -> frame value; gaps in between are silence
    out = []
    for tick in range(40):
        if tick in received_at:
            session.on_audio(_frame(received_at[tick]))
        out.append(session.next_frame())
    d = delay_ms // 20
    expected = [bytes(FB)] * 40
    for tick, value in received_at.items():
        expected[tick + d] = _frame(value)
    assert out == expected


def test_burst_keeps_order_on_consecutive_ticks() -> None:
    session = EchoSession(None, sample_rate=RATE, echo_delay_ms=40)
    session.on_audio(_frame(1))
    session.on_audio(_frame(2))  # two frames in tick 0 (jitter burst)
    session.on_audio(_frame(3))
    out = [session.next_frame() for _ in range(6)]
    assert out == [bytes(FB), bytes(FB), _frame(1), _frame(2), _frame(3), bytes(FB)]


def test_backlog_beyond_one_second_is_dropped() -> None:
    session = EchoSession(None, sample_rate=RATE, echo_delay_ms=0)
    for i in range(60):
        session.on_audio(_frame(i + 1))
    assert session.dropped_frames == 60 - (EchoSession.MAX_BACKLOG_TICKS + 1)


def test_greeting_padded_to_whole_frames() -> None:
    session = EchoSession(b"\x01\x00" * 200, sample_rate=RATE)  # 1.25 frames
    assert session.greeting_ticks == 2
    assert session.next_frame() == b"\x01\x00" * 160
    assert session.next_frame() == b"\x01\x00" * 40 + bytes(FB - 80)
    assert session.next_frame() == bytes(FB)


def test_hangup_digit() -> None:
    session = EchoSession(None, sample_rate=RATE, hangup_digit="#")
    session.on_dtmf("5")
    session.on_dtmf("*")
    assert session.hangup_requested is None
    session.on_dtmf("#")
    assert session.hangup_requested == "dtmf"
    other = EchoSession(None, sample_rate=RATE, hangup_digit="9")
    other.on_dtmf("#")
    assert other.hangup_requested is None
    other.on_dtmf("9")
    assert other.hangup_requested == "dtmf"


def test_on_hangup_stops_everything() -> None:
    session = EchoSession(tone_greeting(RATE), sample_rate=RATE, echo_delay_ms=0)
    session.on_hangup("bye")
    assert session.ended == "bye"
    session.on_audio(_frame(5))
    session.on_dtmf("#")
    assert session.next_frame() == bytes(FB)
    assert session.hangup_requested is None


def test_argument_validation() -> None:
    with pytest.raises(ValueError):
        EchoSession(None, sample_rate=RATE, echo_delay_ms=30)
    with pytest.raises(ValueError):
        EchoSession(None, sample_rate=RATE, echo_delay_ms=-20)
    with pytest.raises(ValueError):
        EchoSession(None, sample_rate=RATE, hangup_digit="x")
    with pytest.raises(ValueError):
        EchoSession(None, sample_rate=11025)
    session = EchoSession(None, sample_rate=RATE)
    with pytest.raises(ValueError):
        session.on_start(_info(16000))
    with pytest.raises(ValueError):
        session.on_audio(b"\x00" * 100)


# --------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------


async def test_virtual_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = VirtualClock(start=10.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, t: float) -> None:
        await clock.sleep_until(t)
        woke.append((name, clock.now()))

    tasks = [
        asyncio.create_task(sleeper(name, t))
        for name, t in [("c", 10.3), ("a", 10.1), ("b", 10.2), ("b2", 10.2), ("late", 11.0)]
    ]
    await asyncio.sleep(0)
    assert clock.sleepers == 5
    assert clock.next_deadline() == pytest.approx(10.1)
    await clock.advance(0.25)
    assert woke == [("a", 10.1), ("b", 10.2), ("b2", 10.2)]
    assert clock.now() == pytest.approx(10.25)
    await clock.advance(0.05)
    assert woke[-1][0] == "c"
    assert woke[-1][1] == pytest.approx(10.3)
    await clock.advance(1.0)
    assert [name for name, _ in woke] == ["a", "b", "b2", "c", "late"]
    assert clock.now() == pytest.approx(11.3)
    await asyncio.gather(*tasks)


async def test_virtual_clock_ticker_wakes_every_tick_within_one_advance() -> None:
    clock = VirtualClock()
    ticks: list[float] = []

    async def ticker() -> None:
        start = clock.now()
        for tick in range(1, 6):
            await clock.sleep_until(start + tick * 0.02)
            ticks.append(clock.now())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await clock.advance(0.1)
    assert ticks == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    await task


async def test_virtual_clock_past_deadline_returns_at_once_and_cancel_is_skipped() -> None:
    clock: Clock = VirtualClock(start=5.0)
    await clock.sleep_until(4.0)
    await clock.sleep_until(5.0)
    vc = VirtualClock()
    task = asyncio.create_task(vc.sleep_until(1.0))
    await asyncio.sleep(0)
    task.cancel()
    await vc.advance(2.0)
    assert task.cancelled()
    assert vc.sleepers == 0
    with pytest.raises(ValueError):
        await vc.advance(-1)


async def test_echo_session_driven_on_a_virtual_clock() -> None:
    """A transport-like driver: one tick per 20 ms of virtual time."""
    clock = VirtualClock()
    session = EchoSession(None, sample_rate=RATE, echo_delay_ms=200)
    session.on_start(_info())
    sent: list[tuple[float, bytes]] = []

    async def drive() -> None:
        start = clock.now()
        for tick in range(20):
            session.on_audio(_frame(tick + 1))
            sent.append((clock.now(), session.next_frame()))
            await clock.sleep_until(start + (tick + 1) * 0.02)  # no accumulated float error

    task = asyncio.create_task(drive())
    await asyncio.sleep(0)  # the driver reads now() == 0 and sleeps until the first tick
    await clock.advance(0.4)
    await task
    first_echo = next(i for i, (_, f) in enumerate(sent) if f != bytes(FB))
    assert first_echo == 10
    assert sent[first_echo][0] == pytest.approx(0.2)
    assert sent[first_echo][1] == _frame(1)


async def test_monotonic_clock_follows_the_loop() -> None:
    clock = MonotonicClock()
    loop = asyncio.get_running_loop()
    assert abs(clock.now() - loop.time()) < 1.0
    await clock.sleep_until(clock.now() - 1)  # past: returns at once
    bound = MonotonicClock(loop)
    assert bound.now() <= loop.time()
