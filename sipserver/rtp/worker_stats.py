"""Call workers' media counters (their STATS records) exported as Prometheus metrics.

A worker sends its counters as running totals every few seconds (docs/framelink.md, STATS).
:class:`MediaStatsMetrics` keeps each worker's last totals and adds the difference to the
counters, labelled by engine (the worker's HELLO ``kind``). A worker that is lost is forgotten
(its replacement's totals count from zero); a total that goes down without that is taken as
the new base and adds nothing, so a counter never counts twice. :class:`MediaTotals` makes a
native call worker's totals running totals (ended calls kept). Which STATS key feeds which
metric depends on the engine, because the pjsua2 worker counts at the frame bridge and the native
engine at the RTP stream (see :data:`SOURCES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["SOURCES", "STREAM_GAUGES", "MediaStatsMetrics", "MediaTotals"]

SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "pjsua2": {
        "frames": ("tx_frames",),
        "late_frames": ("tx_underflow",),
        "rtp_received": ("rtp_received",),
        "rtp_lost": ("rtp_lost",),
        "rtp_late": ("rtp_late",),
        "concealed_frames": ("concealed_frames",),
    },
    "native": {
        "frames": ("frames", "sent"),
        "late_frames": ("late_frames",),
        "late_ticks": ("late_ticks",),
        "rtp_received": ("rtp_received", "received"),
        "rtp_lost": ("rtp_lost", "lost"),
        "rtp_late": ("rtp_late", "late"),
        "concealed_frames": ("concealed_frames",),
    },
}
"""Per engine: metric (the keys of :class:`MediaStatsMetrics`' counters) -> the STATS keys
that feed it, the first one present wins (docs/framelink.md, "STATS counters").

pjsua2: ``tx_frames`` (session frames played), ``tx_underflow`` (ticks the session had no
frame ready: silence was played instead, a late frame) and pjmedia's stream counters read once
a second (``pjsua2_ua.stream_counters``). native: the documented keys, or the RTP stream's own
names (``received``, ``lost``, ``late``, ``sent``) summed by the engine."""


STREAM_GAUGES = frozenset({"jitter_ms", "latched", "srtp", "target_ms"})
"""Keys of ``RtpStream.stats()`` that are states, not counters: not added up when a call ends."""

_RTP_KEYS = {"rtp_received": "received", "rtp_lost": "lost", "rtp_late": "late"}


class _CountedStream(Protocol):
    def stats(self) -> dict[str, int]: ...


class MediaTotals:
    """A native call worker's media counters as running totals (worker side).

    The engine sums the counters of the calls in progress; :meth:`call_ended` keeps an ended
    call's counters, so :meth:`totals` never goes down when a call ends (docs/framelink.md,
    "STATS counters"). The worker's clock reports the frames it played (:meth:`frames_played`).
    """

    def __init__(self) -> None:
        self.frames = 0
        """20 ms frames played to callers (one per call per tick)."""
        self.late_frames = 0
        """Frames played on a tick the clock ran late (the calls of each late tick, summed)."""
        self._ended: dict[str, int] = {}

    def frames_played(self, count: int, *, late: bool) -> None:
        """One tick played ``count`` frames; ``late``: the clock ran it late."""
        self.frames += count
        if late:
            self.late_frames += count

    def call_ended(self, stream: _CountedStream) -> None:
        """Keep the counters of a call's stream that is closing."""
        ended = self._ended
        for key, value in stream.stats().items():
            if key not in STREAM_GAUGES:
                ended[key] = ended.get(key, 0) + value

    def totals(self, engine: Mapping[str, int], live: Iterable[_CountedStream]) -> dict[str, int]:
        """STATS media keys: ``engine`` (its stats: counters summed over the calls in progress)
        plus the ended calls', ``frames``, ``late_frames``, the documented ``rtp_*`` names and
        ``jitter_ms_max`` over the ``live`` streams (a gauge)."""
        out = dict(engine)
        for key, value in self._ended.items():
            out[key] = out.get(key, 0) + value
        for key, stream_key in _RTP_KEYS.items():
            out[key] = out.get(stream_key, 0)
        out.setdefault("concealed_frames", 0)
        out["frames"] = self.frames
        out["late_frames"] = self.late_frames
        out["jitter_ms_max"] = max((s.stats().get("jitter_ms", 0) for s in live), default=0)
        return out


class MediaStatsMetrics:
    """The counters and the per-worker last totals they are fed from.

    Args:
        registry: the server's registry (``Metrics.registry``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.counters: dict[str, Counter] = {
            "frames": Counter(
                "sipserver_media_frames",
                "20 ms frames the call workers played to callers, by engine.",
                ["engine"],
                registry=r,
            ),
            "late_frames": Counter(
                "sipserver_media_late_frames",
                "Frames of a call the session did not have ready in time (silence or a late "
                "packet went out instead), by engine.",
                ["engine"],
                registry=r,
            ),
            "late_ticks": Counter(
                "sipserver_media_late_ticks",
                "Media clock ticks of a call worker that ran more than one 20 ms interval late.",
                ["engine"],
                registry=r,
            ),
            "rtp_received": Counter(
                "sipserver_rtp_packets_received",
                "RTP packets received from callers, by engine.",
                ["engine"],
                registry=r,
            ),
            "rtp_lost": Counter(
                "sipserver_rtp_packets_lost",
                "RTP packets from callers that never arrived (sequence gaps), by engine.",
                ["engine"],
                registry=r,
            ),
            "rtp_late": Counter(
                "sipserver_rtp_packets_late",
                "RTP packets from callers that arrived after their frame was played, by engine.",
                ["engine"],
                registry=r,
            ),
            "concealed_frames": Counter(
                "sipserver_rtp_concealed_frames",
                "Frames the jitter buffer concealed for missing caller audio, by engine.",
                ["engine"],
                registry=r,
            ),
        }
        self.jitter = Gauge(
            "sipserver_rtp_jitter_max_ms",
            "Largest RFC 3550 interarrival jitter of a call in progress, ms, over the workers' "
            "last STATS.",
            registry=r,
        )
        self._last: dict[str, dict[str, float]] = {}
        self._jitter: dict[str, float] = {}

    def update(self, worker_id: str, engine: str, counters: Mapping[str, object]) -> None:
        """Feed one STATS record of ``worker_id`` (running on ``engine``)."""
        last = self._last.setdefault(worker_id, {})
        for metric, keys in SOURCES.get(engine, {}).items():
            key = next((k for k in keys if k in counters), keys[0])
            value = counters.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            delta = value - last.get(key, 0.0)
            last[key] = value
            child = self.counters[metric].labels(engine)  # exported from the first STATS, 0 too
            if delta > 0:
                child.inc(delta)
        jitter = counters.get("jitter_ms_max")
        if isinstance(jitter, int | float) and not isinstance(jitter, bool):
            self._jitter[worker_id] = float(jitter)
            self.jitter.set(max(self._jitter.values()))

    def forget(self, worker_id: str) -> None:
        """The worker is gone: its replacement's totals start from zero."""
        self._last.pop(worker_id, None)
        if self._jitter.pop(worker_id, None) is not None:
            self.jitter.set(max(self._jitter.values(), default=0.0))
