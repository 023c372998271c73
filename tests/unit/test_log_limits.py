"""The log's per-kind rate limit and the refusal log (observability)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from sipserver.observability import LogRateLimit, Metrics, RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(limit: LogRateLimit, event: str) -> dict[str, Any] | None:
    try:
        return dict(limit(None, "info", {"event": event}))
    except structlog.DropEvent:
        return None


def test_a_flood_of_one_kind_writes_the_burst_then_the_rate() -> None:
    clock = Clock()
    limit = LogRateLimit(per_second=2, burst=5, clock=clock)
    written = [_run(limit, "tcp_accept_failed") for _ in range(1000)]
    assert sum(w is not None for w in written) == 5
    # Another kind is not held back by the flood.
    assert _run(limit, "call_ended") is not None
    clock.now += 1.0  # two lines' worth of tokens
    first = _run(limit, "tcp_accept_failed")
    assert first is not None and first["suppressed"] == 995
    second = _run(limit, "tcp_accept_failed")
    assert second is not None and "suppressed" not in second
    assert _run(limit, "tcp_accept_failed") is None


def test_the_bucket_refills_only_to_the_burst() -> None:
    clock = Clock()
    limit = LogRateLimit(per_second=10, burst=3, clock=clock)
    clock.now += 3600
    assert sum(_run(limit, "x") is not None for _ in range(10)) == 3


def test_refusals_are_all_counted_and_logged_once_per_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = Metrics()
    clock = Clock()
    refusals = RefusalLog(metrics, interval=10.0, clock=clock)
    lines: list[dict[str, Any]] = []
    refusals._log = structlog.wrap_logger(
        None, processors=[lambda _l, _m, e: lines.append(dict(e)) or ""], wrapper_class=None
    )  # type: ignore[assignment]
    for _ in range(50):
        refusals.refuse("websocket", "server_full", source="127.0.0.1")
    refusals.refuse("sip", "agent_full")
    assert [(x["ingress"], x["reason"], x["count"]) for x in lines] == [
        ("websocket", "server_full", 1),
        ("sip", "agent_full", 1),
    ]
    clock.now += 10.0
    refusals.refuse("websocket", "server_full", source="127.0.0.2")
    assert lines[-1]["count"] == 50 and lines[-1]["source"] == "127.0.0.2"
    value = metrics.registry.get_sample_value(
        "sipserver_refusals_total", {"ingress": "websocket", "reason": "server_full"}
    )
    assert value == 51
