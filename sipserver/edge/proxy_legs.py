"""The records of the edge's call proxy (:mod:`sipserver.edge.proxy`): calls and legs, sans-I/O.

A :class:`ProxiedCall` is one call through the edge; each SIP transaction of it is a leg: a
:class:`ServerLeg` for a request the edge received, a :class:`ClientLeg` for one it sends
(RFC 3261 §16: a stateful proxy pairs a server transaction with the client transactions it
forwards on). The proxy keeps them in tables keyed by transaction and removes them when they end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sipserver.edge.calls import CallState, Endpoint, EndReason
from sipserver.sip.invite_transaction import ClientTransaction, ServerTransaction
from sipserver.sip.message import SipRequest, SipResponse

__all__ = [
    "ClientLeg",
    "Leg",
    "ProxiedCall",
    "ServerLeg",
    "Side",
    "bye_reason",
    "is_toward_caller",
]


class Side(enum.Enum):
    """The side of the proxy a request came from (or that the edge stands for)."""

    CALLER = "caller"
    WORKER = "worker"


@dataclass(slots=True, eq=False)
class ProxiedCall:
    """A call the proxy carries: its two ends, dialog state and live legs (transactions)."""

    call_id: str
    agent: str
    worker_id: str
    worker: Endpoint
    caller: Endpoint
    caller_tag: str
    invite_from: str
    caller_contact: str
    routes_to_caller: tuple[str, ...]
    started_at: float
    worker_tag: str | None = None
    worker_to: str | None = None
    worker_cseq: int = 0
    state: CallState = CallState.EARLY
    answered_at: float | None = None
    ended_at: float | None = None
    legs: int = 0
    secure: bool = False
    """A SIPS dialog (a ``sips:`` Request-URI over TLS): see :func:`sips_toward_caller`."""


@dataclass(slots=True, eq=False)
class ServerLeg:
    """A server transaction of the proxy: a request it received and answers or relays."""

    key: tuple[str, str, str]
    txn: ServerTransaction
    request: SipRequest
    source: Endpoint
    call: ProxiedCall | None
    to_tag: str
    side: Side
    client: ClientLeg | None = None
    cancelled: bool = False
    alive: bool = True


@dataclass(slots=True, eq=False)
class ClientLeg:
    """A client transaction of the proxy: a request it sends (relayed or its own)."""

    key: tuple[str, str]
    txn: ClientTransaction
    request: SipRequest
    data: bytes
    to: Endpoint
    server: ServerLeg | None
    call: ProxiedCall | None
    side: Side  # the side the request came from (or stands for, for the edge's own BYE)
    ack: bytes | None = None
    cancel_pending: bool = False
    alive: bool = True
    initial: bool = field(default=False)


Leg = ServerLeg | ClientLeg
"""Either kind of leg (the timer heap holds both)."""


def is_toward_caller(call: ProxiedCall, response: SipResponse) -> bool:
    """True when ``response`` answers a request of the caller's (a 2xx to an INVITE the caller
    sent has the caller's tag in From); also for a From that does not parse."""
    try:
        return response.from_().tag == call.caller_tag
    except ValueError:
        return True


def bye_reason(leg: ClientLeg) -> EndReason:
    """Why a relayed BYE ended its call: caller, worker, or the worker's RFC 4028 expiry."""
    if leg.side is Side.CALLER:
        return EndReason.CALLER_BYE
    for value in leg.request.headers.get_all("Reason"):
        params = [p.strip().lower() for p in value.split(";")]
        if "cause=408" in params and "refresh" in value.lower():
            return EndReason.SESSION_EXPIRED
    return EndReason.WORKER_BYE
