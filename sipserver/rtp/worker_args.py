"""The command line both media worker processes share (call_worker.py and pjsua2_worker.py).

The worker pool (:mod:`sipserver.edge.dispatcher`) starts either kind with the same options;
they are declared once here. :func:`worker_parser` builds a parser holding them, each worker
adds its own (``--capacity``; ``--pjsip-log-level``), and :func:`common_options` gives the
shared fields of the parsed namespace to the worker's options dataclass.
"""

from __future__ import annotations

import argparse
from typing import TypedDict

from sipserver.observability import LogFormat

__all__ = ["SESSION_TIMER_MODES", "CommonWorkerOptions", "common_options", "worker_parser"]

SESSION_TIMER_MODES = ("optional", "always", "off")
"""``--session-timers``: RFC 4028 session timers offered, required, or not used."""


class CommonWorkerOptions(TypedDict):
    """The fields of both workers' options that come from the shared command line."""

    link: str
    worker_id: str
    sip_host: str
    sip_port: int
    rtp_host: str
    rtp_port: int
    rtp_port_count: int
    sample_rate: int
    stats_interval: float
    session_timers: str
    session_expires: int
    min_se: int
    answer_delay: float
    rtp_timeout: float
    log_format: LogFormat
    log_level: str


def worker_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser holding every option both media workers take.

    Args:
        prog: the program name ``--help`` shows (``python -m sipserver.rtp.<module>``).
        description: what the worker is, for ``--help``.

    Returns:
        The parser; the caller adds its own options before parsing.
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--link", required=True, help="frame link unix socket of the main process")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--sip-host", default="127.0.0.1")
    p.add_argument("--sip-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--rtp-host", default=None, help="RTP bind address (default: --sip-host)")
    p.add_argument("--rtp-port", type=int, required=True, help="first port of the RTP range")
    p.add_argument("--rtp-port-count", type=int, required=True)
    p.add_argument("--sample-rate", type=int, default=8000, choices=(8000, 16000))
    p.add_argument("--stats-interval", type=float, default=5.0)
    p.add_argument("--session-timers", default="optional", choices=SESSION_TIMER_MODES)
    p.add_argument("--session-expires", type=int, default=1800, help="RFC 4028 interval, s")
    p.add_argument("--min-se", type=int, default=90, help="RFC 4028 Min-SE, s (>= 90)")
    p.add_argument("--answer-delay", type=float, default=0.0, help="ring seconds before 200")
    p.add_argument(
        "--rtp-timeout", type=float, default=60.0, help="seconds without RTP before BYE; 0 = off"
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="log rendering, as for sipserver run (the pool passes the main process's)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def common_options(a: argparse.Namespace) -> CommonWorkerOptions:
    """The shared options of a namespace parsed by a :func:`worker_parser` parser
    (``--rtp-host`` defaults to ``--sip-host``)."""
    return CommonWorkerOptions(
        link=a.link,
        worker_id=a.worker_id,
        sip_host=a.sip_host,
        sip_port=a.sip_port,
        rtp_host=a.rtp_host or a.sip_host,
        rtp_port=a.rtp_port,
        rtp_port_count=a.rtp_port_count,
        sample_rate=a.sample_rate,
        stats_interval=a.stats_interval,
        session_timers=a.session_timers,
        session_expires=a.session_expires,
        min_se=a.min_se,
        answer_delay=a.answer_delay,
        rtp_timeout=a.rtp_timeout,
        log_format=a.log_format,
        log_level=a.log_level,
    )
