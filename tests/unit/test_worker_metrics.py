"""A call worker's voice pipeline metrics: STATS keys out of the worker, main's metrics in."""

from __future__ import annotations

from prometheus_client import generate_latest

from sipserver.observability import Metrics
from sipserver.rtp.worker_metrics import ForwardedPipelineMetrics, pipeline_totals


def pipeline_lines(metrics: Metrics) -> list[str]:
    """The exposition lines of the forwarded metrics, ``_created`` timestamps left out."""
    text = generate_latest(metrics.registry).decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith(("sipserver_voice_turn_latency", "sipserver_voice_interruptions"))
        and "_created" not in line
    ]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def observe_turns(metrics: Metrics, latencies: list[float]) -> None:
    for seconds in latencies:
        metrics.voice_turn_latency.labels("first_frame").observe(seconds)
        metrics.voice_turn_latency.labels("end_of_turn").observe(seconds / 3)


def test_totals_are_flat_integer_keys_per_bucket() -> None:
    worker = Metrics()
    assert pipeline_totals(worker) == {}  # nothing observed, nothing sent
    observe_turns(worker, [0.42, 0.45, 7.0])
    worker.voice_interruptions.labels("paused").inc(2)
    worker.voice_provider_errors.labels("tts").inc()
    worker.voice_turn_predictions.labels("skipped_question").inc(4)
    worker.voice_sessions_active.inc(3)
    totals = pipeline_totals(worker)
    assert totals["pipeline/voice_turn_latency/first_frame/le=0.5"] == 2  # not cumulative
    assert totals["pipeline/voice_turn_latency/first_frame/le=+Inf"] == 1
    assert "pipeline/voice_turn_latency/first_frame/le=1.0" not in totals  # zero: absent
    assert totals["pipeline/voice_turn_latency/first_frame/sum_us"] == 7_870_000
    assert totals["pipeline/voice_interruptions/paused"] == 2
    assert totals["pipeline/voice_provider_errors/tts"] == 1
    assert totals["pipeline/voice_turn_predictions/skipped_question"] == 4
    assert totals["pipeline/voice_sessions_active"] == 3
    assert all(isinstance(v, int) for v in totals.values())  # STATS values are integers


def test_main_shows_what_the_worker_observed_across_several_stats() -> None:
    worker, main = Metrics(), Metrics()
    forwarded = ForwardedPipelineMetrics(main)
    main.voice_turn_latency.labels("first_frame").observe(0.25)  # main's own calls (pjsua2)
    observe_turns(worker, [0.42, 1.3])
    worker.voice_interruptions.labels("interrupted").inc()
    forwarded.update("w0", pipeline_totals(worker))
    forwarded.update("w0", pipeline_totals(worker))  # the same totals again: nothing added
    observe_turns(worker, [0.1, 2.5])
    forwarded.update("w0", pipeline_totals(worker))
    # Main = its own observation + every one of the worker's, bucket by bucket, sum included.
    expected = Metrics()
    for seconds in (0.42, 1.3, 0.1, 2.5):
        observe_turns(expected, [seconds])
    expected.voice_turn_latency.labels("first_frame").observe(0.25)
    expected.voice_interruptions.labels("interrupted").inc()
    assert pipeline_lines(main) == pipeline_lines(expected)
    assert value(main, "sipserver_voice_turn_latency_seconds_count", stage="first_frame") == 5
    assert forwarded.rejected == 0


def test_two_workers_gauges_and_a_lost_worker() -> None:
    main = Metrics()
    forwarded = ForwardedPipelineMetrics(main)
    main.voice_sessions_active.inc()  # a session of main's own
    forwarded.update("w0", {"pipeline/voice_sessions_active": 2, "calls": 2})
    forwarded.update("w1", {"pipeline/voice_sessions_active": 3})
    assert value(main, "sipserver_voice_sessions_active") == 6
    forwarded.update("w1", {"pipeline/voice_sessions_active": 1})
    assert value(main, "sipserver_voice_sessions_active") == 4
    forwarded.update("w0", {})  # the gauge is back to zero (zero values are not sent)
    assert value(main, "sipserver_voice_sessions_active") == 2
    forwarded.update("w0", {"pipeline/voice_interruptions/paused": 4})
    forwarded.forget("w1")  # lost: its sessions are gone, its counters stay counted
    assert value(main, "sipserver_voice_sessions_active") == 1
    forwarded.forget("w0")
    assert value(main, "sipserver_voice_interruptions_total", kind="paused") == 4
    # The replacement (same id) counts from zero.
    forwarded.update("w0", {"pipeline/voice_interruptions/paused": 1})
    assert value(main, "sipserver_voice_interruptions_total", kind="paused") == 5


def test_a_total_that_goes_down_counts_nothing_and_bad_keys_are_rejected() -> None:
    main = Metrics()
    forwarded = ForwardedPipelineMetrics(main)
    forwarded.update("w0", {"pipeline/voice_provider_errors/llm": 5})
    forwarded.update("w0", {"pipeline/voice_provider_errors/llm": 2})  # new base
    forwarded.update("w0", {"pipeline/voice_provider_errors/llm": 3})
    assert value(main, "sipserver_voice_provider_errors_total", stage="llm") == 6
    forwarded.update(
        "w0",
        {
            "pipeline/registrations_active": 3,  # not a forwarded metric
            "pipeline/voice_provider_errors": 1,  # a label value missing
            "pipeline/voice_turn_latency/first_frame/le=0.33": 1,  # not a bucket of ours
            "pipeline/voice_turn_latency/first_frame/count": 1,  # not a field
        },
    )
    assert forwarded.rejected == 4
    assert value(main, "sipserver_registrations_active") == 0
    assert value(main, "sipserver_voice_turn_latency_seconds_count", stage="first_frame") == 0
