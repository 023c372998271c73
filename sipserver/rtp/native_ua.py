"""The native SIP user agent of a call worker, sans-I/O (RFC 3261, RFC 4028, RFC 3311).

Theory of operation
-------------------
The edge proxies each INVITE it routes to a call worker over UDP on loopback; the worker's
:class:`UserAgent` answers it like the pjsua2 reference worker did, on our own SIP core
(:mod:`sipserver.sip`): bytes and the time go in (:meth:`UserAgent.receive`,
:meth:`UserAgent.tick`), a list of outputs comes out: :class:`Send` for the adapter to put on
the wire, and call events (:class:`IncomingCall`, :class:`CallConfirmed`,
:class:`OfferReceived`, :class:`DtmfReceived`, :class:`CallTerminated`) for it to act on. The
adapter answers an :class:`IncomingCall` with :meth:`UserAgent.answer` (our SDP) or
:meth:`UserAgent.reject`, and an :class:`OfferReceived` with :meth:`UserAgent.answer_update`.
Timers are absolute deadlines: :meth:`UserAgent.next_deadline` gives the next one and
:meth:`UserAgent.tick` fires what is due. No clock is read and no socket is touched here.

An incoming INVITE gets 100 Trying at once and 180 Ringing; the 200 OK goes out when the
adapter answered and ``answer_delay`` is over. Transactions are the SIP core's
(:mod:`sipserver.sip.invite_transaction`): an INVITE server transaction absorbs retransmitted
INVITEs and resends non-2xx finals on Timer G until the ACK (Timer H); the 2xx is the UA core's
to retransmit until the ACK (RFC 3261 §13.3.1.4), after which the dialog is confirmed; without
an ACK in 64*T1 the call ends with BYE. Requests we send (BYE, session refreshes, INFO later)
run on client transactions (Timers E/F, A/B) through the dialog's route set (§12.2.1.1).
:mod:`sipserver.rtp.native_dialog` holds the dialog and the RFC 4028 arithmetic.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from sipserver.rtp.native_dialog import (
    ACCEPT,
    ALLOW,
    CallRecord,
    CallState,
    Dialog,
    PendingOffer,
    ServerEntry,
    SessionTimer,
    answer_session_timer,
    content_type,
    display_name_addr,
    header_dict,
    new_tag,
    parse_dtmf_info,
    read_session_timer,
)
from sipserver.rtp.native_events import (
    CallAnswered,
    CallConfirmed,
    CallTerminated,
    DtmfReceived,
    IncomingCall,
    OfferReceived,
    Send,
    UaOutput,
    UaSettings,
)
from sipserver.rtp.native_uac import UacCore
from sipserver.sip.headers import NameAddr
from sipserver.sip.invite_transaction import (
    T1,
    T2,
    TIMER_B,
    ServerTransaction,
    TimerAction,
    server_key,
)
from sipserver.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    encode_response,
    make_response,
    parse_message,
)

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
    "UserAgent",
]

#: Methods RFC 3261 and its extensions define that this UA does not handle: 405 with Allow
#: (RFC 3261 §8.2.1); any other unknown method gets 501.
_KNOWN_UNSUPPORTED = frozenset(
    ("REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER")
)
#: Option tags we support (RFC 3261 §8.2.2.3: anything else in Require gets 420).
_SUPPORTED_TAGS = frozenset(("timer",))
#: Retry-After of a 500 for a re-INVITE that overlaps another (RFC 3261 §14.2: 0-10 s).
_RETRY_AFTER = "2"


@dataclass(frozen=True, slots=True)
class _Incoming:
    """A request being handled, with what each response to it needs."""

    request: SipRequest
    key: tuple[str, str, str]
    """Its server transaction's key (RFC 3261 §17.2.3)."""
    source: tuple[str, int]
    """Where it came from: its responses go there (RFC 3261 §18.2.2, our peer is the edge)."""
    out: list[UaOutput]
    """The outputs of the :meth:`UserAgent.receive` call handling it."""
    now: float


class UserAgent(UacCore):
    """The call worker's SIP user agent; see the module docstring."""

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> list[UaOutput]:
        """A datagram arrived from ``source``.

        Malformed requests get 400 when they can be answered; nothing raises.
        """
        out: list[UaOutput] = []
        try:
            message = parse_message(data)
        except SipParseError as exc:
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                self._stateless(out, partial, source, exc.status, exc.reason)
            return out
        try:
            if isinstance(message, SipResponse):
                self._on_response(out, message, now)
            elif message.method == "ACK":
                self._on_ack(out, message, now)
            else:
                self._on_request(out, message, source, now)
        except ValueError as exc:
            # A header that parsed as text but not as its grammar (Via, From, To, CSeq...).
            if isinstance(message, SipRequest) and message.method != "ACK":
                self._stateless(out, message, source, 400, str(exc)[:60] or None)
        return out

    def answer(self, call: int, sdp: bytes, now: float) -> list[UaOutput]:
        """200 OK with ``sdp`` for an :class:`IncomingCall` (held until ``answer_delay``)."""
        out: list[UaOutput] = []
        c = self._calls.get(call)
        if c is None or c.outgoing or c.state is not CallState.EARLY or c.answer_sdp is not None:
            return out
        c.answer_sdp = sdp
        c.local_sdp = sdp
        if c.answer_at is None or c.answer_at <= now:
            c.answer_at = None
            self._answer(out, c, now)
        self._arm(c)
        return out

    def reject(self, call: int, status: int, reason: str, now: float) -> list[UaOutput]:
        """A final non-2xx response: to the INVITE of an unanswered call (which ends), or to
        the pending re-INVITE/UPDATE offer of an answered one (which goes on)."""
        out: list[UaOutput] = []
        c = self._calls.get(call)
        if c is None or c.outgoing:
            return out
        if c.state is CallState.EARLY and c.invite_key is not None:
            self._respond(
                out, c.invite, c.invite_key, status, c, now, reason=reason or None, source=c.source
            )
            self._end(out, c, reason or "rejected", status)
        elif c.pending is not None:
            pending, c.pending = c.pending, None
            self._respond(out, pending.request, pending.key, status, c, now, reason=reason or None)
        return out

    def answer_update(self, call: int, sdp: bytes, now: float) -> list[UaOutput]:
        """200 OK with our ``sdp`` to the pending re-INVITE or UPDATE offer."""
        out: list[UaOutput] = []
        c = self._calls.get(call)
        if c is None or c.pending is None:
            return out
        pending, c.pending = c.pending, None
        c.local_sdp = sdp
        self._send_ok(
            out,
            c,
            pending.request,
            pending.key,
            pending.source,
            now,
            timer=pending.timer,
            sdp=sdp,
            offers=False,
        )
        return out

    def hangup(self, call: int, reason: str, now: float) -> list[UaOutput]:
        """End a call: BYE when answered (after the ACK), a final response (487) while ringing,
        CANCEL for an outgoing call still ringing. The :class:`CallTerminated` comes at once."""
        out: list[UaOutput] = []
        c = self._calls.get(call)
        if c is None:
            return out
        if c.outgoing and c.state is CallState.EARLY:
            if c.provisional:
                self._send_cancel(out, c, now)
            else:
                c.cancel_pending = True  # RFC 3261 §9.1: not before a provisional response
        elif c.state is CallState.EARLY and c.invite_key is not None:
            self._respond(out, c.invite, c.invite_key, 487, c, now, source=c.source)
        elif c.state is CallState.ANSWERED:
            c.bye_reason = reason  # RFC 3261 §15: no BYE before the ACK (or its timeout)
            return out
        else:
            self._send_request(out, c, "BYE", now)
        self._end(out, c, reason, 200 if c.state is not CallState.EARLY else 487)
        return out

    def tick(self, now: float) -> list[UaOutput]:
        """Fire every deadline that has passed: retransmissions, Timers B/F/H, session timers."""
        out: list[UaOutput] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if item.scheduled != when:
                continue  # stale: rescheduled or finished since
            item.scheduled = None
            if isinstance(item, CallRecord):
                self._call_timer(out, item, now)
            elif isinstance(item, ServerEntry):
                self._server_timer(out, item, now)
            else:
                self._client_timer(out, item, now)
        return out

    # ------------------------------------------------------------------ timers

    def _call_timer(self, out: list[UaOutput], c: CallRecord, now: float) -> None:
        if c.state is CallState.ENDED:
            return
        if c.answer_at is not None and c.answer_at <= now:
            c.answer_at = None
            if c.answer_sdp is not None and c.state is CallState.EARLY:
                self._answer(out, c, now)
        if c.ok_at is not None and c.ok_at <= now:
            if now >= c.ok_until:
                # RFC 3261 §13.3.1.4: no ACK within 64*T1: end the dialog with BYE.
                c.ok = c.ok_at = None
                reason = (("Reason", 'SIP;cause=408;text="ACK Timeout"'),)
                self._send_request(out, c, "BYE", now, extra=() if c.bye_reason else reason)
                self._end(out, c, c.bye_reason or "no-ack", 408)
                return
            assert c.ok is not None
            out.append(Send(c.ok, c.ok_to))
            c.ok_interval = min(c.ok_interval * 2, T2)
            c.ok_at = now + c.ok_interval
        timer = c.timer
        if (
            timer is not None
            and c.state is CallState.CONFIRMED
            and not c.refreshing
            and timer.deadline() <= now
        ):
            if timer.we_refresh:
                self._send_refresh(out, c, now)
            else:
                # RFC 4028 §10: no refresh came: BYE before the session expires (RFC 3326
                # Reason: the edge counts it as an expired session).
                reason = (("Reason", 'SIP;cause=408;text="No session refresh received"'),)
                self._send_request(out, c, "BYE", now, extra=reason)
                self._end(out, c, "session-expired", 408)
                return
        self._arm(c)

    def _server_timer(self, out: list[UaOutput], s: ServerEntry, now: float) -> None:
        action = s.txn.handle_timer(now=now)
        if action is TimerAction.RETRANSMIT and s.txn.response is not None:
            out.append(Send(s.txn.response, s.destination))
        elif action in (TimerAction.TIMEOUT, TimerAction.TERMINATED):
            if self._servers.get(s.key) is s:
                del self._servers[s.key]
            return
        self._arm(s)

    # ------------------------------------------------------------------ responding

    def _stateless(
        self,
        out: list[UaOutput],
        request: SipRequest,
        source: tuple[str, int],
        status: int,
        reason: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        try:
            data = encode_response(request, status, reason, to_tag=new_tag(), headers=extra)
        except ValueError:
            return
        out.append(Send(data, source))

    def _encode(
        self,
        request: SipRequest,
        status: int,
        call: CallRecord | None,
        extra: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        reason: str | None = None,
    ) -> bytes:
        headers = [*extra, ("Server", self.settings.user_agent)]
        tag: str | None = None if status == 100 else new_tag()  # RFC 3261 §8.2.6.2
        if call is not None and status != 100:
            tag = call.dialog.local_tag
            if request.method in ("INVITE", "UPDATE") and 100 < status < 300:
                headers.append(("Contact", self.contact))
                # RFC 3261 §12.1.1: a dialog-creating response copies the Record-Route.
                headers += [("Record-Route", rr) for rr in request.headers.get_all("Record-Route")]
                headers += [("Allow", ALLOW), ("Supported", "timer")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = make_response(request, status, reason, to_tag=tag, headers=headers)
        response.body = body
        return response.encode()

    def _respond(
        self,
        out: list[UaOutput],
        request: SipRequest,
        key: tuple[str, str, str],
        status: int,
        call: CallRecord | None,
        now: float,
        *,
        extra: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
        source: tuple[str, int] | None = None,
        body: bytes = b"",
    ) -> bytes:
        """Build the response to ``request`` and send it through its server transaction, to
        ``source`` (by default the call's ``reply_to``); returns its bytes."""
        data = self._encode(request, status, call, extra, body, reason)
        where = source or (call.reply_to if call is not None else None)
        assert where is not None
        self._record(out, request, key, status, data, where, now)
        return data

    def _record(
        self,
        out: list[UaOutput],
        request: SipRequest,
        key: tuple[str, str, str],
        status: int,
        data: bytes,
        destination: tuple[str, int],
        now: float,
    ) -> None:
        """Send a response through the request's server transaction (created if needed)."""
        server = self._servers.get(key)
        if server is None:
            txn = ServerTransaction.start(invite=request.method == "INVITE", reliable=False)
            server = ServerEntry(txn, destination, key)
            self._servers[key] = server
        if server.txn.send_response(status, data, now=now):
            out.append(Send(data, destination))
        if server.txn.deadline() is None and server.txn.final_sent:
            del self._servers[key]  # nothing left to absorb (never on UDP; kept for safety)
            return
        self._arm(server)

    def _answer(self, out: list[UaOutput], c: CallRecord, now: float) -> None:
        """The 200 OK to the initial INVITE, with the adapter's answer (or offer: RFC 3264)."""
        assert c.invite_key is not None and c.answer_sdp is not None
        self._invites.pop(c.invite_key, None)
        c.state = CallState.ANSWERED
        self._send_ok(
            out,
            c,
            c.invite,
            c.invite_key,
            c.source,
            now,
            timer=self._initial_timer(c),
            sdp=c.answer_sdp,
            offers=not c.invite.body,
        )

    def _send_ok(
        self,
        out: list[UaOutput],
        c: CallRecord,
        request: SipRequest,
        key: tuple[str, str, str],
        to: tuple[str, int],
        now: float,
        *,
        timer: tuple[int, str, bool] | None,
        sdp: bytes,
        offers: bool,
    ) -> None:
        """200 OK to an INVITE, re-INVITE or UPDATE of ``c`` with ``sdp`` and the negotiated
        session ``timer`` (RFC 4028 §9), which applies from now; a 2xx to an INVITE is ours to
        retransmit until its ACK (RFC 3261 §13.3.1.4). ``offers``: ``sdp`` is an offer, the
        answer comes in the ACK."""
        data = self._respond(
            out, request, key, 200, c, now, extra=self._timer_headers(timer), source=to, body=sdp
        )
        self._apply_timer(c, timer, now)
        if request.method == "INVITE":
            self._retransmit_ok(c, data, request.cseq[0], to, now, offers=offers)

    def _retransmit_ok(
        self,
        c: CallRecord,
        data: bytes,
        cseq: int,
        to: tuple[str, int],
        now: float,
        *,
        offers: bool,
    ) -> None:
        c.ok, c.ok_cseq, c.ok_offers, c.ok_to = data, cseq, offers, to
        c.ok_interval = T1
        c.ok_at = now + T1
        c.ok_until = now + TIMER_B
        self._arm(c)

    # ------------------------------------------------------------------ session timers

    def _negotiate_timer(self, request: SipRequest) -> tuple[int, str, bool] | int | None:
        s = self.settings
        offer = read_session_timer(request.headers)
        return answer_session_timer(
            offer, mode=s.session_timers, session_expires=s.session_expires, min_se=s.min_se
        )

    def _initial_timer(self, c: CallRecord) -> tuple[int, str, bool] | None:
        negotiated = self._negotiate_timer(c.invite)
        return negotiated if isinstance(negotiated, tuple) else None

    @staticmethod
    def _timer_headers(timer: tuple[int, str, bool] | None) -> tuple[tuple[str, str], ...]:
        if timer is None:
            return ()
        interval, refresher, require = timer
        headers = (("Session-Expires", f"{interval};refresher={refresher}"),)
        # RFC 4028 §9: Require: timer when the UAC supports the extension.
        return (*headers, ("Require", "timer")) if require else headers

    def _apply_timer(self, c: CallRecord, timer: tuple[int, str, bool] | None, now: float) -> None:
        if timer is None:
            c.timer = None
        else:
            c.timer = SessionTimer(timer[0], timer[1] == "uas", now)
        self._arm(c)

    def _send_refresh(self, out: list[UaOutput], c: CallRecord, now: float) -> None:
        """RFC 4028 §7.4: refresh with UPDATE when the peer allows it, else re-INVITE with our
        last SDP (unchanged: same o= version, RFC 3264 §8)."""
        assert c.timer is not None
        extra = (
            ("Session-Expires", f"{c.timer.interval};refresher=uac"),
            ("Supported", "timer"),
        )
        c.refreshing = True
        if c.peer_allows_update:
            self._send_request(out, c, "UPDATE", now, extra=extra)
        else:
            self._send_request(out, c, "INVITE", now, extra=extra, body=c.local_sdp)

    # ------------------------------------------------------------------ incoming requests

    def _reply(
        self,
        r: _Incoming,
        status: int,
        call: CallRecord | None = None,
        *extra: tuple[str, str],
        reason: str | None = None,
    ) -> None:
        """Answer the request being handled (through its server transaction, to its source)."""
        self._respond(
            r.out,
            r.request,
            r.key,
            status,
            call,
            r.now,
            extra=extra,
            reason=reason,
            source=r.source,
        )

    def _on_request(
        self, out: list[UaOutput], request: SipRequest, source: tuple[str, int], now: float
    ) -> None:
        method = request.method
        key = server_key(request)
        server = self._servers.get(key)
        if server is not None:
            # RFC 3261 §17.2.1/§17.2.2: a retransmission gets the last response again.
            again = server.txn.retransmission()
            if again is not None:
                out.append(Send(again, server.destination))
            return
        r = _Incoming(request, key, source, out, now)
        if method == "CANCEL":
            self._on_cancel(r)
            return
        if method not in ("INVITE", "BYE", "OPTIONS", "INFO", "UPDATE"):
            self._reply(r, 405 if method in _KNOWN_UNSUPPORTED else 501, None, ("Allow", ALLOW))
            return
        unsupported = [
            t for t in request.headers.get_all("Require") if t.lower() not in _SUPPORTED_TAGS
        ]
        if unsupported:
            # RFC 3261 §8.2.2.3: 420 Bad Extension naming what we do not support.
            self._reply(r, 420, None, ("Unsupported", ", ".join(unsupported)))
            return
        to_tag = request.to().tag
        if to_tag is None:
            if method == "INVITE":
                self._on_invite(r)
            elif method == "OPTIONS":
                self._reply(r, 200, None, *self._capabilities())
            else:
                self._reply(r, 481)
            return
        c = self._dialogs.get((request.call_id, to_tag))
        if c is None:
            self._reply(r, 481)  # RFC 3261 §12.2.2
            return
        c.reply_to = source
        self._in_dialog(c, r)

    def _capabilities(self) -> tuple[tuple[str, str], ...]:
        return (("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", "timer"))

    def _on_invite(self, r: _Incoming) -> None:
        request, source = r.request, r.source
        if len(self._calls) >= self.settings.capacity:
            self._reply(r, 486)
            return
        contacts = request.headers.get_all("Contact")
        if len(contacts) != 1:
            self._reply(r, 400, reason="Missing Contact" if not contacts else "Several Contacts")
            return
        remote_target = str(NameAddr.parse(contacts[0]).uri)
        if request.body and content_type(request) != "application/sdp":
            self._reply(r, 415, None, ("Accept", "application/sdp"))
            return
        timer = self._negotiate_timer(request)
        if isinstance(timer, int):
            self._reply(r, 422, None, ("Min-SE", str(timer)))  # RFC 4028 §9
            return
        from_ = request.from_()
        to = request.to()
        if from_.tag is None:
            self._reply(r, 400, reason="Missing From tag")
            return
        number = next(self._numbers)
        tag = new_tag()
        dialog = Dialog(
            call_id=request.call_id,
            local_party=f"{request.headers.get('To')};tag={tag}",
            remote_party=request.headers.get("From") or "",
            local_tag=tag,
            remote_target=remote_target,
            route_set=tuple(request.headers.get_all("Record-Route")),
            local_cseq=0,
            peer=source,
            contact=self.contact,
            user_agent=self.settings.user_agent,
            remote_cseq=request.cseq[0],
        )
        c = CallRecord(number, False, dialog, request, source, invite_key=r.key, reply_to=source)
        c.peer_allows_update = "UPDATE" in (m.upper() for m in request.headers.get_all("Allow"))
        self._calls[number] = c
        self._dialogs[(dialog.call_id, tag)] = c
        self._invites[r.key] = c
        self._reply(r, 100)
        if self.settings.ring:
            self._reply(r, 180, c)
        if self.settings.answer_delay > 0:
            c.answer_at = r.now + self.settings.answer_delay
        r.out.append(
            IncomingCall(
                number,
                dialog.call_id,
                display_name_addr(from_),
                display_name_addr(to),
                request.uri,
                header_dict(request),
                request.body,
            )
        )
        self._arm(c)

    def _on_cancel(self, r: _Incoming) -> None:
        invite_key = server_key(r.request, "INVITE")
        c = self._invites.get(invite_key)
        if c is None or c.state is not CallState.EARLY or c.invite_key is None:
            # RFC 3261 §9.2: no matching transaction: 481; an answered one: 200, no effect.
            self._reply(r, 200 if c is not None or invite_key in self._servers else 481, c)
            return
        self._reply(r, 200, c)
        self._respond(r.out, c.invite, c.invite_key, 487, c, r.now, source=c.source)
        self._end(r.out, c, "cancelled", 487)

    def _in_dialog(self, c: CallRecord, r: _Incoming) -> None:
        method = r.request.method
        cseq = r.request.cseq[0]
        if cseq <= c.dialog.remote_cseq and method != "ACK":
            self._reply(r, 500, c, reason="CSeq Out of Order")
            return  # RFC 3261 §12.2.2
        c.dialog.remote_cseq = cseq
        if method == "BYE":
            self._reply(r, 200, c)
            if c.pending is not None:  # RFC 3261 §15.1.2: the pending request gets 487
                pending, c.pending = c.pending, None
                self._respond(r.out, pending.request, pending.key, 487, c, r.now)
            self._end(r.out, c, "bye", 200)
        elif method == "OPTIONS":
            self._reply(r, 200, c, *self._capabilities())
        elif method == "INFO":
            self._on_info(c, r)
        else:
            self._on_offer(c, r)

    def _on_info(self, c: CallRecord, r: _Incoming) -> None:
        request = r.request
        ctype = content_type(request)
        if not request.body:
            self._reply(r, 200, c)
            return
        if ctype not in ("application/dtmf-relay", "application/dtmf"):
            self._reply(r, 415, c, ("Accept", ACCEPT))
            return
        found = parse_dtmf_info(ctype, request.body)
        self._reply(r, 200 if found is not None else 400, c)
        if found is not None and c.state is not CallState.ENDED:
            r.out.append(DtmfReceived(c.number, found[0], found[1]))

    def _on_offer(self, c: CallRecord, r: _Incoming) -> None:
        """A re-INVITE or UPDATE (RFC 3261 §14.2, RFC 3311 §5.2): hold, codec change, refresh."""
        request = r.request
        if c.state is CallState.EARLY or (c.outgoing and c.state is not CallState.CONFIRMED):
            self._reply(r, 491, c)  # RFC 3311 §5.2: an early UPDATE
            return
        if c.refreshing or (c.ok is not None and request.method == "INVITE"):
            self._reply(r, 491, c)  # RFC 3261 §14.2: glare
            return
        if c.pending is not None:
            self._reply(r, 500, c, ("Retry-After", _RETRY_AFTER))
            return
        if request.body and content_type(request) != "application/sdp":
            self._reply(r, 415, c, ("Accept", "application/sdp"))
            return
        timer = self._negotiate_timer(request)
        if isinstance(timer, int):
            self._reply(r, 422, c, ("Min-SE", str(timer)))
            return
        contacts = request.headers.get_all("Contact")
        if contacts:
            c.dialog.remote_target = str(NameAddr.parse(contacts[0]).uri)  # §12.2.2 target refresh
        if request.body:
            c.pending = PendingOffer(request, r.key, timer, c.reply_to)
            r.out.append(OfferReceived(c.number, request.body))
            return
        # No SDP: an UPDATE refreshes the session only; a re-INVITE wants our offer in the
        # 200 and the answer in the ACK (RFC 3261 §14.2).
        sdp = c.local_sdp if request.method == "INVITE" else b""
        self._send_ok(
            r.out, c, request, r.key, c.reply_to, r.now, timer=timer, sdp=sdp, offers=True
        )

    def _on_ack(self, out: list[UaOutput], request: SipRequest, now: float) -> None:
        to_tag = request.to().tag
        c = self._dialogs.get((request.call_id, to_tag)) if to_tag else None
        if c is not None and c.ok is not None and request.cseq[0] == c.ok_cseq:
            # RFC 3261 §13.3.1.4: the ACK for our 2xx stops its retransmissions.
            c.ok = c.ok_at = None
            confirmed = c.state is CallState.ANSWERED
            c.state = CallState.CONFIRMED
            if confirmed:
                out.append(CallConfirmed(c.number))
            if c.ok_offers and request.body:
                out.append(OfferReceived(c.number, request.body, is_answer=True))
            if c.bye_reason is not None:
                self._send_request(out, c, "BYE", now)
                self._end(out, c, c.bye_reason, 200)
                return
            self._arm(c)
            return
        server = self._servers.get(server_key(request))
        if server is not None and server.txn.receive_ack(now=now):
            self._arm(server)  # RFC 3261 §17.2.1: ACK for a non-2xx final, Timer I
