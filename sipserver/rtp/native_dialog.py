"""Dialog state and message building of the native SIP user agent, sans-I/O.

:mod:`sipserver.rtp.native_ua` owns the calls and their transactions; this module holds what
one call's dialog knows (RFC 3261 §12: Call-ID, tags, route set, remote target, CSeq numbers)
and builds the requests it sends inside the dialog (§12.2.1.1), the ACK for a 2xx (§13.2.2.4),
and the session-timer negotiation of RFC 4028 (§9, §10).
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Literal

from sipserver.sip.headers import NameAddr, parse_params
from sipserver.sip.invite_transaction import T1, ClientTransaction, ServerTransaction
from sipserver.sip.message import Headers, SipRequest, SipResponse
from sipserver.sip.uri import SipUri

__all__ = [
    "ACCEPT",
    "ALLOW",
    "CallRecord",
    "CallState",
    "ClientEntry",
    "Dialog",
    "PendingOffer",
    "ServerEntry",
    "SessionTimer",
    "Timed",
    "TimerOffer",
    "answer_session_timer",
    "content_type",
    "display_name_addr",
    "header_dict",
    "new_branch",
    "new_tag",
    "parse_dtmf_info",
    "read_session_timer",
    "uri_address",
]

#: Methods this user agent handles (RFC 3261 §20.5 Allow).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
#: Bodies it understands (RFC 3261 §20.1): SDP, and the SIP INFO DTMF bodies.
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
#: DTMF events of SIP INFO bodies.
_DIGITS = "0123456789*#ABCD"
#: RFC 3261 §8.1.1.6: Max-Forwards of requests built here.
MAX_FORWARDS = 70

Refresher = Literal["uac", "uas"]


def new_branch() -> str:
    """A fresh RFC 3261 branch (§8.1.1.7: the magic cookie, then random)."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    """A fresh From/To tag (§19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(8)


def uri_address(uri: SipUri) -> tuple[str, int] | None:
    """``(ip, port)`` a URI names when its host is an IP literal (no DNS here), else None.

    ``maddr`` wins over the host (RFC 3261 §19.1.1); the port defaults to 5060.
    """
    host = uri.param("maddr") or uri.host
    host = host[1:-1] if host.startswith("[") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, uri.port or 5060


@dataclass(slots=True, eq=False)
class Dialog:
    """What one dialog knows (RFC 3261 §12.1): enough to build its requests."""

    call_id: str
    """Call-ID."""
    local_party: str
    """Our From value in requests we send (name-addr with our tag)."""
    remote_party: str
    """Their address as our To value (name-addr with their tag, once known)."""
    local_tag: str
    """Our tag."""
    remote_target: str
    """Their Contact URI: the Request-URI of our requests (§12.1.1, updated by target refresh)."""
    route_set: tuple[str, ...]
    """Route values of our requests (§12.1.1: the UAS keeps Record-Route in order; the UAC
    reverses it)."""
    local_cseq: int
    """CSeq number of our last request."""
    peer: tuple[str, int]
    """Where the dialog's first request came from: the fallback destination when neither the
    route set nor the remote target names an IP address."""
    contact: str
    """Our Contact value."""
    user_agent: str
    """Our User-Agent value."""
    remote_cseq: int = -1
    """CSeq number of the peer's last request (§12.2.2: lower ones get 500)."""

    def destination(self) -> tuple[str, int]:
        """Where requests of this dialog go: the first Route (a loose router, §16.12) or the
        remote target (§12.2.1.1, §8.1.2), by IP address; else where the peer sent from."""
        try:
            target = NameAddr.parse(self.route_set[0]).uri if self.route_set else None
            if target is None:
                target = SipUri.parse(self.remote_target)
        except ValueError:
            return self.peer
        return uri_address(target) or self.peer

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """RFC 3261 §12.2.1.1: with a loose first route the remote target is the Request-URI
        and the route set goes into Route; a strict one (no ``lr``) becomes the Request-URI and
        the remote target goes last in Route."""
        if not self.route_set:
            return self.remote_target, []
        try:
            first = NameAddr.parse(self.route_set[0]).uri
        except ValueError:
            return self.remote_target, list(self.route_set)
        if first.has_param("lr"):
            return self.remote_target, list(self.route_set)
        return str(first.without_params("lr")), [*self.route_set[1:], f"<{self.remote_target}>"]

    def request(
        self,
        method: str,
        *,
        branch: str,
        cseq: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> SipRequest:
        """A request inside the dialog (RFC 3261 §12.2.1.1).

        Args:
            method: the method.
            branch: the top Via branch (a new transaction; an ACK for 2xx has its own).
            cseq: CSeq number; None takes the next local one (ACK and CANCEL reuse theirs).
            body: message body.
            content_type: Content-Type of the body.
            extra: more header entries.
        """
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri, routes = self._request_uri_and_routes()
        host, port = self.contact_hostport()
        items: list[tuple[str, str]] = [("Via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport")]
        items += [("Route", r) for r in routes]
        items += [
            ("Max-Forwards", str(MAX_FORWARDS)),
            ("From", self.local_party),
            ("To", self.remote_party),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method not in ("ACK", "CANCEL", "BYE"):
            items.append(("Contact", self.contact))
        if method != "ACK":
            items.append(("User-Agent", self.user_agent))
        items += extra
        if body:
            items.append(("Content-Type", content_type or "application/sdp"))
        return SipRequest(method, uri, Headers(items), body)

    def contact_hostport(self) -> tuple[str, int]:
        """Host and port of our Contact (also our Via sent-by)."""
        uri = NameAddr.parse(self.contact).uri
        return uri.host, uri.port or 5060


# ------------------------------------------------------------------ RFC 4028 session timers


@dataclass(frozen=True, slots=True)
class TimerOffer:
    """The session-timer headers of a request (RFC 4028 §4)."""

    expires: int | None
    """Session-Expires delta-seconds, or None when absent."""
    refresher: Refresher | None
    """Its ``refresher`` parameter, or None."""
    min_se: int
    """Min-SE (0 when absent)."""
    supported: bool
    """``timer`` in Supported (the sender handles the extension itself)."""


def _delta(value: str, header: str) -> int:
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        raise ValueError(f"Invalid {header}")
    return int(text)


def read_session_timer(headers: Headers) -> TimerOffer:
    """The RFC 4028 headers of a request or response.

    Raises:
        ValueError: a malformed Session-Expires or Min-SE (the request gets 400).
    """
    expires: int | None = None
    refresher: Refresher | None = None
    raw = headers.get("Session-Expires")
    if raw is not None:
        head, _, tail = raw.partition(";")
        expires = _delta(head, "Session-Expires")
        for name, value in parse_params(tail):
            if name == "refresher" and value is not None:
                low = value.lower()
                if low not in ("uac", "uas"):
                    raise ValueError("Invalid Session-Expires refresher")
                refresher = "uac" if low == "uac" else "uas"
    min_se = 0
    raw_min = headers.get("Min-SE")
    if raw_min is not None:
        min_se = _delta(raw_min.partition(";")[0], "Min-SE")
    supported = any(t.lower() == "timer" for t in headers.get_all("Supported"))
    return TimerOffer(expires, refresher, min_se, supported)


@dataclass(slots=True)
class SessionTimer:
    """A running RFC 4028 session timer of a dialog."""

    interval: int
    """Session interval, seconds."""
    we_refresh: bool
    """We send the refreshes; otherwise we watch for the peer's."""
    refreshed_at: float
    """When the session was last refreshed (a 2xx to a refresh)."""

    def deadline(self) -> float:
        """Our refresh at half the interval (RFC 4028 §10); as the non-refresher, the BYE
        ``min(32, interval/3)`` seconds before the session would expire (§10)."""
        if self.we_refresh:
            return self.refreshed_at + self.interval / 2
        return self.refreshed_at + self.interval - min(32.0, self.interval / 3)


def answer_session_timer(
    offer: TimerOffer, *, mode: str, session_expires: int, min_se: int
) -> tuple[int, Refresher, bool] | int | None:
    """The UAS side of RFC 4028 §9 for a request (initial INVITE or refresh).

    Args:
        offer: the request's session-timer headers.
        mode: ``optional`` (timers only when asked for), ``always`` (also when not: we refresh)
            or ``off``.
        session_expires: our interval for sessions we start.
        min_se: our Min-SE.

    Returns:
        ``(interval, refresher, require)`` for the 2xx (``require``: add ``Require: timer``,
        the UAC supports the extension); an ``int`` Min-SE for a 422 (interval too small,
        §9); None when no session timer runs.
    """
    if mode == "off":
        return None
    if offer.expires is not None:
        if offer.expires < min_se:
            return max(min_se, offer.min_se)  # RFC 4028 §9: 422 with our Min-SE
        refresher = offer.refresher
        if refresher is None:
            # §9: the UAS chooses; a UAC without the extension cannot refresh.
            refresher = "uac" if offer.supported else "uas"
        elif refresher == "uac" and not offer.supported:
            refresher = "uas"
        return offer.expires, refresher, offer.supported
    if mode != "always":
        return None
    # §9: no Session-Expires in the request; the UAS may add one and then refreshes itself
    # unless the UAC supports the extension.
    interval = max(session_expires, min_se, offer.min_se)
    return interval, "uas", offer.supported


# ------------------------------------------------------------------ call records


class CallState(enum.Enum):
    """States of a call (of its INVITE dialog usage)."""

    EARLY = "early"
    """INVITE received (or sent), no final response yet."""
    ANSWERED = "answered"
    """UAS: 2xx sent, waiting for the ACK."""
    CONFIRMED = "confirmed"
    """ACK received (UAS) or sent (UAC)."""
    ENDED = "ended"
    """Over; removed from the tables."""


@dataclass(slots=True, eq=False)
class PendingOffer:
    """A request of the peer waiting for the adapter (a re-INVITE or UPDATE offer)."""

    request: SipRequest
    key: tuple[str, str, str]
    timer: tuple[int, str, bool] | None
    source: tuple[str, int]
    """Where the request came from: its response goes there (RFC 3581 symmetric)."""


@dataclass(slots=True, eq=False)
class CallRecord:
    """One call of the user agent: its dialog, transactions in flight and timers."""

    number: int
    outgoing: bool
    dialog: Dialog
    invite: SipRequest
    """The initial INVITE (received, or last sent for a UAC)."""
    source: tuple[str, int]
    state: CallState = CallState.EARLY
    invite_key: tuple[str, str, str] | None = None
    local_sdp: bytes = b""
    answer_sdp: bytes | None = None
    """UAS: the adapter's answer, held until ``answer_at``."""
    answer_at: float | None = None
    ok: bytes | None = None
    """The 2xx we retransmit until its ACK (RFC 3261 §13.3.1.4)."""
    ok_cseq: int = 0
    ok_at: float | None = None
    ok_interval: float = T1
    ok_until: float = 0.0
    ok_to: tuple[str, int] = ("", 0)
    """Where that 2xx goes (where its request came from)."""
    reply_to: tuple[str, int] = ("", 0)
    """Where the request being handled came from: responses go there (RFC 3581)."""
    ok_offers: bool = False
    """That 2xx carried an offer of ours: the ACK carries the answer."""
    bye_reason: str | None = None
    """hangup() before the ACK: the BYE waits for it (RFC 3261 §15)."""
    timer: SessionTimer | None = None
    pending: PendingOffer | None = None
    refreshing: bool = False
    """A session refresh of ours is in progress (a re-INVITE/UPDATE client transaction)."""
    peer_allows_update: bool = False
    auth_tries: int = 0
    credentials: tuple[str, str] | None = None
    cancel_pending: bool = False
    """UAC: hung up before any provisional response; CANCEL when one comes (RFC 3261 §9.1)."""
    provisional: bool = False
    """UAC: a provisional response arrived (CANCEL allowed)."""
    remote_tag_unknown: bool = True
    """UAC: no 2xx yet (the dialog's remote tag and route set are not known)."""
    scheduled: float | None = field(default=None)

    def deadline(self) -> float | None:
        """The next deadline of the call itself (200 held, 2xx retransmission, session timer)."""
        present = [d for d in (self.answer_at, self.ok_at) if d is not None]
        if self.timer is not None and self.state is CallState.CONFIRMED and not self.refreshing:
            present.append(self.timer.deadline())
        return min(present) if present else None


@dataclass(slots=True, eq=False)
class ServerEntry:
    """A server transaction and where its responses go."""

    txn: ServerTransaction
    destination: tuple[str, int]
    key: tuple[str, str, str]
    scheduled: float | None = None

    def deadline(self) -> float | None:
        """The transaction's next deadline."""
        return self.txn.deadline()


@dataclass(slots=True, eq=False)
class ClientEntry:
    """A client transaction of ours: the request, where it goes, its call."""

    txn: ClientTransaction
    request: SipRequest
    data: bytes
    destination: tuple[str, int]
    call: CallRecord | None
    branch: str
    ack: bytes | None = None
    """The ACK sent for its final response (sent again for retransmissions)."""
    ack_to: tuple[str, int] = ("", 0)
    """Where the ACK for a 2xx went (the dialog's destination, §13.2.2.4)."""
    scheduled: float | None = None

    def deadline(self) -> float | None:
        """The transaction's next deadline."""
        return self.txn.deadline()


Timed = CallRecord | ServerEntry | ClientEntry


def display_name_addr(value: NameAddr) -> str:
    """A name-addr without its header parameters (the tag)."""
    return str(NameAddr(value.display_name, value.uri))


def content_type(request: SipRequest | SipResponse) -> str:
    """The media type of a message's body, lower-cased, without parameters."""
    raw = request.headers.get("Content-Type") or ""
    return raw.partition(";")[0].strip().lower()


def header_dict(request: SipRequest) -> dict[str, str]:
    """Header values by canonical name, repeated names comma-joined."""
    out: dict[str, str] = {}
    for name, value in request.headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def parse_dtmf_info(content_type: str, body: bytes) -> tuple[str, int] | None:
    """Digit and duration (ms) of a SIP INFO DTMF body, or None when it has none.

    ``application/dtmf-relay`` is ``Signal=5`` / ``Duration=160`` lines; ``application/dtmf``
    is the bare digit.
    """
    text = body.decode("utf-8", "replace")
    if content_type == "application/dtmf":
        digit = text.strip().upper()
        return (digit, 0) if len(digit) == 1 and digit in _DIGITS else None
    signal: str | None = None
    duration = 0
    for line in text.splitlines():
        name, _, value = line.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "signal":
            signal = value.upper()
        elif name == "duration" and value.isascii() and value.isdigit() and len(value) < 7:
            duration = int(value)
    if signal is None or len(signal) != 1 or signal not in _DIGITS:
        return None
    return signal, duration
