"""A media load generator: N SIP calls with G.711 RTP both ways, in processes of their own.

Each process is one single-threaded loop over non-blocking sockets (``selectors``): one UDP
socket for SIP and one per call for RTP. A call is INVITE (SDP: PCMU + telephone-event), the
407/401 challenge answered with digest (RFC 3261 §22.2), 200, ACK along the Record-Route set
(RFC 3261 §12.1.2), ``hold`` seconds of RTP, BYE. RTP is a 400 Hz PCMU tone, 20 ms a packet
(50 pps per call), sent on a 5 ms slot wheel so the calls' packets are spread over the 20 ms
instead of leaving in one burst. Every received packet is counted and checked: its payload is
the echo of the tone when it equals one of the tone's 20 rotations (a 400 Hz period is 20
samples, so any 160-sample window of it is a rotation; PCMU decoded and re-encoded by the
server keeps the bytes). Gaps between received packets over 60 ms are counted per call.

A call the server ends (BYE from the far end, e.g. its call worker was killed) is answered 200
and counted ``ended_by_server``. The generator's own lateness is measured too (``late_sends``:
packets sent more than 20 ms after their time): a saturated generator shows, it is not hidden.

Run (prints one JSON object on stdout; ``--procs`` splits the calls over processes)::

    python -m bench._media_calls --target 127.0.0.1:5060 --number +15005550199 \\
        --user bench --password bench-password-01 --calls 100 --rate 50 --hold 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sipserver.media.codecs import ulaw_encode
from sipserver.sip.digest import DigestChallenge, DigestError, build_authorization
from sipserver.sip.headers import NameAddr
from sipserver.sip.message import SipParseError, SipRequest, SipResponse, parse_message

__all__ = ["CallResult", "LoadSettings", "run", "run_processes"]

FRAME = 0.02
SLOTS = 4
"""Send slots per 20 ms (a call sends in slot ``index % SLOTS``: a tick every 5 ms)."""
T1 = 0.5
GAP_MS = 60.0
SETTLE = 1.0
"""Seconds after the 200 before gaps are counted (the far end's media starts up)."""

_TONE = (8000 * np.sin(2 * np.pi * 400 * np.arange(180) / 8000)).astype(np.int16)
PAYLOAD = ulaw_encode(_TONE[:160].tobytes())
ECHOES = frozenset(ulaw_encode(_TONE[k : k + 160].tobytes()) for k in range(20))


@dataclass
class LoadSettings:
    target: tuple[str, int]
    number: str
    user: str | None
    password: str | None
    calls: int
    rate: float
    hold: float
    local_host: str = "127.0.0.1"
    first_index: int = 0


@dataclass
class CallResult:
    """One call's outcome (what ``run`` returns, one per call)."""

    index: int
    state: str = "new"
    """``completed`` (our BYE answered 200), ``ended_by_server`` (the far end sent BYE),
    ``failed`` (a final status >= 300 other than one challenge), ``timeout`` (no answer to the
    INVITE or to our BYE within 8 s, or the run's deadline passed)."""
    status: int = 0
    setup_ms: float | None = None
    """The (authenticated) INVITE sent -> its 200 received (what SIPp's -trace_rtt measures)."""
    total_ms: float | None = None
    """The first INVITE sent -> the 200 (with the challenge's round trip)."""
    contact: str = ""
    """host:port of the 200's Contact: the call worker that answered."""
    tx: int = 0
    rx: int = 0
    echo: int = 0
    gaps: int = 0
    max_gap_ms: float = 0.0
    late_sends: int = 0
    last_echo_s: float | None = None
    """Seconds from the 200 to the last echo packet received (None: no echo)."""
    ended_s: float | None = None
    """Seconds from the 200 to the far end's BYE (``ended_by_server`` calls)."""
    """Packets this generator sent more than 10 ms after their time (it was starved)."""


@dataclass(eq=False)
class _Call:
    result: CallResult
    rtp: socket.socket
    call_id: str
    tag: str
    ruri: str
    cseq: int = 1
    branch: str = ""
    sent: bytes = b""
    sent_at: float = 0.0
    first_sent_at: float = 0.0
    retrans_at: float | None = None
    retrans_every: float = T1
    authorized: bool = False
    remote_tag: str = ""
    route: list[str] = field(default_factory=list)
    remote_target: str = ""
    remote_rtp: tuple[str, int] | None = None
    media_from: float = 0.0
    next_send: float = 0.0
    bye_at: float = 0.0
    seq: int = 0
    last_rx: float = 0.0
    ssrc: int = 0


class Generator:
    """The calls of one process (see the module docstring)."""

    def __init__(self, s: LoadSettings) -> None:
        self.s = s
        self.sel = selectors.DefaultSelector()
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((s.local_host, 0))
        self.sip.setblocking(False)
        self.sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sip_port = self.sip.getsockname()[1]
        self.sel.register(self.sip, selectors.EVENT_READ, None)
        self.calls: list[_Call] = []
        self.by_id: dict[str, _Call] = {}
        self.slots: list[list[_Call]] = [[] for _ in range(SLOTS)]
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        """The first datagram of each kind of error (its first 300 bytes), for a person."""
        self.t0 = time.monotonic()

    # -- SIP ------------------------------------------------------------------------------

    def _request(self, call: _Call, method: str, uri: str, extra: list[str], body: bytes) -> bytes:
        host, port = self.s.local_host, self.sip_port
        to_tag = f";tag={call.remote_tag}" if call.remote_tag else ""
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={call.branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:load@{host}>;tag={call.tag}",
            f"To: <sip:{self.s.number}@{self.s.target[0]}:{self.s.target[1]}>{to_tag}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.cseq} {method}",
            f"Contact: <sip:load@{host}:{port}>",
            *extra,
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode() + body

    def _sdp(self, call: _Call) -> bytes:
        host, port = self.s.local_host, call.rtp.getsockname()[1]
        return (
            f"v=0\r\no=load {call.ssrc} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
        ).encode()

    def _invite(self, call: _Call, now: float, auth: str | None = None) -> None:
        call.branch = f"z9hG4bK-{secrets.token_hex(6)}"
        extra = ["Content-Type: application/sdp"]
        if auth is not None:
            extra.insert(0, auth)
        call.sent = self._request(call, "INVITE", call.ruri, extra, self._sdp(call))
        call.sent_at = now
        call.retrans_at, call.retrans_every = now + T1, T1
        call.result.state = "inviting"
        self.sip.sendto(call.sent, self.s.target)

    def start_call(self, index: int, now: float) -> None:
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((self.s.local_host, 0))
        rtp.setblocking(False)
        call = _Call(
            result=CallResult(index),
            rtp=rtp,
            call_id=f"load-{index}-{secrets.token_hex(4)}@{self.s.local_host}",
            tag=secrets.token_hex(4),
            ruri=f"sip:{self.s.number}@{self.s.target[0]}:{self.s.target[1]}",
            ssrc=secrets.randbits(32),
        )
        self.calls.append(call)
        self.by_id[call.call_id] = call
        self.sel.register(rtp, selectors.EVENT_READ, call)
        call.first_sent_at = now
        self._invite(call, now)

    def _on_sip(self, data: bytes, source: tuple[str, int], now: float) -> None:
        try:
            msg = parse_message(data)
            call = self.by_id.get(msg.call_id)
        except (SipParseError, ValueError) as exc:
            kind = f"unparsable SIP: {exc}"[:60]
            if kind not in self.errors:
                self.samples[kind] = repr(data[:300])
            self.errors[kind] += 1
            return
        if call is None:
            self.errors["SIP for an unknown call"] += 1
            return
        if isinstance(msg, SipRequest):
            self._on_request(call, msg, source)
        else:
            self._on_response(call, msg, now)

    def _on_request(self, call: _Call, req: SipRequest, source: tuple[str, int]) -> None:
        if req.method == "ACK":
            return
        keep = ("Via", "From", "To", "Call-ID", "CSeq")
        head = [f"{k}: {v}" for k, v in req.headers if k in keep]
        answer = "\r\n".join(["SIP/2.0 200 OK", *head, "Content-Length: 0", "", ""])
        self.sip.sendto(answer.encode(), source)
        if req.method == "BYE" and call.result.state in ("media", "bye"):
            call.result.ended_s = round(time.monotonic() - call.media_from, 3)
            self._finish(call, "ended_by_server")

    def _on_response(self, call: _Call, resp: SipResponse, now: float) -> None:
        number, method = resp.cseq
        r = call.result
        if method == "BYE":
            if r.state == "bye" and resp.status >= 200:
                self._finish(call, "completed")
            return
        if method != "INVITE":
            return
        if resp.status < 200:
            if r.state == "inviting":
                call.retrans_at = None  # RFC 3261 §17.1.1.2: a provisional stops Timer A
            return
        to = NameAddr.parse(resp.headers.get("To") or "")
        if resp.status >= 300 and number != call.cseq:
            # The answer to an earlier INVITE (a retransmission's 407 after ours was answered):
            # ACK it on its own transaction and ignore it.
            self._ack_failure(call, resp, number)
            return
        if resp.status >= 300:
            self._ack_failure(call, resp, number)
            if resp.status in (401, 407) and not call.authorized and r.state == "inviting":
                self._answer_challenge(call, resp, now)
            elif r.state == "inviting":
                r.status = resp.status
                self._finish(call, "failed")
            return
        # 2xx: establish (or, for a retransmitted 200, ACK again: RFC 3261 §13.2.2.4)
        if r.state == "inviting":
            r.status = 200
            r.setup_ms = (now - call.sent_at) * 1e3
            r.total_ms = (now - call.first_sent_at) * 1e3
            call.remote_tag = dict(to.params).get("tag") or ""
            contact = NameAddr.parse(resp.headers.get("Contact") or "")
            call.remote_target = str(contact.uri)
            r.contact = f"{contact.uri.host}:{contact.uri.port or 5060}"
            call.route = list(reversed(resp.headers.get_all("Record-Route")))
            call.remote_rtp = _sdp_media(resp.body)
            call.retrans_at = None
            r.state = "media"
            call.media_from = now
            call.next_send = self._slot_time(r.index % SLOTS, now)
            call.bye_at = now + self.s.hold
            self.slots[r.index % SLOTS].append(call)
        if r.state in ("media", "bye"):
            self._ack_2xx(call)

    def _ack_failure(self, call: _Call, resp: SipResponse, cseq: int) -> None:
        """ACK of a non-2xx final: the INVITE's branch, from the response's Via (RFC 3261
        §17.1.1.3)."""
        head = [f"{k}: {v}" for k, v in resp.headers if k in ("From", "To", "Call-ID")]
        via = f"Via: {resp.headers.get('Via')}"
        lines = [f"ACK {call.ruri} SIP/2.0", via, "Max-Forwards: 70", *head]
        lines += [f"CSeq: {cseq} ACK", "Content-Length: 0", "", ""]
        self.sip.sendto("\r\n".join(lines).encode(), self.s.target)

    def _answer_challenge(self, call: _Call, resp: SipResponse, now: float) -> None:
        proxy = resp.status == 407
        value = resp.headers.get("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        if value is None or self.s.user is None or self.s.password is None:
            call.result.status = resp.status
            self._finish(call, "failed")
            return
        try:
            auth = build_authorization(
                DigestChallenge.parse(value),
                username=self.s.user,
                password=self.s.password,
                method="INVITE",
                uri=call.ruri,
                cnonce=secrets.token_hex(8),
            )
        except (DigestError, ValueError) as exc:
            self.errors[f"challenge: {exc}"[:60]] += 1
            call.result.status = resp.status
            self._finish(call, "failed")
            return
        call.authorized = True
        call.cseq += 1
        header = "Proxy-Authorization" if proxy else "Authorization"
        self._invite(call, now, f"{header}: {auth}")

    def _in_dialog(self, call: _Call, method: str) -> bytes:
        call.branch = f"z9hG4bK-{secrets.token_hex(6)}"
        routes = [f"Route: {r}" for r in call.route]
        return self._request(call, method, call.remote_target, routes, b"")

    def _ack_2xx(self, call: _Call) -> None:
        cseq, branch = call.cseq, call.branch
        ack = self._in_dialog(call, "ACK")
        call.branch = branch
        call.cseq = cseq
        self.sip.sendto(ack, self.s.target)  # the first route is the edge (loose routing)

    def _send_bye(self, call: _Call, now: float) -> None:
        call.cseq += 1
        call.sent = self._in_dialog(call, "BYE")
        call.result.state = "bye"
        call.retrans_at, call.retrans_every = now + T1, T1
        call.sent_at = now
        self.sip.sendto(call.sent, self.s.target)

    def _finish(self, call: _Call, state: str) -> None:
        call.result.state = state
        call.retrans_at = None
        slot = self.slots[call.result.index % SLOTS]
        if call in slot:
            slot.remove(call)
        if call.rtp.fileno() >= 0:
            self.sel.unregister(call.rtp)
            call.rtp.close()

    # -- RTP -------------------------------------------------------------------------------

    def _slot_time(self, slot: int, now: float) -> float:
        """The first tick of ``slot`` at or after ``now`` (ticks: t0 + k * FRAME / SLOTS)."""
        phase = self.t0 + slot * FRAME / SLOTS
        return phase + math.ceil(max(0.0, now - phase) / FRAME) * FRAME

    def _send_slot(self, slot: list[_Call], now: float) -> None:
        for call in list(slot):
            if call.result.state != "media":
                continue
            if now >= call.bye_at:
                self._send_bye(call, now)
                slot.remove(call)
                continue
            remote = call.remote_rtp
            if remote is None:
                continue
            while call.next_send <= now:
                if now - call.next_send > FRAME / 2:
                    call.result.late_sends += 1
                header = struct.pack(
                    "!BBHII",
                    0x80,
                    0x80 if call.seq == 0 else 0,
                    call.seq & 0xFFFF,
                    (call.seq * 160) & 0xFFFFFFFF,
                    call.ssrc,
                )
                try:
                    call.rtp.sendto(header + PAYLOAD, remote)
                    call.result.tx += 1
                except OSError as exc:
                    self.errors[f"RTP send: {exc.strerror}"] += 1
                call.seq += 1
                call.next_send += FRAME

    def _on_rtp(self, call: _Call, now: float) -> None:
        r = call.result
        while True:
            try:
                data = call.rtp.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.errors[f"RTP recv: {exc.strerror}"] += 1
                return
            if len(data) < 12 or data[1] & 0x7F != 0:
                continue
            r.rx += 1
            if data[12:] in ECHOES:
                r.echo += 1
                r.last_echo_s = now - call.media_from
            if call.last_rx and now - call.media_from > SETTLE:
                gap = (now - call.last_rx) * 1e3
                if gap > GAP_MS:
                    r.gaps += 1
                r.max_gap_ms = max(r.max_gap_ms, gap)
            call.last_rx = now

    # -- the loop --------------------------------------------------------------------------

    def _retransmit(self, now: float) -> None:
        for call in self.calls:
            at = call.retrans_at
            if at is None or now < at:
                continue
            if now - call.sent_at > 64 * T1 / 4:  # 8 s: give up (Timer B/F would be 32 s)
                self._finish(call, "timeout")
                continue
            call.retrans_every = min(call.retrans_every * 2, 4.0)
            call.retrans_at = now + call.retrans_every
            self.sip.sendto(call.sent, self.s.target)

    def run(self) -> dict[str, Any]:
        s = self.s
        t0 = self.t0 = time.monotonic()
        next_tick = t0
        tick = 0
        started = 0
        deadline = t0 + s.calls / s.rate + s.hold + 20
        next_retrans_scan = t0
        while time.monotonic() < deadline:
            now = time.monotonic()
            while started < s.calls and t0 + started / s.rate <= now:
                self.start_call(s.first_index + started, now)
                started += 1
            if now >= next_tick:
                self._send_slot(self.slots[tick % SLOTS], now)
                tick += 1
                next_tick += FRAME / SLOTS
                if next_tick < now - 1.0:  # far behind: the sends catch up per call
                    next_tick = now
            if now >= next_retrans_scan:
                self._retransmit(now)
                next_retrans_scan = now + 0.05
            if started == s.calls and all(_done(c.result.state) for c in self.calls):
                break
            wait = next_tick - time.monotonic()
            if started < s.calls:
                wait = min(wait, t0 + started / s.rate - time.monotonic())
            for key, _ in self.sel.select(max(0.0, wait)):
                now = time.monotonic()
                if key.data is None:
                    self._drain_sip(now)
                elif key.data.rtp.fileno() >= 0:  # not closed by an earlier event of this batch
                    self._on_rtp(key.data, now)
        for call in self.calls:
            if not _done(call.result.state):
                self._finish(call, "timeout")
            if call.result.last_echo_s is not None:
                call.result.last_echo_s = round(call.result.last_echo_s, 3)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "calls": [asdict(c.result) for c in self.calls],
            "errors": dict(self.errors),
            "samples": self.samples,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.monotonic() - t0,
        }

    def _drain_sip(self, now: float) -> None:
        while True:
            try:
                data, source = self.sip.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            self._on_sip(data, source, now)


def _done(state: str) -> bool:
    return state in ("completed", "ended_by_server", "failed", "timeout")


def _sdp_media(body: bytes) -> tuple[str, int] | None:
    """The c= address and the audio m= port of an SDP answer (enough for a load generator)."""
    host, port = None, None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line[9:].strip()
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return (host, port) if host and port else None


def run(settings: LoadSettings) -> dict[str, Any]:
    """Place the calls of ``settings`` in this process; the per-call results and our CPU."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return Generator(settings).run()


def command(settings: LoadSettings, procs: int = 1) -> list[str]:
    """The command line running ``settings`` in ``procs`` processes (JSON on stdout)."""
    s = settings
    args = [
        sys.executable, "-m", "bench._media_calls", "--target", f"{s.target[0]}:{s.target[1]}",
        "--number", s.number, "--calls", str(s.calls), "--rate", f"{s.rate:g}",
        "--hold", f"{s.hold:g}", "--procs", str(procs), "--local-host", s.local_host,
    ]  # fmt: skip
    if s.user is not None and s.password is not None:
        args += ["--user", s.user, "--password", s.password]
    return args


def run_processes(settings: LoadSettings, procs: int) -> dict[str, Any]:
    """Split the calls over ``procs`` processes (each at ``rate / procs``); merged results."""
    children = []
    per = [settings.calls // procs + (1 if i < settings.calls % procs else 0) for i in range(procs)]
    first = settings.first_index
    for n in per:
        if n == 0:
            continue
        part = LoadSettings(**{**asdict(settings), "calls": n, "first_index": first})
        part.rate = settings.rate * n / settings.calls
        args = [*command(part, 1), "--first-index", str(first)]
        children.append(subprocess.Popen(args, stdout=subprocess.PIPE, env=_env()))
        first += n
    merged: dict[str, Any] = {
        "calls": [],
        "errors": Counter(),
        "samples": {},
        "cpu_s": 0.0,
        "wall_s": 0.0,
    }
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"load generator process failed ({child.returncode})")
        part_result = json.loads(out)
        merged["calls"] += part_result["calls"]
        merged["errors"].update(part_result["errors"])
        merged["samples"].update(part_result["samples"])
        merged["cpu_s"] += part_result["cpu_s"]
        merged["wall_s"] = max(merged["wall_s"], part_result["wall_s"])
    merged["errors"] = dict(merged["errors"])
    return merged


def _env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [root, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="host:port of the SIP edge (UDP)")
    p.add_argument("--number", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--rate", type=float, default=50.0, help="new calls per second")
    p.add_argument("--hold", type=float, default=20.0, help="seconds of RTP per call")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--local-host", default="127.0.0.1")
    p.add_argument("--first-index", type=int, default=0)
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    settings = LoadSettings(
        target=(host, int(port)),
        number=a.number,
        user=a.user,
        password=a.password,
        calls=a.calls,
        rate=a.rate,
        hold=a.hold,
        local_host=a.local_host,
        first_index=a.first_index,
    )
    result = run(settings) if a.procs <= 1 else run_processes(settings, a.procs)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
