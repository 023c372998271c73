"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_PINNING: dict[str, str] = {}
"""Role ("server", "load") -> CPU list for taskset; empty: nothing pinned (see pin_roles)."""


def pin_roles(server: str, load: str) -> None:
    """Run servers on the CPUs ``server`` and load generators on ``load`` (taskset lists,
    e.g. "0" and "1"). On loopback, a reply's ``sendto`` wakes the load generator, and the
    scheduler places a synchronously woken task on the waker's CPU, where it preempts the
    server: the server then pays a context switch per reply that a server reached over a
    network would not. Pinning each side to its own core takes that out, for both servers; on
    the 2-core VMs measured, the cross-CPU wake-ups it costs instead were dearer (bench/README,
    "Issue 17 on an Intel machine")."""
    _PINNING.update(server=server, load=load)


def pinned(cmd: list[str], role: str) -> list[str]:
    """``cmd`` under ``taskset -c`` for its role when pin_roles was called, else unchanged."""
    cpus = _PINNING.get(role)
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def server_env(*, pure: bool) -> dict[str, str]:
    """The server's environment: SIPSERVER_PURE_PYTHON=1 loads every module from its .py file
    even where the mypyc build (hatch_build.py) is present."""
    env = dict(os.environ)
    env.pop("SIPSERVER_PURE_PYTHON", None)
    if pure:
        env["SIPSERVER_PURE_PYTHON"] = "1"
    return env


def build_label(pure: bool) -> str:
    """Either "sipserver-mypyc" or "sipserver-pure": what a server started with
    server_env(pure=pure) runs, asked of the same interpreter (a checkout without the build
    runs pure either way). Asked from the temporary directory, as servers are started from
    their work directory: from the checkout, ``-c`` would import the checkout's package
    ahead of a PYTHONPATH pointing at another tree."""
    probe = "import sipserver.sip.message as m; print(m.__file__)"
    origin = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tempfile.gettempdir(),
        env=server_env(pure=pure),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return "sipserver-pure" if origin.endswith(".py") else "sipserver-mypyc"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free on 127.0.0.1 right now: UDP, or TCP with ``socket.SOCK_STREAM``."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids = [pid]
    for child in out.split():
        pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes in seconds (processes already gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def sipp_counts(stat_file: Path) -> tuple[int, int]:
    """(successful, failed) calls from the last line of a SIPp ``-trace_stat`` file."""
    with stat_file.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    header, last = rows[0], rows[-1]
    return int(last[header.index("SuccessfulCall(C)")]), int(last[header.index("FailedCall(C)")])


def run_sipp_load(
    port: int, scenario: Path, rate: int, calls: int, workdir: Path, *args: str
) -> tuple[int, int]:
    """Run SIPp against 127.0.0.1:port at ``rate`` calls/s for ``calls`` calls (plus ``args``),
    in ``workdir``; return (successful, failed) from its statistics file."""
    stat = workdir / f"stat_{port}_{rate}.csv"
    stat.unlink(missing_ok=True)
    cmd = [
        "sipp",
        f"127.0.0.1:{port}",
        "-sf",
        str(scenario),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-nostdin",
        "-timeout",
        f"{calls // rate + 30}s",
        "-trace_stat",
        "-stf",
        str(stat),
        *args,
    ]
    subprocess.run(
        pinned(cmd, "load"), cwd=workdir, capture_output=True, timeout=calls // rate + 60
    )
    return sipp_counts(stat)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
