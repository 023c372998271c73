"""The native SIP user agent of the call worker, sans-I/O: the edge's proxied INVITE and the
in-dialog requests a caller sends through it, as text, with time stepped by hand.

The messages are written as the edge forwards them (its Via on top of the caller's, two
Record-Route entries, ``X-Sipserver-Agent``) and as SIPp and pjsua2 send them in-dialog (Route
set, To tag). Each test checks the RFC clause named in its docstring.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.rtp.native_dialog import (
    Dialog,
    answer_session_timer,
    parse_dtmf_info,
    read_session_timer,
)
from sipserver.rtp.native_ua import (
    CallAnswered,
    CallConfirmed,
    CallTerminated,
    DtmfReceived,
    IncomingCall,
    OfferReceived,
    Send,
    UaOutput,
    UaSettings,
    UserAgent,
)
from sipserver.sip.digest import DigestAlgorithm, DigestCredentials, compute_ha1, verify
from sipserver.sip.message import SipRequest, SipResponse, make_response, parse_message

EDGE = ("127.0.0.1", 5070)
"""The edge's inside address: where proxied requests come from."""
RR_INSIDE = "<sip:127.0.0.1:5070;transport=udp;lr;r2=on>"
RR_OUTSIDE = "<sip:203.0.113.5:5060;transport=udp;lr;r2=on>"
CALLER_CONTACT = "sip:alice@192.0.2.10:5062"
OFFER = (
    b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
)
ANSWER = (
    b"v=0\r\no=sipserver 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
)
ALLOW_ALL = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
_branches = itertools.count(1)


def settings_(**kw: object) -> UaSettings:
    return UaSettings(host="127.0.0.1", port=5090, **kw)  # type: ignore[arg-type]


def edge_invite(
    *,
    call_id: str = "call-1@192.0.2.10",
    branch: str | None = None,
    extra: str = "",
    body: bytes = OFFER,
    ctype: str = "application/sdp",
    allow: str = ALLOW_ALL,
) -> bytes:
    """An initial INVITE as the edge proxies it (RFC 3261 §16.6)."""
    branch = branch or f"z9hG4bKedge{next(_branches)}"
    head = (
        "INVITE sip:+15005550101@127.0.0.1:5090 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5062;received=192.0.2.10;rport=5062;branch=z9hG4bKalice1\r\n"
        f"Record-Route: {RR_INSIDE}\r\nRecord-Route: {RR_OUTSIDE}\r\n"
        "Max-Forwards: 69\r\n"
        'From: "Alice" <sip:alice@192.0.2.10>;tag=alice-tag\r\n'
        "To: <sip:+15005550101@203.0.113.5>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <{CALLER_CONTACT}>\r\n"
        f"Allow: {allow}\r\n"
        "X-Sipserver-Agent: demo\r\n"
        f"{extra}"
    )
    if body:
        head += f"Content-Type: {ctype}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def in_dialog(
    method: str,
    to_tag: str,
    cseq: int,
    *,
    call_id: str = "call-1@192.0.2.10",
    branch: str | None = None,
    extra: str = "",
    body: bytes = b"",
    ctype: str = "application/sdp",
) -> bytes:
    """A request of the caller inside the dialog, after the edge removed its Route entries."""
    branch = branch or f"z9hG4bKedge{next(_branches)}"
    head = (
        f"{method} sip:127.0.0.1:5090 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKalice" + str(next(_branches)) + "\r\n"
        "Max-Forwards: 69\r\n"
        'From: "Alice" <sip:alice@192.0.2.10>;tag=alice-tag\r\n'
        f"To: <sip:+15005550101@203.0.113.5>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <{CALLER_CONTACT}>\r\n{extra}"
    )
    if body:
        head += f"Content-Type: {ctype}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def sent(outputs: list[UaOutput]) -> list[SipRequest | SipResponse]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send)]


def responses(outputs: list[UaOutput]) -> list[SipResponse]:
    return [m for m in sent(outputs) if isinstance(m, SipResponse)]


def requests(outputs: list[UaOutput]) -> list[SipRequest]:
    return [m for m in sent(outputs) if isinstance(m, SipRequest)]


def events(outputs: list[UaOutput], kind: type) -> list[UaOutput]:
    return [o for o in outputs if isinstance(o, kind)]


def statuses(outputs: list[UaOutput]) -> list[int]:
    return [r.status for r in responses(outputs)]


def ack_for(response: SipResponse, cseq: int = 1, body: bytes = b"") -> bytes:
    to_tag = response.to().tag
    assert to_tag is not None
    return in_dialog("ACK", to_tag, cseq, body=body)


def run_until(ua: UserAgent, until: float) -> list[UaOutput]:
    """Fire every deadline up to ``until``, as the adapter's timer does."""
    out: list[UaOutput] = []
    while (deadline := ua.next_deadline()) is not None and deadline <= until:
        out += ua.tick(deadline)
    return out


class Call:
    """An answered call: the UA, its call number, our To tag and the 200."""

    def __init__(self, ua: UserAgent, invite_extra: str = "", allow: str = ALLOW_ALL) -> None:
        self.ua = ua
        out = ua.receive(edge_invite(extra=invite_extra, allow=allow), EDGE, 0.0)
        (incoming,) = events(out, IncomingCall)
        assert isinstance(incoming, IncomingCall)
        self.number = incoming.call
        self.ok = responses(ua.answer(self.number, ANSWER, 0.0))[0]
        assert self.ok.status == 200
        tag = self.ok.to().tag
        assert tag is not None
        self.tag = tag
        self.cseq = 1

    def confirm(self, now: float = 0.0) -> list[UaOutput]:
        return self.ua.receive(ack_for(self.ok), EDGE, now)

    def request(self, method: str, now: float, **kw: object) -> list[UaOutput]:
        self.cseq += 1
        return self.ua.receive(in_dialog(method, self.tag, self.cseq, **kw), EDGE, now)  # type: ignore[arg-type]


# ------------------------------------------------------------------ answering


def test_invite_gets_trying_ringing_and_an_incoming_call() -> None:
    ua = UserAgent(settings_())
    out = ua.receive(edge_invite(), EDGE, 0.0)
    trying, ringing = responses(out)
    assert trying.status == 100 and trying.to().tag is None  # RFC 3261 §8.2.6.1
    assert ringing.status == 180 and ringing.to().tag
    # RFC 3261 §12.1.1: the dialog-creating response copies Record-Route, names our Contact
    assert ringing.headers.get_all("Record-Route") == [RR_INSIDE, RR_OUTSIDE]
    assert ringing.headers.get("Contact") == "<sip:127.0.0.1:5090>"
    assert len(ringing.headers.get_all("Via")) == 2  # every Via copied (§8.2.6.2)
    assert all(isinstance(o, Send) and o.destination == EDGE for o in out if isinstance(o, Send))
    (incoming,) = events(out, IncomingCall)
    assert isinstance(incoming, IncomingCall)
    assert incoming.offer == OFFER
    assert incoming.headers["X-Sipserver-Agent"] == "demo"
    assert incoming.from_uri == '"Alice" <sip:alice@192.0.2.10>'
    assert incoming.to_uri == "<sip:+15005550101@203.0.113.5>"
    assert incoming.request_uri == "sip:+15005550101@127.0.0.1:5090"
    assert incoming.sip_call_id == "call-1@192.0.2.10"


def test_ok_is_retransmitted_until_the_ack() -> None:
    """RFC 3261 §13.3.1.4: the 2xx goes again at T1, 2*T1... (capped at T2) until the ACK."""
    ua = UserAgent(settings_())
    call = Call(ua)
    assert call.ok.body == ANSWER
    assert call.ok.headers.get("Content-Type") == "application/sdp"
    assert ua.next_deadline() == 0.5
    assert statuses(ua.tick(0.5)) == [200]
    assert ua.next_deadline() == 1.5
    assert statuses(ua.tick(1.5)) == [200]
    assert ua.next_deadline() == 3.5
    out = call.confirm(2.0)
    assert events(out, CallConfirmed) == [CallConfirmed(call.number)]
    assert not sent(run_until(ua, 40.0))  # no more 200s, no BYE


def test_retransmitted_invite_gets_the_last_provisional_then_is_absorbed() -> None:
    """RFC 3261 §17.2.1 (Proceeding: resend), RFC 6026 §7.1 (Accepted: absorb)."""
    ua = UserAgent(settings_())
    invite = edge_invite(branch="z9hG4bKsame")
    (incoming,) = events(ua.receive(invite, EDGE, 0.0), IncomingCall)
    again = ua.receive(invite, EDGE, 0.1)
    assert statuses(again) == [180] and not events(again, IncomingCall)
    ua.answer(incoming.call, ANSWER, 0.2)  # type: ignore[attr-defined]
    assert ua.receive(invite, EDGE, 0.3) == []


def test_no_ack_ends_the_call_with_bye_after_64_t1() -> None:
    """RFC 3261 §13.3.1.4: no ACK within 64*T1: the UAS ends the dialog with BYE."""
    ua = UserAgent(settings_())
    call = Call(ua)
    out = run_until(ua, 40.0)
    assert statuses(out).count(200) >= 6
    byes = [r for r in requests(out) if r.method == "BYE"]
    assert byes and all(b.uri == CALLER_CONTACT for b in byes)  # sent, then Timer E
    assert events(out, CallTerminated) == [CallTerminated(call.number, "no-ack", 408)]


def test_answer_delay_rings_before_the_ok() -> None:
    ua = UserAgent(settings_(answer_delay=2.0))
    out = ua.receive(edge_invite(), EDGE, 0.0)
    assert statuses(out) == [100, 180]
    (incoming,) = events(out, IncomingCall)
    assert ua.answer(incoming.call, ANSWER, 0.1) == []  # type: ignore[attr-defined]
    assert ua.next_deadline() == 2.0
    assert statuses(ua.tick(2.0)) == [200]


def test_without_ring_only_trying_precedes_the_ok() -> None:
    ua = UserAgent(settings_(ring=False))
    assert statuses(ua.receive(edge_invite(), EDGE, 0.0)) == [100]


def test_reject_488_is_retransmitted_until_its_ack() -> None:
    """RFC 3261 §17.2.1: a non-2xx final goes again on Timer G until the ACK (then Timer I)."""
    ua = UserAgent(settings_())
    (incoming,) = events(ua.receive(edge_invite(branch="z9hG4bKrej"), EDGE, 0.0), IncomingCall)
    out = ua.reject(incoming.call, 488, "", 0.0)  # type: ignore[attr-defined]
    (final,) = responses(out)
    assert final.status == 488 and final.reason == "Not Acceptable Here"
    assert events(out, CallTerminated) == [CallTerminated(incoming.call, "rejected", 488)]  # type: ignore[attr-defined]
    assert statuses(ua.tick(0.5)) == [488]
    # the ACK of a non-2xx final has the INVITE's branch (§17.1.1.3)
    ack = edge_invite(branch="z9hG4bKrej", body=b"").replace(b"INVITE", b"ACK")
    assert ua.receive(ack, EDGE, 0.7) == []
    assert not sent(run_until(ua, 60.0))
    assert ua.next_deadline() is None


def test_beyond_capacity_gets_486() -> None:
    ua = UserAgent(settings_(capacity=1))
    Call(ua)
    out = ua.receive(edge_invite(call_id="call-2@x"), EDGE, 0.0)
    assert statuses(out) == [486] and not events(out, IncomingCall)


def test_non_sdp_body_gets_415_and_missing_contact_400() -> None:
    ua = UserAgent(settings_())
    out = ua.receive(edge_invite(body=b"hello", ctype="text/plain"), EDGE, 0.0)
    (resp,) = responses(out)
    assert resp.status == 415 and resp.headers.get("Accept") == "application/sdp"
    bare = edge_invite(call_id="c3").replace(f"Contact: <{CALLER_CONTACT}>\r\n".encode(), b"")
    assert statuses(ua.receive(bare, EDGE, 0.0)) == [400]


def test_late_offer_invite_gets_our_offer_and_the_ack_answers() -> None:
    """RFC 3261 §13.2.1: an INVITE without SDP; the 2xx offers, the ACK answers."""
    ua = UserAgent(settings_())
    out = ua.receive(edge_invite(body=b""), EDGE, 0.0)
    (incoming,) = events(out, IncomingCall)
    assert incoming.offer == b""  # type: ignore[attr-defined]
    (ok,) = responses(ua.answer(incoming.call, ANSWER, 0.0))  # type: ignore[attr-defined]
    out = ua.receive(ack_for(ok, body=OFFER), EDGE, 0.1)
    assert OfferReceived(incoming.call, OFFER, is_answer=True) in out  # type: ignore[attr-defined]


# ------------------------------------------------------------------ CANCEL


def test_cancel_while_ringing_gets_200_and_487() -> None:
    """RFC 3261 §9.2: 200 for the CANCEL, 487 for the INVITE, which waits for its ACK."""
    ua = UserAgent(settings_(answer_delay=5.0))
    invite = edge_invite(branch="z9hG4bKcan", body=b"")
    (incoming,) = events(ua.receive(invite, EDGE, 0.0), IncomingCall)
    cancel = invite.replace(b"INVITE", b"CANCEL")
    out = ua.receive(cancel, EDGE, 1.0)
    assert statuses(out) == [200, 487]
    assert responses(out)[0].cseq == (1, "CANCEL")
    assert events(out, CallTerminated) == [CallTerminated(incoming.call, "cancelled", 487)]  # type: ignore[attr-defined]
    assert ua.answer(incoming.call, ANSWER, 1.1) == []  # type: ignore[attr-defined]
    assert statuses(ua.tick(1.5)) == [487]
    ack = invite.replace(b"INVITE", b"ACK")
    assert ua.receive(ack, EDGE, 1.6) == []
    assert not sent(run_until(ua, 60.0))


def test_cancel_without_its_invite_gets_481() -> None:
    ua = UserAgent(settings_())
    cancel = edge_invite(body=b"").replace(b"INVITE", b"CANCEL")
    assert statuses(ua.receive(cancel, EDGE, 0.0)) == [481]


def test_cancel_after_the_ok_has_no_effect() -> None:
    ua = UserAgent(settings_())
    invite = edge_invite(branch="z9hG4bKlate", body=b"")
    (incoming,) = events(ua.receive(invite, EDGE, 0.0), IncomingCall)
    ua.answer(incoming.call, ANSWER, 0.0)  # type: ignore[attr-defined]
    out = ua.receive(invite.replace(b"INVITE", b"CANCEL"), EDGE, 0.1)
    assert statuses(out) == [200] and not events(out, CallTerminated)


# ------------------------------------------------------------------ BYE


def test_bye_from_the_caller_ends_the_call() -> None:
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    bye = in_dialog("BYE", call.tag, 2, branch="z9hG4bKbye")
    out = ua.receive(bye, EDGE, 1.0)
    assert statuses(out) == [200]
    assert events(out, CallTerminated) == [CallTerminated(call.number, "bye", 200)]
    assert statuses(ua.receive(bye, EDGE, 1.5)) == [200]  # retransmission: same answer (§17.2.2)
    assert ua.active_calls == 0


def test_our_bye_follows_the_route_set_and_is_retransmitted() -> None:
    """RFC 3261 §12.2.1.1: Request-URI = the caller's Contact, Route = the Record-Route set in
    order; sent to the first (loose) route, the edge; Timer E retransmits it (§17.1.2.2)."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    out = ua.hangup(call.number, "dtmf", 5.0)
    assert events(out, CallTerminated) == [CallTerminated(call.number, "dtmf", 200)]
    (send,) = [o for o in out if isinstance(o, Send)]
    assert send.destination == EDGE
    bye = parse_message(send.data)
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert bye.uri == CALLER_CONTACT
    assert bye.headers.get_all("Route") == [RR_INSIDE, RR_OUTSIDE]
    assert bye.from_().tag == call.tag and bye.to().tag == "alice-tag"
    assert bye.cseq == (1, "BYE")
    assert [r.method for r in requests(ua.tick(5.5))] == ["BYE"]
    ok = make_response(bye, 200).encode()
    assert ua.receive(ok, EDGE, 5.6) == []
    assert not sent(run_until(ua, 60.0))


def test_bye_timeout_is_timer_f() -> None:
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    ua.hangup(call.number, "session", 0.0)
    out = run_until(ua, 40.0)
    assert 5 <= len(requests(out)) <= 11  # E doubles to T2, F stops it at 64*T1
    assert ua.next_deadline() is None


def test_hangup_before_the_ack_waits_for_it() -> None:
    """RFC 3261 §15: no BYE on a dialog before the ACK of our 2xx."""
    ua = UserAgent(settings_())
    call = Call(ua)
    assert ua.hangup(call.number, "session", 0.1) == []
    out = call.confirm(0.2)
    assert [r.method for r in requests(out)] == ["BYE"]
    assert CallTerminated(call.number, "session", 200) in out


def test_hangup_while_ringing_answers_487() -> None:
    ua = UserAgent(settings_(answer_delay=3))
    (incoming,) = events(ua.receive(edge_invite(), EDGE, 0.0), IncomingCall)
    out = ua.hangup(incoming.call, "shutdown", 0.5)  # type: ignore[attr-defined]
    assert statuses(out) == [487]
    assert events(out, CallTerminated) == [CallTerminated(incoming.call, "shutdown", 487)]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ re-INVITE and UPDATE


def test_reinvite_hold_is_offered_to_the_adapter_and_answered() -> None:
    """RFC 3264 §8.4 hold by re-INVITE; the 200 with our answer waits for its ACK."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    hold = OFFER.replace(b"a=ptime:20\r\n", b"a=sendonly\r\n")
    out = call.request("INVITE", 1.0, body=hold)
    assert events(out, OfferReceived) == [OfferReceived(call.number, hold)]
    assert not sent(out)
    answer = ANSWER.replace(b"sendrecv", b"recvonly")
    (ok,) = responses(ua.answer_update(call.number, answer, 1.0))
    assert ok.status == 200 and ok.body == answer and ok.cseq == (2, "INVITE")
    assert statuses(ua.tick(1.5)) == [200]
    out = ua.receive(ack_for(ok, 2), EDGE, 1.6)
    assert not events(out, CallConfirmed) and not sent(out)
    assert not sent(run_until(ua, 40.0))


def test_reinvite_rejected_488_keeps_the_call() -> None:
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    call.request("INVITE", 1.0, body=OFFER.replace(b"RTP/AVP 0 101", b"RTP/AVP 3"))
    out = ua.reject(call.number, 488, "", 1.0)
    assert statuses(out) == [488] and not events(out, CallTerminated)
    assert ua.active_calls == 1
    assert statuses(call.request("BYE", 2.0)) == [200]


def test_reinvite_without_sdp_gets_our_last_sdp() -> None:
    """RFC 3261 §14.2: an offerless re-INVITE: we offer in the 200, the ACK answers."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    (ok,) = responses(call.request("INVITE", 1.0))
    assert ok.status == 200 and ok.body == ANSWER
    out = ua.receive(ack_for(ok, 2, body=OFFER), EDGE, 1.1)
    assert events(out, OfferReceived) == [OfferReceived(call.number, OFFER, is_answer=True)]


def test_update_with_and_without_sdp() -> None:
    """RFC 3311: UPDATE with SDP is an offer; without, a bare (session) refresh."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    out = call.request("UPDATE", 1.0, body=OFFER)
    assert events(out, OfferReceived) == [OfferReceived(call.number, OFFER)]
    (ok,) = responses(ua.answer_update(call.number, ANSWER, 1.0))
    assert ok.cseq == (2, "UPDATE") and ok.body == ANSWER
    assert not sent(ua.tick(1.5))  # a non-INVITE 2xx is not retransmitted by the UA core
    assert statuses(call.request("UPDATE", 2.0)) == [200]


def test_overlapping_reinvite_gets_500_with_retry_after() -> None:
    """RFC 3261 §14.2: a re-INVITE while another is pending: 500 with Retry-After."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    call.request("INVITE", 1.0, body=OFFER)
    (resp,) = responses(call.request("INVITE", 1.1, body=OFFER))
    assert resp.status == 500 and resp.headers.get("Retry-After")


def test_bye_while_a_reinvite_is_pending_answers_it_487() -> None:
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    call.request("INVITE", 1.0, body=OFFER)
    assert statuses(call.request("BYE", 1.1)) == [200, 487]


# ------------------------------------------------------------------ RFC 4028 session timers


def test_session_expires_refresher_uac_then_bye_when_no_refresh() -> None:
    """RFC 4028 §9: the 200 copies Session-Expires (refresher=uac) with Require: timer; §10: as
    the non-refresher we send BYE min(32, SE/3) before the session expires."""
    ua = UserAgent(settings_())
    call = Call(ua, "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\nMin-SE: 90\r\n")
    assert call.ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert call.ok.headers.get("Require") == "timer"
    call.confirm(0.0)
    assert not sent(run_until(ua, 59.0))
    out = run_until(ua, 60.4)  # before Timer E sends it again
    (bye,) = requests(out)
    assert bye.method == "BYE"
    # RFC 3326: the edge tells an expired session from a hang-up by this Reason
    assert bye.headers.get("Reason") == 'SIP;cause=408;text="No session refresh received"'
    assert events(out, CallTerminated) == [CallTerminated(call.number, "session-expired", 408)]


def test_refresh_by_reinvite_or_update_restarts_the_session() -> None:
    ua = UserAgent(settings_())
    call = Call(ua, "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")
    call.confirm(0.0)
    se = "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n"
    out = call.request("INVITE", 30.0, body=OFFER, extra=se)
    ok = responses(ua.answer_update(call.number, ANSWER, 30.0))[0]
    assert ok.headers.get("Session-Expires") == "90;refresher=uac"
    ua.receive(ack_for(ok, call.cseq), EDGE, 30.1)
    assert not requests(run_until(ua, 80.0))
    (ok,) = responses(call.request("UPDATE", 80.0, extra=se))
    assert ok.status == 200 and ok.headers.get("Session-Expires") == "90;refresher=uac"
    assert not requests(run_until(ua, 139.0))
    assert [r.method for r in requests(run_until(ua, 140.4))] == ["BYE"]
    assert events(out, OfferReceived)


def test_session_expires_below_min_se_gets_422() -> None:
    """RFC 4028 §9: 422 Session Interval Too Small with our Min-SE."""
    ua = UserAgent(settings_(min_se=90))
    out = ua.receive(edge_invite(extra="Supported: timer\r\nSession-Expires: 60\r\n"), EDGE, 0.0)
    (resp,) = responses(out)
    assert resp.status == 422 and resp.headers.get("Min-SE") == "90"
    assert not events(out, IncomingCall)


def test_always_mode_refreshes_with_update_when_the_caller_allows_it() -> None:
    """RFC 4028 §9: a caller without Session-Expires; in ``always`` mode we refresh (uas) at
    half the interval (§10), with UPDATE (§7.4); the 2xx restarts the interval."""
    ua = UserAgent(settings_(session_timers="always", session_expires=120))
    call = Call(ua)
    assert call.ok.headers.get("Session-Expires") == "120;refresher=uas"
    assert call.ok.headers.get("Require") is None  # the caller did not say Supported: timer
    call.confirm(0.0)
    assert not requests(run_until(ua, 59.0))
    (update,) = requests(run_until(ua, 60.0))
    assert (
        update.method == "UPDATE" and update.headers.get("Session-Expires") == "120;refresher=uac"
    )
    assert update.headers.get_all("Route") == [RR_INSIDE, RR_OUTSIDE]
    ok = make_response(update, 200, headers=[("Session-Expires", "120;refresher=uac")])
    assert ua.receive(ok.encode(), EDGE, 60.1) == []
    assert not requests(run_until(ua, 119.0))
    assert [r.method for r in requests(run_until(ua, 120.5))] == ["UPDATE"]


def test_always_mode_refreshes_with_reinvite_and_acks_it() -> None:
    ua = UserAgent(settings_(session_timers="always", session_expires=120))
    call = Call(ua, allow="INVITE, ACK, CANCEL, BYE")  # no UPDATE
    call.confirm(0.0)
    (reinvite,) = requests(run_until(ua, 60.0))
    assert reinvite.method == "INVITE" and reinvite.body == ANSWER  # unchanged SDP (RFC 3264 §8)
    ok = make_response(reinvite, 200, to_tag=None)
    ok.body = ANSWER
    out = ua.receive(ok.encode(), EDGE, 60.1)
    (ack,) = requests(out)
    assert ack.method == "ACK" and ack.cseq == (reinvite.cseq[0], "ACK")
    assert ack.top_via().branch != reinvite.top_via().branch  # §13.2.2.4: its own transaction
    assert OfferReceived(call.number, ANSWER, is_answer=True) in out
    sends = [o for o in out if isinstance(o, Send)]
    assert ua.receive(ok.encode(), EDGE, 60.6) == sends  # a 2xx retransmission: the same ACK


def test_refresh_answered_after_our_hangup_is_still_acked() -> None:
    ua = UserAgent(settings_(session_timers="always", session_expires=120))
    call = Call(ua, allow="INVITE, ACK, CANCEL, BYE")
    call.confirm(0.0)
    (reinvite,) = requests(run_until(ua, 60.0))
    assert [r.method for r in requests(ua.hangup(call.number, "session", 60.1))] == ["BYE"]
    ok = make_response(reinvite, 200)
    ok.body = ANSWER
    (ack,) = requests(ua.receive(ok.encode(), EDGE, 60.2))
    assert ack.method == "ACK" and ack.cseq == (reinvite.cseq[0], "ACK")


def test_refresh_glare_491_is_retried() -> None:
    """RFC 3261 §14.1: a 491 to our refresh: try again (0-2 s later: we do not own the
    Call-ID); a re-INVITE of the caller meanwhile gets 491 from us (§14.2)."""
    ua = UserAgent(settings_(session_timers="always", session_expires=120))
    call = Call(ua)
    call.confirm(0.0)
    (update,) = requests(run_until(ua, 60.0))
    assert statuses(call.request("INVITE", 60.05, body=OFFER)) == [491]
    assert ua.receive(make_response(update, 491).encode(), EDGE, 60.1) == []
    (again,) = requests(run_until(ua, 61.2))
    assert again.method == "UPDATE" and again.cseq[0] == update.cseq[0] + 1


def test_refresh_answered_481_ends_the_call() -> None:
    ua = UserAgent(settings_(session_timers="always", session_expires=120))
    call = Call(ua)
    call.confirm(0.0)
    (update,) = requests(run_until(ua, 60.0))
    out = ua.receive(make_response(update, 481).encode(), EDGE, 60.1)
    assert [r.method for r in requests(out)] == ["BYE"]
    assert events(out, CallTerminated) == [CallTerminated(call.number, "refresh-failed", 481)]


def test_session_timers_off_ignores_session_expires() -> None:
    ua = UserAgent(settings_(session_timers="off"))
    call = Call(ua, "Supported: timer\r\nSession-Expires: 30\r\n")
    assert call.ok.headers.get("Session-Expires") is None
    call.confirm()
    assert not sent(run_until(ua, 3600.0))


def test_malformed_session_expires_gets_400() -> None:
    ua = UserAgent(settings_())
    out = ua.receive(edge_invite(extra="Session-Expires: soon\r\n"), EDGE, 0.0)
    assert statuses(out) == [400]


# ------------------------------------------------------------------ INFO, OPTIONS, errors


def test_info_dtmf_relay_and_dtmf() -> None:
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    relay = b"Signal=5\r\nDuration=160\r\n"
    out = call.request("INFO", 1.0, body=relay, ctype="application/dtmf-relay")
    assert statuses(out) == [200]
    assert events(out, DtmfReceived) == [DtmfReceived(call.number, "5", 160)]
    out = call.request("INFO", 1.1, body=b"7\r\n", ctype="application/dtmf")
    assert events(out, DtmfReceived) == [DtmfReceived(call.number, "7", 0)]
    out = call.request("INFO", 1.2, body=b"Signal=Z\r\n", ctype="application/dtmf-relay")
    assert statuses(out) == [400] and not events(out, DtmfReceived)
    out = call.request("INFO", 1.3, body=b"<xml/>", ctype="application/media_control+xml")
    assert statuses(out) == [415]


def test_options_in_and_out_of_dialog() -> None:
    ua = UserAgent(settings_())
    opts = (
        b"OPTIONS sip:127.0.0.1:5090 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKopt1;rport\r\n"
        b"From: <sip:edge@127.0.0.1>;tag=e1\r\nTo: <sip:127.0.0.1:5090>\r\n"
        b"Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    (resp,) = responses(ua.receive(opts, ("127.0.0.1", 40000), 0.0))
    assert resp.status == 200
    assert "UPDATE" in resp.headers.get_all("Allow")
    assert "application/sdp" in resp.headers.get_all("Accept")
    call = Call(ua)
    call.confirm()
    assert statuses(call.request("OPTIONS", 1.0)) == [200]


def test_unknown_dialog_gets_481() -> None:
    """RFC 3261 §12.2.2: a request with a To tag matching no dialog."""
    ua = UserAgent(settings_())
    assert statuses(ua.receive(in_dialog("BYE", "nope", 2), EDGE, 0.0)) == [481]
    assert statuses(ua.receive(in_dialog("INFO", "nope", 2), EDGE, 0.0)) == [481]
    no_tag = in_dialog("BYE", "x", 2).replace(b";tag=x", b"")
    assert statuses(ua.receive(no_tag, EDGE, 0.0)) == [481]
    assert ua.receive(in_dialog("ACK", "nope", 2), EDGE, 0.0) == []  # an ACK is never answered


def test_unsupported_methods_get_405_or_501() -> None:
    """RFC 3261 §8.2.1: 405 (with Allow) for a known method we do not handle, 501 otherwise."""
    ua = UserAgent(settings_())
    (r405,) = responses(ua.receive(in_dialog("MESSAGE", "t", 1).replace(b";tag=t", b""), EDGE, 0))
    assert r405.status == 405 and "INVITE" in r405.headers.get_all("Allow")
    (r501,) = responses(ua.receive(in_dialog("FROB", "t", 1).replace(b";tag=t", b""), EDGE, 0))
    assert r501.status == 501


def test_require_of_an_unknown_extension_gets_420() -> None:
    """RFC 3261 §8.2.2.3: 420 Bad Extension listing it in Unsupported."""
    ua = UserAgent(settings_())
    (resp,) = responses(ua.receive(edge_invite(extra="Require: 100rel\r\n"), EDGE, 0.0))
    assert resp.status == 420 and resp.headers.get("Unsupported") == "100rel"


def test_cseq_out_of_order_gets_500() -> None:
    """RFC 3261 §12.2.2: a lower CSeq than the last request of the dialog."""
    ua = UserAgent(settings_())
    call = Call(ua)
    call.confirm()
    call.request("INFO", 1.0)
    assert statuses(ua.receive(in_dialog("INFO", call.tag, 1), EDGE, 1.1)) == [500]


def test_malformed_requests_get_400_and_never_raise() -> None:
    ua = UserAgent(settings_())
    bad_length = edge_invite().replace(b"Content-Length: ", b"Content-Length: 9")
    assert statuses(ua.receive(bad_length, EDGE, 0.0)) == [400]
    bad_via = edge_invite().replace(b"SIP/2.0/UDP 127.0.0.1:5070", b"garbage")
    assert statuses(ua.receive(bad_via, EDGE, 0.0)) == [400]
    bad_from = edge_invite(call_id="z").replace(b"<sip:alice@192.0.2.10>", b"<mailto:a>")
    assert statuses(ua.receive(bad_from, EDGE, 0.0)) == [400]
    assert ua.receive(b"\x00\xffgarbage", EDGE, 0.0) == []
    assert ua.active_calls == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(edge_invite())), st.binary(max_size=8))
def test_any_corruption_of_an_invite_is_answered_or_dropped(cut: int, junk: bytes) -> None:
    ua = UserAgent(settings_())
    data = edge_invite(branch="z9hG4bKfuzz")
    for out in (ua.receive(data[:cut] + junk + data[cut:], EDGE, 0.0), ua.tick(100.0)):
        assert all(isinstance(o, UaOutput) for o in out)


# ------------------------------------------------------------------ UAC (originate)


def test_originate_answers_a_proxy_challenge_and_acks_the_2xx() -> None:
    """RFC 3261 §22.2: 407 -> ACK (same branch), INVITE again with Proxy-Authorization and CSeq
    + 1; §13.2.2.4: the 2xx is ACKed through the route set (reversed Record-Route)."""
    ua = UserAgent(settings_())
    trunk = ("192.0.2.50", 5060)
    number, out = ua.originate(
        target="sip:+15550100@192.0.2.50",
        destination=trunk,
        from_uri="sip:agent@127.0.0.1",
        offer=ANSWER,
        credentials=("agent", "secret"),
        now=0.0,
    )
    (invite,) = requests(out)
    assert out[0].destination == trunk  # type: ignore[attr-defined]
    assert invite.method == "INVITE" and invite.body == ANSWER and invite.cseq == (1, "INVITE")
    assert invite.from_().tag and invite.to().tag is None
    challenge = 'Digest realm="pbx", nonce="abc123", algorithm=MD5, qop="auth"'
    r407 = make_response(invite, 407, to_tag="pbx1", headers=[("Proxy-Authenticate", challenge)])
    out = ua.receive(r407.encode(), trunk, 0.1)
    ack, invite2 = requests(out)
    assert ack.method == "ACK" and ack.top_via().branch == invite.top_via().branch
    assert invite2.cseq == (2, "INVITE") and invite2.top_via().branch != invite.top_via().branch
    creds = DigestCredentials.parse(invite2.headers.get("Proxy-Authorization") or "")
    ha1 = compute_ha1("agent", "pbx", "secret", DigestAlgorithm.MD5)
    assert verify(creds, ha1=ha1, method="INVITE")
    assert ua.receive(make_response(invite2, 180, to_tag="b1").encode(), trunk, 0.2) == []
    ok = make_response(
        invite2,
        200,
        to_tag="b1",
        headers=[
            ("Record-Route", "<sip:192.0.2.60;lr>"),
            ("Record-Route", "<sip:192.0.2.50;lr>"),
            ("Contact", "<sip:pbx@192.0.2.70:5080>"),
        ],
    )
    ok.body = OFFER
    out = ua.receive(ok.encode(), trunk, 0.3)
    assert events(out, CallAnswered) == [CallAnswered(number, OFFER)]
    (send,) = [o for o in out if isinstance(o, Send)]
    ack2 = parse_message(send.data)
    assert isinstance(ack2, SipRequest) and ack2.method == "ACK" and ack2.cseq == (2, "ACK")
    assert ack2.uri == "sip:pbx@192.0.2.70:5080"
    assert ack2.headers.get_all("Route") == ["<sip:192.0.2.50;lr>", "<sip:192.0.2.60;lr>"]
    assert send.destination == ("192.0.2.50", 5060)
    # a retransmitted 2xx gets the same ACK again
    assert [o for o in ua.receive(ok.encode(), trunk, 0.8) if isinstance(o, Send)] == [send]
    (bye,) = requests(ua.hangup(number, "done", 5.0))
    assert bye.method == "BYE" and bye.to().tag == "b1" and bye.cseq == (3, "BYE")


def test_originate_gives_up_on_repeated_challenges_and_failures() -> None:
    ua = UserAgent(settings_())
    trunk = ("192.0.2.50", 5060)
    number, out = ua.originate(
        target="sip:x@192.0.2.50",
        destination=trunk,
        from_uri="sip:a@127.0.0.1",
        offer=ANSWER,
        credentials=("a", "wrong"),
        now=0.0,
    )
    challenge = [("WWW-Authenticate", 'Digest realm="r", nonce="n1"')]
    terminated: list[UaOutput] = []
    for i in range(4):
        invite = requests(out)[-1]
        out = ua.receive(
            make_response(invite, 401, to_tag=f"t{i}", headers=challenge).encode(), trunk, i
        )
        terminated += events(out, CallTerminated)
        if terminated:
            break
    assert terminated == [CallTerminated(number, "rejected", 401)]
    assert i == 2  # two answered challenges, the third gives up


def test_originate_hangup_before_any_response_cancels_after_the_first() -> None:
    """RFC 3261 §9.1: no CANCEL before a provisional response."""
    ua = UserAgent(settings_())
    trunk = ("192.0.2.50", 5060)
    number, out = ua.originate(
        target="sip:x@192.0.2.50", destination=trunk, from_uri="sip:a@127.0.0.1",
        offer=ANSWER, now=0.0,
    )  # fmt: skip
    (invite,) = requests(out)
    out = ua.hangup(number, "abandoned", 0.1)
    assert not sent(out) and events(out, CallTerminated)
    out = ua.receive(make_response(invite, 180, to_tag="r").encode(), trunk, 0.2)
    (cancel,) = requests(out)
    assert cancel.method == "CANCEL" and cancel.top_via().branch == invite.top_via().branch
    assert ua.receive(make_response(cancel, 200).encode(), trunk, 0.3) == []
    out = ua.receive(make_response(invite, 487, to_tag="r").encode(), trunk, 0.4)
    assert [r.method for r in requests(out)] == ["ACK"]


def test_originate_timeout_is_timer_b() -> None:
    ua = UserAgent(settings_())
    number, _ = ua.originate(
        target="sip:x@192.0.2.50", destination=("192.0.2.50", 5060),
        from_uri="sip:a@127.0.0.1", offer=ANSWER, now=0.0,
    )  # fmt: skip
    out = run_until(ua, 40.0)
    assert events(out, CallTerminated) == [CallTerminated(number, "timeout", 408)]
    assert len(requests(out)) == 6  # Timer A: 0.5, 1, 2, 4, 8, 16 s


# ------------------------------------------------------------------ dialog pieces


def _dialog(route_set: tuple[str, ...], target: str = CALLER_CONTACT) -> Dialog:
    return Dialog(
        call_id="c",
        local_party="<sip:us@127.0.0.1>;tag=a",
        remote_party="<sip:them@192.0.2.10>;tag=b",
        local_tag="a",
        remote_target=target,
        route_set=route_set,
        local_cseq=0,
        peer=EDGE,
        contact="<sip:127.0.0.1:5090>",
        user_agent="t",
    )


def test_strict_route_becomes_the_request_uri() -> None:
    """RFC 3261 §12.2.1.1: a first route without ``lr``: it is the Request-URI and the remote
    target goes last in Route."""
    dialog = _dialog(("<sip:192.0.2.1:5070>", "<sip:192.0.2.2;lr>"))
    request = dialog.request("BYE", branch="z9hG4bKx")
    assert request.uri == "sip:192.0.2.1:5070"
    assert request.headers.get_all("Route") == ["<sip:192.0.2.2;lr>", f"<{CALLER_CONTACT}>"]
    assert dialog.destination() == ("192.0.2.1", 5070)


def test_destination_by_name_falls_back_to_where_the_peer_sent_from() -> None:
    assert _dialog((), "sip:alice@pbx.example.com").destination() == EDGE
    assert _dialog(("<sip:[::1]:5070;lr>",)).destination() == ("::1", 5070)
    assert _dialog((), "sip:alice@192.0.2.10;maddr=192.0.2.99").destination() == (
        "192.0.2.99",
        5060,
    )


@pytest.mark.parametrize(
    ("headers", "mode", "expected"),
    [
        (
            "Session-Expires: 1800;refresher=uac\r\nSupported: timer",
            "optional",
            (1800, "uac", True),
        ),
        ("Session-Expires: 1800", "optional", (1800, "uas", False)),  # the UAC cannot refresh
        ("Session-Expires: 1800;refresher=uac", "optional", (1800, "uas", False)),
        ("Session-Expires: 1800\r\nSupported: timer", "optional", (1800, "uac", True)),
        (
            "Session-Expires: 1800;refresher=uas\r\nSupported: timer",
            "optional",
            (1800, "uas", True),
        ),
        ("Session-Expires: 60\r\nMin-SE: 120", "optional", 120),  # 422 with the larger Min-SE
        ("Supported: timer", "optional", None),
        ("Supported: timer", "always", (600, "uas", True)),
        ("Min-SE: 900", "always", (900, "uas", False)),
        ("Session-Expires: 1800", "off", None),
    ],
)
def test_session_timer_answers(headers: str, mode: str, expected: object) -> None:
    """RFC 4028 §9: the UAS's choice of interval and refresher."""
    raw = edge_invite(extra=headers + "\r\n", body=b"")
    request = parse_message(raw)
    assert isinstance(request, SipRequest)
    offer = read_session_timer(request.headers)
    got = answer_session_timer(offer, mode=mode, session_expires=600, min_se=90)
    assert got == expected


@pytest.mark.parametrize(
    ("ctype", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=#\r\nDuration=250\r\n", ("#", 250)),
        ("application/dtmf-relay", b"signal= a\nduration=x\n", ("A", 0)),
        ("application/dtmf-relay", b"Duration=100\r\n", None),
        ("application/dtmf-relay", b"Signal=10\r\n", None),
        ("application/dtmf", b" 9 ", ("9", 0)),
        ("application/dtmf", b"99", None),
    ],
)
def test_dtmf_info_bodies(ctype: str, body: bytes, expected: tuple[str, int] | None) -> None:
    assert parse_dtmf_info(ctype, body) == expected


def test_our_uac_calls_our_uas() -> None:
    """Both sides of this module in memory: originate, answer, session refresh by the UAS
    (UPDATE, answered by the UAC to where it came from), BYE from the UAC."""
    a_addr, b_addr = ("127.0.0.1", 5090), ("127.0.0.2", 5092)
    a = UserAgent(settings_())
    b = UserAgent(
        UaSettings(host="127.0.0.2", port=5092, session_timers="always", session_expires=90)
    )
    agents = {a_addr: a, b_addr: b}
    seen: list[tuple[str, UaOutput]] = []

    def pump(outputs: list[UaOutput], origin: tuple[str, int], now: float) -> None:
        queue = [(origin, o) for o in outputs]
        while queue:
            source, output = queue.pop(0)
            if isinstance(output, Send):
                peer = agents[output.destination]
                queue += [(output.destination, o) for o in peer.receive(output.data, source, now)]
            else:
                seen.append(("a" if source == a_addr else "b", output))

    number, out = a.originate(
        target="sip:+1555@127.0.0.2:5092", destination=b_addr,
        from_uri="sip:agent@127.0.0.1", offer=ANSWER, now=0.0,
    )  # fmt: skip
    pump(out, a_addr, 0.0)
    who, incoming = next((w, o) for w, o in seen if isinstance(o, IncomingCall))
    assert who == "b" and incoming.offer == ANSWER
    pump(b.answer(incoming.call, OFFER, 0.1), b_addr, 0.1)
    assert ("a", CallAnswered(number, OFFER)) in seen
    assert ("b", CallConfirmed(incoming.call)) in seen
    for now in (45.1, 70.0, 90.1, 120.0):  # b refreshes at half the interval, a answers
        pump(b.tick(now), b_addr, now)
        pump(a.tick(now), a_addr, now)  # a, the non-refresher, would BYE 60 s after a refresh
    assert a.active_calls == b.active_calls == 1
    pump(a.hangup(number, "done", 100.0), a_addr, 100.0)
    assert ("b", CallTerminated(incoming.call, "bye", 200)) in seen
    assert a.requests_in_flight == 0  # the BYE got its 200
