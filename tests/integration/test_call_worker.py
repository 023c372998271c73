"""Call workers (``server.media.engine: native``) end to end: real callers through the edge to
call worker processes that run the native SIP/RTP engine and each call's session.

Peers: SIPp (uac_edge_call*.xml, RTP from a pcap), the pjsua2 caller
(tests/integration/pjsua2_caller.py) and, for the voice call, the offline model stack.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.conftest import (
    DEMO_PASSWORD,
    DEMO_USER,
    SCENARIOS,
    ServerProcess,
    free_port,
    place_call,
    sipp_path,
)
from tests.integration.rtp_signals import RATE, tone, write_pcmu_pcap
from tests.integration.test_calls import NUMBER, edge_call, wait_metric
from tests.integration.test_voice_calls import NUMBER as VOICE_NUMBER
from tests.integration.test_voice_calls import PASSWORD as VOICE_PASSWORD
from tests.integration.test_voice_calls import USER as VOICE_USER
from tests.integration.test_voice_calls import _voice_agent
from tests.speech import espeak, read_wav, transcribe, write_wav

pytestmark = pytest.mark.integration


def native(workers: int = 1, **media: Any) -> Any:
    def mutate(config: dict[str, Any]) -> None:
        config["server"]["workers"] = workers
        config["server"]["media"] = {"engine": "native", **media}

    return mutate


def events(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in server.log_events() if e.get("event") == name]


def test_call_workers_start_at_once_and_say_ready(server_factory: Any) -> None:
    server: ServerProcess = server_factory(native(workers=2, calls_per_worker=7))
    # /readyz (server_factory waited for it) said ready only once BOTH were warm: a cold one
    # would refuse what is routed to it (workers_full).
    assert server.get("/readyz")[1]["media_workers_up"] == 2
    assert server.metric("sipserver_media_workers_up") == 2
    status = server.get("/status")[1]
    assert status["media_engine"] == "native"
    workers = status["media_workers"]
    assert [(w["kind"], w["ready"], w["capacity"]) for w in workers] == [("native", True, 7)] * 2
    # The configuration reached them (CONFIG 1) and they said so in STATS.
    for w in workers:
        stats = w["stats"]
        assert stats["ready"] == 1 and stats["config"] == 1, stats


def test_sipp_echo_call_is_hosted_by_the_call_worker(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(native())
    wait_metric(server, "sipserver_media_workers_up", 1)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    edge_call(server, tmp_path)
    wait_metric(server, "sipserver_calls_ended_total", 1, reason="caller_bye")
    # main counted the call and built no session; the worker ran it.
    assert events(server, "call_hosted")
    started = events(server, "call_session_started")
    assert started and all(e.get("worker") for e in started), started
    assert server.get("/status")[1]["sessions_in_main"] == 0
    wait_metric(server, "sipserver_calls_admitted", 0)


def test_pjsua2_caller_hears_its_echo_from_a_call_worker(
    server_factory: Any, tmp_path: Path
) -> None:
    """The pjsua2 caller speaks; what comes back is the chime, then its own speech 200 ms
    late (cross-correlated); '#' (RFC 4733) makes the echo line hang up."""
    server: ServerProcess = server_factory(native())
    wait_metric(server, "sipserver_media_workers_up", 1)
    play, record = tmp_path / "play.wav", tmp_path / "rec.wav"
    sent = espeak("Hello, this is a test call. Please echo my words back.", tmp_path, rate=RATE)
    write_wav(play, sent, RATE)
    result = place_call(
        sip_port=server.sip_port, number=NUMBER, user=DEMO_USER, password=DEMO_PASSWORD,
        play=play, record=record, seconds=len(sent) / RATE + 1.0, dtmf="#", wait_bye=5,
        timeout=60,
    )  # fmt: skip
    assert result["ended_by"] == "remote", result
    got = read_wav(record)[1].astype(np.float64)
    ref = sent.astype(np.float64)
    size = 1 << (len(got) + len(ref) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(ref, size)), size)
    corr = corr[: len(got)]
    lag = int(np.argmax(np.abs(corr)))
    ratio = float(np.abs(corr[lag])) / (float(np.median(np.abs(corr))) + 1e-9)
    print(f"echo lag {1000 * lag / RATE:.0f} ms, correlation peak / median {ratio:.0f}")
    assert ratio > 20, ratio
    assert 0.2 * RATE <= lag < 0.5 * RATE, lag / RATE
    assert np.abs(got[: int(0.5 * RATE)]).max() > 1000  # the chime
    assert server.metric("sipserver_calls_ended_total", reason="worker_bye") == 1
    assert events(server, "call_hosted")


@pytest.mark.slow
def test_voice_call_runs_its_pipeline_in_the_call_worker(
    server_factory: Any, tmp_path: Path
) -> None:
    """The offline stack (Silero VAD, Whisper, Smart Turn, Piper, the KB answerer) in the call
    worker: the greeting, then an answer from the knowledge base."""

    def voice_native(config: dict[str, Any]) -> None:
        _voice_agent(config)
        native()(config)

    server: ServerProcess = server_factory(voice_native)
    wait_metric(server, "sipserver_media_workers_up", 1)
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    lead, tail = int(6.0 * RATE), int(10.0 * RATE)
    play, record = tmp_path / "play.wav", tmp_path / "rec.wav"
    write_wav(play, np.concatenate((np.zeros(lead), question, np.zeros(tail))), RATE)
    result = place_call(
        sip_port=server.sip_port, number=VOICE_NUMBER, user=VOICE_USER, password=VOICE_PASSWORD,
        play=play, record=record, seconds=(lead + question.size + tail) / RATE, dtmf="#",
        wait_bye=5, timeout=90,
    )  # fmt: skip
    assert result["ended_by"] == "remote", result  # end_call_digit '#'
    _, got = read_wav(record)
    greeting = transcribe(got[:lead], RATE)
    answer = transcribe(got[lead + question.size :], RATE)
    print(f"greeting heard: {greeting!r}\nanswer heard: {answer!r}")
    assert re.search(r"lakeside|demo agent|help", greeting), greeting
    assert re.search(r"dollars|starter|business|plans?", answer), answer
    # Where the pipeline ran: every line about the call's speech came from the worker.
    said = events(server, "caller_said")
    assert said and all(e.get("worker") for e in said), said
    started = events(server, "call_session_started")
    assert started and all(e.get("worker") for e in started), started
    assert events(server, "call_hosted")
    assert server.get("/status")[1]["sessions_in_main"] == 0
    # The worker's turn latencies are in main's /metrics (forwarded in its STATS), and its
    # sessions gauge is back to 0 once the call is over.
    wait_metric(server, "sipserver_voice_turn_latency_seconds_count", 1, stage="first_frame")
    deadline = time.monotonic() + 15
    while server.metric("sipserver_voice_sessions_active") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("sipserver_voice_sessions_active") == 0


def test_killing_a_call_worker_ends_only_its_calls(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(
        native(workers=2, rtp_port_min=32000, rtp_port_max=32599)
    )
    wait_metric(server, "sipserver_media_workers_up", 2)
    (tmp_path / "pcap").mkdir()
    write_pcmu_pcap(tmp_path / "pcap" / "pcmu_tone.pcap", tone(3.0))
    sipp = subprocess.Popen(
        [
            sipp_path(), f"127.0.0.1:{server.sip_port}",
            "-sf", str(SCENARIOS / "uac_edge_call_long.xml"), "-s", NUMBER,
            "-au", DEMO_USER, "-ap", DEMO_PASSWORD,
            "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)),
            "-m", "8", "-l", "8", "-r", "10", "-nostdin", "-timeout", "40s", "-timeout_error",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_metric(server, "sipserver_calls_active", 8)
        workers = server.get("/status")[1]["media_workers"]
        assert sorted(w["calls"] for w in workers) == [4, 4]  # least loaded first
        victim = workers[0]
        lost = victim["calls"]
        os.kill(victim["pid"], signal.SIGKILL)
        # Its calls end at once (the edge sends BYE); the others run their full length.
        wait_metric(server, "sipserver_calls_ended_total", lost, reason="worker_lost")
        assert server.metric("sipserver_calls_ended_total", reason="caller_bye") == 0
        assert sipp.wait(timeout=40) == 0
    finally:
        if sipp.poll() is None:
            sipp.kill()
    assert server.metric("sipserver_calls_ended_total", reason="worker_lost") == lost
    assert server.metric("sipserver_calls_ended_total", reason="caller_bye") == 8 - lost
    wait_metric(server, "sipserver_calls_admitted", 0)
    # The pool starts a new call worker; it gets the configuration and takes calls.
    deadline = time.monotonic() + 30
    while server.metric("sipserver_media_workers_up") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("sipserver_media_workers_up") == 2
    pids = {w["pid"] for w in server.get("/status")[1]["media_workers"]}
    assert victim["pid"] not in pids
    edge_call(server, tmp_path)


def test_a_reload_reaches_the_call_workers(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(native())
    wait_metric(server, "sipserver_media_workers_up", 1)
    config = dict(server.config)
    config["agents"] = [*config["agents"]]
    config["agents"][0] = {**config["agents"][0], "greeting": "changed"}
    server.config_file.write_text(yaml.safe_dump(config))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (worker,) = server.get("/status")[1]["media_workers"]
        if worker["stats"].get("config") == 2:
            break
        time.sleep(0.2)
    assert worker["stats"]["config"] == 2 and worker["stats"]["ready"] == 1, worker
    assert events(server, "worker_configured")


async def _worker_against_a_fake_main(tmp_path: Path, end: str) -> tuple[int, list[Any]]:
    """A call worker process linked to a test's frame link server (no edge): HELLO, CONFIG,
    ready; then the link is closed (``end="link"``) or the worker gets SIGTERM. Its exit code
    and the records it sent."""
    import asyncio
    import sys

    from sipserver.config import parse_config
    from sipserver.rtp.framelink import FrameLink, LinkRecord, Stats, serve_links
    from sipserver.rtp.sessions import configuration_record

    config = parse_config(yaml.safe_dump({"server": {"store": "memory"}}), env={})
    records: list[LinkRecord] = []
    ready = asyncio.Event()
    release = asyncio.Event()

    async def on_link(link: FrameLink) -> None:
        async for record in link.records():
            records.append(record)
            if len(records) == 1:
                link.send(configuration_record(config, None, 1))
            if isinstance(record, Stats) and record.counters.get("ready") == 1:
                ready.set()
                if end == "link":
                    return  # serve_links closes the link
                await release.wait()

    path = str(tmp_path / "link.sock")
    server = await serve_links(path, on_link)
    rtp = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipserver.rtp.call_worker", "--link", path, "--worker-id", "w9",
        "--rtp-port", str(rtp - rtp % 2), "--rtp-port-count", "4", "--capacity", "2",
        "--log-format", "json",
    )  # fmt: skip
    try:
        await asyncio.wait_for(ready.wait(), 60)
        if end == "sigterm":
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    finally:
        release.set()
        if proc.returncode is None:
            proc.kill()
        server.close()
        await server.wait_closed()
    return code, records


async def test_a_call_worker_exits_1_when_its_link_drops_and_0_on_sigterm(tmp_path: Path) -> None:
    from sipserver.rtp.framelink import Hello, Stats

    code, records = await _worker_against_a_fake_main(tmp_path, "link")
    assert code == 1  # the pool restarts it
    hello = records[0]
    assert isinstance(hello, Hello) and (hello.kind, hello.capacity) == ("native", 2)
    code, records = await _worker_against_a_fake_main(tmp_path, "sigterm")
    assert code == 0
    stats = [r for r in records if isinstance(r, Stats)]
    assert stats[-1].counters["ready"] == 1 and stats[-1].counters["calls"] == 0
