"""The edge's stateful proxy for calls (RFC 3261 §16, §17; RFC 5658), sans-I/O.

Theory of operation
-------------------
Callers (PBXs, trunks, phones) reach the edge on its *outside* address; media workers (SIP user
agents that answer calls) listen on loopback and reach the edge on its *inside* address. The
router authorises an initial INVITE and picks a worker; :meth:`CallProxy.route_invite` then

1. answers 100 Trying at once from an INVITE server transaction (RFC 3261 §16.2), which also
   absorbs retransmitted INVITEs by sending the last response again (§17.2.1);
2. forwards the INVITE to the worker (§16.6): Request-URI rewritten to the worker's address
   (user part kept: the called number), Max-Forwards decremented, Route entries naming the edge
   removed, ``X-Sipserver-Agent: <slug>`` set, two Record-Route entries (inside on top, then
   outside; RFC 5658 double record-routing, each marked ``;r2=on``) or one when both addresses
   are equal, and a new top Via with a fresh RFC 3261 branch, from an INVITE client transaction
   (Timers A, B, C, D).

Responses come back through the client transaction (:meth:`handle_response`): the edge's Via is
removed and the response relayed to the address the request came from; 100 is not relayed
(§16.7 step 5). A 2xx is relayed end to end (its ACK is a new request routed by the dialog's route
set). For a non-2xx final the edge ACKs the worker itself (§17.1.1.3) and relays the final
response, which the server transaction retransmits (Timer G) until the caller's ACK (absorbed;
Timers H, I). A CANCEL for a pending INVITE is answered 200 and sent on to the worker with the
INVITE's branch (§16.10, §9.1) once a provisional response has arrived.

In-dialog requests (ACK for 2xx, BYE, re-INVITE, INFO, UPDATE...) from either side arrive with
a Route set naming the edge (§16.4 loose routing): each top Route entry that is the edge is
removed (both with double record-routing). The side a request comes from is told by its From tag
(the caller's tag or the worker's). Requests towards the worker go to the worker's address;
requests towards the caller go to the caller's *observed source* (transport, address, port the
INVITE came from), not to the host of its Contact: a caller behind NAT puts a private address
in Contact, and the observed address is the only one that reaches it (the same reasoning as
RFC 3581 rport). ACK for 2xx is forwarded statelessly (§16.11) with a branch derived from the
incoming one; other requests get server and client transactions like the INVITE.

Each call has a record (:class:`CallInfo`) and emits :class:`CallRouted`, :class:`CallAnswered`
and :class:`CallEnded` (:meth:`next_event`). A call ends on the final response to a BYE, a non-2xx
final response to the initial INVITE (487 after CANCEL), a transaction timeout, or when the adapter
reports a dead worker (:meth:`terminate_calls_of_worker`: the edge sends the callers BYE, built
from the dialog state, or a 500 to callers still ringing). Records and transactions are removed
when they end, so memory is bounded by the calls in progress plus 32 s of finished transactions.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import secrets
from collections import deque
from collections.abc import Mapping

from sipserver.edge.calls import (
    AGENT_HEADER,
    SRTP_HEADER,
    CallAnswered,
    CallEnded,
    CallInfo,
    CallRouted,
    CallState,
    Endpoint,
    EndReason,
    ProxyEvent,
    Send,
)
from sipserver.edge.proxy_addresses import EdgeAddresses
from sipserver.edge.proxy_headers import (
    encode_relayed_request,
    encode_relayed_response,
    explode,
    insert_record_routes,
    pop_top_via,
    set_max_forwards,
    set_received,
    sip_toward_worker,
    sips_toward_caller,
    swap_scheme,
)
from sipserver.edge.proxy_legs import (
    ClientLeg,
    Leg,
    ProxiedCall,
    ServerLeg,
    Side,
    bye_reason,
    is_toward_caller,
)
from sipserver.edge.replies import to_tag
from sipserver.sip.headers import NameAddr, parse_contacts
from sipserver.sip.invite_transaction import (
    MAX_FORWARDS,
    ClientState,
    ClientTransaction,
    ResponseAction,
    ServerTransaction,
    TimerAction,
    build_ack,
    build_cancel,
    server_key,
)
from sipserver.sip.message import Headers, SipRequest, SipResponse, encode_response

__all__ = [
    "AGENT_HEADER",
    "SRTP_HEADER",
    "CallAnswered",
    "CallEnded",
    "CallInfo",
    "CallProxy",
    "CallRouted",
    "CallState",
    "EndReason",
    "Endpoint",
    "ProxyEvent",
    "Send",
]

_LOST = "Media Worker Lost"


class CallProxy:
    """Sans-I/O stateful proxy between callers and media workers.

    Args:
        outside: the edge's address as callers reach it (public host and SIP port).
        inside: the edge's address as workers reach it (loopback).
        branch_prefix: start of every Via branch the edge generates (RFC 3261 magic cookie).
        instance: a token making this instance's branches unique (random by default; fixed in
            tests).
        outside_ports: the edge's port per transport where it is not ``outside.port`` (the TLS
            listener's, usually 5061): Via and Record-Route towards a caller name the port of
            the transport it came in on.
    """

    def __init__(
        self,
        *,
        outside: Endpoint,
        inside: Endpoint,
        branch_prefix: str = "z9hG4bK",
        instance: str | None = None,
        outside_ports: Mapping[str, int] | None = None,
    ) -> None:
        self._addresses = EdgeAddresses(outside, inside, outside_ports)
        token = instance if instance is not None else secrets.token_hex(4)
        self._stem = f"{branch_prefix}-sp{token}-"
        self._counter = itertools.count(1)
        self._seq = itertools.count()
        self._calls: dict[str, ProxiedCall] = {}
        self._servers: dict[tuple[str, str, str], ServerLeg] = {}
        self._clients: dict[tuple[str, str], ClientLeg] = {}
        self._timers: list[tuple[float, int, Leg]] = []
        self._events: deque[ProxyEvent] = deque()
        self._by_worker: dict[str, int] = {}

    # ------------------------------------------------------------------ public API

    def route_invite(
        self,
        request: SipRequest,
        source: Endpoint,
        *,
        worker_id: str,
        worker: Endpoint,
        agent: str,
        now: float,
        srtp: str = "off",
    ) -> list[Send]:
        """Forward an authorised dialog-creating INVITE to a worker.

        Args:
            request: the INVITE (no To tag).
            source: where it came from (its observed transport address).
            worker_id: the worker chosen by the dispatcher.
            worker: the worker's SIP address (loopback).
            agent: the agent slug the called number maps to.
            now: current time (seconds, the adapter's clock).
            srtp: the agent's SRTP policy, for the worker (``X-Sipserver-Srtp``).

        Returns:
            The INVITE to the worker, then 100 Trying to the caller (the call's set-up waits
            for the first, not the second: on loopback each send costs ~0.1 ms here, waking
            its receiver); or one error response (483 Max-Forwards exhausted, 482 Call-ID of
            a call in progress, 400 malformed).
        """
        try:
            key = server_key(request)
            existing = self._servers.get(key)
            if existing is not None:
                return self._retransmitted(existing)
            # RFC 3261 §16.3 step 3: Max-Forwards 0 -> 483, answered statelessly.
            max_forwards = request.max_forwards
            if max_forwards is not None and max_forwards <= 0:
                return [self._stateless(request, source, 483)]
            call_id = request.call_id
            previous = self._calls.get(call_id)
            if previous is not None and previous.state is not CallState.TERMINATED:
                # RFC 3261 §8.2.2.2: a second INVITE of a live Call-ID is a merged request.
                return [self._stateless(request, source, 482)]
            caller_tag = request.from_().tag or ""
            contacts = parse_contacts(request.headers.get_all("Contact"))
            if contacts == "*" or not contacts:
                return [self._stateless(request, source, 400, "Missing Contact")]
            request_uri = request.request_uri()
            user = request_uri.user
            upstream_rr = tuple(request.headers.get_all("Record-Route"))
        except ValueError as exc:
            return [self._stateless(request, source, 400, _reason(exc))]

        call = ProxiedCall(
            call_id=call_id,
            agent=agent,
            worker_id=worker_id,
            worker=worker,
            caller=source,
            caller_tag=caller_tag,
            invite_from=request.headers.get("From") or "",
            caller_contact=str(contacts[0].uri),
            routes_to_caller=upstream_rr,
            started_at=now,
            secure=request_uri.scheme == "sips" and source.transport == "tls",
        )
        self._calls[call_id] = call
        self._by_worker[worker_id] = self._by_worker.get(worker_id, 0) + 1
        server = self._new_server(request, source, call, Side.CALLER, key)
        trying = encode_response(request, 100)
        server.txn.send_response(100, trying, now=now)

        # RFC 3261 §16.6: copy, new Request-URI (§16.5 target), Max-Forwards, Record-Route,
        # Route (the edge's own pre-loaded entries removed; the worker is the target), Via.
        items = explode(list(request.headers))
        items = set_received(items, source)
        items = [(n, v) for n, v in items if n not in ("Route", AGENT_HEADER, SRTP_HEADER)]
        items = set_max_forwards(items, max_forwards)
        items = insert_record_routes(
            items, self._addresses.record_routes_for(source.transport, call.secure)
        )
        items.append((AGENT_HEADER, agent))
        items.append((SRTP_HEADER, srtp))
        if call.secure:
            items = sip_toward_worker(items)
        target = f"sip:{user}@{worker.hostport}" if user else f"sip:{worker.hostport}"
        relayed = self._start_client(
            request.method,
            target,
            items,
            request.body,
            worker,
            server,
            call,
            Side.CALLER,
            now=now,
            initial=True,
        )
        self._events.append(CallRouted(call_id, agent, worker_id, source, now))
        return [relayed, Send(trying, source)]

    def owns(self, message: SipRequest | SipResponse) -> bool:
        """Whether ``message`` belongs to a proxied call or transaction.

        The router asks before its own handling and hands such messages to
        :meth:`handle_request` / :meth:`handle_response`. A request without To tag (an initial
        INVITE) is owned only when it retransmits one being proxied, a CANCEL when it matches
        a proxied INVITE, REGISTER never.
        """
        try:
            if isinstance(message, SipResponse):
                branch = message.top_via().branch or ""
                if (branch, message.cseq[1]) in self._clients:
                    return True
                return branch.startswith(self._stem) and message.call_id in self._calls
            method = message.method
            if method == "CANCEL":
                return server_key(message, "INVITE") in self._servers
            if method == "REGISTER":
                return False
            if message.to().tag is None:
                # Out of any dialog: only a retransmission of a request being proxied.
                return server_key(message) in self._servers
            return message.call_id in self._calls
        except ValueError:
            return False

    def handle_request(self, request: SipRequest, source: Endpoint, *, now: float) -> list[Send]:
        """Process a request the router handed over (see :meth:`owns`).

        Retransmissions get the last response again; ACK for a non-2xx final is absorbed;
        CANCEL is answered and sent on; in-dialog requests are forwarded to the other side.
        """
        is_ack = request.method == "ACK"
        try:
            leg = self._servers.get(server_key(request))
            if leg is not None:
                if is_ack:
                    if leg.txn.receive_ack(now=now):
                        self._schedule(leg)
                        return []  # RFC 3261 §17.2.1: absorbed by the INVITE transaction
                else:
                    return self._retransmitted(leg)
            if request.method == "CANCEL":
                return self._cancel(request, source, now=now)
            call = self._calls.get(request.call_id)
            if call is None or request.to().tag is None:
                # RFC 3261 §12.2.2: no matching dialog; never answer an ACK.
                return [] if is_ack else [self._stateless(request, source, 481)]
            return self._in_dialog(request, source, call, now=now)
        except ValueError as exc:
            return [] if is_ack else [self._stateless(request, source, 400, _reason(exc))]

    def handle_response(self, response: SipResponse, source: Endpoint, *, now: float) -> list[Send]:
        """Process a response to a request the edge forwarded (RFC 3261 §16.7)."""
        try:
            branch = response.top_via().branch or ""
            method = response.cseq[1]
            leg = self._clients.get((branch, method))
            if leg is None:
                return self._stray_response(response, branch, method)
            return self._relay(leg, response, now=now)
        except ValueError:
            return []  # RFC 3261 §18.1.2: malformed responses are dropped

    def get_timer(self) -> float | None:
        """Absolute time of the next timer, or None."""
        timers = self._timers
        while timers:
            deadline, _, leg = timers[0]
            if leg.alive and leg.txn.deadline() == deadline:
                return deadline
            heapq.heappop(timers)  # stale: the leg ended or its deadline moved
        return None

    def handle_timer(self, *, now: float) -> list[Send]:
        """Fire every timer due at ``now``; return what to send."""
        out: list[Send] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, leg = heapq.heappop(timers)
            if not leg.alive or leg.txn.deadline() != deadline:
                continue
            action = leg.txn.handle_timer(now=now)
            if action is None:
                continue
            if isinstance(leg, ClientLeg):
                out.extend(self._client_timer(leg, action, now=now))
            else:
                out.extend(self._server_timer(leg, action, now=now))
        return out

    def next_event(self) -> ProxyEvent | None:
        """Pop the next event, or None."""
        return self._events.popleft() if self._events else None

    def terminate_calls_of_worker(self, worker_id: str, *, now: float) -> list[Send]:
        """End every call of a dead worker.

        Answered calls get a BYE to the caller, built from the dialog as the worker would have
        sent it (RFC 3261 §12.2.1.1: the caller's Contact as Request-URI, the route set below the
        edge's Record-Route entries, From/To of the worker's side, CSeq one above the worker's
        last); calls still ringing get 500. Nothing more is sent to the worker.

        Returns:
            The messages for the callers.
        """
        out: list[Send] = []
        for call in [c for c in self._calls.values() if c.worker_id == worker_id]:
            if call.state is CallState.TERMINATED:
                continue
            hung_up = False
            for client in [c for c in self._clients.values() if c.call is call]:
                if client.to == call.worker:
                    self._remove(client)
                    server = client.server
                    if server is not None and server.alive and not server.txn.final_sent:
                        if server.request.method == "BYE":
                            hung_up = True  # the caller's BYE is answered: no BYE to send
                            out.extend(self._answer(server, 200, None, now=now))
                        else:
                            out.extend(self._answer(server, 500, _LOST, now=now))
            early = call.state is CallState.EARLY
            if not early and not hung_up:
                out.append(self._bye_to_caller(call, now=now))
            self._end(call, EndReason.WORKER_LOST, 500 if early else None, now)
        return out

    @property
    def outside(self) -> Endpoint:
        """The edge's address as callers reach it (Via and Record-Route towards them)."""
        return self._addresses.outside

    def set_outside_host(self, host: str) -> None:
        """Use ``host`` (a new ``server.public_host``) in the Via and Record-Route sent towards
        callers from now on. Route entries naming the previous address are still recognised as
        this edge's own, so dialogs set up before keep working (RFC 3261 §16.4)."""
        self._addresses.set_outside_host(host)

    def active_calls(self) -> int:
        """Calls routed and not ended."""
        return sum(self._by_worker.values())

    def caller_flows(self) -> set[tuple[str, str, int]]:
        """(transport, host, port) each call in progress came from: the stream connections the
        edge keeps open however quiet they are, for the requests towards those callers."""
        return {
            (c.caller.transport, c.caller.host, c.caller.port)
            for c in self._calls.values()
            if c.ended_at is None
        }

    def calls_by_worker(self) -> Mapping[str, int]:
        """Calls not ended, per worker id (workers with none are absent)."""
        return dict(self._by_worker)

    def get_call(self, call_id: str) -> CallInfo | None:
        """Snapshot of a call record, or None when there is none (any more)."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        return CallInfo(
            call.call_id,
            call.agent,
            call.worker_id,
            call.state,
            call.started_at,
            call.answered_at,
            call.ended_at,
        )

    def sizes(self) -> dict[str, int]:
        """Sizes of the internal tables (for metrics and leak tests)."""
        return {
            "calls": len(self._calls),
            "server_transactions": len(self._servers),
            "client_transactions": len(self._clients),
            "timers": len(self._timers),
        }

    # ------------------------------------------------------------------ requests

    def _in_dialog(
        self, request: SipRequest, source: Endpoint, call: ProxiedCall, *, now: float
    ) -> list[Send]:
        method = request.method
        # The worker is known by its address (loopback, not spoofable from outside); anything
        # else must carry the caller's tag in From.
        if source == call.worker:
            side = Side.WORKER
        elif request.from_().tag == call.caller_tag:
            side = Side.CALLER
        else:
            return [] if method == "ACK" else [self._stateless(request, source, 481)]
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return [] if method == "ACK" else [self._stateless(request, source, 483)]

        if side is Side.WORKER:
            call.worker_cseq = max(call.worker_cseq, request.cseq[0])
            to = call.caller
        else:
            to = call.worker
            if method in ("INVITE", "UPDATE"):
                # RFC 3261 §12.2.2: a target refresh updates the remote target.
                contacts = parse_contacts(request.headers.get_all("Contact"))
                if contacts and contacts != "*":
                    call.caller_contact = str(contacts[0].uri)

        # RFC 3261 §16.4: remove the top Route entries that are the edge (two with RFC 5658
        # double record-routing).
        items = explode(list(request.headers))
        items = self._addresses.pop_own_routes(items)
        items = set_received(items, source)
        items = set_max_forwards(items, max_forwards)
        uri = request.uri
        if call.secure and side is Side.CALLER:
            uri, items = swap_scheme(uri, secure=False), sip_toward_worker(items)
        elif call.secure:
            uri = swap_scheme(uri, secure=True)
            items = sips_toward_caller(items, self._addresses.record_routes_for("tls", True)[0])

        if method == "ACK":
            # RFC 3261 §16.11: stateless forwarding; the branch is a function of the incoming
            # one, so a retransmitted ACK is forwarded with the same branch.
            incoming = request.top_via().branch or request.headers.get("Via") or ""
            digest = hashlib.blake2s(incoming.encode("utf-8", "surrogateescape"), digest_size=8)
            branch = f"{self._stem}a{digest.hexdigest()}"
            via = self._addresses.via(to, branch, toward_worker=side is Side.CALLER)
            data = encode_relayed_request(method, uri, [("Via", via), *items], request.body)
            return [Send(data, to)]

        server = self._new_server(request, source, call, side, server_key(request))
        out: list[Send] = []
        if method == "INVITE":
            # RFC 3261 §16.2: a 100 Trying for the re-INVITE too.
            trying = encode_response(request, 100)
            server.txn.send_response(100, trying, now=now)
            out.append(Send(trying, source))
        out.append(
            self._start_client(method, uri, items, request.body, to, server, call, side, now=now)
        )
        return out

    def _cancel(self, request: SipRequest, source: Endpoint, *, now: float) -> list[Send]:
        invite = self._servers.get(server_key(request, "INVITE"))
        if invite is None:
            # RFC 3261 §9.2: no matching transaction.
            return [self._stateless(request, source, 481)]
        server = self._new_server(request, source, invite.call, invite.side, server_key(request))
        server.to_tag = invite.to_tag
        out = self._answer(server, 200, None, now=now)
        if invite.txn.final_sent:
            return out  # RFC 3261 §9.2: the CANCEL has no effect on a completed INVITE
        invite.cancelled = True
        client = invite.client
        if client is not None and client.alive:
            if client.txn.state is ClientState.PROCEEDING:
                out.append(self._send_cancel(client, now=now))
            elif client.txn.state is ClientState.CALLING:
                # RFC 3261 §9.1: no CANCEL before a provisional response; sent when one comes.
                client.cancel_pending = True
        return out

    def _send_cancel(self, client: ClientLeg, *, now: float) -> Send:
        # RFC 3261 §16.10: CANCEL the pending client transaction (same branch, §9.1).
        client.cancel_pending = False
        cancel = build_cancel(client.request)
        data = cancel.encode()
        txn = ClientTransaction.start(invite=False, reliable=client.to.reliable, now=now)
        key = (client.key[0], "CANCEL")
        leg = ClientLeg(key, txn, cancel, data, client.to, None, client.call, client.side)
        self._add_client(leg)
        return Send(data, client.to)

    def _start_client(
        self,
        method: str,
        uri: str,
        items: list[tuple[str, str]],
        body: bytes,
        to: Endpoint,
        server: ServerLeg | None,
        call: ProxiedCall,
        side: Side,
        *,
        now: float,
        initial: bool = False,
    ) -> Send:
        branch = f"{self._stem}{next(self._counter):x}"
        items = [
            ("Via", self._addresses.via(to, branch, toward_worker=side is Side.CALLER)),
            *items,
        ]
        data = encode_relayed_request(method, uri, items, body)
        txn = ClientTransaction.start(invite=method == "INVITE", reliable=to.reliable, now=now)
        sent = SipRequest(method, uri, Headers(items))
        leg = ClientLeg((branch, method), txn, sent, data, to, server, call, side, initial=initial)
        if server is not None:
            server.client = leg
        self._add_client(leg)
        return Send(data, to)

    def _bye_to_caller(self, call: ProxiedCall, *, now: float) -> Send:
        # RFC 3261 §12.2.1.1 from the worker's side of the dialog: From is the dialog's To
        # (with the worker's tag), To is the caller's From; the route set is the worker's
        # (the INVITE's Record-Route) without the edge's own entries.
        call.worker_cseq += 1
        branch = f"{self._stem}{next(self._counter):x}"
        items = [("Via", self._addresses.via(call.caller, branch, toward_worker=False))]
        items += [("Route", r) for r in call.routes_to_caller]
        items.append(("Max-Forwards", str(MAX_FORWARDS)))
        items += [("From", call.worker_to or ""), ("To", call.invite_from)]
        items += [("Call-ID", call.call_id), ("CSeq", f"{call.worker_cseq} BYE")]
        items.append(("Reason", 'SIP;cause=500;text="Media Worker Lost"'))
        data = encode_relayed_request("BYE", call.caller_contact, items, b"")
        txn = ClientTransaction.start(invite=False, reliable=call.caller.reliable, now=now)
        bye = SipRequest("BYE", call.caller_contact, Headers(items))
        leg = ClientLeg((branch, "BYE"), txn, bye, data, call.caller, None, call, Side.WORKER)
        self._add_client(leg)
        return Send(data, call.caller)

    # ------------------------------------------------------------------ responses

    def _relay(self, leg: ClientLeg, response: SipResponse, *, now: float) -> list[Send]:
        status = response.status
        action = leg.txn.receive_response(status, now=now)
        self._schedule(leg)
        if action is ResponseAction.ABSORB:
            return []
        if action is ResponseAction.ACK_AGAIN:
            return [Send(leg.ack, leg.to)] if leg.ack is not None else []
        out: list[Send] = []
        call = leg.call
        method = leg.key[1]
        if action is ResponseAction.FORWARD_AND_ACK:
            leg.ack = build_ack(leg.request, response).encode()
            out.append(Send(leg.ack, leg.to))
        if leg.initial and call is not None:
            self._track_dialog(call, response, now=now)
        if leg.cancel_pending and 100 <= status < 200:
            out.append(self._send_cancel(leg, now=now))
        server = leg.server
        if server is not None and not server.alive and method == "INVITE" and status < 300:
            return out + self._stray_response(response, leg.key[0], method)
        if status == 100 or server is None or not server.alive:
            # RFC 3261 §16.7 step 5: 100 is not forwarded; responses to the edge's own
            # requests (CANCEL, BYE of a lost worker) end here.
            return out
        if status == 503 and method == "INVITE":
            # RFC 3261 §16.7 step 6: a 503 is not forwarded upstream; it becomes 500.
            response = SipResponse(500, "Media Worker Unavailable", response.headers, response.body)
        items = pop_top_via(explode(list(response.headers)))
        if call is not None and call.secure and server.side is Side.CALLER:
            items = sips_toward_caller(items, self._addresses.record_routes_for("tls", True)[0])
        elif call is not None and call.secure:
            items = sip_toward_worker(items)
        data = encode_relayed_response(response, items)
        if server.txn.send_response(status, data, now=now):
            self._schedule(server)
        elif not (200 <= status < 300 and method == "INVITE"):
            # A final response was already sent (the edge answered after a timeout); only 2xx
            # still goes through (RFC 6026 §7.1: they are end-to-end).
            return out
        out.append(Send(data, server.source))
        if call is not None and status >= 200:
            if leg.initial and status >= 300:
                reason = EndReason.CANCELLED if server.cancelled else EndReason.REJECTED
                self._end(call, reason, status, now)
            elif method == "BYE":
                self._end(call, bye_reason(leg), status, now)
        return out

    def _track_dialog(self, call: ProxiedCall, response: SipResponse, *, now: float) -> None:
        to = response.headers.get("To") or ""
        if call.worker_tag is None:
            tag = NameAddr.parse(to).tag if to else None
            if tag is not None:
                call.worker_tag = tag
                call.worker_to = to
        if 200 <= response.status < 300 and call.state is CallState.EARLY:
            call.state = CallState.CONFIRMED
            call.answered_at = now
            call.worker_tag = NameAddr.parse(to).tag or call.worker_tag
            call.worker_to = to
            self._events.append(
                CallAnswered(call.call_id, call.agent, call.worker_id, now, now - call.started_at)
            )

    def _stray_response(self, response: SipResponse, branch: str, method: str) -> list[Send]:
        # RFC 3261 §16.7 / RFC 6026 §8.4: a 2xx retransmission after the client transaction is
        # gone is forwarded statelessly when it carries the edge's Via; anything else is dropped.
        call = self._calls.get(response.call_id)
        if not (method == "INVITE" and 200 <= response.status < 300 and call is not None):
            return []
        if not branch.startswith(self._stem):
            return []
        vias = response.vias()
        if len(vias) < 2:
            return []
        to = call.caller if is_toward_caller(call, response) else call.worker
        data = encode_relayed_response(response, pop_top_via(explode(list(response.headers))))
        return [Send(data, to)]

    # ------------------------------------------------------------------ timers

    def _client_timer(self, leg: ClientLeg, action: TimerAction, *, now: float) -> list[Send]:
        if action is TimerAction.RETRANSMIT:
            self._schedule(leg)
            return [Send(leg.data, leg.to)]
        if action is TimerAction.PROCEEDING_TIMEOUT:
            self._schedule(leg)
            return [self._send_cancel(leg, now=now)]
        self._remove(leg)
        if action is TimerAction.TERMINATED:
            return []
        # Timeout (Timer B / F, or no final after Timer C's CANCEL).
        out: list[Send] = []
        server = leg.server
        call = leg.call
        if server is not None and server.alive and not server.txn.final_sent:
            if leg.txn.invite:
                status = 487 if server.cancelled else 408
                out.extend(self._answer(server, status, None, now=now))
            else:
                # RFC 4320 §4.1: a proxy does not send 408 to a non-INVITE; the requester's own
                # transaction times out. The server side is done.
                self._remove(server)
        if call is not None:
            if leg.initial:
                cancelled = server is not None and server.cancelled
                reason = EndReason.CANCELLED if cancelled else EndReason.TIMEOUT
                self._end(call, reason, 487 if cancelled else 408, now)
            elif leg.key[1] == "BYE":
                self._end(call, EndReason.TIMEOUT, None, now)
        return out

    def _server_timer(self, leg: ServerLeg, action: TimerAction, *, now: float) -> list[Send]:
        if action is TimerAction.RETRANSMIT:
            self._schedule(leg)
            response = leg.txn.response
            return [Send(response, leg.source)] if response is not None else []
        self._remove(leg)
        return []

    # ------------------------------------------------------------------ tables

    def _new_server(
        self,
        request: SipRequest,
        source: Endpoint,
        call: ProxiedCall | None,
        side: Side,
        key: tuple[str, str, str],
    ) -> ServerLeg:
        txn = ServerTransaction.start(invite=request.method == "INVITE", reliable=source.reliable)
        leg = ServerLeg(key, txn, request, source, call, to_tag(request), side)
        self._servers[key] = leg
        if call is not None:
            call.legs += 1
        return leg

    def _add_client(self, leg: ClientLeg) -> None:
        self._clients[leg.key] = leg
        if leg.call is not None:
            leg.call.legs += 1
        self._schedule(leg)

    def _schedule(self, leg: Leg) -> None:
        deadline = leg.txn.deadline()
        if deadline is None or not leg.alive:
            return
        timers = self._timers
        heapq.heappush(timers, (deadline, next(self._seq), leg))
        live = len(self._clients) + len(self._servers)
        if len(timers) > 64 and len(timers) > 4 * live:
            # Entries whose leg ended or whose deadline moved (Timer C resets, Timer A/E/G
            # steps) are skipped lazily; rebuild when they dominate, so the heap (and the
            # requests its legs hold) stays proportional to the live transactions.
            self._timers = [e for e in timers if e[2].alive and e[2].txn.deadline() == e[0]]
            heapq.heapify(self._timers)

    def _remove(self, leg: Leg) -> None:
        if not leg.alive:
            return
        leg.alive = False
        if isinstance(leg, ClientLeg):
            if self._clients.get(leg.key) is leg:
                del self._clients[leg.key]
        elif self._servers.get(leg.key) is leg:
            del self._servers[leg.key]
        call = leg.call
        if call is not None:
            call.legs -= 1
            self._forget_if_done(call)

    def _end(self, call: ProxiedCall, reason: EndReason, status: int | None, now: float) -> None:
        if call.state is CallState.TERMINATED:
            return
        answered = call.answered_at
        call.state = CallState.TERMINATED
        call.ended_at = now
        left = self._by_worker.get(call.worker_id, 0) - 1
        if left > 0:
            self._by_worker[call.worker_id] = left
        else:
            self._by_worker.pop(call.worker_id, None)
        duration = None if answered is None else now - answered
        self._events.append(
            CallEnded(call.call_id, call.agent, call.worker_id, reason, status, now, duration)
        )
        self._forget_if_done(call)

    def _forget_if_done(self, call: ProxiedCall) -> None:
        done = call.state is CallState.TERMINATED and call.legs <= 0
        if done and self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]

    # ------------------------------------------------------------------ helpers

    def _retransmitted(self, leg: ServerLeg) -> list[Send]:
        response = leg.txn.retransmission()
        return [Send(response, leg.source)] if response is not None else []

    def _answer(
        self, server: ServerLeg, status: int, reason: str | None, *, now: float
    ) -> list[Send]:
        """A response generated by the edge on a server transaction."""
        to_tag = server.to_tag if status >= 200 else None
        data = encode_response(server.request, status, reason, to_tag=to_tag)
        if not server.txn.send_response(status, data, now=now):
            return []
        self._schedule(server)
        return [Send(data, server.source)]

    def _stateless(
        self, request: SipRequest, source: Endpoint, status: int, reason: str | None = None
    ) -> Send:
        return Send(encode_response(request, status, reason, to_tag=to_tag(request)), source)


# ------------------------------------------------------------------ message helpers


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\r", " ").replace("\n", " ")
    return text[:80] or "Bad Request"
