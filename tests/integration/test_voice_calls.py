"""The voice agent end to end over SIP: a real UA asks a question in speech, the agent answers.

Runs on both media engines: pjsua2 media workers (the pipeline runs in main) and native call
workers (the pipeline runs in the worker, its metrics are forwarded to main's /metrics).
The server runs the offline default stack (Silero VAD, Whisper tiny.en, Smart Turn, Piper, the
knowledge-base answerer over config/kb/demo). A pjsua2 caller plays espeak-ng speech into the
call and records what comes back; the recording is transcribed with the same local STT and must
hold the greeting and the answer from the knowledge base.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, place_call
from tests.integration.test_calls import ENGINES, on_engine, wait_metric
from tests.speech import espeak, read_wav, transcribe, write_wav

pytestmark = pytest.mark.integration

RATE = 8000
NUMBER = "+15005550103"
USER, PASSWORD = "voice", "voice-password-1"
KB = Path(__file__).resolve().parents[2] / "config" / "kb" / "demo" / "*.md"
GREETING = "Hello, you are talking to the Lakeside demo agent. How can I help?"


def _voice_agent(config: dict[str, Any]) -> None:
    config["agents"].append(
        {
            "slug": "voice",
            "greeting": GREETING,
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": True, "model": "m", "end_call_digit": "#"},
            "sip": {"enabled": True, "numbers": [NUMBER], "username": USER, "password": PASSWORD},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_caller_asks_and_the_agent_answers_from_its_knowledge_base(
    server_factory: Any, tmp_path: Path, engine: str
) -> None:
    server: ServerProcess = server_factory(on_engine(engine, _voice_agent))
    wait_metric(server, "sipserver_media_workers_up", 1)
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    lead = int(6.0 * RATE)  # the greeting plays first
    tail = int(10.0 * RATE)  # time for the answer
    play = tmp_path / "play.wav"
    write_wav(play, np.concatenate((np.zeros(lead), question, np.zeros(tail))), RATE)
    record = tmp_path / "rec.wav"
    seconds = (lead + question.size + tail) / RATE
    result = place_call(
        sip_port=server.sip_port, number=NUMBER, user=USER, password=PASSWORD,
        play=play, record=record, seconds=seconds, dtmf="#", wait_bye=5, timeout=90,
    )  # fmt: skip
    assert result["ended_by"] == "remote", result  # end_call_digit '#'
    _, got = read_wav(record)
    greeting = transcribe(got[:lead], RATE)
    answer = transcribe(got[lead + question.size :], RATE)
    print(f"greeting heard: {greeting!r}\nanswer heard: {answer!r}")
    assert re.search(r"lakeside|demo agent|help", greeting), greeting
    assert re.search(r"dollars|starter|business|plans?", answer), answer
    log = server.log_path.read_text()
    # The caller was heard (what the STT made of it is the model's; the answer above shows
    # the question was understood).
    assert '"caller_said"' in log, log[-3000:]
    latencies = [json.loads(line) for line in log.splitlines() if '"turn_latency"' in line]
    assert latencies, log[-3000:]
    print("turn latency:", latencies[0])
    # Main's /metrics has the turn (native: forwarded by the call worker within a second).
    wait_metric(server, "sipserver_voice_turn_latency_seconds_count", 1, stage="first_frame")
    assert server.metric("sipserver_voice_turn_latency_seconds_count", stage="end_of_turn") >= 1
    assert server.metric("sipserver_voice_turn_latency_seconds_sum", stage="first_frame") > 0
    # The turn's pause was counted: Smart Turn ran on it, or the question rule made it needless
    # (which of the two depends on whether the STT heard the question mark).
    decided = sum(
        server.metric("sipserver_voice_turn_predictions_total", outcome=outcome)
        for outcome in ("run", "skipped_question")
    )
    assert decided >= 1, server.metrics()
    deadline = time.monotonic() + 15
    while server.metric("sipserver_voice_sessions_active") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("sipserver_voice_sessions_active") == 0
