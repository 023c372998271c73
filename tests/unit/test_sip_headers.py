"""Structured header values: Via, name-addr, parameters, comma lists, Contact (RFC 3261 §20)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip.headers import (
    NameAddr,
    Via,
    format_params,
    parse_contacts,
    parse_params,
    split_comma_list,
    unquote,
)
from sipserver.sip.uri import SipUri

# ------------------------------------------------------------------ Via (RFC 3261 §20.42)


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        (
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
            ("SIP/2.0", "UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK1"),)),
        ),
        ("SIP/2.0/tcp host.example.com", ("SIP/2.0", "TCP", "host.example.com", None, ())),
        ("SIP/2.0/TLS h:5061;Branch=X", ("SIP/2.0", "TLS", "h", 5061, (("branch", "X"),))),
        (
            "SIP/2.0/WSS df7jal23ls0d.invalid;rport",
            ("SIP/2.0", "WSS", "df7jal23ls0d.invalid", None, (("rport", None),)),
        ),
        ("SIP/2.0/WS h;branch=b", ("SIP/2.0", "WS", "h", None, (("branch", "b"),))),
        ("SIP/2.0/SCTP h", ("SIP/2.0", "SCTP", "h", None, ())),
        (
            "SIP/2.0/UDP [2001:db8::9]:5070;received=2001:db8::10;rport=40000",
            (
                "SIP/2.0",
                "UDP",
                "[2001:db8::9]",
                5070,
                (("received", "2001:db8::10"), ("rport", "40000")),
            ),
        ),
        (
            "  SIP / 2.0 / UDP   h.example.com : 5062 ; branch = z9 ; maddr=239.1.1.1 ",
            ("SIP/2.0", "UDP", "h.example.com", 5062, (("branch", "z9"), ("maddr", "239.1.1.1"))),
        ),
        ("sip/2.0/udp h", ("SIP/2.0", "UDP", "h", None, ())),
        ("SIP/2.0/UDP\th;ttl=16", ("SIP/2.0", "UDP", "h", None, (("ttl", "16"),))),
        ('SIP/2.0/UDP h;x="a;b"', ("SIP/2.0", "UDP", "h", None, (("x", '"a;b"'),))),
    ],
)
def test_via_parse(value: str, fields: tuple[object, ...]) -> None:
    via = Via.parse(value)
    assert (via.protocol, via.transport, via.host, via.port, via.params) == fields


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Invalid Via"),
        ("SIP/2.0/UDP", "Invalid Via"),
        ("SIP/2.0 UDP h", "sent-protocol"),
        ("SIP//UDP h", "sent-protocol"),
        ("SIP/2.0/U(P h", "Invalid Via"),
        ("SIP/2.0/UDP h:0", "out of range"),
        ("SIP/2.0/UDP h:99999", "out of range"),
        ("SIP/2.0/UDP 2001:db8::1", "brackets"),
        ("SIP/2.0/UDP [2001:db8::1", "Unterminated IPv6"),
        ("SIP/2.0/UDP h;rport=abc", "Invalid rport"),
        ("SIP/2.0/UDP h;rport=123456", "Invalid rport"),
        ("SIP/2.0/UDP h;=x", "Invalid parameter"),
        ('SIP/2.0/UDP h;x="open', "Unterminated quoted"),
        ("SIP/2.0/UDP h h2", "Invalid host"),
    ],
)
def test_via_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Via.parse(value)


def test_via_properties() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKabc;received=192.0.2.7;rport=6000")
    assert via.branch == "z9hG4bKabc"
    assert via.received == "192.0.2.7"
    assert via.has_rport and via.rport == 6000
    assert via.sent_by == "10.0.0.1:5062"
    assert via.param("BRANCH") == "z9hG4bKabc" and via.has_param("Received")
    bare = Via.parse("SIP/2.0/UDP h;rport")
    assert bare.has_rport and bare.rport is None and bare.branch is None and bare.received is None
    assert bare.sent_by == "h"
    none = Via.parse("SIP/2.0/UDP h")
    assert not none.has_rport and none.rport is None


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        "SIP/2.0/TCP [2001:db8::1];branch=b;received=2001:db8::2",
        'SIP/2.0/WSS h;x="quoted;value"',
    ],
)
def test_via_str_round_trips(value: str) -> None:
    assert str(Via.parse(value)) == value


def test_via_with_params_for_rfc3581() -> None:
    # RFC 3261 §18.2.1 + RFC 3581 §4: received added, the empty rport filled in place.
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx")
    stamped = via.with_params(received="192.0.2.5", rport=40123)
    assert (
        str(stamped) == "SIP/2.0/UDP 10.0.0.1:5060;rport=40123;branch=z9hG4bKx;received=192.0.2.5"
    )
    assert stamped.rport == 40123 and stamped.received == "192.0.2.5"
    assert str(via) == "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx"
    again = stamped.with_params(received="192.0.2.6")
    assert again.received == "192.0.2.6" and len(again.params) == 3


# ------------------------------------------------------------------ name-addr (RFC 3261 §20.10)


@pytest.mark.parametrize(
    ("value", "display", "uri", "params"),
    [
        ("<sip:alice@example.com>", None, "sip:alice@example.com", ()),
        ("<sip:alice@example.com>;tag=88", None, "sip:alice@example.com", (("tag", "88"),)),
        ('"Alice" <sip:alice@example.com>', "Alice", "sip:alice@example.com", ()),
        (
            '"A \\"Q\\" \\\\ B" <sip:a@h>;tag=1',
            'A "Q" \\ B',
            "sip:a@h",
            (("tag", "1"),),
        ),
        ('"" <sip:a@h>', "", "sip:a@h", ()),
        ('"Bell, Alexander" <sip:a.g.bell@h>', "Bell, Alexander", "sip:a.g.bell@h", ()),
        ("Alice  Smith <sip:a@h>", "Alice Smith", "sip:a@h", ()),
        ("Zoë <sip:z@h>", "Zoë", "sip:z@h", ()),
        ("sip:a@h", None, "sip:a@h", ()),
        # In the bare form every parameter is a header parameter (RFC 3261 §20.10).
        ("sip:a@h;tag=5;transport=tcp", None, "sip:a@h", (("tag", "5"), ("transport", "tcp"))),
        ("<sip:a@h;transport=tcp>;tag=5", None, "sip:a@h;transport=tcp", (("tag", "5"),)),
        ("  <sip:a@h> ; tag = 5 ", None, "sip:a@h", (("tag", "5"),)),
        (
            '<sip:a@h>;+sip.instance="<urn:uuid:1234>";reg-id=1',
            None,
            "sip:a@h",
            (("+sip.instance", '"<urn:uuid:1234>"'), ("reg-id", "1")),
        ),
        (
            'sip:a@h;+sip.instance="<urn:uuid:1234>"',
            None,
            "sip:a@h",
            (("+sip.instance", '"<urn:uuid:1234>"'),),
        ),
        ("<sips:[2001:db8::1]:5061>", None, "sips:[2001:db8::1]:5061", ()),
    ],
)
def test_name_addr_parse(
    value: str, display: str | None, uri: str, params: tuple[object, ...]
) -> None:
    name_addr = NameAddr.parse(value)
    assert name_addr.display_name == display
    assert str(name_addr.uri) == uri
    assert name_addr.params == params


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"Alice <sip:a@h>', "Unterminated quoted display name"),
        ('"Alice" sip:a@h', "must be followed by <URI>"),
        ("<sip:a@h", "Unterminated <URI>"),
        ("Bell, Alexander <sip:a@h>", "Invalid display name"),
        ("Al;ce <sip:a@h>", "Invalid display name"),
        ("< sip:a@h >", "Unsupported URI scheme"),
        ("<tel:+1555>", "Unsupported URI scheme"),
        ("sip:a@h?Route=x", "must be enclosed in <>"),
        ("sip:a@h,sip:b@h", "must be enclosed in <>"),
        ("<sip:a@h> tag=1", "Unexpected"),
        ("<sip:a@h>;=1", "Invalid parameter"),
        ("", "Unsupported URI scheme"),
    ],
)
def test_name_addr_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NameAddr.parse(value)


def test_name_addr_str_and_helpers() -> None:
    name_addr = NameAddr.parse('"A \\"B\\"" <sip:a@h;lr>;TAG=x;foo')
    assert str(name_addr) == '"A \\"B\\"" <sip:a@h;lr>;tag=x;foo'
    assert NameAddr.parse(str(name_addr)) == name_addr
    assert name_addr.tag == "x" and name_addr.param("Tag") == "x"
    assert name_addr.has_param("foo") and name_addr.param("foo") is None
    assert str(NameAddr.parse("sip:a@h;tag=1")) == "<sip:a@h>;tag=1"
    tagged = NameAddr(None, SipUri.parse("sip:b@h")).with_params(tag="t2")
    assert str(tagged) == "<sip:b@h>;tag=t2" and tagged.tag == "t2"
    assert NameAddr.parse("<sip:a@h>").tag is None


# ------------------------------------------------------------------ lists and parameters


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a", ["a"]),
        ("", []),
        ("  ", []),
        ("a, b ,c", ["a", "b", "c"]),
        ("a,,b,", ["a", "b"]),
        ('"x, y" <sip:a@h>, <sip:b@h>', ['"x, y" <sip:a@h>', "<sip:b@h>"]),
        ('"x \\", y" <sip:a@h>, b', ['"x \\", y" <sip:a@h>', "b"]),
        ("<sip:a@h;p=1,2>, <sip:b@h>", ["<sip:a@h;p=1,2>", "<sip:b@h>"]),
        ('<sip:a@h>;x="1,2", <sip:b@h>', ['<sip:a@h>;x="1,2"', "<sip:b@h>"]),
        ('"unterminated, a', ['"unterminated, a']),
        ("SIP/2.0/UDP a;branch=1,SIP/2.0/UDP b", ["SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b"]),
    ],
)
def test_split_comma_list(value: str, items: list[str]) -> None:
    assert split_comma_list(value) == items


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", ()),
        (";lr", (("lr", None),)),
        ("lr;Transport=TCP", (("lr", None), ("transport", "TCP"))),
        (" ; a = 1 ; b ;c=", (("a", "1"), ("b", None), ("c", ""))),
        (';x="a;b=c";y=2', (("x", '"a;b=c"'), ("y", "2"))),
        (';x="a\\"b";y', (("x", '"a\\"b"'), ("y", None))),
        (";;a", (("a", None),)),
        (';+sip.instance="<urn:x>"', (("+sip.instance", '"<urn:x>"'),)),
    ],
)
def test_parse_params(text: str, params: tuple[object, ...]) -> None:
    assert parse_params(text) == params


@pytest.mark.parametrize("text", [";a b=1", ";(x)=1", ';x="open', ";=1", ';x="a"b'])
def test_parse_params_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_params(text)


def test_format_params() -> None:
    assert format_params((("lr", None), ("x", "1"), ("y", '"q"'))) == ';lr;x=1;y="q"'


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ('"abc"', "abc"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('""', ""),
        ("abc", "abc"),
        ('"', '"'),
        ('"trailing\\"', "trailing\\"),
    ],
)
def test_unquote(value: str, plain: str) -> None:
    assert unquote(value) == plain


# ------------------------------------------------------------------ Contact (RFC 3261 §20.10)


def test_parse_contacts() -> None:
    contacts = parse_contacts(
        [
            '"Desk" <sip:desk@192.0.2.1:5060>;expires=3600;q=0.8, <sip:cell@192.0.2.2>;q=1',
            '<sip:ws@df7jal23ls0d.invalid;transport=ws>;+sip.instance="<urn:uuid:abc>";reg-id=1',
            "sip:bare@192.0.2.3;expires=60",
        ]
    )
    assert contacts != "*"
    assert [str(c.uri) for c in contacts] == [
        "sip:desk@192.0.2.1:5060",
        "sip:cell@192.0.2.2",
        "sip:ws@df7jal23ls0d.invalid;transport=ws",
        "sip:bare@192.0.2.3",
    ]
    assert contacts[0].param("expires") == "3600" and contacts[0].param("q") == "0.8"
    assert contacts[2].param("+sip.instance") == '"<urn:uuid:abc>"'
    assert unquote(contacts[2].param("+sip.instance") or "") == "<urn:uuid:abc>"
    assert contacts[3].param("expires") == "60"
    assert parse_contacts([]) == []


@pytest.mark.parametrize("values", [["*"], [" * "], ["*", ""]])
def test_wildcard_contact(values: list[str]) -> None:
    assert parse_contacts(values) == "*"


@pytest.mark.parametrize("values", [["*, <sip:a@h>"], ["*", "<sip:a@h>"], ["*", "*"]])
def test_wildcard_must_stand_alone(values: list[str]) -> None:
    with pytest.raises(ValueError, match="Wildcard"):
        parse_contacts(values)


@pytest.mark.parametrize("q", ["0", "0.", "0.5", "0.123", "1", "1.0", "1.000", "0.000"])
def test_valid_q(q: str) -> None:
    contacts = parse_contacts([f"<sip:a@h>;q={q}"])
    assert contacts != "*" and contacts[0].param("q") == q


@pytest.mark.parametrize("q", ["1.1", "2", "0.1234", "-0.5", "abc", "", ".5", "1.001", "0.1a"])
def test_invalid_q(q: str) -> None:
    with pytest.raises(ValueError, match="q value"):
        parse_contacts([f"<sip:a@h>;q={q}"])


def test_bad_contact() -> None:
    with pytest.raises(ValueError):
        parse_contacts(["<sip:a@h"])


@given(st.text(max_size=80))
@settings(max_examples=400, deadline=None)
def test_parsers_raise_only_value_error(text: str) -> None:
    for parser in (Via.parse, NameAddr.parse, parse_params):
        with contextlib.suppress(ValueError):
            parser(text)
    with contextlib.suppress(ValueError):
        parse_contacts([text])
    split_comma_list(text)
    unquote(text)
