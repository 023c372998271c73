"""bench/soak.py's probes: SIP OPTIONS over UDP and TCP and GET /readyz, from another address,
timed one after the other in a thread of their own."""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time

from bench._soak_report import ProbeWindow
from sipserver.sip.framing import StreamFramer
from sipserver.sip.message import SipParseError, SipResponse, parse_message

__all__ = ["ALL_PROBES", "PROBES", "PROBE_SOURCE", "ProbeError", "Probes"]

PROBE_SOURCE = "127.0.0.2"
"""Probes come from another loopback address than the load (per-source limits stay apart)."""
PROBES = ("options_udp", "options_tcp", "readyz")
"""The probes soak.py runs."""
ALL_PROBES = (*PROBES, "register_udp")
"""Every probe kind; ``register_udp`` is an unauthenticated REGISTER over UDP, answered 401
(bench/media_load.py)."""
PROBE_TIMEOUT = 2.0
"""Seconds a probe waits for its answer before it counts as a timeout."""


class ProbeError(Exception):
    """A probe got an answer, but not the one expected (the text says what)."""


class Probes(threading.Thread):
    """OPTIONS over UDP and TCP and GET /readyz from :data:`PROBE_SOURCE`, one after the other,
    every ``every`` seconds, on blocking sockets in a thread of its own (the load's event loop
    delays nothing here). ``kinds`` picks other probes of :data:`ALL_PROBES` (``readyz``
    needs ``http_host_port``)."""

    def __init__(
        self,
        sip_port: int,
        http_host_port: str | None,
        every: float,
        *,
        kinds: tuple[str, ...] = PROBES,
    ) -> None:
        super().__init__(name="soak-probes", daemon=True)
        self.sip = ("127.0.0.1", sip_port)
        host, port = (http_host_port or "127.0.0.1:0").rsplit(":", 1)
        self.http = (host, int(port))
        self.every = every
        self.kinds = kinds
        self.window = {kind: ProbeWindow() for kind in kinds}
        self.whole = {kind: ProbeWindow() for kind in kinds}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._n = itertools.count(1)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((PROBE_SOURCE, 0))
        self._tcp: socket.socket | None = None
        self._framer = StreamFramer()
        self._conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def take(self) -> dict[str, ProbeWindow]:
        """The outcomes since the last call (and a fresh window)."""
        with self._lock:
            taken, self.window = self.window, {kind: ProbeWindow() for kind in self.kinds}
        for kind, window in taken.items():
            self.whole[kind].merge(window)
        return taken

    def run(self) -> None:
        every = {
            "options_udp": self._options_udp,
            "options_tcp": self._options_tcp,
            "readyz": self._readyz,
            "register_udp": self._register_udp,
        }
        probes = {kind: every[kind] for kind in self.kinds}
        next_at = time.monotonic()
        while not self._halt.is_set():
            for kind, probe in probes.items():
                t0 = time.monotonic()
                outcome: float | str | None
                try:
                    probe()
                    outcome = (time.monotonic() - t0) * 1000
                except TimeoutError:
                    outcome = None
                except (OSError, ProbeError, http.client.HTTPException) as exc:
                    outcome = str(exc)[:60] or type(exc).__name__
                with self._lock:
                    window = self.window[kind]
                    if isinstance(outcome, float):
                        window.latencies_ms.append(outcome)
                    elif outcome is None:
                        window.timeouts += 1
                    else:
                        window.errors[outcome] += 1
            next_at = max(next_at + self.every, time.monotonic())
            self._halt.wait(next_at - time.monotonic())
        self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    def _options(self, transport: str, port: int, method: str = "OPTIONS") -> tuple[bytes, str]:
        n = next(self._n)
        call_id = f"soak-probe-{n}@{PROBE_SOURCE}"
        host, sip_port = self.sip
        register = method == "REGISTER"
        aor = f"sip:probe@{host}" if register else f"sip:{host}:{sip_port}"
        lines = [
            f"{method} sip:{host}:{sip_port} SIP/2.0",
            f"Via: SIP/2.0/{transport} {PROBE_SOURCE}:{port};branch=z9hG4bK-soak-{n};rport",
            "Max-Forwards: 70",
            f"From: <{aor}>;tag=soak{n}",
            f"To: <{aor}>",
            f"Call-ID: {call_id}",
            f"CSeq: 1 {method}",
            *([f"Contact: <sip:probe@{PROBE_SOURCE}:{port}>", "Expires: 60"] if register else []),
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode(), call_id

    @staticmethod
    def _check(data: bytes, call_id: str, expect: tuple[int, ...] = (200,)) -> bool:
        """True for the answer (``expect``) to ``call_id``; False for another call's answer."""
        try:
            message = parse_message(data)
        except SipParseError as exc:
            raise ProbeError(f"unparsable answer: {exc}") from exc
        if not isinstance(message, SipResponse) or message.call_id != call_id:
            return False
        if message.status not in expect:
            raise ProbeError(f"{message.cseq[1]} answered {message.status}")
        return True

    def _options_udp(self, method: str = "OPTIONS", expect: tuple[int, ...] = (200,)) -> None:
        data, call_id = self._options("UDP", self._udp.getsockname()[1], method)
        deadline = time.monotonic() + PROBE_TIMEOUT
        self._udp.sendto(data, self.sip)
        while True:  # answers to earlier probes that timed out are skipped
            self._udp.settimeout(max(0.001, deadline - time.monotonic()))
            if self._check(self._udp.recv(65535), call_id, expect):
                return

    def _register_udp(self) -> None:
        """A REGISTER without credentials: the registrar's answer is the challenge (401), or
        404 when no agent or user owns ``probe`` (both are the registrar answering)."""
        self._options_udp("REGISTER", (401, 403, 404))

    def _options_tcp(self) -> None:
        if self._tcp is None:
            self._tcp = socket.create_connection(
                self.sip, timeout=PROBE_TIMEOUT, source_address=(PROBE_SOURCE, 0)
            )
            self._framer = StreamFramer()
        data, call_id = self._options("TCP", self._tcp.getsockname()[1])
        deadline = time.monotonic() + PROBE_TIMEOUT
        try:
            self._tcp.sendall(data)
            while True:
                self._tcp.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = self._tcp.recv(65535)
                if not chunk:
                    raise ProbeError("TCP connection closed by the server")
                if any(self._check(m, call_id) for m in self._framer.feed(chunk)):
                    return
        except BaseException:
            self._tcp.close()  # out of step: a new connection next time
            self._tcp = None
            raise

    def _readyz(self) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                *self.http, timeout=PROBE_TIMEOUT, source_address=(PROBE_SOURCE, 0)
            )
        try:
            self._conn.request("GET", "/readyz")
            response = self._conn.getresponse()
            response.read()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if response.status != 200:
            raise ProbeError(f"/readyz answered {response.status}")
