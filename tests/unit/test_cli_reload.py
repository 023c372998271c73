"""`sipserver reload`: signal the server, wait for its result file, print it.

The "server" here is a small process that answers SIGHUP the way Server.reload does
(it writes the result file with sipserver.reload.write_result), or does not answer at all; the
real server is exercised in tests/integration/test_reload.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sipserver.cli import main
from sipserver.reload import ReloadResult, write_result

ANSWERING = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from sipserver.reload import ReloadResult, write_result

    path, answer = Path(sys.argv[1]), sys.argv[2] == "answer"
    count = [1]  # a result from an earlier reload is already in the file

    def on_hup(signum, frame):
        if answer:
            count[0] += 1
            result = ReloadResult(
                applied=True, changed=("agents",), restart_needed=("server.sip.udp",)
            )
            write_result(path, result, pid=os.getpid(), sequence=count[0], source="x.yaml")

    signal.signal(signal.SIGHUP, on_hup)
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sipserver.yaml"
    path.write_text(yaml.safe_dump({"server": {"data_dir": str(tmp_path / "data")}}))
    return path


@contextlib.contextmanager
def fake_server(config_file: Path, *, answer: bool) -> Iterator[subprocess.Popen[str]]:
    data = config_file.parent / "data"
    data.mkdir()
    results = data / "reload-result.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", ANSWERING, str(results), "answer" if answer else "silent"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        (data / "sipserver.pid").write_text(f"{proc.pid}\n")
        # The result of an earlier reload by the same process: not the answer to this one.
        earlier = ReloadResult(applied=True, changed=("models",))
        write_result(results, earlier, pid=proc.pid, sequence=1, source="x.yaml")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_prints_what_was_applied_and_what_needs_a_restart(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_server(config_file, answer=True):
        code = main(["reload", "-c", str(config_file), "--timeout", "20"])
    out = capsys.readouterr().out
    assert code == 3
    assert "applied: agents\n" in out  # not "models": that was the earlier reload
    assert "NOT applied, needs a restart (the server keeps the old values): server.sip.udp" in out


def test_a_server_that_does_not_answer_is_an_error(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_server(config_file, answer=False):
        code = main(["reload", "-c", str(config_file), "--timeout", "0.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert "reported no reload result" in err and "within 0.5 s" in err


def test_no_running_server(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reload", "-c", str(config_file)]) == 1
    assert "no running sipserver found" in capsys.readouterr().err
