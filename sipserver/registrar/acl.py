"""Per-agent CIDR allow-lists, evaluated before authentication.

An :class:`AllowList` answers "may this source address talk to this agent?". It is consulted
for every request, so networks are compiled to sorted, merged integer ranges and recent
decisions are cached in a small bounded dict.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from typing import Final

__all__ = ["AllowList"]

_IPV4_MAPPED: Final = IPv6Network("::ffff:0:0/96")
_CACHE_SIZE: Final = 4096
_Ranges = tuple[tuple[int, ...], tuple[int, ...]]


def _merge(ranges: list[tuple[int, int]]) -> _Ranges:
    """Merge inclusive integer ranges into sorted disjoint (starts, ends)."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(ranges):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return tuple(starts), tuple(ends)


def _contains(ranges: _Ranges, value: int) -> bool:
    starts, ends = ranges
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


class AllowList:
    """A set of IPv4/IPv6 networks that may reach an agent; empty means everyone.

    IPv4-mapped IPv6 sources (``::ffff:10.0.0.1``, as seen on dual-stack sockets) match IPv4
    networks, and IPv4-mapped IPv6 networks (``::ffff:10.0.0.0/104``) match IPv4 sources.
    """

    __slots__ = ("_cache", "_networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[str | IPv4Network | IPv6Network]) -> None:
        """Compile the networks.

        Args:
            networks: CIDR strings (``"203.0.113.0/24"``, ``"2001:db8::/32"``; a bare address is
                a single host) or network objects.

        Raises:
            ValueError: On an invalid network, including one with host bits set.
        """
        parsed: list[IPv4Network | IPv6Network] = []
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for item in networks:
            net = ipaddress.ip_network(item) if isinstance(item, str) else item
            parsed.append(net)
            first, last = int(net.network_address), int(net.broadcast_address)
            if isinstance(net, IPv6Network) and net.subnet_of(_IPV4_MAPPED):
                v4.append((first & 0xFFFFFFFF, last & 0xFFFFFFFF))
            elif isinstance(net, IPv4Network):
                v4.append((first, last))
            else:
                v6.append((first, last))
        self._networks = tuple(parsed)
        self._v4 = _merge(v4)
        self._v6 = _merge(v6)
        self._cache: dict[str, bool] = {}

    @property
    def networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The networks as given."""
        return self._networks

    @property
    def is_open(self) -> bool:
        """True when the list is empty and so allows every address."""
        return not self._networks

    def __bool__(self) -> bool:
        """True when the list restricts sources (has at least one network), like a container."""
        return bool(self._networks)

    def __repr__(self) -> str:
        return f"AllowList({[str(n) for n in self._networks]!r})"

    def allows(self, ip: str) -> bool:
        """Whether a source address may proceed.

        Args:
            ip: Source address as text, IPv4 or IPv6 (a ``%zone`` suffix is ignored).

        Returns:
            True for any address when the list is empty; otherwise True when the address
            falls in one of the networks. An unparseable string is never allowed by a
            non-empty list.
        """
        if not self._networks:
            return True
        cache = self._cache
        decision = cache.get(ip)
        if decision is None:
            decision = self._decide(ip)
            if len(cache) >= _CACHE_SIZE:
                # Cheap bound: a flood of distinct sources just restarts the cache.
                cache.clear()
            cache[ip] = decision
        return decision

    def _decide(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            if mapped is None:
                return _contains(self._v6, int(addr))
            addr = mapped
        return _contains(self._v4, int(addr))
