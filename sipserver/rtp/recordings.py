"""The recorders of the calls a process hosts: which calls are recorded, where the files go, and
how the record learns about its file.

:class:`CallRecorders` is the recorder factory the session hosts call for each new call with
call records on (the call worker for its SIP and relayed websocket calls, main for the calls of
pjsua2 workers): it reads the agent's ``recording`` block from the configuration in force and,
when it is enabled, starts a :class:`~sipserver.media.recording.CallRecording` at
``<data_dir>/recordings/YYYY-MM-DD/<id>.ogg|.wav`` on the process's one
:class:`~sipserver.media.recording.RecordingEncoder`.

When the call ends the recorder sends the call's ``record_recording`` EVENT payload (the
:class:`~sipserver.pipeline.call_record.RecordingInfo` JSON with ``"type": "record_recording"``)
through the same channel as its record events, so it reaches main before the call's
CALL_ENDED. Its ``bytes`` is 0: the encoder finishes the file a few milliseconds after the call
(the calls API reports the file's size); ``duration`` is the call's media time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sipserver.config import Config
from sipserver.media.recording import CallRecording, RecordingEncoder, recording_path
from sipserver.observability import get_logger
from sipserver.pipeline.call_record import RecordingInfo, new_record_id
from sipserver.pipeline.record_tap import RECORDING_EVENT, Recorder
from sipserver.pipeline.session import CallInfo

__all__ = ["RECORDING_EVENT", "CallRecorders", "RecorderFactory", "SendPayload"]

log = get_logger(__name__)

SendPayload = Callable[[Mapping[str, Any]], None]
"""Sends an EVENT payload of one call to main (or hands it to main's record hook in main)."""

RecorderFactory = Callable[[CallInfo, SendPayload], Recorder | None]
"""Builds the recorder of a new call (None: the call is not recorded)."""


class _SentRecording:
    """A :class:`CallRecording` that tells main about its file when the call ends."""

    __slots__ = ("_info", "_recording", "_send")

    def __init__(self, recording: CallRecording, info: RecordingInfo, send: SendPayload) -> None:
        self._recording = recording
        self._info = info
        self._send = send

    def add(self, caller_frames: Sequence[bytes], agent_frame: bytes) -> None:
        self._recording.add(caller_frames, agent_frame)

    def close(self) -> None:
        recording = self._recording
        recording.close()
        if recording.failed:
            return  # logged and counted by the encoder; the record keeps no file
        info = self._info
        payload = {
            "type": RECORDING_EVENT,
            **RecordingInfo(
                info.path, info.format, info.channels, info.sample_rate, recording.duration, 0
            ).to_json(),
        }
        self._send(payload)


class CallRecorders:
    """The recorder factory of one process (module doc).

    Args:
        config: the configuration in force (None: not configured yet: nothing is recorded).
        encoder: the process's encoder (started here on first use; :meth:`stop` finishes it).
        clock: wall-clock seconds (the recordings' dated directories).
    """

    def __init__(
        self,
        config: Callable[[], Config | None],
        encoder: RecordingEncoder | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._encoder = encoder
        self._started = False
        self._clock = clock

    def __call__(self, info: CallInfo, send: SendPayload) -> Recorder | None:
        config = self._config()
        agent = config.agent_by_slug(info.agent) if config is not None and info.agent else None
        if config is None or agent is None or not agent.recording.enabled:
            return None
        settings = agent.recording
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = RecordingEncoder()
        if not self._started:
            encoder.start()
            self._started = True
        path = recording_path(
            config.server.data_dir, new_record_id(), settings.format, self._clock()
        )
        recording = CallRecording(
            path,
            sample_rate=info.sample_rate,
            channels=settings.channels,
            format=settings.format,
            encoder=encoder,
        )
        log.info("call_recording_started", call_id=info.call_id, path=str(path))
        info_now = RecordingInfo(
            str(path), settings.format, settings.channels, info.sample_rate, 0.0, 0
        )
        return _SentRecording(recording, info_now, send)

    def stop(self) -> None:
        """Finish every open recording's file (blocking: at the process's stop)."""
        if self._encoder is not None and self._started:
            self._encoder.stop()
            self._started = False
