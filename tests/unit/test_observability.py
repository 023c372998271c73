"""Logging setup: standard-library records (aiohttp, asyncio, warnings) join the structlog stream
in its format, one line each."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

SCRIPT = """
import logging, warnings
from sipserver.observability import configure_logging, get_logger, log_settings
configure_logging("json", "info")
print(log_settings(), flush=True)
get_logger("own").info("own_event", n=1)
logging.getLogger("aiohttp.server").warning("Error handling %s", "request", extra={"peer": "x"})
logging.getLogger("lib").info("names taken", extra={"event": "e", "level": "l"})
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
logging.getLogger("quiet").debug("below the level")
warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
"""


def test_stdlib_records_and_warnings_become_json_lines() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == "('json', 'info')"
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    assert [(e["module"], e["event"][:26]) for e in events] == [
        ("own", "own_event"),
        ("aiohttp.server", "Error handling request"),
        ("lib", "names taken"),
        ("asyncio", "Task exception was never r"),
        ("py.warnings", events[4]["event"][:26]),
    ]
    assert events[1]["peer"] == "x" and events[1]["level"] == "warning"
    # extra= fields named like the log call's own arguments are kept, renamed
    assert (events[2]["event_"], events[2]["level_"], events[2]["level"]) == ("e", "l", "info")
    assert "ZeroDivisionError" in events[3]["exception"]  # inside the one JSON object
    assert "deprecated thing" in events[4]["event"]


def test_event_loop_tasks_gauge_counts_the_tasks_alive_at_each_scrape() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from sipserver.observability import Metrics

    metrics = Metrics()

    def tasks() -> float:
        for family in text_string_to_metric_families(metrics.render().decode()):
            for sample in family.samples:
                if sample.name == "sipserver_event_loop_tasks":
                    return float(sample.value)
        raise AssertionError("sipserver_event_loop_tasks not exported")

    async def main() -> tuple[float, float, float]:
        metrics.count_tasks_of(asyncio.get_running_loop())
        alone = tasks()  # main() itself
        stop = asyncio.Event()
        waiting = [asyncio.create_task(stop.wait()) for _ in range(5)]
        await asyncio.sleep(0)
        with_five = tasks()
        stop.set()
        await asyncio.gather(*waiting)
        return alone, with_five, tasks()

    assert asyncio.run(main()) == (1.0, 6.0, 1.0)


def test_loop_counter_exports_what_a_prometheus_counter_would() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from sipserver.observability import LoopCounter

    reference, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("x_messages", "Messages.", ["transport", "status"], registry=reference)
    loop = LoopCounter("x_messages", "Messages.", ("transport", "status"), registry=ours)
    for transport, status in [("udp", 200), ("udp", 200), ("tcp", 401)]:
        counter.labels(transport, str(status)).inc()
        loop.inc((transport, status))
    assert loop.value(("udp", 200)) == 2 and loop.value(("tls", 200)) == 0

    def samples(registry: CollectorRegistry) -> list[str]:
        # The _created values differ by the microseconds between the two increments.
        lines = generate_latest(registry).decode().splitlines()
        return sorted(line.rsplit(" ", 1)[0] if "_created{" in line else line for line in lines)

    assert samples(ours) == samples(reference)
    assert ours.get_sample_value("x_messages_total", {"transport": "udp", "status": "200"}) == 2
    # The registry still refuses a second metric of the same name.
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("x_messages", "Again.", ("a",), registry=ours)


def test_info_and_debug_logged_follow_the_configured_level() -> None:
    from sipserver.observability import configure_logging, debug_logged, info_logged

    try:
        configure_logging("json", "warning")
        assert not info_logged() and not debug_logged()
        configure_logging("json", "info")
        assert info_logged() and not debug_logged()
        configure_logging("json", "debug")
        assert info_logged() and debug_logged()
    finally:
        configure_logging("json", "info")
