"""The server's call records: the store's lifecycle and the SIP side of the book.

:class:`ServerRecords` opens the record store at start (``server.records.store: sqlite``,
``<data_dir>/records.db``), builds the :class:`~sipserver.records.book.CallRecordBook`, and is
the :class:`~sipserver.pipeline.call_record.CallBook` the gateway and the AI Listens hub talk to
(a no-op while records are off). It turns what the SIP side reports into records:

- the edge's proxy events (:meth:`proxy_event`): ``CallRouted`` opens the record (so a ringing
  call is listed), ``CallAnswered`` stamps the answer, ``CallEnded`` says why it ended;
- the call worker's CALL_STARTED (:meth:`call_started`): the numbers, the codec, whether the
  number is an AI Listens number (``listens_sip``), and the worker's call number, which the
  record events of the call carry (:meth:`record_events`: ``record``/``record_media`` EVENTs);
- the worker's CALL_ENDED (:meth:`call_ended`). A SIP call's record closes when both the edge
  and the worker said the call is over: the worker sends the call's last events (the agent's
  last line, the media counters) just before its CALL_ENDED, and the BYE through the edge may
  come first. A worker that never says it waits at most :data:`WORKER_END_GRACE` seconds.

Capacity refusals of a known agent (SIP 503, websocket 503, Twilio busy, listens 503) reach
:meth:`refused` through :attr:`~sipserver.observability.RefusalLog.on_refused` and become
refused records (rate-limited by the book).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from aiohttp import web

from sipserver.config import Config, called_number, is_listens_number
from sipserver.edge.calls import CallAnswered, CallEnded, CallRouted, EndReason, ProxyEvent
from sipserver.observability import Metrics, get_logger
from sipserver.pipeline.call_record import CallRecord, MediaQuality, RecordEvent, RecordingInfo
from sipserver.pipeline.events import SessionEvent
from sipserver.pipeline.record_tap import RECORDING_EVENT, RecordedSession
from sipserver.pipeline.session import CallInfo, CallSession
from sipserver.records.api import CallsApi, SessionGate, visible_agents
from sipserver.records.book import CallRecordBook, max_open_records
from sipserver.records.pages import RecordPages
from sipserver.records.retention import RecordRetention
from sipserver.records.store import RecordStore
from sipserver.records.webhooks import WebhookSender, delivery_status
from sipserver.rtp import framelink
from sipserver.rtp.recordings import CallRecorders
from sipserver.sip.headers import AGENT_HEADER

__all__ = [
    "CAPACITY_REFUSALS",
    "RELAYED_END_GRACE",
    "WORKER_END_GRACE",
    "ServerRecords",
    "sip_ended_by",
    "turn_payload",
]

log = get_logger(__name__)

#: Seconds a SIP call's record waits, after the edge saw the call end, for its worker's last
#: events and CALL_ENDED before it is closed without them.
WORKER_END_GRACE = 5.0

#: Seconds a websocket call's record stays open after the gateway ended the call when its
#: session runs in a call worker: the worker sends the session's last events (the agent's last
#: line, its ``end``) when main's CALL_ENDED reaches it, a few milliseconds later.
RELAYED_END_GRACE = 1.0

#: Refusal words that are about capacity or readiness (a call turned away that would have been
#: taken another time): each becomes a refused record. Security refusals (bans, allow-lists,
#: failed credentials) do not: they are not calls of the agent.
CAPACITY_REFUSALS = frozenset(
    {"server_full", "agent_full", "workers_full", "no_worker_up", "starting", "draining"}
)

#: Refusal log ingress -> record ingress.
_REFUSAL_INGRESS = {
    "sip": "sip",
    "websocket": "websocket",
    "twilio": "twilio",
    "listens": "listens_twilio",
}

_SIP_ENDED_BY = {
    EndReason.CALLER_BYE: "caller",
    EndReason.CANCELLED: "caller",
    EndReason.WORKER_BYE: "agent",
    EndReason.TIMEOUT: "timeout",
    EndReason.SESSION_EXPIRED: "timeout",
    EndReason.WORKER_LOST: "error",
    EndReason.REJECTED: "error",
}


def turn_payload(record: CallRecord, turn: RecordEvent) -> dict[str, Any]:
    """The body of a ``transcript`` webhook: the record's id and agent, and the turn's events:
    the caller lines since the previous turn (offsets after it) and the turn itself."""
    since = max(
        (e.offset for e in record.events if e.type == "turn" and e.offset < turn.offset),
        default=-1.0,
    )
    lines = [
        e.to_json()
        for e in record.events
        if e.type == "transcript"
        and e.data.get("speaker") == "caller"
        and since < e.offset <= turn.offset
    ]
    return {"id": record.id, "agent": record.agent, "events": [*lines, turn.to_json()]}


def sip_ended_by(reason: EndReason, status: int | None) -> str:
    """Who ended a SIP call (a record's ``ended_by``) from the edge's end reason: a worker
    that rejected the INVITE with 486/503 refused it (it was full)."""
    if reason is EndReason.REJECTED and status in (486, 503):
        return "refused"
    return _SIP_ENDED_BY.get(reason, "error")


class _SipCall:
    """A SIP call's record state between the edge and its worker."""

    __slots__ = ("end", "timer", "worker")

    def __init__(self) -> None:
        self.worker: tuple[str, int] | None = None
        """``(worker_id, call)`` once the worker reported CALL_STARTED, until CALL_ENDED."""
        self.end: tuple[str, str] | None = None
        """``(end_reason, ended_by)`` once the edge saw the call end."""
        self.timer: asyncio.TimerHandle | None = None


class ServerRecords:
    """Call records of one server (module doc).

    Args:
        config: the running configuration (read at each use).
        metrics: the server's metrics (the book's counters join its registry).
        max_calls: the server's call limit now (sizes the book's open-record cap).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        metrics: Metrics,
        *,
        max_calls: Callable[[], int],
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._max_calls = max_calls
        self.store: RecordStore | None = None
        self.book: CallRecordBook | None = None
        """None until :meth:`start` (and when records are off)."""
        self.webhooks: WebhookSender | None = None
        """Posts ``call_started``, ``transcript`` and ``call_ended`` (docs/records.md,
        "Webhooks"); None until :meth:`start` and when records are off."""
        self.on_started: Callable[[CallRecord], None] | None = None
        """Given to the book: a record opened (``call_started`` webhook)."""
        self.on_turn: Callable[[CallRecord, RecordEvent], None] | None = None
        """Given to the book: a turn of a call (``transcript`` webhook)."""
        self.on_ended: Callable[[CallRecord], None] | None = None
        """Given to the book: a final record (``call_ended`` webhook)."""
        self._sip: dict[str, _SipCall] = {}
        self._worker_calls: dict[tuple[str, int], Hashable] = {}
        """``(worker_id, call)`` -> record key: SIP calls and relayed websocket calls."""
        self._relayed: dict[Hashable, tuple[str, int]] = {}
        """Record key -> ``(worker_id, call)`` of the websocket calls relayed to call workers."""
        self._closing: dict[Hashable, tuple[str, str, asyncio.TimerHandle]] = {}
        """Relayed calls' records waiting :data:`RELAYED_END_GRACE` for their last events."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.recorders = CallRecorders(config)
        """Records the calls whose sessions run in main (pjsua2 workers' calls, websocket calls
        without call workers); call workers record their own."""
        self.retention = RecordRetention(
            store=lambda: self.store,
            on_deleted=self.forget,
            config=config,
            registry=metrics.registry,
        )
        """Deletes records past ``server.records.retention_days`` / ``max_size_mb``."""

    def add_routes(
        self,
        app: web.Application,
        gate: SessionGate,
        *,
        top_links: Callable[[str], str],
    ) -> None:
        """The calls API and the call history pages on the public site (docs/records.md)."""
        config = self._config
        CallsApi(
            gate=gate,
            config=config,
            store=lambda: self.store,
            wall_clock=time.time,
            webhook_status=self.webhook_status,
            on_deleted=self.forget,
            in_progress=lambda record_id: self.book is not None and self.book.is_open(record_id),
        ).add_routes(app)
        RecordPages(
            login=gate.login_of,
            visible=lambda role: visible_agents(config(), role),
            agents=lambda: [a.slug for a in config().agents],
            top_links=top_links,
            store=lambda: self.store,
        ).add_routes(app)

    def local_session(
        self,
        info: CallInfo,
        on_event: Callable[[SessionEvent], None] | None,
        factory: Callable[[CallInfo, Callable[[SessionEvent], None]], CallSession | None],
    ) -> CallSession | None:
        """The session of a websocket call that runs in main, recorded: its record events go
        straight to the call's record, its audio to a recording when the agent asks."""
        key = ("ws", info.call_id)
        session = RecordedSession.build(
            lambda sink: factory(info, sink),
            lambda events: self.add(key, events),
            on_event=on_event,
        )
        if session is not None:
            session.recorder = self.recorders(info, lambda payload: self.payload(key, payload))
        return session

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (in a thread: it makes directories and the schema) and the book, when
        ``server.records.store`` is ``sqlite``."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        server = self._config().server
        path = server.records_path
        if path is None:
            log.info("call_records_off")
            return
        store = RecordStore(
            path, flush_interval=server.records.flush_interval, registry=self._metrics.registry
        )
        await asyncio.to_thread(store.open)
        self.store = store
        self.book = CallRecordBook(
            store,
            max_open=max_open_records(self._max_calls()),
            on_started=self._started,
            on_turn=self._turn,
            on_ended=self._ended,
            registry=self._metrics.registry,
        )
        self.webhooks = WebhookSender(path, self._config, self._metrics)
        await self.webhooks.start()
        self.retention.start()
        log.info("call_records_open", path=str(path))

    async def stop(self) -> None:
        """After the calls ended: close what is still open (``ended_by`` ``server``), commit
        and close the store (in a thread)."""
        await self.retention.stop()  # before the store closes
        await asyncio.to_thread(self.recorders.stop)  # the recordings' files finished
        for call_id, call in list(self._sip.items()):
            if call.end is not None:  # the edge saw it end: its own reason, not the server's
                self._close_sip(call_id, call)
            elif call.timer is not None:
                call.timer.cancel()
        self._sip.clear()
        for key, (end_reason, ended_by, timer) in list(self._closing.items()):
            timer.cancel()
            self._close_relayed(key, end_reason, ended_by)
        self._worker_calls.clear()
        self._relayed.clear()
        book, store = self.book, self.store
        self.book = None
        if book is not None:
            left = book.close_all(end_reason="server_stop", ended_by="server")
            if left:
                log.info("call_records_closed_at_stop", records=left)
        if self.webhooks is not None:  # after the book: the last call_ended are queued
            await self.webhooks.stop()
            self.webhooks = None
        if store is not None:
            self.store = None
            await asyncio.to_thread(store.flush)
            await asyncio.to_thread(store.close)

    def _started(self, record: CallRecord) -> None:
        if self.webhooks is not None:
            self.webhooks.enqueue(
                "call_started", record.agent, record.id, record.to_json(events=False)
            )
        if self.on_started is not None:
            self.on_started(record)

    def _turn(self, record: CallRecord, event: RecordEvent) -> None:
        if self.webhooks is not None:
            self.webhooks.enqueue(
                "transcript", record.agent, record.id, turn_payload(record, event)
            )
        if self.on_turn is not None:
            self.on_turn(record, event)

    def _ended(self, record: CallRecord) -> None:
        if self.webhooks is not None:
            self.webhooks.enqueue("call_ended", record.agent, record.id, record.to_json())
        if self.on_ended is not None:
            self.on_ended(record)

    async def forget(self, record_ids: Sequence[str]) -> None:
        """Records were deleted (retention, an admin): their webhook deliveries go too."""
        if self.webhooks is not None and record_ids:
            await self.webhooks.forget(record_ids)

    async def webhook_status(self, record_id: str) -> dict[str, Any]:
        """The record's delivery status per webhook kind (the call page shows it)."""
        if self.webhooks is None:
            return {}
        return delivery_status(await self.webhooks.deliveries(record_id))

    # -- the CallBook the ingresses talk to ---------------------------------------------------

    def open(
        self,
        key: Hashable,
        *,
        agent: str,
        ingress: str,
        caller: str = "",
        called: str = "",
        sip_call_id: str | None = None,
        call_sid: str | None = None,
        codec: str | None = None,
        answered: bool = True,
    ) -> CallRecord | None:
        """:meth:`CallRecordBook.open` (None while records are off)."""
        if self.book is None:
            return None
        return self.book.open(
            key,
            agent=agent,
            ingress=ingress,
            caller=caller,
            called=called,
            sip_call_id=sip_call_id,
            call_sid=call_sid,
            codec=codec,
            answered=answered,
        )

    def add(self, key: Hashable, events: Sequence[RecordEvent]) -> None:
        """:meth:`CallRecordBook.add`."""
        if self.book is not None:
            self.book.add(key, events)

    def offset(self, key: Hashable) -> float:
        """:meth:`CallRecordBook.offset`."""
        return self.book.offset(key) if self.book is not None else 0.0

    def close(self, key: Hashable, *, end_reason: str, ended_by: str) -> CallRecord | None:
        """:meth:`CallRecordBook.close`; a relayed call's record closes
        :data:`RELAYED_END_GRACE` later (its last events are on their way: returns None)."""
        if self.book is None:
            return None
        if key in self._relayed and self._loop is not None and key not in self._closing:
            timer = self._loop.call_later(
                RELAYED_END_GRACE, self._close_relayed, key, end_reason, ended_by
            )
            self._closing[key] = (end_reason, ended_by, timer)
            return None
        return self.book.close(key, end_reason=end_reason, ended_by=ended_by)

    def _close_relayed(self, key: Hashable, end_reason: str, ended_by: str) -> None:
        self._closing.pop(key, None)
        worker_call = self._relayed.pop(key, None)
        if worker_call is not None and self._worker_calls.get(worker_call) == key:
            del self._worker_calls[worker_call]
        if self.book is not None:
            self.book.close(key, end_reason=end_reason, ended_by=ended_by)

    # -- SIP calls ----------------------------------------------------------------------------

    def proxy_event(self, event: ProxyEvent) -> None:
        """An edge proxy event of a SIP call."""
        book = self.book
        if book is None:
            return
        key = ("sip", event.call_id)  # type: ignore[attr-defined]  # every event has one
        if isinstance(event, CallRouted):
            stale = self._sip.pop(event.call_id, None)
            if stale is not None:  # a Call-ID routed again: the old record ends here
                self._close_sip(event.call_id, stale, ("rerouted", "error"))
            if (
                book.open(
                    key, agent=event.agent, ingress="sip", sip_call_id=event.call_id, answered=False
                )
                is not None
            ):
                self._sip[event.call_id] = _SipCall()
        elif isinstance(event, CallAnswered):
            book.answered(key)
        elif isinstance(event, CallEnded):
            call = self._sip.get(event.call_id)
            if call is None:
                return
            call.end = (event.reason.value, sip_ended_by(event.reason, event.status))
            if call.worker is None:
                self._close_sip(event.call_id, call)
            elif self._loop is not None:
                call.timer = self._loop.call_later(
                    WORKER_END_GRACE, self._grace_over, event.call_id
                )

    def call_started(self, worker_id: str, record: framelink.CallStarted) -> None:
        """A worker's CALL_STARTED: the record's numbers, codec, ingress and worker call."""
        book = self.book
        call = self._sip.get(record.sip_call_id)
        if book is None or call is None:
            return
        key = ("sip", record.sip_call_id)
        call.worker = (worker_id, record.call)
        self._worker_calls[call.worker] = key
        called = called_number(record.to_uri) or called_number(record.request_uri)
        ingress = "sip"
        config = self._config()
        open_record = book.get(key)
        slug = record.headers.get(AGENT_HEADER) or (open_record.agent if open_record else "")
        agent = config.agent_by_slug(slug) if slug else None
        if agent is not None and is_listens_number(config, agent, called):
            ingress = "listens_sip"
        book.update(
            key,
            ingress=ingress,
            caller=called_number(record.from_uri),
            called=called,
            codec=record.codec.partition("/")[0] or None,
        )

    def call_ended(self, worker_id: str, record: framelink.CallEnded) -> None:
        """A worker's CALL_ENDED: the call's last events are in; close the record when the edge
        saw the end too."""
        key = self._worker_calls.pop((worker_id, record.call), None)
        if not isinstance(key, tuple) or key[0] != "sip":
            return
        call_id = str(key[1])
        call = self._sip.get(call_id)
        if call is None:
            return
        call.worker = None
        if call.end is not None:
            self._close_sip(call_id, call)

    def record_events(self, worker_id: str, call: int, event: Mapping[str, Any]) -> None:
        """A ``record`` / ``record_media`` EVENT of a worker's call (docs/framelink.md)."""
        book = self.book
        key = self._worker_calls.get((worker_id, call))
        if book is None or key is None:
            return
        if event.get("type") == "record":
            events = event.get("events")
            if isinstance(events, list):
                book.add_json(key, [e for e in events if isinstance(e, Mapping)])
        elif event.get("type") == RECORDING_EVENT:
            self.payload(key, event)
        else:  # record_media
            try:
                quality = MediaQuality.from_json(event)
            except (TypeError, ValueError):
                book.bad_events.inc()
                return
            codec = event.get("codec")  # an SDP rtpmap name, "PCMU/8000": the record keeps "PCMU"
            book.media(key, quality, codec.partition("/")[0] if isinstance(codec, str) else None)

    def payload(self, key: Hashable, event: Mapping[str, Any]) -> None:
        """A ``record_recording`` payload of a call whose session runs in this process."""
        if self.book is None or event.get("type") != RECORDING_EVENT:
            return
        try:
            self.book.recording(key, RecordingInfo.from_json(event))
        except (KeyError, TypeError, ValueError):
            self.book.bad_events.inc()

    def relayed_call(self, worker_id: str, call: int, key: Hashable) -> None:
        """A websocket call whose session runs in a call worker: its record events arrive with
        the worker's relayed call number."""
        if self.book is None:
            return
        if len(self._relayed) >= self.book.max_open:
            # A call refused after its session was built never opened a record: forget such.
            for stale in [k for k in self._relayed if k not in self.book]:
                self._worker_calls.pop(self._relayed.pop(stale), None)
        self._worker_calls[(worker_id, call)] = key
        self._relayed[key] = (worker_id, call)

    def worker_lost(self, worker_id: str) -> None:
        """A worker went away: its calls send nothing more."""
        for worker_call in [w for w in self._worker_calls if w[0] == worker_id]:
            key = self._worker_calls.pop(worker_call)
            self._relayed.pop(key, None)
            if isinstance(key, tuple) and key[0] == "sip":
                call = self._sip.get(str(key[1]))
                if call is not None:
                    call.worker = None
                    if call.end is not None:
                        self._close_sip(str(key[1]), call)

    def _grace_over(self, call_id: str) -> None:
        call = self._sip.get(call_id)
        if call is not None:
            call.timer = None
            if call.worker is not None:
                self._worker_calls.pop(call.worker, None)
            self._close_sip(call_id, call)

    def _close_sip(self, call_id: str, call: _SipCall, end: tuple[str, str] | None = None) -> None:
        if self._sip.get(call_id) is call:
            del self._sip[call_id]
        if call.timer is not None:
            call.timer.cancel()
        end_reason, ended_by = end or call.end or ("unknown", "error")
        if self.book is not None:
            self.book.close(("sip", call_id), end_reason=end_reason, ended_by=ended_by)

    # -- refusals -----------------------------------------------------------------------------

    def refused(self, ingress: str, reason: str, fields: dict[str, object]) -> None:
        """A refusal counted by the server's RefusalLog: a capacity refusal of a known agent
        becomes a refused record (any thread: hops to the event loop)."""
        agent = fields.get("agent")
        record_ingress = _REFUSAL_INGRESS.get(ingress)
        if self.book is None or not agent or record_ingress is None:
            return
        if reason not in CAPACITY_REFUSALS:
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.refused, ingress, reason, fields)
            return
        call_id = fields.get("call_id")
        call_sid = fields.get("call_sid")
        self.book.refused(
            agent=str(agent),
            ingress=record_ingress,
            reason=reason,
            caller=str(fields.get("caller") or ""),
            called=str(fields.get("called") or ""),
            sip_call_id=str(call_id) if call_id else None,
            call_sid=str(call_sid) if call_sid else None,
        )
