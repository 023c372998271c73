"""Per-track transcription of a monitored call, and the suggestions that follow the caller.

:class:`ListenedCall` is transport-agnostic: the fork websocket and the receive-only SIP session
push each track's 20 ms PCM into it (:meth:`ListenedCall.push`). Every transcribed track has its
own VAD stream (on the agent model's shared :class:`~sipserver.pipeline.vad.VadBatcher`); each
finished utterance is queued, in the order the utterances ended, for the model's shared STT. A
transcript line is published labelled ``caller`` (Twilio's ``inbound`` track), ``agent``
(``outbound``) or ``mixed`` (a SIP stream of both parties, see :func:`sip_speakers_for`), and
after a caller or mixed line the :class:`~.suggestions.SuggestionEngine` may publish a
suggestion. Everything is bounded: at most ``max_pending`` utterances wait for the STT (the
oldest are dropped and counted) and the monitored call keeps a bounded history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from sipserver.config import Agent, called_number
from sipserver.media.frames import frame_bytes
from sipserver.media.resample import Resampler, resample
from sipserver.observability import Metrics, get_logger
from sipserver.pipeline.runtime import ListenParts
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.suggestions import SuggestionEngine
from sipserver.pipeline.vad import SpeechEnded, VadStream
from sipserver.pipeline.vocabulary import stt_prompt
from sipserver.tasks import cancel_and_wait

__all__ = [
    "SPEAKERS",
    "SUGGESTING_SPEAKERS",
    "ListenedCall",
    "MonitoredOutlet",
    "SipListenSession",
    "sip_speakers_for",
    "speakers_for",
]

log = get_logger(__name__)

SPEAKERS: Final = {"inbound": "caller", "outbound": "agent"}
"""Who speaks on each Twilio track: ``inbound`` is the caller's audio, ``outbound`` the audio
sent to the caller (the human agent's voice)."""
_TRACKS_OF_CHANNEL: Final = {
    "inbound": ("inbound",),
    "outbound": ("outbound",),
    "both_tracks": ("inbound", "outbound"),
}
_SIP_TRACK_OF_CHANNEL: Final = {
    "inbound": ("inbound", "caller"),
    "outbound": ("outbound", "agent"),
    "both_tracks": ("mixed", "mixed"),
}
SUGGESTING_SPEAKERS: Final = frozenset({"caller", "mixed"})
"""Speakers whose lines are followed by a suggestion: the caller, and a stream of both parties
mixed (the caller's words are in it; so are the agent's, which may then trigger suggestions)."""
_DRAIN_TIMEOUT: Final = 20.0

PublishedKind = Literal["transcript", "suggestion", "suggestion_delta"]
"""What a :class:`ListenedCall` publishes."""


class _Summary(Protocol):
    @property
    def call_id(self) -> str: ...


class MonitoredOutlet(Protocol):
    """Where a :class:`ListenedCall` publishes: the main process's
    :class:`~sipserver.listens.monitor.MonitoredCall`, or in a call worker the EVENT records
    that carry each item to it (:mod:`sipserver.rtp.listens_host`)."""

    @property
    def summary(self) -> _Summary: ...

    def publish(self, kind: PublishedKind, data: dict[str, Any]) -> object: ...


def speakers_for(channel: str) -> dict[str, str]:
    """The tracks of a Twilio fork transcribed for a ``listens.channel``, and their labels."""
    return {track: SPEAKERS[track] for track in _TRACKS_OF_CHANNEL[channel]}


def sip_speakers_for(channel: str) -> dict[str, str]:
    """The one track of a SIP listens call for a ``listens.channel``, and its label.

    A SIP listens call carries a single RTP stream, so the channel says whose audio it is: the
    caller's (``inbound``: labelled ``caller``, with suggestions), the human agent's
    (``outbound``: ``agent``, transcripts only) or both parties mixed by the PBX
    (``both_tracks``: ``mixed``, as Asterisk's ChanSpy and FreeSWITCH's eavesdrop send by
    default; speakers cannot be told apart, every line may bring a suggestion). A stereo
    stream or a fork split over two calls (SIPREC, RFC 7866) is not supported.
    """
    track, speaker = _SIP_TRACK_OF_CHANNEL[channel]
    return {track: speaker}


@dataclass(frozen=True, slots=True)
class _Utterance:
    speaker: str
    audio: bytes
    """s16le at the VAD rate."""
    start: float
    """Audio time of the track (seconds) the speech began."""


class _Track:
    """One track: resampler to the VAD rate and its VAD stream."""

    __slots__ = ("resampler", "speaker", "started", "stream")

    def __init__(self, speaker: str, stream: VadStream, input_rate: int) -> None:
        self.speaker = speaker
        self.stream = stream
        self.started = 0.0
        self.resampler = Resampler(input_rate, stream.sample_rate)


class ListenedCall:
    """The transcription and suggestions of one monitored call.

    Args:
        parts: The agent model's STT and VAD, knowledge base and language model.
        monitored: Where transcript lines and suggestions are published.
        speakers: Label of each track transcribed (``{"inbound": "caller"}``); other tracks'
            audio is ignored.
        input_rate: Sample rate of the PCM given to :meth:`push`.
        metrics: Counts suggestions and dropped utterances.
        max_pending: Utterances that may wait for the STT.
    """

    def __init__(
        self,
        parts: ListenParts,
        monitored: MonitoredOutlet,
        speakers: Mapping[str, str],
        *,
        input_rate: int,
        metrics: Metrics | None = None,
        max_pending: int = 8,
    ) -> None:
        self.parts = parts
        self.monitored = monitored
        self.metrics = metrics
        self.input_rate = input_rate
        self.engine = SuggestionEngine(parts.knowledge, parts.llm)
        self._tracks = {
            track: _Track(speaker, parts.vad.open_stream(parts.vad_options), input_rate)
            for track, speaker in speakers.items()
        }
        self._queue: asyncio.Queue[_Utterance] = asyncio.Queue(maxsize=max_pending)
        self._worker = asyncio.get_running_loop().create_task(
            self._work(), name=f"listens-{monitored.summary.call_id[:40]}"
        )
        self._closed = False
        self.dropped = 0
        """Utterances dropped because the STT fell ``max_pending`` behind."""
        self.lines = 0
        """Transcript lines published."""

    @property
    def tracks(self) -> tuple[str, ...]:
        """The tracks transcribed."""
        return tuple(self._tracks)

    def push(self, track: str, pcm: bytes) -> None:
        """Audio of ``track`` (s16le mono at ``input_rate``); other tracks are ignored."""
        state = self._tracks.get(track)
        if state is None or self._closed:
            return
        state.stream.push(state.resampler.process(pcm))
        self._drain(state)

    def _drain(self, state: _Track) -> None:
        while (event := state.stream.next_event()) is not None:
            if isinstance(event, SpeechEnded):
                self._enqueue(_Utterance(state.speaker, event.audio, state.started))
            else:
                state.started = event.time

    def _enqueue(self, utterance: _Utterance) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self._queue.task_done()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.listens_utterances_dropped.inc()
        self._queue.put_nowait(utterance)

    async def close(self) -> None:
        """Transcribe what is still being said, wait for the queue, release the VAD streams."""
        if self._closed:
            return
        for state in self._tracks.values():
            self._drain(state)
            if state.stream.speaking:
                audio = state.stream.current_audio()
                self._enqueue(_Utterance(state.speaker, audio, state.started))
        self._closed = True
        for state in self._tracks.values():
            self.parts.vad.close_stream(state.stream)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), _DRAIN_TIMEOUT)
        await cancel_and_wait(self._worker)

    async def _work(self) -> None:
        while True:
            utterance = await self._queue.get()
            try:
                await self._transcribe(utterance)
            except Exception:
                log.exception("listens_utterance_failed", call_id=self.monitored.summary.call_id)
            finally:
                self._queue.task_done()

    async def _transcribe(self, utterance: _Utterance) -> None:
        stt = self.parts.stt
        pcm = resample(utterance.audio, self.parts.vad_options.sample_rate, stt.sample_rate)
        vocabulary = self.parts.vocabulary
        if vocabulary is None:
            result = await stt.transcribe(pcm)
        else:
            # The agent's words guide the recogniser as on its own calls (no last question:
            # the listened-to agent is a person).
            result = await stt.transcribe(pcm, prompt=stt_prompt(vocabulary, None))
        text = result.text.strip()
        if not any(ch.isalnum() for ch in text):
            return
        call = self.monitored
        call.publish(
            "transcript",
            {
                "speaker": utterance.speaker,
                "text": text,
                "offset": round(utterance.start, 2),
                "at": time.time(),
            },
        )
        self.lines += 1
        log.info(
            "listens_transcript",
            call_id=call.summary.call_id,
            speaker=utterance.speaker,
            text=text,
        )
        if utterance.speaker not in SUGGESTING_SPEAKERS:
            return

        def delta(piece: str) -> None:
            call.publish("suggestion_delta", {"text": piece})

        suggestion = await self.engine.suggest(text, on_delta=delta)
        if suggestion is None:
            return
        call.publish("suggestion", {**suggestion.as_dict(), "at": time.time()})
        if self.metrics is not None:
            self.metrics.listens_suggestions.labels(suggestion.mode).inc()
        log.info(
            "listens_suggestion",
            call_id=call.summary.call_id,
            mode=suggestion.mode,
            sources=[s.source for s in suggestion.sources],
        )


class SipListenSession(ABC):
    """The receive-only session of a SIP call to a listens number (a
    :class:`~sipserver.pipeline.session.CallSession`): the call's one stream is transcribed as
    ``listens.channel`` says (:func:`sip_speakers_for`) by a :class:`ListenedCall`, and
    :meth:`next_frame` is silence. Where that call is opened and closed is the owner's: the
    main process's listens hub (pjsua2 engine) or a call worker's monitored calls (native),
    each a subclass.

    Args:
        agent: the agent whose listens number was called.
        parts: its listens parts.
    """

    hangup_requested: str | None = None
    """Set when the monitored call could not be opened: the call is hung up with it."""

    def __init__(self, agent: Agent, parts: ListenParts) -> None:
        self._agent = agent
        self._parts = parts
        self._call: ListenedCall | None = None
        self._silence = b""
        self._speakers = sip_speakers_for(agent.listens.channel)
        self._track = next(iter(self._speakers))

    @abstractmethod
    def _open(self, info: CallInfo, summary: dict[str, Any]) -> ListenedCall | None:
        """Open the monitored call described by ``summary`` (the fields of a
        :class:`~sipserver.listens.monitor.CallSummary`); None: refused."""

    @abstractmethod
    def _close(self, call: ListenedCall, reason: str) -> None:
        """Finish ``call``'s transcription and end the monitored call (in a task)."""

    @property
    @abstractmethod
    def refused_reason(self) -> str:
        """The hangup reason when :meth:`_open` refuses the call."""

    def on_start(self, info: CallInfo) -> None:
        """Open the monitored call."""
        self._silence = bytes(frame_bytes(info.sample_rate))
        summary: dict[str, Any] = {
            "call_id": info.call_id,
            "agent": self._agent.slug,
            "number": called_number(info.called),
            "caller": called_number(info.caller),
            "channel": self._agent.listens.channel,
            "transport": "sip",
            "started_at": time.time(),
        }
        self._call = self._open(info, summary)
        if self._call is None:
            self.hangup_requested = self.refused_reason

    def on_audio(self, frame: bytes) -> None:
        """The call's audio: transcribed as the channel's track."""
        if self._call is not None:
            self._call.push(self._track, frame)

    def on_dtmf(self, digit: str) -> None:  # noqa: B027 (a no-op for every listener)
        """Ignored: the session only listens."""

    def next_frame(self) -> bytes:
        """Silence, always."""
        return self._silence

    def on_hangup(self, reason: str) -> None:
        """Finish the transcription and end the monitored call (:meth:`_close`)."""
        call, self._call = self._call, None
        if call is not None:
            self._close(call, reason)
