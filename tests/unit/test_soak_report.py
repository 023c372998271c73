"""bench/soak.py's statistics and report helpers (the soak itself is run by hand)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench._soak_report import (
    LOAD_COUNTERS,
    ProbeWindow,
    format_row,
    header,
    percentile,
    slope,
    summarize,
    write_outputs,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
    # Few values: p99 is the largest (no interpolation beyond what was measured).
    assert percentile([1.0, 2.0, 30.0], 0.99) == 30.0


def test_slope_is_least_squares_per_unit_of_x() -> None:
    assert slope([(0.0, 100.0), (1.0, 102.0), (2.0, 104.0)]) == 2.0
    assert slope([(0.0, 5.0), (1.0, 9.0), (2.0, 5.0), (3.0, 9.0)]) == 0.8
    assert slope([(0.0, 1.0), (1.0, 2.0)]) is None  # too few to call a trend
    assert slope([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]) is None


def test_probe_window_figures_and_merge() -> None:
    a = ProbeWindow([1.0, 2.0, 3.0])
    a.timeouts = 1
    b = ProbeWindow([10.0])
    b.errors["OPTIONS answered 503"] += 2
    a.merge(b)
    assert a.figures() == {
        "p50_ms": 2.0,
        "p99_ms": 10.0,
        "max_ms": 10.0,
        "answered": 4,
        "timeouts": 1,
        "errors": 2,
    }
    assert ProbeWindow().figures()["p99_ms"] is None


def _sample(phase: str, rss: float, fds: int, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "t": 0.0, "rss_mb": rss, "children_rss_mb": 50.0, "fds": fds,
            "tasks": 10.0, **dict.fromkeys(LOAD_COUNTERS, 0), **extra}  # fmt: skip


def test_summary_spans_worst_interval_and_totals() -> None:
    samples = [
        _sample("idle", 300.0, 20, options_udp_p99_ms=1.0),
        _sample("load", 400.0, 28, options_udp_p99_ms=5.0, reg_ok=200, sip_ok=2, ws_failed=1),
        _sample("load", 450.0, 30, options_udp_p99_ms=80.0, reg_ok=200, ws_ok=4),
        _sample("load", 420.0, 28, options_udp_p99_ms=None, reg_ok=100, ws_refused=3),
        _sample("after", 410.0, 21, calls_active=0.0, ws_calls_active=0.0),
    ]
    whole = {"options_udp": ProbeWindow([1.0, 5.0, 80.0])}
    summary = summarize(samples, whole)
    rss = summary["rss_mb"]
    assert (rss["idle"], rss["first_loaded"], rss["peak"], rss["end"]) == (
        300.0,
        400.0,
        450.0,
        410.0,
    )
    assert summary["fds"] == {"idle": 20, "first_loaded": 28, "peak": 30, "end": 21}
    udp = summary["probes"]["options_udp"]
    assert udp["worst_interval_p99_ms"] == 80.0  # the idle sample's 1.0 is not a load interval
    assert udp["p99_ms"] == 80.0 and udp["answered"] == 3
    done = summary["completed"]
    assert (done["reg_ok"], done["sip_ok"], done["ws_ok"]) == (500, 2, 4)
    assert (done["ws_failed"], done["ws_refused"]) == (1, 3)
    assert summary["calls_active_end"] == 0.0


def test_table_rows_line_up_with_the_header_and_show_missing_values() -> None:
    full = _sample("load", 412.3, 28, cpu_pct=35.0, calls_active=3.0, options_udp_p99_ms=4.2)
    missing = {"phase": "after", "t": 60.0}  # metrics unreadable: every other cell is "-"
    assert len(format_row(full)) == len(header())
    row = format_row(missing)
    assert row.startswith("    60") and row.endswith("(after)")
    assert "412.3" in format_row(full) and "4.2" in format_row(full)


def test_outputs_are_json_and_csv(tmp_path: Path) -> None:
    samples = [_sample("idle", 300.0, 20, refusals_by_reason={"ws/server_full": 2.0})]
    out = tmp_path / "run" / "soak.json"
    write_outputs(out, {"settings": {"minutes": 1}, "samples": samples, "summary": {"x": 1}})
    data = json.loads(out.read_text())
    assert data["samples"][0]["refusals_by_reason"] == {"ws/server_full": 2.0}
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["rss_mb"] == "300.0" and rows[0]["phase"] == "idle"
    assert "refusals_by_reason" not in rows[0]  # nested: in the JSON only
