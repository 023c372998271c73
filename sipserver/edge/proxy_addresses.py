"""The edge's own addresses as its call proxy writes and recognises them (RFC 3261 §16; RFC 5658).

The proxy stands between two networks: callers reach it on its *outside* address (one port per
transport), media workers on its *inside* address (loopback). :class:`EdgeAddresses` builds the
Via and Record-Route entries naming the edge on either side and recognises Route entries that
name it (loose routing, §16.4), including those of an outside host it had before a reload.
Pure computation, sans-I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from sipserver.edge.calls import Endpoint
from sipserver.edge.proxy_headers import hostport_key
from sipserver.sip.headers import NameAddr

__all__ = ["EdgeAddresses"]


class EdgeAddresses:
    """The edge's outside and inside addresses, and the Route entries that are its own.

    Args:
        outside: the edge's address as callers reach it (public host and SIP port).
        inside: the edge's address as workers reach it (loopback).
        outside_ports: the edge's port per transport where it is not ``outside.port`` (the TLS
            listener's, usually 5061).
    """

    def __init__(
        self,
        outside: Endpoint,
        inside: Endpoint,
        outside_ports: Mapping[str, int] | None = None,
    ) -> None:
        self.outside = outside
        """The edge's address as callers reach it (Via and Record-Route towards them)."""
        self.inside = inside
        """The edge's address as workers reach it."""
        self._outside_ports = dict(outside_ports or {})
        self._own = {
            hostport_key(outside.host, outside.port),
            hostport_key(inside.host, inside.port),
            *(hostport_key(outside.host, port) for port in self._outside_ports.values()),
        }
        self._record_routes: dict[tuple[str, bool], tuple[str, ...]] = {}

    def set_outside_host(self, host: str) -> None:
        """Name ``host`` towards callers from now on; Route entries naming the previous host
        stay this edge's own (dialogs set up before keep working, RFC 3261 §16.4)."""
        self.outside = Endpoint(self.outside.transport, host, self.outside.port)
        for port in (self.outside.port, *self._outside_ports.values()):
            self._own.add(hostport_key(host, port))
        self._record_routes.clear()

    def outside_on(self, transport: str) -> Endpoint:
        """The edge's outside address on ``transport`` (its listener's port)."""
        port = self._outside_ports.get(transport, self.outside.port)
        return Endpoint(transport, self.outside.host, port)

    def record_routes_for(self, transport: str, secure: bool = False) -> tuple[str, ...]:
        """The edge's Record-Route entries for a caller on ``transport`` (RFC 5658 §4).

        The outside entry names the caller's transport and that listener's port, so that
        in-dialog requests come back the same way; one entry when it would equal the inside
        one. Towards a TLS caller it is ``sips:`` when the Request-URI was (RFC 3261 §16.6
        step 4: a SIPS Request-URI needs a SIPS Record-Route; RFC 5630: TLS on every hop
        of the dialog), else ``sip:...;transport=tls``: TLS on the hop to the edge only, which
        is what a ``sip:`` request over TLS asked for (RFC 5630).
        """
        cached = self._record_routes.get((transport, secure))
        if cached is not None:
            return cached
        inside = self.inside
        outside = self.outside_on(transport)
        entries: tuple[str, ...]
        if outside == inside:
            entries = (f"<sip:{inside.hostport};transport={inside.transport};lr>",)
        else:
            inner = f"<sip:{inside.hostport};transport={inside.transport};lr;r2=on>"
            if secure and transport == "tls":
                outer = f"<sips:{outside.hostport};lr;r2=on>"
            else:
                outer = f"<sip:{outside.hostport};transport={transport};lr;r2=on>"
            entries = (inner, outer)
        self._record_routes[(transport, secure)] = entries
        return entries

    def via(self, to: Endpoint, branch: str, *, toward_worker: bool) -> str:
        """The edge's Via: its inside address towards workers, outside towards callers (with
        the port of the caller's transport: ``SIP/2.0/TLS host:5061``, RFC 3261 §18.2.1)."""
        local = self.inside if toward_worker else self.outside_on(to.transport)
        return f"SIP/2.0/{to.transport.upper()} {local.hostport};branch={branch};rport"

    def is_own(self, route: str) -> bool:
        """True when the Route entry ``route`` names this edge (either side, any of its
        outside hosts); False for another host or an entry that does not parse."""
        try:
            uri = NameAddr.parse(route).uri
        except ValueError:
            return False
        # RFC 3261 §19.1.2 / RFC 3263 §4.2: sips: or transport=tls without a port means 5061.
        default = 5061 if uri.scheme == "sips" or uri.transport == "tls" else 5060
        return hostport_key(uri.host, uri.port or default) in self._own

    def pop_own_routes(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``items`` without the top Route entries naming this edge (RFC 3261 §16.4), at most
        two: both of its RFC 5658 double Record-Route entries."""
        out: list[tuple[str, str]] = []
        popping = True
        popped = 0
        for name, value in items:
            if name == "Route" and popping and popped < 2 and self.is_own(value):
                popped += 1
                continue
            if name == "Route":
                popping = False
            out.append((name, value))
        return out
