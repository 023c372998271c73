"""Tests for sipserver.registrar.acl."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from sipserver.registrar.acl import AllowList


def test_empty_list_allows_everyone() -> None:
    acl = AllowList([])
    assert acl.is_open
    assert not acl
    for ip in ("192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1"):
        assert acl.allows(ip)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("203.0.113.0", True),
        ("203.0.113.77", True),
        ("203.0.113.255", True),
        ("203.0.114.0", False),
        ("203.0.112.255", False),
        ("10.1.2.3", True),
        ("11.0.0.0", False),
        ("198.51.100.7", True),
        ("198.51.100.8", False),
        ("192.0.2.1", False),
    ],
)
def test_ipv4(ip: str, allowed: bool) -> None:
    acl = AllowList(["203.0.113.0/24", "10.0.0.0/8", "198.51.100.7/32"])
    assert acl
    assert not acl.is_open
    assert acl.allows(ip) is allowed
    assert acl.allows(ip) is allowed  # cached answer is the same


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("2001:db8::1", True),
        ("2001:DB8:0:0:ffff:ffff:ffff:ffff", True),
        ("2001:db8:0:1::1", False),
        ("fe80::1%eth0", True),
        ("fe80::2", False),
        ("192.0.2.1", False),
    ],
)
def test_ipv6(ip: str, allowed: bool) -> None:
    acl = AllowList(["2001:db8::/64", IPv6Network("fe80::1/128")])
    assert acl.allows(ip) is allowed


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("::ffff:10.0.0.1", True),
        ("::FFFF:10.255.255.255", True),
        ("::ffff:a00:1", True),
        ("::ffff:11.0.0.1", False),
        ("::10.0.0.1", False),  # IPv4-compatible (deprecated), not mapped
    ],
)
def test_ipv4_mapped_source_matches_ipv4_network(ip: str, allowed: bool) -> None:
    assert AllowList([IPv4Network("10.0.0.0/8")]).allows(ip) is allowed


def test_ipv4_mapped_network_matches_ipv4_source() -> None:
    acl = AllowList(["::ffff:10.0.0.0/104"])
    assert acl.allows("10.20.30.40")
    assert acl.allows("::ffff:10.20.30.40")
    assert not acl.allows("11.0.0.1")


@pytest.mark.parametrize(
    "ip", ["", "abc", "10.0.0.256", "10.0.0.1/32", " 10.0.0.1", "10.0.0", "2001:db8:::1"]
)
def test_unparseable_source_is_denied(ip: str) -> None:
    assert AllowList(["0.0.0.0/0", "::/0"]).allows(ip) is False


def test_whole_internet() -> None:
    acl = AllowList(["0.0.0.0/0"])
    assert acl.allows("1.2.3.4")
    assert acl.allows("::ffff:1.2.3.4")
    assert not acl.allows("2001:db8::1")


def test_overlapping_and_adjacent_networks_merge() -> None:
    acl = AllowList(["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/24", "10.0.2.0/24"])
    assert acl._v4 == ((0x0A000000, 0x0A000200), (0x0A0000FF, 0x0A0002FF))
    assert acl.allows("10.0.0.200")
    assert not acl.allows("10.0.1.1")
    assert acl.allows("10.0.2.1")


@pytest.mark.parametrize("bad", ["192.168.1.5/24", "10.0.0.0/33", "not-a-network"])
def test_invalid_network_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        AllowList([bad])


def test_networks_and_repr() -> None:
    acl = AllowList(["10.0.0.0/8", IPv6Network("2001:db8::/32")])
    assert acl.networks == (IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32"))
    assert repr(acl) == "AllowList(['10.0.0.0/8', '2001:db8::/32'])"


def test_decision_cache_is_bounded() -> None:
    acl = AllowList(["10.0.0.0/8"])
    for i in range(20_000):
        assert acl.allows(f"10.0.{i >> 8 & 255}.{i & 255}") is (i < 65536)
    assert 0 < len(acl._cache) <= 4096
