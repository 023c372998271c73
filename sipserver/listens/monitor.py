"""Monitored calls and who watches them: bounded history, live subscribers, call list changes.

:class:`ListensHub` is the meeting point of the two halves of AI Listens: ingress adapters
(:mod:`.fork`) open a :class:`MonitoredCall` per forked call and publish transcript lines and
suggestions into it; the dashboard (:mod:`.dashboard`) lists the calls of an agent and
subscribes to one. Nothing here does I/O or blocks.

Memory is bounded everywhere: a call keeps its last ``history_limit`` items (what a browser that
(re)connects is sent first), each subscriber has a queue of ``queue_limit`` items, and a
subscriber that falls that far behind is dropped (its stream ends and the browser reconnects,
catching up from the history). At most ``max_calls`` calls are monitored at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from sipserver.pipeline.call_record import CallBook, RecordEvent

__all__ = [
    "DEFAULT_HISTORY",
    "CallSummary",
    "Item",
    "ListensHub",
    "MonitoredCall",
    "Subscription",
]

DEFAULT_HISTORY: Final = 200
"""Items (transcript lines and suggestions) a call keeps for late or reconnecting viewers."""
_QUEUE_LIMIT: Final = 256
_ENDED: Final = object()

Kind = Literal["transcript", "suggestion", "suggestion_delta", "ended"]


@dataclass(frozen=True, slots=True)
class Item:
    """One thing that happened on a monitored call, as sent to the dashboard.

    Attributes:
        seq: Position in the call (1, 2, ...); the SSE event id.
        kind: ``transcript``, ``suggestion``, ``suggestion_delta`` (streamed text of a
            suggestion in progress; not kept in the history) or ``ended``.
        data: The JSON body.
    """

    seq: int
    kind: Kind
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What the call list shows."""

    call_id: str
    agent: str
    number: str
    """The monitored (called) number."""
    caller: str
    channel: str
    """``inbound``, ``outbound`` or ``both_tracks``."""
    transport: str
    """``twilio`` (fork websocket) or ``sip``."""
    started_at: float
    """Unix time the monitoring started."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "call_id": self.call_id,
            "agent": self.agent,
            "number": self.number,
            "caller": self.caller,
            "channel": self.channel,
            "transport": self.transport,
            "started_at": self.started_at,
        }


class Subscription:
    """A viewer of one call (or of an agent's call list): a bounded queue of items.

    Iterate with :meth:`get` until it returns None (the call ended, or the viewer fell too far
    behind and was dropped: check :attr:`overflowed`).
    """

    __slots__ = ("_queue", "overflowed")

    def __init__(self, limit: int = _QUEUE_LIMIT) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=limit)
        self.overflowed = False

    def put(self, item: object) -> bool:
        """Queue ``item``; False (and the subscription ends) when the queue is full."""
        if self.overflowed:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            self._finish()
            return False
        return True

    def _finish(self) -> None:
        while True:  # make room for the end marker
            try:
                self._queue.put_nowait(_ENDED)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def end(self) -> None:
        """No more items will come."""
        self._finish()

    async def get(self, timeout: float | None = None) -> Any:
        """The next item; None at the end; raises TimeoutError after ``timeout`` seconds."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        return None if item is _ENDED else item


class MonitoredCall:
    """One forked call: its summary, its recent history and its viewers.

    Args:
        summary: The call's metadata.
        hub: The hub it belongs to (told when the call ends).
        history_limit: Items kept for viewers that connect later.
    """

    def __init__(self, summary: CallSummary, hub: ListensHub, history_limit: int) -> None:
        self.summary = summary
        self._hub = hub
        self._seq = itertools.count(1)
        self.history: deque[Item] = deque(maxlen=history_limit)
        self._subscribers: set[Subscription] = set()
        self.ended = False
        self.record_offset = 0.0
        """Offset (s) of the newest event of the call's record: a suggestion, stamped when it
        arrives, never sorts before the line it answers."""

    def publish(self, kind: Kind, data: dict[str, Any]) -> Item:
        """Record an item (``suggestion_delta`` items are not kept) and send it to viewers."""
        item = Item(next(self._seq), kind, data)
        if kind != "suggestion_delta":
            self.history.append(item)
            self._hub.record_item(self, kind, data)
        for sub in list(self._subscribers):
            if not sub.put(item):
                self._subscribers.discard(sub)
        return item

    def subscribe(self, after: int = 0) -> tuple[list[Item], Subscription]:
        """The history after ``after`` (an SSE ``Last-Event-ID``) and a live subscription."""
        sub = Subscription()
        backlog = [item for item in self.history if item.seq > after]
        if self.ended:
            sub.end()
        else:
            self._subscribers.add(sub)
        return backlog, sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop sending to ``sub``."""
        self._subscribers.discard(sub)

    @property
    def viewers(self) -> int:
        """Subscriptions open now."""
        return len(self._subscribers)

    def end(self, reason: str = "ended") -> None:
        """The call is over: viewers get an ``ended`` item, then their stream ends."""
        if self.ended:
            return
        self.publish("ended", {"reason": reason, "at": time.time()})
        self.ended = True
        for sub in self._subscribers:
            sub.end()
        self._subscribers.clear()
        self._hub._ended(self, reason)


class ListensHub:
    """The monitored calls of the server, by id, and the viewers of each agent's call list.

    Args:
        history_limit: Items each call keeps (see :data:`DEFAULT_HISTORY`).
        max_calls: Calls monitored at once; :meth:`open` refuses more.
        records: where each monitored call's record goes (transcript lines, suggestions, how
            it ended); None: not recorded. Assignable later (the server opens its records at
            start).
    """

    def __init__(
        self,
        *,
        history_limit: int = DEFAULT_HISTORY,
        max_calls: int = 1000,
        records: CallBook | None = None,
    ) -> None:
        self.history_limit = history_limit
        self.max_calls = max_calls
        self.records = records
        self._call_sids: dict[str, str] = {}
        """Twilio CallSids of forks about to open (streamSid -> CallSid), for their records;
        at most ``max_calls`` (the oldest go first)."""
        self._calls: dict[str, MonitoredCall] = {}
        self._list_viewers: dict[str, set[Subscription]] = {}

    def open(self, summary: CallSummary) -> MonitoredCall | None:
        """Start monitoring a call; None when ``max_calls`` are monitored or the id is in use."""
        if len(self._calls) >= self.max_calls or summary.call_id in self._calls:
            return None
        call = MonitoredCall(summary, self, self.history_limit)
        self._calls[summary.call_id] = call
        self._list_changed(summary.agent)
        call_sid = self._call_sids.pop(summary.call_id, None)
        if self.records is not None:
            sip = summary.transport == "sip"
            self.records.open(
                _record_key(summary),
                agent=summary.agent,
                ingress="listens_sip" if sip else "listens_twilio",
                caller=summary.caller,
                called=summary.number,
                sip_call_id=summary.call_id if sip else None,
                call_sid=call_sid,
            )
        return call

    def note_call_sid(self, call_id: str, call_sid: str) -> None:
        """The Twilio CallSid of the fork ``call_id`` that opens next (its record keeps it)."""
        if self.records is None:
            return
        while len(self._call_sids) >= self.max_calls:  # forks that never opened
            del self._call_sids[next(iter(self._call_sids))]
        self._call_sids[call_id] = call_sid

    def _ended(self, call: MonitoredCall, reason: str) -> None:
        if self._calls.get(call.summary.call_id) is call:
            del self._calls[call.summary.call_id]
            self._list_changed(call.summary.agent)
        if self.records is not None and call.summary.transport != "sip":
            # A SIP listens call's record is closed by the SIP side, which knows who hung up.
            self.records.close(
                _record_key(call.summary), end_reason=reason, ended_by=_ended_by(reason)
            )

    def record_item(self, call: MonitoredCall, kind: Kind, data: dict[str, Any]) -> None:
        """A transcript line or a suggestion of a monitored call -> an event of its record."""
        records = self.records
        if records is None or kind not in ("transcript", "suggestion"):
            return
        key = _record_key(call.summary)
        offset = data.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            offset = max(records.offset(key), call.record_offset)
        call.record_offset = max(call.record_offset, float(offset))
        if kind == "transcript":
            body = {"speaker": data.get("speaker", ""), "text": data.get("text", "")}
        else:
            sources = data.get("sources") or []
            first = sources[0] if sources and isinstance(sources[0], dict) else {}
            body = {"text": data.get("text", "")}
            if first.get("title"):
                body["title"] = first["title"]
            if first.get("source"):
                body["source"] = first["source"]
        records.add(key, [RecordEvent(kind, float(offset), body)])

    def get(self, call_id: str) -> MonitoredCall | None:
        """The active call with this id, or None."""
        return self._calls.get(call_id)

    def calls_of(self, agent: str) -> list[CallSummary]:
        """Active calls of ``agent``, oldest first."""
        found = [c.summary for c in self._calls.values() if c.summary.agent == agent]
        return sorted(found, key=lambda s: s.started_at)

    @property
    def active(self) -> int:
        """Calls monitored now."""
        return len(self._calls)

    def watch_list(self, agent: str) -> Subscription:
        """A subscription that receives ``agent``'s call list (a list of dicts) on each change;
        the current list is queued first."""
        sub = Subscription(limit=16)
        sub.put(self._snapshot(agent))
        self._list_viewers.setdefault(agent, set()).add(sub)
        return sub

    def unwatch_list(self, agent: str, sub: Subscription) -> None:
        """Stop sending ``agent``'s call list to ``sub``."""
        viewers = self._list_viewers.get(agent)
        if viewers is not None:
            viewers.discard(sub)
            if not viewers:
                del self._list_viewers[agent]

    def _snapshot(self, agent: str) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.calls_of(agent)]

    def _list_changed(self, agent: str) -> None:
        viewers = self._list_viewers.get(agent)
        if not viewers:
            return
        snapshot = self._snapshot(agent)
        for sub in list(viewers):
            if not sub.put(snapshot):
                viewers.discard(sub)

    def end_all(self, reason: str = "server_shutdown", agents: Iterable[str] | None = None) -> None:
        """End every call (of ``agents``, when given) and every list viewer."""
        wanted = None if agents is None else set(agents)
        for call in list(self._calls.values()):
            if wanted is None or call.summary.agent in wanted:
                call.end(reason)
        if wanted is None:
            for viewers in self._list_viewers.values():
                for sub in viewers:
                    sub.end()
            self._list_viewers.clear()


def _record_key(summary: CallSummary) -> tuple[str, str]:
    """The call's record key (:class:`~sipserver.pipeline.call_record.CallBook`): a SIP listens
    call shares the SIP call's."""
    return ("sip" if summary.transport == "sip" else "listens", summary.call_id)


def _ended_by(reason: str) -> str:
    """Who ended a fork, from its end reason."""
    if reason == "server_shutdown":
        return "server"
    if reason == "stalled":
        return "timeout"
    if reason in ("error", "call worker lost", "replaced"):
        return "error"
    return "caller"
