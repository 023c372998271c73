"""The agent's vocabulary reaches real Whisper and spells its product names; Whisper base
understands Spanish and Portuguese (``model: base``).

What is asserted is key words (see tests/integration/test_local_models.py for why never a word
error rate): the product names written as the knowledge base writes them, one word each, with
the prompt the server builds. The same sentences without it are printed (``pytest -s``), not
asserted: on one CPU tiny.en hears "Zen Trio" and "Secure Vault", on another it may not.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sipserver.media.resample import resample
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.local import PiperTts, WhisperStt
from sipserver.pipeline.providers.local_stt import whisper_base_parts
from sipserver.pipeline.vocabulary import agent_vocabulary, last_question, stt_prompt
from tests.speech import espeak

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="needs espeak-ng and sox",
    ),
]

KB = """\
# Brightline

Brightline is an internet provider. FiberMax is the fibre broadband of Brightline, and every
FiberMax contract comes with a Zentrio router. If the Zentrio router shows a red light, restart
it. SecureVault is the online backup of Brightline; the Kestrel Plus bundle includes SecureVault.
"""


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]+", " ", text.lower()).split()


async def test_product_names_are_spelled_as_the_knowledge_base_writes_them() -> None:
    stt = WhisperStt(workers=1)
    piper = PiperTts()
    vocabulary = agent_vocabulary("Brightline support", KnowledgeBase.from_texts({"kb.md": KB}))
    prompt = stt_prompt(vocabulary, last_question(["Thank you for calling. How can I help?"]))
    assert prompt is not None and "Zentrio" in prompt and "SecureVault" in prompt
    for sentence, name in (
        ("My Zentrio router shows a red light.", "zentrio"),
        ("Is SecureVault included in my Brightline contract?", "securevault"),
    ):
        chunks = [c async for c in piper.synthesize(sentence)]
        pcm = resample(b"".join(chunks), piper.sample_rate, stt.sample_rate)
        plain = await stt.transcribe(pcm)
        biased = await stt.transcribe(pcm, prompt=prompt)
        print(f"\n{sentence!r}: plain {plain.text!r}, with the vocabulary {biased.text!r}")
        assert name in _words(biased.text), biased.text


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> WhisperStt:
    """Whisper base, joined into a temporary cache (not the user's) and loaded once."""
    if whisper_base_parts() is None:
        pytest.skip("needs sipserver[multilingual]")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        stt = WhisperStt("base", workers=1)
    stt.load()
    return stt


@pytest.mark.parametrize(
    ("language", "voice", "sentence", "keys"),
    [
        ("es", "es", "Quiero cancelar mi suscripción.", ("cancelar",)),
        ("es", "es-419", "¿Cuánto cuesta la suscripción mensual?", ("cuesta", "mensual")),
        ("pt", "pt-br", "Não recebi a fatura de março.", ("recebi", "fatura")),
        ("pt", "pt", "Quero cancelar a minha assinatura.", ("cancelar", "assinatura")),
    ],
)
async def test_whisper_base_understands_spanish_and_portuguese(
    base: WhisperStt, language: str, voice: str, sentence: str, keys: tuple[str, ...],
    tmp_path: Path,
) -> None:  # fmt: skip
    samples = espeak(sentence, tmp_path, rate=8000, voice=voice)  # a phone line's rate
    pcm = resample(samples.astype("<i2").tobytes(), 8000, base.sample_rate)
    result = await base.transcribe(pcm, language=language)  # the agent's stt.language
    print(f"\n{language} {sentence!r} -> {result.text!r}")
    assert result.language == language
    heard = re.sub(r"[^\w ]+", " ", result.text.lower()).split()
    missing = [k for k in keys if k not in heard]
    assert not missing, f"not heard: {missing} in {result.text!r}"
