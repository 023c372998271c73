"""The voice session: a caller's 20 ms frames in, the agent's spoken replies out.

:class:`VoiceSession` implements :class:`~sipserver.pipeline.session.CallSession` on top of the
model stages of :mod:`sipserver.pipeline.providers.base` and a VAD stream. Transports (SIP media
workers, websockets, tests) drive it on a 20 ms tick; it never reads a wall clock (an injected
:class:`~sipserver.pipeline.clock.Clock` gives time) and never blocks: model work runs in tasks
whose results it applies on the following ticks. Tests drive it on a
:class:`~sipserver.pipeline.clock.VirtualClock` faster than real time.

A turn, in order:

1. The VAD reports speech start: state ``user_speaking``; any end-of-turn wait and speculative
   reply are dropped.
2. The VAD reports speech end (after ``min_silence_duration``): the segment (prefix padding
   included) goes to STT at once, while endpointing waits.
3. The final transcript arrives: with ``preemptive_generation`` a speculative reply starts; the
   turn detector (or the STT's own verdict) picks ``min`` or ``max_endpointing_delay``.
4. The delay passes in silence: the turn is committed (``thinking``), the speculative reply is
   used if its text still matches, otherwise a new one starts.
5. LLM text is cut into sentences, each streamed through TTS into playout; the first reply
   frame moves the state to ``speaking``; when the last frame has played, back to
   ``listening`` and the reply joins the history.

Caller speech while the agent speaks is an interruption candidate (see
:class:`~sipserver.pipeline.interruptions.InterruptionOptions`): long enough (and with enough
words when required) it pauses playout at once; a transcript makes it real (the reply is
cancelled and history keeps what the caller heard), no transcript within
``false_interruption_timeout`` makes it false (the agent resumes where it paused, or stays
stopped).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipserver.media.playout import Playout
from sipserver.media.resample import Resampler, resample
from sipserver.observability import get_logger
from sipserver.pipeline.clock import Clock
from sipserver.pipeline.echo_gate import EchoGate
from sipserver.pipeline.endpointing import Endpointer, EndpointingOptions
from sipserver.pipeline.events import (
    AgentState,
    AgentText,
    CallEndRequested,
    Interruption,
    ProviderFailed,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
    TurnPrediction,
)
from sipserver.pipeline.interruptions import InterruptionOptions
from sipserver.pipeline.providers.base import (
    ChatMessage,
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    Transcript,
    TurnDetector,
)
from sipserver.pipeline.reply import END_CALL_TOOL, Reply, heard_text, produce_pieces
from sipserver.pipeline.session import FRAME_MS, CallInfo
from sipserver.pipeline.vad import SpeechEnded, SpeechStarted
from sipserver.pipeline.vocabulary import last_question, stt_prompt

__all__ = ["END_CALL_TOOL", "AgentProfile", "SpeechSegments", "VoiceOptions", "VoiceSession"]

log = get_logger(__name__)


_TURN_AUDIO_SECONDS = 8.0  # audio end-of-turn models look at the last 8 s (Smart Turn v3)
_TURN_TRAILING_SILENCE = 0.2  # Smart Turn scores best on speech plus ~0.2 s of pause
_MAX_PENDING_SEGMENTS = 4
_REWIND_FRAMES = 500 // FRAME_MS  # 500 ms of handed-out reply audio kept for rewind()
_MAX_UNPLAYED_SECONDS = 10.0  # TTS waits while this much reply audio is not yet played


class SpeechSegments(Protocol):
    """The VAD as a session sees it (:class:`sipserver.pipeline.vad.VadStream`)."""

    @property
    def sample_rate(self) -> int:
        """Rate of the PCM :meth:`push` takes and the segments carry."""
        ...

    def push(self, pcm: bytes) -> None:
        """Caller audio at :attr:`sample_rate`."""
        ...

    def next_event(self) -> SpeechStarted | SpeechEnded | None:
        """The next speech boundary found since the last call, or None."""
        ...

    @property
    def speaking(self) -> bool:
        """The caller is in a speech segment now."""
        ...

    @property
    def speech_duration(self) -> float:
        """Seconds of speech in the current segment (0 outside one)."""
        ...

    def current_audio(self) -> bytes:
        """The current segment's audio so far (prefix padding included)."""
        ...

    @property
    def silence_duration(self) -> float:
        """Seconds of trailing non-speech in the current segment (0 outside one)."""
        ...


class FrameMixer(Protocol):
    """Mixes thinking/ambient sounds into outbound frames (:mod:`sipserver.pipeline.feedback`)."""

    def mix(self, frame: bytes, *, thinking: bool) -> bytes:
        """Return ``frame`` with the sounds mixed in."""
        ...


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What the agent is: its instructions and call behaviour (from the agent's config)."""

    instructions: str
    greeting: str | None = None
    """Said when the call starts (None: the agent waits for the caller)."""
    end_call_digit: str | None = None
    """A DTMF key that ends the call (None: keys are ignored)."""
    language: str | None = None
    """ISO 639-1 hint for STT and the turn model."""
    vocabulary: str | None = None
    """The agent's words for the STT (name and knowledge-base terms,
    :func:`~sipserver.pipeline.vocabulary.agent_vocabulary`), given as the prompt of every
    final decode with the agent's last question appended; None: no prompt (the STT does not
    take one, or ``stt.vocabulary: off``). An empty string still sends the last question."""


@dataclass(frozen=True, slots=True)
class VoiceOptions:
    """Turn-handling settings of a ``custom`` model (DESIGN.md's settings table)."""

    interruptions: InterruptionOptions = field(default_factory=InterruptionOptions)
    endpointing: EndpointingOptions = field(default_factory=EndpointingOptions)
    preemptive_generation: bool = True
    interim_interval: float = 0.3
    """Seconds between interim STT runs while interruption words are being counted."""
    question_ends_turn: bool = True
    """A transcript ending in ``?`` is a finished turn and the turn model is not asked (audio
    turn models rely on prosody; telephone and synthetic speech flatten it)."""
    early_stt: float | None = 0.2
    """Seconds of trailing silence after which the segment goes to STT before the VAD ends it
    (``min_silence_duration`` later); the result is used if the caller stays quiet. None: STT
    starts at the VAD's end of speech."""
    echo_gate: bool = True
    """Caller audio that correlates with the agent's own recent audio (line echo) does not
    count as interrupting speech (:mod:`sipserver.pipeline.echo_gate`)."""


class VoiceSession:
    """A conversation with the agent on one call (a :class:`CallSession`).

    Args:
        profile: the agent.
        options: turn-handling settings.
        stt: speech-to-text stage.
        llm: language model stage.
        tts: text-to-speech stage.
        vad: this call's VAD stream (opened on the process's batcher).
        clock: the session clock.
        turn_detector: end-of-turn model, or None for silence-only endpointing.
        feedback: thinking/ambient sound mixer, or None.
        on_event: called with every :class:`SessionEvent` (logs, metrics, dashboards).
        on_close: called once when the call ends (releases the VAD stream).
        history_limit: most history messages kept for the LLM (oldest dropped first).
    """

    def __init__(
        self,
        profile: AgentProfile,
        options: VoiceOptions,
        *,
        stt: SpeechToText,
        llm: LanguageModel,
        tts: TextToSpeech,
        vad: SpeechSegments,
        clock: Clock,
        turn_detector: TurnDetector | None = None,
        feedback: FrameMixer | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        on_close: Callable[[], None] | None = None,
        history_limit: int = 40,
    ) -> None:
        self.profile = profile
        self.options = options
        self._stt = stt
        self._llm = llm
        self._tts = tts
        self._vad = vad
        self._clock = clock
        self._turn = turn_detector
        self._feedback = feedback
        self._on_event = on_event
        self._on_close = on_close
        self.hangup_requested: str | None = None
        self.state = AgentState.LISTENING
        self.history: deque[ChatMessage] = deque(maxlen=history_limit)
        self.events: deque[SessionEvent] = deque(maxlen=1000)
        """The latest events (bounded), for tests and the dashboard's catch-up."""
        self._info: CallInfo | None = None
        self._playout: Playout | None = None
        self._to_vad: Resampler | None = None
        self._rate = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._endpointer = Endpointer(options.endpointing)
        self._turn_texts: list[str] = []
        self._turn_audio = bytearray()  # at the STT rate, last _TURN_AUDIO_SECONDS
        self._stt_chain: asyncio.Task[None] | None = None
        self._stt_pending = 0
        self._verdict: asyncio.Task[None] | None = None
        self._reply: Reply | None = None
        self._speculative: Reply | None = None
        self._segment_during_agent = False
        self._paused = False
        self._held: list[bytes] = []
        self._recent: deque[bytes] = deque(maxlen=_REWIND_FRAMES)  # reply frames handed out
        self._false_deadline: float | None = None
        self._interim: asyncio.Task[None] | None = None
        self._interim_at = -1e9
        self._interim_words: int | None = None
        self._audio_pushed = 0.0  # seconds of audio given to the VAD
        self._echo: EchoGate | None = None
        self._frame_seconds = 0.02
        self._segment_prefix = 0.0
        self._early: tuple[float, asyncio.Task[Transcript]] | None = None
        self._early_spec: Reply | None = None  # the speculative reply begun on the early result
        self._live_speech = 0.0  # seconds of caller speech (not echo) in the current segment
        self._transcript_at: float | None = None  # the turn's last final transcript arrived
        self._turn_model_ms: float | None = None  # the turn model's time for its last verdict
        self._closed = False

    # ------------------------------------------------------------------ CallSession protocol

    def on_start(self, info: CallInfo) -> None:
        """Start the call: set up audio paths and say the greeting."""
        self._info = info
        self._rate = info.sample_rate
        self._playout = Playout(info.sample_rate)
        if self.options.echo_gate:
            self._echo = EchoGate(info.sample_rate)
        self._to_vad = Resampler(info.sample_rate, self._vad.sample_rate)
        if self.profile.greeting:
            reply = Reply(user_text=None, fixed_text=self.profile.greeting, committed=True)
            self._begin(reply)

    def on_audio(self, frame: bytes) -> None:
        """One caller frame: VAD, then every decision that depends on time."""
        if self._closed:
            return
        self._vad.push(self._to_vad.process(frame) if self._to_vad is not None else frame)
        if self._echo is not None:
            self._echo.heard(frame)
        self._frame_seconds = len(frame) / (2 * self._rate)
        self._audio_pushed += self._frame_seconds
        while (event := self._vad.next_event()) is not None:
            if isinstance(event, SpeechStarted):
                self._speech_started(event)
            else:
                self._speech_ended(event)
        self._tick()

    def on_dtmf(self, digit: str) -> None:
        """A key press: ends the call when it is the profile's end-call digit."""
        if self.profile.end_call_digit is not None and digit == self.profile.end_call_digit:
            self._request_hangup(f"caller pressed {digit}")

    def on_hangup(self, reason: str) -> None:
        """The call is over: cancel every task."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        if self._on_close is not None:
            self._on_close()
        log.info("voice_session_ended", call_id=self._call_id, reason=reason)

    def next_frame(self) -> bytes:
        """The next outbound frame: reply audio (or silence) with feedback sounds mixed in."""
        playout = self._playout
        if playout is None:
            return b""
        reply = self._reply
        had_audio = playout.queued_frames > 0
        frame = playout.pop()
        if reply is not None and had_audio:
            reply.played_bytes += len(frame)
            self._recent.append(frame)
            if reply.first_frame is None:
                reply.first_frame = self._clock.now()
                self._emit_latency(reply)
            if self.state is AgentState.THINKING or self.state is AgentState.LISTENING:
                self._set_state(AgentState.SPEAKING)
        if reply is not None and reply.committed and not self._paused and reply.synth_done:
            if playout.segment_open:
                playout.end_segment()
            if playout.queued_frames == 0:
                self._finish_reply(reply)
        if self._feedback is not None:
            frame = self._feedback.mix(frame, thinking=self.state is AgentState.THINKING)
        if self._echo is not None:
            self._echo.played(frame)
        return frame

    def rewind(self, ms: int) -> int:
        """The transport threw away the last ``ms`` of reply audio it had been given (a
        websocket peer's buffer emptied by ``clear`` after a pause): count it as unheard and
        play it again if the agent resumes.

        Only audio handed out since the pause began and at most 500 ms are taken back.

        Returns:
            Milliseconds actually taken back.
        """
        reply = self._reply
        if not self._paused or reply is None or ms <= 0:
            return 0
        count = min(len(self._recent), ms // FRAME_MS)
        frames = [self._recent.pop() for _ in range(count)][::-1]
        self._held[:0] = frames
        reply.played_bytes -= sum(len(f) for f in frames)
        return count * FRAME_MS

    # --------------------------------------------------------------------------- VAD events

    def _speech_started(self, event: SpeechStarted) -> None:
        self._segment_prefix = event.prefix
        self._drop_early()
        self._interim_words = None
        self._interim_at = -1e9
        if self._agent_active():
            self._segment_during_agent = not self._paused
            if self._paused:
                self._false_deadline = None
            return
        self._segment_during_agent = False
        self._endpointer.speech_started()
        self._cancel(self._verdict)
        self._drop_speculative()
        self._set_state(AgentState.USER_SPEAKING)

    def _speech_ended(self, event: SpeechEnded) -> None:
        silence_at = self._clock_time(event.time)
        if self._segment_during_agent and not self._paused:
            # Caller audio while the agent spoke that did not interrupt it (too short, too
            # few words, interruptions off, or echo): not part of any turn.
            self._segment_during_agent = False
            return
        self._segment_during_agent = False
        if self._paused:
            self._false_deadline = silence_at + self.options.interruptions.false_timeout
        self._endpointer.speech_ended(silence_at)
        keep = self._segment_prefix + event.speech_duration + _TURN_TRAILING_SILENCE
        early = None
        if self._early is not None and abs(self._early[0] - event.speech_duration) < 1e-6:
            early = self._early[1]  # the caller stayed quiet since: its result stands
            self._early = None
        self._drop_early()
        spoke_at = self._clock_time(event.time - event.speech_duration)
        self._transcribe(
            event.audio,
            event.audio[: int(keep * self._vad.sample_rate) * 2],
            early=early,
            span=(spoke_at, silence_at),
        )

    # ---------------------------------------------------------------------------- the tick

    def _tick(self) -> None:
        speaking = self._vad.speaking  # changes only when the VAD batcher runs, not in here
        if not speaking:
            self._live_speech = 0.0
            if not self._paused and self._endpointer.silence_since is None:
                return  # the common tick (silence, nothing pending): nothing below applies
        now = self._clock.now()
        opts = self.options.interruptions
        if speaking and self._agent_active() and not self._paused and opts.allow:
            # Only speech that is not the agent's own echo counts toward an interruption.
            if self._echo is None:
                self._live_speech = self._vad.speech_duration
            elif not self._echo.is_echo():
                self._live_speech += self._frame_seconds
            duration = self._live_speech
            if opts.should_pause(duration, self._interim_words):
                self._pause(now)
            elif opts.min_words > 0 and duration >= opts.min_duration:
                self._run_interim(now)
        early = self.options.early_stt
        if (
            early is not None
            and speaking
            and not self._segment_during_agent
            and self._vad.silence_duration >= early
        ):
            self._start_early_stt()
        elif (
            self._early is not None
            and speaking
            and abs(self._early[0] - self._vad.speech_duration) > 1e-6
        ):
            self._drop_early()  # the caller spoke again in the same segment
        if (
            self._paused
            and self._false_deadline is not None
            and now >= self._false_deadline
            and not speaking
        ):
            self._false_interruption(now)
        ep = self._endpointer
        if (
            ep.silence_since is not None
            and not self._paused
            and not speaking
            and self._stt_pending == 0
        ):
            forced = ep.forced_deadline()
            if ep.due(now) or (forced is not None and now >= forced):
                self._commit_turn(now)

    # -------------------------------------------------------------------------- STT, turns

    def _start_early_stt(self) -> None:
        """Transcribe the segment while the VAD still waits to declare its end."""
        duration = self._vad.speech_duration
        if self._early is not None:
            if abs(self._early[0] - duration) < 1e-6:
                return  # already running for this stretch of speech
            self._drop_early()  # the caller spoke again since
        pcm = resample(self._vad.current_audio(), self._vad.sample_rate, self._stt.sample_rate)
        task = asyncio.get_running_loop().create_task(self._final_stt(pcm))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        task.add_done_callback(self._early_done)
        self._early = (duration, task)

    def _early_done(self, task: asyncio.Task[Transcript]) -> None:
        """The early transcript is in while the caller is still quiet: with
        ``preemptive_generation`` the speculative reply begins on it now rather than when the
        VAD ends the segment (``min_silence_duration`` later), so that its first audio is
        ready at the end of the turn. The caller speaking again drops it (:meth:`_drop_early`);
        the final transcript keeps it when the text is the same."""
        if (
            self._early is None
            or self._early[1] is not task
            or task.cancelled()
            or task.exception() is not None
            or not self.options.preemptive_generation
            or self._reply is not None
            or self._segment_during_agent
            or self._paused
        ):
            return
        text = task.result().text.strip()
        if not text:
            return
        turn_text = " ".join([*self._turn_texts, text])
        if self._speculative is not None and self._speculative.user_text == turn_text:
            return
        self._drop_speculative()
        self._speculative = self._early_spec = Reply(user_text=turn_text)
        self._begin(self._speculative)

    def _drop_early(self) -> None:
        if self._early is not None:
            self._cancel(self._early[1])
            self._early = None
            if self._early_spec is not None and self._early_spec is self._speculative:
                self._drop_speculative()  # begun on words the caller has since gone on from
        self._early_spec = None

    def _transcribe(
        self,
        audio: bytes,
        turn_audio: bytes,
        *,
        early: asyncio.Task[Transcript] | None = None,
        span: tuple[float, float] | None = None,
    ) -> None:
        if self._stt_pending >= _MAX_PENDING_SEGMENTS:
            log.warning("stt_backlog_dropped_segment", call_id=self._call_id)
            if early is not None:
                early.cancel()
            return
        pcm = resample(audio, self._vad.sample_rate, self._stt.sample_rate)
        tail = resample(turn_audio, self._vad.sample_rate, self._stt.sample_rate)
        previous = self._stt_chain
        self._stt_pending += 1

        async def run() -> None:
            try:
                if previous is not None:
                    # Transcripts arrive in speech order: wait until the previous segment's job
                    # has finished, however it ended (its own task reports a failure). wait()
                    # raises neither that job's error nor its cancellation, while cancelling
                    # this task (hang-up) still ends it here, before its STT call starts.
                    await asyncio.wait((previous,))
                try:
                    if early is not None:
                        result = await early
                    else:
                        result = await self._final_stt(pcm)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._provider_failed("stt", exc)
                    result = Transcript("")
            finally:
                self._stt_pending -= 1
            self._on_transcript(result, tail, span)

        self._stt_chain = self._spawn(run())

    def _final_stt(self, pcm: bytes) -> Coroutine[Any, Any, Transcript]:
        """The final decode of ``pcm``, with the call's context as the prompt when the agent
        has a vocabulary (the keyword is left out otherwise, for providers without it)."""
        vocabulary = self.profile.vocabulary
        if vocabulary is None:
            return self._stt.transcribe(pcm, language=self.profile.language)
        question = last_question(m.content for m in self.history if m.role == "assistant")
        return self._stt.transcribe(
            pcm, language=self.profile.language, prompt=stt_prompt(vocabulary, question)
        )

    def _on_transcript(
        self, result: Transcript, pcm: bytes, span: tuple[float, float] | None = None
    ) -> None:
        now = self._clock.now()
        text = result.text.strip()
        if text:
            start, end = span if span is not None else (None, None)
            self._emit(TranscriptReceived(now, text, True, start, end))
        if self._paused:
            if self.options.interruptions.is_real(result.words):
                self._real_interruption(now)
            else:
                return  # the false-interruption deadline decides
        if not text:
            if not self._turn_texts and not self._vad.speaking:
                self._endpointer.speech_started()  # nothing to end: noise
                if self._reply is None:
                    self._set_state(AgentState.LISTENING)
            return
        self._turn_texts.append(text)
        self._transcript_at = now
        self._turn_audio += pcm
        excess = len(self._turn_audio) - int(_TURN_AUDIO_SECONDS * self._stt.sample_rate) * 2
        if excess > 0:
            del self._turn_audio[:excess]
        if self._vad.speaking:
            return  # the caller goes on: no verdict yet
        turn_text = " ".join(self._turn_texts)
        spec = self._speculative
        if (
            self.options.preemptive_generation
            and self._reply is None
            and (spec is None or spec.user_text != turn_text)
        ):
            self._drop_speculative()
            self._speculative = Reply(user_text=turn_text)
            self._begin(self._speculative)
        self._early_spec = None  # a speculative reply on the early result is now the turn's
        self._cancel(self._verdict)
        self._verdict = self._spawn(self._decide_turn(result, turn_text))

    async def _decide_turn(self, result: Transcript, turn_text: str) -> None:
        if self._stt.native_turn_detection and result.end_of_turn is not None:
            self._endpointer.decide(result.end_of_turn)
            return
        detector = self._turn
        if detector is None:
            self._endpointer.decide(None)
            return
        # The model (~45 ms of a core) runs only when its answer can move the end of the turn.
        now = self._clock.now()
        forced = self._endpointer.forced_deadline()
        if forced is not None and now >= forced:
            # A slow transcript: the silence outlasted max_endpointing_delay, the turn ends now.
            self._emit(TurnPrediction(now, "skipped_late"))
            return
        # A recognised question is a finished turn whatever the audio model thinks: Smart Turn
        # leans on prosody, and flat (synthetic or band-limited) questions score low.
        if self.options.question_ends_turn and turn_text.rstrip().endswith("?"):
            self._emit(TurnPrediction(now, "skipped_question"))
            self._endpointer.decide(True)
            return
        delays = self._endpointer.options
        if delays.min_delay >= delays.max_delay:
            # "done" and "not done" give one deadline: the verdict cannot move the commit.
            self._emit(TurnPrediction(now, "skipped_delays"))
            self._endpointer.decide(None)
            return
        self._emit(TurnPrediction(now, "run"))
        pcm = resample(bytes(self._turn_audio), self._stt.sample_rate, detector.sample_rate)
        asked = self._clock.now()
        try:
            probability = await detector.end_of_turn_probability(
                pcm, transcript=turn_text, language=self.profile.language
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._provider_failed("turn", exc)
            self._endpointer.decide(None)
            return
        self._turn_model_ms = (self._clock.now() - asked) * 1000.0
        self._endpointer.decide(probability >= detector.threshold, probability=probability)

    def _commit_turn(self, now: float) -> None:
        ep = self._endpointer
        speech_end = ep.silence_since
        probability = ep.probability
        ep.speech_started()  # clears the silence: nothing pending any more
        self._cancel(self._verdict)
        text = " ".join(self._turn_texts)
        self._turn_texts.clear()
        self._turn_audio.clear()
        if not text:
            self._set_state(AgentState.LISTENING)
            return
        spec = self._speculative
        self._speculative = None
        reuse = spec is not None and spec.user_text == text
        self._emit(TurnCommitted(now, text, probability, reuse))
        if spec is not None and reuse:
            reply = spec
            reply.preemptive = True
        else:
            if spec is not None:
                self._cancel(spec.task)
            reply = Reply(user_text=text)
            self._begin(reply)
        self.history.append(ChatMessage("user", text))
        reply.speech_end = speech_end
        reply.end_of_turn = now
        reply.transcript_at = self._transcript_at
        reply.turn_model_ms = self._turn_model_ms if probability is not None else None
        self._commit(reply)

    # ------------------------------------------------------------------------------ replies

    def _begin(self, reply: Reply) -> None:
        reply.task = self._spawn(self._run_reply(reply))
        if reply.committed:
            self._commit(reply)

    def _commit(self, reply: Reply) -> None:
        assert self._playout is not None
        self._recent.clear()
        old = self._reply
        if old is not None and old is not reply:
            self._cancel(old.task)
        reply.committed = True
        self._reply = reply
        now = self._clock.now()
        for piece in reply.unannounced:
            self._emit(AgentText(now, piece))
        reply.unannounced.clear()
        self._playout.clear()
        self._playout.begin_segment()
        for pcm in reply.pending:
            self._playout.push(pcm)
        reply.pending.clear()
        self._set_state(AgentState.THINKING)

    async def _run_reply(self, reply: Reply) -> None:
        pieces: asyncio.Queue[str | None] = asyncio.Queue(maxsize=32)
        producer = self._spawn(self._produce_text(reply, pieces))
        to_call = Resampler(self._tts.sample_rate, self._rate)
        try:
            while (piece := await pieces.get()) is not None:
                reply.pieces.append(piece)
                if reply.committed:
                    self._emit(AgentText(self._clock.now(), piece))
                else:
                    reply.unannounced.append(piece)
                try:
                    async for chunk in self._tts.synthesize(piece):
                        if reply.tts_first_audio is None:
                            reply.tts_first_audio = self._clock.now()
                        self._deliver(reply, to_call.process(chunk))
                        await self._backpressure(reply)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._provider_failed("tts", exc)
                    break
                reply.timeline.append((piece, reply.audio_bytes))
            if tail := to_call.process(b"", last=True):
                self._deliver(reply, tail)
        finally:
            producer.cancel()
            reply.synth_done = True

    async def _produce_text(self, reply: Reply, pieces: asyncio.Queue[str | None]) -> None:
        messages = [ChatMessage("system", self.profile.instructions), *self.history]
        if not reply.committed and reply.user_text is not None:
            messages.append(ChatMessage("user", reply.user_text))
        await produce_pieces(
            reply,
            self._llm,
            messages,
            pieces,
            now=self._clock.now,
            on_error=lambda exc: self._provider_failed("llm", exc),
        )

    async def _backpressure(self, reply: Reply) -> None:
        """Wait while the reply has more than ``_MAX_UNPLAYED_SECONDS`` of audio not yet played
        (queued, held by a pause, or speculative): TTS runs far faster than real time, and
        nothing here may grow without bound."""
        limit = int(_MAX_UNPLAYED_SECONDS * self._rate) * 2
        while reply.audio_bytes - reply.played_bytes > limit:
            await self._clock.sleep_until(self._clock.now() + 0.1)

    def _deliver(self, reply: Reply, pcm: bytes) -> None:
        if not pcm:
            return
        reply.audio_bytes += len(pcm)
        if not reply.committed:
            reply.pending.append(pcm)
        elif self._paused and reply is self._reply:
            self._held.append(pcm)
        elif reply is self._reply and self._playout is not None:
            self._playout.push(pcm)

    def _finish_reply(self, reply: Reply) -> None:
        self._reply = None
        self._recent.clear()
        text = " ".join(reply.pieces)
        if text:
            self.history.append(ChatMessage("assistant", text))
        self._set_state(AgentState.USER_SPEAKING if self._vad.speaking else AgentState.LISTENING)
        if reply.end_call:
            self._request_hangup("agent ended the call")

    def _drop_speculative(self) -> None:
        spec = self._speculative
        if spec is not None:
            self._cancel(spec.task)
            self._speculative = None

    def _agent_active(self) -> bool:
        return self._reply is not None and self._reply.committed

    # ------------------------------------------------------------------------ interruptions

    def _pause(self, now: float) -> None:
        assert self._playout is not None
        self._paused = True
        self._false_deadline = None
        self._segment_during_agent = False  # this segment is the caller's now
        self._held = self._playout.take()
        self._emit(Interruption(now, "paused"))
        self._set_state(AgentState.USER_SPEAKING)

    def _false_interruption(self, now: float) -> None:
        assert self._playout is not None
        reply = self._reply
        self._paused = False
        self._false_deadline = None
        self._turn_texts.clear()
        self._turn_audio.clear()
        self._endpointer.speech_started()
        held, self._held = self._held, []
        if reply is None:
            return
        if self.options.interruptions.resume_false:
            self._playout.begin_segment()
            for pcm in held:
                self._playout.push(pcm)
            self._emit(Interruption(now, "resumed"))
            self._set_state(AgentState.SPEAKING if held else AgentState.THINKING)
        else:
            self._stop_reply(reply, now, kind="false")

    def _real_interruption(self, now: float) -> None:
        self._paused = False
        self._false_deadline = None
        self._held = []
        if self._reply is not None:
            self._stop_reply(self._reply, now, kind="interrupted")

    def _stop_reply(self, reply: Reply, now: float, *, kind: str) -> None:
        self._cancel(reply.task)
        self._reply = None
        heard = heard_text(reply)
        if heard:
            self.history.append(ChatMessage("assistant", heard))
        self._emit(Interruption(now, kind, heard))
        self._set_state(AgentState.USER_SPEAKING if self._vad.speaking else AgentState.LISTENING)

    def _run_interim(self, now: float) -> None:
        if self._interim is not None and not self._interim.done():
            return
        if getattr(self._stt, "busy", False):
            return  # interim results are a luxury: never queue behind other decodes
        if now - self._interim_at < self.options.interim_interval:
            return
        self._interim_at = now
        pcm = resample(self._vad.current_audio(), self._vad.sample_rate, self._stt.sample_rate)

        async def run() -> None:
            try:
                result = await self._stt.transcribe(
                    pcm, final=False, language=self.profile.language
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._provider_failed("stt", exc)
                return
            self._interim_words = result.words
            if result.text:
                self._emit(TranscriptReceived(self._clock.now(), result.text, False))

        self._interim = self._spawn(run())

    # ------------------------------------------------------------------------------ helpers

    @property
    def _call_id(self) -> str:
        return self._info.call_id if self._info is not None else "-"

    def _clock_time(self, audio_time: float) -> float:
        """Clock time at which the VAD's ``audio_time`` was heard."""
        return self._clock.now() - max(0.0, self._audio_pushed - audio_time)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("voice_session_task_failed", call_id=self._call_id, error=repr(exc))

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done():
            task.cancel()

    def _set_state(self, new: AgentState) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self._emit(StateChanged(self._clock.now(), old, new))

    def _emit(self, event: SessionEvent) -> None:
        self.events.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("voice_session_listener_failed", call_id=self._call_id)

    def _emit_latency(self, reply: Reply) -> None:
        if reply.user_text is None:
            return
        self._emit(
            TurnLatency(
                self._clock.now(),
                reply.speech_end,
                reply.end_of_turn,
                reply.llm_first_token,
                reply.tts_first_audio,
                reply.first_frame,
                reply.preemptive,
                reply.transcript_at,
                reply.turn_model_ms,
            )
        )

    def _provider_failed(self, stage: str, exc: BaseException) -> None:
        log.warning("provider_failed", call_id=self._call_id, stage=stage, error=repr(exc))
        self._emit(ProviderFailed(self._clock.now(), stage, repr(exc)))

    def _request_hangup(self, reason: str) -> None:
        if self.hangup_requested is None:
            self.hangup_requested = reason
            self._emit(CallEndRequested(self._clock.now(), reason))
