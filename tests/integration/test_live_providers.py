"""Live tests against the hosted services, run only when their credentials are in the
environment (they cost a few cents and need the network, so CI skips them).

- OpenAI: ``OPENAI_API_KEY``. Chat with a tool call, speech synthesis, and the synthesized speech
  transcribed back.
- LiveKit Inference: ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET`` and ``LIVEKIT_URL``, plus the
  ``sipserver[livekit]`` extra. The same round trip through LiveKit's gateway.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soxr

from sipserver.config import LiveKitInferenceModel
from sipserver.pipeline.providers import inference
from sipserver.pipeline.providers.base import ChatMessage, TextDelta, ToolCall
from sipserver.pipeline.providers.openai import OpenAiLlm, OpenAiSettings, OpenAiStt, OpenAiTts
from sipserver.pipeline.voice import END_CALL_TOOL

pytestmark = pytest.mark.integration

OPENAI_KEY = os.environ.get("OPENAI_API_KEY")
needs_openai = pytest.mark.skipif(
    not OPENAI_KEY, reason="live OpenAI test: set OPENAI_API_KEY to run it"
)
LIVEKIT_ENV = ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_URL")
needs_livekit = pytest.mark.skipif(
    not all(os.environ.get(name) for name in LIVEKIT_ENV) or not inference.livekit_available(),
    reason=(
        "live LiveKit Inference test: set LIVEKIT_API_KEY, LIVEKIT_API_SECRET and LIVEKIT_URL "
        "and install sipserver[livekit] to run it"
    ),
)
GOODBYE = [
    ChatMessage("system", "You are a phone agent. When the caller says goodbye, call end_call."),
    ChatMessage("user", "That's all, thank you. Goodbye!"),
]
SENTENCE = "The library opens at nine in the morning."


def _to_16k(pcm: bytes, rate: int) -> bytes:
    audio = np.frombuffer(pcm, dtype="<i2")
    return bytes(soxr.resample(audio, rate, 16000).astype("<i2").tobytes())


@needs_openai
async def test_openai_round_trip() -> None:
    def settings(model: str) -> OpenAiSettings:
        return OpenAiSettings(model, api_key=OPENAI_KEY, where=f"live.{model}")

    llm = OpenAiLlm(settings("gpt-4o-mini"), temperature=0)
    chunks = [c async for c in llm.stream(GOODBYE, tools=(END_CALL_TOOL,))]
    assert ToolCall("end_call", {}) in chunks

    tts = OpenAiTts(settings("gpt-4o-mini-tts"))
    pcm = b"".join([c async for c in tts.synthesize(SENTENCE)])
    assert len(pcm) > tts.sample_rate  # more than half a second of speech

    stt = OpenAiStt(settings("gpt-4o-mini-transcribe"))
    text = (await stt.transcribe(_to_16k(pcm, tts.sample_rate), language="en")).text.lower()
    assert "library" in text and ("nine" in text or "9" in text)


@needs_livekit
async def test_livekit_inference_round_trip() -> None:
    credentials = {
        "lk": {
            "api_key": os.environ["LIVEKIT_API_KEY"],
            "api_secret": os.environ["LIVEKIT_API_SECRET"],
            "url": os.environ["LIVEKIT_URL"],
        }
    }
    model = LiveKitInferenceModel(
        credential="lk",
        stt="deepgram/nova-3:en",
        llm="openai/gpt-4o-mini",
        tts="cartesia/sonic-3",
    )
    stt, llm, tts = inference.livekit_stages(model, credentials, where="live")
    chunks = [c async for c in llm.stream(GOODBYE, tools=(END_CALL_TOOL,))]
    assert any(isinstance(c, ToolCall | TextDelta) for c in chunks)
    pcm = b"".join([c async for c in tts.synthesize(SENTENCE)])
    assert len(pcm) > tts.sample_rate
    text = (await stt.transcribe(_to_16k(pcm, tts.sample_rate))).text.lower()
    assert "library" in text
    await stt.close()  # type: ignore[attr-defined]
    await tts.close()  # type: ignore[attr-defined]
