"""The native media engine in-process against real SIP peers: SIPp scenarios and a pjsua2 caller.

The test plays the call worker: it runs a :class:`NativeEngine` in its own event loop, records
what the engine reports (calls started/ended, DTMF) and drives every call's media itself with a
:class:`MediaClock` (echo: each 20 ms ``write_frame(read_frame())``). The scenarios the edge
tests use for authenticated calls are reused without their digest challenge (the edge's part):
:func:`without_auth` drops the first, challenged INVITE and its ACK.

The full path (edge -> call-worker process -> engine) is tested with the call worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import shutil
import sys
import tempfile
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipserver.rtp.native_engine import EngineCall, EngineSettings, NativeEngine
from sipserver.rtp.rtp_stream import MediaClock
from tests.integration.conftest import free_port_range
from tests.integration.rtp_signals import (
    RATE,
    echo_correlation,
    noise_burst,
    tone,
    write_pcmu_pcap,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
]

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp_scenarios"
CALLER = Path(__file__).resolve().parent / "pjsua2_caller.py"
SIPP = shutil.which("sipp") or "sipp"


@dataclass
class Harness:
    """A running engine, what it reported, and an echo clock over its calls."""

    engine: NativeEngine
    workdir: Path
    started: list[EngineCall] = field(default_factory=list)
    ended: list[tuple[EngineCall, str, int, dict[str, int]]] = field(default_factory=list)
    dtmf: list[tuple[int, str, int, str]] = field(default_factory=list)
    echo: bool = True
    """The clock sends back what it read (else silence)."""
    hang_up_on: str = ""
    """Hang a call up when this digit arrives (the stand-in session of the pjsua2 tests)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    clock: MediaClock | None = None

    @property
    def port(self) -> int:
        return self.engine.sip_address[1]

    async def wait(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):  # re-check now and then (tasks)
                    await asyncio.wait_for(self.changed.wait(), 0.2)

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def workdir() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nat", dir="/tmp"))
    (path / "pcap").mkdir()
    write_pcmu_pcap(path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def harness(workdir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """An engine on a random port range; ``indirect`` parametrization overrides settings."""
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    count = options.pop("rtp_port_count", 40)
    settings = EngineSettings(
        sip_host="127.0.0.1",
        sip_port=0,
        rtp_host="127.0.0.1",
        rtp_port_start=free_port_range(count),
        rtp_port_count=count,
        **options,
    )
    box: list[Harness] = []

    def started(call: EngineCall) -> None:
        box[0].started.append(call)
        box[0].changed.set()

    def ended(call: EngineCall, reason: str, status: int) -> None:
        box[0].ended.append((call, reason, status, call.stream.stats()))
        box[0].changed.set()

    def dtmf(call: EngineCall, digit: str, duration_ms: int, method: str) -> None:
        h = box[0]
        h.dtmf.append((call.number, digit, duration_ms, method))
        h.changed.set()
        if digit == h.hang_up_on:
            h.engine.hangup(call.number, "dtmf")

    engine = NativeEngine(settings, on_call_started=started, on_call_ended=ended, on_dtmf=dtmf)
    h = Harness(engine, workdir)
    box.append(h)

    def tick() -> None:  # the call worker's clock, echoing every call
        for call in list(engine.calls.values()):
            pcm = call.stream.read_frame()
            call.stream.write_frame(pcm if h.echo else bytes(len(pcm)))

    clock = MediaClock(tick)
    h.clock = clock
    await engine.start()
    clock.start()
    try:
        yield h
    finally:
        clock.stop()
        await engine.stop()


def without_auth(scenario: str, workdir: Path, pauses: dict[int, int] | None = None) -> str:
    """An edge scenario without its digest round (the first INVITE, its 407 and ACK), written
    to ``workdir``; ``pauses`` rescales ``<pause milliseconds=...>`` values."""
    text = (SCENARIOS / scenario).read_text(encoding="iso-8859-1")
    challenged = text.index('<recv response="407" auth="true"/>')
    first = text.index("<send", 0)
    ack_end = text.index("</send>", challenged) + len("</send>")
    text = text[:first] + text[ack_end:]
    text = re.sub(r"^\s*\[authentication\]\s*\n", "", text, flags=re.MULTILINE)
    for old, new in (pauses or {}).items():
        text = text.replace(f'milliseconds="{old}"', f'milliseconds="{new}"')
    path = workdir / f"noauth_{scenario}"
    path.write_text(text, encoding="iso-8859-1")
    return str(path)


async def run_sipp(
    h: Harness, scenario: str, *extra: str, timeout: float = 30.0
) -> tuple[int, str]:
    """Run a SIPp scenario (a file name in tests/sipp_scenarios or a path) against the engine."""
    path = scenario if "/" in scenario else str(SCENARIOS / scenario)
    err = h.workdir / f"{Path(path).name}.{random.randrange(10**6)}.err"
    proc = await asyncio.create_subprocess_exec(
        SIPP, f"127.0.0.1:{h.port}", "-sf", path, "-s", "+15005550101",
        "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1",
        "-mp", str(free_port_range(4)), *(() if "-m" in extra else ("-m", "1")),
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(err), *extra,
        cwd=h.workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout + 15)
    text = out.decode(errors="replace")
    if err.exists():
        text += "\n" + err.read_text(errors="replace")
    assert proc.returncode is not None
    return proc.returncode, text


async def sip_options(port: int) -> str:
    """One OPTIONS over UDP (as the dispatcher's health check); the answer's text."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Proto, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port)
    )
    try:
        lport = transport.get_extra_info("sockname")[1]
        transport.sendto(
            (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKo{random.randrange(10**9)}\r\n"
                f"From: <sip:t@127.0.0.1:{lport}>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                f"Call-ID: o{random.randrange(10**9)}\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        return (await asyncio.wait_for(answer, 5)).decode(errors="replace")
    finally:
        transport.close()


# ------------------------------------------------------------------ tests


async def test_options_is_answered_200(harness: Harness) -> None:
    text = await sip_options(harness.port)
    assert text.startswith("SIP/2.0 200 OK")
    assert re.search(r"^Allow:.*UPDATE", text, re.MULTILINE)


async def test_sipp_call_with_rtp_info_dtmf_and_bye(harness: Harness) -> None:
    code, out = await run_sipp(harness, "uac_pcmu_call.xml")
    assert code == 0, out
    await harness.wait(lambda: harness.ended)
    (call,) = harness.started
    assert call.codec == "PCMU/8000"
    assert call.headers["X-Test-Header"] == "pcmu-call"
    assert call.from_uri.startswith('"sipp" <sip:sipp@127.0.0.1')
    assert [(d, m) for _, d, _, m in harness.dtmf] == [("5", "info"), ("7", "info")]
    assert harness.dtmf[0][2] == 160
    (_, reason, status, stats) = harness.ended[0]
    assert (reason, status) == ("bye", 200)
    assert stats["received"] > 100  # ~3 s of SIPp's PCMU at 50 packets/s
    assert stats["sent"] > 100  # the echo went back
    assert harness.engine.stats()["rtp_ports_in_use"] == 0


@pytest.mark.parametrize(
    ("harness", "pts", "codec"),
    [
        ({}, "8", "PCMA/8000"),
        ({}, "3 8 0", "PCMA/8000"),  # the first of the offer's codecs we support
        ({"sample_rate": 16000}, "9", "G722/16000"),
    ],
    indirect=["harness"],
)
async def test_codec_negotiation(harness: Harness, pts: str, codec: str) -> None:
    sipp = asyncio.create_task(run_sipp(harness, "uac_codec_offer.xml", "-key", "pts", pts))
    await harness.wait(lambda: harness.started or sipp.done())
    assert harness.started, sipp.result()
    assert harness.started[0].codec == codec
    await asyncio.sleep(0.3)
    harness.engine.hangup(harness.started[0].number, "session")
    code, out = await sipp
    assert code == 0, out  # SIPp received our BYE and answered it
    await harness.wait(lambda: harness.ended)
    assert harness.ended[0][1:3] == ("session", 200)


async def test_srtp_required_is_refused_488(harness: Harness) -> None:
    """An agent that requires SRTP (the edge's X-Sipserver-Srtp) gets no plain-RTP answer."""
    scenario = (SCENARIOS / "uac_codec_offer.xml").read_text(encoding="iso-8859-1")
    scenario = scenario.replace(
        "Max-Forwards: 70", "Max-Forwards: 70\n      X-Sipserver-Srtp: required", 1
    )
    path = harness.workdir / "srtp_required.xml"
    path.write_text(scenario, encoding="iso-8859-1")
    code, out = await run_sipp(harness, str(path), "-key", "pts", "0", timeout=10)
    assert code == 0, out  # the scenario's 488 branch
    assert not harness.started


async def test_unsupported_codec_is_rejected_488(harness: Harness) -> None:
    code, out = await run_sipp(harness, "uac_codec_offer.xml", "-key", "pts", "3", timeout=10)
    assert code == 0, out  # the scenario's 488 branch
    assert not harness.started
    assert harness.engine.stats()["calls_refused"] == 1


@pytest.mark.parametrize(("pts", "codec"), [("0", "PCMU/8000"), ("8", "PCMA/8000")])
async def test_reinvite_changes_codec(harness: Harness, pts: str, codec: str) -> None:
    code, out = await run_sipp(
        harness, "uac_reinvite.xml", "-key", "pts", pts, "-key", "direction", "sendrecv"
    )
    assert code == 0, out
    await harness.wait(lambda: harness.ended)
    assert harness.started[0].codec == codec
    stats = harness.ended[0][3]
    if pts == "0":  # the PCMU pcap (3 s) is received before and after the re-INVITE
        assert stats["received"] > 130, stats
    assert stats["sent"] > 150, stats  # ~3.5 s of echo, before and after


async def test_hold_answers_recvonly(harness: Harness) -> None:
    scenario = without_auth("uac_edge_hold.xml", harness.workdir)
    code, out = await run_sipp(harness, scenario)
    assert code == 0, out  # the scenario checks a=recvonly in the 200
    await harness.wait(lambda: harness.ended)


@pytest.mark.parametrize("harness", [{"answer_delay": 2.0}], indirect=True)
async def test_cancel_while_ringing(harness: Harness) -> None:
    code, out = await run_sipp(harness, without_auth("uac_edge_cancel.xml", harness.workdir))
    assert code == 0, out  # 180, then 200 for the CANCEL and 487 for the INVITE
    assert not harness.started
    await asyncio.sleep(0.1)
    assert harness.engine.stats()["rtp_ports_in_use"] == 0


async def test_info_dtmf_hangs_up_through_our_bye(harness: Harness) -> None:
    harness.hang_up_on = "#"
    code, out = await run_sipp(harness, without_auth("uac_edge_dtmf_hangup.xml", harness.workdir))
    assert code == 0, out  # our BYE reached SIPp and was answered
    assert harness.ended[0][1:3] == ("dtmf", 200)


@pytest.mark.parametrize("harness", [{"min_se": 5}], indirect=True)
async def test_session_expires_without_refresh_ends_with_bye(harness: Harness) -> None:
    """RFC 4028 §10: SE 6 s, refresher uac, no refresh: our BYE ~4 s after the answer."""
    scenario = without_auth("uac_edge_session_expires.xml", harness.workdir)
    code, out = await run_sipp(harness, scenario, "-key", "se", "6", timeout=20)
    assert code == 0, out
    assert harness.ended[0][1:3] == ("session-expired", 408)


@pytest.mark.parametrize("harness", [{"min_se": 5}], indirect=True)
@pytest.mark.parametrize(
    "scenario", ["uac_edge_session_refresh.xml", "uac_edge_session_update.xml"]
)
async def test_session_refreshed_is_not_ended(harness: Harness, scenario: str) -> None:
    """Refresh (re-INVITE or UPDATE) after 2.5 s, then 3 s more: 5.5 s in all, past the 4 s an
    unrefreshed 6 s session lasts; a BYE from us fails the scenario."""
    path = without_auth(scenario, harness.workdir, pauses={30000: 2500, 45000: 3000})
    code, out = await run_sipp(harness, path, "-key", "se", "6", timeout=20)
    assert code == 0, out
    await harness.wait(lambda: harness.ended)
    assert harness.ended[0][1:3] == ("bye", 200)


async def test_session_interval_too_small_gets_422(harness: Harness) -> None:
    scenario = without_auth("uac_edge_session_too_small.xml", harness.workdir)
    code, out = await run_sipp(harness, scenario, "-key", "se", "60", timeout=10)
    assert code == 0, out
    assert not harness.started


@pytest.mark.parametrize("harness", [{"capacity": 1}], indirect=True)
async def test_call_beyond_capacity_is_refused(harness: Harness) -> None:
    first = asyncio.create_task(run_sipp(harness, "uac_call_wait_bye.xml"))
    await harness.wait(lambda: harness.started or first.done())
    assert harness.started, first.result()
    code, out = await run_sipp(harness, "uac_call_refused.xml", timeout=10)
    assert code == 0, out  # 486
    harness.engine.hangup(harness.started[0].number, "session")
    code, out = await first
    assert code == 0, out


@pytest.mark.parametrize("harness", [{"rtp_timeout": 1.0}], indirect=True)
async def test_caller_without_rtp_is_hung_up(harness: Harness) -> None:
    code, out = await run_sipp(harness, "uac_call_wait_bye.xml", timeout=15)
    assert code == 0, out  # SIPp received the BYE and answered it
    assert harness.ended[0][1] == "rtp-timeout"


@pytest.mark.parametrize("harness", [{"rtp_port_count": 130}], indirect=True)
async def test_sixty_concurrent_calls_with_rtp(harness: Harness) -> None:
    """60 SIPp calls at 20/s, each ~3.5 s of RTP (+ INFO DTMF): all answered, echoed, ended."""
    code, out = await run_sipp(
        harness, "uac_pcmu_call.xml", "-m", "60", "-l", "60", "-r", "20", timeout=40
    )
    assert code == 0, out
    await harness.wait(lambda: len(harness.ended) == 60)
    assert len(harness.started) == 60
    assert {reason for _, reason, _, _ in harness.ended} == {"bye"}
    received = sorted(stats["received"] for *_, stats in harness.ended)
    assert received[0] > 100, received  # every call got its ~150 packets
    assert len(harness.dtmf) == 120
    assert harness.engine.stats()["rtp_ports_in_use"] == 0
    assert harness.clock is not None
    print(f"clock: {harness.clock.ticks} ticks, {harness.clock.late_ticks} late")


@pytest.mark.parametrize("harness", [{"rtp_port_count": 8}], indirect=True)
async def test_call_churn_reuses_ports(harness: Harness) -> None:
    """120 short calls, 4 at a time, through a range of 4 RTP port pairs: every call is
    answered and ended, so each pair is freed and taken again ~30 times (a leak would 503)."""
    calls = 120
    code, out = await run_sipp(
        harness, "uac_pcmu_short_call.xml",
        "-m", str(calls), "-l", "4", "-r", "25", "-d", "200", timeout=60,
    )  # fmt: skip
    assert code == 0, out
    await harness.wait(lambda: len(harness.ended) == calls)
    assert len(harness.started) == calls
    assert {reason for _, reason, _, _ in harness.ended} == {"bye"}
    stats = harness.engine.stats()
    assert stats["calls"] == 0 and stats["rtp_ports_in_use"] == 0, stats


async def pjsua2_call(
    harness: Harness, *caller_options: str, echo: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A real pjsua2 caller plays noise and sends RFC 4733 '#' after 4 s, on which the test's
    session hangs up. Its JSON result, what it recorded, what it played."""
    pytest.importorskip("pjsua2")
    sent = noise_burst(3.0)
    play = harness.workdir / "play.wav"
    with wave.open(str(play), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(sent.tobytes())
    record = harness.workdir / "rec.wav"
    harness.hang_up_on = "#"
    harness.echo = echo
    caller = await asyncio.create_subprocess_exec(
        sys.executable, str(CALLER), "--uri", f"sip:+15005550101@127.0.0.1:{harness.port}",
        "--play", str(play), "--record", str(record), "--seconds", "4", "--dtmf", "#",
        *caller_options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(caller.communicate(), 40)
    assert caller.returncode == 0, err.decode(errors="replace")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    got = np.zeros(0, dtype=np.int16)
    if record.exists():
        with wave.open(str(record), "rb") as w:
            got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return result, got, sent


def assert_echo(got: np.ndarray, sent: np.ndarray) -> None:
    lag, peak_ratio, coeff = echo_correlation(got, sent)
    print(f"echo lag {lag / RATE * 1000:.0f} ms, peak/median {peak_ratio:.0f}, r={coeff:.2f}")
    assert 0 < lag < RATE  # a round trip below a second
    assert peak_ratio > 50
    assert coeff > 0.5


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "no-echo"])
async def test_pjsua2_caller_hears_the_echo(harness: Harness, echo: bool) -> None:
    """Noise in, our echo out; RFC 4733 '#' ends the call with our BYE. Without the echo
    (control) the caller must hear silence."""
    result, got, sent = await pjsua2_call(harness, echo=echo)
    assert result["ended_by"] == "remote", result  # the caller saw our BYE
    assert result["srtp"] is None
    assert [(d, m) for _, d, _, m in harness.dtmf] == [("#", "rfc4733")]
    assert harness.dtmf[0][2] > 0
    if echo:
        assert_echo(got, sent)
    else:
        assert np.abs(got).max() < 200


@pytest.mark.parametrize(
    ("caller_srtp", "policy"), [("required", "required"), ("optional", "optional")]
)
async def test_pjsua2_caller_with_srtp(harness: Harness, caller_srtp: str, policy: str) -> None:
    """SDES-SRTP (RFC 4568) as the agent's policy allows: pjsua2 offers RTP/SAVP (required)
    or RTP/AVP with a=crypto (optional); we answer with our key and the echo still comes back
    through AES_CM_128_HMAC_SHA1_80."""
    result, got, sent = await pjsua2_call(
        harness, "--srtp", caller_srtp, "--header", f"X-Sipserver-Srtp: {policy}"
    )
    assert result["ended_by"] == "remote", result
    assert result["srtp"] in ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"), result
    (_, _, _, stats) = harness.ended[0]
    assert stats["srtp"] == 1 and stats["srtp_errors"] == 0, stats
    assert_echo(got, sent)


async def test_srtp_only_caller_is_refused_when_the_agent_has_srtp_off(harness: Harness) -> None:
    result, _, _ = await pjsua2_call(harness, "--srtp", "required")
    assert result["ended_by"] == "never-connected" and result["status"] == 488, result
    assert not harness.started
