"""bench/soak.py runs end to end (a dozen seconds at small rates), so the long soak a person runs
by hand does not rot: a real server, SIPp registering and calling, websocket calls, the probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_soak_runs_and_reports_a_clean_short_run(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.soak", "--minutes", "0.2", "--sample-every", "2",
            "--register-rate", "5", "--contacts", "20", "--sip-calls", "1",
            "--sip-voice-calls", "0", "--ws-calls", "2", "--ws-voice-calls", "0",
            "--call-seconds", "2", "--out", str(out), "--keep", str(tmp_path / "work"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary" in proc.stdout and "udp p99" in proc.stdout
    result = json.loads(out.read_text())
    summary = result["summary"]
    done = summary["completed"]
    # Every kind of load did work and none of it failed.
    assert done["reg_ok"] > 0 and done["sip_ok"] > 0 and done["ws_ok"] > 0, done
    assert all(v == 0 for k, v in done.items() if k.endswith(("_failed", "_refused"))), done
    for kind in ("options_udp", "options_tcp", "readyz"):
        probe = summary["probes"][kind]
        assert probe["answered"] > 0 and probe["errors"] == 0, (kind, probe)
    # The samples: idle first, after last, the process figures read from /proc and /metrics.
    phases = [s["phase"] for s in result["samples"]]
    assert phases[0] == "idle" and phases[-1] == "after" and "load" in phases
    assert summary["rss_mb"]["peak"] > 0 and summary["fds"]["end"] > 0
    assert summary["tasks"]["idle"] is not None and summary["tasks"]["peak"] > 0
    # The load ended: no call left behind, and the task count back near where it started (a
    # scrape can catch a request's own short-lived task or two, never one per call made).
    assert summary["calls_active_end"] == 0 and summary["ws_calls_active_end"] == 0
    assert summary["tasks"]["end"] <= summary["tasks"]["idle"] + 2
    assert out.with_suffix(".csv").read_text().startswith("phase,")
