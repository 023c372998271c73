"""The names this server answers to: served domains, listener addresses and ports.

Sans-I/O: built once from the configuration, then asked two questions:

- :meth:`ServerNames.is_local_host`: is a Request-URI host one of ours (RFC 3261 §10.3 step 1,
  §16.4)? Ports are not compared; the listener that received the request was ours.
- :meth:`ServerNames.names_uri`: does a digest ``uri`` parameter name this server? RFC 7616
  §3.4.6 wants the ``uri`` to identify the Request-URI, but deployed user agents and test tools
  put the server there instead (SIPp's default ``uri="sip:<remote host>:<remote port>"``, sent
  with an INVITE to ``sip:+15005550100@<host>:<port>``), and Kamailio's ``proxy_authorize`` and
  Asterisk accept it. A uri names this server when its host is one of ours and its port, when
  given, is a listener port; the user part and the parameters other than ``maddr`` do not
  matter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from sipserver.sip.uri import SipUri

__all__ = ["ServerNames"]

#: RFC 3263 §4.2: a URI naming an IP literal without a port means 5060 (5061 for sips).
_DEFAULT_PORTS: Final = {"sip": 5060, "sips": 5061}
#: Hosts whose answer :meth:`ServerNames.is_local_host` remembers (every REGISTER and INVITE
#: asks about its Request-URI host, nearly always one of a handful); past it the memory starts
#: afresh, so hosts sent to churn it cost a parse each, as without it.
_LOCAL_HOST_MEMORY: Final = 1024


def _ip_key(host: str) -> str | None:
    """The canonical text of an IP literal (brackets stripped, IPv4-mapped IPv6 as IPv4), or
    None when ``host`` is a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True, slots=True)
class ServerNames:
    """How this server names itself. Build it with :meth:`build`."""

    domains: frozenset[str]
    """Host names, lower-cased."""
    addresses: frozenset[str]
    """IP addresses in canonical text (no brackets)."""
    any_address: bool
    """A listener is bound to a wildcard address (``0.0.0.0``, ``::``): every IP literal is
    ours (the interfaces' addresses are not enumerated; the router has always taken it so)."""
    ports: frozenset[int]
    """Listener ports (UDP and TCP)."""
    _local: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    """The answers of :meth:`is_local_host` so far (an IP literal costs an ``ipaddress``
    parse): a cache, not state; the names themselves never change."""

    @classmethod
    def build(cls, hosts: Iterable[str], ports: Iterable[int] = ()) -> ServerNames:
        """Classify host names and addresses.

        Args:
            hosts: Served domains, public host, realm, listener addresses (IPv6 with or without
                brackets); a wildcard address sets :attr:`any_address`.
            ports: Listener ports.

        Returns:
            The names.
        """
        domains: set[str] = set()
        addresses: set[str] = set()
        any_address = False
        for host in hosts:
            key = _ip_key(host)
            if key is None:
                if host:
                    domains.add(host.lower())
            elif ipaddress.ip_address(key).is_unspecified:
                any_address = True
            else:
                addresses.add(key)
        return cls(frozenset(domains), frozenset(addresses), any_address, frozenset(ports))

    def is_local_host(self, host: str) -> bool:
        """Whether ``host`` (a name or an IP literal, IPv6 with or without brackets) is ours.

        Args:
            host: The host part of a URI.

        Returns:
            True for a served domain, a listener address, or any IP literal while a listener
            is bound to a wildcard address.
        """
        local = self._local.get(host)
        if local is None:
            local = self._is_local_host(host)
            if len(self._local) >= _LOCAL_HOST_MEMORY:
                self._local.clear()
            self._local[host] = local
        return local

    def _is_local_host(self, host: str) -> bool:
        if host.lower() in self.domains:
            return True
        key = _ip_key(host)
        if key is None:
            return False
        return self.any_address or key in self.addresses

    def names_uri(self, uri: str) -> bool:
        """Whether a digest ``uri`` parameter names this server (see the module docstring).

        Args:
            uri: The ``uri`` of an Authorization or Proxy-Authorization header.

        Returns:
            True for a ``sip:``/``sips:`` URI, with any user part or none, whose host is ours and
            whose port is a listener port. A missing port means 5060 (5061 for sips) with an IP
            literal and is accepted with a domain name (RFC 3263 SRV may point anywhere). A
            ``maddr`` parameter must name us too. Other schemes and unparseable URIs: False.
        """
        return any(self._names(parsed) for parsed in _parse_lenient(uri.strip()))

    def _names(self, uri: SipUri) -> bool:
        if not self.is_local_host(uri.host):
            return False
        for name, value in uri.params:
            if name == "maddr" and not (value and self.is_local_host(value)):
                return False
        port = uri.port
        if port is None:
            if _ip_key(uri.host) is None:
                return True
            port = _DEFAULT_PORTS[uri.scheme]
        return port in self.ports


def _parse_lenient(uri: str) -> list[SipUri]:
    """``uri`` parsed, also in SIPp's IPv6 form without brackets (``sip:::1:5060``).

    Without brackets the last group may be a port or part of the address, so both readings are
    returned; an empty list when neither parses.
    """
    try:
        return [SipUri.parse(uri)]
    except ValueError:
        pass
    scheme, _, rest = uri.partition(":")
    user, at, hostpart = rest.rpartition("@")
    prefix = f"{scheme}:{user}{at}"
    end = len(hostpart)
    for sep in ";?":
        cut = hostpart.find(sep)
        if 0 <= cut < end:
            end = cut
    hostport, tail = hostpart[:end], hostpart[end:]
    if hostport.count(":") < 2 or "[" in hostport:
        return []
    address, _, last = hostport.rpartition(":")
    readings = [f"[{hostport}]", f"[{address}]:{last}"]
    parsed = []
    for reading in readings:
        try:
            parsed.append(SipUri.parse(prefix + reading + tail))
        except ValueError:
            continue
    return parsed
