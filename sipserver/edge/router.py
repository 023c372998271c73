"""What the SIP edge does with each message: sans-I/O request routing.

:class:`SipRouter` takes raw bytes from a transport plus the source address and the time, and
returns the datagrams to send. Time comes as two readings: ``now``, monotonic (the adapter's
``loop.time()``), for everything that lives in this process (transactions, the call proxy's
timers, nonces, bans), and ``wall``, wall-clock epoch seconds, for what outlives it or is shown
(binding expiry, which the store persists, and the Date header): a wall clock may be stepped back
or forward (NTP, an operator), which must neither lift a ban early nor stretch a timer.

It owns the non-INVITE transaction table, answers OPTIONS, hands REGISTER to
:class:`~sipserver.edge.registration.RegisterHandler` (domain check -> ban check -> CIDR
allow-lists -> digest auth -> registrar) and holds its 200s until their bindings are committed,
routes INVITEs alike (the number looked up after the ban and never revealed before the digest
check: docs/security.md) to the call proxy, and turns every failure into the right SIP
response. It never raises on peer input: anything that cannot be parsed becomes a 400 when a
response can be addressed, and is dropped and counted otherwise.

No sockets, no clock reads: the asyncio adapter in :mod:`sipserver.edge.transport` feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from sipserver.config import Agent, Config
from sipserver.counters import method_label
from sipserver.edge.held import HeldResponses
from sipserver.edge.proxy import CallProxy, Endpoint, ProxyEvent, Send
from sipserver.edge.registration import (
    AUTH_FAILURES_THAT_BAN,
    AUTH_OUTCOMES_RECHALLENGED,
    PendingCommit,
    RegisterHandler,
    answered_statelessly,
    log_binding_changes,
    log_expired,
)
from sipserver.edge.replies import (
    RETRY_AFTER,
    RETRY_AFTER_HEADER,
    SERVER_HEADER,
    Peer,
    Reply,
    count_refusal,
    response_to,
    unavailable,
)
from sipserver.edge.sip_agents import SipAgents
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.registrar.auth import AuthOutcome, DigestAuthenticator, FailureTracker
from sipserver.registrar.registrar import RegisterRequest, RegisterResult, Registrar
from sipserver.registrar.server_names import ServerNames
from sipserver.sip.headers import Via
from sipserver.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
)
from sipserver.sip.transaction import ServerTransactions, TransactionKey, transaction_key

__all__ = [
    "ALLOWED_METHODS",
    "RETRY_AFTER",
    "Admission",
    "HeldRegister",
    "Outgoing",
    "Peer",
    "SipRouter",
    "WorkerChooser",
    "server_names",
]

WorkerChooser = Callable[[str, str], "tuple[str, Endpoint] | Literal['full'] | None"]
"""(agent slug, Call-ID) -> the chosen (and reserved) worker, ``"full"`` or None."""
Admission = Callable[[], "str | None"]
"""Why the server takes no new calls now (``starting``, ``not_ready``, ``draining``), or None
when it takes them."""
Capacity = Callable[["str | None"], "str | None"]
"""(agent slug, or None for the server alone) -> why a new call is over capacity
(``server_full``, ``agent_full``: :meth:`sipserver.admission.CallLedger.refusal`), or None."""

log = get_logger(__name__)

#: Methods this edge serves, advertised in Allow (RFC 3261 §20.5).
ALLOWED_METHODS: Final = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE"
#: Methods defined by RFC 3261 and its extensions that the edge recognises but does not serve:
#: answered 405 (RFC 3261 §8.2.1). Unrecognised methods get 501 (RFC 3261 §21.5.2).
_RECOGNISED_UNSUPPORTED: Final = frozenset(
    {"INFO", "UPDATE", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER"}
)


def server_names(config: Config) -> ServerNames:
    """The names this server answers to, from the configuration.

    Args:
        config: the configuration: ``server.domains``, ``public_host``, the realm, ``localhost``
            and the UDP/TCP listeners (addresses and ports).

    Returns:
        The names, for Request-URI domain checks (:class:`SipRouter`) and for digest ``uri``
        checks (the authenticator); build them once and give both the same object.
    """
    server = config.server
    listeners = [*server.sip.udp_addresses, *server.sip.tcp_addresses, *server.sip.tls_addresses]
    hosts = [*server.domains, server.public_host, server.effective_realm, "localhost"]
    hosts += [host for host, _ in listeners]
    return ServerNames.build(hosts, ports=[port for _, port in listeners])


@dataclass(frozen=True, slots=True, init=False)
class Outgoing:
    """A message to send."""

    data: bytes
    host: str
    """Destination address for datagram transports; stream transports reply on the connection."""
    port: int
    transport: str = ""
    """Transport to send on; empty: answer the way the message came (same socket/connection)."""
    listener: int = -1
    """The listener to send from (:attr:`Peer.listener` of the request); -1: any of the
    transport's."""

    # init=False and this __init__: compiled by mypyc, ~20x cheaper than the interpreted one
    # dataclasses writes (tests/unit/test_native_init.py checks it against the fields).
    def __init__(
        self, data: bytes, host: str, port: int, transport: str = "", listener: int = -1
    ) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "listener", listener)


@dataclass(frozen=True, slots=True)
class HeldRegister:
    """A REGISTER whose 200 waits for its binding change to be committed."""

    key: TransactionKey
    """Its server transaction (answered when released or refused)."""
    request: SipRequest
    peer: Peer
    response: bytes
    """The 200 to send once committed."""
    result: RegisterResult
    register: RegisterRequest
    wall: float
    """Wall time when it was processed (for the log lines written on release)."""


class SipRouter:
    """Sans-I/O SIP request handling of the edge.

    Args:
        config: the validated configuration (agents, realm, domains, registrar policy).
        registrar: REGISTER semantics and the bindings store.
        authenticator: digest challenges and verification.
        tracker: authentication failures and bans per source address.
        metrics: Prometheus metrics.
        names: the names this server answers to (:func:`server_names`): a Request-URI naming
            one of them is for this server. The same object the authenticator checks digest
            ``uri`` parameters against, so the two cannot disagree.
        force_rport: answer datagrams to their source port even without ``;rport`` (RFC 3581
            behaviour for every request; the NAT-friendly default of Asterisk and FreeSWITCH).
        transactions: the transaction table to use (a config reload hands over the old one, so
            retransmissions across the reload are still answered).
        proxy: the stateful call proxy; without it INVITEs are answered 480.
        choose_worker: picks (and reserves) a media worker for a call: ``(worker_id, address)``,
            ``"full"`` when every worker is busy, None when there is no worker pool.
        on_call_event: receives the proxy's call events (routed, answered, ended).
        admission: asked before a new call is routed (and for OPTIONS): a reason means 503
            with Retry-After (the server is starting, has no media worker up, or is stopping).
        held: REGISTER 200s waiting for their bindings to be committed (a config reload hands
            over the old router's); the adapter reports commits to :meth:`release_committed`
            and failures to :meth:`refuse_uncommitted`.
        capacity: asked before a new call to an agent is routed, fed by the server's count of
            calls in progress at every door: a reason means 503 with Retry-After.
        refusals: where refusals are counted and logged (503 for a call past capacity, a
            registration refused for want of a durable store).
    """

    def __init__(
        self,
        config: Config,
        *,
        registrar: Registrar,
        authenticator: DigestAuthenticator,
        tracker: FailureTracker,
        metrics: Metrics,
        names: ServerNames,
        force_rport: bool = True,
        transactions: ServerTransactions | None = None,
        proxy: CallProxy | None = None,
        choose_worker: WorkerChooser | None = None,
        on_call_event: Callable[[ProxyEvent], None] | None = None,
        admission: Admission | None = None,
        held: HeldResponses[HeldRegister] | None = None,
        capacity: Capacity | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self._config = config
        self._held: HeldResponses[HeldRegister] = held if held is not None else HeldResponses()
        self._refusals = refusals
        self._admission = admission
        self._capacity = capacity
        self._proxy = proxy
        self._choose_worker = choose_worker
        self._on_call_event = on_call_event
        self._registrar = registrar
        self._auth = authenticator
        self._tracker = tracker
        self._metrics = metrics
        # Read at scrape time: always the store's count (including changes a commit has yet to
        # make durable), and no Gauge.set (a lock and two Python calls) on each new binding.
        store = registrar.store
        metrics.registrations_active.set_function(lambda: float(store.count()))
        # The per-message counters, compiled (sipserver.counters): called directly.
        self._messages_in = metrics.messages_in
        self._messages_out = metrics.messages_out
        self._register_results = metrics.register_requests
        self._transactions = transactions if transactions is not None else ServerTransactions()
        self._force_rport = force_rport
        self._names = names
        self._agents = SipAgents(config)
        self._registration = RegisterHandler(
            config,
            registrar=registrar,
            authenticator=authenticator,
            tracker=tracker,
            metrics=metrics,
            names=names,
            agents=self._agents,
            backlog_full=lambda: self._held.full,
            refusals=refusals,
        )

    @property
    def transactions(self) -> ServerTransactions:
        """The transaction table (the adapter drives its timer)."""
        return self._transactions

    @property
    def held(self) -> HeldResponses[HeldRegister]:
        """REGISTER 200s waiting for their bindings to be committed."""
        return self._held

    # ------------------------------------------------------------------ entry point

    def handle_message(self, data: bytes, peer: Peer, *, now: float, wall: float) -> list[Outgoing]:
        """Process one received SIP message and return what to send back.

        Args:
            data: one complete message (a datagram, or one framed message from a stream).
            peer: where it came from.
            now: monotonic time in seconds: transactions, proxy timers, nonces, bans.
            wall: wall-clock epoch seconds: binding expiry (persisted) and the Date header.
        """
        try:
            message = parse_message(data)
        except SipParseError as exc:
            return self._reject_unparseable(exc, peer, now=now)
        proxy = self._proxy
        # The proxy never owns a REGISTER (CallProxy.owns); asked anyway, the interpreted
        # call cost ~1.5 k instructions a message on the registration path.
        if (
            proxy is not None
            and (isinstance(message, SipResponse) or message.method != "REGISTER")
            and proxy.owns(message)
        ):
            label = "RESPONSE" if isinstance(message, SipResponse) else method_label(message.method)
            self._messages_in.inc((peer.transport, label))
            source = Endpoint(peer.transport, peer.host, peer.port)
            if isinstance(message, SipResponse):
                sends = proxy.handle_response(message, source, now=now)
            else:
                sends = proxy.handle_request(message, source, now=now)
            return self._proxied(sends)
        if isinstance(message, SipResponse):
            # Responses of proxied calls were taken above; anything else is stray
            # (RFC 3261 §18.1.2).
            self._messages_in.inc((peer.transport, "RESPONSE"))
            return []
        self._messages_in.inc((peer.transport, method_label(message.method)))
        if message.method == "ACK":
            # ACK to a non-2xx final response is absorbed by the INVITE transaction; there is
            # no dialog on the edge yet, so there is nothing else to do (RFC 3261 §17.2.1).
            return []
        headers = message.headers
        key: TransactionKey | None = None
        if not answered_statelessly(message):
            key = transaction_key(
                headers.get("Via") or "", headers.get("Call-ID") or "", headers.get("CSeq") or ""
            )
            match = self._transactions.receive(key, now=now)
            if not match.is_new:
                self._metrics.retransmissions.inc()
                if match.response is None:
                    return []
                return [self._address(match.response, message, peer)]
        # else a REGISTER without credentials (see answered_statelessly): a retransmission is
        # answered again (a fresh nonce, the same To tag); registrations stay stateful.
        try:
            if message.method == "INVITE" and proxy is not None:
                routed = self._invite(message, peer, proxy, now=now)
                if isinstance(routed, list):
                    # The proxy owns this call's transactions from here on.
                    if key is not None:
                        self._transactions.forget(key)
                    return routed
                status, raw = routed
            else:
                reply = self._dispatch(message, peer, now=now, wall=wall)
                if isinstance(reply, PendingCommit):
                    # Durable registrations: the 200 goes out once the store committed the
                    # change; until then a retransmission is absorbed (RFC 3261 §17.2.2, Trying).
                    # Only an authenticated REGISTER changes bindings: it has a transaction.
                    assert key is not None
                    held = HeldRegister(
                        key, message, peer, reply.response, reply.result, reply.register, wall
                    )
                    self._held.hold(reply.ticket, held)
                    return []
                status, raw = reply
        except (ValueError, KeyError) as exc:
            # A header the dispatcher needed was malformed in a way the parser lets through
            # (it parses most values lazily). The peer gets a 400 naming the problem.
            status, raw = response_to(message, 400, _reason(exc))
        except Exception:
            # A bug must cost one request, not the edge: log it with the stack, answer 500.
            log.exception("sip_request_failed", method=message.method, source=peer.host)
            self._metrics.internal_errors.inc()
            status, raw = response_to(message, 500)
        if key is not None:
            self._transactions.respond(
                key, raw, status=status, reliable=peer.transport != "udp", now=now
            )
        self._messages_out.inc((peer.transport, status))
        return [self._address(raw, message, peer)]

    def proxy_timer(self) -> float | None:
        """When :meth:`handle_proxy_timer` must run next (the call proxy's SIP timers)."""
        return self._proxy.get_timer() if self._proxy is not None else None

    def handle_proxy_timer(self, *, now: float) -> list[Outgoing]:
        """Fire the call proxy's due timers (retransmissions, timeouts)."""
        if self._proxy is None:
            return []
        return self._proxied(self._proxy.handle_timer(now=now))

    def end_calls_of_worker(self, worker_id: str, *, now: float) -> list[Outgoing]:
        """A media worker died: BYE (or a final response) to the callers of its calls."""
        if self._proxy is None:
            return []
        return self._proxied(self._proxy.terminate_calls_of_worker(worker_id, now=now))

    def _proxied(self, sends: list[Send]) -> list[Outgoing]:
        proxy = self._proxy
        if proxy is not None and self._on_call_event is not None:
            while (event := proxy.next_event()) is not None:
                self._on_call_event(event)
        return [Outgoing(s.data, s.to.host, s.to.port, s.to.transport) for s in sends]

    def handle_timer(self, *, now: float, wall: float) -> None:
        """Expire transactions, bans and bindings; refresh the gauges. Call about once a second.

        Args:
            now: monotonic time in seconds (transactions, bans).
            wall: wall-clock epoch seconds (bindings).
        """
        self._transactions.handle_timer(now=now)
        log_expired(self._registrar.expire(now=wall))
        self._tracker.purge(now=now)
        self._metrics.banned_sources.set(self._tracker.banned_count(now=now))

    # ------------------------------------------------------------------ dispatch

    def release_committed(self, seq: int, *, now: float) -> list[Outgoing]:
        """The store committed every change up to ``seq``: send the 200s that waited for them.

        Args:
            seq: the committed change number (``ChangeBatch.seq``).
            now: monotonic time (the transactions' Timer J starts now).

        Returns:
            The responses, each to go out on the listener its request came in on.
        """
        released = self._held.release(seq)
        if not released:
            return []
        out = []
        for held in released:
            out.append(self._answer_held(held, 200, held.response, now=now))
            self._register_results.inc(("ok",))
            log_binding_changes(held.result, held.register, wall=held.wall)
        return out

    def refuse_uncommitted(self, *, now: float) -> list[Outgoing]:
        """A commit failed and the store rolled every uncommitted change back: answer every
        REGISTER still waiting 503 with Retry-After (RFC 3261 §21.5.4: a temporary condition;
        a client retries later, and through RFC 3263 may try another server). No 200 was sent
        for any of them, so nothing that was acknowledged is lost.

        Args:
            now: monotonic time.

        Returns:
            The 503 responses.
        """
        held = self._held.take_all()
        out = []
        for h in held:
            status, raw = unavailable(h.request, "bindings not stored")
            out.append(self._answer_held(h, status, raw, now=now))
            self._register_results.inc(("not_stored",))
            if self._refusals is not None:
                self._refusals.refuse(
                    "sip", "bindings_not_stored", source=h.peer.host, aor=h.register.aor
                )
        return out

    def _answer_held(self, held: HeldRegister, status: int, raw: bytes, *, now: float) -> Outgoing:
        peer = held.peer
        self._transactions.respond(
            held.key, raw, status=status, reliable=peer.transport != "udp", now=now
        )
        self._messages_out.inc((peer.transport, status))
        to = self._address(raw, held.request, peer)
        return Outgoing(to.data, to.host, to.port, peer.transport, peer.listener)

    def _dispatch(
        self, request: SipRequest, peer: Peer, *, now: float, wall: float
    ) -> Reply | PendingCommit:
        method = request.method
        if not request.uri[:4].lower().startswith("sip"):
            # tel:, urn: ...: this edge routes SIP URIs only (RFC 3261 §8.2.2.1).
            return response_to(request, 416)
        if method == "REGISTER":
            return self._registration.handle(request, peer, now=now, wall=wall)
        if method == "OPTIONS":
            if not self._is_local(request.request_uri().host):
                return response_to(request, 404, "Domain Not Served")
            refusal = self._admission() if self._admission is not None else None
            if refusal is not None:
                # RFC 3261 §11.2: OPTIONS gets the status an INVITE would get, so a load
                # balancer pinging with OPTIONS (Kamailio's dispatcher) takes this edge out of
                # rotation while it starts or drains.
                return unavailable(request, refusal)
            return response_to(
                request,
                200,
                headers=(
                    ("Allow", ALLOWED_METHODS),
                    ("Accept", "application/sdp"),
                    ("Supported", "path"),
                ),
            )
        if method in ("BYE", "CANCEL"):
            return response_to(request, 481)
        if method == "INVITE":
            # No call proxy in this edge (tests of the registrar alone): nobody takes calls.
            return response_to(request, 480, "No Media Worker")
        status = 405 if method in _RECOGNISED_UNSUPPORTED else 501
        return response_to(request, status, headers=(("Allow", ALLOWED_METHODS),))

    # ------------------------------------------------------------------ INVITE

    def _invite(
        self, request: SipRequest, peer: Peer, proxy: CallProxy, *, now: float
    ) -> Reply | list[Outgoing]:
        """Route a dialog-creating INVITE: ban, number -> agent, CIDR, auth, worker."""
        metrics = self._metrics
        if "tag=" in (request.headers.get("To") or ""):
            # An in-dialog request for a dialog the proxy does not know (RFC 3261 §12.2.2).
            return response_to(request, 481)
        ruri = request.request_uri()
        if not self._is_local(ruri.host):
            return response_to(request, 404, "Domain Not Served")
        # The ban and the allow-lists are judged before the number is looked up, and a number
        # this source may not call is answered as any other until the caller's credentials
        # are checked: no answer before authentication says whether a number exists.
        if self._tracker.is_banned(peer.host, now=now):
            metrics.call_result("banned")
            metrics.banned_requests.inc()
            count_refusal(self._refusals, "banned", None, peer.host, "INVITE")
            return response_to(request, 403)
        number = ruri.user or request.to().uri.user or ""
        agent = self.agent_for_number(number) or self.listens_agent_for_number(number)
        if agent is None or not self._agents.allows(agent, peer.host):
            return self._invite_not_routable(request, peer, agent, now=now)
        refusal = self._not_taking_calls()
        if refusal is not None:
            # Before the digest challenge: a caller retrying after Retry-After is challenged
            # then, and no nonce is spent on a call that cannot be taken.
            metrics.call_result(refusal)
            count_refusal(self._refusals, refusal, agent, peer.host, "INVITE", request)
            return unavailable(request, refusal)
        if agent.sip.invite_auth == "digest":
            denied = self._authorize_invite(request, peer, (agent.sip.username,), now=now)
            if denied is not None:
                return denied
        refusal = self._capacity(agent.slug) if self._capacity is not None else None
        if refusal is not None:
            # The agent's own limit only after authentication: before it, an answer that
            # depends on the number would tell a scanner the number exists (see above).
            metrics.call_result(refusal)
            count_refusal(self._refusals, refusal, agent, peer.host, "INVITE", request)
            return unavailable(request, refusal)
        choice = self._choose_worker(agent.slug, request.call_id) if self._choose_worker else None
        if choice is None:
            # No worker pool at all (a configuration that cannot take calls); a pool with no
            # worker up yet is refused above with 503 (admission).
            metrics.call_result("no_worker")
            return response_to(request, 480, "No Media Worker Available")
        if choice == "full":
            metrics.call_result("overloaded")
            count_refusal(self._refusals, "workers_full", agent, peer.host, "INVITE", request)
            return response_to(request, 503, "All Media Workers Busy", headers=RETRY_AFTER_HEADER)
        worker_id, worker = choice
        request.headers.remove("Proxy-Authorization")  # consumed here, not for the worker
        sends = proxy.route_invite(
            request,
            Endpoint(peer.transport, peer.host, peer.port),
            worker_id=worker_id,
            worker=worker,
            agent=agent.slug,
            now=now,
            srtp=agent.sip.srtp,
        )
        metrics.call_result("routed")
        return self._proxied(sends)

    def _invite_not_routable(
        self, request: SipRequest, peer: Peer, agent: Agent | None, *, now: float
    ) -> Reply:
        """An INVITE to a number that does not exist (``agent`` None) or whose agent's
        allow-list excludes the source: answered exactly as a call this source may make would
        be (403 when no agent allows the source, 503 while not ready, 407 until credentials of
        an agent that allows it are given) and only then 404 No Such Number (RFC 3261 §21.4.5)
        or 403. So a scanner cannot tell from the answers which numbers exist; an authenticated
        caller gets the true answer. A source an ``invite_auth: ip`` agent allows is
        authenticated by its address and gets it at once."""
        metrics = self._metrics
        allowing = self._agents.allowing(peer.host)
        if not self._agents.enabled:  # no agent takes SIP calls: nothing to hide
            metrics.call_result("no_such_number")
            return response_to(request, 404, "No Such Number")
        if not allowing:
            metrics.call_result("acl_denied")
            count_refusal(self._refusals, "acl_denied", None, peer.host, "INVITE")
            log.info("invite_acl_denied", agent=agent.slug if agent else None, source=peer.host)
            return response_to(request, 403, "Source Address Not Allowed")
        if all(a.sip.invite_auth == "digest" for a in allowing):
            refusal = self._not_taking_calls()
            if refusal is not None:
                metrics.call_result(refusal)
                count_refusal(self._refusals, refusal, agent, peer.host, "INVITE")
                return unavailable(request, refusal)
            usernames = [a.sip.username for a in allowing]
            denied = self._authorize_invite(request, peer, usernames, now=now)
            if denied is not None:
                return denied
        if agent is None:
            metrics.call_result("no_such_number")
            return response_to(request, 404, "No Such Number")
        metrics.call_result("acl_denied")
        count_refusal(self._refusals, "acl_denied", agent, peer.host, "INVITE")
        log.info("invite_acl_denied", agent=agent.slug, source=peer.host)
        return response_to(request, 403, "Source Address Not Allowed")

    def _authorize_invite(
        self, request: SipRequest, peer: Peer, usernames: Iterable[str | None], *, now: float
    ) -> Reply | None:
        """RFC 3261 §22.3 proxy authentication: 407 until Proxy-Authorization carries the
        credentials of one of ``usernames`` (the called agent's). Failures count toward the
        same ban as REGISTER failures."""
        header = request.headers.get("Proxy-Authorization")
        if header is None:
            self._metrics.call_result("challenged")
            return self._proxy_challenge(request, now=now, stale=False)
        result = self._auth.verify(header, method="INVITE", request_uri=request.uri, now=now)
        outcome = result.outcome
        if outcome is AuthOutcome.OK and result.username in usernames:
            return None
        if outcome is AuthOutcome.STALE_NONCE:
            return self._proxy_challenge(request, now=now, stale=True)
        if outcome in AUTH_OUTCOMES_RECHALLENGED:
            self._metrics.auth_failures.labels(outcome.name.lower()).inc()
            return self._proxy_challenge(request, now=now, stale=False)
        reason = "aor_mismatch" if outcome is AuthOutcome.OK else outcome.name.lower()
        self._metrics.auth_failures.labels(reason).inc()
        self._metrics.call_result("auth_failed")
        count_refusal(self._refusals, "auth_failed", None, peer.host, "INVITE")
        if outcome in AUTH_FAILURES_THAT_BAN and self._tracker.record_failure(peer.host, now=now):
            self._metrics.bans.inc()
            log.warning("source_banned", source=peer.host, user=result.username, reason=reason)
        log.info("invite_auth_failed", source=peer.host, user=result.username, reason=reason)
        if outcome is AuthOutcome.MALFORMED:
            return response_to(request, 400, "Malformed Proxy-Authorization")
        return response_to(request, 403)

    def _not_taking_calls(self) -> str | None:
        """Why no new call is taken from anyone now, whatever the number: the server is not
        ready (starting, draining) or at its own capacity (``server_full``)."""
        refusal = self._admission() if self._admission is not None else None
        if refusal is None and self._capacity is not None:
            refusal = self._capacity(None)
        return refusal

    def _proxy_challenge(self, request: SipRequest, *, now: float, stale: bool) -> Reply:
        header = ("Proxy-Authenticate", self._auth.challenge_header(now=now, stale=stale))
        return response_to(request, 407, headers=(header,))

    # ------------------------------------------------------------------ helpers

    def agent_for_number(self, number: str) -> Agent | None:
        """The agent whose SIP number ``number`` is, through the numbering plan (or None)."""
        return self._agents.for_number(number)

    def listens_agent_for_number(self, number: str) -> Agent | None:
        """The SIP-enabled agent one of whose AI Listens numbers ``number`` is (or None)."""
        return self._agents.listens_for_number(number)

    def _is_local(self, host: str) -> bool:
        return self._names.is_local_host(host)

    def _reject_unparseable(self, exc: SipParseError, peer: Peer, *, now: float) -> list[Outgoing]:
        partial = exc.partial
        if partial is None:
            self._metrics.parse_errors.labels(peer.transport, "no").inc()
            log.debug("sip_unparseable_dropped", source=peer.host, reason=exc.reason)
            return []
        self._metrics.parse_errors.labels(peer.transport, "yes").inc()
        log.info("sip_bad_request", source=peer.host, reason=exc.reason, method=partial.method)
        if partial.method == "ACK":
            return []  # RFC 3261 §17.2.1: never answer an ACK
        try:
            response = make_response(partial, exc.status, exc.reason, headers=(SERVER_HEADER,))
            raw = response.encode()
            out = self._address(raw, partial, peer)
        except (ValueError, KeyError):
            return []
        self._messages_out.inc((peer.transport, exc.status))
        return [out]

    def _address(self, raw: bytes, request: SipRequest, peer: Peer) -> Outgoing:
        """Where a response goes: RFC 3261 §18.2.2 with RFC 3581 rport."""
        if peer.transport != "udp" or self._force_rport:
            return Outgoing(raw, peer.host, peer.port)
        try:
            via = Via.parse(request.headers.get("Via") or "")
        except ValueError:
            return Outgoing(raw, peer.host, peer.port)
        if via.has_rport:
            return Outgoing(raw, peer.host, peer.port)
        return Outgoing(raw, peer.host, via.port or 5060)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\r", " ").replace("\n", " ")
    return (text[:80] or "Bad Request").capitalize() if text else "Bad Request"
