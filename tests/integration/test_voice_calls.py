"""The voice agent end to end over SIP: a real UA asks a question in speech, the agent answers.

The server runs the offline default stack (Silero VAD, Whisper tiny.en, Smart Turn, Piper, the
knowledge-base answerer over config/kb/demo). A pjsua2 caller plays espeak-ng speech into the
call and records what comes back; the recording is transcribed with the same local STT and must
hold the greeting and the answer from the knowledge base.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, place_call
from tests.integration.test_calls import wait_metric
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
def test_caller_asks_and_the_agent_answers_from_its_knowledge_base(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory(_voice_agent)
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
    assert '"caller_said"' in log and "cost" in log
    latencies = [json.loads(line) for line in log.splitlines() if '"turn_latency"' in line]
    assert latencies, log[-3000:]
    print("turn latency:", latencies[0])
    assert server.metric("sipserver_voice_turn_latency_seconds_count", stage="first_frame") >= 1
    assert server.metric("sipserver_voice_sessions_active") == 0
