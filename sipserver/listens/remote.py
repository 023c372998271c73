"""Monitored calls transcribed in a call worker, published on the main process's hub.

With ``server.media.engine: native`` a monitored call's transcription and suggestions run in
the call worker that holds it (:mod:`sipserver.rtp.listens_host`); each item comes back in a
frame link EVENT record (:mod:`sipserver.pipeline.listens_events`). :class:`RemoteListens`
opens the :class:`~sipserver.listens.monitor.MonitoredCall` on ``listens_started``, publishes
every ``transcript``/``suggestion_delta``/``suggestion`` unchanged (so the dashboard's SSE
stream is the same as when main transcribed), and ends it on ``listens_ended``, or with reason
``call worker lost`` when the worker goes away. The listens metrics are counted here, in main.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sipserver.listens.monitor import CallSummary, ListensHub, MonitoredCall
from sipserver.observability import Metrics, get_logger
from sipserver.pipeline.listens_events import listens_item_from_json

__all__ = ["RemoteListens"]

log = get_logger(__name__)

CallKey = tuple[str, int]
"""A monitored call of a worker: (worker id, call number on its frame link)."""


class RemoteListens:
    """The monitored calls whose transcription runs in call workers.

    Args:
        hub: the dashboard's hub.
        metrics: the listens counters and gauge.
    """

    def __init__(self, hub: ListensHub, metrics: Metrics) -> None:
        self.hub = hub
        self.metrics = metrics
        self._calls: dict[CallKey, MonitoredCall] = {}
        self.bad_items = 0
        """Items dropped because a field was missing or mistyped (logged)."""

    def __len__(self) -> int:
        return len(self._calls)

    def handle(self, worker_id: str, call: int, event: Mapping[str, Any]) -> bool | None:
        """One EVENT of a worker's call.

        Returns:
            None: not a listens item (the caller handles the event); True: taken; False: the
            hub refused the call (full, or its id in use): the caller hangs it up.
        """
        try:
            item = listens_item_from_json(event)
        except ValueError as exc:
            self.bad_items += 1
            log.warning("listens_item_invalid", worker=worker_id, call=call, error=str(exc))
            return True
        if item is None:
            return None
        key = (worker_id, call)
        data = dict(item.data)
        if item.kind == "started":
            return self._open(key, data)
        monitored = self._calls.get(key)
        if monitored is None:
            return True  # refused at the start, or already ended
        if item.kind == "ended":
            del self._calls[key]
            self._end(monitored, data)
        elif item.kind == "suggestion":
            monitored.publish("suggestion", data)
            self.metrics.listens_suggestions.labels(str(data["mode"])).inc()
        else:
            monitored.publish(item.kind, data)
        return True

    def _open(self, key: CallKey, data: dict[str, Any]) -> bool:
        summary = CallSummary(
            call_id=data["call_id"],
            agent=data["agent"],
            number=data["number"],
            caller=data["caller"],
            channel=data["channel"],
            transport=data["transport"],
            started_at=float(data["started_at"]),
        )
        old = self._calls.pop(key, None)
        if old is not None:  # a number is never reused while its worker lives: be safe anyway
            self._finish(old, "replaced")
        monitored = self.hub.open(summary)
        if monitored is None:
            log.warning("listens_call_refused", call_id=summary.call_id, reason="hub full")
            return False
        self._calls[key] = monitored
        self.metrics.listens_calls_active.inc()
        log.info(
            "listens_call_started",
            call_id=summary.call_id,
            agent=summary.agent,
            number=summary.number,
            channel=summary.channel,
            transport=summary.transport,
            worker=key[0],
        )
        return True

    def _end(self, monitored: MonitoredCall, data: dict[str, Any]) -> None:
        dropped = int(data["dropped"])
        if dropped > 0:
            self.metrics.listens_utterances_dropped.inc(dropped)
        self._finish(monitored, str(data["reason"]))
        log.info(
            "listens_call_ended",
            call_id=monitored.summary.call_id,
            reason=data["reason"],
            lines=data["lines"],
            dropped=dropped,
            suggestions_skipped=data["suggestions_skipped"],
        )

    def _finish(self, monitored: MonitoredCall, reason: str) -> None:
        monitored.end(reason)
        self.metrics.listens_calls_active.dec()

    def worker_lost(self, worker_id: str) -> int:
        """End the monitored calls of a worker that went away; returns how many."""
        lost = [key for key in self._calls if key[0] == worker_id]
        for key in lost:
            monitored = self._calls.pop(key)
            self._finish(monitored, "call worker lost")
            log.warning("listens_call_lost", call_id=monitored.summary.call_id, worker=worker_id)
        return len(lost)

    def end_all(self, reason: str = "server_shutdown") -> None:
        """Server shutdown: end every monitored call still open."""
        for key in list(self._calls):
            self._finish(self._calls.pop(key), reason)
