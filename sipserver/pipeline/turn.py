"""End-of-turn detection: has the caller finished, or only paused?

The default model is Smart Turn v3.2 (BSD-2-Clause, multilingual, audio only), whose ONNX file
ships inside the ``pipecat-ai`` wheel; this module only reads that file, it never imports pipecat.
The session asks once per pause, not per frame.

Model contract (measured, see ``tests/integration/test_local_models.py``):

- input ``input_features`` float32 ``[B, 80, 800]``: Whisper log-mel features (80 mels, 10 ms hop)
  of the last 8 s of 16 kHz audio. The audio is normalised to zero mean and unit variance first
  (the probability then does not depend on the caller's level) and shorter audio is zero-padded
  at the *start*, so the end of speech sits at the end of the window (padding at the end hides
  it: every input then scores ~0.98).
- output ``logits`` ``[B, 1]``: despite its name already a probability in [0, 1] (the graph ends
  in a sigmoid); no further squashing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
from faster_whisper.feature_extractor import FeatureExtractor  # type: ignore[import-untyped]

from .model_cache import ModelCache
from .providers.base import ProviderError, TurnDetector

__all__ = [
    "SmartTurnDetector",
    "smart_turn_model_path",
    "turn_detector_for",
]

_SAMPLE_RATE = 16000
_WINDOW_S = 8
_WINDOW = _SAMPLE_RATE * _WINDOW_S
_N_FFT = 400  # Whisper's STFT: 25 ms windows
_HOP = 160  # 10 ms
_FRAMES = _WINDOW // _HOP  # 800
_SMART_TURN_FILE = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def smart_turn_model_path() -> Path:
    """Path of the Smart Turn v3.2 ONNX model inside the installed ``pipecat-ai`` wheel.

    Raises:
        ProviderError: pipecat-ai is not installed or its wheel lacks the model file.
    """
    spec = importlib.util.find_spec("pipecat")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _SMART_TURN_FILE
        if path.is_file():
            return path
    raise ProviderError(
        "turn_detection: Smart Turn v3.2 needs the pipecat-ai package (it carries "
        f"pipecat/{_SMART_TURN_FILE}); or use turn_detection.model: vad"
    )


@dataclass(slots=True)
class _LoadedSmartTurn:
    session: onnxruntime.InferenceSession
    executor: ThreadPoolExecutor
    load_seconds: float


class SmartTurnDetector:
    """Smart Turn v3.2 on onnxruntime (implements :class:`~.providers.base.TurnDetector`).

    Args:
        model: the ONNX file; None for the one shipped in ``pipecat-ai``.
        threshold: probability at or above which the caller is done.
        threads: onnxruntime intra-op threads (one prediction takes ~45 ms on one core).

    Raises:
        ProviderError: the model file is missing or an argument is invalid.
    """

    name = "smart-turn-v3.2"
    sample_rate = _SAMPLE_RATE

    _cache: ClassVar[ModelCache[tuple[str, int], _LoadedSmartTurn]] = ModelCache()
    _features: ClassVar[FeatureExtractor | None] = None
    _bands: ClassVar[
        tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float32]]] | None
    ] = None
    _hann: ClassVar[np.ndarray[Any, np.dtype[np.float32]]] = np.hanning(_N_FFT + 1)[:-1].astype(
        np.float32
    )

    def __init__(
        self, model: str | Path | None = None, *, threshold: float = 0.5, threads: int = 1
    ) -> None:
        path = Path(model) if model is not None else smart_turn_model_path()
        if not path.is_file():
            raise ProviderError(f"turn_detection: no Smart Turn model at {path}")
        if not 0.0 <= threshold <= 1.0:
            raise ProviderError(f"turn_detection.threshold must be in [0, 1], not {threshold!r}")
        if threads < 1:
            raise ProviderError(f"turn_detection threads must be >= 1, not {threads!r}")
        self.model_path = path
        self._threshold = threshold
        self.threads = threads

    @property
    def threshold(self) -> float:
        """Probability at or above which the caller is considered done."""
        return self._threshold

    def load(self) -> float:
        """Load the model now (blocking) if this process has not yet; return its load time in s."""
        return self._loaded().load_seconds

    async def warm_up(self) -> float:
        """Load the model on a thread and run one prediction; return the load time in s."""
        seconds = await asyncio.to_thread(self.load)
        await self.end_of_turn_probability(bytes(_SAMPLE_RATE))
        return seconds

    def _loaded(self) -> _LoadedSmartTurn:
        loaded = self._cache.get((str(self.model_path), self.threads), self._load)
        self._extractor()
        return loaded

    @staticmethod
    def _load(key: tuple[str, int]) -> _LoadedSmartTurn:
        path, threads = key
        started = time.perf_counter()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ProviderError(f"cannot load {path}: {exc}") from exc
        return _LoadedSmartTurn(
            session=session,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn"),
            load_seconds=time.perf_counter() - started,
        )

    async def end_of_turn_probability(
        self, pcm: bytes, *, transcript: str = "", language: str | None = None
    ) -> float:
        """Probability in [0, 1] that the caller has finished.

        Args:
            pcm: s16le mono 16 kHz audio up to now; only the last 8 s are used. Include the
                silence since the caller stopped (as the VAD reports it); ~0.2 s is typical.
            transcript: unused (the model listens to the audio only).
            language: unused (the model is multilingual).
        """
        if self._cache.peek((str(self.model_path), self.threads)) is not None:
            loaded = self._loaded()
        else:
            loaded = await asyncio.to_thread(self._loaded)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(loaded.executor, self._predict, loaded.session, pcm)

    @classmethod
    def features(cls, pcm: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The model input ``[1, 80, 800]`` for ``pcm`` (s16le 16 kHz): the last 8 s,
        normalised to zero mean and unit variance, zero-padded at the start.

        Whisper's log-mel (faster-whisper's :class:`FeatureExtractor`: 400-point STFT, 160
        hop, centred with reflection, Slaney mel filters, log10 clamped 8 below the maximum),
        computed only for the frames that touch the audio: the frames of the zero padding are
        exactly zero before the log, so they are filled in. The mel projection uses only each
        filter's band of FFT bins (a Slaney filter is non-zero on <= 14 adjacent bins of 201:
        391 weights of 16,080) in an ``einsum``, never a BLAS ``matmul``: OpenBLAS would hand
        an 80 x 201 x 800 product to its thread pool, whose threads then spin for milliseconds
        (measured: 4 ms of one thread became 27 ms of process CPU per prediction). The bands
        took features from 5.7 to 4.9 ms on 8 s of audio and from 1.35 to 1.02 ms on 2.7 s
        (the dense ``einsum`` alone was 1.5 ms); the result equals the dense one to float
        rounding (1.2e-7) and gave the same probabilities on 18 espeak-ng inputs.
        """
        tail = pcm[-2 * _WINDOW :]
        audio = np.frombuffer(tail[: len(tail) // 2 * 2], dtype="<i2").astype(np.float32)
        if audio.size:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        window = np.zeros(_WINDOW, dtype=np.float32)
        window[_WINDOW - audio.size :] = audio
        padded = np.pad(window, _N_FFT // 2, mode="reflect")
        # Frame f covers window samples [f * hop - n_fft / 2, f * hop + n_fft / 2): every frame
        # before `first` lies in the zero padding (one frame of margin).
        first = max(0, (_WINDOW - audio.size - _N_FFT // 2) // _HOP - 1) if audio.size else _FRAMES
        bins, weights = cls._mel_bands()
        mel = np.zeros((weights.shape[0], _FRAMES), dtype=np.float32)
        if first < _FRAMES:
            stft = cls._extractor().stft(
                padded[first * _HOP :],
                _N_FFT,
                _HOP,
                window=cls._hann,
                center=False,
                return_complex=True,
            )
            power = np.abs(stft[:, : _FRAMES - first].astype("complex64")) ** 2  # [bin, frame]
            # each filter over its own band of bins: [mel, width] . [mel, width, frame]
            mel[:, first:] = np.einsum("mw,mwt->mt", weights, power[bins])
        log_spec = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        log_spec = (log_spec + 4.0) / 4.0
        return np.asarray(log_spec, dtype=np.float32)[np.newaxis, :, :]

    @classmethod
    def _mel_bands(
        cls,
    ) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float32]]]:
        """Each mel filter's band: ``bins[m]`` the FFT bins from its first non-zero one (as
        many as the widest band, clipped to the last bin), ``weights[m]`` its weights there
        (zero past its own band)."""
        if cls._bands is None:
            filters = np.asarray(cls._extractor().mel_filters, dtype=np.float32)
            nonzero = filters != 0
            first = nonzero.argmax(axis=1)
            width = filters.shape[1] - nonzero[:, ::-1].argmax(axis=1) - first
            span = np.arange(int(width.max()))
            bins = np.minimum(first[:, np.newaxis] + span, filters.shape[1] - 1)
            inside = span < width[:, np.newaxis]
            rows = np.arange(filters.shape[0])[:, np.newaxis]
            weights = np.where(inside, filters[rows, bins], 0.0).astype(np.float32)
            cls._bands = (bins, weights)
        return cls._bands

    @classmethod
    def _extractor(cls) -> FeatureExtractor:
        if cls._features is None:
            cls._features = FeatureExtractor(
                feature_size=80, sampling_rate=_SAMPLE_RATE, chunk_length=_WINDOW_S
            )
        return cls._features

    @classmethod
    def _predict(cls, session: onnxruntime.InferenceSession, pcm: bytes) -> float:
        (output,) = session.run(None, {"input_features": cls.features(pcm)})
        return float(np.clip(np.asarray(output).reshape(-1)[0], 0.0, 1.0))


def turn_detector_for(model_name: str, *, threshold: float | None = None) -> TurnDetector | None:
    """The turn detector of a ``turn_detection.model`` setting.

    LiveKit's turn detectors (``livekit_multilingual``/``livekit_english``) are not offered:
    they run only inside a LiveKit Agents job (their model takes the job's inference process,
    downloads its weights at run time and is licensed for LiveKit Agents only), so the
    configuration refuses them (:func:`sipserver._config_rules.check_turn_model`).

    Args:
        model_name: ``multilingual`` or ``english`` (Smart Turn v3.2, multilingual, so both use
            it), ``vad`` (silence only) or ``stt`` (the STT's native verdict, handled by the
            session).
        threshold: override of the detector's default threshold.

    Returns:
        A detector, or None when the setting needs no model (``vad``, ``stt``).

    Raises:
        ProviderError: an unknown name.
    """
    if model_name in ("multilingual", "english"):
        if threshold is None:
            return SmartTurnDetector()
        return SmartTurnDetector(threshold=threshold)
    if model_name in ("vad", "stt"):
        return None
    raise ProviderError(
        f"turn_detection.model: unknown {model_name!r}; choose one of multilingual, english, "
        "vad, stt"
    )
