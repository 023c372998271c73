"""The main process's book of calls in progress: signalling facts and session events -> records.

Every ingress tells one :class:`CallRecordBook` what it knows about its calls, keyed by its own
call key (see :class:`~sipserver.pipeline.call_record.CallBook`): the SIP edge and the call
workers (``("sip", Call-ID)``), the media-stream gateway (``("ws", streamSid)``), AI Listens
Twilio forks (``("listens", streamSid)``). The book keeps the records of calls in progress in
memory, writes each row when it opens (a live call is listed at once) and again on every change,
appends events to the store as they come, and on close writes the final row and hands the
record to ``on_ended`` (the end-of-call webhook).

Memory is bounded: at most ``max_open`` records are open (past it a new call is not recorded and
``sipserver_call_records_not_recorded_total{reason="cap"}`` counts it) and a record keeps at most
the store's per-call event cap in memory. Capacity refusals become one record each, at most
``refusals_per_second`` per agent (the rest only counted), so a flood of refused calls cannot
fill the disk.

Nothing here blocks: the store's writes are queued to its writer thread. Call the book from the
event loop thread only (it is not thread-safe).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from sipserver.observability import get_logger
from sipserver.pipeline.call_record import (
    ENDED_BY,
    INGRESSES,
    CallRecord,
    MediaQuality,
    RecordEvent,
    RecordingInfo,
    new_record_id,
)
from sipserver.records.store import MAX_EVENTS_PER_CALL, RecordStore

__all__ = ["DEFAULT_MAX_OPEN", "REFUSALS_PER_SECOND", "CallRecordBook", "max_open_records"]

log = get_logger(__name__)

#: Records open at once when the server's call limit is not known.
DEFAULT_MAX_OPEN = 5000

#: Refused-call records written per agent and second; the rest are only counted.
REFUSALS_PER_SECOND = 10

#: Fields :meth:`CallRecordBook.update` may change.
_UPDATABLE = frozenset({"ingress", "caller", "called", "sip_call_id", "call_sid", "codec"})

#: Agents whose refusal windows are kept; past it the table is cleared (a flood of made-up
#: agent names cannot grow it: refusals only carry configured agents anyway).
_MAX_REFUSAL_AGENTS = 10_000


def max_open_records(max_calls: int) -> int:
    """The open-record cap for a server that takes ``max_calls`` calls at once: twice that (a
    call's record may outlive its slot a little, SIP calls wait for their worker's last events)
    plus 1000 for AI Listens forks, which the call limit does not count."""
    return max_calls * 2 + 1000


class _Open:
    """A record in progress and what the book remembers about it."""

    __slots__ = ("end_hint", "record", "turns")

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.end_hint: tuple[str, str] | None = None
        """``(reason, ended_by)`` of the session's ``end`` event (it asked to hang up)."""
        self.turns = 0


class CallRecordBook:
    """Records of calls in progress, written to a :class:`RecordStore` (module doc).

    Args:
        store: an open store.
        clock: wall-clock seconds (persisted times).
        max_open: records open at once (:func:`max_open_records`).
        on_started: called with a record when it opens (``call_started`` webhook).
        on_turn: called with the record and each ``turn`` event (``transcript`` webhook).
        on_ended: called with the final record, events included (``call_ended`` webhook).
        refusals_per_second: refused-call records per agent and second.
        registry: where the book's metrics are registered (None: not exported).
    """

    def __init__(
        self,
        store: RecordStore,
        *,
        clock: Callable[[], float] = time.time,
        max_open: int = DEFAULT_MAX_OPEN,
        on_started: Callable[[CallRecord], None] | None = None,
        on_turn: Callable[[CallRecord, RecordEvent], None] | None = None,
        on_ended: Callable[[CallRecord], None] | None = None,
        refusals_per_second: int = REFUSALS_PER_SECOND,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self.max_open = max_open
        self.on_started = on_started
        self.on_turn = on_turn
        self.on_ended = on_ended
        self.refusals_per_second = refusals_per_second
        self._open: dict[Hashable, _Open] = {}
        self._refusal_windows: dict[str, list[int]] = {}  # agent -> [second, records in it]
        self.records_total = Counter(
            "sipserver_call_records_total",
            "Call records closed (written whole), by ingress and who ended the call",
            ["ingress", "ended_by"],
            registry=registry,
        )
        self.not_recorded = Counter(
            "sipserver_call_records_not_recorded_total",
            "Calls left without a record: cap (too many open records), refusal_rate (refused "
            "calls past the per-agent rate)",
            ["reason"],
            registry=registry,
        )
        self.bad_events = Counter(
            "sipserver_call_record_bad_events_total",
            "Record events dropped because they were malformed",
            registry=registry,
        )
        open_gauge = Gauge(
            "sipserver_call_records_open", "Call records in progress", registry=registry
        )
        open_gauge.set_function(lambda: float(len(self._open)))

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def is_open(self, record_id: str) -> bool:
        """The record ``record_id`` belongs to a call in progress (at most ``max_open`` looked
        at: called on an operator's delete, not per packet)."""
        return any(entry.record.id == record_id for entry in self._open.values())

    def get(self, key: Hashable) -> CallRecord | None:
        """The open record of ``key`` (None: none open)."""
        entry = self._open.get(key)
        return entry.record if entry is not None else None

    # -- opening and changing ---------------------------------------------------------------

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
        """Open the record of a new call, or merge these facts into the one open under ``key``
        (an ingress that learns more about a call another part opened: a SIP call to an AI
        Listens number becomes ``listens_sip`` there). Empty/None facts never overwrite.

        Args:
            answered: the call is answered now (websocket start); False: :meth:`answered` says
                when (a SIP 200 OK).

        Returns:
            The record; None when ``max_open`` records are open (the call is not recorded,
            counted).
        """
        entry = self._open.get(key)
        if entry is not None:
            self.update(
                key,
                ingress=ingress,
                caller=caller,
                called=called,
                sip_call_id=sip_call_id,
                call_sid=call_sid,
                codec=codec,
            )
            if answered and entry.record.answered_at is None:
                self.answered(key)
            return entry.record
        if len(self._open) >= self.max_open:
            self.not_recorded.labels("cap").inc()
            log.warning("call_record_cap", open=len(self._open), agent=agent, ingress=ingress)
            return None
        _check_ingress(ingress)
        now = self._clock()
        record = CallRecord(
            id=new_record_id(now),
            agent=agent,
            ingress=ingress,
            caller=caller,
            called=called,
            sip_call_id=sip_call_id or None,
            call_sid=call_sid or None,
            started_at=now,
            answered_at=now if answered else None,
            codec=codec or None,
        )
        self._open[key] = _Open(record)
        self.store.save(record)
        self._notify(self.on_started, record)
        return record

    def update(self, key: Hashable, **facts: Any) -> None:
        """Change the open record's ``ingress``, ``caller``, ``called``, ``sip_call_id``,
        ``call_sid`` or ``codec`` (empty/None values are ignored); the row is written when
        something changed.

        Raises:
            TypeError: another field was named (a bug).
        """
        unknown = set(facts) - _UPDATABLE
        if unknown:
            raise TypeError(f"CallRecordBook.update: unknown fields {sorted(unknown)}")
        entry = self._open.get(key)
        if entry is None:
            return
        record = entry.record
        changed = False
        for name, value in facts.items():
            if value is None or value == "" or getattr(record, name) == value:
                continue
            if name == "ingress":
                _check_ingress(value)
            setattr(record, name, value)
            changed = True
        if changed:
            self.store.save(record)

    def answered(self, key: Hashable) -> None:
        """The call was answered now (once; later calls change nothing)."""
        entry = self._open.get(key)
        if entry is not None and entry.record.answered_at is None:
            entry.record.answered_at = self._clock()
            self.store.save(entry.record)

    def media(self, key: Hashable, quality: MediaQuality, codec: str | None = None) -> None:
        """The call's media counters (and codec, when given): the last report wins."""
        entry = self._open.get(key)
        if entry is None:
            return
        entry.record.media = quality
        if codec:
            entry.record.codec = codec
        self.store.save(entry.record)

    def offset(self, key: Hashable) -> float:
        """Seconds since the open record of ``key`` started (0 when none is open): the offset
        of an event an ingress stamps itself."""
        entry = self._open.get(key)
        return max(0.0, self._clock() - entry.record.started_at) if entry is not None else 0.0

    # -- events -----------------------------------------------------------------------------

    def add(self, key: Hashable, events: Sequence[RecordEvent]) -> None:
        """Append events to the open record of ``key`` (in memory up to the store's per-call
        cap, and in the store); ``turn`` events go to ``on_turn``; an ``end`` event is kept as
        who asked the call to end (see :meth:`close`)."""
        entry = self._open.get(key)
        if entry is None or not events:
            return
        record = entry.record
        room = MAX_EVENTS_PER_CALL - len(record.events)
        if room > 0:
            record.events.extend(events[:room])
        self.store.append(record.id, events)
        for event in events:
            if event.type == "turn":
                entry.turns += 1
                if self.on_turn is not None:
                    try:
                        self.on_turn(record, event)
                    except Exception:
                        log.exception("call_record_callback_failed", callback="on_turn")
            elif event.type == "end":
                ended_by = event.data.get("ended_by")
                if isinstance(ended_by, str) and ended_by in ENDED_BY:
                    entry.end_hint = (str(event.data.get("reason") or ""), ended_by)

    def recording(self, key: Hashable, info: RecordingInfo) -> None:
        """The open record of ``key`` has this recording file."""
        entry = self._open.get(key)
        if entry is None:
            return
        entry.record.recording = info
        self.store.save(entry.record)

    def add_json(self, key: Hashable, events: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`add` of events in their JSON form (a call worker's EVENT record); malformed
        ones are dropped and counted."""
        parsed: list[RecordEvent] = []
        for obj in events:
            try:
                parsed.append(RecordEvent.from_json(obj))
            except (ValueError, TypeError, AttributeError):
                self.bad_events.inc()
        self.add(key, parsed)

    # -- closing ----------------------------------------------------------------------------

    def close(self, key: Hashable, *, end_reason: str, ended_by: str) -> CallRecord | None:
        """The call ended: write the final row, forget the record, hand it to ``on_ended``.

        ``ended_by`` is the ingress's view; when it says ``agent`` and the session's ``end``
        event said who asked (``dtmf`` for a hang-up digit), the session's word wins.

        Returns:
            The final record (None: none was open under ``key``).
        """
        entry = self._open.pop(key, None)
        if entry is None:
            return None
        record = entry.record
        if ended_by == "agent" and entry.end_hint is not None:
            ended_by = entry.end_hint[1]
        if ended_by not in ENDED_BY:
            log.warning("call_record_unknown_ended_by", ended_by=ended_by, reason=end_reason)
            ended_by = "error"
        record.ended_at = max(self._clock(), record.started_at)
        record.end_reason = end_reason
        record.ended_by = ended_by
        self.store.save(record)
        self.store.finished(record.id)
        self.records_total.labels(record.ingress, ended_by).inc()
        self._notify(self.on_ended, record)
        return record

    def close_all(self, *, end_reason: str = "server_stop", ended_by: str = "server") -> int:
        """Close every open record (server stop, after the calls ended); returns how many."""
        keys = list(self._open)
        for key in keys:
            self.close(key, end_reason=end_reason, ended_by=ended_by)
        return len(keys)

    def refused(
        self,
        *,
        agent: str,
        ingress: str,
        reason: str,
        caller: str = "",
        called: str = "",
        sip_call_id: str | None = None,
        call_sid: str | None = None,
    ) -> CallRecord | None:
        """A call refused at capacity: one closed record (``ended_by`` ``refused``,
        ``end_reason`` the refusal word, never answered), at most :attr:`refusals_per_second`
        per agent; past it the refusal is only counted.

        Returns:
            The record; None when the rate was exceeded.
        """
        now = self._clock()
        second = math.floor(now)
        window = self._refusal_windows.get(agent)
        if window is None or window[0] != second:
            if len(self._refusal_windows) >= _MAX_REFUSAL_AGENTS:
                self._refusal_windows.clear()
            window = self._refusal_windows[agent] = [second, 0]
        if window[1] >= self.refusals_per_second:
            self.not_recorded.labels("refusal_rate").inc()
            return None
        window[1] += 1
        _check_ingress(ingress)
        record = CallRecord(
            id=new_record_id(now),
            agent=agent,
            ingress=ingress,
            caller=caller,
            called=called,
            sip_call_id=sip_call_id or None,
            call_sid=call_sid or None,
            started_at=now,
            ended_at=now,
            end_reason=reason,
            ended_by="refused",
        )
        self.store.save(record)
        self.records_total.labels(ingress, "refused").inc()
        self._notify(self.on_ended, record)
        return record

    def _notify(self, callback: Callable[[CallRecord], None] | None, record: CallRecord) -> None:
        if callback is None:
            return
        try:
            callback(record)
        except Exception:  # a webhook bug must not break the call's signalling
            log.exception("call_record_callback_failed", record=record.id)


def _check_ingress(ingress: str) -> None:
    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r} (one of {', '.join(INGRESSES)})")
