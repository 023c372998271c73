"""REGISTER-with-digest through the edge router in-process: CPU per registration without I/O.

bench/register.py measures the whole server against Kamailio over loopback, which on a shared
machine also measures the machine (SIPp's retransmissions, preemption). This script takes the
sockets and the event loop away: it builds the router as the server does (memory store, the
same 10,000 AORs on one agent, MD5 with ``qop=auth``), then feeds it the bytes SIPp sends, a
REGISTER, the 401's challenge answered, and the second REGISTER, for ``--count`` AORs registered
once before (a refresh), and reports the process CPU time (``time.process_time``) spent inside
``handle_message`` per registration (two messages). The requests are built before the timed
region (the router's nonces come from a counter, and a twin nonce manager predicts them).
``--profile`` writes a cProfile of the timed calls. On a shared machine CPU time is noisy; for
instruction counts run it under callgrind, which dumps the timed region separately (the region
is marked by ``zlib.crc32`` calls)::

    valgrind --tool=callgrind --dump-before=zlib_crc32 --callgrind-out-file=/tmp/cg.out \
        $(python -c 'import sys; print(sys.executable)') bench/register_inproc.py \
        --count 1000 --repeats 1
    # /tmp/cg.out.2: the AORs' first registrations (new bindings); /tmp/cg.out.4: the timed
    # refreshes. Ir per registration: a file's total / --count

``--both`` runs the measurement in fresh interpreters, alternating the mypyc build
(hatch_build.py) and pure Python (SIPSERVER_PURE_PYTHON=1) round by round so that both see the
same load, and prints the ratio.

Usage::

    PYTHONPATH=$PWD python bench/register_inproc.py        # 10,000 registrations, 5 repeats
    PYTHONPATH=$PWD python bench/register_inproc.py --profile /tmp/reg_inproc.prof
    PYTHONPATH=$PWD python bench/register_inproc.py --both --count 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import statistics
import subprocess
import sys
import time
import zlib

import yaml
from _common import build_label, server_env

from sipserver.config import parse_config
from sipserver.edge.build import build_authenticator, build_registrar
from sipserver.edge.router import Peer, SipRouter, server_names
from sipserver.observability import Metrics, configure_logging
from sipserver.registrar.auth import FailureTracker, NonceManager
from sipserver.registrar.bindings import MemoryStore
from sipserver.sip.digest import DigestAlgorithm, DigestChallenge, build_authorization

USERS = 10_000
AUTH_USER = "bench"
PASSWORD = "bench-password-01"
SERVER = ("127.0.0.1", 5060)
CLIENT = ("127.0.0.1", 5070)


def user_name(i: int) -> str:
    return f"4420{i:07d}"


class _Counter:
    """Deterministic nonce randomness: 16 bytes of a counter per call."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return self.n.to_bytes(size, "big")


def build_router() -> tuple[SipRouter, NonceManager, str]:
    """The router as the server builds it, whose nonces come from a counter; a twin nonce
    manager issuing the same nonces in the same order (so the answers to the challenges can be
    built in advance); the realm."""
    raw = {
        "server": {
            "http": "127.0.0.1:8080",
            "admin_http": None,
            "public_url": "http://127.0.0.1:8080",
            "store": "memory",
            "sip": {"udp": [f"{SERVER[0]}:{SERVER[1]}"], "tcp": [], "max_contacts_per_aor": 10},
        },
        "agents": [
            {
                "slug": "bench",
                "sip": {
                    "enabled": True,
                    "numbers": [user_name(i) for i in range(1, USERS + 1)],
                    "username": AUTH_USER,
                    "password": PASSWORD,
                },
            }
        ],
    }
    config = parse_config(yaml.safe_dump(raw), env={})
    names = server_names(config)
    sip = config.server.sip
    secret = b"b" * 32
    router = SipRouter(
        config,
        registrar=build_registrar(config, MemoryStore()),
        authenticator=build_authenticator(
            config, NonceManager(secret, ttl=sip.nonce_ttl, random_bytes=_Counter()), names
        ),
        tracker=FailureTracker(max_failures=5, window=60, ban_duration=300),
        metrics=Metrics(),
        names=names,
        force_rport=sip.force_rport,
    )
    twin = NonceManager(secret, ttl=sip.nonce_ttl, random_bytes=_Counter())
    return router, twin, config.server.effective_realm


def register(n: int, cseq: int, authorization: str | None) -> bytes:
    user = user_name(n % USERS + 1)
    host, port = SERVER
    lines = [
        f"REGISTER sip:{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {CLIENT[0]}:{CLIENT[1]};branch=z9hG4bK-{n}-{cseq}",
        f"From: <sip:{user}@{host}>;tag={n}SIPpTag00{n}",
        f"To: <sip:{user}@{host}>",
        f"Call-ID: {n}-bench@{CLIENT[0]}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@{CLIENT[0]}:{CLIENT[1]}>",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Max-Forwards: 70", "Expires: 3600", "User-Agent: SIPp", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


NOW = 1000.0
WALL = 1_800_000_000.0


def requests(twin: NonceManager, realm: str, count: int, start: int) -> list[tuple[bytes, bytes]]:
    """The two REGISTERs of ``count`` registrations (AORs from ``start`` on), built before
    the timed region with the nonces the router will issue (``twin``; call in the order the
    batches will be run)."""
    pairs = []
    for n in range(start, start + count):
        challenge = DigestChallenge(
            realm=realm,
            nonce=twin.issue(now=NOW),
            algorithm=DigestAlgorithm.MD5,
            qop="auth",
        )
        authorization = build_authorization(
            challenge,
            username=AUTH_USER,
            password=PASSWORD,
            method="REGISTER",
            uri=f"sip:{SERVER[0]}:{SERVER[1]}",
            cnonce=f"c{n}",
        )
        pairs.append((register(n, 1, None), register(n, 2, authorization)))
    return pairs


def run(
    router: SipRouter, pairs: list[tuple[bytes, bytes]], profile: cProfile.Profile | None
) -> float:
    """CPU seconds the router spends on the registrations ``pairs``; checks the answers."""
    peer = Peer("udp", *CLIENT)
    handle = router.handle_message
    answers = []
    zlib.crc32(b"")  # a marker for callgrind --dump-before=zlib_crc32: the timed region starts
    if profile is not None:
        profile.enable()
    t0 = time.process_time()
    for first, second in pairs:
        answers.append(handle(first, peer, now=NOW, wall=WALL))
        answers.append(handle(second, peer, now=NOW, wall=WALL))
    spent = time.process_time() - t0
    if profile is not None:
        profile.disable()
    zlib.crc32(b"")  # ... and ends
    for k, out in enumerate(answers):
        assert len(out) == 1 and out[0].data.startswith(
            b"SIP/2.0 401" if k % 2 == 0 else b"SIP/2.0 200"
        ), out
    return spent


def both(count: int, rounds: int) -> None:
    """The mypyc build and pure Python alternating, one fresh interpreter per round each."""
    builds = {build_label(pure): pure for pure in (False, True)}
    if len(builds) == 1:
        print("no mypyc build here (python hatch_build.py makes one): pure Python only")
    results: dict[str, list[float]] = {name: [] for name in builds}
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for name, pure in builds.items():
            done = subprocess.run(
                [sys.executable, __file__, "--count", str(count), "--repeats", "1"],
                env=server_env(pure=pure),
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(float(done.stdout.split("median ")[1].split()[0]))
    print(
        f"router CPU per registration, {rounds} rounds x {count}, load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores"
    )
    for name, values in results.items():
        print(
            f"{name:<16} us/registration: median {statistics.median(values):6.1f} "
            f"min {min(values):6.1f} max {max(values):6.1f}"
        )
    if len(results) == 2:
        ratio = statistics.median(results["sipserver-pure"]) / statistics.median(
            results["sipserver-mypyc"]
        )
        print(f"pure / mypyc CPU per registration (medians): {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=USERS, help="registrations per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (--both: rounds)")
    parser.add_argument("--profile", help="write a cProfile of the router calls to this file")
    parser.add_argument("--both", action="store_true", help="mypyc build vs pure, alternating")
    args = parser.parse_args()
    if args.both:
        both(args.count, args.repeats)
        return 0
    configure_logging("console", "warning")  # as bench/register.py runs the server
    router, twin, realm = build_router()
    if args.count > USERS:
        parser.error(f"--count is at most {USERS}")
    # The AORs registered once first: the timed registrations refresh a binding, as a phone
    # does every few minutes (bench/register.py cycles through its 10,000 AORs alike).
    run(router, requests(twin, realm, args.count, 0), None)
    batches = [requests(twin, realm, args.count, USERS * (r + 1)) for r in range(args.repeats)]
    # As the server does once started (server.py): what start-up loaded, and here the requests
    # built in advance, out of the collector's sight. Without it the full collections walk
    # the whole configuration and cost ~45% of a registration at --count 10000.
    gc.collect()
    gc.freeze()
    profile = cProfile.Profile() if args.profile else None
    per_reg = [1e6 * run(router, pairs, profile) / len(pairs) for pairs in batches]
    if profile is not None:
        profile.dump_stats(args.profile)
    print(f"router CPU per registration (2 messages), {args.count} x {args.repeats}:")
    print("  " + " ".join(f"{us:.1f}" for us in per_reg) + " us")
    print(f"  median {statistics.median(per_reg):.1f} us, min {min(per_reg):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
