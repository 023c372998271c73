"""kill -9 during registrations loses no acknowledged binding (issue [2/7], durable registrations).

SIPp registers 200 addresses-of-record (one per call, digest auth) against a server with the
SQLite store and logs every 200 OK it receives. The server is killed with SIGKILL at a random
moment: after a random number of 200s, or just after the last one. Then the database the
dead process left is read, and a new server started on the same data directory: every binding
SIPp got a 200 for must be there. Before durable registrations the 200 went out up to 0.5 s
before the write (0 to 200 of 200 were lost in the attack run).
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess, run_sipp, sipp_command

pytestmark = pytest.mark.integration

USERS = [f"4420{i:07d}" for i in range(1, 201)]
PASSWORD = "pbx-password-01"
RATE = 200  # registrations per second offered by SIPp
REGISTERED = re.compile(r"registered (\d+)")


def with_pbx(data_dir: Path) -> Any:
    def mutate(config: dict[str, Any]) -> None:
        config["server"]["data_dir"] = str(data_dir)  # default store: sqlite in data_dir
        config["server"]["sip"]["tcp"] = []
        config["agents"] = [
            {
                "slug": "pbx",
                "sip": {
                    "enabled": True,
                    "numbers": USERS,
                    "username": "pbx",
                    "password": PASSWORD,
                },
            }
        ]

    return mutate


def acknowledged(log_file: Path) -> set[str]:
    """The users SIPp received a 200 OK for."""
    if not log_file.exists():
        return set()
    return set(REGISTERED.findall(log_file.read_text(errors="replace")))


def stored(db: Path) -> dict[str, str]:
    """AOR user -> Contact of every binding in the database a killed server left."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT aor, contact FROM bindings").fetchall()
    return {aor.removeprefix("sip:").split("@")[0]: contact for aor, contact in rows}


@pytest.mark.parametrize("moment", ["early", "middle", "late", "just_after"])
def test_kill_9_during_registrations_loses_no_acknowledged_binding(
    server_factory: Any, tmp_path: Path, moment: str
) -> None:
    rng = random.Random()
    target = {
        "early": rng.randint(1, 40),
        "middle": rng.randint(60, 140),
        "late": rng.randint(160, 199),
        "just_after": len(USERS),
    }[moment]
    data_dir = tmp_path / "data"
    server: ServerProcess = server_factory(with_pbx(data_dir), wait="/healthz")
    users_file = tmp_path / "users.csv"
    users_file.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in USERS))
    log_file = tmp_path / "sipp_registered.log"
    cmd = sipp_command(
        "register_users.xml",
        server.sip_port,
        service="pbx",
        password=PASSWORD,
        calls=len(USERS),
        workdir=tmp_path,
        timeout=20,
        extra=("-inf", str(users_file), "-r", str(RATE), "-l", str(RATE)),
    )
    cmd += ["-trace_logs", "-log_file", str(log_file)]
    sipp = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Kill once SIPp logged `target` 200s (its log is written as they arrive), plus a
        # random few milliseconds: the kill lands anywhere in the group-commit cycle.
        deadline = time.monotonic() + 30
        while len(acknowledged(log_file)) < target and time.monotonic() < deadline:
            assert sipp.poll() is None or len(acknowledged(log_file)) >= target, (
                f"SIPp ended with {len(acknowledged(log_file))} 200s before the kill"
            )
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3 if moment == "just_after" else 0.02))
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(timeout=10)
    finally:
        # SIPp keeps retransmitting to the dead server: stop it (its log is already written).
        sipp.terminate()
        sipp.wait(timeout=30)
    acked = acknowledged(log_file)
    assert len(acked) >= min(target, len(USERS)), f"only {len(acked)} 200s before the kill"

    # The database as the killed process left it (WAL included): every acknowledged binding.
    bindings = stored(data_dir / "bindings.db")
    missing = sorted(acked - set(bindings))
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged bindings lost: {missing}"
    assert all(bindings[u].startswith(f"sip:{u}@127.0.0.1:") for u in acked)

    # A new server on the same data directory serves them (and nothing it made up).
    restarted: ServerProcess = server_factory(with_pbx(data_dir), wait="/healthz")
    assert restarted.metric("sipserver_registrations_active") == len(bindings)
    restarted.stop()


def test_a_locked_database_gets_503_and_nothing_is_claimed(server: ServerProcess) -> None:
    # Another process holds the database's write lock past SQLite's 5 s busy timeout: the
    # commit fails, the REGISTER gets 503 + Retry-After (never a 200), it is counted as a
    # refusal, and the server registers normally once the lock is gone.
    db = Path(server.config["server"]["data_dir"]) / "bindings.db"
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        result = run_sipp("register_unavailable.xml", server.sip_port, timeout=30)
        assert result.returncode == 0, result.output
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    refused = server.metric("sipserver_refusals_total", ingress="sip", reason="bindings_not_stored")
    assert refused == 1
    assert server.metric("sipserver_registrations_active") == 0
    events = [e for e in server.log_events() if e["event"] == "bindings_commit_failed"]
    assert len(events) == 1 and "locked" in events[0]["error"]
    assert run_sipp("register.xml", server.sip_port).returncode == 0
    assert server.metric("sipserver_registrations_active") == 1
    assert any(e["event"] == "bindings_commit_recovered" for e in server.log_events())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 1
