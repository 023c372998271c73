"""Public types of the edge's call proxy: transport addresses, messages to send, call records
and the events the proxy emits (see :mod:`sipserver.edge.proxy`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sipserver.sip.headers import AGENT_HEADER, SRTP_HEADER

__all__ = [
    "AGENT_HEADER",
    "SRTP_HEADER",
    "CallAnswered",
    "CallEnded",
    "CallInfo",
    "CallRouted",
    "CallState",
    "EndReason",
    "Endpoint",
    "ProxyEvent",
    "Send",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A transport address."""

    transport: str
    """``udp``, ``tcp`` or ``tls`` (lower case)."""
    host: str
    """IP address or host name, IPv6 without brackets."""
    port: int
    """Port."""

    @property
    def reliable(self) -> bool:
        """Whether the transport is reliable (no retransmission timers)."""
        return self.transport != "udp"

    @property
    def hostport(self) -> str:
        """``host:port`` as in a URI or Via (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Send:
    """A message to send."""

    data: bytes
    """The message bytes."""
    to: Endpoint
    """Destination; for stream transports, the connection to that peer."""


class CallState(enum.Enum):
    """Where a call stands."""

    EARLY = "early"
    """INVITE forwarded, no 2xx yet."""
    CONFIRMED = "confirmed"
    """Answered (2xx relayed)."""
    TERMINATED = "terminated"
    """Ended; the record goes once its transactions are done."""


class EndReason(enum.Enum):
    """Why a call ended (``value`` is a metric label)."""

    CALLER_BYE = "caller_bye"
    """The caller hung up."""
    WORKER_BYE = "worker_bye"
    """The worker (the agent) hung up."""
    REJECTED = "rejected"
    """The worker answered the INVITE with a non-2xx final response."""
    CANCELLED = "cancelled"
    """The caller cancelled before the answer."""
    TIMEOUT = "timeout"
    """A transaction timed out (no answer from the worker)."""
    WORKER_LOST = "worker_lost"
    """The worker died (:meth:`CallProxy.terminate_calls_of_worker`)."""
    SESSION_EXPIRED = "session_expired"
    """The worker hung up because the caller stopped refreshing the session (RFC 4028): its
    BYE carries ``Reason: SIP;cause=408`` with a text about the refresh (pjsip's is "No
    session refresh received.")."""


class ProxyEvent:
    """Base class of the proxy's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CallRouted(ProxyEvent):
    """An INVITE was forwarded to a worker."""

    call_id: str
    """SIP Call-ID (the same on both legs)."""
    agent: str
    """Agent slug."""
    worker_id: str
    """Worker the call went to."""
    caller: Endpoint
    """Observed source of the INVITE."""
    at: float
    """Time of the INVITE."""


@dataclass(frozen=True, slots=True)
class CallAnswered(ProxyEvent):
    """The worker answered (a 2xx was relayed to the caller)."""

    call_id: str
    """SIP Call-ID."""
    agent: str
    """Agent slug."""
    worker_id: str
    """Worker that answered."""
    at: float
    """Time of the 2xx."""
    setup_time: float
    """Seconds from INVITE to 2xx."""


@dataclass(frozen=True, slots=True)
class CallEnded(ProxyEvent):
    """A call ended (emitted once per call)."""

    call_id: str
    """SIP Call-ID."""
    agent: str
    """Agent slug."""
    worker_id: str
    """Worker of the call."""
    reason: EndReason
    """Why it ended."""
    status: int | None
    """The final status that ended it (200 to BYE, 486, 487, 408...), None when none."""
    at: float
    """End time."""
    duration: float | None
    """Seconds from answer to end; None when never answered."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Snapshot of a call record."""

    call_id: str
    """SIP Call-ID."""
    agent: str
    """Agent slug."""
    worker_id: str
    """Worker of the call."""
    state: CallState
    """Early, confirmed or terminated."""
    started_at: float
    """Time of the INVITE."""
    answered_at: float | None
    """Time of the 2xx, or None."""
    ended_at: float | None
    """End time, or None."""
