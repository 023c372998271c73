"""The call proxy towards callers on TLS: Record-Route, Via and routing of in-dialog requests
(RFC 3261 §16.6 step 4, §26.2; RFC 5630; RFC 5658), and the SRTP policy header to the worker.

Uses the in-memory user agents of test_proxy.py; the real peers (pjsua2 over TLS) are in
tests/integration/test_tls.py.
"""

from __future__ import annotations

import pytest

from sipserver.edge.proxy import SRTP_HEADER, CallProxy, Endpoint
from sipserver.edge.router import Peer
from sipserver.registrar.bindings import MemoryStore
from tests.unit.test_proxy import (
    INSIDE,
    NUMBER,
    OUTSIDE,
    RR_INSIDE,
    SDP,
    WORKER,
    Net,
    caller_ua,
    only,
    parse,
    request,
    response,
    to,
    worker_ua,
)
from tests.unit.test_router import make_router, register

TLS_CALLER = Endpoint("tls", "198.51.100.7", 50123)


def tls_net() -> Net:
    proxy = CallProxy(outside=OUTSIDE, inside=INSIDE, instance="t", outside_ports={"tls": 5061})
    return Net(proxy=proxy)


def test_tls_caller_call_and_both_byes() -> None:
    # A sip: request over TLS: TLS on the hop to the edge only (RFC 5630).
    outside_rr = "<sip:203.0.113.10:5061;transport=tls;lr;r2=on>"
    net, caller, worker = tls_net(), caller_ua(TLS_CALLER), worker_ua()
    caller.contact = "sip:alice@198.51.100.7:50123;transport=tls"
    invite = request(to(net.invite(caller.make_invite(), TLS_CALLER), WORKER)[0])
    # The hop to the worker stays UDP on loopback; the outside entry names the TLS listener.
    assert invite.top_via().transport == "UDP"
    assert invite.uri == f"sip:{NUMBER}@127.0.0.1:6001"
    assert invite.headers.get_all("Record-Route") == [RR_INSIDE, outside_rr]
    worker.on_invite(invite)
    ok = response(only(net.deliver(worker.answer(invite, 200, body=SDP), WORKER), TLS_CALLER))
    caller.on_answer(ok)
    assert caller.route_set == [outside_rr, RR_INSIDE]
    # The caller's ACK and re-INVITE come back over TLS with the route set: both entries are
    # the edge's and are removed (a transport=tls URI without a port means 5061).
    only(net.deliver(caller.ack(), TLS_CALLER), WORKER)
    caller.route_set = [outside_rr.replace(":5061", ""), RR_INSIDE]
    reinvite = to(net.deliver(caller.in_dialog("INVITE", body=SDP), TLS_CALLER), WORKER)
    assert reinvite and "Route" not in request(reinvite[0]).headers
    sends = net.deliver(worker.answer(request(reinvite[0]), 200, body=SDP), WORKER)
    response(only(sends, TLS_CALLER))
    # The worker's BYE goes to the caller's connection, with the edge's TLS Via and port.
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), TLS_CALLER))
    top = bye.top_via()
    assert (top.transport, top.host, top.port) == ("TLS", "203.0.113.10", 5061)
    assert bye.uri == caller.contact
    response(only(net.deliver(caller.answer(bye, 200), TLS_CALLER), WORKER))
    net.assert_empty()


def test_sips_dialog_is_sips_toward_the_caller_and_sip_toward_the_worker() -> None:
    # RFC 3261 §16.6 step 4 and §12.1.1, RFC 5630: every Record-Route entry and the
    # Contact the caller sees are sips:; the worker (UDP on loopback) sees sip: ones.
    outside_rr = "<sips:203.0.113.10:5061;lr;r2=on>"
    inside_rr = "<sips:127.0.0.1:5070;lr;r2=on>"
    net, caller, worker = tls_net(), caller_ua(TLS_CALLER), worker_ua()
    caller.contact = "sips:alice@198.51.100.7:50123"
    invite = request(to(net.invite(caller.make_invite(f"sips:{NUMBER}@x"), TLS_CALLER), WORKER)[0])
    assert invite.headers.get_all("Record-Route") == [RR_INSIDE, outside_rr]
    assert invite.headers.get("Contact") == "<sip:alice@198.51.100.7:50123>"
    worker.on_invite(invite)
    ok = response(only(net.deliver(worker.answer(invite, 200, body=SDP), WORKER), TLS_CALLER))
    assert ok.headers.get_all("Record-Route") == [inside_rr, outside_rr]
    assert ok.headers.get("Contact") == f"<sips:{NUMBER}@127.0.0.1:6001>"
    caller.on_answer(ok)
    ack = request(only(net.deliver(caller.ack(), TLS_CALLER), WORKER))
    assert ack.uri == worker.contact and "Route" not in ack.headers
    sends = net.deliver(caller.in_dialog("INVITE", body=SDP), TLS_CALLER)
    reinvite = request(to(sends, WORKER)[0])
    assert reinvite.uri == worker.contact
    assert reinvite.headers.get("Contact") == "<sip:alice@198.51.100.7:50123>"
    sends = net.deliver(worker.answer(reinvite, 200, body=SDP), WORKER)
    assert response(only(sends, TLS_CALLER)).headers.get("Contact") == (
        f"<sips:{NUMBER}@127.0.0.1:6001>"
    )
    # The worker's BYE (to the sip: target it was given) reaches the caller as sips:.
    bye = request(only(net.deliver(worker.in_dialog("BYE"), WORKER), TLS_CALLER))
    assert bye.uri == "sips:alice@198.51.100.7:50123"
    response(only(net.deliver(caller.answer(bye, 200), TLS_CALLER), WORKER))
    net.assert_empty()


def test_udp_and_tcp_callers_keep_the_main_port() -> None:
    net = tls_net()
    for transport in ("udp", "tcp"):
        source = Endpoint(transport, "198.51.100.7", 50000)
        invite = request(to(net.invite(caller_ua(source).make_invite(), source), WORKER)[0])
        assert invite.headers.get_all("Record-Route")[1] == (
            f"<sip:203.0.113.10:5060;transport={transport};lr;r2=on>"
        )


@pytest.mark.parametrize("policy", ["off", "optional", "required"])
def test_srtp_policy_reaches_the_worker_and_a_callers_copy_does_not(policy: str) -> None:
    net, caller = tls_net(), caller_ua(TLS_CALLER)
    data = caller.make_invite(extra=[f"{SRTP_HEADER}: off", f"{SRTP_HEADER}: optional"])
    req = request(parse(data))
    assert req.headers.get_all(SRTP_HEADER) == ["off", "optional"]
    sends = net.proxy.route_invite(
        req, TLS_CALLER, worker_id="w1", worker=WORKER, agent="a", now=net.now, srtp=policy
    )
    invite = request(to(sends, WORKER)[0])
    assert invite.headers.get_all(SRTP_HEADER) == [policy]


def test_a_binding_registered_over_tls_keeps_its_transport() -> None:
    # RFC 5630 / RFC 3261 §10.3: the Contact is stored as given (transport=tls) and the
    # binding remembers it came over TLS, so requests to it can go back that way.
    store = MemoryStore()
    router, _ = make_router(store=store)
    peer = Peer("tls", "198.51.100.7", 50123)
    contact = "<sip:alice@198.51.100.7:50123;transport=tls>"
    final = register(router, peer=peer, contact=contact)
    assert final.status == 200
    assert final.headers.get_all("Contact")[0].startswith(f"{contact};expires=")
    (binding,) = store.get("sip:alice@sip.example.com")
    assert binding.contact == "sip:alice@198.51.100.7:50123;transport=tls"
    assert binding.source == "tls:198.51.100.7:50123"


@pytest.mark.parametrize(
    ("header", "policy"),
    [
        ("X-Sipserver-Srtp: required", "required"),
        ("x-sipserver-srtp:optional", "optional"),
        ("X-Sipserver-Srtp: sometimes", "off"),  # unknown: the safe default
        ("X-Other: required", "off"),
    ],
)
def test_the_worker_reads_the_policy_from_the_invite(header: str, policy: str) -> None:
    from sipserver.rtp.pjsua2_ua import srtp_policy

    invite = (
        f"INVITE sip:1@127.0.0.1 SIP/2.0\r\nVia: x\r\n{header}\r\n\r\nX-Sipserver-Srtp: required"
    )
    assert srtp_policy(invite) == policy
