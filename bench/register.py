"""REGISTER-with-digest benchmark: sipserver against the Kamailio reference, same run.

SIPp sends REGISTER, gets 401, answers the challenge and expects 200, for 10,000 distinct AORs at
increasing rates. For each rate the script reports successful registrations, failures and the
server's CPU time (utime+stime from /proc of its whole process tree: sipserver's main process and
its call workers, all Kamailio processes; the ``main`` column is the main process alone), then the
ratio of registrations per CPU-second: sipserver / Kamailio. sipserver is measured once /readyz
answers (its call workers started and warm). Both servers do the same work per registration:
look up the AOR's credentials, check the digest, write the binding (sipserver: memory store, like
Kamailio's usrloc db_mode=0; ``--store sqlite`` measures the SQLite store instead, where each 200
waits for its binding's group commit; ``--commit-ms`` sets its ``server.store_commit_ms``).

Kamailio runs from ../shared/bench/kamailio/kamailio.cfg when ``kamailio`` is installed
(``apt-get install kamailio``); otherwise only sipserver's figures are printed.

Usage::

    python bench/register.py                    # rates 1000,2000,4000 for 5 s each
    python bench/register.py --rates 500,1000 --seconds 10 --store sqlite
    python bench/register.py --rates 1000 --store sqlite --commit-ms 0
    python bench/register.py --profile prof.out # sipserver under cProfile (where time goes)
    python bench/register.py --pure             # the pure-Python modules (SIPSERVER_PURE_PYTHON=1)
    python bench/register.py --both             # compiled, then pure, then Kamailio: both ratios
    python bench/register.py --pin              # servers on CPU 0, SIPp on CPU 1 (taskset)
    python bench/register.py --callgrind /tmp/cg --rates 50 --seconds 10 --no-kamailio

``--callgrind DIR`` runs sipserver's main process under valgrind's callgrind with collection
off until the server is ready, and dumps ``DIR/sipserver.<pid>.<n>`` for each rate step: the
instructions of the whole main process (event loop, UDP reads and sends, router, timers) per
registration, load-independent (valgrind slows the server ~50x: use low rates).

The compiled build is the mypyc one of ``hatch_build.py`` (``pip install -e .`` or ``python
hatch_build.py``); without it both runs are pure Python, and the header line says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from _common import (
    build_label,
    cpu_seconds,
    free_port,
    pin_roles,
    pinned,
    process_tree,
    run_sipp_load,
    server_env,
    stop,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KAMAILIO_DIR = REPO.parent / "shared" / "bench" / "kamailio"
SCENARIO = HERE / "sipp" / "reg_auth.xml"
USERS = 10_000
AUTH_USER = "bench"
PASSWORD = "bench-password-01"  # sipserver refuses SIP passwords under 12 characters
KAMAILIO_PASSWORD = "secret"  # fixed by ../shared/bench/kamailio/kamailio.cfg


def user_name(i: int) -> str:
    # Dial strings, so that one sipserver agent can own all 10,000 AORs as its numbers.
    return f"4420{i:07d}"


def write_users(path: Path) -> None:
    with path.open("w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(1, USERS + 1):
            f.write(f"{user_name(i)}\n")  # credentials come from -au/-ap


@dataclass
class Run:
    rate: int
    ok: int
    failed: int
    cpu: float
    retransmissions: int | None = None
    """REGISTER retransmissions the server received (sipserver only): each costs a parse."""
    main_cpu: float | None = None
    """CPU seconds of the main process alone (``cpu`` is the whole process tree's)."""

    @property
    def per_cpu_second(self) -> float:
        return self.ok / self.cpu if self.cpu > 0 else float("nan")


def run_sipp(
    port: int, users: Path, rate: int, calls: int, workdir: Path, password: str
) -> tuple[int, int]:
    return run_sipp_load(
        port, SCENARIO, rate, calls, workdir,
        "-inf", str(users), "-au", AUTH_USER, "-ap", password,
        "-l", str(max(rate, 100)), "-fd", "1",
    )  # fmt: skip


def retransmissions(http_port: int | None) -> int | None:
    """sipserver_sip_retransmissions_total of the server whose admin listener (/metrics) is on
    ``http_port`` (None: not sipserver)."""
    if http_port is None:
        return None
    url = f"http://127.0.0.1:{http_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("sipserver_sip_retransmissions_total "):
            return int(float(line.split()[1]))
    return 0


def measure(
    root: int,
    port: int,
    users: Path,
    rate: int,
    seconds: float,
    wd: Path,
    password: str = PASSWORD,
    http_port: int | None = None,
    callgrind: bool = False,
) -> Run:
    """One rate step against the server whose main process is ``root``: the CPU of its whole
    process tree (sipserver's call workers, Kamailio's children) and of ``root`` alone. With
    ``callgrind`` (``root`` runs under callgrind), collection is on during the step only and
    the step's counts are dumped at its end."""
    calls = int(rate * seconds)
    pids = process_tree(root)
    retrans_before = retransmissions(http_port)
    if callgrind:
        subprocess.run(["callgrind_control", "-i", "on", str(root)], check=True)
    main_before, before = cpu_seconds([root]), cpu_seconds(pids)
    ok, failed = run_sipp(port, users, rate, calls, wd, password)
    main_after, after = cpu_seconds([root]), cpu_seconds(pids)
    if callgrind:
        subprocess.run(["callgrind_control", "-d", str(root)], check=True)
        subprocess.run(["callgrind_control", "-i", "off", str(root)], check=True)
    retrans_after = retransmissions(http_port)
    retrans = None
    if retrans_before is not None and retrans_after is not None:
        retrans = retrans_after - retrans_before
    return Run(rate, ok, failed, after - before, retrans, main_after - main_before)


def start_sipserver(
    wd: Path,
    store: str,
    profile: str | None,
    commit_ms: float | None = None,
    *,
    pure: bool = False,
    callgrind: str | None = None,
) -> tuple[subprocess.Popen[bytes], int, int]:
    sip_port, http_port, admin_port = free_port(), free_port(), free_port()
    numbers = [user_name(i) for i in range(1, USERS + 1)]
    config = {
        "server": {
            "http": f"127.0.0.1:{http_port}",
            "admin_http": f"127.0.0.1:{admin_port}",  # /metrics (retransmissions)
            "public_url": f"http://127.0.0.1:{http_port}",
            "data_dir": str(wd / "data"),
            "store": store,
            "sip": {"udp": [f"127.0.0.1:{sip_port}"], "tcp": [], "max_contacts_per_aor": 10},
        },
        "agents": [
            {
                "slug": "bench",
                "sip": {
                    "enabled": True,
                    "numbers": numbers,
                    "username": AUTH_USER,
                    "password": PASSWORD,
                },
            }
        ],
    }
    if commit_ms is not None:
        config["server"]["store_commit_ms"] = commit_ms
    cfg = wd / "sipserver.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable]
    if callgrind:
        Path(callgrind).mkdir(parents=True, exist_ok=True)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={Path(callgrind).resolve()}/sipserver.%p",
            *cmd,
        ]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "sipserver", "run", "-c", str(cfg), "--log-level", "warning"]
    proc = subprocess.Popen(
        pinned(cmd, "server"),
        cwd=wd,
        env=server_env(pure=pure),
        stdout=subprocess.DEVNULL,
        stderr=(wd / "sipserver.log").open("wb"),
    )
    deadline = time.monotonic() + (600 if callgrind else 60)
    while time.monotonic() < deadline:
        try:
            # /readyz, not /healthz: ready once the call workers are up and warm, so that their
            # start-up (~1 s of CPU each) does not overlap the first rate step.
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1).read()
            return proc, sip_port, admin_port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((wd / "sipserver.log").read_text()) from None
            time.sleep(0.2)
    raise RuntimeError("sipserver did not start")


def start_kamailio(wd: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    if shutil.which("kamailio") is None or not (KAMAILIO_DIR / "kamailio.cfg").exists():
        return None
    pid_file = wd / "kam.pid"
    proc = subprocess.Popen(
        pinned(
            [
                "kamailio",
                "-f",
                str(KAMAILIO_DIR / "kamailio.cfg"),
                "-P",
                str(pid_file),
                "-m",
                "256",
                "-M",
                "16",
                "-DD",
                "-E",
            ],
            "server",
        ),
        cwd=wd,
        stdout=subprocess.DEVNULL,
        stderr=(wd / "kamailio.log").open("wb"),
    )
    time.sleep(2.0)
    if proc.poll() is not None:
        print("kamailio failed to start:", (wd / "kamailio.log").read_text()[-2000:])
        return None
    return proc, 5090


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,2000,4000", help="comma-separated calls/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each rate step")
    parser.add_argument("--store", default="memory", choices=("memory", "sqlite"))
    parser.add_argument(
        "--commit-ms", type=float, help="server.store_commit_ms (sqlite; default: the server's)"
    )
    parser.add_argument("--profile", help="write a cProfile of sipserver to this file")
    parser.add_argument(
        "--callgrind",
        metavar="DIR",
        help="run sipserver under callgrind, one dump per rate step in DIR (use low rates)",
    )
    parser.add_argument("--no-kamailio", action="store_true", help="skip the reference run")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on CPU 0, SIPp on CPU 1 (taskset): no loopback wake-up preemption",
    )
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--pure", action="store_true", help="SIPSERVER_PURE_PYTHON=1 for sipserver")
    build.add_argument("--both", action="store_true", help="the compiled build, then the pure one")
    args = parser.parse_args()
    if args.pin:
        pin_roles("0", "1")
    builds = [False, True] if args.both else [args.pure]
    if shutil.which("sipp") is None:
        print("SIPp is required: apt-get install sip-tester", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="sipserver-bench-") as tmp:
        wd = Path(tmp)
        users = wd / "users.csv"
        write_users(users)
        results: dict[str, list[Run]] = {}
        for pure in builds:
            sips, sip_port, http_port = start_sipserver(
                wd, args.store, args.profile, args.commit_ms, pure=pure, callgrind=args.callgrind
            )
            try:
                results[build_label(pure)] = [
                    measure(
                        sips.pid,
                        sip_port,
                        users,
                        r,
                        args.seconds,
                        wd,
                        http_port=http_port,
                        callgrind=bool(args.callgrind),
                    )
                    for r in rates
                ]
            finally:
                stop(sips)
        kam = None if args.no_kamailio else start_kamailio(wd)
        if kam is not None:
            kproc, kport = kam
            try:
                results["kamailio"] = [
                    measure(kproc.pid, kport, users, r, args.seconds, wd, KAMAILIO_PASSWORD)
                    for r in rates
                ]
            finally:
                stop(kproc)
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    commit = f", store_commit_ms={args.commit_ms:g}" if args.commit_ms is not None else ""
    print(f"REGISTER+digest, {USERS} AORs, store={args.store}{commit}, {os.cpu_count()} cores")
    print(f"CPU: {cpu_model}")
    print(
        f"{'server':<18} {'rate/s':>7} {'ok':>7} {'failed':>7} {'cpu s':>7} "
        f"{'reg/cpu-s':>10} {'us/reg':>7} {'main':>7} {'retrans':>7}"
    )
    for name, runs in results.items():
        for run in runs:
            us = 1e6 * run.cpu / run.ok if run.ok else float("nan")
            main = "-"  # Kamailio's main process only forks its workers
            if name != "kamailio" and run.ok and run.main_cpu is not None:
                main = f"{1e6 * run.main_cpu / run.ok:.1f}"
            retrans = "-" if run.retransmissions is None else str(run.retransmissions)
            print(
                f"{name:<18} {run.rate:>7} {run.ok:>7} {run.failed:>7} {run.cpu:>7.2f} "
                f"{run.per_cpu_second:>10.0f} {us:>7.1f} {main:>7} {retrans:>7}"
            )
    if "kamailio" in results:
        for name in (build_label(pure) for pure in builds):
            for ours, ref in zip(results[name], results["kamailio"], strict=True):
                ratio = ours.per_cpu_second / ref.per_cpu_second
                print(
                    f"ratio at {ours.rate}/s: {name}/kamailio "
                    f"registrations per CPU-second = {ratio:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
