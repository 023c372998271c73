"""The ``local`` provider: offline models shipped in PyPI wheels, run on this machine's CPU.

- STT: :class:`WhisperStt` (faster-whisper, Whisper tiny.en by default).
- TTS: :class:`PiperTts` (default, ``engine: piper``) and :class:`EspeakTts` (``engine: espeak``).

End-of-turn detection (Smart Turn v3.2) lives in :mod:`sipserver.pipeline.turn`.
"""

from __future__ import annotations

from .local_stt import WhisperStt, default_whisper_model_path
from .local_tts import EspeakTts, PiperTts, default_piper_voice_path

__all__ = [
    "EspeakTts",
    "PiperTts",
    "WhisperStt",
    "default_piper_voice_path",
    "default_whisper_model_path",
]
