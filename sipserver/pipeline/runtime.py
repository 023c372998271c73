"""Process-wide voice pipeline: models loaded once, one VAD batcher per rate, a session per call.

:class:`VoiceRuntime` turns the configuration into running parts. For each ``custom`` model
used by an agent with ``realtime.enabled`` it builds the STT, TTS and turn detector once (every
session of that model shares them; the local models serialise their own decodes on a thread),
and for each agent a language model (the offline knowledge-base answerer reads that agent's
``knowledge_base``) and, when the STT takes context (``stt.vocabulary: auto``), the agent's
vocabulary for it (its name and the distinctive terms of its knowledge base). VAD runs on one
:class:`~sipserver.pipeline.vad.VadBatcher` per sample rate, whose task infers every active
stream in one batch per 32 ms window.

Transports call :meth:`VoiceRuntime.new_session` when a call starts; the returned
:class:`~sipserver.pipeline.voice.VoiceSession` releases its VAD stream when the call ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sipserver.config import (
    Agent,
    Config,
    CustomModel,
    EndpointingSettings,
    InterruptionSettings,
    LiveKitInferenceModel,
    TurnDetectionSettings,
    VadSettings,
    config_dir,
)
from sipserver.observability import Metrics, get_logger
from sipserver.pipeline.clock import Clock, MonotonicClock
from sipserver.pipeline.endpointing import EndpointingOptions
from sipserver.pipeline.events import (
    Interruption,
    ProviderFailed,
    SessionEvent,
    StateChanged,
    TranscriptReceived,
    TurnCommitted,
    TurnLatency,
    TurnPrediction,
)
from sipserver.pipeline.feedback import FeedbackMixer
from sipserver.pipeline.interruptions import InterruptionOptions
from sipserver.pipeline.knowledge import KnowledgeBase
from sipserver.pipeline.phrases import PhraseCache
from sipserver.pipeline.providers.base import (
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    TurnDetector,
)
from sipserver.pipeline.providers.registry import make_llm, make_stt, make_tts
from sipserver.pipeline.providers.retrieval import KnowledgeContextLlm
from sipserver.pipeline.reply import APOLOGY
from sipserver.pipeline.session import CallInfo
from sipserver.pipeline.turn import turn_detector_for
from sipserver.pipeline.vad import SileroModel, VadBatcher, VadOptions
from sipserver.pipeline.vocabulary import agent_vocabulary
from sipserver.pipeline.voice import AgentProfile, VoiceOptions, VoiceSession
from sipserver.tasks import cancel_and_wait

__all__ = ["ListenParts", "PreparedVoice", "VoiceRuntime", "voice_options"]

log = get_logger(__name__)


def voice_options(model: CustomModel | LiveKitInferenceModel) -> VoiceOptions:
    """The session options of a model's settings (a ``livekit_inference`` model's missing
    groups take the defaults of ``custom``)."""
    i = model.interruptions or InterruptionSettings()
    e = model.endpointing or EndpointingSettings()
    preemptive = model.preemptive_generation if isinstance(model, CustomModel) else True
    return VoiceOptions(
        interruptions=InterruptionOptions(
            allow=i.allow_interruptions,
            min_duration=i.min_interruption_duration,
            min_words=i.min_interruption_words,
            false_timeout=i.false_interruption_timeout,
            resume_false=i.resume_false_interruption,
        ),
        endpointing=EndpointingOptions(e.min_endpointing_delay, e.max_endpointing_delay),
        preemptive_generation=preemptive,
    )


@dataclass(slots=True)
class _ModelParts:
    """The shared stages of one configured model."""

    spec: CustomModel | LiveKitInferenceModel
    stt: SpeechToText
    tts: TextToSpeech
    turn: TurnDetector | None
    vad: VadOptions
    options: VoiceOptions
    llm: LanguageModel | None = None
    """The model's own LLM when it is shared by every agent (livekit_inference); None: one per
    agent (custom: the local answerer reads each agent's knowledge base)."""


def _parts(
    name: str, spec: CustomModel | LiveKitInferenceModel, credentials: dict[str, dict[str, str]]
) -> _ModelParts:
    where = f"models.{name}"
    llm: LanguageModel | None = None
    if isinstance(spec, CustomModel):
        stt = make_stt(
            spec.stt, credentials=credentials, credential=spec.credential, where=f"{where}.stt"
        )
        tts = make_tts(
            spec.tts, credentials=credentials, credential=spec.credential, where=f"{where}.tts"
        )
    else:
        from sipserver.pipeline.providers.inference import livekit_stages

        stt, llm, tts = livekit_stages(spec, credentials, where=where)
    turn_settings = spec.turn_detection or TurnDetectionSettings()
    return _ModelParts(
        spec=spec,
        stt=stt,
        tts=tts,
        turn=turn_detector_for(turn_settings.model),
        vad=VadOptions.from_config(spec.vad or VadSettings()),
        options=voice_options(spec),
        llm=llm,
    )


def _knowledge_for(index: int, agent: Agent, base_dir: Path) -> KnowledgeBase:
    kb = KnowledgeBase.from_globs(agent.knowledge_base, base_dir)
    for j, pattern in enumerate(agent.knowledge_base):
        if pattern not in kb.unmatched:
            continue
        log.warning(
            "knowledge_base_pattern_matched_nothing",
            key=f"agents[{index}].knowledge_base[{j}]",
            agent=agent.slug,
            pattern=pattern,
            looked_for=str(base_dir / Path(pattern).expanduser()),
        )
    for path, reason in kb.unreadable:
        log.warning(
            "knowledge_base_file_skipped",
            key=f"agents[{index}].knowledge_base",
            agent=agent.slug,
            file=path,
            reason=reason,
        )
    if agent.knowledge_base and not kb.passages:
        log.warning(
            "knowledge_base_empty",
            key=f"agents[{index}].knowledge_base",
            agent=agent.slug,
            reason="no file matched or the files hold no text: the agent answers from nothing",
        )
    log.info("knowledge_base_loaded", agent=agent.slug, passages=len(kb.passages))
    return kb


def _llm_for(name: str, parts: _ModelParts, config: Config, kb: KnowledgeBase) -> LanguageModel:
    if parts.llm is not None:
        return KnowledgeContextLlm(parts.llm, kb) if len(kb) else parts.llm
    spec = parts.spec
    assert isinstance(spec, CustomModel)
    return make_llm(
        spec.llm,
        credentials=config.credentials,
        knowledge=kb,
        credential=spec.credential,
        where=f"models.{name}.llm",
    )


class _ListenEntry(NamedTuple):
    """What AI Listens uses of one agent, kept by :class:`PreparedVoice`."""

    model: str
    """The name of the agent's model (its shared STT and VAD)."""
    knowledge: KnowledgeBase
    writer: LanguageModel | None
    """The language model that writes suggestions (None: ``llm: local``, quote passages)."""
    vocabulary: str | None
    """The STT prompt of every decode (``stt.vocabulary: auto``); None: none."""


@dataclass(frozen=True, slots=True)
class PreparedVoice:
    """The voice parts of a configuration, built but not in use yet (:meth:`VoiceRuntime.prepare`,
    then :meth:`VoiceRuntime.apply`)."""

    config: Config
    """The configuration they were built for."""
    models: dict[str, _ModelParts]
    """Shared stages by model name (unchanged models are the running objects)."""
    llms: dict[str, LanguageModel]
    """Language model by agent slug (agents with ``realtime.enabled``)."""
    listens: dict[str, _ListenEntry]
    """What AI Listens uses of each agent (by slug) that enables it."""
    phrases: dict[str, PhraseCache]
    """Each model's TTS with its agents' greetings (and the apology) kept once synthesised."""
    vocabularies: dict[str, str] = field(default_factory=dict)
    """The STT vocabulary by agent slug (agents whose model's STT takes one)."""


@dataclass(frozen=True, slots=True)
class ListenParts:
    """What AI Listens needs of an agent's model: the shared STT and VAD, the knowledge base
    and the language model for suggestions (None: ``llm: local``, suggest passages)."""

    stt: SpeechToText
    vad: VadBatcher
    vad_options: VadOptions
    knowledge: KnowledgeBase
    llm: LanguageModel | None
    vocabulary: str | None = None
    """The agent's words, the prompt of every decode (``stt.vocabulary: auto``); None: none."""


class VoiceRuntime:
    """Models, VAD batchers and session construction for one server process.

    Args:
        config: the validated configuration.
        config_path: the file it came from (knowledge-base globs are relative to its
            directory); None: the embedded default.
        clock: the pipeline clock (the event loop's by default).
        metrics: where per-turn latencies and interruptions are counted, if anywhere.
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock or MonotonicClock()
        self._metrics = metrics
        self._batchers: dict[int, VadBatcher] = {}
        self._batcher_tasks: dict[int, asyncio.Task[None]] = {}
        self._models: dict[str, _ModelParts] = {}
        self._llms: dict[str, LanguageModel] = {}
        self._listens: dict[str, _ListenEntry] = {}
        self._phrases: dict[str, PhraseCache] = {}
        self._vocabularies: dict[str, str] = {}
        self._config = config
        self._base_dir = config_dir(config_path)
        self.apply(self.prepare(config))

    # ---------------------------------------------------------------------------- lifecycle

    def prepare(self, config: Config) -> PreparedVoice:
        """Build the parts of ``config`` without putting them in use: models whose settings
        and credentials did not change are kept, the others built (their weights are not loaded
        here), and every knowledge base is re-read and indexed.

        Blocking (files are read): the server runs it on a thread while the event loop goes on
        serving. That is safe because it only reads the running parts, which change in
        :meth:`apply` alone (on the loop, after this returns), and the providers' constructors
        check files and options only; model weights load later through each provider's
        :class:`~sipserver.pipeline.model_cache.ModelCache`, which holds a lock.

        Raises:
            ProviderError: a model cannot be built (bad options, missing files or credentials).
        """
        models: dict[str, _ModelParts] = {}
        llms: dict[str, LanguageModel] = {}
        listens: dict[str, _ListenEntry] = {}
        vocabularies: dict[str, str] = {}
        for index, agent in enumerate(config.agents):
            if not (agent.realtime.enabled or agent.listens.enabled) or not agent.realtime.model:
                continue
            name = agent.realtime.model
            spec = config.models.get(name)
            if spec is None:
                continue
            if name not in models:
                old = self._models.get(name)
                if old is not None and old.spec == spec and self._same_credentials(config, spec):
                    models[name] = old
                else:
                    models[name] = _parts(name, spec, config.credentials)
            parts = models[name]
            kb = _knowledge_for(index, agent, self._base_dir)
            llm = _llm_for(name, parts, config, kb) if agent.realtime.enabled else None
            if llm is not None:
                llms[agent.slug] = llm
                if getattr(parts.stt, "vocabulary", False) is True:
                    vocabularies[agent.slug] = agent_vocabulary(agent.name, kb)
                    log.info(
                        "stt_vocabulary",
                        agent=agent.slug,
                        chars=len(vocabularies[agent.slug]),
                        vocabulary=vocabularies[agent.slug],
                    )
            if agent.listens.enabled:
                # The offline answerer is no writer of suggestions: listens quotes the passage.
                local = isinstance(spec, CustomModel) and spec.llm.provider == "local"
                writer = None if local else llm or _llm_for(name, parts, config, kb)
                # The recogniser gets the agent's words on listened calls too (stt.vocabulary).
                vocabulary = vocabularies.get(agent.slug)
                if vocabulary is None and getattr(parts.stt, "vocabulary", False) is True:
                    vocabulary = agent_vocabulary(agent.name, kb)
                listens[agent.slug] = _ListenEntry(name, kb, writer, vocabulary)
        phrases: dict[str, PhraseCache] = {}
        for name, parts in models.items():
            fixed = [
                a.greeting or ""
                for a in config.agents
                if a.realtime.enabled and a.realtime.model == name
            ]
            fixed.append(APOLOGY)
            old_cache = self._phrases.get(name)
            if (
                old_cache is not None
                and old_cache.tts is parts.tts
                and old_cache.phrases == frozenset(p for p in fixed if p.strip())
            ):
                phrases[name] = old_cache
            else:
                phrases[name] = PhraseCache(parts.tts, fixed)
        return PreparedVoice(config, models, llms, listens, phrases, vocabularies)

    def apply(self, prepared: PreparedVoice) -> None:
        """Put prepared parts in use for new calls (on the event loop; calls in progress keep
        the parts they started with)."""
        self._models = prepared.models
        self._llms = prepared.llms
        self._listens = prepared.listens
        self._phrases = prepared.phrases
        self._vocabularies = prepared.vocabularies
        self._config = prepared.config

    def _same_credentials(self, config: Config, spec: CustomModel | LiveKitInferenceModel) -> bool:
        names = {spec.credential}
        if isinstance(spec, CustomModel):
            names |= {s.options.get("credential") for s in (spec.stt, spec.llm, spec.tts)}
        return all(
            self._config.credentials.get(n) == config.credentials.get(n)
            for n in names
            if isinstance(n, str)
        )

    async def start(self) -> None:
        """Load every model (in threads) and start the VAD batchers."""
        started = time.perf_counter()
        for name, parts in self._models.items():
            for stage, part in (("stt", parts.stt), ("tts", parts.tts), ("turn", parts.turn)):
                warm_up = getattr(part, "warm_up", None)
                if warm_up is not None:
                    seconds = await warm_up()
                    log.info("model_loaded", model=name, stage=stage, seconds=round(seconds, 3))
            self._batcher(parts.vad.sample_rate)
        log.info("voice_runtime_ready", seconds=round(time.perf_counter() - started, 3))

    async def close(self) -> None:
        """Stop the VAD batchers and close the providers' connections."""
        for task in self._batcher_tasks.values():
            task.cancel()
        for task in self._batcher_tasks.values():
            await cancel_and_wait(task)
        self._batcher_tasks.clear()
        for phrases in self._phrases.values():
            phrases.close()
        stages: list[object] = list(self._llms.values())
        for parts in self._models.values():
            stages += [parts.stt, parts.tts, parts.turn]
        for stage in stages:
            close = getattr(stage, "close", None)
            if close is not None and asyncio.iscoroutinefunction(close):
                try:
                    await close()
                except Exception as exc:
                    log.warning("provider_close_failed", stage=repr(stage), error=repr(exc))

    def _batcher(self, rate: int) -> VadBatcher:
        batcher = self._batchers.get(rate)
        if batcher is None:
            # Every batch is inferred on a thread (onnxruntime releases the GIL): inline, the
            # model took ~20% of the event loop's time at 6 calls, and SIP and HTTP waited.
            batcher = self._batchers[rate] = VadBatcher(SileroModel(rate), offload_min_batch=1)
        task = self._batcher_tasks.get(rate)
        if task is None or task.done():
            if task is not None and not task.cancelled() and task.exception() is not None:
                log.error("vad_batcher_failed", rate=rate, error=repr(task.exception()))
            self._batcher_tasks[rate] = asyncio.get_running_loop().create_task(
                batcher.run(self._clock), name=f"vad-{rate}"
            )
        return batcher

    # ------------------------------------------------------------------------------ sessions

    def serves(self, agent: Agent) -> bool:
        """True when calls to ``agent`` get a voice session from this runtime."""
        return agent.slug in self._llms

    def listen_parts(self, agent: Agent) -> ListenParts | None:
        """The parts AI Listens uses for ``agent`` (None: listens is not enabled for it).

        The STT and VAD are the ones the agent's voice sessions share: no model is loaded
        twice. Call on the event loop (the VAD batcher task starts on first use).
        """
        entry = self._listens.get(agent.slug)
        if entry is None:
            return None
        parts = self._models[entry.model]
        return ListenParts(
            stt=parts.stt,
            vad=self._batcher(parts.vad.sample_rate),
            vad_options=parts.vad,
            knowledge=entry.knowledge,
            llm=entry.writer,
            vocabulary=entry.vocabulary,
        )

    def new_session(
        self,
        agent: Agent,
        info: CallInfo,
        *,
        on_event: Callable[[SessionEvent], None] | None = None,
    ) -> VoiceSession | None:
        """Build the session of a call to ``agent`` (None: the agent has no voice model here).

        Raises:
            SoundError: the model's feedback sound cannot be decoded.
        """
        llm = self._llms.get(agent.slug)
        model_name = agent.realtime.model
        if llm is None or model_name is None:
            return None
        parts = self._models[model_name]
        batcher = self._batcher(parts.vad.sample_rate)
        stream = batcher.open_stream(parts.vad)
        feedback = None
        spec = parts.spec
        if isinstance(spec, CustomModel) and spec.audio_feedback.enabled:
            feedback = FeedbackMixer.from_settings(spec.audio_feedback, info.sample_rate)
        listener = self._listener(info, on_event)

        if self._metrics is not None:
            self._metrics.voice_sessions_active.inc()

        def closed() -> None:
            batcher.close_stream(stream)
            if self._metrics is not None:
                self._metrics.voice_sessions_active.dec()

        return VoiceSession(
            AgentProfile(
                instructions=agent.instructions,
                greeting=agent.greeting,
                end_call_digit=agent.realtime.end_call_digit,
                vocabulary=self._vocabularies.get(agent.slug),
            ),
            parts.options,
            stt=parts.stt,
            llm=llm,
            tts=self._phrases.get(model_name) or parts.tts,
            vad=stream,
            clock=self._clock,
            turn_detector=parts.turn,
            feedback=feedback,
            on_event=listener,
            on_close=closed,
        )

    def _listener(
        self, info: CallInfo, forward: Callable[[SessionEvent], None] | None
    ) -> Callable[[SessionEvent], None]:
        metrics = self._metrics
        call_id = info.call_id

        def on_event(event: SessionEvent) -> None:
            if isinstance(event, TranscriptReceived) and event.final:
                log.info("caller_said", call_id=call_id, text=event.text)
            elif isinstance(event, TurnCommitted):
                log.info("turn_committed", call_id=call_id, probability=event.probability)
            elif isinstance(event, StateChanged):
                log.debug("agent_state", call_id=call_id, state=event.new.value)
            elif isinstance(event, Interruption):
                log.info("interruption", call_id=call_id, kind=event.kind)
                if metrics is not None:
                    metrics.voice_interruptions.labels(event.kind).inc()
            elif isinstance(event, ProviderFailed):
                if metrics is not None:
                    metrics.voice_provider_errors.labels(event.stage).inc()
            elif isinstance(event, TurnPrediction):
                if metrics is not None:
                    metrics.voice_turn_predictions.labels(event.outcome).inc()
            elif isinstance(event, TurnLatency):
                _record_latency(metrics, call_id, event)
            if forward is not None:
                forward(event)

        return on_event


def _record_latency(metrics: Metrics | None, call_id: str, event: TurnLatency) -> None:
    start = event.speech_end
    stages = {
        "end_of_turn": event.end_of_turn,
        "llm_first_token": event.llm_first_token,
        "tts_first_audio": event.tts_first_audio,
        "first_frame": event.first_frame,
    }
    figures = {
        stage: round(at - start, 3)
        for stage, at in stages.items()
        if at is not None and start is not None
    }
    log.info("turn_latency", call_id=call_id, preemptive=event.preemptive, **figures)
    if metrics is not None:
        for stage, seconds in figures.items():
            metrics.voice_turn_latency.labels(stage).observe(max(0.0, seconds))
