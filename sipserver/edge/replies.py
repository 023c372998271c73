"""Responses the edge writes itself (REGISTER, OPTIONS, refusals): status, wire form, To tag.

Shared by the router's INVITE path and the registration handler, so both answer alike: a
stable To tag per request (retransmitted answers are identical), the Server header, 503 with
Retry-After and a Warning naming the condition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sipserver.config import Agent
from sipserver.observability import RefusalLog
from sipserver.sip.message import SipRequest, encode_response

__all__ = [
    "RETRY_AFTER",
    "SERVER_HEADER",
    "Peer",
    "Reply",
    "count_refusal",
    "response_to",
    "unavailable",
]

RETRY_AFTER: Final = 5
"""Seconds in the Retry-After of every 503 (starting, draining, all workers busy): about one
cold start of the server (bench/cold_start.py), short enough that a retrying trunk loses little."""
RETRY_AFTER_HEADER: Final = (("Retry-After", str(RETRY_AFTER)),)
SERVER_HEADER: Final = ("Server", "sipserver")


@dataclass(frozen=True, slots=True, init=False)
class Peer:
    """Where a message came from."""

    transport: str
    """``udp``, ``tcp`` or ``tls``."""
    host: str
    """Source IP address (no brackets)."""
    port: int
    """Source port."""
    listener: int = 0
    """Which of the adapter's listeners received it (the adapter's own number; the router only
    copies it into a held response, which is sent later, outside the receive path)."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(self, transport: str, host: str, port: int, listener: int = 0) -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "listener", listener)


Reply = tuple[int, bytes]
"""A response to send: its status and its wire form."""


def response_to(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    headers: Iterable[tuple[str, str]] = (),
) -> Reply:
    """The status and wire form of a response to ``request`` (see ``encode_response``)."""
    tag = None
    if status >= 200 and "tag=" not in (request.headers.get("To") or ""):
        # RFC 3261 §8.2.6.2: a final response gets a To tag; a stable one per request
        # keeps retransmitted answers identical.
        tag = to_tag(request)
    raw = encode_response(request, status, reason, to_tag=tag, headers=(*headers, SERVER_HEADER))
    return status, raw


def unavailable(request: SipRequest, refusal: str) -> Reply:
    """RFC 3261 §21.5.4: 503 for a temporary condition, with Retry-After (§20.33) so the
    caller, or its proxy (RFC 3263 §4.3), tries another server or retries later. Never 480
    for this: 480 says the callee is unavailable, and trunks then give up the call. The
    Warning (§20.43, code 399) names the condition for whoever reads the trace."""
    warning = ("Warning", f'399 sipserver "{refusal}"')
    return response_to(request, 503, "Service Unavailable", headers=(*RETRY_AFTER_HEADER, warning))


def count_refusal(
    refusals: RefusalLog | None,
    reason: str,
    agent: Agent | None,
    source: str,
    method: str,
    request: SipRequest | None = None,
) -> None:
    """Count a refusal in ``sipserver_refusals_total{ingress="sip"}`` and log it once per
    interval (capacity, readiness, ban, allow-list, failed credentials). ``request``: a refused
    INVITE of a known agent, whose Call-ID and numbers go along (the call's record)."""
    if refusals is None:
        return
    slug = agent.slug if agent is not None else None
    if request is None:
        refusals.refuse("sip", reason, agent=slug, source=source, method=method)
        return
    try:
        call_id = request.call_id
        caller, called = request.from_().uri.user or "", request.to().uri.user or ""
    except ValueError:  # a malformed header: the refusal still counts
        call_id = caller = called = ""
    refusals.refuse(
        "sip",
        reason,
        agent=slug,
        source=source,
        method=method,
        call_id=call_id,
        caller=caller,
        called=called,
    )


def to_tag(request: SipRequest) -> str:
    """A To tag derived from the request: the same request always gets the same tag.

    ``hash()`` of a str is SipHash under the interpreter's random per-process key
    (PYTHONHASHSEED): 64 bits peers cannot predict, stable for the process's lifetime, which
    is as long as a retransmitted request can be answered from its transaction. One C call,
    where a BLAKE2s object and its hex digest cost ~5x more on every final response.

    The tag is the hash's magnitude in decimal (63 bits; RFC 3261 §19.3 asks for 32): str() of
    an int is a direct call, compiled, where ``"%016x" %`` went through the printf-style
    formatter and the 64-bit mask through arbitrary-precision arithmetic (~1.5 k instructions
    a final response).
    """
    h = hash(f"{request.headers.get('Call-ID')}|{request.headers.get('Via')}")
    return str(h if h >= 0 else -h)
