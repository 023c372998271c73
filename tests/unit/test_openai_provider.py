"""The openai provider's own logic: tool-call assembly, request payloads, error messages, and the
STT/TTS request and response shaping.

STT and TTS run against a stub HTTP server on loopback (aiohttp) that records what the official
client sent and answers like the API does: this checks our requests and our reading of the
replies, not OpenAI. The LLM runs against a real OpenAI-compatible server in
tests/integration/test_openai_compatible.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from sipserver.pipeline.providers.base import ChatMessage, ProviderError, ToolCall, ToolSpec
from sipserver.pipeline.providers.openai import (
    OpenAiSettings,
    OpenAiStt,
    OpenAiTts,
    ToolCallAssembler,
    chat_payload,
    pcm_to_wav,
)

# --------------------------------------------------------------------------- tool calls


def test_fragments_of_one_call_are_joined_and_parsed() -> None:
    calls = ToolCallAssembler()
    calls.add(0, id="call_1", name="transfer", arguments="")
    for piece in ('{"depart', 'ment": "bil', 'ling"', "}"):
        calls.add(0, arguments=piece)
    assert calls.calls() == [ToolCall("transfer", {"department": "billing"})]


def test_interleaved_calls_come_out_in_index_order() -> None:
    calls = ToolCallAssembler()
    calls.add(1, id="b", name="end_call")
    calls.add(0, id="a", name="lookup", arguments='{"q":')
    calls.add(1, arguments="{}")
    calls.add(0, arguments=' "hours"}')
    assert calls.calls() == [ToolCall("lookup", {"q": "hours"}), ToolCall("end_call", {})]


def test_a_name_repeated_in_every_fragment_is_kept_once() -> None:
    # llama.cpp's server sends the whole name with each fragment
    calls = ToolCallAssembler()
    for piece in ("{", " ", "}", ""):
        calls.add(0, id="x", name="end_call", arguments=piece)
    assert calls.calls() == [ToolCall("end_call", {})]


def test_a_name_split_over_fragments_is_joined() -> None:
    calls = ToolCallAssembler()
    calls.add(0, name="end_")
    calls.add(0, name="call")
    assert calls.calls() == [ToolCall("end_call", {})]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [('{"a": 1', "not JSON"), ("[1, 2]", "not a JSON object"), ('"x"', "not a JSON object")],
)
def test_malformed_arguments_are_a_provider_error(arguments: str, reason: str) -> None:
    calls = ToolCallAssembler()
    calls.add(0, name="f", arguments=arguments)
    with pytest.raises(ProviderError, match=reason):
        calls.calls()


def test_a_call_without_a_name_is_a_provider_error() -> None:
    calls = ToolCallAssembler()
    calls.add(0, arguments="{}")
    with pytest.raises(ProviderError, match="no function name"):
        calls.calls()


def test_no_fragments_no_calls() -> None:
    calls = ToolCallAssembler()
    assert not calls and calls.calls() == []


# --------------------------------------------------------------------------- payloads

TOOL = ToolSpec("end_call", "End the call.")


def test_chat_payload_streams_with_tools_and_options() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    payload = chat_payload(
        "gpt-4o-mini", messages, (TOOL,), temperature=0.2, max_tokens=50, tool_choice="end_call"
    )
    assert payload == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "end_call",
                    "description": "End the call.",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "end_call"}},
        "temperature": 0.2,
        "max_tokens": 50,
    }


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_keywords_pass_through(choice: str) -> None:
    assert chat_payload("m", [], (TOOL,), tool_choice=choice)["tool_choice"] == choice


def test_no_tools_no_tool_keys_and_defaults_left_to_the_server() -> None:
    payload = chat_payload("m", [ChatMessage("user", "x")], tool_choice="end_call")
    assert set(payload) == {"model", "messages", "stream"}


def test_tool_results_become_system_notes() -> None:
    payload = chat_payload("m", [ChatMessage("tool", "closed on Sundays", name="hours")])
    assert payload["messages"] == [
        {"role": "system", "content": "Result of tool hours: closed on Sundays"}
    ]


# --------------------------------------------------------------------------- settings, errors


def test_openai_itself_needs_a_key() -> None:
    with pytest.raises(ProviderError, match=r"models\.m\.llm: provider openai needs an API key"):
        OpenAiSettings("gpt-4o-mini", where="models.m.llm").check()
    OpenAiSettings("local", base_url="http://127.0.0.1:1/v1").check()  # a local server: fine


def test_settings_repr_hides_the_key() -> None:
    assert "sk-secret" not in repr(OpenAiSettings("m", api_key="sk-secret"))


def test_other_failures_name_their_type() -> None:
    settings = OpenAiSettings("gpt-x", base_url="http://h/v1", where="models.m.llm")
    message = str(settings.error(ValueError("bad chunk")))
    assert message == "models.m.llm: openai model 'gpt-x' at http://h/v1: ValueError: bad chunk"


# --------------------------------------------------------------------------- stub server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def stub() -> AsyncIterator[Callable[[str, Handler], Awaitable[str]]]:
    """Serve one handler at a path on loopback; returns the ``.../v1`` base URL."""
    runners: list[web.AppRunner] = []

    async def serve(path: str, handler: Handler) -> str:
        app = web.Application()
        app.router.add_post(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1"

    yield serve
    for runner in runners:
        await runner.cleanup()


def _pcm(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (3000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


async def test_stt_sends_a_wav_with_model_and_language(stub: Any) -> None:
    seen: dict[str, Any] = {}

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        seen["wav"] = upload.file.read()
        seen["fields"] = {k: v for k, v in form.items() if k != "file"}
        seen["auth"] = request.headers.get("Authorization")
        return web.json_response({"text": "  opening hours please  "})

    url = await stub("/v1/audio/transcriptions", transcriptions)
    stt = OpenAiStt(OpenAiSettings("whisper-1", api_key="sk-test", base_url=url), prompt="Lakeside")
    pcm = _pcm(0.5, 16000)
    result = await stt.transcribe(pcm, language="en")
    assert result.text == "opening hours please" and result.final and result.language == "en"
    assert seen["auth"] == "Bearer sk-test"
    assert seen["fields"] == {
        "model": "whisper-1",
        "language": "en",
        "prompt": "Lakeside",
        "response_format": "json",
    }
    with wave.open(io.BytesIO(seen["wav"])) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm


def test_pcm_to_wav_round_trip() -> None:
    pcm = _pcm(0.1, 8000)
    with wave.open(io.BytesIO(pcm_to_wav(pcm, 8000))) as wav:
        assert wav.getframerate() == 8000 and wav.readframes(wav.getnframes()) == pcm


async def test_tts_streams_whole_samples_as_they_arrive(stub: Any) -> None:
    seen: dict[str, Any] = {}
    audio = _pcm(0.3, 24000)

    async def speech(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        for at in range(0, len(audio), 1001):  # odd-sized pieces split samples
            await response.write(audio[at : at + 1001])
        await response.write_eof()
        return response

    url = await stub("/v1/audio/speech", speech)
    tts = OpenAiTts(
        OpenAiSettings("gpt-4o-mini-tts", api_key="k", base_url=url),
        voice="coral",
        instructions="Warm and calm.",
        speed=1.1,
        chunk_size=1000,
    )
    chunks = [chunk async for chunk in tts.synthesize("Hello there.")]
    assert seen["body"] == {
        "model": "gpt-4o-mini-tts",
        "voice": "coral",
        "input": "Hello there.",
        "response_format": "pcm",
        "instructions": "Warm and calm.",
        "speed": 1.1,
    }
    assert len(chunks) > 3 and all(len(c) % 2 == 0 for c in chunks)
    assert b"".join(chunks) == audio
    assert tts.sample_rate == 24000


async def test_http_errors_become_provider_errors(stub: Any) -> None:
    async def unauthorized(request: web.Request) -> web.Response:
        body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request"}}
        return web.json_response(body, status=401)

    async def overloaded(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "model is loading"}}, status=503)

    url = await stub("/v1/audio/speech", unauthorized)
    tts = OpenAiTts(OpenAiSettings("tts-1", api_key="bad", base_url=url, where="models.m.tts"))
    with pytest.raises(
        ProviderError, match=r"models\.m\.tts: .*authentication failed \(HTTP 401\)"
    ):
        [c async for c in tts.synthesize("hi")]

    url = await stub("/v1/audio/transcriptions", overloaded)
    settings = OpenAiSettings("whisper-1", base_url=url, max_retries=0, where="models.m.stt")
    with pytest.raises(ProviderError, match="HTTP 503: model is loading"):
        await OpenAiStt(settings).transcribe(_pcm(0.1, 16000))


async def test_a_slow_server_times_out(stub: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"text": "late"})

    url = await stub("/v1/audio/transcriptions", slow)
    settings = OpenAiSettings("m", base_url=url, timeout=0.2, max_retries=0, where="models.m.stt")
    with pytest.raises(ProviderError, match=r"models\.m\.stt: .* timed out after 0\.2 s"):
        await OpenAiStt(settings).transcribe(_pcm(0.1, 16000))


async def test_unreachable_server_is_a_provider_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    settings = OpenAiSettings("m", base_url=url, max_retries=0, where="models.m.stt")
    with pytest.raises(
        ProviderError, match=r"models\.m\.stt: openai model 'm' at .*cannot connect"
    ):
        await OpenAiStt(settings).transcribe(_pcm(0.1, 16000))


async def test_malformed_stream_from_a_server_is_a_provider_error(stub: Any) -> None:
    from sipserver.pipeline.providers.openai import OpenAiLlm

    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"error": {"message": "context length exceeded"}}\n\n')
        await response.write_eof()
        return response

    url = await stub("/v1/chat/completions", completions)
    llm = OpenAiLlm(OpenAiSettings("m", base_url=url, where="models.m.llm"))
    with pytest.raises(ProviderError, match=r"models\.m\.llm: .*context length exceeded"):
        [c async for c in llm.stream([ChatMessage("user", "hi")])]


def test_chunks_in_payload_are_json() -> None:
    json.dumps(chat_payload("m", [ChatMessage("user", "x")], (TOOL,)))
