"""The command line both media workers share (sipserver/rtp/worker_args.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from sipserver.rtp.worker_args import common_options, worker_parser

# Every shared option set away from its default, and what each worker must then hold.
NON_DEFAULT = [
    "--link", "/run/link.sock", "--worker-id", "w7",
    "--sip-host", "127.0.0.2", "--sip-port", "5099",
    "--rtp-host", "127.0.0.3", "--rtp-port", "30000", "--rtp-port-count", "64",
    "--sample-rate", "16000", "--stats-interval", "2.5",
    "--session-timers", "always", "--session-expires", "600", "--min-se", "120",
    "--answer-delay", "1.5", "--rtp-timeout", "0",
    "--log-format", "json", "--log-level", "warning",
]  # fmt: skip
EXPECTED = {
    "link": "/run/link.sock",
    "worker_id": "w7",
    "sip_host": "127.0.0.2",
    "sip_port": 5099,
    "rtp_host": "127.0.0.3",
    "rtp_port": 30000,
    "rtp_port_count": 64,
    "sample_rate": 16000,
    "stats_interval": 2.5,
    "session_timers": "always",
    "session_expires": 600,
    "min_se": 120,
    "answer_delay": 1.5,
    "rtp_timeout": 0.0,
    "log_format": "json",
    "log_level": "warning",
}
REQUIRED = ["--link", "/x", "--worker-id", "w1", "--rtp-port", "20000", "--rtp-port-count", "8"]


def worker_parse_args(module: str) -> Callable[[list[str]], Any]:
    """``parse_args`` of ``sipserver.rtp.<module>`` (the pjsua2 worker needs pjsua2)."""
    if module == "pjsua2_worker":
        pytest.importorskip("pjsua2")
    parse: Callable[[list[str]], Any] = importlib.import_module(
        f"sipserver.rtp.{module}"
    ).parse_args
    return parse


WORKERS = ("call_worker", "pjsua2_worker")


def test_the_shared_parser_covers_every_common_option() -> None:
    assert dict(common_options(worker_parser("p", "d").parse_args(NON_DEFAULT))) == EXPECTED


@pytest.mark.parametrize("module", WORKERS)
def test_both_workers_take_the_common_options(module: str) -> None:
    options = worker_parse_args(module)(NON_DEFAULT)
    assert {key: getattr(options, key) for key in EXPECTED} == EXPECTED


@pytest.mark.parametrize("module", WORKERS)
def test_both_workers_keep_the_common_defaults(module: str) -> None:
    options = worker_parse_args(module)(REQUIRED)
    defaults = {key: getattr(options, key) for key in EXPECTED}
    assert defaults == {
        "link": "/x",
        "worker_id": "w1",
        "sip_host": "127.0.0.1",
        "sip_port": 0,
        "rtp_host": "127.0.0.1",  # --sip-host's
        "rtp_port": 20000,
        "rtp_port_count": 8,
        "sample_rate": 8000,
        "stats_interval": 5.0,
        "session_timers": "optional",
        "session_expires": 1800,
        "min_se": 90,
        "answer_delay": 0.0,
        "rtp_timeout": 60.0,
        "log_format": "auto",
        "log_level": "info",
    }


@pytest.mark.parametrize(
    ("module", "own_option"),
    [("call_worker", "--capacity"), ("pjsua2_worker", "--pjsip-log-level")],
)
def test_both_workers_help_lists_the_common_options_and_their_own(
    module: str, own_option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parse = worker_parse_args(module)
    with pytest.raises(SystemExit) as exit_info:
        parse(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m sipserver.rtp.{module}" in text
    for option in [*NON_DEFAULT[::2], own_option]:
        assert option in text, option
    assert "RFC 4028 Min-SE, s (>= 90)" in text  # the help texts come along


@pytest.mark.parametrize("module", WORKERS)
def test_both_workers_refuse_a_value_outside_the_choices(module: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        worker_parse_args(module)([*REQUIRED, "--session-timers", "sometimes"])
    assert exit_info.value.code == 2


def test_each_worker_keeps_its_own_options() -> None:
    pytest.importorskip("pjsua2")
    from sipserver.rtp import call_worker, pjsua2_worker

    assert call_worker.parse_args([*REQUIRED, "--capacity", "7"]).capacity == 7
    assert pjsua2_worker.parse_args(REQUIRED).pjsip_log_level == 2
    assert pjsua2_worker.parse_args([*REQUIRED, "--log-level", "debug"]).pjsip_log_level == 4
    assert pjsua2_worker.parse_args([*REQUIRED, "--pjsip-log-level", "5"]).pjsip_log_level == 5
