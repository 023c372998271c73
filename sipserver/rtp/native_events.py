"""Settings and outputs of the native SIP user agent (:mod:`sipserver.rtp.native_ua`).

Outputs are frozen dataclasses on an empty :class:`UaOutput` base: :class:`Send` for the
adapter to put on the wire, the others call events it acts on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CallAnswered",
    "CallConfirmed",
    "CallTerminated",
    "DtmfReceived",
    "IncomingCall",
    "OfferReceived",
    "Send",
    "UaOutput",
    "UaSettings",
]


@dataclass(frozen=True, slots=True)
class UaSettings:
    """How the user agent answers."""

    host: str
    """Address in our Contact and Via (the SIP socket's)."""
    port: int
    """Port in our Contact and Via."""
    session_timers: str = "optional"
    """RFC 4028: ``optional`` (when the caller asks), ``always`` (we refresh callers that do
    not), ``off`` (Session-Expires ignored)."""
    session_expires: int = 1800
    """Session interval of sessions we start (``always``), seconds."""
    min_se: int = 90
    """Smallest Session-Expires accepted; smaller gets 422 with this Min-SE (RFC 4028 §5)."""
    answer_delay: float = 0.0
    """Seconds between 180 Ringing and 200 OK (a ring time that lets callers CANCEL)."""
    capacity: int = 500
    """Calls at once; one more gets 486 Busy Here (as the pjsua2 worker)."""
    user_agent: str = "sipserver-native"
    """User-Agent / Server header value."""
    ring: bool = True
    """Send 180 Ringing before the 200 (the pjsua2 worker always does)."""


class UaOutput:
    """Base of everything :class:`UserAgent` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Send(UaOutput):
    """A datagram to send."""

    data: bytes
    """The SIP message."""
    destination: tuple[str, int]
    """``(host, port)``."""


@dataclass(frozen=True, slots=True)
class IncomingCall(UaOutput):
    """A new INVITE: answer (:meth:`UserAgent.answer`) or reject it."""

    call: int
    """Call number (this UA's)."""
    sip_call_id: str
    """Call-ID."""
    from_uri: str
    """The caller (From name-addr, without tag)."""
    to_uri: str
    """The called party (To name-addr)."""
    request_uri: str
    """Request-URI."""
    headers: dict[str, str]
    """Header values by canonical name; repeated names comma-joined."""
    offer: bytes
    """The SDP offer (empty: the caller wants our offer in the 200, RFC 3261 §13.2.1)."""


@dataclass(frozen=True, slots=True)
class CallConfirmed(UaOutput):
    """The ACK for our 2xx arrived: the dialog is confirmed."""

    call: int
    """Call number."""


@dataclass(frozen=True, slots=True)
class OfferReceived(UaOutput):
    """A re-INVITE or UPDATE carries SDP: answer with :meth:`UserAgent.answer_update` (or
    :meth:`UserAgent.reject` with 488). With ``is_answer``, the SDP is the peer's answer to an
    offer of ours (in an ACK or a 2xx): apply it, nothing to answer."""

    call: int
    """Call number."""
    offer: bytes
    """The SDP."""
    is_answer: bool = False
    """The SDP answers our offer."""


@dataclass(frozen=True, slots=True)
class CallTerminated(UaOutput):
    """The call is over (BYE either way, CANCEL, rejection, timeouts)."""

    call: int
    """Call number."""
    reason: str
    """Why, in a word or two (``bye``, ``cancelled``, ``no-ack``, ``session-expired``...)."""
    status: int
    """SIP status that ended it (200 for a BYE, 487 cancelled, 408 timeouts...)."""


@dataclass(frozen=True, slots=True)
class DtmfReceived(UaOutput):
    """A digit from SIP INFO (``application/dtmf-relay`` or ``application/dtmf``)."""

    call: int
    """Call number."""
    digit: str
    """``0-9 * # A-D``."""
    duration_ms: int
    """Duration (0 when the body gives none)."""


@dataclass(frozen=True, slots=True)
class CallAnswered(UaOutput):
    """UAC: our INVITE got a 2xx (ACK sent); ``answer`` is the peer's SDP."""

    call: int
    """Call number."""
    answer: bytes
    """The SDP answer."""
