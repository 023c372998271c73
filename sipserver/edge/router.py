"""What the SIP edge does with each message: sans-I/O request routing.

:class:`SipRouter` takes raw bytes from a transport plus the source address and the time, and
returns the datagrams to send. Time comes as two readings: ``now``, monotonic (the adapter's
``loop.time()``), for everything that lives in this process (transactions, the call proxy's
timers, nonces, bans), and ``wall``, wall-clock epoch seconds, for what outlives it or is shown
(binding expiry, which the store persists, and the Date header): a wall clock may be stepped back
or forward (NTP, an operator), which must neither lift a ban early nor stretch a timer.

It owns the non-INVITE transaction table, answers OPTIONS, runs the
REGISTER pipeline (domain check -> ban check -> CIDR allow-lists -> digest auth -> registrar;
INVITE alike, with the number looked up after the ban and never revealed before the digest
check: docs/security.md) and
turns every failure into the right SIP response. It never raises on peer input: anything that
cannot be parsed becomes a 400 when a response can be addressed, and is dropped and counted
otherwise.

No sockets, no clock reads: the asyncio adapter in :mod:`sipserver.edge.transport` feeds it.
"""

from __future__ import annotations

import email.utils
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from sipserver.config import Agent, Config
from sipserver.edge.held import HeldResponses
from sipserver.edge.proxy import CallProxy, Endpoint, ProxyEvent, Send
from sipserver.observability import Metrics, RefusalLog, get_logger
from sipserver.registrar.acl import AllowList
from sipserver.registrar.auth import AuthOutcome, DigestAuthenticator, FailureTracker
from sipserver.registrar.registrar import (
    ContactSpec,
    RegisterRequest,
    RegisterResult,
    Registrar,
)
from sipserver.registrar.server_names import ServerNames
from sipserver.sip.headers import NameAddr, Via, parse_contacts
from sipserver.sip.message import (
    SipParseError,
    SipRequest,
    SipResponse,
    encode_response,
    make_response,
    parse_message,
)
from sipserver.sip.transaction import ServerTransactions, TransactionKey

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

RETRY_AFTER = 5
"""Seconds in the Retry-After of every 503 (starting, draining, all workers busy): about one
cold start of the server (bench/cold_start.py), short enough that a retrying trunk loses little."""
_RETRY_AFTER = (("Retry-After", str(RETRY_AFTER)),)

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
ALLOWED_METHODS = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE"
#: Methods defined by RFC 3261 and its extensions that the edge recognises but does not serve:
#: answered 405 (RFC 3261 §8.2.1). Unrecognised methods get 501 (RFC 3261 §21.5.2).
_RECOGNISED_UNSUPPORTED = frozenset(
    {"INFO", "UPDATE", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "MESSAGE", "REFER"}
)
_SERVER_HEADER = ("Server", "sipserver")
#: A response to send: its status and its wire form.
_Reply = tuple[int, bytes]
#: Outcomes that count toward a ban: a wrong password, or a user name that does not exist.
_AUTH_FAILURES_THAT_BAN = frozenset({AuthOutcome.BAD_PASSWORD, AuthOutcome.UNKNOWN_USER})
#: Outcomes answered with a fresh challenge (``stale=false``), counted in the auth-failure
#: metric but never toward a ban: a nonce this process did not issue (a restart), a re-sent
#: Authorization, or credentials for another realm. RFC 3261 §22.1 (a realm names a protection
#: domain; credentials are computed for the realm of the challenge) and §20.28 (credentials are
#: for the server whose realm they name): they say nothing about the password, and a phone that
#: cached credentials for the realm before a reload changed it (the realm follows
#: ``server.public_host``) must get the new realm's challenge, not a 403 and then a ban.
_AUTH_OUTCOMES_RECHALLENGED = frozenset(
    {AuthOutcome.INVALID_NONCE, AuthOutcome.REPLAY, AuthOutcome.WRONG_REALM}
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


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from."""

    transport: str
    """``udp``, ``tcp`` or ``tls``."""
    host: str
    """Source IP address (no brackets)."""
    port: int
    """Source port."""
    listener: int = 0
    """Which of the adapter's listeners received it (the adapter's own number; the router only
    copies it into a held response, which is sent later, outside the receive path)."""


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class _Hold:
    """:meth:`SipRouter._register` decided a 200 that must wait for the changes up to
    ``ticket`` to be committed."""

    ticket: int
    response: bytes
    result: RegisterResult
    register: RegisterRequest


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
        self._transactions = transactions if transactions is not None else ServerTransactions()
        self._date_second = -1
        self._date_text = ""
        self._realm = config.server.effective_realm
        self._force_rport = force_rport
        self._names = names
        self._sip_agents = [a for a in config.agents if a.sip.enabled]
        self._acls: dict[str, AllowList] = {
            a.slug: AllowList(a.sip.allowed_ips) for a in self._sip_agents
        }
        # Plain dicts for the per-request lookups (the config's own lookups normalise numbers
        # and go through pydantic attribute access, which costs microseconds per call).
        self._by_username: dict[str, Agent] = {}
        self._by_number: dict[str, Agent] = {}
        self._listens_by_number: dict[str, Agent] = {}
        self._normalize = config.server.sip.numbering.normalize
        for agent in config.agents:
            if not agent.sip.enabled:
                continue
            if agent.sip.username:
                self._by_username[agent.sip.username] = agent
            for number in agent.sip.numbers:
                self._by_number[number] = agent
                self._by_number[self._normalize(number)] = agent
            # AI Listens numbers take calls from the agent's PBX (same allow-list and
            # credentials); they are never registration addresses.
            for number in agent.listens.numbers if agent.listens.enabled else ():
                self._listens_by_number[number] = agent
                self._listens_by_number[self._normalize(number)] = agent

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
        if proxy is not None and proxy.owns(message):
            self._metrics.message_in(
                peer.transport, "RESPONSE" if isinstance(message, SipResponse) else message.method
            )
            source = Endpoint(peer.transport, peer.host, peer.port)
            if isinstance(message, SipResponse):
                sends = proxy.handle_response(message, source, now=now)
            else:
                sends = proxy.handle_request(message, source, now=now)
            return self._proxied(sends)
        if isinstance(message, SipResponse):
            # Responses of proxied calls were taken above; anything else is stray
            # (RFC 3261 §18.1.2).
            self._metrics.message_in(peer.transport, "RESPONSE")
            return []
        self._metrics.message_in(peer.transport, message.method)
        if message.method == "ACK":
            # ACK to a non-2xx final response is absorbed by the INVITE transaction; there is
            # no dialog on the edge yet, so there is nothing else to do (RFC 3261 §17.2.1).
            return []
        headers = message.headers
        key = (headers.get("Via") or "", headers.get("Call-ID") or "", headers.get("CSeq") or "")
        match = self._transactions.receive(key, now=now)
        if not match.is_new:
            self._metrics.retransmissions.inc()
            if match.response is None:
                return []
            return [self._address(match.response, message, peer)]
        try:
            if message.method == "INVITE" and proxy is not None:
                routed = self._invite(message, peer, proxy, now=now)
                if isinstance(routed, list):
                    # The proxy owns this call's transactions from here on.
                    self._transactions.forget(key)
                    return routed
                status, raw = routed
            else:
                reply = self._dispatch(message, peer, now=now, wall=wall)
                if isinstance(reply, _Hold):
                    # Durable registrations: the 200 goes out once the store committed the
                    # change; until then a retransmission is absorbed (RFC 3261 §17.2.2, Trying).
                    held = HeldRegister(
                        key, message, peer, reply.response, reply.result, reply.register, wall
                    )
                    self._held.hold(reply.ticket, held)
                    return []
                status, raw = reply
        except (ValueError, KeyError) as exc:
            # A header the dispatcher needed was malformed in a way the parser lets through
            # (it parses most values lazily). The peer gets a 400 naming the problem.
            status, raw = self._response(message, 400, _reason(exc))
        except Exception:
            # A bug must cost one request, not the edge: log it with the stack, answer 500.
            log.exception("sip_request_failed", method=message.method, source=peer.host)
            self._metrics.internal_errors.inc()
            status, raw = self._response(message, 500)
        self._transactions.respond(
            key, raw, status=status, reliable=peer.transport != "udp", now=now
        )
        self._metrics.message_out(peer.transport, status)
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
        for binding in self._registrar.expire(now=wall):
            log.info(
                "unregistered",
                aor=binding.aor,
                contact=binding.contact,
                source=binding.source,
                expires=0,
                reason="expired",
            )
        self._tracker.purge(now=now)
        self._metrics.registrations_active.set(self._registrar.store.count())
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
        metrics = self._metrics
        out = []
        for held in released:
            out.append(self._answer_held(held, 200, held.response, now=now))
            metrics.register_result("ok")
            _log_binding_changes(held.result, held.register, wall=held.wall)
        metrics.registrations_active.set(self._registrar.store.count())
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
            status, raw = self._unavailable(h.request, "bindings not stored")
            out.append(self._answer_held(h, status, raw, now=now))
            self._metrics.register_result("not_stored")
            if self._refusals is not None:
                self._refusals.refuse(
                    "sip", "bindings_not_stored", source=h.peer.host, aor=h.register.aor
                )
        self._metrics.registrations_active.set(self._registrar.store.count())
        return out

    def _answer_held(self, held: HeldRegister, status: int, raw: bytes, *, now: float) -> Outgoing:
        peer = held.peer
        self._transactions.respond(
            held.key, raw, status=status, reliable=peer.transport != "udp", now=now
        )
        self._metrics.message_out(peer.transport, status)
        to = self._address(raw, held.request, peer)
        return Outgoing(to.data, to.host, to.port, peer.transport, peer.listener)

    def _dispatch(
        self, request: SipRequest, peer: Peer, *, now: float, wall: float
    ) -> _Reply | _Hold:
        method = request.method
        if not request.uri[:4].lower().startswith("sip"):
            # tel:, urn: ...: this edge routes SIP URIs only (RFC 3261 §8.2.2.1).
            return self._response(request, 416)
        if method == "REGISTER":
            return self._register(request, peer, now=now, wall=wall)
        if method == "OPTIONS":
            if not self._is_local(request.request_uri().host):
                return self._response(request, 404, "Domain Not Served")
            refusal = self._admission() if self._admission is not None else None
            if refusal is not None:
                # RFC 3261 §11.2: OPTIONS gets the status an INVITE would get, so a load
                # balancer pinging with OPTIONS (Kamailio's dispatcher) takes this edge out of
                # rotation while it starts or drains.
                return self._unavailable(request, refusal)
            return self._response(
                request,
                200,
                headers=(
                    ("Allow", ALLOWED_METHODS),
                    ("Accept", "application/sdp"),
                    ("Supported", "path"),
                ),
            )
        if method in ("BYE", "CANCEL"):
            return self._response(request, 481)
        if method == "INVITE":
            # No call proxy in this edge (tests of the registrar alone): nobody takes calls.
            return self._response(request, 480, "No Media Worker")
        status = 405 if method in _RECOGNISED_UNSUPPORTED else 501
        return self._response(request, status, headers=(("Allow", ALLOWED_METHODS),))

    # ------------------------------------------------------------------ INVITE

    def _invite(
        self, request: SipRequest, peer: Peer, proxy: CallProxy, *, now: float
    ) -> _Reply | list[Outgoing]:
        """Route a dialog-creating INVITE: ban, number -> agent, CIDR, auth, worker."""
        metrics = self._metrics
        if "tag=" in (request.headers.get("To") or ""):
            # An in-dialog request for a dialog the proxy does not know (RFC 3261 §12.2.2).
            return self._response(request, 481)
        ruri = request.request_uri()
        if not self._is_local(ruri.host):
            return self._response(request, 404, "Domain Not Served")
        # The ban and the allow-lists are judged before the number is looked up, and a number
        # this source may not call is answered as any other until the caller's credentials
        # are checked: no answer before authentication says whether a number exists.
        if self._tracker.is_banned(peer.host, now=now):
            metrics.call_result("banned")
            metrics.banned_requests.inc()
            self._refuse("banned", None, peer)
            return self._response(request, 403)
        number = ruri.user or request.to().uri.user or ""
        agent = self.agent_for_number(number) or self.listens_agent_for_number(number)
        if agent is None or not self._acls[agent.slug].allows(peer.host):
            return self._invite_not_routable(request, peer, agent, now=now)
        refusal = self._not_taking_calls()
        if refusal is not None:
            # Before the digest challenge: a caller retrying after Retry-After is challenged
            # then, and no nonce is spent on a call that cannot be taken.
            metrics.call_result(refusal)
            self._refuse(refusal, agent, peer)
            return self._unavailable(request, refusal)
        if agent.sip.invite_auth == "digest":
            denied = self._authorize_invite(request, peer, (agent.sip.username,), now=now)
            if denied is not None:
                return denied
        refusal = self._capacity(agent.slug) if self._capacity is not None else None
        if refusal is not None:
            # The agent's own limit only after authentication: before it, an answer that
            # depends on the number would tell a scanner the number exists (see above).
            metrics.call_result(refusal)
            self._refuse(refusal, agent, peer)
            return self._unavailable(request, refusal)
        choice = self._choose_worker(agent.slug, request.call_id) if self._choose_worker else None
        if choice is None:
            # No worker pool at all (a configuration that cannot take calls); a pool with no
            # worker up yet is refused above with 503 (admission).
            metrics.call_result("no_worker")
            return self._response(request, 480, "No Media Worker Available")
        if choice == "full":
            metrics.call_result("overloaded")
            self._refuse("workers_full", agent, peer)
            return self._response(request, 503, "All Media Workers Busy", headers=_RETRY_AFTER)
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
    ) -> _Reply:
        """An INVITE to a number that does not exist (``agent`` None) or whose agent's
        allow-list excludes the source: answered exactly as a call this source may make would
        be (403 when no agent allows the source, 503 while not ready, 407 until credentials of
        an agent that allows it are given) and only then 404 No Such Number (RFC 3261 §21.4.5)
        or 403. So a scanner cannot tell from the answers which numbers exist; an authenticated
        caller gets the true answer. A source an ``invite_auth: ip`` agent allows is
        authenticated by its address and gets it at once."""
        metrics = self._metrics
        allowing = [a for a in self._sip_agents if self._acls[a.slug].allows(peer.host)]
        if not self._sip_agents:  # no agent takes SIP calls: nothing to hide
            metrics.call_result("no_such_number")
            return self._response(request, 404, "No Such Number")
        if not allowing:
            metrics.call_result("acl_denied")
            self._refuse("acl_denied", None, peer)
            log.info("invite_acl_denied", agent=agent.slug if agent else None, source=peer.host)
            return self._response(request, 403, "Source Address Not Allowed")
        if all(a.sip.invite_auth == "digest" for a in allowing):
            refusal = self._not_taking_calls()
            if refusal is not None:
                metrics.call_result(refusal)
                self._refuse(refusal, agent, peer)
                return self._unavailable(request, refusal)
            usernames = [a.sip.username for a in allowing]
            denied = self._authorize_invite(request, peer, usernames, now=now)
            if denied is not None:
                return denied
        if agent is None:
            metrics.call_result("no_such_number")
            return self._response(request, 404, "No Such Number")
        metrics.call_result("acl_denied")
        self._refuse("acl_denied", agent, peer)
        log.info("invite_acl_denied", agent=agent.slug, source=peer.host)
        return self._response(request, 403, "Source Address Not Allowed")

    def _authorize_invite(
        self, request: SipRequest, peer: Peer, usernames: Iterable[str | None], *, now: float
    ) -> _Reply | None:
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
        if outcome in _AUTH_OUTCOMES_RECHALLENGED:
            self._metrics.auth_failures.labels(outcome.name.lower()).inc()
            return self._proxy_challenge(request, now=now, stale=False)
        reason = "aor_mismatch" if outcome is AuthOutcome.OK else outcome.name.lower()
        self._metrics.auth_failures.labels(reason).inc()
        self._metrics.call_result("auth_failed")
        self._refuse("auth_failed", None, peer)
        if outcome in _AUTH_FAILURES_THAT_BAN and self._tracker.record_failure(peer.host, now=now):
            self._metrics.bans.inc()
            log.warning("source_banned", source=peer.host, user=result.username, reason=reason)
        log.info("invite_auth_failed", source=peer.host, user=result.username, reason=reason)
        if outcome is AuthOutcome.MALFORMED:
            return self._response(request, 400, "Malformed Proxy-Authorization")
        return self._response(request, 403)

    def _not_taking_calls(self) -> str | None:
        """Why no new call is taken from anyone now, whatever the number: the server is not
        ready (starting, draining) or at its own capacity (``server_full``)."""
        refusal = self._admission() if self._admission is not None else None
        if refusal is None and self._capacity is not None:
            refusal = self._capacity(None)
        return refusal

    def _refuse(self, reason: str, agent: Agent | None, peer: Peer, method: str = "INVITE") -> None:
        """Count a refusal in ``sipserver_refusals_total{ingress="sip"}`` and log it once per
        interval (capacity, readiness, ban, allow-list, failed credentials)."""
        if self._refusals is not None:
            slug = agent.slug if agent is not None else None
            self._refusals.refuse("sip", reason, agent=slug, source=peer.host, method=method)

    def _unavailable(self, request: SipRequest, refusal: str) -> _Reply:
        """RFC 3261 §21.5.4: 503 for a temporary condition, with Retry-After (§20.33) so the
        caller, or its proxy (RFC 3263 §4.3), tries another server or retries later. Never 480
        for this: 480 says the callee is unavailable, and trunks then give up the call. The
        Warning (§20.43, code 399) names the condition for whoever reads the trace."""
        warning = ("Warning", f'399 sipserver "{refusal}"')
        return self._response(request, 503, "Service Unavailable", headers=(*_RETRY_AFTER, warning))

    def _proxy_challenge(self, request: SipRequest, *, now: float, stale: bool) -> _Reply:
        header = ("Proxy-Authenticate", self._auth.challenge_header(now=now, stale=stale))
        return self._response(request, 407, headers=(header,))

    # ------------------------------------------------------------------ REGISTER

    def _register(
        self, request: SipRequest, peer: Peer, *, now: float, wall: float
    ) -> _Reply | _Hold:
        metrics = self._metrics
        if not self._is_local(request.request_uri().host):
            # RFC 3261 §10.3 step 1: this registrar has no bindings for that domain.
            metrics.register_result("foreign_domain")
            return self._response(request, 403, "Domain Not Served")
        if self._tracker.is_banned(peer.host, now=now):
            metrics.register_result("banned")
            metrics.banned_requests.inc()
            self._refuse("banned", None, peer, "REGISTER")
            return self._response(request, 403)
        to = request.to()
        aor_user = to.uri.user or ""
        agent = self._agent_for_aor(aor_user)
        # As for INVITE: before credentials, the answer depends on the source, not on whether
        # the address of record exists or which agent's allow-list it is under.
        if self._sip_agents and not any(
            self._acls[a.slug].allows(peer.host) for a in self._sip_agents
        ):
            metrics.register_result("acl_denied")
            self._refuse("acl_denied", None, peer, "REGISTER")
            log.info("register_acl_denied", agent=agent.slug if agent else None, source=peer.host)
            return self._response(request, 403, "Source Address Not Allowed")

        authorization = request.headers.get("Authorization")
        if authorization is None:
            metrics.register_result("challenged")
            return self._challenge(request, now=now, stale=False)
        result = self._auth.verify(
            authorization, method="REGISTER", request_uri=request.uri, now=now
        )
        outcome = result.outcome
        if outcome is not AuthOutcome.OK:
            return self._auth_failed(request, peer, outcome, result.username, now=now)
        # The credentials are good; they must be the credentials of the agent owning the AOR.
        owner = self._by_username.get(result.username or "")
        if owner is None or (agent is not None and owner.slug != agent.slug) or agent is None:
            metrics.register_result("forbidden_aor")
            metrics.auth_failures.labels("aor_mismatch").inc()
            log.info("register_aor_mismatch", user=result.username, aor=aor_user, source=peer.host)
            return self._response(request, 403, "Not Your Address-of-Record")
        if not self._acls[agent.slug].allows(peer.host):
            metrics.register_result("acl_denied")
            self._refuse("acl_denied", agent, peer, "REGISTER")
            log.info("register_acl_denied", agent=agent.slug, source=peer.host)
            return self._response(request, 403, "Source Address Not Allowed")

        contacts_raw = request.headers.get_all("Contact")
        contacts = parse_contacts(contacts_raw) if contacts_raw else []
        expires_raw = request.headers.get("Expires")
        register = RegisterRequest(
            aor=f"sip:{aor_user}@{self._realm}",
            agent=agent.slug,
            call_id=request.call_id,
            cseq=request.cseq[0],
            contacts=() if contacts == "*" else tuple(_contact_spec(c) for c in contacts),
            wildcard=contacts == "*",
            expires=_parse_expires(expires_raw) if expires_raw is not None else None,
            source=f"{peer.transport}:{_host_port(peer.host, peer.port)}",
            path=tuple(request.headers.get_all("Path")),
            user_agent=request.headers.get("User-Agent"),
        )
        if self._held.full:
            # The store has not committed for a long while (a stalled disk): refuse rather
            # than hold without bound; nothing was changed.
            metrics.register_result("not_stored")
            if self._refusals is not None:
                self._refusals.refuse("sip", "bindings_backlog", source=peer.host)
            return self._unavailable(request, "bindings backlog")
        outcome_reg = self._registrar.handle_register(register, now=wall)
        if outcome_reg.status != 200:
            metrics.register_result(
                "interval_too_brief" if outcome_reg.status == 423 else "rejected"
            )
            extra: tuple[tuple[str, str], ...] = ()
            if outcome_reg.min_expires is not None:
                extra = (("Min-Expires", str(outcome_reg.min_expires)),)
            return self._response(request, outcome_reg.status, outcome_reg.reason, headers=extra)
        headers: list[tuple[str, str]] = [
            ("Contact", f"<{b.contact}>;expires={b.expires_in(wall)}") for b in outcome_reg.bindings
        ]
        headers.extend(("Path", p) for p in register.path)
        headers.append(("Date", self._date(wall)))
        reply = self._response(request, 200, headers=headers)
        ticket = self._registrar.store.pending_commit()
        if ticket is not None:
            # The 200 reflects changes not yet on disk (this request's, or earlier ones a
            # query reports): it waits for their commit (see release_committed).
            return _Hold(ticket, reply[1], outcome_reg, register)
        metrics.register_result("ok")
        if outcome_reg.added or outcome_reg.removed:
            metrics.registrations_active.set(self._registrar.store.count())
        _log_binding_changes(outcome_reg, register, wall=wall)
        return reply

    def _auth_failed(
        self,
        request: SipRequest,
        peer: Peer,
        outcome: AuthOutcome,
        username: str | None,
        *,
        now: float,
    ) -> _Reply:
        metrics = self._metrics
        reason = outcome.name.lower()
        if outcome is AuthOutcome.STALE_NONCE:
            # RFC 7616 §3.3: the password was right, only the nonce aged; no failure counted.
            metrics.register_result("stale")
            return self._challenge(request, now=now, stale=True)
        metrics.auth_failures.labels(reason).inc()
        if outcome in _AUTH_OUTCOMES_RECHALLENGED:
            # A nonce from before a restart, a re-sent Authorization, or credentials for
            # another realm: challenge afresh, in ours.
            metrics.register_result("challenged")
            return self._challenge(request, now=now, stale=False)
        if outcome in _AUTH_FAILURES_THAT_BAN and self._tracker.record_failure(peer.host, now=now):
            metrics.bans.inc()
            log.warning(
                "source_banned",
                source=peer.host,
                user=username,
                reason=reason,
                max_failures=self._config.server.sip.ban.max_failures,
                duration=self._config.server.sip.ban.duration,
            )
        log.info("register_auth_failed", source=peer.host, user=username, reason=reason)
        metrics.register_result("auth_failed")
        self._refuse("auth_failed", None, peer, "REGISTER")
        if outcome is AuthOutcome.MALFORMED:
            return self._response(request, 400, "Malformed Authorization")
        return self._response(request, 403)

    def _challenge(self, request: SipRequest, *, now: float, stale: bool) -> _Reply:
        # A pre-rendered template: the same text as DigestChallenge.to_header() of challenge().
        header = ("WWW-Authenticate", self._auth.challenge_header(now=now, stale=stale))
        return self._response(request, 401, headers=(header,))

    # ------------------------------------------------------------------ helpers

    def agent_for_number(self, number: str) -> Agent | None:
        """The agent whose SIP number ``number`` is, through the numbering plan (or None)."""
        return self._by_number.get(number) or self._by_number.get(self._normalize(number))

    def listens_agent_for_number(self, number: str) -> Agent | None:
        """The SIP-enabled agent one of whose AI Listens numbers ``number`` is (or None)."""
        found = self._listens_by_number.get(number)
        return found or self._listens_by_number.get(self._normalize(number))

    def _agent_for_aor(self, user: str) -> Agent | None:
        agent = self._by_username.get(user) or self._by_number.get(user)
        if agent is None:
            agent = self._by_number.get(self._normalize(user))
        return agent

    def _date(self, now: float) -> str:
        """RFC 3261 §20.17 Date (RFC 1123 form), rendered once per second."""
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_text = email.utils.formatdate(second, usegmt=True)
        return self._date_text

    def _is_local(self, host: str) -> bool:
        return self._names.is_local_host(host)

    def _response(
        self,
        request: SipRequest,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> _Reply:
        """The status and wire form of a response to ``request`` (see make_response)."""
        to_tag = None
        if status >= 200 and "tag=" not in (request.headers.get("To") or ""):
            # RFC 3261 §8.2.6.2: a final response gets a To tag; a stable one per request
            # keeps retransmitted answers identical.
            to_tag = _to_tag(request)
        raw = encode_response(
            request, status, reason, to_tag=to_tag, headers=(*headers, _SERVER_HEADER)
        )
        return status, raw

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
            response = make_response(partial, exc.status, exc.reason, headers=(_SERVER_HEADER,))
            raw = response.encode()
            out = self._address(raw, partial, peer)
        except (ValueError, KeyError):
            return []
        self._metrics.message_out(peer.transport, exc.status)
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


def _log_binding_changes(result: RegisterResult, request: RegisterRequest, *, wall: float) -> None:
    """One line per binding a REGISTER changed, like Asterisk's "Added contact": ``registered``
    and ``unregistered`` at info, a refresh of an existing contact at debug (phones refresh
    every few minutes; that is no news to an operator)."""
    for b in result.added_bindings:
        log.info(
            "registered",
            aor=b.aor,
            contact=b.contact,
            source=request.source,
            expires=b.expires_in(wall),
            agent=request.agent,
            user_agent=request.user_agent,
        )
    for b in result.refreshed_bindings:
        log.debug(
            "registration_refreshed",
            aor=b.aor,
            contact=b.contact,
            source=request.source,
            expires=b.expires_in(wall),
        )
    removal = "wildcard" if request.wildcard else "request"
    for reason, bindings in (
        (removal, result.removed_bindings),
        ("max_contacts", result.evicted_bindings),
    ):
        for b in bindings:
            log.info(
                "unregistered",
                aor=b.aor,
                contact=b.contact,
                source=request.source,
                expires=0,
                reason=reason,
            )


def _contact_spec(contact: NameAddr) -> ContactSpec:
    expires = contact.param("expires")
    q = contact.param("q")
    instance = contact.param("+sip.instance")
    return ContactSpec(
        uri=str(contact.uri),
        expires=_parse_expires(expires) if expires is not None else None,
        q=float(q) if q is not None else None,
        instance=instance.strip('"') if instance is not None else None,
    )


def _parse_expires(value: str) -> int:
    """Expires values are delta-seconds (RFC 3261 §20.19); huge values are clamped later."""
    value = value.strip()
    if not value.isdigit():
        raise ValueError(f"Invalid Expires {value!r}")
    return min(int(value), 2**32 - 1)


def _to_tag(request: SipRequest) -> str:
    # Deterministic per request: the same request always gets the same tag.
    digest = hashlib.blake2s(
        f"{request.headers.get('Call-ID')}|{request.headers.get('Via')}".encode(
            "utf-8", "surrogateescape"
        ),
        digest_size=8,
    )
    return digest.hexdigest()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\r", " ").replace("\n", " ")
    return (text[:80] or "Bad Request").capitalize() if text else "Bad Request"
