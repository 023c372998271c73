"""Counters for the per-message path, compiled with the signalling modules (hatch_build.py).

:class:`LoopCounter` is a labelled Prometheus counter whose increment is a dictionary update;
:mod:`sipserver.observability` builds the server's on its registry, and the edge's compiled
router and REGISTER handler call them directly.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily

__all__ = ["KNOWN_METHODS", "LoopCounter", "method_label"]

#: Method labels counted as themselves (``RESPONSE`` stands for a response); anything else is
#: counted as ``OTHER`` so that a scanner sending random method names cannot blow up the metric's
#: cardinality.
KNOWN_METHODS: Final = frozenset(
    {
        "REGISTER",
        "OPTIONS",
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "INFO",
        "UPDATE",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "MESSAGE",
        "REFER",
        "RESPONSE",
    }
)


def method_label(method: str) -> str:
    """The ``method`` label of a received message: the method, or ``OTHER``."""
    return method if method in KNOWN_METHODS else "OTHER"


class LoopCounter:
    """A labelled Prometheus counter for the event loop's per-message path.

    :meth:`inc` adds one to the key's count in place: prometheus_client's ``Counter.inc`` runs
    four Python calls and takes a lock (six per registration at the edge); this is one compiled
    dictionary lookup. The counts are exported when the registry is read, with the name, help,
    labels and ``_created`` samples a ``Counter`` would have. Call :meth:`inc` from one thread
    (the event loop's); reading from another (``/metrics``) is safe.

    Args:
        name: the metric name without ``_total``.
        documentation: its help text.
        labelnames: the label names; a key passed to :meth:`inc` holds their values in order
            (ints are exported as their decimal text).
        registry: where it is exported.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        # A one-element list per key: an increment looks the key up once and bumps the list's
        # item, where `counts[key] = value + 1` hashed the key tuple a second time to store it.
        self._counts: dict[tuple[str | int, ...], list[int]] = {}
        self._created: dict[tuple[str | int, ...], float] = {}
        registry.register(self)

    def inc(self, key: tuple[str | int, ...]) -> None:
        """Count one for the label values ``key``."""
        cell = self._counts.get(key)
        if cell is None:
            self._created[key] = time.time()
            self._counts[key] = [1]
            return
        cell[0] += 1

    def value(self, key: tuple[str | int, ...]) -> int:
        """The count for ``key`` (0 before the first)."""
        cell = self._counts.get(key)
        return 0 if cell is None else cell[0]

    def describe(self) -> list[CounterMetricFamily]:
        """The family without samples: what the registry checks names against."""
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[CounterMetricFamily]:
        """The family with a sample per key counted so far."""
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        # One C-level copy under the GIL: the loop cannot add a key halfway through.
        for key, cell in list(self._counts.items()):
            family.add_metric([str(v) for v in key], cell[0], created=self._created.get(key))
        return [family]
