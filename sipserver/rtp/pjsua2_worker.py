"""pjsua2 media worker: a SIP user agent on loopback that turns calls into 20 ms PCM frames.

Run as a process (the dispatcher starts one per slot)::

    python -m sipserver.rtp.pjsua2_worker --link PATH --sip-host 127.0.0.1 --sip-port 0 \
        --rtp-port 40000 --rtp-port-count 200 --worker-id pjsua2-0 [--sample-rate 8000]

One pjsua2 Endpoint per process (pjsua is a singleton): null sound device, a UDP SIP transport on
``sip_host:sip_port`` (port 0 picks one; HELLO reports it), RTP ports from the given range, codecs
PCMU > PCMA > G722 (every other codec disabled), RFC 4733 telephone-event, no registration.
Capacity is read from the library after ``libInit`` (``pjsua_call_get_max_count``: the PyPI wheel
clamps ``maxCalls`` to its compile-time PJSUA_MAX_CALLS, 4) and sent in HELLO; pjsua itself
answers 486 to a call beyond it.

Threads:

- **pjsua thread** (:class:`PjsuaThread`): owns the Endpoint from ``libCreate`` to ``libDestroy``
  (``threadCnt=0``) and polls ``libHandleEvents(10 ms)`` in a loop; every SIP/call callback runs
  there. The loop thread asks it for work (hang up, shut down) through a queue drained between
  polls, so every pjsua2 API call happens on the thread that owns the library. A dedicated thread
  rather than ``run_in_executor`` per poll: ``libHandleEvents`` blocks in ``select()`` (with the
  GIL released, measured), a thread-pool hop every 10 ms costs more and runs on changing threads
  that would each need ``libRegisterThread``.
- **media clock thread** (pjlib's): frame callbacks of :mod:`sipserver.rtp.bridge`.
- **asyncio loop** (main thread): the frame link. Callbacks of the other threads reach it with
  ``loop.call_soon_threadsafe`` and never wait for it.

The link dropping ends the worker with exit status 1 after hanging up its calls (the dispatcher
restarts it), as does the pjsua thread ending unexpectedly; SIGTERM/SIGINT hang up every call,
destroy the library and exit 0. A library that fails to start exits 2.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field

from sipserver.observability import configure_logging
from sipserver.rtp.bridge import (
    BridgeCounters,
    OutboundFrames,
)
from sipserver.rtp.framelink import (
    Audio,
    AudioFrame,
    CallEnded,
    Dtmf,
    FrameLink,
    Hello,
    LinkRecord,
    Stats,
    open_link,
)
from sipserver.rtp.pjsua2_ua import (
    PjsuaThread,
    StartedInfo,
    WorkerOptions,
    WorkerSink,
    describe_error,
)
from sipserver.rtp.worker_args import common_options, worker_parser

__all__ = ["Pjsua2Worker", "PjsuaThread", "WorkerOptions", "main"]

BATCH_DELAY = 0.005
"""Seconds the loop waits after the first frame of a tick before sending the AUDIO record.

The conference bridge delivers the frames of all calls back to back on one clock tick, so a few
milliseconds gather the whole tick into one record."""

MAX_PENDING_FRAMES_PER_CALL = 50
"""Inbound frames held per call when the loop cannot flush (1 s); older ones are dropped."""


# ------------------------------------------------------------------------------------------------
# asyncio side
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LinkCall:
    """Loop-thread state of one call on the frame link."""

    outbound: OutboundFrames
    counters: BridgeCounters
    rx_seq: int = 0
    rx_timestamp: int = 0
    pending: list[AudioFrame] = field(default_factory=list)


class Pjsua2Worker:
    """The worker process: pjsua thread + frame link."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self._samples = options.sample_rate * 20 // 1000
        self._calls: dict[int, _LinkCall] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._link: FrameLink | None = None
        self._pj: PjsuaThread | None = None
        self._stop = asyncio.Event()
        self._pjsua_died = False
        self.counters: dict[str, int] = {
            "calls_started": 0,
            "calls_ended": 0,
            "rx_frames": 0,
            "rx_overflow": 0,
            "rx_dropped": 0,
            "tx_frames": 0,
            "tx_underflow": 0,
            "tx_overflow": 0,
            "tx_unknown_call": 0,
            "dtmf": 0,
        }

    # -- records towards main ---------------------------------------------------------------------

    def _send(self, record: LinkRecord) -> None:
        if self._link is not None:
            self._link.send(record)

    def _on_call_started(self, info: StartedInfo) -> None:
        self._calls[info.record.call] = _LinkCall(info.outbound, info.counters)
        self.counters["calls_started"] += 1
        self._send(info.record)

    def _on_call_ended(self, record: CallEnded) -> None:
        call = self._calls.pop(record.call, None)
        if call is not None:
            if call.pending:  # the last frames go before CALL_ENDED
                self._send(Audio(tuple(call.pending)))
                call.pending.clear()
            self._retire_counters(call.counters)
        self.counters["calls_ended"] += 1
        self._send(record)

    def _on_dtmf(self, record: Dtmf) -> None:
        self.counters["dtmf"] += 1
        self._flush()  # audio before the digit, in order
        self._send(record)

    def _deliver(self, number: int, pcm: bytes) -> None:
        call = self._calls.get(number)
        if call is None:
            return
        call.pending.append(AudioFrame(number, call.rx_seq, call.rx_timestamp, pcm))
        call.rx_seq = (call.rx_seq + 1) & 0xFFFFFFFF
        call.rx_timestamp = (call.rx_timestamp + self._samples) & 0xFFFFFFFF
        if len(call.pending) > MAX_PENDING_FRAMES_PER_CALL:
            del call.pending[0]
            self.counters["rx_overflow"] += 1
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        """Send the frames of every call gathered for this tick as one AUDIO record."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        frames: list[AudioFrame] = []
        for call in self._calls.values():
            if call.pending:
                frames.extend(call.pending)
                call.pending.clear()
        if frames:
            self._send(Audio(tuple(frames)))

    def _retire_counters(self, c: BridgeCounters) -> None:
        self.counters["rx_frames"] += c.rx_frames
        self.counters["rx_dropped"] += c.rx_dropped
        self.counters["tx_frames"] += c.tx_frames
        self.counters["tx_underflow"] += c.tx_underflow
        self.counters["tx_overflow"] += c.tx_overflow

    def stats(self) -> dict[str, int]:
        """Counters of the worker (STATS): ended calls' totals plus the live calls'.

        ``calls``/``capacity``: calls up now and the limit; ``calls_total``: INVITEs accepted;
        ``calls_refused``: INVITEs pjsua refused itself (486 at capacity); ``rx_frames``: caller
        frames; ``rx_overflow``: caller frames dropped because the loop could not flush;
        ``tx_frames``: session frames played; ``tx_underflow``: ticks that played silence;
        ``tx_overflow``: session frames dropped from a full outbound queue; ``tx_unknown_call``:
        session frames for a call that is gone; ``ports``: pooled conference ports;
        ``dropped_frames``/``lost_frames``: the frame link's send drops and receive gaps;
        ``rtp_received``, ``rtp_lost``, ``rtp_late``, ``concealed_frames``, ``jbuf_empty``,
        ``jitter_ms_max``: pjmedia's stream counters (see ``pjsua2_ua.stream_counters``), read
        once a second.
        """
        out = dict(self.counters)
        for call in self._calls.values():
            c = call.counters
            out["rx_frames"] += c.rx_frames
            out["rx_dropped"] += c.rx_dropped
            out["tx_frames"] += c.tx_frames
            out["tx_underflow"] += c.tx_underflow
            out["tx_overflow"] += c.tx_overflow
        pj_thread = self._pj
        out["calls"] = len(self._calls)
        out["capacity"] = pj_thread.capacity if pj_thread else 0
        out["calls_refused"] = pj_thread.calls_refused if pj_thread else 0
        out["calls_total"] = pj_thread.calls_total if pj_thread else 0
        out["ports"] = pj_thread.port_count if pj_thread else 0
        if pj_thread is not None:
            out.update(pj_thread.rtp_totals)
        if self._link is not None:
            out["dropped_frames"] = self._link.dropped_frames
            out["lost_frames"] = self._link.lost_frames
        return out

    # -- records from main ----------------------------------------------------------------------

    def _on_record(self, record: LinkRecord) -> None:
        pj_thread = self._pj
        assert pj_thread is not None
        if isinstance(record, Audio):
            for frame in record.frames:
                call = self._calls.get(frame.call)
                if call is None:
                    self.counters["tx_unknown_call"] += 1
                else:
                    call.outbound.push(frame.pcm)
        elif isinstance(record, CallEnded):
            number, status = record.call, record.status
            pj_thread.submit(lambda: pj_thread.hangup(number, status))

    def _on_pjsua_stopped(self) -> None:
        if not self._stop.is_set():  # the pjsua thread ended without being asked to
            self._pjsua_died = True
            self._stop.set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.stats_interval)
            self._send(Stats(self.stats()))

    async def _read_link(self, link: FrameLink) -> None:
        async for record in link.records():
            self._on_record(record)

    async def run(self) -> int:
        """Run until SIGTERM (returns 0) or until the link drops (returns 1)."""
        loop = asyncio.get_running_loop()
        sink = WorkerSink(
            self._on_call_started,
            self._on_call_ended,
            self._on_dtmf,
            self._deliver,
            self._on_pjsua_stopped,
        )
        pj_thread = PjsuaThread(self.options, loop, sink)
        self._pj = pj_thread
        pj_thread.start()
        await loop.run_in_executor(None, pj_thread.ready.wait)
        if pj_thread.startup_error is not None:
            pj_thread.log.error(
                "worker_start_failed", error=describe_error(pj_thread.startup_error)
            )
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        status = 1
        try:
            link = await open_link(self.options.link)
        except OSError as exc:
            pj_thread.log.error("worker_link_failed", link=self.options.link, error=str(exc))
            await self._stop_pjsua()
            return 1
        self._link = link
        link.send(
            Hello(
                worker_id=self.options.worker_id,
                pid=os.getpid(),
                kind="pjsua2",
                sip_host=self.options.sip_host,
                sip_port=pj_thread.sip_port,
                capacity=pj_thread.capacity,
                sample_rate=self.options.sample_rate,
            )
        )
        pj_thread.log.info(
            "worker_ready",
            sip=f"{self.options.sip_host}:{pj_thread.sip_port}",
            capacity=pj_thread.capacity,
        )
        reader = asyncio.create_task(self._read_link(link))
        stats = asyncio.create_task(self._stats_loop())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                status = 1 if self._pjsua_died else 0
            else:
                pj_thread.log.warning("worker_link_closed", action="hanging up")
                error = reader.exception()
                if error is not None:
                    pj_thread.log.error("worker_link_error", error=repr(error))
        finally:
            await self._stop_pjsua()
            self._flush()
            if status == 0:
                self._send(Stats(self.stats()))
            for task in (reader, stats, stopper):
                task.cancel()
            await asyncio.gather(reader, stats, stopper, return_exceptions=True)
            await link.close(flush_timeout=1.0)
        return status

    async def _stop_pjsua(self) -> None:
        pj_thread = self._pj
        if pj_thread is None or not pj_thread.is_alive():
            return
        pj_thread.stop()
        await asyncio.get_running_loop().run_in_executor(None, pj_thread.join)
        await asyncio.sleep(0)  # run the CALL_ENDED callbacks the thread queued last


def parse_args(argv: list[str] | None = None) -> WorkerOptions:
    """Parse the worker's command line (the options of both workers: :mod:`.worker_args`)."""
    p = worker_parser("python -m sipserver.rtp.pjsua2_worker", "pjsua2 media worker")
    p.add_argument(
        "--pjsip-log-level",
        type=int,
        choices=range(7),
        default=None,
        help="pjsip's own log level 0-6 (default 2, warnings; 4 with --log-level debug)",
    )
    a = p.parse_args(argv)
    pjsip_log_level = a.pjsip_log_level
    if pjsip_log_level is None:
        pjsip_log_level = 4 if a.log_level == "debug" else 2
    return WorkerOptions(**common_options(a), pjsip_log_level=pjsip_log_level)


def main(argv: list[str] | None = None) -> int:
    """Process entry: run the worker, return its exit status."""
    options = parse_args(argv)
    configure_logging(options.log_format, options.log_level)
    return asyncio.run(Pjsua2Worker(options).run())


if __name__ == "__main__":
    sys.exit(main())
