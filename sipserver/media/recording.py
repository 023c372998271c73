"""Call recording: the caller on the left, the agent on the right, aligned on the call's clock.

Two pieces. :class:`CallRecording` is one call's recording, fed by the process that hosts the
call's session: once per 20 ms tick, :meth:`CallRecording.add` takes the caller frames the session
received in that tick and the one frame it sent. It only appends bytes to the call's two track
buffers and, every second of call audio, hands a one-second chunk to :class:`RecordingEncoder`:
one thread per process that owns every call's open PyAV container, encodes (Ogg/Opus through
libopus, or PCM WAV) and writes the files. Nothing is encoded or written on the caller's thread.

Alignment (the rule): the agent track has exactly one frame per tick, so tick ``k`` is at
``k * 20 ms`` in the file. The caller track follows the ticks as closely as the arrivals allow:

- a tick in which no caller frame arrived (and the caller track is not ahead) gets a frame of
  silence, so the caller track never falls behind the clock: a word said at second 12 is at
  second 12 of the file;
- a burst (n frames in one tick) is laid out consecutively. Its last frame is taken as this
  tick's and the others as late ones: they first take the places of the silence frames inserted
  for the ticks just before (at most n - 1 of them, at most ``max_caller_lead``), so a packet
  that came one tick late with the next one, or a client that sends 100 ms at a time, lands on
  its own ticks; what is left (a burst after ticks that had their frames) runs ahead of the tick
  count and catches up at the next ticks without a frame;
- a frame that would put the caller track more than ``max_caller_lead`` frames ahead of the
  ticks is dropped (counted in ``sipserver_recording_dropped_frames_total``). So a caller frame
  is never placed more than ``max_caller_lead`` x 20 ms from the tick it arrived in.

The file is exactly ``ticks x 20 ms`` long; caller frames still ahead of the last tick when the
call closes are cut off.

Bounded everywhere: a call buffers at most a second and twice the caller lead; the encoder's queue
holds ``max_chunks`` one-second chunks. When it is full a chunk is dropped, counted in
``sipserver_recording_dropped_chunks_total``, and the encoder writes that second as silence, so
the rest of the file stays aligned. A failed encode or write (disk full, directory not
writable) ends that recording only: logged, counted in ``sipserver_recording_errors_total``,
the partial file removed, the recording's future failed; :meth:`CallRecording.add` then returns
at once and the call goes on.

Files are created 0600 in directories created 0700 (:mod:`sipserver.data_dir`), at
:func:`recording_path`: ``<data_dir>/recordings/YYYY-MM-DD/<record_id>.ogg|.wav`` (UTC date of
the call's start).

Use (the process hosting the sessions; ``settings`` is the agent's ``recording`` block)::

    encoder = RecordingEncoder(registry=metrics.registry)    # once per process (and registry)
    path = recording_path(data_dir, record.id, settings.format, record.started_at)
    rec = CallRecording(path, sample_rate=16000, channels=settings.channels,
                        format=settings.format, encoder=encoder)
    rec.add(frames_received_this_tick, frame_sent_this_tick)  # every 20 ms tick
    rec.close()                                                # at the end of the call
    file = await asyncio.wrap_future(rec.future)               # RecordingFile, or RecordingError
    record.recording = RecordingInfo(**dataclasses.asdict(file))
    encoder.stop()                                             # at shutdown: files finished

This module is the media layer's one piece of I/O (a thread, files); it imports no clock.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import av
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter

from sipserver.data_dir import FILE_MODE, make_private_dir
from sipserver.media.frames import FRAME_MS, frame_bytes
from sipserver.observability import get_logger

__all__ = [
    "CHANNELS",
    "CHUNK_FRAMES",
    "FORMATS",
    "MAX_CALLER_LEAD",
    "OPUS_BITRATE_PER_CHANNEL",
    "OPUS_OPTIONS",
    "CallRecording",
    "RecordingEncoder",
    "RecordingError",
    "RecordingFile",
    "recording_path",
]

Channels = Literal["stereo", "mixed"]
Format = Literal["opus", "wav"]
CHANNELS: Final = ("stereo", "mixed")
"""``stereo``: caller left, agent right; ``mixed``: one channel, both parties."""
FORMATS: Final = ("opus", "wav")
"""``opus``: Ogg/Opus (libopus); ``wav``: 16-bit PCM WAV."""
SAMPLE_RATES: Final = (8000, 16000)

CHUNK_FRAMES: Final = 50
"""Frames (1 s) of a chunk handed to the encoder. A call hands one over when it holds a chunk
plus ``max_caller_lead`` frames: the frames kept stay within reach of a late burst."""
MAX_CALLER_LEAD: Final = 5
"""Default of ``max_caller_lead``: frames (100 ms) the caller track may run ahead of the ticks,
enough for clients that send up to 120 ms at once."""

OPUS_BITRATE_PER_CHANNEL: Final = {8000: 24_000, 16000: 24_000}
"""Opus bit rate per channel, bit/s, by the call's sample rate (a stereo file has twice this).
Not lower: at 16 kbit/s per channel CELT codes the two channels jointly (intensity stereo) and
each party leaks into the other's channel at about -30 dB (measured); at 24 kbit/s they stay
apart. One hour of a stereo call is about 22 MB (Ogg pages included)."""
OPUS_OPTIONS: Final = {"application": "audio", "compression_level": "0", "frame_duration": "20"}
"""libopus settings, chosen by measurement on espeak-ng conversations (bench/README.md, "Call
records"): ``audio`` codes 8/16 kHz speech at these rates in CELT mode, cheaper than ``voip``
(SILK) and as close to the input (log-spectral distance) as ``voip`` at complexity 10;
complexity 0 costs about half of complexity 5 for a small loss; 20 ms packets keep CELT's time
resolution (60 ms ones cost 15-20% less but smear speech). The encoder's rate is the call's
(libopus takes 8/12/16/24/48 kHz); players decode Ogg/Opus at 48 kHz, and the Ogg pre-skip
removes the encoder's look-ahead, so sample 0 of the file is tick 0."""

_LIMIT_KNEE: Final = 16384.0
"""Mixed recordings: sums above this magnitude are compressed smoothly (no hard clipping)."""
_RECORD_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")

_log = get_logger("sipserver.media.recording")


class RecordingError(Exception):
    """A recording could not be made or finished; the message says why (the path, the OS error)."""


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """A finished recording: exactly the fields of ``sipserver.pipeline.call_record.RecordingInfo``
    (the host converts: ``RecordingInfo(**dataclasses.asdict(file))``)."""

    path: str
    """Absolute path of the file."""
    format: str
    """``opus`` or ``wav``."""
    channels: str
    """``stereo`` or ``mixed``."""
    sample_rate: int
    """Hz of the audio given (an Ogg/Opus player decodes at 48 kHz)."""
    duration: float
    """Seconds of audio: ticks x 20 ms."""
    bytes: int
    """Size of the file."""


def recording_path(
    data_dir: str | os.PathLike[str], record_id: str, format: str, started_at: float
) -> Path:
    """Where a call's recording lives: ``<data_dir>/recordings/YYYY-MM-DD/<record_id>.ogg|.wav``.

    Args:
        data_dir: ``server.data_dir``.
        record_id: The call record's id (letters, digits, ``-``, ``_``: it names a file).
        format: ``opus`` (``.ogg``) or ``wav``.
        started_at: Start of the call, seconds since the epoch; its UTC date names the directory.

    Raises:
        ValueError: ``record_id`` is not a plain file name, or ``format`` is unknown.
    """
    if not _RECORD_ID.fullmatch(record_id):
        raise ValueError(f"record id {record_id!r} is not a plain file name")
    if format not in FORMATS:
        raise ValueError(f"recording format {format!r} is not one of {', '.join(FORMATS)}")
    day = datetime.fromtimestamp(started_at, UTC).strftime("%Y-%m-%d")
    suffix = ".ogg" if format == "opus" else ".wav"
    return Path(data_dir) / "recordings" / day / f"{record_id}{suffix}"


def _resolve(future: Future[RecordingFile], result: RecordingFile | BaseException) -> None:
    """Set ``future`` once (the first outcome wins: a failure, the finished file, a stop)."""
    with contextlib.suppress(InvalidStateError):
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _mix(caller: npt.NDArray[np.int16], agent: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """The sum of both tracks without clipping: unchanged up to half of full scale, above it
    compressed smoothly (tanh knee) towards full scale, which it never reaches."""
    total = caller.astype(np.float32) + agent.astype(np.float32)
    magnitude = np.abs(total)
    if magnitude.size == 0 or float(magnitude.max()) <= _LIMIT_KNEE:
        return total.astype(np.int16)
    headroom = 32767.0 - _LIMIT_KNEE
    over = np.maximum(magnitude - _LIMIT_KNEE, 0.0)
    limited = np.where(
        magnitude > _LIMIT_KNEE, _LIMIT_KNEE + headroom * np.tanh(over / headroom), magnitude
    )
    return (np.sign(total) * limited).astype(np.int16)


class _Writer:
    """The encoder thread's side of one recording: its file, container and stream.

    Touched only by the encoder thread, except :attr:`failed` (read by ``add``) and
    :attr:`future` (thread-safe).
    """

    __slots__ = (
        "channels",
        "container",
        "created",
        "failed",
        "file",
        "format",
        "future",
        "path",
        "sample_rate",
        "samples",
        "stream",
    )

    def __init__(self, path: Path, sample_rate: int, channels: Channels, format: Format) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.channels: Channels = channels
        self.format: Format = format
        self.future: Future[RecordingFile] = Future()
        self.failed = False
        self.samples = 0
        self.file: Any = None
        self.container: Any = None
        self.stream: Any = None
        self.created = False  # the file is ours to remove (never a path we could not open)

    @property
    def layout(self) -> str:
        return "stereo" if self.channels == "stereo" else "mono"

    def open(self) -> None:
        """Create the directory (0700) and the file (0600) and start the container."""
        make_private_dir(self.path.parent, key="server.data_dir")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, FILE_MODE)
        self.created = True
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits; an old file kept its own
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        if self.format == "opus":
            self.container = av.open(self.file, mode="w", format="ogg")
            self.stream = self.container.add_stream(
                "libopus", rate=self.sample_rate, layout=self.layout
            )
            nchannels = 2 if self.channels == "stereo" else 1
            self.stream.bit_rate = OPUS_BITRATE_PER_CHANNEL[self.sample_rate] * nchannels
            self.stream.codec_context.options = dict(OPUS_OPTIONS)
        else:
            self.container = av.open(self.file, mode="w", format="wav")
            self.stream = self.container.add_stream(
                "pcm_s16le", rate=self.sample_rate, layout=self.layout
            )
        self.container.start_encoding()

    def write(self, caller: bytes, agent: bytes, gap: int) -> None:
        """Encode ``gap`` samples of silence (chunks the queue dropped), then one chunk."""
        while gap > 0:
            n = min(gap, self.sample_rate)
            silence = np.zeros(n, np.int16)
            self._encode(silence, silence)
            gap -= n
        if agent:
            self._encode(np.frombuffer(caller, "<i2"), np.frombuffer(agent, "<i2"))

    def _encode(self, caller: npt.NDArray[np.int16], agent: npt.NDArray[np.int16]) -> None:
        n = len(agent)
        if self.channels == "stereo":
            pcm = np.empty((n, 2), np.int16)
            pcm[:, 0] = caller
            pcm[:, 1] = agent
        else:
            pcm = _mix(caller, agent)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self.samples
        self.samples += n
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> RecordingFile:
        """Flush the encoder, close the container and the file (synced to disk, so the file a
        stored record points at survives a crash); the facts of the file."""
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        self.container = None
        self.file.flush()
        os.fsync(self.file.fileno())
        size = os.fstat(self.file.fileno()).st_size
        self.file.close()
        self.file = None
        return RecordingFile(
            path=str(self.path),
            format=self.format,
            channels=self.channels,
            sample_rate=self.sample_rate,
            duration=self.samples / self.sample_rate,
            bytes=size,
        )

    def discard(self) -> None:
        """Close whatever is open and remove the partial file (a failed recording)."""
        self.failed = True
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.close()
            self.container = None
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
            self.file = None
        if self.created:
            with contextlib.suppress(OSError):
                self.path.unlink()


_OPEN, _CHUNK, _CLOSE = 0, 1, 2
_Item = tuple[int, _Writer, bytes, bytes, int]
"""(kind, writer, caller PCM, agent PCM, samples of silence to write first)."""


class _ChunkQueue:
    """FIFO of the encoder's work: at most ``max_chunks`` chunks; opening and closing a recording
    are always taken (one of each per recording, so they are bounded by the live recordings)
    and keep their order with the chunks."""

    def __init__(self, max_chunks: int) -> None:
        self.max_chunks = max_chunks
        self._items: deque[_Item] = deque()
        self._chunks = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: _Item) -> bool:
        """Queue ``item``; False when the queue is stopped or (a chunk) full. Never blocks
        beyond the lock."""
        with self._cond:
            if self._closed:
                return False
            if item[0] == _CHUNK:
                if self._chunks >= self.max_chunks:
                    return False
                self._chunks += 1
            self._items.append(item)
            self._cond.notify()
            return True

    def get(self) -> _Item | None:
        """The next item, waiting for one; None once stopped and drained."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            item = self._items.popleft()
            if item[0] == _CHUNK:
                self._chunks -= 1
            return item

    def close(self) -> None:
        """Refuse new items; :meth:`get` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RecordingEncoder:
    """The process's recording encoder: one thread that encodes and writes every call's file.

    The thread starts with the first recording (or :meth:`start`); :meth:`stop` encodes what is
    queued, finishes every recording still open (its file is valid, its future resolved) and
    joins. The thread is a daemon: without :meth:`stop` the files being written are left
    unfinished at exit.

    Args:
        max_chunks: one-second chunks the queue holds (about 32 KB each at 16 kHz stereo, so the
            default bounds it at ~8 MB); when full, a chunk is dropped and written as silence.
        registry: Prometheus registry of the counters (the server's ``Metrics.registry``); a
            private one when None. :meth:`stats` gives the same totals as plain numbers (a
            worker process ships them to the main process).
    """

    def __init__(self, *, max_chunks: int = 256, registry: CollectorRegistry | None = None) -> None:
        if max_chunks < 1:
            raise ValueError("max_chunks must be at least 1")
        self._queue = _ChunkQueue(max_chunks)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._writers: set[_Writer] = set()  # the encoder thread's
        r = registry if registry is not None else CollectorRegistry()
        self._dropped_chunks = Counter(
            "sipserver_recording_dropped_chunks",
            "One-second recording chunks dropped because the encoder's queue was full "
            "(written as silence).",
            registry=r,
        )
        self._dropped_frames = Counter(
            "sipserver_recording_dropped_frames",
            "Caller frames left out of a recording because a burst ran too far ahead of the "
            "call's clock.",
            registry=r,
        )
        self._errors = Counter(
            "sipserver_recording_errors",
            "Recordings ended by an error (file not creatable, disk full, encoder failure).",
            registry=r,
        )
        self._files = Counter(
            "sipserver_recording_files",
            "Recordings finished and written.",
            registry=r,
        )
        self._counts = {"dropped_chunks": 0, "dropped_frames": 0, "errors": 0, "files": 0}
        self._counts_lock = threading.Lock()

    def start(self) -> None:
        """Start the encoder thread (once; a stopped encoder stays stopped)."""
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="recording-encoder", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Encode what is queued, finish every open recording, join the thread.

        New recordings fail at once afterwards. ``timeout``: seconds to wait for the thread
        (None: until it is done).
        """
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._queue.close()
        if thread is not None:
            thread.join(timeout)

    def stats(self) -> dict[str, int]:
        """Totals since start: ``dropped_chunks``, ``dropped_frames``, ``errors``, ``files``."""
        with self._counts_lock:
            return dict(self._counts)

    def queued_chunks(self) -> int:
        """Chunks waiting for the encoder thread (a gauge for tests and benchmarks)."""
        return self._queue._chunks

    # --- the callers' side (any thread; never blocks) --------------------------------------

    def _open(self, writer: _Writer) -> None:
        self.start()
        if not self._queue.put((_OPEN, writer, b"", b"", 0)):
            writer.failed = True
            _resolve(writer.future, RecordingError(f"{writer.path}: the encoder is stopped"))

    def _submit(self, writer: _Writer, caller: bytes, agent: bytes, gap: int) -> bool:
        if self._queue.put((_CHUNK, writer, caller, agent, gap)):
            return True
        self._count("dropped_chunks", self._dropped_chunks)
        return False

    def _close(self, writer: _Writer, caller: bytes, agent: bytes, gap: int) -> None:
        if not self._queue.put((_CLOSE, writer, caller, agent, gap)):
            _resolve(writer.future, RecordingError(f"{writer.path}: the encoder is stopped"))

    def _count(self, key: str, counter: Counter, n: int = 1) -> None:
        with self._counts_lock:  # callers' threads and the encoder thread count
            self._counts[key] += n
        counter.inc(n)

    # --- the encoder thread ---------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._handle(item)
        for writer in list(self._writers):  # recordings never closed: finish what they gave
            self._finish(writer)

    def _handle(self, item: _Item) -> None:
        kind, writer, caller, agent, gap = item
        if writer.failed:
            return
        try:
            if kind == _OPEN:
                self._writers.add(writer)
                writer.open()
            else:
                writer.write(caller, agent, gap)
        except Exception as exc:
            self._fail(writer, exc)
            return
        if kind == _CLOSE:
            self._finish(writer)

    def _finish(self, writer: _Writer) -> None:
        self._writers.discard(writer)
        if writer.samples == 0:  # the call ended before its first tick: no file, no error
            writer.discard()
            _log.info("recording_empty", path=str(writer.path))
            _resolve(writer.future, RecordingError(f"{writer.path}: nothing was recorded"))
            return
        try:
            result = writer.finish()
        except Exception as exc:
            self._fail(writer, exc)
            return
        self._count("files", self._files)
        _resolve(writer.future, result)

    def _fail(self, writer: _Writer, exc: Exception) -> None:
        self._writers.discard(writer)
        writer.discard()
        self._count("errors", self._errors)
        message = str(exc) if isinstance(exc, RecordingError) else f"{writer.path}: {exc}"
        _log.error("recording_failed", path=str(writer.path), error=str(exc))
        error = RecordingError(message)
        error.__cause__ = exc
        _resolve(writer.future, error)


class CallRecording:
    """One call's recording, fed once per 20 ms tick from the thread that hosts the session.

    Args:
        path: The file to write (:func:`recording_path`); its directory is created 0700.
        sample_rate: The call's rate, 8000 or 16000 Hz; frames are s16le mono,
            ``sample_rate // 50`` samples (a frame of another length is cut or padded).
        channels: ``stereo`` (caller left, agent right) or ``mixed`` (one channel).
        format: ``opus`` (Ogg/Opus) or ``wav``.
        encoder: The process's :class:`RecordingEncoder`.
        max_caller_lead: Frames the caller track may run ahead of the ticks (module doc).

    :attr:`future` resolves, on the encoder thread, with the :class:`RecordingFile` once the file
    is finished after :meth:`close`, or fails with :class:`RecordingError` as soon as the
    recording fails (it may fail before close). Callbacks added with
    ``future.add_done_callback`` run on the encoder thread: hand the result to an event loop with
    ``loop.call_soon_threadsafe`` or await ``asyncio.wrap_future(recording.future)``.

    Not thread-safe: :meth:`add` and :meth:`close` are called by one thread (the media clock).

    Raises:
        ValueError: an unsupported sample rate, channels or format.
    """

    __slots__ = (
        "_agent",
        "_caller",
        "_chunk_bytes",
        "_closed",
        "_encoder",
        "_frame_bytes",
        "_gap",
        "_lead_bytes",
        "_lead_frames",
        "_silence",
        "_silent",
        "_writer",
        "dropped_frames",
        "ticks",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_rate: int,
        channels: str = "stereo",
        format: str = "opus",
        encoder: RecordingEncoder,
        max_caller_lead: int = MAX_CALLER_LEAD,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"recording sample rate {sample_rate} is not 8000 or 16000")
        if channels not in CHANNELS:
            raise ValueError(f"recording channels {channels!r} is not one of stereo, mixed")
        if format not in FORMATS:
            raise ValueError(f"recording format {format!r} is not one of opus, wav")
        if max_caller_lead < 0:
            raise ValueError("max_caller_lead must be >= 0")
        self._frame_bytes = frame_bytes(sample_rate)
        self._chunk_bytes = self._frame_bytes * CHUNK_FRAMES
        self._lead_frames = max_caller_lead
        self._lead_bytes = self._frame_bytes * max_caller_lead
        self._silent = 0  # silence frames inserted at the end of the caller track, in a row
        self._silence = bytes(self._frame_bytes)
        self._caller = bytearray()
        self._agent = bytearray()
        self._gap = 0
        self._closed = False
        self._encoder = encoder
        self.ticks = 0
        """Ticks added so far (the file will be ``ticks * 20 ms`` long)."""
        self.dropped_frames = 0
        """Caller frames left out: they ran more than ``max_caller_lead`` ahead."""
        self._writer = _Writer(
            Path(os.path.abspath(path)),
            sample_rate,
            "stereo" if channels == "stereo" else "mixed",
            "opus" if format == "opus" else "wav",
        )
        encoder._open(self._writer)

    @property
    def future(self) -> Future[RecordingFile]:
        """The finished file, or the :class:`RecordingError` that ended the recording."""
        return self._writer.future

    @property
    def failed(self) -> bool:
        """The recording ended with an error (:attr:`future` holds it); ``add`` does nothing."""
        return self._writer.failed

    @property
    def duration(self) -> float:
        """Seconds recorded so far (ticks x 20 ms)."""
        return self.ticks * FRAME_MS / 1000

    def add(self, caller_frames: Sequence[bytes], agent_frame: bytes) -> None:
        """One tick: the caller frames the session received in it (0, 1, or a burst) and the
        frame it sent. Appends to the call's buffers; hands over a chunk every second. Never
        blocks, never raises for a failed recording (it does nothing then)."""
        if self._closed or self._writer.failed:
            return
        size = self._frame_bytes
        agent = self._agent
        caller = self._caller
        agent += agent_frame if len(agent_frame) == size else _fit(agent_frame, size)
        self.ticks += 1
        if caller_frames:
            # Late frames of a burst take back the silence inserted for the ticks before.
            back = min(len(caller_frames) - 1, self._silent, self._lead_frames)
            if back > 0:
                del caller[len(caller) - back * size :]
            self._silent = 0
            limit = len(agent) + self._lead_bytes
            for frame in caller_frames:
                if len(caller) >= limit:
                    self.dropped_frames += 1
                    self._encoder._count("dropped_frames", self._encoder._dropped_frames)
                    continue
                caller += frame if len(frame) == size else _fit(frame, size)
        if len(caller) < len(agent):  # nothing from the caller for this tick: silence
            caller += self._silence[: len(agent) - len(caller)]
            self._silent += 1
        if len(agent) >= self._chunk_bytes + self._lead_bytes:
            self._hand_over()

    def _hand_over(self) -> None:
        n = self._chunk_bytes
        caller = bytes(self._caller[:n])
        agent = bytes(self._agent[:n])
        del self._caller[:n]
        del self._agent[:n]
        if self._encoder._submit(self._writer, caller, agent, self._gap):
            self._gap = 0
        else:  # the queue is full: the encoder writes this second as silence
            self._gap += n // 2

    def close(self) -> None:
        """Hand over the rest and return at once; :attr:`future` resolves when the file is done.
        Later calls (and ``add`` after it) do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._writer.failed:
            return
        n = len(self._agent)
        caller = bytes(self._caller[:n])  # caller frames ahead of the last tick are cut off
        agent = bytes(self._agent)
        self._caller.clear()
        self._agent.clear()
        self._encoder._close(self._writer, caller, agent, self._gap)
        self._gap = 0


def _fit(frame: bytes, size: int) -> bytes:
    """``frame`` cut or zero-padded to ``size`` bytes."""
    return frame[:size] if len(frame) >= size else frame + bytes(size - len(frame))
