"""Media metrics of native call workers in main's /metrics: frames played, late frames, RTP
packets lost and frames concealed (per call-minute: a counter's increase over frames / 3000).

Peer: SIPp through the edge, replaying a PCMU pcap with packets cut out (a lossy caller,
tests/sipp_scenarios/uac_edge_call_lossy.xml).
"""

from __future__ import annotations

import itertools
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import SCENARIOS, ServerProcess
from tests.integration.test_call_worker import native
from tests.integration.test_calls import edge_call, wait_metric

pytestmark = pytest.mark.integration


def rtp_packets(pcap: Path) -> tuple[int, int]:
    """The RTP packets of a capture (Ethernet/IPv4/UDP/RTP, no IP options) and how many are
    missing between them (sequence gaps)."""
    data, at, seqs = pcap.read_bytes(), 24, []
    while at < len(data):
        (length,) = struct.unpack_from("<I", data, at + 8)
        (seq,) = struct.unpack_from("!H", data, at + 16 + 14 + 20 + 8 + 2)
        seqs.append(seq)
        at += 16 + length
    return len(seqs), sum(b - a - 1 for a, b in itertools.pairwise(seqs))


def test_a_lossy_sipp_call_shows_in_the_media_metrics_after_it_ended(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory(native())
    wait_metric(server, "sipserver_media_workers_up", 1)
    packets, missing = rtp_packets(SCENARIOS / "pcap" / "pcmu_tone_lossy.pcap")
    assert (packets, missing) == (135, 14)  # and the last one: no gap after it to see
    edge_call(server, tmp_path, "uac_edge_call_lossy.xml")
    wait_metric(server, "sipserver_calls_ended_total", 1, reason="caller_bye")
    # The call is over: its counters still reach main (STATS are running totals, ended calls
    # included; the first STATS after the call may well come after its end).
    labels = {"engine": "native"}
    wait_metric(server, "sipserver_rtp_packets_received_total", 100, **labels)
    frames = server.metric("sipserver_media_frames_total", **labels)
    received = server.metric("sipserver_rtp_packets_received_total", **labels)
    lost = server.metric("sipserver_rtp_packets_lost_total", **labels)
    concealed = server.metric("sipserver_rtp_concealed_frames_total", **labels)
    late = server.metric("sipserver_media_late_frames_total", **labels)
    print(f"frames {frames}, received {received}, lost {lost} (missing {missing}), "
          f"concealed {concealed}, late frames {late}")  # fmt: skip
    assert frames >= 100  # 3 s of audio: ~150 frames played back to the caller
    assert received == packets  # loopback: nothing lost on the way
    assert 1 <= lost <= missing  # a gap is seen once the packet after it is there
    assert concealed >= lost
    text = server.metrics()
    for name in ("sipserver_media_late_frames_total", "sipserver_media_late_ticks_total"):
        assert f'{name}{{engine="native"}}' in text, name
    # The next STATS repeat the same totals: nothing counts twice.
    sent = server.get("/status")[1]["media_workers"][0]["stats"]["stats_sent"]
    newer = wait_stats_after(server, sent)
    assert newer["rtp_lost"] == lost
    assert server.metric("sipserver_rtp_packets_lost_total", **labels) == lost
    assert server.metric("sipserver_media_frames_total", **labels) == frames


def wait_stats_after(server: ServerProcess, sent: int) -> dict[str, int]:
    """The worker's STATS once a newer one than the ``sent``-th arrived (an idle worker's
    clock stands still: its ``ticks`` do not tell one STATS from the next)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats: dict[str, int] = server.get("/status")[1]["media_workers"][0]["stats"]
        if stats["stats_sent"] > sent:
            return stats
        time.sleep(0.2)
    pytest.fail("no new STATS from the call worker")
