"""Silero voice activity detection on onnxruntime, batched across every session of the process.

Three layers, each usable alone (the segmenter lives in :mod:`sipserver.pipeline.segmenter` and
is re-exported here):

- :class:`SileroModel`: the Silero VAD ONNX model (the ``silero_vad.onnx`` file shipped in the
  ``pipecat-ai`` wheel), one onnxruntime session per process shared by every stream. Its
  :meth:`~SileroModel.infer` is pure: windows and recurrent states in, probabilities and new
  states out.
- :class:`SpeechSegmenter`: turns one stream's per-window speech probabilities into
  :class:`SpeechStarted` / :class:`SpeechEnded` events and buffers the utterance audio. Pure: no
  model, no clock, testable with scripted probabilities.
- :class:`VadBatcher` and :class:`VadStream`: each session pushes its audio into a stream; the
  batcher runs the model once per window period on the ``k``-th pending window of every stream
  in a single batched call, then hands each result to that stream's segmenter.

Time is audio time: seconds of audio a stream has consumed since it began (samples / rate),
never a wall clock. Audio is signed 16-bit little-endian mono at the VAD rate (8000 or 16000 Hz).

Thread safety: :meth:`SileroModel.infer` may run on any thread (onnxruntime releases the GIL).
Everything else is single-threaded: call streams, segmenters and the batcher from the event
loop thread only (:meth:`VadBatcher.run` itself moves just the ``infer`` call to an executor).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sipserver.pipeline.model_cache import ModelCache
from sipserver.pipeline.segmenter import (
    RELEASE_MARGIN,
    SpeechEnded,
    SpeechSegmenter,
    SpeechStarted,
    VadEvent,
    VadOptions,
)

if TYPE_CHECKING:
    from sipserver.pipeline.clock import Clock


__all__ = [
    "RELEASE_MARGIN",
    "SileroModel",
    "SileroModelNotFound",
    "SpeechEnded",
    "SpeechSegmenter",
    "SpeechStarted",
    "VadBatcher",
    "VadEvent",
    "VadOptions",
    "VadStream",
    "silero_model_path",
]

#: Samples per model window and samples of context prepended to it, by sample rate.
_WINDOW = {16000: 512, 8000: 256}
_CONTEXT = {16000: 64, 8000: 32}
_STATE_SIZE = 128
_MEM = 2 * _STATE_SIZE  # a stream's state, flattened

#: Where the model file lives inside the ``pipecat-ai`` wheel (package ``pipecat``).
_PIPECAT_MODEL = ("audio", "vad", "data", "silero_vad.onnx")

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Model


class SileroModelNotFound(FileNotFoundError):
    """The Silero VAD model file is missing (install ``pipecat-ai``, or pass its path)."""


def silero_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed ``pipecat-ai`` wheel.

    Found without importing ``pipecat`` (slow, and it pulls in its logging stack).

    Raises:
        SileroModelNotFound: ``pipecat-ai`` is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("pipecat")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*_PIPECAT_MODEL)
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise SileroModelNotFound(
        "Silero VAD model silero_vad.onnx not found: install the 'pipecat-ai' package "
        f"(pip install pipecat-ai), which ships it{where}, or pass its path"
    )


_sessions: ModelCache[Path, Any] = ModelCache()


def _shared_session(path: Path) -> Any:
    """One onnxruntime session per model file per process, single-threaded."""
    return _sessions.get(path, _open_session)


def _open_session(path: Path) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class SileroModel:
    """The Silero VAD model at one sample rate, on the process's shared onnxruntime session.

    Each inference takes, per stream, the ``context`` last samples of that stream's previous
    window (zeros at the start) followed by a new ``window`` of samples, as float32 in [-1, 1),
    and the stream's recurrent state.

    Args:
        sample_rate: 8000 (256-sample windows, 32 context) or 16000 (512 and 64): 32 ms each.
        path: the ``.onnx`` file; by default the one in the ``pipecat-ai`` wheel.

    Raises:
        SileroModelNotFound: no path given and ``pipecat-ai`` is not installed.
        ValueError: unsupported sample rate.
    """

    __slots__ = (
        "_input",
        "_output",
        "_session",
        "_sr",
        "_state_in",
        "_state_out",
        "context",
        "path",
        "sample_rate",
        "window",
    )

    def __init__(self, sample_rate: int = 16000, path: str | Path | None = None) -> None:
        if sample_rate not in _WINDOW:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self.sample_rate = sample_rate
        self.window = _WINDOW[sample_rate]
        self.context = _CONTEXT[sample_rate]
        self.path = Path(path).resolve() if path is not None else silero_model_path()
        if not self.path.is_file():
            raise SileroModelNotFound(f"Silero VAD model not found: {self.path}")
        self._session = _shared_session(self.path)
        inputs = {i.name for i in self._session.get_inputs()}
        if inputs != {"input", "state", "sr"}:
            raise ValueError(f"{self.path} is not a Silero VAD v5 model (inputs {inputs})")
        self._input, self._state_in = "input", "state"
        self._output, self._state_out = (o.name for o in self._session.get_outputs())
        self._sr = np.array(sample_rate, dtype=np.int64)

    @property
    def window_duration(self) -> float:
        """Seconds of audio per window (0.032)."""
        return self.window / self.sample_rate

    def initial_state(self, batch: int = 1) -> Float32Array:
        """Zero recurrent state for ``batch`` streams: shape [2, batch, 128]."""
        return np.zeros((2, batch, _STATE_SIZE), dtype=np.float32)

    def infer(self, inputs: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        """Speech probabilities of a batch of windows.

        Pure (no state kept between calls) and thread-safe.

        Args:
            inputs: [B, context + window] float32: each row the stream's context then its window.
            state: [2, B, 128] float32 recurrent states.

        Returns:
            probabilities [B] and the new states [2, B, 128].
        """
        if inputs.ndim != 2 or inputs.shape[1] != self.context + self.window:
            raise ValueError(f"inputs must be [B, {self.context + self.window}]")
        if state.shape != (2, inputs.shape[0], _STATE_SIZE):
            raise ValueError(f"state must be [2, {inputs.shape[0]}, {_STATE_SIZE}]")
        probs, new_state = self._session.run(
            None,
            {
                self._input: np.ascontiguousarray(inputs, dtype=np.float32),
                self._state_in: np.ascontiguousarray(state, dtype=np.float32),
                "sr": self._sr,
            },
        )
        return np.asarray(probs, dtype=np.float32).reshape(-1), np.asarray(new_state)


# --------------------------------------------------------------------------------------------
# Streams and the batcher


class VadStream:
    """One session's audio into the shared VAD; created by :meth:`VadBatcher.open_stream`.

    :meth:`push` audio of any length; the batcher cuts it into model windows, infers them and
    feeds each window with its probability to :attr:`segmenter`, whose events the session
    drains with :meth:`next_event` (or from :meth:`events`).

    At most ``max_pending`` seconds of audio wait for inference (rounded up to whole windows);
    beyond that the oldest whole windows are dropped, counted in :attr:`dropped_windows`, and
    the audio clock skips over them (:meth:`SpeechSegmenter.skip`). Pushing while
    :meth:`VadBatcher.run` has a batch in the executor is safe: the batch's windows were already
    taken out of the stream.
    """

    __slots__ = (
        "_buf",
        "_closed",
        "_end",
        "_mem",
        "_odd",
        "_read",
        "_window",
        "dropped_windows",
        "segmenter",
    )

    def __init__(self, model: SileroModel, options: VadOptions, max_pending: float) -> None:
        if options.sample_rate != model.sample_rate:
            raise ValueError(
                f"VAD options are for {options.sample_rate} Hz, the model runs at "
                f"{model.sample_rate} Hz: use a batcher per sample rate"
            )
        window = model.window
        self._window = window
        pending_windows = max(1, math.ceil(max_pending * model.sample_rate / window))
        self._buf: Int16Array = np.zeros(pending_windows * window + window, dtype=np.int16)
        self._read = 0  # first unprocessed sample in _buf
        self._end = 0  # end of the audio in _buf
        self._odd = b""  # a byte left over from a push of odd length
        # The model's memory of this stream: its recurrent state [2 * 128] then its context.
        self._mem: Float32Array = np.zeros(_MEM + model.context, dtype=np.float32)
        self._closed = False
        self.segmenter = SpeechSegmenter(options, model.sample_rate)
        self.dropped_windows = 0
        """Windows dropped unanalysed because too much audio was pending."""

    # -- session side ----------------------------------------------------------------------

    def push(self, pcm: bytes | bytearray | memoryview | Int16Array) -> None:
        """Add audio: s16le bytes or an int16 array, any length, at the VAD rate."""
        if isinstance(pcm, np.ndarray):
            if pcm.dtype != np.int16:
                raise TypeError(f"VAD audio must be int16, not {pcm.dtype}")
            samples: Int16Array = pcm if pcm.ndim == 1 else pcm.reshape(-1)
        else:
            data = bytes(pcm)
            if self._odd:
                data = self._odd + data
                self._odd = b""
            if len(data) % 2:
                self._odd = data[-1:]
                data = data[:-1]
            samples = np.frombuffer(data, dtype="<i2")
        n = len(samples)
        if n == 0:
            return
        buf = self._buf
        if self._end + n > len(buf):
            self._compact()
            total = self._end + n
            if total > len(buf):
                # Drop the oldest whole windows of (pending + new): windows stay aligned.
                windows = math.ceil((total - len(buf)) / self._window)
                drop = windows * self._window
                if drop <= self._end:
                    self._read = drop
                    self._compact()
                else:
                    samples = samples[drop - self._end :]
                    n = len(samples)
                    self._read = self._end = 0
                self.dropped_windows += windows
                self.segmenter.skip(drop)
        buf[self._end : self._end + n] = samples
        self._end += n

    @property
    def pending_windows(self) -> int:
        """Complete windows waiting for inference."""
        return (self._end - self._read) // self._window

    @property
    def probability(self) -> float:
        """Speech probability of the last window analysed."""
        return self.segmenter.probability

    @property
    def sample_rate(self) -> int:
        """Rate of the audio :meth:`push` takes (the model's rate)."""
        return self.segmenter.sample_rate

    @property
    def speaking(self) -> bool:
        """True while the segmenter is in a speech segment."""
        return self.segmenter.speaking

    @property
    def audio_time(self) -> float:
        """Seconds of this stream's audio analysed (or dropped) so far."""
        return self.segmenter.audio_time

    @property
    def silence_duration(self) -> float:
        """Seconds of trailing non-speech in the current utterance (0 when not speaking)."""
        return self.segmenter.silence_duration

    @property
    def speech_duration(self) -> float:
        """Seconds of speech in the current utterance (:attr:`SpeechSegmenter.speech_duration`)."""
        return self.segmenter.speech_duration

    @property
    def closed(self) -> bool:
        """True once closed; pushes are then ignored by the batcher."""
        return self._closed

    def current_audio(self) -> bytes:
        """The utterance buffered so far (see :meth:`SpeechSegmenter.current_audio`)."""
        return self.segmenter.current_audio()

    def events(self) -> deque[VadEvent]:
        """Undrained segmenter events, oldest first (pop them with ``popleft``)."""
        return self.segmenter.events()

    def next_event(self) -> VadEvent | None:
        """Pop the oldest undrained segmenter event, or None."""
        return self.segmenter.next_event()

    # -- batcher side ----------------------------------------------------------------------

    def _compact(self) -> None:
        keep = self._end - self._read
        if self._read:
            self._buf[:keep] = self._buf[self._read : self._end]
            self._read, self._end = 0, keep

    def _take(self) -> Int16Array:
        """The next pending window (a view valid until the next push)."""
        start = self._read
        self._read = start + self._window
        return self._buf[start : self._read]


@dataclass(slots=True)
class _Round:
    """One batched inference: the streams, their windows, and the model inputs."""

    streams: list[VadStream]
    pcm: Int16Array  # [B, window]
    inputs: Float32Array  # [B, context + window]
    state: Float32Array  # [2, B, 128]


class VadBatcher:
    """Runs the Silero model for every open stream, batching their windows into one call.

    Args:
        model: the model (its sample rate is the rate of every stream).
        options: default segmentation options for :meth:`open_stream`.
        max_pending: seconds of audio a stream may hold waiting for inference.
        offload_min_batch: in :meth:`run`, batches of at least this many streams are inferred
            in the executor thread (onnxruntime releases the GIL); smaller ones inline.
    """

    __slots__ = (
        "_busy",
        "_streams",
        "batches",
        "max_pending",
        "model",
        "offload_min_batch",
        "options",
        "windows",
    )

    def __init__(
        self,
        model: SileroModel,
        options: VadOptions | None = None,
        *,
        max_pending: float = 2.0,
        offload_min_batch: int = 16,
    ) -> None:
        self.model = model
        self.options = options or VadOptions(sample_rate=model.sample_rate)
        self.max_pending = max_pending
        self.offload_min_batch = offload_min_batch
        self._streams: dict[int, VadStream] = {}
        self._busy = False
        self.windows = 0
        """Windows inferred since creation."""
        self.batches = 0
        """Batched ``infer`` calls since creation."""

    @property
    def period(self) -> float:
        """Seconds between :meth:`run` ticks: one window (0.032)."""
        return self.model.window_duration

    @property
    def streams(self) -> int:
        """Open streams."""
        return len(self._streams)

    def open_stream(self, options: VadOptions | None = None) -> VadStream:
        """A new stream (zero state, audio time 0) with its own segmenter.

        Args:
            options: segmentation options; the batcher's by default. Their ``sample_rate`` must
                be the model's.
        """
        stream = VadStream(self.model, options or self.options, self.max_pending)
        self._streams[id(stream)] = stream
        return stream

    def close_stream(self, stream: VadStream) -> None:
        """Forget a stream; its pending audio is discarded. Closing twice is harmless."""
        stream._closed = True
        self._streams.pop(id(stream), None)

    def pending(self) -> int:
        """Complete windows waiting, over all open streams."""
        return sum(s.pending_windows for s in self._streams.values())

    def run_once(self) -> int:
        """Infer every complete pending window of every open stream, synchronously.

        The ``k``-th pending window of all streams that have one goes into the ``k``-th batched
        call. Returns the number of windows processed.
        """
        self._enter()
        try:
            done = 0
            while (batch := self._gather()) is not None:
                self._finish(batch, *self.model.infer(batch.inputs, batch.state))
                done += len(batch.streams)
            return done
        finally:
            self._busy = False

    async def run(self, clock: Clock, executor: Executor | None = None) -> None:
        """Process pending windows once per window period on ``clock``, until cancelled.

        Deadlines are ``start + n * period``; ticks missed while behind are skipped (each tick
        processes everything pending anyway). An inference error ends the task with it (the
        owner should watch the task); cancelling it mid-batch loses that batch's windows.
        Do not call :meth:`run_once` while this runs (RuntimeError if they overlap).

        Args:
            clock: the pipeline clock.
            executor: where batches of >= ``offload_min_batch`` streams are inferred; None is
                the event loop's default executor.
        """
        period = self.period
        start = clock.now()
        n = 0
        loop = asyncio.get_running_loop()
        while True:
            n = max(n + 1, math.floor((clock.now() - start) / period))
            await clock.sleep_until(start + n * period)
            self._enter()
            try:
                while (batch := self._gather()) is not None:
                    if len(batch.streams) >= self.offload_min_batch:
                        result = await loop.run_in_executor(
                            executor, self.model.infer, batch.inputs, batch.state
                        )
                    else:
                        result = self.model.infer(batch.inputs, batch.state)
                    self._finish(batch, *result)
                    # One round per window of backlog: let the loop serve other work between
                    # them (a batcher catching up after a stall would otherwise hold it).
                    await asyncio.sleep(0)
            finally:
                self._busy = False

    # -- internals -------------------------------------------------------------------------

    def _enter(self) -> None:
        if self._busy:
            raise RuntimeError("VadBatcher is already processing (run_once inside run?)")
        self._busy = True

    def _gather(self) -> _Round | None:
        """Take the next pending window of every stream that has one into a batch."""
        streams = [s for s in self._streams.values() if s._end - s._read >= s._window]
        if not streams:
            return None
        model = self.model
        b = len(streams)
        pcm = np.empty((b, model.window), dtype=np.int16)
        mem = np.empty((b, _MEM + model.context), dtype=np.float32)
        for i, s in enumerate(streams):
            pcm[i] = s._take()
            mem[i] = s._mem
        inputs = np.empty((b, model.context + model.window), dtype=np.float32)
        inputs[:, : model.context] = mem[:, _MEM:]
        np.multiply(pcm, np.float32(1.0 / 32768.0), out=inputs[:, model.context :])
        state = np.ascontiguousarray(mem[:, :_MEM].reshape(b, 2, _STATE_SIZE).transpose(1, 0, 2))
        return _Round(streams, pcm, inputs, state)

    def _finish(self, batch: _Round, probs: Float32Array, new_state: Float32Array) -> None:
        ctx = self.model.context
        b = len(batch.streams)
        mem = np.empty((b, _MEM + ctx), dtype=np.float32)
        mem[:, :_MEM] = new_state.transpose(1, 0, 2).reshape(b, _MEM)
        mem[:, _MEM:] = batch.inputs[:, -ctx:]
        plist: Sequence[float] = probs.tolist()
        pcm = batch.pcm
        self.windows += b
        self.batches += 1
        for i, s in enumerate(batch.streams):
            if not s._closed:
                s._mem = mem[i]
                s.segmenter.feed(pcm[i], plist[i])
