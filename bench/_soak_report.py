"""bench/soak.py's statistics and report: percentiles, probe windows, the summary, the table
and the output files. Functions on plain data (tested in tests/unit/test_soak_report.py)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOAD_COUNTERS",
    "ProbeWindow",
    "format_row",
    "header",
    "machine",
    "percentile",
    "print_summary",
    "slope",
    "summarize",
    "write_outputs",
]

LOAD_COUNTERS = (
    "reg_ok", "reg_failed", "sip_ok", "sip_failed", "sip_voice_ok", "sip_voice_failed",
    "ws_ok", "ws_failed", "ws_refused", "ws_voice_ok", "ws_voice_failed", "ws_voice_refused",
)  # fmt: skip
"""The work the load did, per sample (``reg`` REGISTER, ``sip``/``ws`` calls to the echo line,
``*_voice`` calls to the voice agent): completed, failed, refused (websocket 503 or 1013)."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 1]) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class ProbeWindow:
    """The outcomes of one probe kind over a stretch of time."""

    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: ProbeWindow) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        self.timeouts += other.timeouts
        self.errors.update(other.errors)

    def figures(self) -> dict[str, Any]:
        """p50, p99 and max latency (ms, None when nothing answered), count, timeouts, errors."""
        lat = self.latencies_ms
        return {
            "p50_ms": _round(percentile(lat, 0.50)),
            "p99_ms": _round(percentile(lat, 0.99)),
            "max_ms": _round(max(lat) if lat else None),
            "answered": len(lat),
            "timeouts": self.timeouts,
            "errors": sum(self.errors.values()),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(x, y)`` points; None with fewer than 3 or all at one x."""
    if len(points) < 3:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def summarize(samples: list[dict[str, Any]], whole_run: dict[str, ProbeWindow]) -> dict[str, Any]:
    """The run's summary from its samples (``phase`` idle, load or after) and all probe outcomes.

    RSS and fds: idle (before the load), first loaded sample, peak, end (after the load drained),
    and for RSS the slope over the second half of the load (MB per minute: a leak keeps it above
    zero once the models are loaded and every kind of call has come and gone); each probe: its
    figures over the whole run and the worst interval p99.
    """
    load = [s for s in samples if s["phase"] == "load"]
    idle = next((s for s in samples if s["phase"] == "idle"), samples[0] if samples else {})
    end = samples[-1] if samples else {}

    def span(key: str) -> dict[str, Any]:
        values = [s[key] for s in samples if s.get(key) is not None]
        return {
            "idle": idle.get(key),
            "first_loaded": load[0].get(key) if load else None,
            "peak": max(values) if values else None,
            "end": end.get(key),
        }

    def second_half_slope(key: str) -> float | None:
        half = load[len(load) // 2 :]
        points = [(s["t"] / 60, s[key]) for s in half if s.get(key) is not None]
        per_minute = slope(points)
        return None if per_minute is None else round(per_minute, 2)

    probes: dict[str, Any] = {}
    for kind, window in whole_run.items():
        worst = [s[f"{kind}_p99_ms"] for s in load if s.get(f"{kind}_p99_ms") is not None]
        probes[kind] = {
            **window.figures(),
            "worst_interval_p99_ms": max(worst) if worst else None,
            "error_kinds": dict(window.errors),
        }
    totals = {key: sum(int(s.get(key) or 0) for s in samples) for key in LOAD_COUNTERS}
    return {
        "rss_mb": {**span("rss_mb"), "second_half_mb_per_min": second_half_slope("rss_mb")},
        "children_rss_mb": {
            **span("children_rss_mb"),
            "second_half_mb_per_min": second_half_slope("children_rss_mb"),
        },
        "fds": span("fds"),
        "tasks": span("tasks"),
        "probes": probes,
        "completed": totals,
        "calls_active_end": end.get("calls_active"),
        "ws_calls_active_end": end.get("ws_calls_active"),
    }


COLUMNS = (
    ("t", "{:>6.0f}", "t s"), ("rss_mb", "{:>7.1f}", "rss MB"),
    ("children_rss_mb", "{:>7.1f}", "kids MB"), ("fds", "{:>5}", "fds"),
    ("cpu_pct", "{:>5.0f}", "cpu%"), ("tasks", "{:>6.0f}", "tasks"),
    ("calls_active", "{:>5.0f}", "calls"), ("ws_calls_active", "{:>4.0f}", "ws"),
    ("refusals", "{:>5.0f}", "refus"), ("reg_per_s", "{:>6.1f}", "reg/s"),
    ("sip_done", "{:>5}", "sip+"), ("ws_done", "{:>4}", "ws+"), ("errors", "{:>4}", "err"),
    ("options_udp_p99_ms", "{:>7.1f}", "udp p99"), ("options_tcp_p99_ms", "{:>7.1f}", "tcp p99"),
    ("readyz_p99_ms", "{:>7.1f}", "rdy p99"), ("client_cpu_pct", "{:>5.0f}", "me%"),
)  # fmt: skip


def format_row(sample: dict[str, Any]) -> str:
    """One line of the table (:data:`COLUMNS`); a value not measured shows as ``-``."""
    cells = []
    for (key, fmt, _), width in zip(COLUMNS, _widths(), strict=True):
        value = sample.get(key)
        cells.append(fmt.format(value) if value is not None else f"{'-':>{width}}")
    return " ".join(cells) + ("" if sample["phase"] == "load" else f"  ({sample['phase']})")


def header() -> str:
    """The table's column heads, aligned with :func:`format_row`."""
    return " ".join(f"{head:>{w}}" for (_, _, head), w in zip(COLUMNS, _widths(), strict=True))


def _widths() -> list[int]:
    return [max(len(fmt.format(0)), len(head)) for _, fmt, head in COLUMNS]


def print_summary(summary: dict[str, Any]) -> None:
    def trio(span: dict[str, Any]) -> str:
        return "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in span.items())

    print("\nsummary")
    print(f"  RSS main MB:      {trio(summary['rss_mb'])}")
    print(f"  RSS children MB:  {trio(summary['children_rss_mb'])}")
    print(f"  open fds:         {trio(summary['fds'])}")
    print(f"  asyncio tasks:    {trio(summary['tasks'])}")
    for kind, p in summary["probes"].items():
        print(
            f"  {kind:<12} p50 {p['p50_ms']} ms  p99 {p['p99_ms']} ms  max {p['max_ms']} ms  "
            f"worst interval p99 {p['worst_interval_p99_ms']} ms  answered {p['answered']}  "
            f"timeouts {p['timeouts']}  errors {p['errors']} {p['error_kinds'] or ''}"
        )
    c = summary["completed"]
    print(f"  REGISTER:         ok {c['reg_ok']}  failed {c['reg_failed']}")
    print(
        f"  SIP calls:        echo ok {c['sip_ok']} failed {c['sip_failed']}  "
        f"voice ok {c['sip_voice_ok']} failed {c['sip_voice_failed']}"
    )
    print(
        f"  websocket calls:  echo ok {c['ws_ok']} failed {c['ws_failed']} "
        f"refused {c['ws_refused']}  voice ok {c['ws_voice_ok']} failed "
        f"{c['ws_voice_failed']} refused {c['ws_voice_refused']}"
    )
    if summary.get("ws_failures"):
        print(f"  websocket failures: {summary['ws_failures']}")
    print(f"  refusals by ingress/reason: {summary.get('refusals') or 'none'}")
    print(
        f"  after the load: calls_active {summary['calls_active_end']}  "
        f"ws_calls_active {summary['ws_calls_active_end']}"
    )
    print(f"  server log lines by level: {summary['log_levels']}")
    if summary["log_warnings"]:
        print(f"  warnings/errors by event: {summary['log_warnings']}")


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    """The whole result as JSON at ``out``; the samples as CSV next to it (``.csv``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    samples: list[dict[str, Any]] = result["samples"]
    keys = list(dict.fromkeys(k for s in samples for k in s if k != "refusals_by_reason"))
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(samples)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
