"""Which session a call gets, shared by the main process and the call workers.

:class:`CallSessions` turns a :class:`~sipserver.pipeline.session.CallInfo` into the session of
the call: a voice session (the agent's realtime model, from a
:class:`~sipserver.pipeline.runtime.VoiceRuntime`), the echo test line (an agent without a
realtime model), or the receive-only AI Listens session of a SIP call to a listens number. The
main process builds them for websocket calls and for the calls of pjsua2 workers; a call worker
(:mod:`sipserver.rtp.call_worker`) builds them for the SIP calls it answers.

AI Listens sessions publish to the dashboard hub, which lives in the main process: a call
worker does not build them (``listens`` is None there) but relays such a call's audio to main
over the frame link (:meth:`CallSessions.is_listens`), where the session host runs the session
as it does for pjsua2 workers.

The configuration reaches a call worker as a frame-link CONFIG record:
:func:`configuration_record` and :func:`config_from_record` turn a :class:`Config` into its
JSON dump and back through the same validation (secrets included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from sipserver.config import (
    Agent,
    Config,
    ConfigError,
    called_number,
    config_dir,
    is_listens_number,
)
from sipserver.observability import get_logger
from sipserver.pipeline.echo import EchoSession, tone_greeting
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.runtime import VoiceRuntime
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.rtp.framelink import Configuration

__all__ = [
    "CallSessions",
    "ListensSessionFactory",
    "config_from_record",
    "configuration_record",
]

log = get_logger(__name__)

ListensSessionFactory = Callable[[Agent], CallSession | None]
"""Builds the receive-only session of a SIP call to one of an agent's listens numbers."""


class CallSessions:
    """Builds the session of each new call from the configuration in use.

    Args:
        config: the configuration in use (read at each call: a reload swaps it).
        voice: the process's voice runtime (models, VAD batcher).
        listens: builds AI Listens SIP sessions (main process); None in a call worker, which
            relays those calls to main (see :meth:`is_listens`).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        voice: VoiceRuntime,
        *,
        listens: ListensSessionFactory | None = None,
    ) -> None:
        self._config = config
        self.voice = voice
        self._listens = listens

    def agent_of(self, info: CallInfo) -> Agent | None:
        """The agent a call is for (None: no agent of that slug)."""
        return self._config().agent_by_slug(info.agent) if info.agent else None

    def is_listens(self, info: CallInfo) -> bool:
        """True for a SIP call to a listens number (a PBX forks the call there)."""
        agent = self.agent_of(info)
        return (
            agent is not None
            and info.transport == "sip"
            and is_listens_number(self._config(), agent, called_number(info.called))
        )

    def new_session(
        self, info: CallInfo, on_event: Callable[[SessionEvent], None] | None = None
    ) -> CallSession | None:
        """The session of a new call (SIP or websocket); None when nothing here takes it.

        Args:
            info: the call.
            on_event: receives the session's events (voice sessions only).
        """
        agent = self.agent_of(info)
        if agent is None:
            return None
        if self.is_listens(info):
            # A PBX forks a call to a listens number: answered silently and transcribed.
            return self._listens(agent) if self._listens is not None else None
        if self.voice.serves(agent):
            try:
                return self.voice.new_session(agent, info, on_event=on_event)
            except Exception:
                log.exception("voice_session_failed", call_id=info.call_id, agent=agent.slug)
                return None
        if agent.realtime.enabled:
            log.error(
                "no_voice_model_for_agent",
                agent=agent.slug,
                reason="the agent's model is not loaded in this process",
            )
            return None
        # An agent without a realtime model answers as an echo test line: a chime, then the
        # caller's own audio 200 ms late; DTMF # hangs up.
        return EchoSession(
            tone_greeting(info.sample_rate), sample_rate=info.sample_rate, hangup_digit="#"
        )


def configuration_record(
    config: Config, config_path: str | os.PathLike[str] | None, sequence: int
) -> Configuration:
    """The CONFIG record that carries ``config`` to a call worker.

    Args:
        config: the configuration in use.
        config_path: the file it came from (None: the embedded default).
        sequence: the record's sequence number on its link.
    """
    path = None if config_path is None else str(Path(config_path).resolve())
    return Configuration(sequence, config.model_dump(mode="json"), path)


def config_from_record(record: Configuration) -> Config:
    """Validate a CONFIG record's configuration again (relative paths from its file's
    directory), as the main process did.

    Raises:
        ConfigError: it does not validate (a version mismatch between main and worker); every
            problem is listed with its key path.
    """
    context = {"base_dir": config_dir(record.config_path)}
    try:
        return Config.model_validate(dict(record.config), context=context)
    except ValidationError as exc:
        errors = [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        ]
        raise ConfigError(errors, source="CONFIG record") from None
