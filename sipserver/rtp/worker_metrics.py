"""The voice pipeline's Prometheus metrics of a call worker, forwarded to main in its STATS.

A call worker runs every call's voice pipeline, which observes per-turn latencies,
interruptions, provider errors and the sessions in progress into a :class:`Metrics` object of
the worker's own (:func:`pipeline_totals` reads it). The worker ships them to main as flat
integer keys of its STATS record (docs/framelink.md, "Pipeline metrics"), running totals like
every other STATS counter; :class:`ForwardedPipelineMetrics` in main adds each worker's
differences to main's own metrics, so ``/metrics`` shows the same names and labels as when the
pipeline runs in main. No frame-link record is added and nothing is sent per frame.

Histograms travel as per-bucket counts (and the sum in microseconds), not as observations:
their size is fixed (buckets x label values, whatever the call rate), a STATS that is late or
merged with the next loses nothing, and main's histogram ends up with exactly the worker's
buckets and sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from sipserver.observability import Metrics

__all__ = ["FORWARDED", "PREFIX", "ForwardedPipelineMetrics", "pipeline_totals"]

PREFIX = "pipeline/"
"""STATS keys of forwarded pipeline metrics start with this."""

FORWARDED: tuple[str, ...] = (
    "voice_turn_latency",
    "voice_interruptions",
    "voice_provider_errors",
    "voice_turn_predictions",
    "voice_sessions_active",
)
"""The :class:`Metrics` attributes the voice pipeline observes (sipserver/pipeline/runtime.py)."""

_SUM_UNIT = 1_000_000  # histogram sums travel in microseconds (STATS values are integers)


def pipeline_totals(metrics: Metrics) -> dict[str, int]:
    """The forwarded metrics of ``metrics`` as STATS keys (worker side).

    Keys are ``pipeline/<attribute>[/<label value>...]`` for a counter (its total) or a gauge
    (its value), and for a histogram ``.../le=<upper bound>`` (observations in that bucket
    alone, not cumulative) and ``.../sum_us``. Only non-zero values are listed (absent = 0).
    """
    out: dict[str, int] = {}
    for attribute in FORWARDED:
        metric = getattr(metrics, attribute)
        base = PREFIX + attribute
        for family in metric.collect():
            below: dict[tuple[str, ...], float] = {}
            for sample in family.samples:
                labels = tuple(v for k, v in sample.labels.items() if k != "le")
                key = "/".join((base, *labels))
                suffix = sample.name[len(family.name) :]
                if family.type == "histogram":
                    if suffix == "_bucket":  # cumulative in the exposition: back to per bucket
                        count = sample.value - below.get(labels, 0.0)
                        below[labels] = sample.value
                        value = int(count)
                        key = f"{key}/le={sample.labels['le']}"
                    elif suffix == "_sum":
                        value = round(sample.value * _SUM_UNIT)
                        key = f"{key}/sum_us"
                    else:
                        continue
                elif suffix in ("", "_total"):
                    value = int(sample.value)
                else:
                    continue  # _created
                if value:
                    out[key] = value
    return out


class ForwardedPipelineMetrics:
    """Main's side: adds each call worker's forwarded pipeline totals to main's metrics.

    Counters and histograms grow by the difference with the worker's previous STATS (a total
    that went down is a new base and adds nothing); gauges move by the difference too, and a
    lost worker's gauge values are taken back (its sessions are gone). Keys that name no
    forwarded metric, a wrong number of label values or an unknown bucket are counted in
    :attr:`rejected` and skipped.

    Args:
        metrics: main's metrics.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._last: dict[str, dict[str, int]] = {}
        self.rejected = 0

    def update(self, worker_id: str, counters: Mapping[str, int]) -> None:
        """Feed one STATS record of ``worker_id``."""
        last = self._last.setdefault(worker_id, {})
        seen = set()
        for key, value in counters.items():
            if not key.startswith(PREFIX):
                continue
            seen.add(key)
            previous = last.get(key, 0)
            if value == previous:
                continue
            last[key] = value
            self._apply(key, value - previous)
        for key in [k for k in last if k not in seen]:  # absent = 0 (a gauge back to zero)
            previous = last.pop(key)
            self._apply(key, -previous)

    def forget(self, worker_id: str) -> None:
        """The worker is gone: take its gauges back; its replacement counts from zero."""
        for key, value in self._last.pop(worker_id, {}).items():
            metric = getattr(self._metrics, key[len(PREFIX) :].split("/", 1)[0], None)
            if isinstance(metric, Gauge):
                self._apply(key, -value)

    def _apply(self, key: str, delta: int) -> None:
        attribute, *labels = key[len(PREFIX) :].split("/")
        metric = getattr(self._metrics, attribute, None) if attribute in FORWARDED else None
        if isinstance(metric, Gauge):
            if not labels:
                metric.inc(delta)
                return
        elif delta < 0:
            return  # a counter or bucket total that went down: the new base, nothing counted
        elif isinstance(metric, Counter):
            if len(labels) == len(metric._labelnames):
                (metric.labels(*labels) if labels else metric).inc(delta)
                return
        elif isinstance(metric, Histogram) and labels:
            *values, field = labels
            if len(values) == len(metric._labelnames) and _add_to_histogram(
                metric.labels(*values), field, delta
            ):
                return
        self.rejected += 1


def _add_to_histogram(child: Histogram, field: str, delta: int) -> bool:
    """Add ``delta`` observations to one bucket (``le=<bound>``) or ``delta`` microseconds to
    the sum of a histogram child. prometheus_client has no public call for this (``observe``
    takes one value); its per-bucket values are what ``observe`` increments, and
    tests/unit/test_worker_metrics.py checks that main's exposition equals the worker's."""
    if field == "sum_us":
        child._sum.inc(delta / _SUM_UNIT)
        return True
    if not field.startswith("le="):
        return False
    try:
        bound = float(field[3:])  # as exposed: "0.5", "+Inf"
    except ValueError:
        return False
    for index, upper in enumerate(child._upper_bounds):
        if upper == bound:
            child._buckets[index].inc(delta)
            return True
    return False
