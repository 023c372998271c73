"""Transaction state machines of a stateful proxy (RFC 3261 §17, RFC 6026), sans-I/O.

The call proxy (:mod:`sipserver.edge.proxy`) forwards every request it handles through a
*server transaction* on the side it came from and a *client transaction* on the side it goes
to. This module holds both state machines, for INVITE and for non-INVITE requests:

========================  =====================================================================
client, INVITE            RFC 3261 Figure 5, §17.1.1 + RFC 6026 §7.2 (*Accepted*, Timer M) +
                          the proxy's Timer C (§16.6 step 11, §16.8)
client, non-INVITE        RFC 3261 Figure 6, §17.1.2
server, INVITE            RFC 3261 Figure 7, §17.2.1 + RFC 6026 §7.1 (*Accepted*, Timer L)
server, non-INVITE        RFC 3261 Figure 8, §17.2.2
========================  =====================================================================

A transaction knows nothing about addresses or bytes beyond the one message it may have to send
again: it takes inputs (a response status, an ACK, the time) and answers with an action enum the
owner carries out. Timers are absolute deadlines; :meth:`deadline` gives the next one and the
owner calls ``handle_timer(now=...)`` when it is due. On reliable transports the retransmission
timers (A, E, G) are never armed and the wait timers (D, I, J, K) are zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from sipserver.sip.message import Headers, SipRequest, SipResponse
from sipserver.sip.transaction import T1  # RFC 3261 §17.1.1.1: RTT estimate (re-exported)

__all__ = [
    "T1",
    "T2",
    "T4",
    "TIMER_B",
    "TIMER_C",
    "ClientState",
    "ClientTransaction",
    "ResponseAction",
    "ServerState",
    "ServerTransaction",
    "TimerAction",
    "build_ack",
    "build_cancel",
    "server_key",
]

#: RFC 3261 §17.1.2.2: maximum retransmission interval of non-INVITE requests and of INVITE
#: final responses.
T2: Final = 4.0
#: RFC 3261 §17.1.2.2: maximum time a message stays in the network.
T4: Final = 5.0
#: RFC 3261 §17.1.1.2: INVITE transaction timeout (Timer B); also Timer F, H, J, L, M.
TIMER_B: Final = 64 * T1
#: RFC 3261 §16.6 step 11: a proxy's INVITE timeout after a provisional response, "greater than
#: 3 minutes".
TIMER_C: Final = 181.0
#: RFC 3261 §17.1.1.2: Timer D, "at least 32 seconds" on unreliable transports.
TIMER_D: Final = 32.0
#: RFC 3261 §8.1.1.6: Max-Forwards of requests built here.
MAX_FORWARDS: Final = 70


class ClientState(enum.Enum):
    """States of a client transaction (RFC 3261 Figures 5 and 6, RFC 6026)."""

    CALLING = "calling"
    """INVITE sent, nothing received yet (Timers A, B)."""
    TRYING = "trying"
    """Non-INVITE sent, nothing received yet (Timers E, F)."""
    PROCEEDING = "proceeding"
    """A provisional response arrived."""
    COMPLETED = "completed"
    """A final response arrived (non-2xx for INVITE); waiting out retransmissions (D, K)."""
    ACCEPTED = "accepted"
    """INVITE got a 2xx: further 2xx are passed on until Timer M (RFC 6026 §7.2)."""
    TERMINATED = "terminated"
    """Done; the owner removes the transaction."""


class ServerState(enum.Enum):
    """States of a server transaction (RFC 3261 Figures 7 and 8, RFC 6026)."""

    TRYING = "trying"
    """Non-INVITE received, no response sent yet."""
    PROCEEDING = "proceeding"
    """A provisional response was sent (INVITE: at once, 100 Trying)."""
    COMPLETED = "completed"
    """A final response was sent (non-2xx for INVITE: resent on Timer G until the ACK)."""
    CONFIRMED = "confirmed"
    """INVITE: the ACK for the non-2xx final arrived; ACK retransmissions absorbed (Timer I)."""
    ACCEPTED = "accepted"
    """INVITE: a 2xx was sent; retransmitted INVITEs are absorbed (RFC 6026 §7.1, Timer L)."""
    TERMINATED = "terminated"
    """Done; the owner removes the transaction."""


class ResponseAction(enum.Enum):
    """What the owner of a client transaction does with a received response."""

    FORWARD = "forward"
    """Pass the response on (the proxy relays it upstream)."""
    FORWARD_AND_ACK = "forward_and_ack"
    """First non-2xx final of an INVITE: relay it and send the hop-by-hop ACK (§17.1.1.3)."""
    ACK_AGAIN = "ack_again"
    """Retransmitted non-2xx final: send the same ACK again, relay nothing (§17.1.1.2)."""
    ABSORB = "absorb"
    """Drop the response (a retransmission, or late)."""


class TimerAction(enum.Enum):
    """What the owner does when a transaction's deadline has passed."""

    RETRANSMIT = "retransmit"
    """Send the stored request (Timers A, E) or final response (Timer G) again."""
    TIMEOUT = "timeout"
    """The peer never answered (Timers B, F) or never sent the ACK (Timer H)."""
    PROCEEDING_TIMEOUT = "proceeding_timeout"
    """Timer C: the INVITE got a provisional response but no final one; CANCEL it (§16.8)."""
    TERMINATED = "terminated"
    """The transaction is over (Timers D, I, J, K, L, M): remove it."""


def _earliest(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


@dataclass(slots=True, eq=False)
class ClientTransaction:
    """A client transaction: the proxy's request towards the next hop.

    Build with :meth:`start` when the request is sent for the first time.
    """

    invite: bool
    """INVITE (Figure 5) or non-INVITE (Figure 6)."""
    reliable: bool
    """Sent over a reliable transport (no retransmissions)."""
    state: ClientState
    """Current state."""
    retransmit_at: float | None = None
    """Timer A / E deadline."""
    interval: float = T1
    """Current retransmission interval."""
    timeout_at: float | None = None
    """Timer B / F deadline (Timer C's CANCEL grace period reuses it)."""
    proceeding_at: float | None = None
    """Timer C deadline (INVITE only)."""
    end_at: float | None = None
    """Timer D / K / M deadline: the transaction ends."""

    @classmethod
    def start(
        cls, *, invite: bool, reliable: bool, now: float, timer_c: float = TIMER_C
    ) -> ClientTransaction:
        """A transaction whose request was just sent (RFC 3261 §17.1.1.2, §17.1.2.2)."""
        txn = cls(invite, reliable, ClientState.CALLING if invite else ClientState.TRYING)
        if not reliable:
            txn.retransmit_at = now + T1  # Timer A / Timer E
        txn.timeout_at = now + TIMER_B  # Timer B / Timer F
        if invite:
            txn.proceeding_at = now + timer_c  # RFC 3261 §16.6 step 11: Timer C
        return txn

    def deadline(self) -> float | None:
        """The next deadline, or None."""
        return _earliest(self.retransmit_at, self.timeout_at, self.proceeding_at, self.end_at)

    def _finish(self, state: ClientState, wait: float, now: float) -> None:
        self.state = state
        self.retransmit_at = self.timeout_at = self.proceeding_at = None
        self.end_at = now + wait

    def receive_response(
        self, status: int, *, now: float, timer_c: float = TIMER_C
    ) -> ResponseAction:
        """A response matched this transaction (RFC 3261 §17.1.3)."""
        state = self.state
        if state is ClientState.TERMINATED:
            return ResponseAction.ABSORB
        if not self.invite:
            if state is ClientState.COMPLETED:
                return ResponseAction.ABSORB
            if status < 200:
                self.state = ClientState.PROCEEDING
                if self.retransmit_at is not None:
                    # RFC 3261 §17.1.2.2: in Proceeding, Timer E fires every T2.
                    self.interval = T2
                return ResponseAction.FORWARD
            # RFC 3261 §17.1.2.2: Timer K = T4 on unreliable transports, zero otherwise.
            self._finish(ClientState.COMPLETED, 0.0 if self.reliable else T4, now)
            return ResponseAction.FORWARD
        if state is ClientState.ACCEPTED:
            # RFC 6026 §7.2: 2xx retransmissions (and 2xx of other forks) go to the TU.
            return ResponseAction.FORWARD if 200 <= status < 300 else ResponseAction.ABSORB
        if state is ClientState.COMPLETED:
            # RFC 3261 §17.1.1.2: a retransmitted final response is ACKed again, not passed up.
            return ResponseAction.ACK_AGAIN if status >= 300 else ResponseAction.ABSORB
        if status < 200:
            self.state = ClientState.PROCEEDING
            self.retransmit_at = None  # Timer A stops
            if self.proceeding_at is not None:
                # Timer B only runs in Calling (Timer C takes over). Once Timer C has fired,
                # timeout_at is the CANCEL grace period and stays.
                self.timeout_at = None
                if status > 100:
                    # RFC 3261 §16.7 step 2: each provisional response but 100 resets Timer C.
                    self.proceeding_at = now + timer_c
            return ResponseAction.FORWARD
        if status < 300:
            # RFC 6026 §7.2: Accepted for Timer M = 64*T1.
            self._finish(ClientState.ACCEPTED, TIMER_B, now)
            return ResponseAction.FORWARD
        # RFC 3261 §17.1.1.2: Timer D, >= 32 s on unreliable transports, zero otherwise.
        self._finish(ClientState.COMPLETED, 0.0 if self.reliable else TIMER_D, now)
        return ResponseAction.FORWARD_AND_ACK

    def handle_timer(self, *, now: float) -> TimerAction | None:
        """Fire the earliest deadline that has passed, if any."""
        deadline = self.deadline()
        if deadline is None or deadline > now:
            return None
        if deadline == self.end_at:
            self.state = ClientState.TERMINATED
            self.end_at = None
            return TimerAction.TERMINATED
        if deadline == self.timeout_at:
            # RFC 3261 §17.1.1.2 Timer B / §17.1.2.2 Timer F: report a timeout (408) to the TU.
            self._finish(ClientState.TERMINATED, 0.0, now)
            self.end_at = None
            return TimerAction.TIMEOUT
        if deadline == self.proceeding_at:
            # RFC 3261 §16.8: Timer C fired; the owner CANCELs. If no final response follows
            # within 64*T1, the transaction times out.
            self.proceeding_at = None
            self.timeout_at = now + TIMER_B
            return TimerAction.PROCEEDING_TIMEOUT
        # Timer A doubles without bound (§17.1.1.2); Timer E doubles up to T2 (§17.1.2.2).
        self.interval = self.interval * 2 if self.invite else min(self.interval * 2, T2)
        self.retransmit_at = now + self.interval
        return TimerAction.RETRANSMIT


@dataclass(slots=True, eq=False)
class ServerTransaction:
    """A server transaction: the proxy's side of a request it received.

    Build with :meth:`start` when the request arrives for the first time.
    """

    invite: bool
    """INVITE (Figure 7) or non-INVITE (Figure 8)."""
    reliable: bool
    """Received over a reliable transport."""
    state: ServerState
    """Current state."""
    response: bytes | None = None
    """The last response sent (re-sent to retransmitted requests and on Timer G)."""
    retransmit_at: float | None = None
    """Timer G deadline."""
    interval: float = T1
    """Current Timer G interval."""
    timeout_at: float | None = None
    """Timer H deadline."""
    end_at: float | None = None
    """Timer I / J / L deadline: the transaction ends."""

    @classmethod
    def start(cls, *, invite: bool, reliable: bool) -> ServerTransaction:
        """A transaction for a request that just arrived (RFC 3261 §17.2.1, §17.2.2)."""
        return cls(invite, reliable, ServerState.PROCEEDING if invite else ServerState.TRYING)

    @property
    def final_sent(self) -> bool:
        """Whether a final response was sent."""
        return self.state not in (ServerState.TRYING, ServerState.PROCEEDING)

    def deadline(self) -> float | None:
        """The next deadline, or None."""
        return _earliest(self.retransmit_at, self.timeout_at, self.end_at)

    def retransmission(self) -> bytes | None:
        """The response to send again for a retransmitted request, or None to absorb it.

        RFC 3261 §17.2.1: in Proceeding and Completed the last response is sent again; RFC 6026
        §7.1: in Accepted the retransmitted INVITE is absorbed (the 2xx is the UAS's business).
        """
        if self.state in (ServerState.PROCEEDING, ServerState.COMPLETED):
            return self.response
        return None

    def send_response(self, status: int, data: bytes, *, now: float) -> bool:
        """Record a response being sent; False when the state forbids it (already final)."""
        if self.final_sent:
            return False
        self.response = data
        if status < 200:
            self.state = ServerState.PROCEEDING
            return True
        if not self.invite:
            # RFC 3261 §17.2.2: Timer J = 64*T1 on unreliable transports, zero otherwise.
            self.state = ServerState.COMPLETED
            self.end_at = now + (0.0 if self.reliable else TIMER_B)
            return True
        if status < 300:
            # RFC 6026 §7.1: Accepted, Timer L = 64*T1.
            self.state = ServerState.ACCEPTED
            self.end_at = now + TIMER_B
            return True
        # RFC 3261 §17.2.1: Completed; Timer G (unreliable only) and Timer H.
        self.state = ServerState.COMPLETED
        if not self.reliable:
            self.retransmit_at = now + T1
        self.timeout_at = now + TIMER_B
        return True

    def receive_ack(self, *, now: float) -> bool:
        """An ACK matched this INVITE transaction; True when it is absorbed here.

        RFC 3261 §17.2.1: the ACK for a non-2xx final moves Completed to Confirmed (Timer I:
        T4 on unreliable transports, zero otherwise) and ACK retransmissions are absorbed. An
        ACK in any other state (for a 2xx) is the dialog's, not the transaction's: False.
        """
        if self.state is ServerState.COMPLETED and self.invite:
            self.state = ServerState.CONFIRMED
            self.retransmit_at = self.timeout_at = None
            self.end_at = now + (0.0 if self.reliable else T4)
            return True
        return self.state is ServerState.CONFIRMED

    def handle_timer(self, *, now: float) -> TimerAction | None:
        """Fire the earliest deadline that has passed, if any."""
        deadline = self.deadline()
        if deadline is None or deadline > now:
            return None
        if deadline == self.end_at:
            self.state = ServerState.TERMINATED
            self.end_at = None
            return TimerAction.TERMINATED
        if deadline == self.timeout_at:
            # RFC 3261 §17.2.1 Timer H: the ACK never came.
            self.state = ServerState.TERMINATED
            self.retransmit_at = self.timeout_at = None
            return TimerAction.TIMEOUT
        # RFC 3261 §17.2.1 Timer G: min(2*interval, T2).
        self.interval = min(self.interval * 2, T2)
        self.retransmit_at = now + self.interval
        return TimerAction.RETRANSMIT


# ------------------------------------------------------------------ matching and building


def server_key(request: SipRequest, method: str | None = None) -> tuple[str, str, str]:
    """The server transaction a request belongs to (RFC 3261 §17.2.3).

    Branch, sent-by and method, where an ACK matches its INVITE. ``method`` overrides the
    method (a CANCEL looks up its INVITE with ``method="INVITE"``). RFC 2543 requests (no magic
    cookie) are keyed by their raw top Via, Call-ID and CSeq number instead.

    Raises:
        ValueError: a malformed top Via or CSeq.
    """
    via = request.top_via()
    method = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch or ""
    if branch.startswith("z9hG4bK"):
        return branch, via.sent_by.lower(), method
    raw = f"{request.headers.get('Via')}|{request.call_id}|{request.cseq[0]}"
    return raw, "", method


def _copy(request: SipRequest, method: str, to: str) -> SipRequest:
    headers = request.headers
    items: list[tuple[str, str]] = [("Via", headers.get_all("Via")[0])]
    items += [("Route", r) for r in headers.get_all("Route")]
    items.append(("Max-Forwards", str(MAX_FORWARDS)))
    items.append(("From", headers.get("From") or ""))
    items.append(("To", to))
    items.append(("Call-ID", headers.get("Call-ID") or ""))
    items.append(("CSeq", f"{request.cseq[0]} {method}"))
    return SipRequest(method, request.uri, Headers(items))


def build_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client transaction sends for a non-2xx final response (RFC 3261 §17.1.1.3).

    The INVITE's Request-URI, top Via (same branch), Route, From, Call-ID and CSeq number, and
    the response's To (with its tag).
    """
    return _copy(invite, "ACK", response.headers.get("To") or "")


def build_cancel(invite: SipRequest) -> SipRequest:
    """CANCEL for a pending INVITE (RFC 3261 §9.1): its Request-URI, top Via (same branch),
    Route, From, To, Call-ID and CSeq number."""
    return _copy(invite, "CANCEL", invite.headers.get("To") or "")
