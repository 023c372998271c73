"""The SIP edge's sans-I/O parts built from the configuration (``server.sip``, agents).

The server builds its ban tracker and call proxy once, and a registrar and digest
authenticator for each configuration it runs (start and every reload), then hands them to
:class:`~sipserver.edge.router.SipRouter`.
"""

from __future__ import annotations

from sipserver.config import Config
from sipserver.edge.proxy import CallProxy, Endpoint
from sipserver.registrar.auth import DigestAuthenticator, FailureTracker, NonceManager
from sipserver.registrar.bindings import BindingStore
from sipserver.registrar.registrar import Registrar, RegistrarPolicy
from sipserver.registrar.server_names import ServerNames
from sipserver.sip.digest import DigestAlgorithm

__all__ = ["build_authenticator", "build_call_proxy", "build_failure_tracker", "build_registrar"]


def build_failure_tracker(config: Config) -> FailureTracker:
    """The tracker of failed logins and bans (``server.sip.ban``)."""
    ban = config.server.sip.ban
    return FailureTracker(
        max_failures=ban.max_failures,
        window=ban.window,
        ban_duration=ban.duration,
        max_sources=ban.max_tracked_sources,
    )


def build_call_proxy(config: Config) -> CallProxy | None:
    """The call proxy, on the first UDP listener (workers speak UDP on loopback); None without
    a UDP listener."""
    udp = config.server.sip.udp_addresses
    if not udp:
        return None
    host, port = udp[0]
    inside_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    outside_host = config.server.public_host
    tls = config.server.sip.tls_addresses
    return CallProxy(
        outside=Endpoint("udp", outside_host, port),
        inside=Endpoint("udp", inside_host, port),
        outside_ports={"tls": tls[0][1]} if tls else None,
    )


def build_registrar(config: Config, store: BindingStore) -> Registrar:
    """The registrar of ``config`` (``server.sip`` expiry and contact limits) over ``store``."""
    sip = config.server.sip
    return Registrar(
        store,
        RegistrarPolicy(
            min_expires=sip.min_expires,
            max_expires=sip.max_expires,
            default_expires=sip.default_expires,
            max_contacts=sip.max_contacts_per_aor,
        ),
    )


def build_authenticator(
    config: Config, nonces: NonceManager, names: ServerNames
) -> DigestAuthenticator:
    """The digest authenticator of ``config``: the agents' SIP credentials, the realm and
    algorithms, and (``server.sip.digest_uri_check: server``) the digest uris it accepts.

    Args:
        config: the configuration.
        nonces: the server's nonces (they outlive a reload).
        names: the names the router serves: a Request-URI it serves and a digest uri the
            authenticator accepts are judged alike.
    """
    sip = config.server.sip
    passwords = {
        a.sip.username: a.sip.password
        for a in config.agents
        if a.sip.enabled and a.sip.username and a.sip.password
    }
    return DigestAuthenticator(
        realm=config.server.effective_realm,
        algorithms=[DigestAlgorithm(a) for a in sip.digest_algorithms],
        nonces=nonces,
        password_for=passwords.get,
        uri_names_server=names.names_uri if sip.digest_uri_check == "server" else None,
    )
