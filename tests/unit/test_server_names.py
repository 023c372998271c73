"""Tests for sipserver.registrar.server_names: which hosts and digest uris name this server."""

from __future__ import annotations

import pytest

from sipserver.registrar.server_names import ServerNames

# Listening on 127.0.0.1:5060 and [::1]:5080, serving sip.example.com (realm/public_host).
NAMES = ServerNames.build(
    ["sip.example.com", "127.0.0.1", "[::1]", "localhost"], ports=[5060, 5080]
)


def test_build_classifies_names_and_addresses() -> None:
    assert NAMES.domains == {"sip.example.com", "localhost"}
    assert NAMES.addresses == {"127.0.0.1", "::1"}
    assert not NAMES.any_address
    assert NAMES.ports == {5060, 5080}
    assert ServerNames.build(["0.0.0.0"]).any_address
    assert ServerNames.build(["::"]).any_address


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("sip.example.com", True),
        ("SIP.Example.COM", True),
        ("127.0.0.1", True),
        ("[::1]", True),
        ("::1", True),
        ("[::ffff:127.0.0.1]", True),  # IPv4-mapped: the same address
        ("[0:0::1]", True),  # another spelling of ::1
        ("127.0.0.2", False),
        ("other.example.com", False),
        ("sip.example.com.evil", False),
    ],
)
def test_is_local_host(host: str, local: bool) -> None:
    assert NAMES.is_local_host(host) is local


def test_wildcard_listener_makes_every_ip_literal_local() -> None:
    names = ServerNames.build(["0.0.0.0", "sip.example.com"], ports=[5060])
    assert names.is_local_host("198.51.100.7")
    assert names.is_local_host("[2001:db8::1]")
    assert not names.is_local_host("other.example.com")
    assert names.names_uri("sip:198.51.100.7:5060")
    assert not names.names_uri("sip:198.51.100.7:5070")


@pytest.mark.parametrize(
    ("uri", "names"),
    [
        # The server's host and port, as SIPp sends by default.
        ("sip:127.0.0.1:5060", True),
        ("sip:sip.example.com:5080", True),
        # Any user part, or none.
        ("sip:+15005550100@127.0.0.1:5060", True),
        ("sip:alice@sip.example.com", True),
        ("sip:alice:secret@sip.example.com", True),
        ("sips:sip.example.com", True),
        # Parameters other than maddr do not matter; maddr must name us too.
        ("sip:127.0.0.1:5060;transport=tcp", True),
        ("sip:sip.example.com;maddr=127.0.0.1", True),
        ("sip:sip.example.com;maddr=192.0.2.1", False),
        # No port: 5060 for an IP literal (a listener port here), 5061 for sips (not one);
        # a domain name may map to any port through SRV (RFC 3263).
        ("sip:127.0.0.1", True),
        ("sips:127.0.0.1", False),
        ("SIP:SIP.EXAMPLE.COM", True),
        # Wrong host.
        ("sip:other.example.com:5060", False),
        ("sip:alice@192.0.2.1:5060", False),
        ("sip:sip.example.com.evil:5060", False),
        # Wrong port.
        ("sip:127.0.0.1:5070", False),
        ("sip:sip.example.com:5061", False),
        # IPv6, with brackets and in SIPp's form without them.
        ("sip:[::1]:5080", True),
        ("sip:+15005550100@[::1]:5080", True),
        ("sip:[::1]:5070", False),
        ("sip:[::2]:5080", False),
        ("sip:::1:5080", True),
        ("sip:+15005550100@::1:5080", True),
        ("sip:::1:5070", False),
        ("sip:::2:5080", False),
        # Not a SIP URI naming anything.
        ("tel:+15005550100", False),
        ("sip:", False),
        ("sip:@127.0.0.1", False),
        ("sip:127.0.0.1:99999", False),
        ("", False),
    ],
)
def test_names_uri(uri: str, names: bool) -> None:
    assert NAMES.names_uri(uri) is names


def test_remembered_answers_stay_right_past_the_memory_bound() -> None:
    names = ServerNames.build(["sip.example.com", "127.0.0.1"], ports=[5060])
    # Asked twice each, through more distinct hosts than the memory holds (it starts afresh).
    hosts = [f"10.0.{i // 256}.{i % 256}" for i in range(3000)] + ["127.0.0.1", "::ffff:127.0.0.1"]
    for _ in range(2):
        assert [h for h in hosts if names.is_local_host(h)] == ["127.0.0.1", "::ffff:127.0.0.1"]
        assert names.is_local_host("SIP.EXAMPLE.com")
        assert not names.is_local_host("other.example.com")
    # The memory is not part of the value.
    assert names == ServerNames.build(["sip.example.com", "127.0.0.1"], ports=[5060])
    assert hash(names) == hash(ServerNames.build(["sip.example.com", "127.0.0.1"], ports=[5060]))
