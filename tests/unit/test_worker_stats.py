"""The call workers' STATS totals become Prometheus counters (deltas), by engine."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sipserver.rtp.worker_stats import SOURCES, MediaStatsMetrics, MediaTotals


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_pjsua2_totals_feed_frames_and_late_frames_as_deltas() -> None:
    reg = CollectorRegistry()
    m = MediaStatsMetrics(reg)
    m.update("pjsua2-0", "pjsua2", {"tx_frames": 500, "tx_underflow": 2, "calls": 4})
    m.update("pjsua2-0", "pjsua2", {"tx_frames": 1500, "tx_underflow": 3, "calls": 4})
    m.update("pjsua2-1", "pjsua2", {"tx_frames": 100, "tx_underflow": 0})
    assert value(reg, "sipserver_media_frames_total", engine="pjsua2") == 1600
    assert value(reg, "sipserver_media_late_frames_total", engine="pjsua2") == 3
    # No RTP counters in these STATS: nothing is made up.
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="pjsua2") == 0
    m.update("pjsua2-1", "pjsua2", {"rtp_received": 90, "rtp_lost": 3, "concealed_frames": 4})
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="pjsua2") == 3
    assert value(reg, "sipserver_rtp_concealed_frames_total", engine="pjsua2") == 4


def test_native_keys_and_a_restarted_worker() -> None:
    reg = CollectorRegistry()
    m = MediaStatsMetrics(reg)
    stats = {
        "frames": 3000, "late_frames": 0, "late_ticks": 0, "rtp_received": 2990,
        "rtp_lost": 10, "rtp_late": 1, "concealed_frames": 11, "jitter_ms_max": 7,
    }  # fmt: skip
    m.update("w0", "native", stats)
    assert value(reg, "sipserver_rtp_packets_received_total", engine="native") == 2990
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="native") == 10
    assert value(reg, "sipserver_rtp_packets_late_total", engine="native") == 1
    assert value(reg, "sipserver_rtp_concealed_frames_total", engine="native") == 11
    assert value(reg, "sipserver_rtp_jitter_max_ms") == 7
    # A total that goes down (not a running total): the new base, nothing counted twice.
    m.update("w0", "native", {"rtp_lost": 4, "jitter_ms_max": 3})
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="native") == 10
    m.update("w0", "native", {"rtp_lost": 6})
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="native") == 12
    assert value(reg, "sipserver_rtp_jitter_max_ms") == 3
    # The worker was lost: its replacement (same id) counts from zero.
    m.forget("w0")
    assert value(reg, "sipserver_rtp_jitter_max_ms") == 0
    m.update("w0", "native", {"rtp_lost": 1})
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="native") == 13


def test_native_stream_names_are_read_when_the_documented_ones_are_absent() -> None:
    reg = CollectorRegistry()
    m = MediaStatsMetrics(reg)
    m.update("w1", "native", {"received": 100, "lost": 2, "late": 1, "sent": 99})
    assert value(reg, "sipserver_rtp_packets_received_total", engine="native") == 100
    assert value(reg, "sipserver_rtp_packets_lost_total", engine="native") == 2
    assert value(reg, "sipserver_rtp_packets_late_total", engine="native") == 1
    assert value(reg, "sipserver_media_frames_total", engine="native") == 99


def test_unknown_engine_and_odd_values_are_ignored() -> None:
    reg = CollectorRegistry()
    m = MediaStatsMetrics(reg)
    m.update("x", "other", {"frames": 10})
    m.update("y", "native", {"frames": "ten", "late_frames": True})
    assert value(reg, "sipserver_media_frames_total", engine="native") == 0
    assert set(SOURCES) == {"pjsua2", "native"}


def test_counters_are_exported_from_the_first_stats_even_at_zero() -> None:
    reg = CollectorRegistry()
    MediaStatsMetrics(reg).update("w0", "native", {"frames": 10, "late_frames": 0})
    assert reg.get_sample_value("sipserver_media_late_frames_total", {"engine": "native"}) == 0
    assert value(reg, "sipserver_media_frames_total", engine="native") == 10


class Stream:
    def __init__(self, **counters: int) -> None:
        self.counters = counters

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


def test_native_totals_keep_ended_calls_and_never_go_down() -> None:
    totals = MediaTotals()
    a = Stream(received=100, lost=2, late=1, concealed_frames=3, sent=99, jitter_ms=9, latched=1)
    b = Stream(received=50, lost=0, late=0, concealed_frames=0, sent=50, jitter_ms=4, latched=1)

    def engine_sum(*live: Stream) -> dict[str, int]:  # as NativeEngine.stats sums live streams
        out: dict[str, int] = {"calls": len(live)}
        for s in live:
            for k, v in s.stats().items():
                if k != "jitter_ms":
                    out[k] = out.get(k, 0) + v
        return out

    totals.frames_played(2, late=False)
    totals.frames_played(2, late=True)
    before = totals.totals(engine_sum(a, b), [a, b])
    assert before["rtp_received"] == 150 and before["rtp_lost"] == 2
    assert before["frames"] == 4 and before["late_frames"] == 2
    assert before["jitter_ms_max"] == 9
    totals.call_ended(a)  # the engine no longer sums it
    after = totals.totals(engine_sum(b), [b])
    for key in ("rtp_received", "rtp_lost", "rtp_late", "concealed_frames", "sent", "frames"):
        assert after[key] == before[key], key
    assert after["latched"] == 1 and after["jitter_ms_max"] == 4  # states: the live call's
    assert after["calls"] == 1
    totals.call_ended(b)
    final = totals.totals(engine_sum(), [])
    assert final["rtp_received"] == 150 and final["jitter_ms_max"] == 0
    assert "latched" not in final
    # Fed to main: nothing goes backwards.
    reg = CollectorRegistry()
    m = MediaStatsMetrics(reg)
    for stats in (before, after, final):
        m.update("w0", "native", stats)
    assert value(reg, "sipserver_rtp_packets_received_total", engine="native") == 150
    assert value(reg, "sipserver_rtp_concealed_frames_total", engine="native") == 3
