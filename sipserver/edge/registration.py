"""REGISTER at the edge: sans-I/O, RFC 3261 §10.3 in front of the registrar.

The pipeline, in the order a scanner must not be able to read anything from: domain check ->
ban -> CIDR allow-lists (before credentials the answer depends on the source, never on whether
the address of record exists) -> digest (401 challenge, stale nonces, failures counted toward a
ban) -> the credentials must be the AOR owner's -> the owner's allow-list -> the registrar.
A 200 whose binding changes are not yet committed to the store comes back as
:class:`PendingCommit`: the router holds it until the commit (docs/registrar.md).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from sipserver.config import Config
from sipserver.edge.replies import Peer, Reply, count_refusal, response_to, unavailable
from sipserver.edge.sip_agents import SipAgents
from sipserver.observability import Metrics, RefusalLog, debug_logged, get_logger, info_logged
from sipserver.registrar.auth import AuthOutcome, DigestAuthenticator, FailureTracker
from sipserver.registrar.bindings import Binding
from sipserver.registrar.registrar import (
    ContactSpec,
    RegisterRequest,
    RegisterResult,
    Registrar,
)
from sipserver.registrar.server_names import ServerNames
from sipserver.sip.headers import NameAddr, parse_contacts
from sipserver.sip.message import SipRequest

__all__ = [
    "AUTH_FAILURES_THAT_BAN",
    "AUTH_OUTCOMES_RECHALLENGED",
    "PendingCommit",
    "RegisterHandler",
    "answered_statelessly",
    "log_binding_changes",
    "log_expired",
]

log = get_logger(__name__)

#: Outcomes that count toward a ban: a wrong password, or a user name that does not exist.
AUTH_FAILURES_THAT_BAN: Final = frozenset({AuthOutcome.BAD_PASSWORD, AuthOutcome.UNKNOWN_USER})
#: Outcomes answered with a fresh challenge (``stale=false``), counted in the auth-failure
#: metric but never toward a ban: a nonce this process did not issue (a restart), a re-sent
#: Authorization, or credentials for another realm. RFC 3261 §22.1 (a realm names a protection
#: domain; credentials are computed for the realm of the challenge) and §20.28 (credentials are
#: for the server whose realm they name): they say nothing about the password, and a phone that
#: cached credentials for the realm before a reload changed it (the realm follows
#: ``server.public_host``) must get the new realm's challenge, not a 403 and then a ban.
AUTH_OUTCOMES_RECHALLENGED: Final = frozenset(
    {AuthOutcome.INVALID_NONCE, AuthOutcome.REPLAY, AuthOutcome.WRONG_REALM}
)


def answered_statelessly(request: SipRequest) -> bool:
    """A REGISTER without credentials: :meth:`RegisterHandler.handle` answers it with a
    challenge or a 403 and changes no binding, so the router keeps no server transaction for
    it (RFC 3261 §8.2.7: a flood of them must not leave 32 s of state each, §26.1.5)."""
    return request.method == "REGISTER" and "Authorization" not in request.headers


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """A 200 that must wait for the store's changes up to ``ticket`` to be committed."""

    ticket: int
    response: bytes
    result: RegisterResult
    register: RegisterRequest


class RegisterHandler:
    """Answers REGISTER requests (see the module docstring for the order of the checks).

    Args:
        config: the configuration (realm, ban settings).
        registrar: REGISTER semantics and the bindings store.
        authenticator: digest challenges and verification.
        tracker: authentication failures and bans per source address (shared with INVITE).
        metrics: Prometheus metrics.
        names: the names this server answers to (a Request-URI's domain check).
        agents: the SIP agents, indexed.
        backlog_full: whether the 200s waiting for a commit fill their table (a stalled store
            refuses new registrations instead of holding them without bound).
        refusals: where refusals are counted and logged.
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
        agents: SipAgents,
        backlog_full: Callable[[], bool],
        refusals: RefusalLog | None,
    ) -> None:
        self._realm = config.server.effective_realm
        self._ban = config.server.sip.ban
        self.registrar = registrar
        self._auth = authenticator
        self.tracker = tracker
        self._metrics = metrics
        self._results = metrics.register_requests
        self._names = names
        self._agents = agents
        self._backlog_full = backlog_full
        self.refusals = refusals
        self._date_second = -1
        self._date_text = ""

    def handle(
        self, request: SipRequest, peer: Peer, *, now: float, wall: float
    ) -> Reply | PendingCommit:
        """Answer one REGISTER (a new server transaction) from ``peer``.

        Args:
            request: the REGISTER.
            peer: where it came from.
            now: monotonic seconds (nonces, bans).
            wall: wall-clock epoch seconds (binding expiry, the Date header).
        """
        metrics = self._metrics
        if not self._names.is_local_host(request.request_uri().host):
            # RFC 3261 §10.3 step 1: this registrar has no bindings for that domain.
            self._count("foreign_domain")
            return response_to(request, 403, "Domain Not Served")
        if self.tracker.is_banned(peer.host, now=now):
            self._count("banned")
            metrics.banned_requests.inc()
            count_refusal(self.refusals, "banned", None, peer.host, "REGISTER")
            return response_to(request, 403)
        to = request.to()
        aor_user = to.uri.user or ""
        agent = self._agents.for_aor(aor_user)
        # As for INVITE: before credentials, the answer depends on the source, not on whether
        # the address of record exists or which agent's allow-list it is under.
        if self._agents.enabled and not self._agents.allowing(peer.host):
            self._count("acl_denied")
            count_refusal(self.refusals, "acl_denied", None, peer.host, "REGISTER")
            log.info("register_acl_denied", agent=agent.slug if agent else None, source=peer.host)
            return response_to(request, 403, "Source Address Not Allowed")

        authorization = request.headers.get("Authorization")
        if authorization is None:
            # Nothing below changes a binding: the router answers this one statelessly
            # (answered_statelessly).
            self._count("challenged")
            return self._challenge(request, now=now, stale=False)
        result = self._auth.verify(
            authorization, method="REGISTER", request_uri=request.uri, now=now
        )
        outcome = result.outcome
        if outcome is not AuthOutcome.OK:
            return self._auth_failed(request, peer, outcome, result.username, now=now)
        # The credentials are good; they must be the credentials of the agent owning the AOR.
        owner = self._agents.by_username.get(result.username or "")
        if owner is None or (agent is not None and owner.slug != agent.slug) or agent is None:
            self._count("forbidden_aor")
            metrics.auth_failures.labels("aor_mismatch").inc()
            log.info("register_aor_mismatch", user=result.username, aor=aor_user, source=peer.host)
            return response_to(request, 403, "Not Your Address-of-Record")
        if not self._agents.allows(agent, peer.host):
            self._count("acl_denied")
            count_refusal(self.refusals, "acl_denied", agent, peer.host, "REGISTER")
            log.info("register_acl_denied", agent=agent.slug, source=peer.host)
            return response_to(request, 403, "Source Address Not Allowed")

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
        if self._backlog_full():
            # The store has not committed for a long while (a stalled disk): refuse rather
            # than hold without bound; nothing was changed.
            self._count("not_stored")
            if self.refusals is not None:
                self.refusals.refuse("sip", "bindings_backlog", source=peer.host)
            return unavailable(request, "bindings backlog")
        outcome_reg = self.registrar.handle_register(register, now=wall)
        if outcome_reg.status != 200:
            self._count("interval_too_brief" if outcome_reg.status == 423 else "rejected")
            extra: tuple[tuple[str, str], ...] = ()
            if outcome_reg.min_expires is not None:
                extra = (("Min-Expires", str(outcome_reg.min_expires)),)
            return response_to(request, outcome_reg.status, outcome_reg.reason, headers=extra)
        headers: list[tuple[str, str]] = [
            ("Contact", f"<{b.contact}>;expires={b.expires_in(wall)}") for b in outcome_reg.bindings
        ]
        headers.extend(("Path", p) for p in register.path)
        headers.append(("Date", self._date(wall)))
        reply = response_to(request, 200, headers=headers)
        ticket = self.registrar.store.pending_commit()
        if ticket is not None:
            # The 200 reflects changes not yet on disk (this request's, or earlier ones a
            # query reports): it waits for their commit (see release_committed).
            return PendingCommit(ticket, reply[1], outcome_reg, register)
        self._count("ok")
        log_binding_changes(outcome_reg, register, wall=wall)
        return reply

    def _auth_failed(
        self,
        request: SipRequest,
        peer: Peer,
        outcome: AuthOutcome,
        username: str | None,
        *,
        now: float,
    ) -> Reply:
        metrics = self._metrics
        reason = outcome.name.lower()
        if outcome is AuthOutcome.STALE_NONCE:
            # RFC 7616 §3.3: the password was right, only the nonce aged; no failure counted.
            self._count("stale")
            return self._challenge(request, now=now, stale=True)
        metrics.auth_failures.labels(reason).inc()
        if outcome in AUTH_OUTCOMES_RECHALLENGED:
            # A nonce from before a restart, a re-sent Authorization, or credentials for
            # another realm: challenge afresh, in ours.
            self._count("challenged")
            return self._challenge(request, now=now, stale=False)
        if outcome in AUTH_FAILURES_THAT_BAN and self.tracker.record_failure(peer.host, now=now):
            metrics.bans.inc()
            log.warning(
                "source_banned",
                source=peer.host,
                user=username,
                reason=reason,
                max_failures=self._ban.max_failures,
                duration=self._ban.duration,
            )
        log.info("register_auth_failed", source=peer.host, user=username, reason=reason)
        self._count("auth_failed")
        count_refusal(self.refusals, "auth_failed", None, peer.host, "REGISTER")
        if outcome is AuthOutcome.MALFORMED:
            return response_to(request, 400, "Malformed Authorization")
        return response_to(request, 403)

    def _challenge(self, request: SipRequest, *, now: float, stale: bool) -> Reply:
        # A pre-rendered template: the same text as DigestChallenge.to_header() of challenge().
        header = ("WWW-Authenticate", self._auth.challenge_header(now=now, stale=stale))
        return response_to(request, 401, headers=(header,))

    def _count(self, result: str) -> None:
        """Count one REGISTER outcome (the compiled counter, called directly)."""
        self._results.inc((result,))

    def _date(self, now: float) -> str:
        """RFC 3261 §20.17 Date (RFC 1123 form), rendered once per second."""
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_text = email.utils.formatdate(second, usegmt=True)
        return self._date_text


def log_binding_changes(result: RegisterResult, request: RegisterRequest, *, wall: float) -> None:
    """One line per binding a REGISTER changed, like Asterisk's "Added contact": ``registered``
    and ``unregistered`` at info, a refresh of an existing contact at debug (phones refresh
    every few minutes; that is no news to an operator)."""
    # Skipped whole below info: structlog would drop each line, but only after a call through its
    # lazy proxy that binds a logger and builds the fields (~11 k instructions a registration).
    if not info_logged():
        return
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
    # A refresh (most REGISTERs) logs at debug: its fields are not even built otherwise.
    for b in result.refreshed_bindings if debug_logged() else ():
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


def log_expired(bindings: Iterable[Binding]) -> None:
    """One ``unregistered`` line (reason ``expired``) per binding the registrar expired."""
    for binding in bindings:
        log.info(
            "unregistered",
            aor=binding.aor,
            contact=binding.contact,
            source=binding.source,
            expires=0,
            reason="expired",
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


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
