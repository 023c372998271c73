"""The pjsua2 side of a media worker: one Endpoint on its own thread, calls, DTMF, RTP checks.

:class:`PjsuaThread` owns the pjsua2 library (pjsua is a singleton per process) and every call
object; :mod:`sipserver.rtp.pjsua2_worker` runs it and connects it to the frame link. The
threading model is described there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pjsua2 as pj  # type: ignore[import-untyped]
import structlog

from sipserver.observability import get_logger
from sipserver.rtp.bridge import (
    BridgeCounters,
    CallAudioPort,
    OutboundFrames,
    PortBinding,
    PortPool,
    frame_bytes,
)
from sipserver.rtp.framelink import (
    CallEnded,
    CallStarted,
    Dtmf,
)
from sipserver.sip.headers import SRTP_HEADER

__all__ = [
    "SESSION_TIMER_USE",
    "PjsipLogWriter",
    "PjsuaThread",
    "StartedInfo",
    "WorkerCall",
    "WorkerOptions",
    "WorkerSink",
    "describe_error",
    "srtp_policy",
]

log = get_logger(__name__)

POLL_MS = 10
"""``libHandleEvents`` timeout of the pjsua thread: upper bound on command latency."""

CODEC_PRIORITY = {"PCMU/8000/1": 255, "PCMA/8000/1": 254, "G722/16000/1": 253}
"""Codecs offered/accepted, best first; every other codec of the wheel gets priority 0 (off)."""


DTMF_IS_END = 1 << 1
"""``PJMEDIA_STREAM_DTMF_IS_END`` flag of ``OnDtmfEventParam.flags`` (not exported by SWIG)."""

_MEDIA_UP = (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
"""Audio media states in which the call has a conference slot to connect the port to."""

SESSION_TIMER_USE = {
    "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
    "always": pj.PJSUA_SIP_TIMER_ALWAYS,
    "off": pj.PJSUA_SIP_TIMER_INACTIVE,
}
"""``--session-timers`` values -> pjsua's ``timerUse``."""

MIN_SE_FLOOR = 90
"""pjsip's ``ABS_MIN_SE``: a smaller ``timerMinSESec`` fails an assertion (aborts the process)."""

SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "required": pj.PJMEDIA_SRTP_MANDATORY,
}
"""An agent's ``sip.srtp`` (the edge's ``X-Sipserver-Srtp``) -> pjmedia's SRTP use. The worker
has one account per policy and :meth:`WorkerEndpoint.onSelectAccount` gives each INVITE the
account of its agent's policy (pjsua2 2.15 never calls ``Call.onCreateMediaTransportSrtp``,
measured). With SDES keying (RFC 4568) pjmedia answers an offer so: ``off``, plain RTP/AVP
(an RTP/SAVP-only offer is refused: 488); ``optional``, SRTP when the offer has ``a=crypto``;
``required``, 488 to an offer without it."""

_SRTP_LINE = re.compile(rf"^{SRTP_HEADER}[ \t]*:[ \t]*([A-Za-z]+)", re.IGNORECASE | re.MULTILINE)


def srtp_policy(whole_msg: str) -> str:
    """The ``X-Sipserver-Srtp`` policy of an INVITE (``off`` when absent or unknown)."""
    head = whole_msg.split("\r\n\r\n", 1)[0]
    found = _SRTP_LINE.search(head)
    policy = found.group(1).lower() if found else "off"
    return policy if policy in SRTP_USE else "off"


HANGUP_GRACE = 3.0
"""Seconds the pjsua thread waits for calls to end (BYE answered) when shutting down."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Command line of a worker process."""

    link: str
    """Path of the main process's frame link unix socket."""
    sip_host: str
    """Address of the SIP transport (loopback)."""
    sip_port: int
    """SIP port; 0 lets the OS pick one (reported in HELLO)."""
    rtp_host: str
    """Address RTP sockets bind to (defaults to sip_host)."""
    rtp_port: int
    """First RTP port of this worker's range."""
    rtp_port_count: int
    """Ports in the range (each call uses an RTP + RTCP pair)."""
    worker_id: str
    """Name of the worker in HELLO."""
    sample_rate: int = 8000
    """PCM sample rate on the frame link: 8000 or 16000."""
    stats_interval: float = 5.0
    """Seconds between STATS records."""
    rtp_timeout: float = 60.0
    """Hang up a call (BYE, reason ``rtp-timeout``) after this many seconds without an RTP
    packet from the caller, except while the caller holds the call; 0 disables."""
    log_format: Literal["auto", "console", "json"] = "auto"
    """Rendering of the worker's own log (``auto``, ``console``, ``json``), as the main
    process's."""
    log_level: str = "info"
    """Level of the worker's own log (``debug``, ``info``, ``warning``, ``error``)."""
    pjsip_log_level: int = 2
    """pjsip log level (0-6: fatal, error, warning, info, debug...); its lines become
    structlog ``pjsip`` events (:class:`PjsipLogWriter`)."""
    session_timers: str = "optional"
    """RFC 4028 session timers: ``optional``, ``always`` or ``off`` (:data:`SESSION_TIMER_USE`)."""
    session_expires: int = 1800
    """Session interval of sessions the worker starts itself (``always``), seconds."""
    min_se: int = 90
    """Smallest Session-Expires accepted (smaller gets 422 with Min-SE); >= 90."""
    answer_delay: float = 0.0
    """Seconds between 180 Ringing and 200 OK (a ring time; lets callers CANCEL)."""


@dataclass(frozen=True, slots=True)
class StartedInfo:
    """What the pjsua thread tells the loop when a call's media starts."""

    record: CallStarted
    outbound: OutboundFrames
    counters: BridgeCounters


# ------------------------------------------------------------------------------------------------
# pjsua thread
# ------------------------------------------------------------------------------------------------


def _native() -> ctypes.CDLL:
    """The wheel's extension module as a C library: the PJSIP C API it exports."""
    lib = ctypes.CDLL(sys.modules["pjsua2._pjsua2"].__file__)
    lib.pjsua_call_get_max_count.restype = ctypes.c_uint
    lib.pjsua_call_get_max_count.argtypes = []
    lib.pjsip_rdata_get_dlg.restype = ctypes.c_void_p
    lib.pjsip_rdata_get_dlg.argtypes = [ctypes.c_void_p]
    lib.pjsip_dlg_respond.restype = ctypes.c_int
    lib.pjsip_dlg_respond.argtypes = (
        ctypes.c_void_p,  # pjsip_dialog *
        ctypes.c_void_p,  # pjsip_rx_data *
        ctypes.c_int,  # status code
        ctypes.c_void_p,  # const pj_str_t *reason (NULL = default)
        ctypes.c_void_p,  # const pjsip_hdr *headers
        ctypes.c_void_p,  # const pjsip_msg_body *body
    )
    return lib


def _max_calls(lib: ctypes.CDLL) -> int:
    """Effective call limit of the running library (after libInit clamped ``maxCalls``).

    pjsua2 has no getter for the effective UaConfig; ``pjsua_call_get_max_count()`` is the
    PJSUA C API's, exported by the extension module.
    """
    return int(lib.pjsua_call_get_max_count())


def _respond_in_dialog(lib: ctypes.CDLL, rdata: object, status: int) -> bool:
    """Answer an in-dialog request from inside its transaction callback (pjsua2 cannot).

    ``rdata`` is ``SipRxData.pjRxData`` (a SWIG ``void *``). Without an answer the dialog layer
    replies ``500 Unhandled by dialog usages`` once the callback returns.
    """
    if rdata is None:
        return False
    address = int(rdata)  # type: ignore[call-overload]
    dlg = lib.pjsip_rdata_get_dlg(address)
    if not dlg:
        return False
    return int(lib.pjsip_dlg_respond(dlg, address, status, None, None, None)) == 0


def describe_error(exc: BaseException) -> str:
    """``pjsua2.Error`` prints poorly: use its ``info()``."""
    return str(exc.info()) if isinstance(exc, pj.Error) else repr(exc)


def _parse_invite(whole_msg: str) -> tuple[str, dict[str, str]]:
    """Request-URI and headers (folded lines joined, repeated names comma-joined) of an INVITE."""
    head = whole_msg.split("\r\n\r\n", 1)[0].replace("\r\n ", " ").replace("\r\n\t", " ")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    request_uri = parts[1] if len(parts) == 3 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return request_uri, headers


def _dtmf_info_digit(body: str) -> tuple[str, int] | None:
    """Digit and duration of an ``application/dtmf`` (bare digit) INFO body."""
    text = body.strip()
    if len(text) == 1 and text.upper() in "0123456789*#ABCD":
        return text.upper(), 0
    return None


RTP_COUNTERS = ("rtp_received", "rtp_lost", "rtp_late", "concealed_frames", "jbuf_empty")
"""Running totals the pjsua2 worker adds to its STATS (docs/framelink.md, "STATS counters")."""


def stream_counters(stat: pj.StreamStat) -> dict[str, int]:
    """One audio stream's counters from pjmedia: RTP packets received and lost (RTCP receive
    statistics, sequence gaps), packets the jitter buffer discarded (late or overflowing),
    frames it concealed for lost packets, fetches it found empty, and the current
    interarrival jitter (ms)."""
    rx, jbuf = stat.rtcp.rxStat, stat.jbuf
    return {
        "rtp_received": int(rx.pkt),
        "rtp_lost": int(rx.loss),
        "rtp_late": int(jbuf.discard),
        "concealed_frames": int(jbuf.lost),
        "jbuf_empty": int(jbuf.empty),
        "jitter_ms": int(rx.jitterUsec.last) // 1000,
    }


class WorkerCall(pj.Call):  # type: ignore[misc]
    """One call of the worker; callbacks run in the pjsua thread."""

    def __init__(
        self, owner: PjsuaThread, account: pj.Account, call_id: int, number: int, invite: str
    ) -> None:
        super().__init__(account, call_id)
        self.owner = owner
        self.number = number
        """Worker-local call number on the frame link."""
        self.request_uri, self.headers = _parse_invite(invite)
        self.port: CallAudioPort | None = None
        self.med_idx = -1
        """Index of the call's audio media once it is up."""
        self.on_hold = False
        """The caller holds the call (it may stop sending RTP)."""
        self.rx_packets = -1
        """RTP packets received at the last RTP timeout check."""
        self.rx_at = 0.0
        """When the packet count last changed (time.monotonic)."""
        self.end_reason: str | None = None
        """Our reason for hanging up, reported instead of pjsua's."""
        self.started = False
        """CALL_STARTED was sent: the main process knows this call."""
        self.ended = False
        self.rtp: dict[str, int] = {}
        """The stream's RTP counters at the last poll (see :func:`stream_counters`)."""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            ci = self.getInfo()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.owner.call_disconnected(self, ci.lastReason, int(ci.lastStatusCode))
        except Exception as exc:  # a director callback must never raise into pjsua
            self.owner.callback_failed("onCallState", exc)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        """Media up, or changed by a re-INVITE/UPDATE (refresh, hold, codec change).

        A re-INVITE may recreate the audio stream under a new conference slot, which drops
        the port's connections (measured: frames stop after a session refresh), so every
        media update reconnects the call's port to the call's current audio media.
        """
        try:
            if self.ended:
                return
            ci = self.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status in _MEDIA_UP:
                    self.med_idx = int(mi.index)
                    self.on_hold = mi.status != pj.PJSUA_CALL_MEDIA_ACTIVE
                    self.rx_at = time.monotonic()  # a new stream restarts the count
                    if self.port is None:
                        self.owner.media_active(self, ci, int(mi.index))
                    else:
                        self.owner.media_changed(self, int(mi.index))
                    return
        except Exception as exc:
            self.owner.callback_failed("onCallMediaState", exc)

    def onStreamDestroyed(self, prm: pj.OnStreamDestroyedParam) -> None:
        """The audio stream ends (call end, or a re-INVITE that recreates it): its final
        counters join the worker's totals (the stream's resources are still there)."""
        try:
            self.owner.stream_retired(self, int(prm.streamIdx))
        except Exception as exc:
            self.owner.callback_failed("onStreamDestroyed", exc)

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        """RFC 4733 telephone-event: reported once, at the end of the event (with its duration)."""
        try:
            if prm.method == pj.PJSUA_DTMF_METHOD_RFC2833 and prm.flags & DTMF_IS_END:
                self.owner.dtmf(self, str(prm.digit), int(prm.duration), "rfc4733")
        except Exception as exc:
            self.owner.callback_failed("onDtmfEvent", exc)

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        """SIP INFO ``application/dtmf-relay`` (parsed and answered 200 by pjsua)."""
        try:
            if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO:
                self.owner.dtmf(self, str(prm.digit), int(prm.duration), "info")
        except Exception as exc:
            self.owner.callback_failed("onDtmfDigit", exc)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        """SIP INFO ``application/dtmf`` (a bare digit): pjsua neither parses nor answers it."""
        try:
            if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
                return
            state = prm.e.body.tsxState
            tsx = state.tsx
            if (
                state.type != pj.PJSIP_EVENT_RX_MSG
                or tsx.role != pj.PJSIP_ROLE_UAS
                or tsx.state != pj.PJSIP_TSX_STATE_TRYING
                or tsx.method != "INFO"
            ):
                return
            rdata = state.src.rdata
            head, _, content = str(rdata.wholeMsg).partition("\r\n\r\n")
            ctype = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() in ("content-type", "c"):
                    ctype = value.strip().lower().split(";")[0].strip()
            if ctype != "application/dtmf":
                return  # dtmf-relay and media control are pjsua's (onDtmfDigit)
            found = _dtmf_info_digit(content)
            if self.owner.native is not None:
                _respond_in_dialog(
                    self.owner.native, rdata.pjRxData, 200 if found is not None else 400
                )
            if found is not None:
                self.owner.dtmf(self, found[0], found[1], "info")
        except Exception as exc:
            self.owner.callback_failed("onCallTsxState", exc)


class WorkerAccount(pj.Account):  # type: ignore[misc]
    """The local account that receives every INVITE (no registration)."""

    def __init__(self, owner: PjsuaThread) -> None:
        super().__init__()
        self.owner = owner

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self.owner.incoming_call(self, int(prm.callId), str(prm.rdata.wholeMsg))
        except Exception as exc:
            self.owner.callback_failed("onIncomingCall", exc)


def _pjsip_level(level: int) -> str:
    """A pjsip log level (0 fatal, 1 error, 2 warning, 3 info, 4+ debug) as a structlog one."""
    return ("error", "error", "warning", "info")[level] if 0 <= level <= 3 else "debug"


class PjsipLogWriter(pj.LogWriter):  # type: ignore[misc]
    """pjsip's own log lines as structlog events (``pjsip``, with its ``sender`` file), so they
    share the process's format: one JSON object per line in a JSON log, never plain text.

    Called from any pjlib thread (the media clock's too); it only formats and writes.
    """

    def __init__(self, bound: structlog.typing.FilteringBoundLogger) -> None:
        super().__init__()
        self._log = bound

    def write(self, entry: pj.LogEntry) -> None:
        try:
            sender, _, text = str(entry.msg).strip().partition(" ")
            level = int(entry.level)
            method = getattr(self._log, _pjsip_level(level))
            method("pjsip", sender=sender, message=text.strip(), pjsip_level=level)
        except Exception:  # a director callback must never raise into pjlib
            return


class WorkerEndpoint(pj.Endpoint):  # type: ignore[misc]
    """Endpoint that counts the calls pjsua refused by itself (486 beyond capacity)."""

    def __init__(self, owner: PjsuaThread) -> None:
        super().__init__()
        self.owner = owner

    def onRejectedIncomingCall(self, prm: pj.OnRejectedIncomingCallParam) -> None:
        self.owner.calls_refused += 1

    def onSelectAccount(self, prm: pj.OnSelectAccountParam) -> None:
        # Before the call and its media exist: the account of the agent's SRTP policy.
        try:
            account = self.owner.srtp_accounts.get(srtp_policy(str(prm.rdata.wholeMsg)))
            if account is not None:
                prm.accountIndex = account.getId()
        except Exception as exc:
            self.owner.callback_failed("onSelectAccount", exc)


@dataclass
class WorkerSink:
    """Loop-thread callbacks the pjsua thread reports to (through call_soon_threadsafe)."""

    call_started: Callable[[StartedInfo], None]
    call_ended: Callable[[CallEnded], None]
    dtmf: Callable[[Dtmf], None]
    deliver: Callable[[int, bytes], None]
    stopped: Callable[[], None]


class PjsuaThread(threading.Thread):
    """Owns the pjsua2 Endpoint and polls it; see the module docstring."""

    def __init__(
        self, options: WorkerOptions, loop: asyncio.AbstractEventLoop, sink: WorkerSink
    ) -> None:
        super().__init__(name="pjsua", daemon=True)
        self.options = options
        self.loop = loop
        self.sink = sink
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.sip_port = 0
        self.capacity = 0
        self.native: ctypes.CDLL | None = None
        self.calls_refused = 0
        self.calls_total = 0
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = False
        self._ep: WorkerEndpoint | None = None
        self.srtp_accounts: dict[str, WorkerAccount] = {}
        """The worker's accounts by SRTP policy (``off``, ``optional``, ``required``)."""
        self._calls: dict[int, WorkerCall] = {}  # by call number
        self._graveyard: list[WorkerCall] = []  # ended calls, dropped after their callback
        self._ports: PortPool | None = None
        self._numbers = itertools.count(1)
        self._answer_at: dict[int, float] = {}  # call number -> when to send its 200
        self._rtp_retired: dict[str, int] = dict.fromkeys(RTP_COUNTERS, 0)
        self.rtp_totals: dict[str, int] = {**self._rtp_retired, "jitter_ms_max": 0}
        """RTP counters of every stream since start (ended ones included) and the largest
        jitter of a live call, as of the last poll (replaced whole: read from any thread)."""
        self.log = log.bind(worker=options.worker_id)
        """Structured events of this worker (JSON lines in a JSON log)."""
        self._log_writer = PjsipLogWriter(self.log)  # pjsua2 keeps only a pointer to it

    # -- called from the loop thread --------------------------------------------------------------

    def submit(self, command: Callable[[], None]) -> None:
        """Run ``command`` in the pjsua thread between two polls."""
        self._commands.put(command)

    def stop(self) -> None:
        """Ask the thread to hang up every call, destroy the library and end."""
        self.submit(self._request_stop)

    # -- pjsua thread ------------------------------------------------------------------------

    def callback_failed(self, callback: str, exc: BaseException) -> None:
        """Log an exception a pjsua2 callback caught (it must never raise into pjsua)."""
        self.log.error("pjsua_callback_failed", callback=callback, error=describe_error(exc))

    def _notify(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self.loop.call_soon_threadsafe(fn, *args)

    def run(self) -> None:
        try:
            self._start()
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            self._destroy()
            return
        self.ready.set()
        ep = self._ep
        assert ep is not None
        next_check = time.monotonic() + 1.0
        try:
            while not self._stopping:
                self._run_commands()
                ep.libHandleEvents(POLL_MS)
                self._graveyard.clear()
                now = time.monotonic()
                if self._answer_at:
                    self._answer_due(now)
                if now >= next_check:
                    next_check = now + 1.0
                    self._check_rtp(now)
        except Exception as exc:
            self.log.error("pjsua_poll_failed", error=describe_error(exc))
        finally:
            try:
                self._shutdown()
            finally:
                self._notify(self.sink.stopped)

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception as exc:
                self.log.error("pjsua_command_failed", error=describe_error(exc))

    def _start(self) -> None:
        opts = self.options
        ep = WorkerEndpoint(self)
        self._ep = ep
        # Until libInit hands pjsip's log to the writer, pjlib prints it (level 5) on stdout.
        native = _native()
        native.pj_log_set_level(0)
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        # Ask for far more than any build allows; libInit clamps to PJSUA_MAX_CALLS and
        # _max_calls() reads the effective value back.
        cfg.uaConfig.maxCalls = 1024
        cfg.uaConfig.userAgent = f"sipserver-pjsua2-worker/{opts.worker_id}"
        cfg.logConfig.level = opts.pjsip_log_level
        cfg.logConfig.consoleLevel = opts.pjsip_log_level
        cfg.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        cfg.logConfig.writer = self._log_writer
        cfg.medConfig.clockRate = opts.sample_rate
        cfg.medConfig.sndClockRate = opts.sample_rate
        cfg.medConfig.audioFramePtime = 20
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        ep.libInit(cfg)
        self.native = native
        self.capacity = _max_calls(self.native)

        tcfg = pj.TransportConfig()
        tcfg.boundAddress = opts.sip_host
        tcfg.port = opts.sip_port
        tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        local_name = str(ep.transportGetInfo(tid).localName)
        self.sip_port = int(local_name.rsplit(":", 1)[1])

        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, CODEC_PRIORITY.get(codec.codecId, 0))
        ep.libStart()
        self._ports = PortPool(opts.sample_rate, self.loop, self.sink.deliver)

        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{opts.worker_id}@{opts.sip_host}:{self.sip_port}"
        acfg.sipConfig.transportId = tid
        acfg.mediaConfig.transportConfig.boundAddress = opts.rtp_host
        acfg.mediaConfig.transportConfig.port = opts.rtp_port
        acfg.mediaConfig.transportConfig.portRange = opts.rtp_port_count
        # SDES keys only (RFC 4568; no DTLS-SRTP). The hop from the edge is UDP on loopback:
        # the signalling is protected (or not) between the caller and the edge, so pjsua must
        # not demand a secure transport itself (srtpSecureSignaling 0).
        acfg.mediaConfig.srtpSecureSignaling = 0
        acfg.mediaConfig.srtpOpt.keyings.clear()
        acfg.mediaConfig.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
        # RFC 4028: pjsip negotiates the refresher, answers 422 below Min-SE and, as the
        # non-refresher, sends BYE when no refresh came (the edge relays all of it).
        acfg.callConfig.timerUse = SESSION_TIMER_USE[opts.session_timers]
        acfg.callConfig.timerMinSESec = max(MIN_SE_FLOOR, opts.min_se)
        acfg.callConfig.timerSessExpiresSec = max(
            acfg.callConfig.timerMinSESec, opts.session_expires
        )
        # One account per SRTP policy (see SRTP_USE); "off", the first, is the default.
        for policy, use in SRTP_USE.items():
            acfg.mediaConfig.srtpUse = use
            account = WorkerAccount(self)
            account.create(acfg, policy == "off")
            self.srtp_accounts[policy] = account

    def incoming_call(self, account: WorkerAccount, call_id: int, invite: str) -> None:
        number = next(self._numbers)
        call = WorkerCall(self, account, call_id, number, invite)
        self._calls[number] = call
        self.calls_total += 1
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        if self.options.answer_delay > 0:
            self._answer_at[number] = time.monotonic() + self.options.answer_delay
            return
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)

    def _answer_due(self, now: float) -> None:
        """Answer (200) the ringing calls whose ``answer_delay`` is over."""
        for number, at in list(self._answer_at.items()):
            if at > now:
                continue
            del self._answer_at[number]
            call = self._calls.get(number)
            if call is None or call.ended:
                continue  # cancelled while ringing
            op = pj.CallOpParam()
            op.statusCode = 200
            try:
                call.answer(op)
            except pj.Error as exc:
                self.log.error("worker_answer_failed", call=number, error=describe_error(exc))

    def media_active(self, call: WorkerCall, ci: pj.CallInfo, med_idx: int) -> None:
        opts = self.options
        counters = BridgeCounters()
        outbound = OutboundFrames(frame_bytes(opts.sample_rate), counters)
        assert self._ports is not None
        port = self._ports.acquire(
            PortBinding(call.number, outbound, counters), now=time.monotonic()
        )
        call.port = port
        audio = call.getAudioMedia(med_idx)
        audio.startTransmit(port)
        port.startTransmit(audio)
        si = call.getStreamInfo(med_idx)
        record = CallStarted(
            call=call.number,
            sip_call_id=str(ci.callIdString),
            from_uri=str(ci.remoteUri),
            to_uri=str(ci.localUri),
            request_uri=call.request_uri,
            codec=f"{si.codecName}/{si.codecClockRate}",
            remote_rtp=str(si.remoteRtpAddress),
            headers=call.headers,
        )
        call.started = True
        self._notify(self.sink.call_started, StartedInfo(record, outbound, counters))

    def stream_retired(self, call: WorkerCall, med_idx: int) -> None:
        """Add a stream's final counters to the totals (before pjsua destroys it)."""
        try:
            final = stream_counters(call.getStreamStat(med_idx))
        except pj.Error:
            final = call.rtp  # the last poll's
        for key in RTP_COUNTERS:
            self._rtp_retired[key] += final.get(key, 0)
        call.rtp = {}
        self._sum_rtp()

    def _sum_rtp(self) -> None:
        totals = dict(self._rtp_retired)
        jitter = 0
        for call in self._calls.values():
            for key in RTP_COUNTERS:
                totals[key] += call.rtp.get(key, 0)
            jitter = max(jitter, call.rtp.get("jitter_ms", 0))
        self.rtp_totals = {**totals, "jitter_ms_max": jitter}

    def _check_rtp(self, now: float) -> None:
        """Read every call's stream counters; hang up calls whose caller sent no RTP for
        ``rtp_timeout`` seconds."""
        timeout = self.options.rtp_timeout
        for call in list(self._calls.values()):
            if call.port is None or call.ended:
                continue
            try:
                call.rtp = stream_counters(call.getStreamStat(call.med_idx))
            except pj.Error:
                continue  # no stream at the moment (being updated)
            if timeout <= 0 or call.on_hold or call.end_reason:
                continue
            packets = call.rtp["rtp_received"]
            if packets != call.rx_packets:
                call.rx_packets = packets
                call.rx_at = now
            elif now - call.rx_at > timeout:
                self.log.info(
                    "worker_rtp_timeout", call=call.number, silent_for=round(now - call.rx_at, 1)
                )
                call.end_reason = "rtp-timeout"
                call.hangup(pj.CallOpParam())
        self._sum_rtp()

    def media_changed(self, call: WorkerCall, med_idx: int) -> None:
        port = call.port
        assert port is not None
        audio = call.getAudioMedia(med_idx)
        audio.startTransmit(port)  # connecting a connected pair is a no-op
        port.startTransmit(audio)

    def call_disconnected(self, call: WorkerCall, reason: str, status: int) -> None:
        if call.ended:
            return
        call.ended = True
        self._calls.pop(call.number, None)
        self._answer_at.pop(call.number, None)
        # pjsua2 may still use both objects until this callback returns: drop them after it.
        self._graveyard.append(call)
        if call.port is not None and self._ports is not None:
            self._ports.release(call.port, now=time.monotonic())
            call.port = None
        if call.started:
            reason = call.end_reason or str(reason)
            self._notify(self.sink.call_ended, CallEnded(call.number, reason, status))

    def dtmf(self, call: WorkerCall, digit: str, duration_ms: int, method: str) -> None:
        if not call.started or digit.upper() not in "0123456789*#ABCD" or len(digit) != 1:
            return
        record = Dtmf(
            call.number,
            digit.upper(),
            max(0, min(duration_ms, 0xFFFF)),
            "info" if method == "info" else "rfc4733",
        )
        self._notify(self.sink.dtmf, record)

    def hangup(self, number: int, status: int = 0) -> None:
        """Hang up a call: BYE when answered, else a final response (603 unless ``status``)."""
        call = self._calls.get(number)
        if call is None or call.ended:
            return
        op = pj.CallOpParam()
        if status >= 300:
            op.statusCode = status
        call.hangup(op)

    @property
    def port_count(self) -> int:
        """Conference ports created (pooled; bounded by the calls alive at once)."""
        ports = self._ports
        return ports.size if ports is not None else 0

    def _request_stop(self) -> None:
        self._stopping = True

    def _shutdown(self) -> None:
        ep = self._ep
        assert ep is not None
        if self._calls:
            with contextlib.suppress(pj.Error):
                ep.hangupAllCalls()
            deadline = time.monotonic() + HANGUP_GRACE
            while self._calls and time.monotonic() < deadline:
                ep.libHandleEvents(POLL_MS)
        # let the conference bridge apply its queued port removals before ports go away
        deadline = time.monotonic() + PortPool.COOL_DOWN
        while time.monotonic() < deadline:
            ep.libHandleEvents(POLL_MS)
        self._destroy()

    def _destroy(self) -> None:
        """Drop every Python reference pjsua2 objects hold, then libDestroy (see notes)."""
        self._calls.clear()
        self._graveyard.clear()
        if self._ports is not None:
            self._ports.clear()
            self._ports = None
        for account in self.srtp_accounts.values():
            with contextlib.suppress(pj.Error):
                account.shutdown()
        self.srtp_accounts.clear()
        gc.collect()
        ep = self._ep
        if ep is not None:
            with contextlib.suppress(pj.Error):
                ep.libDestroy()
            self._ep = None
        gc.collect()
