"""AI Listens calls hosted by a call worker: transcribed here, published to main's hub.

With ``server.media.engine: native`` the main process runs no model: a monitored call's
transcription and suggestions (:class:`~sipserver.pipeline.listening.ListenedCall`, on the
worker's STT, VAD batcher and knowledge bases) run in the call worker, and each item they
publish goes to the main process in an EVENT record (JSON of
:mod:`sipserver.pipeline.listens_events`), where :class:`sipserver.listens.remote.RemoteListens`
publishes it on the dashboard's hub. Two kinds of monitored calls:

* a SIP call from a PBX to a listens number, answered by this worker's engine: its session is a
  :class:`ListenSession` the media clock drives like any hosted call (silence back);
* a Twilio fork (``<Start><Stream track=…>``), terminated by main: main relays each transcribed
  track's frames (:class:`ListensForks`, docs/framelink.md "Relayed AI Listens forks").

A monitored call starts with ``listens_started`` and always ends with ``listens_ended`` (after
the last utterance is transcribed); main ends it on its own only when the worker is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sipserver.config import Agent
from sipserver.observability import get_logger
from sipserver.pipeline.listening import (
    ListenedCall,
    PublishedKind,
    SipListenSession,
    speakers_for,
)
from sipserver.pipeline.listens_events import listens_item_to_json
from sipserver.pipeline.runtime import ListenParts
from sipserver.pipeline.session import CallInfo
from sipserver.rtp.framelink import Audio, CallEnded, Event, LinkRecord, RelayedCallStarted

__all__ = ["EventOutlet", "ListenSession", "ListensForks", "ListensHost"]

log = get_logger(__name__)

SendItem = Callable[[dict[str, Any]], None]
"""Sends one listens item (its JSON) to main for this call."""


@dataclass(frozen=True, slots=True)
class _Summary:
    call_id: str


class EventOutlet:
    """What a :class:`ListenedCall` publishes to, in a call worker: each item becomes a
    ``listens_<kind>`` JSON object handed to ``send``."""

    def __init__(self, call_id: str, send: SendItem) -> None:
        self.summary = _Summary(call_id)
        self._send = send

    def publish(self, kind: PublishedKind, data: dict[str, Any]) -> None:
        """Send one item (``transcript``, ``suggestion_delta``, ``suggestion``)."""
        self._send(listens_item_to_json(kind, data))


class ListensHost:
    """The monitored calls of one worker: opens them (``listens_started``), closes them in
    tasks (``listens_ended`` once the last utterance is transcribed).

    Args:
        parts_for: the listens parts of an agent (the worker's voice runtime).
    """

    def __init__(self, parts_for: Callable[[Agent], ListenParts | None]) -> None:
        self._parts_for = parts_for
        self._closing: set[asyncio.Task[None]] = set()
        self.counters = {"listens_started": 0, "listens_failed": 0}

    def parts_for(self, agent: Agent) -> ListenParts | None:
        """The agent's listens parts (None: listens is not enabled for it here)."""
        return self._parts_for(agent)

    def open(
        self,
        send: SendItem,
        summary: Mapping[str, Any],
        parts: ListenParts,
        speakers: Mapping[str, str],
        rate: int,
    ) -> ListenedCall | None:
        """Start a monitored call: ``listens_started`` then its transcription (None: the
        transcription could not be built; ``listens_ended`` with reason ``error`` is sent)."""
        send(listens_item_to_json("started", summary))
        call_id = str(summary["call_id"])
        try:
            call = ListenedCall(parts, EventOutlet(call_id, send), speakers, input_rate=rate)
        except Exception:
            log.exception("listens_call_failed", call_id=call_id)
            self.counters["listens_failed"] += 1
            send(_ended("error", 0, 0, {}))
            return None
        self.counters["listens_started"] += 1
        log.info("listens_call_started", call_id=call_id, agent=summary.get("agent"))
        return call

    def close_later(self, call: ListenedCall, send: SendItem, reason: str) -> None:
        """Transcribe what is left, then send ``listens_ended`` (in a task)."""
        task = asyncio.get_running_loop().create_task(self._close(call, send, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, call: ListenedCall, send: SendItem, reason: str) -> None:
        try:
            await call.close()
        except Exception:
            log.exception("listens_close_failed", call_id=call.monitored.summary.call_id)
        finally:
            send(_ended(reason, call.lines, call.dropped, dict(call.engine.skipped)))
            log.info(
                "listens_call_ended",
                call_id=call.monitored.summary.call_id,
                reason=reason,
                lines=call.lines,
                dropped=call.dropped,
            )

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the calls being closed (worker shutdown)."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)


def _ended(reason: str, lines: int, dropped: int, skipped: dict[str, int]) -> dict[str, Any]:
    return listens_item_to_json(
        "ended",
        {"reason": reason, "lines": lines, "dropped": dropped, "suggestions_skipped": skipped},
    )


class ListenSession(SipListenSession):
    """The receive-only session of a SIP call to a listens number, in a call worker
    (:class:`~sipserver.pipeline.listening.SipListenSession`): the monitored call is one of
    the worker's, its items go to main.

    Args:
        host: the worker's monitored calls.
        agent: the agent whose listens number was called.
        parts: its listens parts.
        send: sends this call's items to main (EVENT records of the call).
    """

    refused_reason = "listens transcription failed"

    def __init__(self, host: ListensHost, agent: Agent, parts: ListenParts, send: SendItem) -> None:
        super().__init__(agent, parts)
        self._host = host
        self._send = send

    def _open(self, info: CallInfo, summary: dict[str, Any]) -> ListenedCall | None:
        return self._host.open(self._send, summary, self._parts, self._speakers, info.sample_rate)

    def _close(self, call: ListenedCall, reason: str) -> None:
        """``listens_ended`` follows the transcription's end (in a task)."""
        self._host.close_later(call, self._send, reason)


@dataclass(slots=True)
class _Fork:
    call: ListenedCall
    send: SendItem
    tracks: dict[int, str]
    """Relayed call number -> track name."""


class ListensForks:
    """The Twilio listens forks main relays to this worker (sans-I/O but for the tasks that
    finish a transcription): main terminates the fork's websocket and sends each transcribed
    track's frames under its own relayed call number (docs/framelink.md, "Relayed AI Listens
    forks"). Nothing is answered to their AUDIO records: a fork is receive-only.

    Args:
        host: the worker's monitored calls.
        agent_of: the agent of a slug in the configuration in use (None: unknown, or not
            configured yet).
        send: queues a record for main.
    """

    def __init__(
        self,
        host: ListensHost,
        agent_of: Callable[[str], Agent | None],
        send: Callable[[LinkRecord], None],
    ) -> None:
        self._host = host
        self._agent_of = agent_of
        self._send = send
        self._forks: dict[int, _Fork] = {}
        self._track_of: dict[int, tuple[int, str]] = {}
        """Every track's relayed call number -> (fork call number, track)."""
        self.bad_frames = 0

    def __len__(self) -> int:
        return len(self._forks)

    def owns(self, call: int) -> bool:
        """True when ``call`` is a fork's (or one of its tracks') relayed call number."""
        return call in self._forks or call in self._track_of

    def handle(self, record: LinkRecord) -> bool:
        """Take ``record`` if it is a fork's (a CALL_STARTED with ``listens``, the AUDIO of a
        fork's track, a CALL_ENDED of a fork); False: not a fork's record."""
        if isinstance(record, RelayedCallStarted):
            if record.listens is None:
                return False
            self.start(record)
        elif isinstance(record, Audio):
            if not record.frames or not self.owns(record.frames[0].call):
                return False
            self.audio(record)
        elif isinstance(record, CallEnded):
            if record.call not in self._forks:
                return False
            self.end(record.call, record.reason or "ended")
        else:
            return False
        return True

    def start(self, record: RelayedCallStarted) -> None:
        """Main relays a fork (a CALL_STARTED whose JSON has ``listens``)."""
        listens = record.listens or {}
        n = record.call
        agent = self._agent_of(record.agent)
        parts = self._host.parts_for(agent) if agent is not None else None
        tracks_json = listens.get("tracks")
        if agent is None or parts is None or not isinstance(tracks_json, dict):
            self._send(CallEnded(n, "no listens agent for this fork", 404))
            return
        tracks = {
            int(number): str(track)
            for track, number in tracks_json.items()
            if isinstance(number, int) and not isinstance(number, bool)
        }
        channel = agent.listens.channel
        wanted = speakers_for(channel)

        def send(item: dict[str, Any]) -> None:
            self._send(Event(n, item))

        summary = {
            "call_id": record.call_id,
            "agent": agent.slug,
            "number": record.called,
            "caller": record.caller,
            "channel": channel,
            "transport": "twilio",
            "started_at": time.time(),
        }
        call = self._host.open(send, summary, parts, wanted, record.sample_rate)
        if call is None:
            self._send(CallEnded(n, "listens transcription failed", 500))
            return
        self._forks[n] = _Fork(call, send, tracks)
        for number, track in tracks.items():
            self._track_of[number] = (n, track)

    def audio(self, record: Audio) -> None:
        """Frames of forks' tracks: each to its track's VAD (frames of other calls ignored)."""
        for frame in record.frames:
            found = self._track_of.get(frame.call)
            if found is None:
                continue
            fork = self._forks.get(found[0])
            if fork is None:
                continue
            if len(frame.pcm) % 2:  # the decoder rejects odd lengths: never reached
                self.bad_frames += 1
                continue
            fork.call.push(found[1], frame.pcm)

    def end(self, call: int, reason: str) -> None:
        """Main ended the fork (CALL_ENDED of its call number)."""
        fork = self._forks.pop(call, None)
        if fork is None:
            return
        for number in [*fork.tracks, call]:
            self._track_of.pop(number, None)
        self._host.close_later(fork.call, fork.send, reason)

    def end_all(self, reason: str) -> None:
        """The worker stops: finish every fork."""
        for call in list(self._forks):
            self.end(call, reason)
