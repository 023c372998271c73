"""The voice agent over a Twilio media stream: greeting, an answer from the knowledge base,
``clear`` on barge-in, DTMF hangup.

The server runs the offline default stack (as in test_voice_calls.py, the SIP version). The
client sends espeak-ng speech as 8 kHz mu-law chunks at real-time pace; what comes back is
transcribed with the same local STT.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sipserver.pipeline.providers.local_stt import WhisperStt
from tests.integration.conftest import ServerProcess, until
from tests.integration.media_stream_client import MediaStreamClient
from tests.integration.test_voice_calls import GREETING, KB
from tests.speech import espeak, transcribe_async

pytestmark = pytest.mark.integration

SECRET = "voice-ws-secret-0123456789"
RATE = 8000


def _voice_ws_agent(config: dict[str, Any]) -> None:
    config["agents"].append(
        {
            "slug": "voice",
            "greeting": GREETING,
            "knowledge_base": [str(KB)],
            "realtime": {"enabled": True, "model": "m", "end_call_digit": "#"},
            "websocket": {"enabled": True, "secret": SECRET},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["pjsua2", "native"])
async def test_twilio_stream_talks_to_the_voice_agent(
    server_factory: Any, tmp_path: Path, engine: str
) -> None:
    """pjsua2: the session runs in the main process; native: in a call worker, relayed."""

    def mutate(config: dict[str, Any]) -> None:
        _voice_ws_agent(config)
        config["server"]["media"] = {"engine": engine}

    server: ServerProcess = server_factory(mutate)
    question = espeak("How much does it cost?", tmp_path, rate=RATE)
    follow_up = espeak("What can you tell me about the plans?", tmp_path, rate=RATE)
    barge = espeak("Wait, stop, I have another question please.", tmp_path, rate=RATE)
    stt = WhisperStt()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.http_url}/ws/voice/{SECRET}")
        client = MediaStreamClient(ws)
        # Ask for the sipserver events too (a Twilio stream would not).
        await client.start({"caller": "+14155550123", "sipserver_events": "true"})
        await asyncio.sleep(6.0)  # the greeting
        _, status = server.get("/status")
        assert status["websocket_calls_in_workers"] == (1 if engine == "native" else 0)
        asked = asyncio.get_running_loop().time() - client.t0
        client.say(question)
        await client.idle()
        answered = asyncio.get_running_loop().time() - client.t0
        await asyncio.sleep(9.0)
        # Barge-in: ask again, and speak over the reply once it is playing.
        client.say(follow_up)
        await client.idle()
        assert await until(client.agent_speaking, 10.0), "the agent did not answer again"
        clears_before = len(client.clears)
        barged = asyncio.get_running_loop().time() - client.t0
        client.say(barge)
        assert await until(lambda: len(client.clears) > clears_before, 5.0), "no clear"
        clear_delay = client.clears[clears_before] - barged
        await client.idle()
        await asyncio.sleep(1.0)
        await ws.send_str(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}}))
        await asyncio.wait_for(client.closed.wait(), 10)
        await client.aclose()
    greeting = await transcribe_async(client.audio(0.0, asked), RATE, stt)
    answer = await transcribe_async(client.audio(answered, answered + 9.0), RATE, stt)
    print(f"greeting heard: {greeting!r}\nanswer heard: {answer!r}")
    print(f"clear {clear_delay * 1000:.0f} ms after the caller started speaking over the agent")
    assert re.search(r"lakeside|demo agent|help", greeting), greeting
    assert re.search(r"dollars|starter|business|plans?", answer), answer
    assert client.close_code == 1000 and client.close_reason.startswith("call ended")
    assert client.marks, "no marks"
    kinds = {e["type"] for e in client.events}
    assert {"state", "transcript", "agent_text", "interruption"} <= kinds, kinds
    heard = " ".join(e["text"] for e in client.events if e["type"] == "transcript" and e["final"])
    assert "cost" in heard.lower(), heard
    log = server.log_path.read_text()
    assert '"caller_said"' in log and '"ws_call_ended"' in log
    assert server.metric("sipserver_ws_messages_total", direction="out", type="clear") >= 1
