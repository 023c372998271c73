"""REGISTER+digest through the router in one process, no sockets: the mypyc build vs pure Python.

bench/register.py measures the whole server against Kamailio, where the kernel's UDP path, the
event loop and, on a shared machine, retransmissions weigh as much as the SIP code. This script
times only ``SipRouter.handle_message`` (parse, transaction, digest check, registrar, response
encoding: what hatch_build.py compiles and the edge code that calls it) for REGISTER -> 401 ->
REGISTER with Authorization -> 200, in CPU time (``time.process_time``), alternating builds
round by round in fresh interpreters so that both see the same load. The router and the
messages are the unit tests' (tests/unit/test_router.py).

Usage::

    python bench/register_core.py                  # 5 rounds of 4000 registrations per build
    python bench/register_core.py --rounds 3 --count 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import build_label, server_env

REPO = Path(__file__).resolve().parent.parent


def child(count: int) -> float:
    """CPU microseconds per registration (two handle_message calls) in this process."""
    sys.path.insert(0, str(REPO))
    import structlog

    from sipserver.sip.message import SipResponse, parse_message
    from tests.unit.test_router import NOW, PEER, answer, make_router, request

    # Like `sipserver run --log-level warning` in bench/register.py: no line per registration.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    router, _ = make_router()
    spent = 0.0
    for i in range(count + 200):  # the first 200: warm-up, not timed
        call_id = f"bench-{i}"
        first = request(call_id=call_id, cseq=1)
        started = time.process_time()
        out = router.handle_message(first, PEER, now=NOW + i, wall=NOW + i)
        took = time.process_time() - started
        challenge = parse_message(out[0].data)
        assert isinstance(challenge, SipResponse) and challenge.status == 401
        auth = answer(challenge, "alice", "alice-pw-1234")
        second = request(call_id=call_id, cseq=2, authorization=auth)
        started = time.process_time()
        out = router.handle_message(second, PEER, now=NOW + i, wall=NOW + i)
        took += time.process_time() - started
        final = parse_message(out[0].data)
        assert isinstance(final, SipResponse) and final.status == 200, final
        if i >= 200:
            spent += took
    return 1e6 * spent / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=4000, help="registrations per round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{child(args.count):.2f}")
        return 0
    builds = {build_label(pure): pure for pure in (False, True)}
    if len(builds) == 1:
        print("no mypyc build here (python hatch_build.py makes one): pure Python only")
    results: dict[str, list[float]] = {name: [] for name in builds}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, pure in builds.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--count", str(args.count)],
                env=server_env(pure=pure),
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(float(done.stdout.split()[-1]))
    print(
        f"REGISTER+digest through SipRouter.handle_message, {args.rounds} rounds x "
        f"{args.count}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}, "
        f"{os.cpu_count()} cores"
    )
    for name, values in results.items():
        print(
            f"{name:<16} CPU us/registration: median {statistics.median(values):6.1f} "
            f"min {min(values):6.1f} max {max(values):6.1f}"
        )
    if len(results) == 2:
        ratio = statistics.median(results["sipserver-pure"]) / statistics.median(
            results["sipserver-mypyc"]
        )
        print(f"pure / mypyc CPU per registration (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
