"""Call records end to end: one server (native call workers, the offline voice stack) takes a SIP
call with speech, a Twilio-protocol call, an AI Listens fork and a call refused at capacity; each
leaves its record in ``<data_dir>/records.db``, read here through a RecordStore of its own.

Both sides are asserted: what main knows from signalling (numbers, Call-ID or CallSid, codec,
how the call ended) and what the call's session adds through its worker (transcript lines,
turns with their latency stages, the recording: the caller's speech on the left channel only).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from sipserver.pipeline.call_record import TURN_STAGES, CallRecord
from sipserver.records.store import RecordStore
from tests.integration.conftest import ServerProcess, base_config, free_port, place_call
from tests.integration.listens_client import ForkClient
from tests.integration.media_stream_client import MediaStreamClient
from tests.integration.test_calls import wait_metric
from tests.integration.test_voice_calls import GREETING, KB, NUMBER, PASSWORD, USER
from tests.speech import HEARD_COST, espeak, write_wav

pytestmark = pytest.mark.integration

SECRET = "records-secret-0123456789"
LISTENS_NUMBER = "+15005550199"
PAUSED_NUMBER = "+15005550107"
RATE = 8000


def _config(workdir: Path) -> dict[str, Any]:
    config = base_config(free_port(), free_port(socket.SOCK_STREAM), workdir / "data")
    config["server"]["media"] = {"engine": "native"}
    config["server"]["workers"] = 1
    config["agents"] += [
        {
            "slug": "voice",
            "greeting": GREETING,
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": True, "model": "m"},
            "sip": {"enabled": True, "numbers": [NUMBER], "username": USER, "password": PASSWORD},
            "websocket": {"enabled": True, "secret": SECRET},
            "recording": {"enabled": True},  # Ogg/Opus, stereo: the defaults
        },
        {
            "slug": "copilot",
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": False, "model": "m"},
            "websocket": {"enabled": False, "secret": "copilot-secret-0123456789"},
            "listens": {
                "enabled": True,
                "numbers": [LISTENS_NUMBER],
                "channel": "both_tracks",
                "forward_to": "+15005550123",
            },
        },
        {
            # Paused (no call taken): every call to it is refused at the door.
            "slug": "paused",
            "max_concurrent_calls": 0,
            "realtime": {"enabled": False},
            "websocket": {"enabled": True, "secret": "paused-secret-0123456789"},
            "sip": {
                "enabled": True,
                "numbers": [PAUSED_NUMBER],
                "username": "paused",
                "password": "paused-password-1",
            },
        },
    ]
    return config


@pytest.fixture(scope="module")
def records_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("records")
    server = ServerProcess(_config(workdir), workdir)
    server.start()
    wait_metric(server, "sipserver_media_workers_up", 1)
    yield server
    server.stop()


@pytest.fixture
def records(records_server: ServerProcess) -> Iterator[RecordStore]:
    """The server's records database, read by a store of the test's own."""
    store = RecordStore(Path(records_server.config["server"]["data_dir"]) / "records.db")
    store.open()
    yield store
    store.close()


def _wait_record(
    store: RecordStore,
    agent: str,
    done: Callable[[CallRecord], bool],
    timeout: float = 20.0,
) -> CallRecord:
    """The newest record of ``agent`` (with its events) once ``done`` holds for it."""
    deadline = time.monotonic() + timeout
    last: CallRecord | None = None
    while time.monotonic() < deadline:
        page = store.search(agents=[agent], limit=1)
        if page.records:
            last = store.get(page.records[0].id)
            if last is not None and done(last):
                return last
        time.sleep(0.2)
    pytest.fail(f"no record of {agent} as expected in {timeout} s; last: {last}")


def _lines(record: CallRecord, speaker: str) -> list[str]:
    return [
        str(e.data["text"]).lower()
        for e in record.events
        if e.type == "transcript" and e.data.get("speaker") == speaker
    ]


@pytest.mark.slow
def test_a_sip_call_leaves_its_record(
    records_server: ServerProcess, records: RecordStore, tmp_path: Path
) -> None:
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    lead, tail = int(6.0 * RATE), int(8.0 * RATE)  # the greeting first, then the answer
    play = tmp_path / "play.wav"
    write_wav(play, np.concatenate((np.zeros(lead), question, np.zeros(tail))), RATE)
    seconds = (lead + question.size + tail) / RATE
    result = place_call(
        sip_port=records_server.sip_port, number=NUMBER, user=USER, password=PASSWORD,
        play=play, record=tmp_path / "rec.wav", seconds=seconds, timeout=90,
    )  # fmt: skip
    assert result["ended_by"] == "local", result  # the caller hung up
    record = _wait_record(records, "voice", lambda r: r.ended_at is not None)
    routed = [e for e in records_server.log_events() if e.get("event") == "call_routed"]
    assert record.sip_call_id == routed[-1]["call_id"]
    assert record.ingress == "sip" and record.called == NUMBER and record.caller == "caller"
    assert record.codec in ("PCMU", "PCMA", "G722"), record.codec
    assert record.answered_at is not None and record.duration is not None
    assert record.duration > seconds - 3, record
    assert (record.end_reason, record.ended_by) == ("caller_bye", "caller")
    assert (
        records_server.metric("sipserver_call_records_total", ingress="sip", ended_by="caller") >= 1
    )
    print("record events:", [e.to_json() for e in record.events])
    # Whisper tiny on espeak-ng speech: "How much does it cost?" may come out a little off.
    assert any(re.search(r"how much|cost", x) for x in _lines(record, "caller")), record.events
    assert any(re.search(r"dollars|starter|business|plans?", x) for x in _lines(record, "agent"))
    turns = [e for e in record.events if e.type == "turn"]
    assert turns, record.events
    stages = turns[0].data["stages"]
    for stage in TURN_STAGES:
        if stage == "turn_model" and stages.get(stage) is None:
            continue  # the question rule can make the turn model needless
        assert isinstance(stages.get(stage), int | float), (stage, stages)
    assert isinstance(turns[0].data["voice_to_voice"], int | float)
    offsets = [e.offset for e in record.events]
    assert offsets == sorted(offsets)
    _assert_recording(record, question, lead / RATE)


def _decode_stereo(path: str) -> np.ndarray:
    """The file's audio as int16 [samples, 2] at :data:`RATE` (PyAV: Opus decodes at 48 kHz)."""
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
    chunks = []
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            chunks += [r.to_ndarray().reshape(-1, 2) for r in resampler.resample(frame)]
    chunks += [r.to_ndarray().reshape(-1, 2) for r in resampler.resample(None)]
    return np.concatenate(chunks)


def _best_match(channel: np.ndarray, probe: np.ndarray) -> tuple[float, float]:
    """Normalised cross-correlation of ``probe`` along ``channel``: (the best value, its time in
    seconds). FFT-based; each lag is normalised by the channel's energy under the probe."""
    x = channel.astype(np.float64)
    p = probe.astype(np.float64)
    n = x.size + p.size
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(p, n)), n)[: x.size - p.size + 1]
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    local = np.sqrt(energy[p.size :] - energy[: -p.size]) * np.linalg.norm(p)
    ncc = np.abs(corr) / np.maximum(local, 1e-9 * np.linalg.norm(p) ** 2 + 1.0)
    best = int(np.argmax(ncc))
    return float(ncc[best]), best / RATE


def _assert_recording(record: CallRecord, question: np.ndarray, spoken_at: float) -> None:
    """The record points at a private stereo file whose LEFT channel holds the caller's
    question when it was said, and whose right channel does not (the agent's side)."""
    assert record.recording is not None, record
    info = record.recording
    assert (info.format, info.channels) == ("opus", "stereo")
    assert info.duration > spoken_at, info
    path = Path(info.path)
    for _ in range(50):  # the encoder finishes the file just after the call
        if path.exists():
            break
        time.sleep(0.1)
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    audio = _decode_stereo(info.path)
    left, right = audio[:, 0], audio[:, 1]
    left_score, left_at = _best_match(left, question)
    right_score, _ = _best_match(right, question)
    print(f"recording: left {left_score:.2f} at {left_at:.2f} s, right {right_score:.2f}")
    # G.711, the jitter buffer and Opus change the waveform, never its shape this much.
    assert left_score > 0.5, (left_score, left_at)
    assert abs(left_at - spoken_at) < 0.5, (left_at, spoken_at)  # on the call's clock
    assert right_score < 0.5 * left_score, (right_score, left_score)
    # The agent spoke (the greeting, the answer): the right channel is not silent.
    assert np.sqrt(np.mean(right.astype(np.float64) ** 2)) > 100


async def test_a_twilio_call_and_a_refused_one_leave_records(
    records_server: ServerProcess, records: RecordStore, tmp_path: Path
) -> None:
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    base = records_server.http_url.replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base}/ws/voice/{SECRET}")
        client = MediaStreamClient(ws, sid="MZrecords000000000000000000000001")
        await client.start({"caller": "+14155550123", "called": "+15005550100"})
        record = await asyncio.to_thread(
            _wait_record, records, "voice", lambda r: r.call_sid == "CA0" and r.ended_at is None
        )
        assert record.ingress == "twilio" and record.codec == "audio/x-mulaw"
        assert record.caller == "+14155550123" and record.answered_at is not None
        await asyncio.sleep(2.0)  # the greeting plays
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/ws/paused/paused-secret-0123456789")
        assert refused.value.status == 503
        await asyncio.sleep(3.0)  # the greeting ends
        client.say(question)
        await client.idle()
        await asyncio.sleep(7.0)  # the answer plays
        await client.stop()
        no = await asyncio.to_thread(_wait_record, records, "paused", lambda r: True)
        assert (no.ingress, no.ended_by, no.end_reason) == ("websocket", "refused", "agent_full")
        assert no.answered_at is None and no.ended_at is not None
        # Twilio's webhook for the agent at capacity: busy TwiML, and a record that names the
        # caller, the number and the CallSid (seconds after the websocket refusal: the book
        # keeps at most a few refused records per agent and second).
        form = {"From": "+14155550199", "To": "+15005550111", "CallSid": "CArefused0001"}
        async with http.post(
            f"{records_server.http_url}/incoming-call/paused/paused-secret-0123456789", data=form
        ) as busy:
            assert busy.status == 200 and "<Reject" in await busy.text()
    record = await asyncio.to_thread(
        _wait_record, records, "voice", lambda r: r.call_sid == "CA0" and r.ended_at is not None
    )
    assert (record.end_reason, record.ended_by) == ("stop", "caller")
    assert record.duration is not None and record.duration >= 2.0
    agent_lines = _lines(record, "agent")
    assert any("lakeside" in line for line in agent_lines), record.events  # the greeting
    assert any(re.search(r"how much|cost", x) for x in _lines(record, "caller")), record.events
    assert any(re.search(r"dollars|starter|business|plans?", x) for x in agent_lines)
    turns = [e for e in record.events if e.type == "turn"]
    assert turns and isinstance(turns[0].data["voice_to_voice"], int | float), record.events
    busy_record = await asyncio.to_thread(
        _wait_record, records, "paused", lambda r: r.ingress == "twilio"
    )
    assert (busy_record.ended_by, busy_record.end_reason) == ("refused", "agent_full")
    assert (busy_record.caller, busy_record.called) == ("+14155550199", "+15005550111")
    assert busy_record.call_sid == "CArefused0001" and busy_record.answered_at is None


async def test_a_listens_fork_leaves_a_record_with_both_speakers(
    records_server: ServerProcess, records: RecordStore, tmp_path: Path
) -> None:
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    reply = espeak("Our plans start at nineteen dollars a month.", tmp_path, rate=RATE)
    base = records_server.http_url.replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base}/listens/copilot/copilot-secret-0123456789/stream")
        fork = ForkClient(ws, sid="MZrecordsfork0000000000000000001")
        await fork.start({"caller": "+14155550123", "called": LISTENS_NUMBER})
        await asyncio.sleep(0.5)
        fork.say("inbound", question)
        await fork.idle()
        fork.say("outbound", reply)
        await fork.idle()

        def both(r: CallRecord) -> bool:
            return bool(_lines(r, "caller")) and bool(_lines(r, "agent"))

        record = await asyncio.to_thread(_wait_record, records, "copilot", both, 40.0)
        assert record.ended_at is None  # listed while in progress
        await fork.stop()
    record = await asyncio.to_thread(
        _wait_record, records, "copilot", lambda r: r.ended_at is not None
    )
    assert record.ingress == "listens_twilio" and record.called == LISTENS_NUMBER
    assert record.call_sid == "CA777"  # ForkClient's start
    assert record.ended_by == "caller"
    # "much" or "cost": tiny.en hears this espeak question at 8 kHz as "How much none is
    # caught?" on some builds and windows (issue 18); the record is what is tested here.
    assert any(HEARD_COST.search(line) for line in _lines(record, "caller")), record.events
    assert any(re.search(r"plans?|dollars|month", x) for x in _lines(record, "agent"))
    assert any(e.type == "suggestion" for e in record.events), record.events


def test_the_pjsua2_engine_s_calls_leave_records_too(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """pjsua2 media workers (the sessions run in main): the echo line hangs up on '#'."""
    from tests.integration.conftest import DEMO_PASSWORD, DEMO_USER

    def pjsua2(config: dict[str, Any]) -> None:
        config["server"]["media"] = {"engine": "pjsua2"}

    server = server_factory(pjsua2)
    wait_metric(server, "sipserver_media_workers_up", 1)
    play = tmp_path / "play.wav"
    write_wav(play, np.zeros(int(1.5 * RATE)), RATE)
    result = place_call(
        sip_port=server.sip_port, number="+15005550101", user=DEMO_USER, password=DEMO_PASSWORD,
        play=play, record=tmp_path / "rec.wav", seconds=1.5, dtmf="#", wait_bye=5, timeout=60,
    )  # fmt: skip
    assert result["ended_by"] == "remote", result  # the echo line hung up on '#'
    store = RecordStore(Path(server.config["server"]["data_dir"]) / "records.db")
    store.open()
    try:
        record = _wait_record(store, "alice", lambda r: r.ended_at is not None)
    finally:
        store.close()
    assert record.ingress == "sip" and record.called == "+15005550101"
    assert record.caller == "caller" and record.codec in ("PCMU", "PCMA", "G722")  # its From
    assert record.end_reason == "worker_bye"
    # The session's `end` event (with the tap) says the hang-up was the caller's DTMF key.
    assert record.ended_by == "dtmf", record


def test_a_sip_call_refused_at_capacity_leaves_a_refused_record(
    records_server: ServerProcess, records: RecordStore, tmp_path: Path
) -> None:
    play = tmp_path / "play.wav"
    write_wav(play, np.zeros(RATE // 2), RATE)
    result = place_call(
        sip_port=records_server.sip_port, number=PAUSED_NUMBER, user="paused",
        password="paused-password-1", play=play, record=tmp_path / "rec.wav", seconds=0.5,
        timeout=60,
    )  # fmt: skip
    assert result["status"] == 503, result
    record = _wait_record(records, "paused", lambda r: r.ingress == "sip")
    assert (record.ended_by, record.end_reason) == ("refused", "agent_full")
    assert record.sip_call_id and record.caller == "caller" and record.called == PAUSED_NUMBER
    assert record.answered_at is None
