"""pjsua2 media worker against real peers: SIPp and a second pjsua2 endpoint process.

The test plays the main process: it listens on the frame link socket, records what the worker
sends, and can send AUDIO (echo) and CALL_ENDED (hang up) back.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pjsua2")

from sipserver.rtp.framelink import (
    Audio,
    AudioFrame,
    CallEnded,
    CallStarted,
    Dtmf,
    FrameLink,
    Hello,
    LinkRecord,
    Ping,
    Pong,
    Stats,
    serve_links,
)
from tests.integration.conftest import free_port_range
from tests.integration.rtp_signals import (
    RATE,
    echo_correlation,
    noise_burst,
    tone,
    write_pcmu_pcap,
)

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp_scenarios"
CALLER = Path(__file__).resolve().parent / "pjsua2_caller.py"
SIPP = shutil.which("sipp")


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


# ------------------------------------------------------------------------------------------------
# the main-process side of the frame link
# ------------------------------------------------------------------------------------------------


class MainSide:
    """Accepts one worker link, records its records, optionally echoes its audio."""

    def __init__(self) -> None:
        self.records: list[LinkRecord] = []
        self.link: FrameLink | None = None
        self.echo = False
        self._changed = asyncio.Condition()
        self._tx_seq: dict[int, int] = {}
        self.link_closed = asyncio.Event()

    async def on_link(self, link: FrameLink) -> None:
        self.link = link
        try:
            async for record in link.records():
                if self.echo and isinstance(record, Audio):
                    link.send(Audio(tuple(self._echo(f) for f in record.frames)))
                async with self._changed:
                    self.records.append(record)
                    self._changed.notify_all()
        finally:
            self.link_closed.set()

    def _echo(self, frame: AudioFrame) -> AudioFrame:
        seq = self._tx_seq.get(frame.call, 0)
        self._tx_seq[frame.call] = seq + 1
        return AudioFrame(frame.call, seq, frame.timestamp, frame.pcm)

    async def wait_for(
        self, pred: Callable[[LinkRecord], bool], timeout: float = 10.0, count: int = 1
    ) -> list[LinkRecord]:
        """Wait until ``count`` records match ``pred``; return them."""

        def matches() -> list[LinkRecord]:
            return [r for r in self.records if pred(r)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matches()) >= count), timeout)
            return matches()

    def of(self, kind: type) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]

    def frames(self, call: int) -> list[AudioFrame]:
        return [f for r in self.of(Audio) for f in r.frames if f.call == call]

    def send(self, record: LinkRecord) -> None:
        assert self.link is not None
        self.link.send(record)


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, main: MainSide, log: Path) -> None:
        self.proc = proc
        self.main = main
        self.log = log
        self.hello: Hello | None = None

    @property
    def sip_port(self) -> int:
        assert self.hello is not None
        return self.hello.sip_port

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
async def workdir() -> AsyncIterator[Path]:
    # unix socket paths are limited to ~107 bytes: keep it short
    path = Path(tempfile.mkdtemp(prefix="pjw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def worker(workdir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Worker]:
    """A worker process linked to a MainSide; ``indirect`` parametrization adds CLI options."""
    options: dict[str, str] = getattr(request, "param", {})
    main = MainSide()
    sock = str(workdir / "link.sock")
    server = await serve_links(sock, main.on_link)
    rtp_base = free_port_range(80)
    log = workdir / "worker.log"
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipserver.rtp.pjsua2_worker",
            "--link", sock, "--sip-host", "127.0.0.1", "--sip-port", "0",
            "--rtp-port", str(rtp_base), "--rtp-port-count", "80",
            "--worker-id", "pjsua2-test", "--stats-interval", "1",
            *(x for item in options.items() for x in item),
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
    w = Worker(proc, main, log)
    try:
        hellos = await main.wait_for(lambda r: isinstance(r, Hello), timeout=15)
        w.hello = hellos[0]  # type: ignore[assignment]
        yield w
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        server.close()
        await server.wait_closed()
        print(w.log_text()[-4000:])


async def run_sipp(
    workdir: Path, scenario: str, port: int, *extra: str, timeout: float = 30
) -> tuple[int, str]:
    assert SIPP is not None
    media_port = free_port_range(4)
    proc = await asyncio.create_subprocess_exec(
        SIPP, f"127.0.0.1:{port}", "-sf", str(SCENARIOS / scenario), "-s", "+15005550101",
        "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1", "-mp", str(media_port),
        *(() if "-m" in extra else ("-m", "1")),
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"{scenario}.err"), *extra,
        cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout + 10)
    text = out.decode(errors="replace")
    err = workdir / f"{scenario}.err"
    if err.exists():
        text += "\n" + err.read_text(errors="replace")
    assert proc.returncode is not None
    return proc.returncode, text


async def sip_options(port: int) -> str:
    """Send one OPTIONS over UDP and return the answer's text."""
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
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKopt{random.randrange(10**9)}\r\n"
                f"From: <sip:t@127.0.0.1:{lport}>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                f"Call-ID: opt{random.randrange(10**9)}\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        return (await asyncio.wait_for(answer, 5)).decode(errors="replace")
    finally:
        transport.close()


def started(main: MainSide) -> list[CallStarted]:
    return main.of(CallStarted)


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


async def test_hello_reports_capacity_and_port(worker: Worker) -> None:
    hello = worker.hello
    assert hello is not None
    assert hello.kind == "pjsua2"
    assert hello.capacity >= 1
    assert hello.sip_port > 0
    assert hello.sample_rate == RATE and hello.frame_ms == 20
    assert hello.pid == worker.proc.pid
    # the port is really the worker's SIP port: it answers an OPTIONS
    assert "SIP/2.0 200" in await sip_options(hello.sip_port)
    stats = await worker.main.wait_for(lambda r: isinstance(r, Stats), timeout=5)
    counters = stats[0].counters  # type: ignore[union-attr]
    assert counters["capacity"] == hello.capacity
    assert counters["calls"] == 0
    # liveness: the worker answers PING
    worker.main.send(Ping(0xDEADBEEF01))
    await worker.main.wait_for(lambda r: isinstance(r, Pong) and r.nonce == 0xDEADBEEF01, 5)


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_sipp_call_audio_dtmf_and_bye(worker: Worker, workdir: Path) -> None:
    (workdir / "pcap").mkdir()
    write_pcmu_pcap(workdir / "pcap" / "pcmu_tone.pcap", tone(3.0))
    code, out = await run_sipp(workdir, "uac_pcmu_call.xml", worker.sip_port)
    assert code == 0, out + worker.log_text()
    main = worker.main
    await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)
    (call,) = started(main)
    assert call.codec == "PCMU/8000"
    assert call.request_uri.startswith("sip:+15005550101@127.0.0.1")
    assert call.headers.get("X-Test-Header") == "pcmu-call"
    assert call.remote_rtp.startswith("127.0.0.1:")
    frames = main.frames(call.call)
    assert len(frames) > 100  # ~3 s of audio at 50 frames/s
    assert all(len(f.pcm) == 320 for f in frames)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [f.timestamp for f in frames] == [160 * i for i in range(len(frames))]
    loud = [f for f in frames if rms(f.pcm) > 2000]  # the 440 Hz tone has an RMS of ~5600
    assert len(loud) > 100
    digits = [(d.digit, d.method) for d in main.of(Dtmf)]
    assert digits == [("5", "info"), ("7", "info")]
    (ended,) = main.of(CallEnded)
    assert ended.call == call.call
    # record order: CALL_STARTED, then its audio, then CALL_ENDED
    kinds = [type(r) for r in main.records if not isinstance(r, Stats)]
    assert kinds.index(CallStarted) < kinds.index(Audio)
    assert kinds[-1] is CallEnded


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_main_call_ended_sends_bye(worker: Worker, workdir: Path) -> None:
    sipp = asyncio.create_task(run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port))
    main = worker.main
    (call,) = await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=10)
    await main.wait_for(lambda r: isinstance(r, Audio), timeout=5)
    main.send(CallEnded(call.call, "session"))  # type: ignore[union-attr]
    code, out = await sipp
    assert code == 0, out  # SIPp received the BYE and answered it
    (ended,) = await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)
    assert ended.call == call.call  # type: ignore[union-attr]


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_call_beyond_capacity_is_refused(worker: Worker, workdir: Path) -> None:
    assert worker.hello is not None
    capacity = worker.hello.capacity
    assert capacity <= 16, "this test fills the worker with one SIPp call each"
    fillers = [
        asyncio.create_task(
            run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port, "-trace_msg")
        )
        for _ in range(capacity)
    ]
    main = worker.main
    calls = await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=15, count=capacity)
    code, out = await run_sipp(workdir, "uac_call_refused.xml", worker.sip_port)
    assert code == 0, out + worker.log_text()
    assert worker.proc.returncode is None  # still alive
    for call in calls:
        main.send(CallEnded(call.call, "session"))  # type: ignore[union-attr]
    for result in await asyncio.gather(*fillers):
        assert result[0] == 0, result[1]
    await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5, count=capacity)
    stats = await main.wait_for(
        lambda r: isinstance(r, Stats) and r.counters.get("calls_refused", 0) >= 1, timeout=5
    )
    assert stats[-1].counters["calls"] == 0  # type: ignore[union-attr]
    # a new call succeeds once the others are gone
    sipp = asyncio.create_task(run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port))
    new = await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=10, count=capacity + 1)
    main.send(CallEnded(new[-1].call, "session"))  # type: ignore[union-attr]
    assert (await sipp)[0] == 0


async def test_link_drop_hangs_up_and_exits_nonzero(worker: Worker, workdir: Path) -> None:
    sipp = asyncio.create_task(run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port))
    main = worker.main
    await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=10)
    assert main.link is not None
    await main.link.close()
    code, out = await sipp
    assert code == 0, out  # the worker hung up with BYE before exiting
    assert await asyncio.wait_for(worker.proc.wait(), 10) == 1


async def test_sigterm_exits_cleanly(worker: Worker, workdir: Path) -> None:
    sipp = asyncio.create_task(run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port))
    main = worker.main
    await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=10)
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.proc.wait(), 10) == 0
    code, out = await sipp
    assert code == 0, out
    assert main.of(CallEnded), "CALL_ENDED reached main before the worker exited"
    assert "Assertion" not in worker.log_text()


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "no-echo"])
async def test_pjsua2_caller_echo_correlates(worker: Worker, workdir: Path, echo: bool) -> None:
    """Caller audio -> worker -> link -> echoed by main -> worker -> caller's recording.

    Without the echo (control) the caller must hear silence: the audio comes from main only.
    """
    sent = noise_burst(3.0)
    play = workdir / "play.wav"
    with wave.open(str(play), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(sent.tobytes())
    record = workdir / "rec.wav"
    main = worker.main
    main.echo = echo
    caller = await asyncio.create_subprocess_exec(
        sys.executable, str(CALLER), "--uri", f"sip:+15005550101@127.0.0.1:{worker.sip_port}",
        "--play", str(play), "--record", str(record), "--seconds", "4", "--dtmf", "#",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    (call,) = await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=15)
    # the stand-in session hangs up on '#'
    (digit,) = await main.wait_for(lambda r: isinstance(r, Dtmf), timeout=15)
    assert (digit.digit, digit.method) == ("#", "rfc4733")  # type: ignore[union-attr]
    assert digit.duration_ms > 0  # type: ignore[union-attr]
    main.send(CallEnded(call.call, "dtmf"))  # type: ignore[union-attr]
    out, err = await asyncio.wait_for(caller.communicate(), 20)
    assert caller.returncode == 0, err.decode(errors="replace")
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["ended_by"] == "remote", result  # the caller saw our BYE
    await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)

    with wave.open(str(record), "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    lag, peak_to_median, coeff = echo_correlation(got, sent)
    print(f"echo lag {lag / RATE * 1000:.0f} ms, peak/median {peak_to_median:.0f}, r={coeff:.2f}")
    if not echo:
        assert np.abs(got).max() < 200  # silence (underflow) only
        return
    assert 0 < lag < RATE  # some round trip latency, below a second
    assert peak_to_median > 50
    assert coeff > 0.5
    stats = await main.wait_for(
        lambda r: isinstance(r, Stats) and r.counters["tx_frames"] > 100, timeout=5
    )
    assert stats[-1].counters["tx_overflow"] == 0  # type: ignore[union-attr]


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
@pytest.mark.parametrize(
    ("worker", "pts", "codec", "frame_size"),
    [
        ({}, "8", "PCMA/8000", 320),
        # GSM is disabled; among the rest the answer follows the offer's order (pjmedia's
        # PJMEDIA_SDP_NEG_PREFER_REMOTE_CODEC_ORDER), priorities only rank our own offers
        ({}, "3 8 0", "PCMA/8000", 320),
        ({"--sample-rate": "16000"}, "9", "G722/16000", 640),
        (
            {"--sample-rate": "16000"},
            "0",
            "PCMU/8000",
            640,
        ),  # the link rate does not depend on the codec
    ],
    indirect=["worker"],
)
async def test_codec_negotiation_and_link_rate(
    worker: Worker, workdir: Path, pts: str, codec: str, frame_size: int
) -> None:
    assert worker.hello is not None
    assert worker.hello.sample_rate * 20 // 1000 * 2 == frame_size
    sipp = asyncio.create_task(
        run_sipp(workdir, "uac_codec_offer.xml", worker.sip_port, "-key", "pts", pts)
    )
    main = worker.main
    (call,) = await main.wait_for(lambda r: isinstance(r, CallStarted), timeout=10)
    assert call.codec == codec  # type: ignore[union-attr]
    frames = await main.wait_for(lambda r: isinstance(r, Audio), timeout=5)
    assert {len(f.pcm) for r in frames for f in r.frames} == {frame_size}  # type: ignore[union-attr]
    main.send(CallEnded(call.call, "session"))  # type: ignore[union-attr]
    code, out = await sipp
    assert code == 0, out


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_unsupported_codec_is_rejected_488(worker: Worker, workdir: Path) -> None:
    code, out = await run_sipp(
        workdir, "uac_codec_offer.xml", worker.sip_port, "-key", "pts", "3", timeout=10
    )
    assert code == 0, out  # the 488 branch (a 200 would wait for a BYE and time out)
    assert not worker.main.of(CallStarted)
    assert worker.proc.returncode is None


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_call_churn_reuses_ports(worker: Worker, workdir: Path) -> None:
    """Many short calls, 4 at a time: ports are pooled, never freed under the media clock.

    Freeing a call's AudioMediaPort right after the call ended crashed the worker within ~100
    calls (the conference bridge removes ports on its next tick and called the freed object).
    """
    assert worker.hello is not None
    (workdir / "pcap").mkdir()
    write_pcmu_pcap(workdir / "pcap" / "pcmu_tone.pcap", tone(1.0))
    calls = 120
    concurrent = min(4, worker.hello.capacity)
    code, out = await run_sipp(
        workdir, "uac_pcmu_short_call.xml", worker.sip_port,
        "-m", str(calls), "-l", str(concurrent), "-r", "25", "-d", "200", timeout=60,
    )  # fmt: skip
    assert code == 0, out + worker.log_text()
    main = worker.main
    await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5, count=calls)
    assert len(main.of(CallStarted)) == calls
    assert worker.proc.returncode is None
    stats = await main.wait_for(
        lambda r: isinstance(r, Stats) and r.counters["calls_ended"] == calls, timeout=5
    )
    counters = stats[-1].counters  # type: ignore[union-attr]
    assert counters["calls"] == 0
    assert counters["ports"] <= 2 * concurrent  # reused, not one per call
    log = worker.log_text()
    assert "Traceback" not in log and "Error" not in log, log


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
@pytest.mark.parametrize(
    ("pts", "direction"),
    [("0", "sendrecv"), ("0", "sendonly"), ("8", "sendrecv")],
    ids=["refresh", "hold", "switch-to-pcma"],
)
async def test_reinvite_keeps_audio_flowing(
    worker: Worker, workdir: Path, pts: str, direction: str
) -> None:
    """A mid-call re-INVITE (session refresh, hold, codec change) keeps the port connected."""
    (workdir / "pcap").mkdir()
    write_pcmu_pcap(workdir / "pcap" / "pcmu_tone.pcap", tone(3.0))
    main = worker.main
    main.echo = True
    code, out = await run_sipp(
        workdir, "uac_reinvite.xml", worker.sip_port, "-key", "pts", pts,
        "-key", "direction", direction,
    )  # fmt: skip
    assert code == 0, out + worker.log_text()
    (ended,) = await main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)
    assert ended.call == main.of(CallStarted)[0].call  # type: ignore[union-attr]
    (call,) = main.of(CallStarted)
    frames = main.frames(call.call)
    assert len(frames) > 150  # ~3.5 s at 50 frames/s
    if pts == "0":  # the PCMU pcap keeps playing: the tone is heard before and after
        loud = [f for f in frames if rms(f.pcm) > 2000]
        assert len(loud) > 130, len(loud)
    stats = await main.wait_for(
        lambda r: isinstance(r, Stats) and r.counters["calls_ended"] == 1, timeout=5
    )
    c = stats[-1].counters  # type: ignore[union-attr]
    # the send side kept being clocked after the re-INVITE (a frame or silence every tick)
    assert c["tx_frames"] + c["tx_underflow"] > 0.9 * c["rx_frames"], c


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
@pytest.mark.parametrize("worker", [{"--rtp-timeout": "1"}], indirect=True)
async def test_caller_without_rtp_is_hung_up(worker: Worker, workdir: Path) -> None:
    """A caller that sends no RTP (uac_call_wait_bye.xml plays none) gets a BYE."""
    code, out = await run_sipp(workdir, "uac_call_wait_bye.xml", worker.sip_port, timeout=15)
    assert code == 0, out  # SIPp received the BYE and answered it
    (ended,) = await worker.main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)
    assert ended.reason == "rtp-timeout"  # type: ignore[union-attr]


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
@pytest.mark.parametrize("worker", [{"--rtp-timeout": "1"}], indirect=True)
async def test_caller_with_rtp_is_not_timed_out(worker: Worker, workdir: Path) -> None:
    (workdir / "pcap").mkdir()
    write_pcmu_pcap(workdir / "pcap" / "pcmu_tone.pcap", tone(3.0))
    code, out = await run_sipp(workdir, "uac_pcmu_call.xml", worker.sip_port)
    assert code == 0, out  # the caller's own BYE after 3 s of RTP
    (ended,) = await worker.main.wait_for(lambda r: isinstance(r, CallEnded), timeout=5)
    assert ended.reason != "rtp-timeout"  # type: ignore[union-attr]
