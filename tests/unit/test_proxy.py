"""The edge's call proxy, in memory: a caller UAC and a worker UAS exchange real SIP text through
:class:`CallProxy`; time is stepped by hand along :meth:`CallProxy.get_timer`.

The two user agents are test doubles of this unit's peers (the real ones, SIPp and pjsua2, are
exercised once the adapter is wired): they build requests and responses as text, parse what the
proxy sends them, and keep the dialog state a real UA keeps (RFC 3261 §12: route set, remote
target, tags, CSeq).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.edge.proxy import (
    AGENT_HEADER,
    CallAnswered,
    CallEnded,
    CallProxy,
    CallRouted,
    CallState,
    Endpoint,
    EndReason,
    ProxyEvent,
    Send,
)
from sipserver.sip.headers import NameAddr, Via
from sipserver.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
)

OUTSIDE = Endpoint("udp", "203.0.113.10", 5060)
INSIDE = Endpoint("udp", "127.0.0.1", 5070)
CALLER = Endpoint("udp", "198.51.100.7", 5062)
WORKER = Endpoint("udp", "127.0.0.1", 6001)
NUMBER = "+14155550100"
T0 = 1000.0
SDP = b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
RR_INSIDE = "<sip:127.0.0.1:5070;transport=udp;lr;r2=on>"
RR_OUTSIDE = "<sip:203.0.113.10:5060;transport=udp;lr;r2=on>"
_ids = itertools.count(1)

Message = SipRequest | SipResponse


def parse(data: bytes) -> Message:
    return parse_message(data)


def to(sends: list[Send], endpoint: Endpoint) -> list[Message]:
    """The messages of ``sends`` addressed to ``endpoint``, parsed."""
    return [parse(s.data) for s in sends if s.to == endpoint]


def only(sends: list[Send], endpoint: Endpoint) -> Message:
    """The single message of ``sends`` (all of them must go to ``endpoint``)."""
    assert [s.to for s in sends] == [endpoint], sends
    return parse(sends[0].data)


def request(message: Message) -> SipRequest:
    assert isinstance(message, SipRequest), message
    return message


def response(message: Message) -> SipResponse:
    assert isinstance(message, SipResponse), message
    return message


# ------------------------------------------------------------------ user agent test double


@dataclass
class UA:
    """A minimal SIP user agent: builds messages as text, keeps RFC 3261 §12 dialog state."""

    name: str
    address: Endpoint
    contact: str
    uri: str
    tag: str = field(default_factory=lambda: f"tag{next(_ids)}")
    cseq: int = 0
    call_id: str = ""
    local: str = ""  # From value for requests this UA sends in the dialog
    remote: str = ""  # To value for requests this UA sends in the dialog
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    invite: SipRequest | None = None  # the last INVITE this UA sent
    branches: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _via(self) -> str:
        branch = f"z9hG4bK{self.name}-{self.tag}-{next(self.branches)}"
        return f"SIP/2.0/UDP {self.address.hostport};branch={branch};rport"

    def _build(
        self,
        method: str,
        ruri: str,
        *,
        cseq: int,
        via: str | None = None,
        routes: list[str] | None = None,
        extra: list[str] | None = None,
        body: bytes = b"",
        max_forwards: int | None = 70,
    ) -> bytes:
        lines = [f"{method} {ruri} SIP/2.0", f"Via: {via or self._via()}"]
        if max_forwards is not None:
            lines.append(f"Max-Forwards: {max_forwards}")
        lines += [f"Route: {r}" for r in routes or []]
        lines += [f"From: {self.local}", f"To: {self.remote}", f"Call-ID: {self.call_id}"]
        lines += [f"CSeq: {cseq} {method}", f"Contact: <{self.contact}>", *(extra or [])]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    # ---- as caller (UAC of the initial INVITE)

    def make_invite(
        self,
        ruri: str = f"sip:{NUMBER}@203.0.113.10",
        *,
        extra: list[str] | None = None,
        max_forwards: int | None = 70,
    ) -> bytes:
        self.call_id = f"call-{next(_ids)}@{self.address.host}"
        self.local = f'"{self.name}" <{self.uri}>;tag={self.tag}'
        self.remote = f"<{ruri}>"
        self.cseq = 1
        data = self._build("INVITE", ruri, cseq=1, extra=extra, body=SDP, max_forwards=max_forwards)
        self.invite = request(parse(data))
        return data

    def cancel(self) -> bytes:
        assert self.invite is not None
        via = self.invite.headers.get("Via")
        return self._build("CANCEL", self.invite.uri, cseq=self.invite.cseq[0], via=via)

    def ack_failure(self, final: SipResponse) -> bytes:
        """ACK for a non-2xx final (RFC 3261 §17.1.1.3): same branch, the response's To."""
        assert self.invite is not None
        remote, self.remote = self.remote, final.headers.get("To") or ""
        data = self._build(
            "ACK", self.invite.uri, cseq=self.invite.cseq[0], via=self.invite.headers.get("Via")
        )
        self.remote = remote
        return data

    def on_answer(self, ok: SipResponse) -> None:
        """UAC dialog state from a 2xx (RFC 3261 §12.1.2): route set = reversed Record-Route."""
        self.route_set = list(reversed(ok.headers.get_all("Record-Route")))
        self.remote_target = str(NameAddr.parse(ok.headers.get_all("Contact")[0]).uri)
        self.remote = ok.headers.get("To") or ""

    def ack(self, cseq: int | None = None) -> bytes:
        """ACK for a 2xx: a new transaction routed by the route set (RFC 3261 §13.2.2.4)."""
        return self._build("ACK", self.remote_target, cseq=cseq or self.cseq, routes=self.route_set)

    # ---- as worker (UAS of the initial INVITE)

    def on_invite(self, invite: SipRequest) -> None:
        """UAS dialog state (RFC 3261 §12.1.1): route set = Record-Route in order."""
        self.call_id = invite.call_id
        self.route_set = invite.headers.get_all("Record-Route")
        self.remote_target = str(NameAddr.parse(invite.headers.get_all("Contact")[0]).uri)
        self.remote = invite.headers.get("From") or ""
        self.local = f"{invite.headers.get('To')};tag={self.tag}"

    def answer(self, req: SipRequest, status: int, *, body: bytes = b"") -> bytes:
        """Response to ``req``: Record-Route copied for 18x/2xx (RFC 3261 §12.1.1)."""
        headers: list[tuple[str, str]] = []
        if 100 < status < 300 and req.method == "INVITE":
            headers += [("Record-Route", r) for r in req.headers.get_all("Record-Route")]
            headers.append(("Contact", f"<{self.contact}>"))
        tag = None if status == 100 or "tag=" in (req.headers.get("To") or "") else self.tag
        resp = make_response(req, status, to_tag=tag, headers=headers)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        return resp.encode()

    # ---- either side, in the dialog

    def in_dialog(
        self,
        method: str,
        *,
        body: bytes = b"",
        max_forwards: int = 70,
        extra: list[str] | None = None,
    ) -> bytes:
        self.cseq += 1
        data = self._build(
            method,
            self.remote_target,
            cseq=self.cseq,
            routes=self.route_set,
            body=body,
            max_forwards=max_forwards,
            extra=extra,
        )
        if method == "INVITE":
            self.invite = request(parse(data))
        return data


def caller_ua(address: Endpoint = CALLER, contact_host: str | None = None) -> UA:
    host = contact_host or f"{address.host}:{address.port}"
    return UA("alice", address, f"sip:alice@{host}", "sip:alice@example.net")


def worker_ua() -> UA:
    return UA("worker", WORKER, f"sip:{NUMBER}@127.0.0.1:6001", f"sip:{NUMBER}@127.0.0.1")


# ------------------------------------------------------------------ harness


@dataclass
class Net:
    """The proxy with the time under the test's control."""

    proxy: CallProxy = field(
        default_factory=lambda: CallProxy(outside=OUTSIDE, inside=INSIDE, instance="t")
    )
    now: float = T0

    def invite(
        self,
        data: bytes,
        source: Endpoint = CALLER,
        worker_id: str = "w1",
        worker: Endpoint = WORKER,
    ) -> list[Send]:
        req = request(parse(data))
        assert not self.proxy.owns(req)
        return self.proxy.route_invite(
            req, source, worker_id=worker_id, worker=worker, agent="support", now=self.now
        )

    def deliver(self, data: bytes, source: Endpoint) -> list[Send]:
        message = parse(data)
        assert self.proxy.owns(message), message
        if isinstance(message, SipResponse):
            return self.proxy.handle_response(message, source, now=self.now)
        return self.proxy.handle_request(message, source, now=self.now)

    def advance(self, until: float) -> list[Send]:
        """Run every timer due up to ``until`` (absolute), in order."""
        out: list[Send] = []
        while (deadline := self.proxy.get_timer()) is not None and deadline <= until:
            self.now = deadline
            out += self.proxy.handle_timer(now=self.now)
        self.now = until
        return out

    def events(self) -> list[ProxyEvent]:
        out = []
        while (event := self.proxy.next_event()) is not None:
            out.append(event)
        return out

    def assert_empty(self) -> None:
        self.advance(self.now + 300)
        assert self.proxy.sizes() == {
            "calls": 0,
            "server_transactions": 0,
            "client_transactions": 0,
            "timers": 0,
        }
        assert self.proxy.get_timer() is None
        assert self.proxy.active_calls() == 0


def establish(net: Net, caller: UA, worker: UA, source: Endpoint = CALLER) -> SipRequest:
    """INVITE -> 100 -> 180 -> 200 -> ACK; returns the INVITE the worker received."""
    sends = net.invite(caller.make_invite(), source)
    invite = request(to(sends, WORKER)[0])
    worker.on_invite(invite)
    assert net.deliver(worker.answer(invite, 180), WORKER)
    ok = response(only(net.deliver(worker.answer(invite, 200, body=SDP), WORKER), source))
    caller.on_answer(ok)
    only(net.deliver(caller.ack(), source), WORKER)
    return invite


# ------------------------------------------------------------------ tests


def test_basic_call_header_by_header() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    data = caller.make_invite()
    sends = net.invite(data)

    # The INVITE goes to the worker first (the call's set-up waits for it), then, in the same
    # step, RFC 3261 §16.2's 100 Trying to the source, Via as received, no To tag.
    assert [s.to for s in sends] == [WORKER, CALLER]
    trying = response(parse(sends[1].data))
    assert trying.status == 100
    assert trying.headers.get_all("Via") == caller.invite.headers.get_all("Via")  # type: ignore[union-attr]
    assert trying.to().tag is None

    # RFC 3261 §16.6: the forwarded INVITE.
    invite = request(parse(sends[0].data))
    assert invite.uri == f"sip:{NUMBER}@127.0.0.1:6001"
    vias = invite.vias()
    assert len(vias) == 2
    assert (vias[0].host, vias[0].port, vias[0].transport) == ("127.0.0.1", 5070, "UDP")
    assert vias[0].branch == "z9hG4bK-spt-1"
    assert vias[1].branch == f"z9hG4bKalice-{caller.tag}-1"
    assert (vias[1].received, vias[1].rport) == ("198.51.100.7", 5062)
    assert invite.max_forwards == 69
    assert invite.headers.get_all("Record-Route") == [RR_INSIDE, RR_OUTSIDE]
    assert "Route" not in invite.headers
    assert invite.headers.get(AGENT_HEADER) == "support"
    assert invite.body == SDP
    assert invite.call_id == caller.call_id
    (routed,) = net.events()
    assert isinstance(routed, CallRouted)
    assert (routed.agent, routed.worker_id, routed.caller) == ("support", "w1", CALLER)
    assert net.proxy.calls_by_worker() == {"w1": 1}
    worker.on_invite(invite)

    # 100 from the worker is not relayed (RFC 3261 §16.7 step 5).
    assert net.deliver(worker.answer(invite, 100), WORKER) == []
    ringing = response(only(net.deliver(worker.answer(invite, 180), WORKER), CALLER))
    assert ringing.status == 180
    assert [str(v) for v in ringing.vias()] == [str(vias[1])]
    assert ringing.headers.get_all("Record-Route") == [RR_INSIDE, RR_OUTSIDE]
    assert ringing.to().tag == worker.tag

    net.now += 2
    ok = response(only(net.deliver(worker.answer(invite, 200, body=SDP), WORKER), CALLER))
    assert ok.status == 200 and ok.body == SDP
    assert len(ok.vias()) == 1
    (answered,) = net.events()
    assert isinstance(answered, CallAnswered) and answered.setup_time == 2
    info = net.proxy.get_call(caller.call_id)
    assert info is not None and info.state is CallState.CONFIRMED

    # ACK for 2xx: the caller's route set is the Record-Route reversed; both edge entries go.
    caller.on_answer(ok)
    assert caller.route_set == [RR_OUTSIDE, RR_INSIDE]
    ack_data = caller.ack()
    ack = request(only(net.deliver(ack_data, CALLER), WORKER))
    assert ack.uri == worker.contact
    assert "Route" not in ack.headers
    ack_vias = ack.vias()
    assert ack_vias[0].host == "127.0.0.1" and ack_vias[0].branch.startswith("z9hG4bK-spt-a")  # type: ignore[union-attr]
    assert ack_vias[1].branch == request(parse(ack_data)).top_via().branch
    # A retransmitted ACK is forwarded with the same branch (stateless, RFC 3261 §16.11).
    again = request(only(net.deliver(ack_data, CALLER), WORKER))
    assert again.top_via().branch == ack_vias[0].branch

    # BYE from the caller, 200 from the worker.
    net.now += 30
    bye = request(only(net.deliver(caller.in_dialog("BYE"), CALLER), WORKER))
    assert bye.uri == worker.contact and "Route" not in bye.headers
    assert bye.max_forwards == 69
    assert bye.top_via().host == "127.0.0.1"
    done = response(only(net.deliver(worker.answer(bye, 200), WORKER), CALLER))
    assert done.status == 200 and done.cseq == (2, "BYE")
    (ended,) = net.events()
    assert isinstance(ended, CallEnded)
    assert (ended.reason, ended.status, ended.duration) == (EndReason.CALLER_BYE, 200, 30)
    assert net.proxy.active_calls() == 0
    assert net.proxy.calls_by_worker() == {}
    net.assert_empty()


def test_bye_from_worker() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()
    # The worker's route set is the Record-Route in order: inside first.
    assert worker.route_set == [RR_INSIDE, RR_OUTSIDE]
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), CALLER))
    assert bye.uri == caller.contact
    assert "Route" not in bye.headers
    top = bye.top_via()
    assert (top.host, top.port) == ("203.0.113.10", 5060)
    assert bye.vias()[1].received == "127.0.0.1"
    ok = response(only(net.deliver(caller.answer(bye, 200), CALLER), WORKER))
    assert ok.status == 200 and len(ok.vias()) == 1
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and ended.reason is EndReason.WORKER_BYE
    net.assert_empty()


def test_worker_bye_for_an_unrefreshed_session_is_session_expired() -> None:
    # pjsip's BYE when no RFC 4028 refresh came; the same Reason from the caller is its BYE.
    reason = 'Reason: SIP ;cause=408 ;text="No session refresh received."'
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()
    bye = request(only(net.deliver(worker.in_dialog("BYE", extra=[reason]), WORKER), CALLER))
    assert bye.headers.get("Reason") == reason.split(": ", 1)[1]
    only(net.deliver(caller.answer(bye, 200), CALLER), WORKER)
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and ended.reason is EndReason.SESSION_EXPIRED

    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()
    bye = request(only(net.deliver(caller.in_dialog("BYE", extra=[reason]), CALLER), WORKER))
    only(net.deliver(worker.answer(bye, 200), WORKER), CALLER)
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and ended.reason is EndReason.CALLER_BYE


def test_cancel_before_answer() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    worker.on_invite(invite)
    net.deliver(worker.answer(invite, 100), WORKER)
    net.deliver(worker.answer(invite, 180), WORKER)

    sends = net.deliver(caller.cancel(), CALLER)
    assert [s.to for s in sends] == [CALLER, WORKER]
    cancel_ok = response(parse(sends[0].data))
    assert (cancel_ok.status, cancel_ok.cseq) == (200, (1, "CANCEL"))
    cancel = request(parse(sends[1].data))
    # RFC 3261 §9.1: same Request-URI, Call-ID, From, To, CSeq number, and the same branch.
    assert cancel.uri == invite.uri
    assert cancel.top_via().branch == invite.top_via().branch
    assert cancel.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
    assert cancel.cseq == (1, "CANCEL")
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    # A retransmitted CANCEL gets the 200 again and is not sent on.
    assert only(net.deliver(caller.cancel(), CALLER), CALLER).status == 200  # type: ignore[union-attr]

    assert net.deliver(worker.answer(cancel, 200), WORKER) == []
    sends = net.deliver(worker.answer(invite, 487), WORKER)
    assert [s.to for s in sends] == [WORKER, CALLER]
    ack = request(parse(sends[0].data))
    # RFC 3261 §17.1.1.3: hop-by-hop ACK: the INVITE's top Via (branch), the 487's To.
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
    assert ack.to().tag == worker.tag and ack.cseq == (1, "ACK")
    terminated = response(parse(sends[1].data))
    assert terminated.status == 487 and len(terminated.vias()) == 1
    assert net.deliver(caller.ack_failure(terminated), CALLER) == []
    events = net.events()
    assert isinstance(events[-1], CallEnded)
    assert (events[-1].reason, events[-1].status) == (EndReason.CANCELLED, 487)
    net.assert_empty()


def test_cancel_before_any_provisional_waits_for_one() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    # RFC 3261 §9.1: no CANCEL until a provisional response arrived.
    assert only(net.deliver(caller.cancel(), CALLER), CALLER).status == 200  # type: ignore[union-attr]
    cancel = request(only(net.deliver(worker.answer(invite, 100), WORKER), WORKER))
    assert cancel.method == "CANCEL" and cancel.top_via().branch == invite.top_via().branch


def test_rejected_call_timer_g_until_ack() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    worker.on_invite(invite)
    sends = net.deliver(worker.answer(invite, 486), WORKER)
    assert [s.to for s in sends] == [WORKER, CALLER]
    ack = request(parse(sends[0].data))
    assert ack.method == "ACK" and ack.top_via().branch == invite.top_via().branch
    busy_data = sends[1].data
    busy = response(parse(busy_data))
    assert busy.status == 486
    (_, ended) = net.events()
    assert isinstance(ended, CallEnded) and (ended.reason, ended.status) == (
        EndReason.REJECTED,
        486,
    )

    # RFC 3261 §17.2.1 Timer G: T1, 2*T1, 4*T1, then capped at T2 (4 s).
    times = []
    for _ in range(5):
        deadline = net.proxy.get_timer()
        assert deadline is not None
        resent = net.advance(deadline)
        if resent and resent[0].to == CALLER:
            assert resent == [Send(busy_data, CALLER)]
            times.append(deadline - T0)
    assert times[:4] == [0.5, 1.5, 3.5, 7.5]
    # The worker retransmits its 486: ACKed again (Timer D), not relayed.
    again = net.deliver(worker.answer(invite, 486), WORKER)
    assert again == [Send(sends[0].data, WORKER)]
    # The caller's ACK stops Timer G and is absorbed.
    assert net.deliver(caller.ack_failure(busy), CALLER) == []
    assert net.deliver(caller.ack_failure(busy), CALLER) == []
    assert all(s.to != CALLER for s in net.advance(net.now + 40))
    net.assert_empty()


def test_timer_h_without_ack_ends_the_transaction() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    net.deliver(worker.answer(invite, 603), WORKER)
    resent = net.advance(T0 + 31.9)
    # 0.5 1.5 3.5 7.5, then every 4 s (T2): 11.5 ... 31.5
    assert len([s for s in resent if s.to == CALLER]) == 10
    net.advance(T0 + 32.1)
    assert net.proxy.sizes()["server_transactions"] == 0
    net.assert_empty()


def test_invite_retransmission_absorbed() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    data = caller.make_invite()
    first = net.invite(data)
    invite = request(to(first, WORKER)[0])
    again = net.deliver(data, CALLER)
    assert again == [first[1]]  # the 100 Trying again; nothing to the worker
    worker.on_invite(invite)
    ringing = net.deliver(worker.answer(invite, 180), WORKER)
    assert net.deliver(data, CALLER) == ringing  # the last provisional response
    ok = response(only(net.deliver(worker.answer(invite, 200), WORKER), CALLER))
    # RFC 6026 §7.1: after the 2xx a retransmitted INVITE is absorbed...
    assert net.deliver(data, CALLER) == []
    # ... and 2xx retransmissions from the worker are relayed.
    assert only(net.deliver(worker.answer(invite, 200), WORKER), CALLER).status == 200  # type: ignore[union-attr]
    caller.on_answer(ok)


def test_timer_b_timeout_sends_408() -> None:
    net, caller = Net(), caller_ua()
    sends = net.invite(caller.make_invite())
    invite_data = sends[0].data
    net.events()
    retransmits = net.advance(T0 + 31.9)
    # RFC 3261 §17.1.1.2 Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    assert retransmits == [Send(invite_data, WORKER)] * 6
    timeout = net.advance(T0 + 32.0)
    final = response(only(timeout, CALLER))
    assert final.status == 408 and final.to().tag is not None
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and (ended.reason, ended.status) == (
        EndReason.TIMEOUT,
        408,
    )
    assert net.deliver(caller.ack_failure(final), CALLER) == []
    net.assert_empty()


def test_timer_c_cancels_a_call_ringing_too_long() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    net.deliver(worker.answer(invite, 180), WORKER)
    sends = net.advance(T0 + 181.1)
    cancel = request(only(sends, WORKER))
    assert cancel.method == "CANCEL"
    sends = net.deliver(worker.answer(invite, 487), WORKER)
    assert response(to(sends, CALLER)[0]).status == 487


def test_reinvite_both_ways() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()

    # Caller puts the agent on hold.
    hold = SDP + b"a=sendonly\r\n"
    sends = net.deliver(caller.in_dialog("INVITE", body=hold), CALLER)
    assert [s.to for s in sends] == [CALLER, WORKER]
    assert response(parse(sends[0].data)).status == 100
    reinvite = request(parse(sends[1].data))
    assert reinvite.uri == worker.contact and reinvite.body == hold
    assert "Route" not in reinvite.headers and "Record-Route" not in reinvite.headers
    ok = response(only(net.deliver(worker.answer(reinvite, 200, body=SDP), WORKER), CALLER))
    assert ok.cseq == (2, "INVITE")
    assert request(only(net.deliver(caller.ack(), CALLER), WORKER)).cseq == (2, "ACK")

    # The worker re-INVITEs (resume): to the caller's address, 100 back to the worker.
    sends = net.deliver(worker.in_dialog("INVITE", body=SDP), WORKER)
    assert [s.to for s in sends] == [WORKER, CALLER]
    reinvite = request(parse(sends[1].data))
    assert reinvite.uri == caller.contact and reinvite.top_via().host == "203.0.113.10"
    ok = response(only(net.deliver(caller.answer(reinvite, 200, body=SDP), CALLER), WORKER))
    assert ok.status == 200 and len(ok.vias()) == 1
    ack = request(only(net.deliver(worker.ack(cseq=worker.cseq), WORKER), CALLER))
    assert ack.uri == caller.contact
    info = net.proxy.get_call(caller.call_id)
    assert info is not None and info.state is CallState.CONFIRMED
    assert net.events() == []


def test_failed_reinvite_is_acked_hop_by_hop_and_call_continues() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()
    sends = net.deliver(caller.in_dialog("INVITE", body=SDP), CALLER)
    reinvite = request(parse(sends[1].data))
    sends = net.deliver(worker.answer(reinvite, 491), WORKER)
    assert [s.to for s in sends] == [WORKER, CALLER]
    pending = response(parse(sends[1].data))
    assert net.deliver(caller.ack_failure(pending), CALLER) == []
    assert net.events() == []
    assert net.proxy.active_calls() == 1


def test_info_and_update_relayed() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    info = request(only(net.deliver(caller.in_dialog("INFO"), CALLER), WORKER))
    assert response(only(net.deliver(worker.answer(info, 200), WORKER), CALLER)).status == 200
    update = request(only(net.deliver(worker.in_dialog("UPDATE"), WORKER), CALLER))
    assert response(only(net.deliver(caller.answer(update, 200), CALLER), WORKER)).status == 200


def test_max_forwards_zero() -> None:
    net, caller = Net(), caller_ua()
    reply = response(only(net.invite(caller.make_invite(max_forwards=0)), CALLER))
    assert reply.status == 483
    assert net.proxy.sizes()["calls"] == 0 and net.events() == []
    # In a dialog too.
    net2, caller2, worker2 = Net(), caller_ua(), worker_ua()
    establish(net2, caller2, worker2)
    reply = response(only(net2.deliver(caller2.in_dialog("INFO", max_forwards=0), CALLER), CALLER))
    assert reply.status == 483


def test_missing_max_forwards_gets_70() -> None:
    net, caller = Net(), caller_ua()
    invite = request(to(net.invite(caller.make_invite(max_forwards=None)), WORKER)[0])
    assert invite.max_forwards == 70


def test_nat_caller_requests_go_to_observed_source() -> None:
    # The caller's Contact names a private address; its INVITE came from the NAT's public one.
    observed = Endpoint("udp", "198.51.100.99", 40123)
    net, worker = Net(), worker_ua()
    caller = caller_ua(address=CALLER, contact_host="192.168.1.20:5060")
    establish(net, caller, worker, source=observed)
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), observed))
    assert bye.uri == "sip:alice@192.168.1.20:5060"  # the Request-URI stays the remote target
    ok = response(only(net.deliver(caller.answer(bye, 200), observed), WORKER))
    assert ok.status == 200
    net.assert_empty()


def test_terminate_calls_of_worker() -> None:
    net = Net()
    # Call 1: answered on w1, reached the edge through a record-routing upstream proxy.
    caller1, worker1 = caller_ua(), worker_ua()
    upstream = "<sip:192.0.2.1;lr>"
    sends = net.invite(caller1.make_invite(extra=[f"Record-Route: {upstream}"]))
    invite1 = request(to(sends, WORKER)[0])
    assert invite1.headers.get_all("Record-Route") == [RR_INSIDE, RR_OUTSIDE, upstream]
    worker1.on_invite(invite1)
    ok = response(only(net.deliver(worker1.answer(invite1, 200), WORKER), CALLER))
    caller1.on_answer(ok)
    net.deliver(caller1.ack(), CALLER)
    # The worker re-INVITEd once: its CSeq is 1 now.
    reinvite = request(to(net.deliver(worker1.in_dialog("INVITE", body=SDP), WORKER), CALLER)[0])
    net.deliver(caller1.answer(reinvite, 200), CALLER)
    # Call 2: ringing on w1. Call 3: on w2.
    caller2 = caller_ua(Endpoint("udp", "198.51.100.8", 5060))
    invite2 = request(to(net.invite(caller2.make_invite(), caller2.address), WORKER)[0])
    net.deliver(worker_ua().answer(invite2, 180), WORKER)
    caller3 = caller_ua(Endpoint("udp", "198.51.100.9", 5060))
    worker3 = Endpoint("udp", "127.0.0.1", 6002)
    net.invite(caller3.make_invite(), caller3.address, worker_id="w2", worker=worker3)
    net.events()
    assert net.proxy.calls_by_worker() == {"w1": 2, "w2": 1}

    sends = net.proxy.terminate_calls_of_worker("w1", now=net.now)
    bye = request(only([s for s in sends if s.to == CALLER], CALLER))
    # RFC 3261 §12.2.1.1 from the worker's side of the dialog.
    assert bye.method == "BYE"
    assert bye.uri == caller1.contact
    assert bye.headers.get_all("Route") == [upstream]
    assert bye.from_().tag == worker1.tag and bye.to().tag == caller1.tag
    assert bye.from_().uri == NameAddr.parse(invite1.headers.get("To") or "").uri
    assert bye.cseq == (2, "BYE") and bye.call_id == caller1.call_id
    assert bye.top_via().host == "203.0.113.10"
    rejected = response(only([s for s in sends if s.to == caller2.address], caller2.address))
    assert rejected.status == 500
    assert len(sends) == 2
    ended = {e.call_id: e for e in net.events() if isinstance(e, CallEnded)}
    assert {e.reason for e in ended.values()} == {EndReason.WORKER_LOST}
    assert set(ended) == {caller1.call_id, caller2.call_id}
    assert net.proxy.calls_by_worker() == {"w2": 1}
    # The caller answers the BYE; the edge absorbs it. Nothing is retransmitted to the worker.
    assert net.deliver(caller1.answer(bye, 200), CALLER) == []
    assert all(s.to != WORKER for s in net.advance(net.now + 1))


def test_new_outside_host_applies_to_new_calls_and_old_dialogs_keep_working() -> None:
    """A reload that changes server.public_host: new calls record-route the new address, a
    dialog set up before still routes through its Route entries naming the old one."""
    net, old_caller, old_worker = Net(), caller_ua(), worker_ua()
    establish(net, old_caller, old_worker)
    net.events()
    net.proxy.set_outside_host("sip2.example.com")

    new_caller = caller_ua(Endpoint("udp", "198.51.100.8", 5062))
    new_worker = worker_ua()
    invite = establish(net, new_caller, new_worker, Endpoint("udp", "198.51.100.8", 5062))
    new_rr = "<sip:sip2.example.com:5060;transport=udp;lr;r2=on>"
    assert invite.headers.get_all("Record-Route") == [RR_INSIDE, new_rr]
    assert new_caller.route_set == [new_rr, RR_INSIDE]
    # Towards callers the edge's Via names the new host.
    bye = request(only(net.deliver(new_worker.in_dialog("BYE"), WORKER), new_caller.address))
    assert bye.top_via().host == "sip2.example.com"

    # The old caller's BYE carries Route: <old outside>, <inside>: both still the edge's own.
    assert old_caller.route_set == [RR_OUTSIDE, RR_INSIDE]
    relayed = request(only(net.deliver(old_caller.in_dialog("BYE"), CALLER), WORKER))
    assert relayed.method == "BYE" and "Route" not in relayed.headers


def test_single_record_route_when_addresses_are_equal() -> None:
    net = Net(proxy=CallProxy(outside=OUTSIDE, inside=OUTSIDE, instance="t"))
    caller, worker = caller_ua(), worker_ua()
    invite = establish(net, caller, worker)
    assert invite.headers.get_all("Record-Route") == ["<sip:203.0.113.10:5060;transport=udp;lr>"]
    assert request(only(net.deliver(caller.in_dialog("BYE"), CALLER), WORKER)).method == "BYE"


def test_owns_and_strays() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    stranger = caller_ua(Endpoint("udp", "198.51.100.50", 5060))
    assert not net.proxy.owns(request(parse(stranger.make_invite())))
    # A REGISTER that happens to reuse a call's Call-ID stays the router's.
    register = caller.in_dialog("INFO").replace(b"INFO", b"REGISTER")
    assert not net.proxy.owns(request(parse(register)))
    stray = make_response(request(parse(stranger.make_invite())), 200, to_tag="x").encode()
    assert not net.proxy.owns(response(parse(stray)))
    # An in-dialog request for an unknown Call-ID answers 481.
    stranger.remote = f"{stranger.remote};tag=gone"
    stranger.remote_target = "sip:nobody@127.0.0.1:6001"
    reply = net.proxy.handle_request(request(parse(stranger.in_dialog("BYE"))), CALLER, now=net.now)
    assert response(only(reply, CALLER)).status == 481


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_reliable_caller_has_no_retransmissions(transport: str) -> None:
    source = Endpoint(transport, "198.51.100.7", 50000)
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite(), source), WORKER)[0])
    # The outside Record-Route names the caller's transport (RFC 5658).
    assert invite.headers.get_all("Record-Route") == [
        RR_INSIDE,
        f"<sip:203.0.113.10:5060;transport={transport};lr;r2=on>",
    ]
    sends = net.deliver(worker.answer(invite, 486), WORKER)
    busy = response(to(sends, source)[0])
    # No Timer G towards a reliable transport; Timer H still bounds the wait for the ACK.
    assert all(s.to != source for s in net.advance(T0 + 10))
    assert net.deliver(caller.ack_failure(busy), source) == []
    net.assert_empty()


def test_via_helper_roundtrip() -> None:
    # The received/rport the edge sets on the sender's Via parse back.
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport")
    assert via.with_params(received="198.51.100.7", rport=5062).rport == 5062


def test_worker_503_becomes_500() -> None:
    # RFC 3261 §16.7 step 6: a 503 is not forwarded upstream.
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    sends = net.deliver(worker.answer(invite, 503), WORKER)
    relayed = response(to(sends, CALLER)[0])
    assert relayed.status == 500
    net.deliver(caller.ack_failure(relayed), CALLER)
    net.assert_empty()


def test_late_2xx_retransmission_is_forwarded_statelessly() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    worker.on_invite(invite)
    ok_data = worker.answer(invite, 200)
    only(net.deliver(ok_data, WORKER), CALLER)
    net.advance(net.now + 40)  # Timers L and M are over; the call goes on
    assert net.proxy.sizes()["client_transactions"] == 0
    assert response(only(net.deliver(ok_data, WORKER), CALLER)).status == 200


def test_spoofed_worker_request_from_outside_is_refused() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    # Someone outside sends a BYE that claims to come from the worker's side of the dialog.
    mallory = UA("mallory", Endpoint("udp", "192.0.2.66", 5060), "sip:m@192.0.2.66", "sip:m@x")
    mallory.call_id, mallory.local, mallory.remote = worker.call_id, worker.local, worker.remote
    mallory.remote_target = caller.contact
    mallory.route_set = [RR_OUTSIDE]
    reply = net.deliver(mallory.in_dialog("BYE"), mallory.address)
    assert response(only(reply, mallory.address)).status == 481
    assert net.proxy.active_calls() == 1


def test_bye_retransmission_and_timeout() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    net.events()
    bye_data = caller.in_dialog("BYE")
    bye = request(only(net.deliver(bye_data, CALLER), WORKER))
    # Retransmitted by the caller before any answer: absorbed (the edge retransmits itself).
    assert net.deliver(bye_data, CALLER) == []
    # RFC 3261 §17.1.2.2 Timer E: 0.5, 1.5, 3.5, 7.5, then every T2.
    sends = net.advance(net.now + 31.9)
    assert sends[:4] == [Send(sends[0].data, WORKER)] * 4
    assert request(parse(sends[0].data)).top_via().branch == bye.top_via().branch
    # Timer F: no 408 towards the caller (RFC 4320), the call ends.
    assert net.advance(net.now + 0.2) == []
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and ended.reason is EndReason.TIMEOUT
    net.assert_empty()


def test_bye_answered_retransmission_gets_the_200_again() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    bye_data = caller.in_dialog("BYE")
    bye = request(only(net.deliver(bye_data, CALLER), WORKER))
    ok = net.deliver(worker.answer(bye, 200), WORKER)
    assert net.deliver(bye_data, CALLER) == ok
    net.assert_empty()


def test_cancel_after_answer_and_unknown_cancel() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    # RFC 3261 §9.2: a CANCEL of a completed INVITE is answered 200 and has no effect.
    assert response(only(net.deliver(caller.cancel(), CALLER), CALLER)).status == 200
    assert net.proxy.active_calls() == 1
    stranger = caller_ua(Endpoint("udp", "198.51.100.50", 5060))
    stranger.make_invite()
    cancel = request(parse(stranger.cancel()))
    assert not net.proxy.owns(cancel)
    reply = net.proxy.handle_request(cancel, stranger.address, now=net.now)
    assert response(only(reply, stranger.address)).status == 481


def test_tcp_caller_full_call() -> None:
    source = Endpoint("tcp", "198.51.100.7", 50000)
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker, source=source)
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), source))
    assert bye.top_via().transport == "TCP"
    only(net.deliver(caller.answer(bye, 200), source), WORKER)
    net.assert_empty()


def test_malformed_in_dialog_request_gets_400() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    # A target refresh whose Contact cannot be parsed.
    data = caller.in_dialog("INVITE", body=SDP).replace(b"Contact: <", b"Contact: <<", 1)
    reply = net.deliver(data, CALLER)
    assert response(only(reply, CALLER)).status == 400
    assert net.proxy.active_calls() == 1


def test_timer_c_without_487_ends_with_408() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    net.deliver(worker.answer(invite, 180), WORKER)
    net.events()
    # Each 18x resets Timer C (RFC 3261 §16.7 step 2).
    net.advance(T0 + 100)
    net.deliver(worker.answer(invite, 183), WORKER)
    assert net.advance(T0 + 280.9) == []
    assert request(only(net.advance(T0 + 281), WORKER)).method == "CANCEL"
    # The worker never answers the CANCEL nor the INVITE: 408 after 64*T1.
    sends = net.advance(T0 + 281 + 32)
    final = response(to(sends, CALLER)[0])
    assert final.status == 408
    (ended,) = net.events()
    assert isinstance(ended, CallEnded) and ended.reason is EndReason.TIMEOUT
    net.deliver(caller.ack_failure(final), CALLER)
    net.assert_empty()


def test_worker_death_answers_requests_in_flight() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    only(net.deliver(caller.in_dialog("BYE"), CALLER), WORKER)  # the worker never answers
    sends = net.proxy.terminate_calls_of_worker("w1", now=net.now)
    reply = response(only(sends, CALLER))
    assert (reply.status, reply.cseq) == (200, (2, "BYE"))
    assert net.proxy.active_calls() == 0
    assert all(s.to != WORKER for s in net.advance(net.now + 60))
    net.assert_empty()


def test_prack_and_early_update_follow_the_early_dialog() -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    invite = request(to(net.invite(caller.make_invite()), WORKER)[0])
    worker.on_invite(invite)
    progress = response(only(net.deliver(worker.answer(invite, 183), WORKER), CALLER))
    caller.on_answer(progress)  # early dialog: route set and target from the 183
    prack = request(only(net.deliver(caller.in_dialog("PRACK"), CALLER), WORKER))
    assert prack.uri == worker.contact and "Route" not in prack.headers
    assert response(only(net.deliver(worker.answer(prack, 200), WORKER), CALLER)).status == 200
    update = request(only(net.deliver(worker.in_dialog("UPDATE"), WORKER), CALLER))
    assert update.uri == caller.contact
    info = net.proxy.get_call(caller.call_id)
    assert info is not None and info.state is CallState.EARLY


def test_ipv6_caller_and_edge() -> None:
    outside = Endpoint("udp", "2001:db8::10", 5060)
    source = Endpoint("udp", "2001:db8::7", 5062)
    net = Net(proxy=CallProxy(outside=outside, inside=INSIDE, instance="t"))
    caller = UA("alice", source, "sip:alice@[2001:db8::7]:5062", "sip:alice@example.net")
    worker = worker_ua()
    invite = establish(net, caller, worker, source=source)
    assert invite.headers.get_all("Record-Route")[1] == (
        "<sip:[2001:db8::10]:5060;transport=udp;lr;r2=on>"
    )
    assert invite.vias()[1].received == "2001:db8::7"
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), source))
    assert bye.top_via().host == "[2001:db8::10]"
    only(net.deliver(caller.answer(bye, 200), source), WORKER)
    net.assert_empty()


_HEADER_NAMES = ["Via", "Route", "From", "To", "Contact", "CSeq", "Max-Forwards", "Call-ID"]


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["BYE", "INVITE", "ACK", "CANCEL", "INFO", "UPDATE"]),
    drop=st.sets(st.sampled_from(_HEADER_NAMES)),
    junk=st.text(alphabet='<>;:=,@" abc123', max_size=12),
    target=st.sampled_from(_HEADER_NAMES),
    from_worker=st.booleans(),
)
def test_peer_input_never_raises(
    method: str, drop: set[str], junk: str, target: str, from_worker: bool
) -> None:
    net, caller, worker = Net(), caller_ua(), worker_ua()
    establish(net, caller, worker)
    ua, source = (worker, WORKER) if from_worker else (caller, CALLER)
    lines = ua.in_dialog(method).decode().split("\r\n")
    lines = [line for line in lines if line.split(":", 1)[0] not in drop]
    lines = [f"{line}{junk}" if line.startswith(f"{target}:") else line for line in lines]
    try:
        message = parse_message("\r\n".join(lines).encode())
    except SipParseError:
        return
    if isinstance(message, SipRequest) and net.proxy.owns(message):
        for send in net.proxy.handle_request(message, source, now=net.now):
            parse_message(send.data)
    net.advance(net.now + 100)


# ------------------------------------------------------------------ the state machines alone


def test_client_transaction_timers() -> None:
    from sipserver.sip.invite_transaction import (
        T2,
        ClientState,
        ClientTransaction,
        ResponseAction,
        TimerAction,
    )

    # Non-INVITE: Timer E doubles up to T2; in Proceeding it fires every T2 (§17.1.2.2).
    txn = ClientTransaction.start(invite=False, reliable=False, now=0.0)
    fired = []
    while (deadline := txn.deadline()) is not None and deadline < 3:
        assert txn.handle_timer(now=deadline) is TimerAction.RETRANSMIT
        fired.append(deadline)
    assert fired == [0.5, 1.5]
    assert txn.receive_response(180, now=2.0) is ResponseAction.FORWARD
    assert txn.state is ClientState.PROCEEDING
    assert txn.handle_timer(now=3.5) is TimerAction.RETRANSMIT
    assert txn.retransmit_at == 3.5 + T2
    assert txn.receive_response(200, now=4.0) is ResponseAction.FORWARD
    assert txn.receive_response(200, now=4.1) is ResponseAction.ABSORB
    assert txn.deadline() == 4.0 + 5.0  # Timer K = T4
    assert txn.handle_timer(now=9.0) is TimerAction.TERMINATED

    # INVITE over TCP: no Timer A, Timer D zero.
    txn = ClientTransaction.start(invite=True, reliable=True, now=0.0)
    assert txn.retransmit_at is None and txn.timeout_at == 32.0
    assert txn.receive_response(486, now=1.0) is ResponseAction.FORWARD_AND_ACK
    assert txn.receive_response(486, now=1.0) is ResponseAction.ACK_AGAIN
    assert txn.deadline() == 1.0


def test_server_transaction_states() -> None:
    from sipserver.sip.invite_transaction import ServerState, ServerTransaction, TimerAction

    txn = ServerTransaction.start(invite=True, reliable=False)
    assert txn.send_response(100, b"100", now=0.0)
    assert txn.retransmission() == b"100"
    assert txn.send_response(200, b"200", now=1.0)
    assert txn.state is ServerState.ACCEPTED and txn.retransmission() is None
    assert not txn.receive_ack(now=1.5)  # the ACK for a 2xx belongs to the dialog
    assert not txn.send_response(486, b"486", now=2.0)
    assert txn.handle_timer(now=33.0) is TimerAction.TERMINATED

    txn = ServerTransaction.start(invite=False, reliable=True)
    assert txn.retransmission() is None  # Trying: absorbed
    assert txn.send_response(200, b"200", now=0.0)
    assert txn.deadline() == 0.0  # Timer J is zero on reliable transports


def test_timer_heap_stays_proportional_to_live_transactions() -> None:
    net = Net()
    for _ in range(200):
        caller, worker = caller_ua(), worker_ua()
        establish(net, caller, worker)
        bye = request(only(net.deliver(caller.in_dialog("BYE"), CALLER), WORKER))
        net.deliver(worker.answer(bye, 200), WORKER)
        net.now += 0.01
    sizes = net.proxy.sizes()
    live = sizes["client_transactions"] + sizes["server_transactions"]
    assert sizes["timers"] <= max(64, 4 * live) + 1
    net.assert_empty()
