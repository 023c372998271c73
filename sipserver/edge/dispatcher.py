"""The media worker pool: spawn worker processes, track them over the frame link, pick one per
call, restart the ones that die.

Each worker is a process (``python -m sipserver.rtp.pjsua2_worker``, or with
``server.media.engine: native`` ``python -m sipserver.rtp.call_worker --capacity N``, a call
worker that also runs its calls' sessions and takes calls once its models are warm: STATS
``ready: 1``) with its own SIP port on
loopback and its own RTP port range. It connects back to the frame link socket and says HELLO
with its SIP address and capacity (read from the library, never assumed here). A worker counts
as *up* from its HELLO until its process exits or its link closes; then every call it held is
reported lost (the edge ends those dialogs) and a replacement is started with a back-off.

Health, two checks:

- the frame link: every ``link_ping_interval`` seconds each worker is sent a PING, which its
  link answers with a PONG; a worker from which nothing at all (PONG, audio, STATS) arrived for
  ``link_timeout`` seconds is stopped (SIGSTOP), hung, or has its event loop blocked: it is
  killed and replaced, and its calls end (the edge sends BYE to the callers). A stopped worker
  is found within ``link_timeout + link_ping_interval`` seconds (4 + 0.5 by default, under the
  5 s of issue [2/7]; it took ~21 s with the OPTIONS check alone);
- SIP: every ``health_interval`` seconds each worker gets a SIP OPTIONS on its loopback port;
  ``health_failures`` unanswered pings in a row kill it (a hung SIP stack behind a live
  process and event loop), and it is replaced like a worker that died.

Scaling: at least ``min_workers`` run; when the free capacity of the up workers falls below
``spare_calls`` another is started, up to ``max_workers``. :meth:`pick` returns the least loaded
up worker, ``FULL`` when every up worker is at capacity, or None when none is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sipserver.observability import get_logger
from sipserver.rtp.framelink import FrameLink, Hello, LinkRecord, Ping, Pong, Stats, serve_links
from sipserver.tasks import cancel_and_wait

__all__ = ["FULL", "WORKER_MODULES", "MediaWorker", "WorkerPool", "WorkerPoolSettings"]

log = get_logger(__name__)


class _Full(enum.Enum):
    FULL = "full"


FULL: Literal[_Full.FULL] = _Full.FULL
"""Returned by :meth:`WorkerPool.pick` when every worker that is up is at capacity."""


@dataclass(frozen=True, slots=True)
class WorkerPoolSettings:
    """How many workers, where they listen, and which RTP ports each one gets."""

    link_path: str
    """Unix socket of the frame link (the pool listens, workers connect)."""
    min_workers: int = 1
    max_workers: int = 4
    spare_calls: int = 1
    """Start another worker when fewer free call slots than this remain."""
    sip_host: str = "127.0.0.1"
    rtp_host: str = "127.0.0.1"
    rtp_port_start: int = 20000
    rtp_ports_per_worker: int = 40
    """Each worker gets its own slice of the RTP range (2 ports per call: RTP + RTCP)."""
    sample_rate: int = 8000
    session_timers: str = "optional"
    """RFC 4028 session timers in the workers: ``optional``, ``always`` or ``off``."""
    session_expires: int = 1800
    """Session interval (seconds) of sessions a worker starts itself."""
    min_se: int = 90
    """Smallest Session-Expires accepted (422 below); >= 90."""
    answer_delay: float = 0.0
    """Seconds a worker rings (180) before answering."""
    rtp_timeout: float = 60.0
    """Seconds without caller RTP before a worker hangs up (0: never)."""
    link_timeout: float = 4.0
    """Seconds without any record from a worker (it is PINGed every ``link_ping_interval``)
    after which it is declared lost, killed and replaced (0: off)."""
    link_ping_interval: float = 0.5
    """Seconds between PINGs on each worker's frame link (and between checks of
    ``link_timeout``)."""
    health_interval: float = 5.0
    """Seconds between SIP OPTIONS pings to each worker (0: off)."""
    health_failures: int = 3
    """Unanswered pings in a row after which a worker is killed (and restarted): its SIP stack
    is hung even if its process and frame link are alive."""
    restart_backoff: float = 1.0
    """Seconds before a dead worker's slot is started again (doubles up to 30 s while it keeps
    dying within 10 s of its start)."""
    log_format: str = "console"
    """``console`` or ``json``: the workers log like the main process, into the same stream."""
    log_level: str = "info"
    """Minimum level of the workers' logs (``debug`` also turns up pjsip's own)."""
    engine: Literal["pjsua2", "native"] = "pjsua2"
    """Which worker runs: pjsua2 media workers or native call workers
    (:mod:`sipserver.rtp.call_worker`, given ``--capacity``)."""
    capacity: int = 0
    """Calls each native call worker takes (``--capacity``); pjsua2 workers report their own."""


@dataclass
class MediaWorker:
    """One worker process as the pool sees it."""

    worker_id: str
    slot: int
    """Index of its RTP port slice."""
    process: asyncio.subprocess.Process | None = None
    link: FrameLink | None = None
    hello: Hello | None = None
    calls: set[int] = field(default_factory=set)
    """Worker-local call numbers in progress."""
    reserved: int = 0
    """Calls routed to the worker whose media has not started yet."""
    started_at: float = 0.0
    last_heard: float = 0.0
    """Monotonic time of the last record received from the worker."""
    models_ready: bool = False
    """A call worker (HELLO kind ``native``) has its configuration's models warm: its STATS
    said ``ready: 1``. Always true for a pjsua2 worker (its sessions run in main)."""

    @property
    def up(self) -> bool:
        return self.hello is not None and self.link is not None and not self.link.closed

    @property
    def ready(self) -> bool:
        """Up and able to take a call now (a call worker: its models are warm)."""
        return self.up and self.models_ready

    @property
    def capacity(self) -> int:
        return self.hello.capacity if self.hello is not None else 0

    @property
    def load(self) -> int:
        return len(self.calls) + self.reserved

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.load)


class _OptionsPinger(asyncio.DatagramProtocol):
    """Sends OPTIONS and waits for any final response with the same Call-ID."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        marker = data.find(b"\r\nCall-ID: ")
        if not data.startswith(b"SIP/2.0 2") or marker < 0:
            return
        end = data.find(b"\r\n", marker + 2)
        call_id = data[marker + 11 : end].decode("ascii", "replace").strip()
        future = self._waiting.pop(call_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def ping(
        self, transport: asyncio.DatagramTransport, host: str, port: int, timeout: float = 2.0
    ) -> bool:
        n = next(self._ids)
        call_id = f"health-{n}-{id(self):x}"
        local = transport.get_extra_info("sockname")
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-health-{n};rport\r\n"
            f"From: <sip:health@{local[0]}>;tag=h{n}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        transport.sendto(request.encode(), (host, port))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting.pop(call_id, None)


WORKER_MODULES: dict[str, str] = {
    "pjsua2": "sipserver.rtp.pjsua2_worker",
    "native": "sipserver.rtp.call_worker",
}
"""The worker module of each ``server.media.engine``."""

RecordHandler = Callable[[MediaWorker, LinkRecord], None]
LostHandler = Callable[[MediaWorker, set[int]], None]


class WorkerPool:
    """Supervises the media worker processes.

    Args:
        settings: pool size, addresses and port ranges.
        on_record: called on the event loop for every record a worker sends (after HELLO).
        on_worker_lost: called with the worker and the calls it held when it goes away.
        on_worker_up: called with a worker when it said HELLO (it takes calls from now on).
        command: the worker command line without its options (tests may replace it); by
            default the module of ``settings.engine``.
    """

    def __init__(
        self,
        settings: WorkerPoolSettings,
        *,
        on_record: RecordHandler,
        on_worker_lost: LostHandler,
        on_worker_up: Callable[[MediaWorker], None] | None = None,
        command: tuple[str, ...] | None = None,
    ) -> None:
        if not 1 <= settings.min_workers <= settings.max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        self.settings = settings
        self._on_record = on_record
        self._on_worker_lost = on_worker_lost
        self._on_worker_up = on_worker_up
        self._command = command or (sys.executable, "-m", WORKER_MODULES[settings.engine])
        self._workers: dict[str, MediaWorker] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._backoff: dict[int, float] = {}
        self.restarts = 0

    # ------------------------------------------------------------------ queries

    @property
    def workers(self) -> list[MediaWorker]:
        return list(self._workers.values())

    def by_id(self, worker_id: str) -> MediaWorker | None:
        return self._workers.get(worker_id)

    def pick(self) -> MediaWorker | Literal[_Full.FULL] | None:
        """The least loaded worker that is up (and ready) and has a free call slot."""
        up = [w for w in self._workers.values() if w.ready]
        if not up:
            return None
        best = max(up, key=lambda w: (w.free, -w.load))
        if best.free <= 0:
            return FULL
        return best

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen for worker links and start ``min_workers`` workers."""
        self._server = await serve_links(self.settings.link_path, self._serve)
        for _ in range(self.settings.min_workers):
            self._spawn(self._free_slot())
        if self.settings.health_interval > 0:
            task = asyncio.create_task(self._health_loop(), name="media-worker-health")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.settings.link_timeout > 0:
            task = asyncio.create_task(self._liveness_loop(), name="media-worker-liveness")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_ready(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` workers are up (start-up and tests)."""
        deadline = time.monotonic() + timeout
        while sum(w.up for w in self._workers.values()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} media workers came up in {timeout} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 5 s) and the link server."""
        self._closing = True
        for worker in list(self._workers.values()):
            proc = worker.process
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for worker in list(self._workers.values()):
            proc = worker.process
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await cancel_and_wait(task)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reserve(self, worker: MediaWorker) -> None:
        """Count a call routed to ``worker`` before its media starts."""
        worker.reserved += 1
        self._maybe_scale()

    def release(self, worker: MediaWorker) -> None:
        """Undo :meth:`reserve` (the call started, failed or was cancelled)."""
        worker.reserved = max(0, worker.reserved - 1)

    # ------------------------------------------------------------------ internals

    def _free_slot(self) -> int:
        used = {w.slot for w in self._workers.values()}
        return next(i for i in itertools.count() if i not in used)

    def _maybe_scale(self) -> None:
        if self._closing or len(self._workers) >= self.settings.max_workers:
            return
        starting = any(not w.up for w in self._workers.values())
        free = sum(w.free for w in self._workers.values() if w.up)
        if not starting and free < self.settings.spare_calls:
            self._spawn(self._free_slot())

    def _spawn(self, slot: int) -> None:
        s = self.settings
        worker_id = f"w{next(self._ids)}"
        worker = MediaWorker(worker_id=worker_id, slot=slot, started_at=time.monotonic())
        self._workers[worker_id] = worker
        args = [
            *self._command,
            "--link",
            s.link_path,
            "--worker-id",
            worker_id,
            "--sip-host",
            s.sip_host,
            "--sip-port",
            "0",
            "--rtp-host",
            s.rtp_host,
            "--rtp-port",
            str(s.rtp_port_start + slot * s.rtp_ports_per_worker),
            "--rtp-port-count",
            str(s.rtp_ports_per_worker),
            "--sample-rate",
            str(s.sample_rate),
            "--session-timers",
            s.session_timers,
            "--session-expires",
            str(s.session_expires),
            "--min-se",
            str(s.min_se),
            "--answer-delay",
            str(s.answer_delay),
            "--rtp-timeout",
            str(s.rtp_timeout),
            "--log-format",
            s.log_format,
            "--log-level",
            s.log_level,
        ]
        if s.engine == "native":
            args += ["--capacity", str(s.capacity)]
        task = asyncio.create_task(self._run(worker, args), name=f"media-worker-{worker_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, worker: MediaWorker, args: list[str]) -> None:
        worker.process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        log.info("media_worker_started", worker=worker.worker_id, pid=worker.process.pid)
        code = await worker.process.wait()
        self._lost(worker, f"exited with {code}")

    async def _serve(self, link: FrameLink) -> None:
        worker: MediaWorker | None = None
        try:
            async for record in link.records():
                if worker is not None:
                    worker.last_heard = time.monotonic()
                    if isinstance(record, Pong):
                        continue  # liveness only (see _liveness_loop)
                if worker is None:
                    if not isinstance(record, Hello) or record.worker_id not in self._workers:
                        log.warning("media_worker_unknown_link", record=type(record).__name__)
                        return
                    worker = self._workers[record.worker_id]
                    worker.link, worker.hello = link, record
                    worker.models_ready = record.kind != "native"
                    worker.last_heard = time.monotonic()
                    log.info(
                        "media_worker_up",
                        worker=worker.worker_id,
                        sip=f"{record.sip_host}:{record.sip_port}",
                        capacity=record.capacity,
                    )
                    if self._on_worker_up is not None:
                        self._on_worker_up(worker)
                    continue
                if isinstance(record, Stats) and record.counters.get("ready") == 1:
                    worker.models_ready = True
                self._on_record(worker, record)
        finally:
            if worker is not None:
                self._lost(worker, "link closed")

    async def _liveness_loop(self) -> None:
        """PING every worker that is up on its frame link; declare lost one that sent nothing
        for ``link_timeout`` seconds (stopped, hung, or its event loop blocked)."""
        nonces = itertools.count(1)
        timeout, interval = self.settings.link_timeout, self.settings.link_ping_interval
        tick = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            late, tick = now - tick - interval, now
            for worker in [w for w in self._workers.values() if w.up]:
                if late > 1.0:
                    # This loop itself was held up (a stall of the main process): the workers'
                    # records waited unread meanwhile. Judge from now on, never from that gap.
                    worker.last_heard = max(worker.last_heard, now)
                silent = now - worker.last_heard
                if silent > timeout:
                    log.warning(
                        "media_worker_unresponsive",
                        worker=worker.worker_id,
                        silent_s=round(silent, 2),
                        calls=len(worker.calls),
                    )
                    self._lost(worker, f"nothing on the frame link for {silent:.1f} s")
                elif worker.link is not None:
                    worker.link.send(Ping(next(nonces)))

    async def _health_loop(self) -> None:
        """OPTIONS every worker that is up; kill one that stops answering."""
        loop = asyncio.get_running_loop()
        misses: dict[str, int] = {}
        transport, protocol = await loop.create_datagram_endpoint(
            _OptionsPinger, local_addr=(self.settings.sip_host, 0)
        )
        try:
            while True:
                await asyncio.sleep(self.settings.health_interval)
                for worker in [w for w in self._workers.values() if w.up]:
                    assert worker.hello is not None
                    ok = await protocol.ping(
                        transport, worker.hello.sip_host, worker.hello.sip_port
                    )
                    misses[worker.worker_id] = 0 if ok else misses.get(worker.worker_id, 0) + 1
                    if misses[worker.worker_id] >= self.settings.health_failures:
                        log.warning("media_worker_unhealthy", worker=worker.worker_id)
                        misses.pop(worker.worker_id)
                        self._lost(worker, "no answer to OPTIONS")
        finally:
            transport.close()

    def _lost(self, worker: MediaWorker, why: str) -> None:
        if self._workers.get(worker.worker_id) is not worker:
            return  # already handled (link closed and process exited both report it)
        del self._workers[worker.worker_id]
        calls = set(worker.calls)
        worker.calls.clear()
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        if self._closing:
            return
        log.warning("media_worker_lost", worker=worker.worker_id, why=why, calls=len(calls))
        self._on_worker_lost(worker, calls)
        self.restarts += 1
        lived = time.monotonic() - worker.started_at
        backoff = self._backoff.get(worker.slot, self.settings.restart_backoff)
        self._backoff[worker.slot] = min(30.0, backoff * 2) if lived < 10 else backoff
        loop = asyncio.get_running_loop()
        loop.call_later(backoff, self._respawn, worker.slot)

    def _respawn(self, slot: int) -> None:
        if self._closing:
            return
        if len(self._workers) < self.settings.max_workers:
            self._spawn(slot)
