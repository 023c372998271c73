"""The client side of the native SIP user agent, sans-I/O: requests we send and their answers.

:class:`UacCore` is the base of :class:`sipserver.rtp.native_ua.UserAgent`: it owns the call
tables, the deadline heap and every client transaction (RFC 3261 §17.1: Timers A/B for INVITE,
E/F for the rest): the BYE of a hang-up, the CANCEL of an outgoing call still ringing, our
session refreshes (RFC 4028 §7.4), and :meth:`UacCore.originate`, an outgoing call (INVITE with
our offer, digest answers to 401/407 with :func:`sipserver.sip.digest.build_authorization`,
provisional responses, the 2xx and its ACK, RFC 3261 §13.2).
"""

from __future__ import annotations

import heapq
import itertools
import secrets

from sipserver.rtp.native_dialog import (
    ALLOW,
    CallRecord,
    CallState,
    ClientEntry,
    Dialog,
    ServerEntry,
    SessionTimer,
    Timed,
    new_branch,
    new_tag,
    read_session_timer,
)
from sipserver.rtp.native_events import (
    CallAnswered,
    CallTerminated,
    OfferReceived,
    Send,
    UaOutput,
    UaSettings,
)
from sipserver.sip.digest import DigestChallenge, DigestError, build_authorization
from sipserver.sip.headers import NameAddr
from sipserver.sip.invite_transaction import (
    ClientState,
    ClientTransaction,
    ResponseAction,
    TimerAction,
    build_ack,
    build_cancel,
)
from sipserver.sip.message import SipRequest, SipResponse

__all__ = ["UacCore"]

#: Digest challenges answered per outgoing call (a second one after new credentials means the
#: credentials are wrong, unless the nonce was stale).
_AUTH_TRIES = 2
#: RFC 3326 Reason of the BYE that ends a call whose session refresh failed (RFC 4028 §10).
_REFRESH_FAILED = (("Reason", 'SIP;cause=408;text="Session refresh failed"'),)


class UacCore:
    """Call tables, deadlines and client transactions; see the module docstring."""

    def __init__(self, settings: UaSettings) -> None:
        self.settings = settings
        self._numbers = itertools.count(1)
        self._calls: dict[int, CallRecord] = {}
        self._dialogs: dict[tuple[str, str], CallRecord] = {}
        self._invites: dict[tuple[str, str, str], CallRecord] = {}
        self._servers: dict[tuple[str, str, str], ServerEntry] = {}
        self._clients: dict[str, ClientEntry] = {}
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()
        self.contact = f"<sip:{settings.host}:{settings.port}>"
        """Our Contact value."""

    @property
    def active_calls(self) -> int:
        """Calls not yet ended."""
        return len(self._calls)

    @property
    def requests_in_flight(self) -> int:
        """Requests of ours still waiting for a final response (BYEs at shutdown...)."""
        waiting = (ClientState.CALLING, ClientState.TRYING, ClientState.PROCEEDING)
        return sum(1 for c in self._clients.values() if c.txn.state in waiting)

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None."""
        heap = self._heap
        while heap and heap[0][2].scheduled != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def originate(
        self,
        *,
        target: str,
        destination: tuple[str, int],
        from_uri: str,
        offer: bytes,
        now: float,
        credentials: tuple[str, str] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> tuple[int, list[UaOutput]]:
        """Place a call (UAC, RFC 3261 §13.2): an INVITE with our SDP ``offer``.

        Args:
            target: Request-URI and To (``sip:+15550100@pbx.example``).
            destination: where the INVITE goes (the trunk or outbound proxy), by address.
            from_uri: our identity (From).
            offer: our SDP offer.
            now: the current time.
            credentials: ``(username, password)`` for 401/407 digest challenges.
            headers: more header entries of the INVITE.

        Returns:
            The call number and the outputs. :class:`CallAnswered` follows on a 2xx (ACK sent),
            :class:`CallTerminated` on a failure; :meth:`hangup` CANCELs while it rings.
        """
        out: list[UaOutput] = []
        number = next(self._numbers)
        tag = new_tag()
        dialog = Dialog(
            call_id=f"{secrets.token_hex(12)}@{self.settings.host}",
            local_party=f"<{from_uri}>;tag={tag}",
            remote_party=f"<{target}>",
            local_tag=tag,
            remote_target=target,
            route_set=(),
            local_cseq=0,
            peer=destination,
            contact=self.contact,
            user_agent=self.settings.user_agent,
        )
        branch = new_branch()
        extra = (("Allow", ALLOW), ("Supported", "timer"), *headers)
        invite = dialog.request("INVITE", branch=branch, body=offer, extra=extra)
        c = CallRecord(number, True, dialog, invite, destination, local_sdp=offer)
        c.reply_to = destination
        c.credentials = credentials
        self._calls[number] = c
        self._dialogs[(dialog.call_id, tag)] = c
        self._start_client(out, invite, destination, c, branch, now)
        return number, out

    # ------------------------------------------------------------------ timers

    def _arm(self, item: Timed) -> None:
        when = item.deadline()
        if isinstance(item, CallRecord) and item.state is CallState.ENDED:
            when = None
        if when == item.scheduled:
            return
        item.scheduled = when
        if when is not None:
            heapq.heappush(self._heap, (when, next(self._seq), item))

    def _client_timer(self, out: list[UaOutput], cl: ClientEntry, now: float) -> None:
        action = cl.txn.handle_timer(now=now)
        if action is TimerAction.RETRANSMIT:
            out.append(Send(cl.data, cl.destination))
        elif action is TimerAction.TIMEOUT:
            self._clients.pop(cl.branch, None)
            self._client_failed(out, cl, 408, now)
            return
        elif action is TimerAction.TERMINATED:
            self._clients.pop(cl.branch, None)
            return
        elif action is TimerAction.PROCEEDING_TIMEOUT and cl.call is not None:
            # RFC 3261 §16.6 step 11 (Timer C): nobody answered; CANCEL and give up.
            if cl.call.provisional:
                self._send_cancel(out, cl.call, now)
            self._end(out, cl.call, "no-answer", 408)
        self._arm(cl)

    # ------------------------------------------------------------------ requests we send

    def _send_request(
        self,
        out: list[UaOutput],
        c: CallRecord,
        method: str,
        now: float,
        *,
        extra: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> None:
        branch = new_branch()
        request = c.dialog.request(method, branch=branch, body=body, extra=extra)
        self._start_client(out, request, c.dialog.destination(), c, branch, now)

    def _start_client(
        self,
        out: list[UaOutput],
        request: SipRequest,
        destination: tuple[str, int],
        c: CallRecord | None,
        branch: str,
        now: float,
    ) -> None:
        data = request.encode()
        txn = ClientTransaction.start(invite=request.method == "INVITE", reliable=False, now=now)
        client = ClientEntry(txn, request, data, destination, c, branch)
        self._clients[branch] = client
        out.append(Send(data, destination))
        self._arm(client)

    def _send_cancel(self, out: list[UaOutput], c: CallRecord, now: float) -> None:
        cancel = build_cancel(c.invite)
        branch = c.invite.top_via().branch or new_branch()
        # Same branch as the INVITE (RFC 3261 §9.1), its own transaction here.
        self._start_client(out, cancel, c.source, None, branch + ":CANCEL", now)

    # ------------------------------------------------------------------ responses

    def _on_response(self, out: list[UaOutput], response: SipResponse, now: float) -> None:
        branch = response.top_via().branch or ""
        method = response.cseq[1]
        client = self._clients.get(branch + ":CANCEL" if method == "CANCEL" else branch)
        if client is None:
            if method == "INVITE" and 200 <= response.status < 300:
                self._ack_stray_2xx(out, response)
            return
        status = response.status
        action = client.txn.receive_response(status, now=now)
        if action is ResponseAction.ACK_AGAIN and client.ack is not None:
            out.append(Send(client.ack, client.destination))
        elif action is ResponseAction.FORWARD_AND_ACK:
            # RFC 3261 §17.1.1.3: the transaction ACKs a non-2xx final itself.
            client.ack = build_ack(client.request, response).encode()
            out.append(Send(client.ack, client.destination))
            self._handle_response(out, client, response, now)
        elif action is ResponseAction.FORWARD:
            if method == "INVITE" and status >= 200 and client.ack is not None:
                out.append(Send(client.ack, client.ack_to))  # 2xx again: ACK again (§13.2.2.4)
            else:
                self._handle_response(out, client, response, now)
        if client.txn.deadline() is None:
            self._clients.pop(client.branch, None)
        else:
            self._arm(client)

    def _ack_stray_2xx(self, out: list[UaOutput], response: SipResponse) -> None:
        """A 2xx whose transaction is gone (a late retransmission): ACK it from the dialog."""
        c = self._dialogs.get((response.call_id, response.from_().tag or ""))
        if c is not None:
            ack = c.dialog.request("ACK", branch=new_branch(), cseq=response.cseq[0])
            out.append(Send(ack.encode(), c.dialog.destination()))

    def _ack_2xx(self, out: list[UaOutput], c: CallRecord, client: ClientEntry) -> None:
        ack = c.dialog.request("ACK", branch=new_branch(), cseq=client.request.cseq[0])
        client.ack = ack.encode()
        client.ack_to = c.dialog.destination()
        out.append(Send(client.ack, client.ack_to))

    def _handle_response(
        self, out: list[UaOutput], client: ClientEntry, response: SipResponse, now: float
    ) -> None:
        c = client.call
        if c is None:
            return
        method = client.request.method
        if c.outgoing and method == "INVITE" and c.remote_tag_unknown:
            self._outgoing_response(out, c, client, response, now)
            return
        status = response.status
        if method == "INVITE" and 200 <= status < 300 and client.ack is None:
            self._ack_2xx(out, c, client)  # even when the call ended meanwhile (§13.2.2.4)
        if c.state is CallState.ENDED or not c.refreshing or status < 200:
            return
        if method not in ("INVITE", "UPDATE"):
            return
        c.refreshing = False
        if 200 <= status < 300:
            offer = read_session_timer(response.headers)
            if c.timer is not None:
                interval = offer.expires or c.timer.interval
                # RFC 4028 §7.2: we are the UAC of the refresh.
                we_refresh = offer.refresher != "uas" if offer.expires else c.timer.we_refresh
                c.timer = SessionTimer(interval, we_refresh, now)
            if response.body:
                out.append(OfferReceived(c.number, response.body, is_answer=True))
        elif status in (408, 481):
            # RFC 4028 §10, RFC 3261 §12.2.1.2: the dialog is gone.
            self._send_request(out, c, "BYE", now, extra=_REFRESH_FAILED)
            self._end(out, c, "refresh-failed", status)
            return
        elif c.timer is not None and status == 491:
            # RFC 3261 §14.1: glare; try again after 2.1-4 s if we own the Call-ID (we placed
            # the call), else after 0-2 s.
            retry = 3.0 if c.outgoing else 1.0
            c.timer.refreshed_at = now + retry - c.timer.interval / 2
        elif c.timer is not None:
            c.timer.we_refresh = False  # let the session run out: BYE before it expires
        self._arm(c)

    def _outgoing_response(
        self,
        out: list[UaOutput],
        c: CallRecord,
        client: ClientEntry,
        response: SipResponse,
        now: float,
    ) -> None:
        """A response to our initial INVITE (RFC 3261 §13.2.2)."""
        status = response.status
        if status < 200:
            c.provisional = True
            if c.cancel_pending:  # hung up before anything came back (§9.1)
                c.cancel_pending = False
                self._send_cancel(out, c, now)
            return
        if status < 300:
            c.remote_tag_unknown = False
            dialog = c.dialog
            dialog.remote_party = response.headers.get("To") or dialog.remote_party
            # RFC 3261 §12.1.2: the UAC's route set is the Record-Route in reverse.
            dialog.route_set = tuple(reversed(response.headers.get_all("Record-Route")))
            contacts = response.headers.get_all("Contact")
            if contacts:
                dialog.remote_target = str(NameAddr.parse(contacts[0]).uri)
            self._ack_2xx(out, c, client)
            if c.state is CallState.ENDED:
                self._send_request(out, c, "BYE", now)  # answered after our hang-up
                return
            c.state = CallState.CONFIRMED
            allow = response.headers.get_all("Allow")
            c.peer_allows_update = "UPDATE" in (m.upper() for m in allow)
            timer = read_session_timer(response.headers)
            if timer.expires is not None and self.settings.session_timers != "off":
                c.timer = SessionTimer(timer.expires, timer.refresher != "uas", now)
            out.append(CallAnswered(c.number, response.body))
            self._arm(c)
            return
        if (
            status in (401, 407)
            and c.state is not CallState.ENDED
            and self._authorize(out, c, response, now)
        ):
            return
        self._end(out, c, "rejected", status)

    def _authorize(
        self, out: list[UaOutput], c: CallRecord, response: SipResponse, now: float
    ) -> bool:
        """Send the INVITE again with digest credentials (RFC 3261 §22.2); False: give up."""
        if c.credentials is None or c.auth_tries >= _AUTH_TRIES:
            return False
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        answer = "Authorization" if response.status == 401 else "Proxy-Authorization"
        try:
            challenge = DigestChallenge.parse(response.headers.get(name) or "")
            value = build_authorization(
                challenge,
                username=c.credentials[0],
                password=c.credentials[1],
                method="INVITE",
                uri=c.invite.uri,
                cnonce=secrets.token_hex(8),
                body=c.invite.body,
            )
        except DigestError:
            return False
        c.auth_tries += 1
        branch = new_branch()
        host, port = c.dialog.contact_hostport()
        headers = c.invite.headers.copy()
        headers.set("Via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport")
        c.dialog.local_cseq += 1
        headers.set("CSeq", f"{c.dialog.local_cseq} INVITE")  # §22.2: CSeq + 1
        headers.set(answer, value)
        c.invite = SipRequest("INVITE", c.invite.uri, headers, c.invite.body)
        self._start_client(out, c.invite, c.source, c, branch, now)
        return True

    def _client_failed(self, out: list[UaOutput], cl: ClientEntry, status: int, now: float) -> None:
        c = cl.call
        if c is None or c.state is CallState.ENDED:
            return
        method = cl.request.method
        if c.outgoing and c.state is CallState.EARLY and method == "INVITE":
            self._end(out, c, "timeout", status)
        elif method in ("INVITE", "UPDATE") and c.refreshing:
            c.refreshing = False
            self._send_request(out, c, "BYE", now, extra=_REFRESH_FAILED)
            self._end(out, c, "refresh-failed", status)

    # ------------------------------------------------------------------ bookkeeping

    def _end(self, out: list[UaOutput], c: CallRecord, reason: str, status: int) -> None:
        if c.state is CallState.ENDED:
            return
        c.state = CallState.ENDED
        c.ok = c.ok_at = c.answer_at = None
        c.timer = None
        c.pending = None
        self._calls.pop(c.number, None)
        self._dialogs.pop((c.dialog.call_id, c.dialog.local_tag), None)
        if c.invite_key is not None:
            self._invites.pop(c.invite_key, None)
        c.scheduled = None
        out.append(CallTerminated(c.number, reason, status))
