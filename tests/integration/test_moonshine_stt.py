"""Moonshine base (``stt: {provider: local, model: moonshine-base}``) with its real weights, and
the Whisper prompt biasing, on espeak-ng speech.

Like tests/integration/test_local_models.py, the transcript checks name the words a behaviour
needs (matched by stem) rather than a word error rate: int8 and float kernels differ between
CPUs, and so do the function words a model hears.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from sipserver.media.codecs import ulaw_decode, ulaw_encode
from sipserver.media.resample import resample
from sipserver.pipeline.providers.local_moonshine import MoonshineStt
from sipserver.pipeline.providers.local_stt import WhisperStt
from tests.integration.test_local_models import OFFICE, OFFICE_KEYS, assert_heard, espeak_pcm

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="needs espeak-ng and sox",
    ),
]

SILENCE_16K = bytes(16000)  # 0.5 s: the VAD's prefix padding


@pytest.fixture(scope="module")
def moonshine() -> MoonshineStt:
    model = MoonshineStt(workers=2)
    assert model.load() > 0
    return model


async def test_moonshine_transcribes_espeak_speech(moonshine: MoonshineStt, tmp_path: Path) -> None:
    result = await moonshine.transcribe(SILENCE_16K + espeak_pcm(tmp_path, OFFICE))
    print(f"\nmoonshine 16k: {result.text!r}")
    assert result.final and result.language == "en"
    assert_heard(result.text, OFFICE_KEYS)


async def test_moonshine_transcribes_a_g711_line(moonshine: MoonshineStt, tmp_path: Path) -> None:
    line = ulaw_decode(ulaw_encode(bytes(8000) + espeak_pcm(tmp_path, OFFICE, rate=8000)))
    result = await moonshine.transcribe(resample(line, 8000, 16000))
    print(f"\nmoonshine 8k mu-law -> 16k: {result.text!r}")
    # Telephone-band espeak is hard for every model here (bench/stt_accuracy.py): the words that
    # carry the question survive ("Clean fell meatly opening out on the office." on an EPYC).
    assert_heard(result.text, ("opening", "office"))


async def test_moonshine_reads_digits(moonshine: MoonshineStt, tmp_path: Path) -> None:
    pcm = espeak_pcm(tmp_path, "my phone number is five five five, zero one nine two")
    text = (await moonshine.transcribe(SILENCE_16K + pcm)).text
    print(f"\nmoonshine digits: {text!r}")
    digits = "".join(ch for ch in text if ch.isdigit())
    spelled = text.lower().count("five")
    assert "555" in digits or spelled >= 3, text


async def test_moonshine_short_and_empty_audio(moonshine: MoonshineStt) -> None:
    assert (await moonshine.transcribe(b"")).text == ""
    # 20 ms of silence is padded to what the encoder needs, not an error.
    short = await moonshine.transcribe(bytes(640), final=False)
    assert not short.final
    assert isinstance(short.text, str)


async def test_moonshine_concurrent_decodes_agree(moonshine: MoonshineStt, tmp_path: Path) -> None:
    pcm = SILENCE_16K + espeak_pcm(tmp_path, OFFICE)
    results = await asyncio.gather(*(moonshine.transcribe(pcm) for _ in range(3)))
    assert len({r.text for r in results}) == 1, [r.text for r in results]
    assert_heard(results[0].text, OFFICE_KEYS)


async def test_moonshine_reports_busy_while_decoding(tmp_path: Path) -> None:
    stt = MoonshineStt(workers=1)
    stt.load()
    pcm = SILENCE_16K + espeak_pcm(tmp_path, OFFICE)
    assert not stt.busy
    task = asyncio.create_task(stt.transcribe(pcm))
    await asyncio.sleep(0)  # the model is loaded: the decode is queued at the first await
    assert stt.busy
    await task
    assert not stt.busy


async def test_whisper_prompt_spells_the_agents_product_names(tmp_path: Path) -> None:
    pcm = espeak_pcm(tmp_path, "I want to upgrade to FiberMax and keep SecureVault")
    stt = WhisperStt(prompt="Brightline support. Products: FiberMax, SecureVault.")
    text = (await stt.transcribe(pcm)).text
    print(f"\nwhisper with prompt: {text!r}")
    joined = text.lower().replace(" ", "").replace("-", "")
    assert "fibermax" in joined and "securevault" in joined, text
