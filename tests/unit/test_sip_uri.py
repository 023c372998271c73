"""SIP URIs (RFC 3261 §19.1): parsing, formatting, AOR keys and comparison."""

from __future__ import annotations

import contextlib
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip.uri import SipUri, ascii_digits, split_host_port, uri_equal


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("sip:alice@example.com", ("sip", "alice", None, "example.com", None, (), ())),
        ("SIP:alice@Example.COM", ("sip", "alice", None, "Example.COM", None, (), ())),
        ("sips:bob@example.com:5061", ("sips", "bob", None, "example.com", 5061, (), ())),
        ("sip:example.com", ("sip", None, None, "example.com", None, (), ())),
        ("sip:192.0.2.1:5060", ("sip", None, None, "192.0.2.1", 5060, (), ())),
        ("sip:[::1]", ("sip", None, None, "[::1]", None, (), ())),
        ("sip:u@[2001:db8::1]:5070", ("sip", "u", None, "[2001:db8::1]", 5070, (), ())),
        ("sip:u:secret@h", ("sip", "u", "secret", "h", None, (), ())),
        ("sip:u:@h", ("sip", "u", "", "h", None, (), ())),
        (
            "sip:u@h;transport=TCP;lr;Maddr=239.255.255.1",
            (
                "sip",
                "u",
                None,
                "h",
                None,
                (("transport", "TCP"), ("lr", None), ("maddr", "239.255.255.1")),
                (),
            ),
        ),
        (
            "sip:u@h?Subject=hi%20there&Priority=urgent",
            ("sip", "u", None, "h", None, (), (("Subject", "hi%20there"), ("Priority", "urgent"))),
        ),
        (
            "sip:+1555;isub=1;postd=pp22@gw.example.com;user=phone",
            (
                "sip",
                "+1555;isub=1;postd=pp22",
                None,
                "gw.example.com",
                None,
                (("user", "phone"),),
                (),
            ),
        ),
        (
            "sip:%61lice%40home@example.com",
            ("sip", "%61lice%40home", None, "example.com", None, (), ()),
        ),
        ("sip:a?b@example.com", ("sip", "a?b", None, "example.com", None, (), ())),
        ("sip:my_host.example-1.com", ("sip", None, None, "my_host.example-1.com", None, (), ())),
        ("sip:h;p=", ("sip", None, None, "h", None, (("p", ""),), ())),
    ],
)
def test_parse(text: str, fields: tuple[object, ...]) -> None:
    uri = SipUri.parse(text)
    assert (
        uri.scheme,
        uri.user,
        uri.password,
        uri.host,
        uri.port,
        uri.params,
        uri.headers,
    ) == fields


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:bob:pw@example.com:5061;transport=tls;lr?h=v&x=y",
        "sip:[2001:db8::1]:5070;maddr=[2001:db8::2]",
        "sip:+1555;isub=1@gw;user=phone",
        "sip:%61@h",
    ],
)
def test_str_round_trips(text: str) -> None:
    assert str(SipUri.parse(text)) == text


def test_param_names_are_lower_cased_values_kept() -> None:
    uri = SipUri.parse("sip:h;Transport=TCP;LR")
    assert str(uri) == "sip:h;transport=TCP;lr"
    assert uri.param("TRANSPORT") == "TCP" and uri.transport == "tcp"
    assert uri.has_param("lr") and uri.param("lr") is None
    assert not uri.has_param("maddr") and uri.param("maddr") is None
    assert SipUri.parse("sip:h").transport is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tel:+15551234", "Unsupported URI scheme"),
        ("http://example.com", "Unsupported URI scheme"),
        ("alice@example.com", "Unsupported URI scheme"),
        ("", "Unsupported URI scheme"),
        ("sip:", "Empty host"),
        ("sip:alice@", "Empty host"),
        ("sip:@example.com", "Empty user part"),
        ("sip::pw@example.com", "Empty user part"),
        ("sip:alice@example.com:0", "out of range"),
        ("sip:alice@example.com:65536", "out of range"),
        ("sip:alice@example.com:", "Invalid port"),
        ("sip:alice@example.com:50a", "Invalid port"),
        ("sip:alice@example.com:123456", "Invalid port"),
        ("sip:alice@[::1", "Unterminated IPv6 reference"),
        ("sip:alice@[::g]", "Invalid IPv6 reference"),
        ("sip:alice@[192.0.2.1]", "Invalid IPv6 reference"),
        ("sip:alice@[::1]x", "after IPv6 reference"),
        ("sip:alice@2001:db8::1", "must be enclosed in brackets"),
        ("sip:alice@exa mple.com", "Invalid character"),
        ("sip:alice@example.com>", "Invalid character"),
        ("sip:ali\u00e7e@example.com", "Invalid character"),
        ("sip:alice@exa!mple.com", "Invalid host"),
        ("sip:alice@example.com;", "Invalid URI parameter"),
        ("sip:alice@example.com;a b", "Invalid character"),
        ("sip:alice@example.com;=x", "Invalid URI parameter"),
        ("sip:alice@example.com?novalue", "Invalid URI header"),
        ("sip:alice@example.com?=v", "Invalid URI header"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SipUri.parse(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com", "example.com", None),
        ("example.com:5060", "example.com", 5060),
        ("[::1]", "[::1]", None),
        ("[::1]:1", "[::1]", 1),
        ("10.0.0.1:65535", "10.0.0.1", 65535),
    ],
)
def test_split_host_port(text: str, host: str, port: int | None) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "aor"),
    [
        ("sip:Alice@Example.COM:5070;transport=tcp?x=y", "sip:Alice@example.com"),
        ("SIPS:bob:pw@EXAMPLE.com", "sips:bob@example.com"),
        ("sip:%61lice@example.com", "sip:alice@example.com"),
        ("sip:example.com;lr", "sip:example.com"),
        ("sip:+1555;isub=1@[2001:DB8::1]", "sip:+1555;isub=1@[2001:db8::1]"),
    ],
)
def test_aor(text: str, aor: str) -> None:
    assert SipUri.parse(text).aor() == aor


@pytest.mark.parametrize(
    ("text", "is_ip"),
    [
        ("sip:192.0.2.1", True),
        ("sip:[::1]", True),
        ("sip:example.com", False),
        ("sip:1.2.3", False),
    ],
)
def test_host_is_ip(text: str, is_ip: bool) -> None:
    assert SipUri.parse(text).host_is_ip is is_ip


def test_with_and_without_params() -> None:
    uri = SipUri.parse("sip:a@h;transport=udp;lr")
    changed = uri.with_params(transport="tcp", ob=None, ttl=5)
    assert str(changed) == "sip:a@h;transport=tcp;lr;ob;ttl=5"
    assert str(changed.without_params("LR", "ttl")) == "sip:a@h;transport=tcp;ob"
    assert str(uri) == "sip:a@h;transport=udp;lr"  # immutable


def test_parse_is_memoised_but_values_are_immutable() -> None:
    first = SipUri.parse("sip:memo@example.com")
    assert SipUri.parse("sip:memo@example.com") is first
    with pytest.raises(AttributeError):
        first.host = "other"  # type: ignore[misc]


# RFC 3261 §19.1.4: equivalent and non-equivalent pairs (written for this project).
EQUAL = [
    (
        "sip:%61lice@atlanta.example.com;transport=TCP",
        "sip:alice@AtLanTa.Example.COM;Transport=tcp",
    ),
    ("sip:carol@chicago.example.com", "sip:carol@chicago.example.com;newparam=5"),
    ("sip:carol@chicago.example.com;security=on", "sip:carol@chicago.example.com;newparam=5"),
    ("sip:bob@biloxi.example.com;lr", "sip:bob@biloxi.example.com;LR"),
    ("sip:bob@[2001:db8::1]", "sip:bob@[2001:DB8:0::1]"),
    ("sip:bob@h?subject=project%2dx", "sip:bob@h?Subject=project-x"),
    ("SIP:bob@h", "sip:bob@h"),
]
NOT_EQUAL = [
    ("sip:ALICE@atlanta.example.com", "sip:alice@atlanta.example.com"),
    ("sip:bob@biloxi.example.com", "sip:bob@biloxi.example.com:5060"),
    ("sip:bob@biloxi.example.com", "sip:bob@biloxi.example.com;transport=udp"),
    ("sip:bob@h;user=phone", "sip:bob@h"),
    ("sip:bob@h;ttl=1", "sip:bob@h;ttl=2"),
    ("sip:bob@h;method=INVITE", "sip:bob@h"),
    ("sip:bob@h;maddr=239.1.1.1", "sip:bob@h"),
    ("sip:bob@h;security=on", "sip:bob@h;security=off"),
    ("sip:bob@h", "sips:bob@h"),
    ("sip:bob@h", "sip:h"),
    ("sip:bob:a@h", "sip:bob:b@h"),
    ("sip:bob@h?subject=a", "sip:bob@h"),
    ("sip:bob@h?subject=a", "sip:bob@h?subject=b"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_uri_equal(a: str, b: str) -> None:
    ua, ub = SipUri.parse(a), SipUri.parse(b)
    assert uri_equal(ua, ub) and uri_equal(ub, ua)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_uri_not_equal(a: str, b: str) -> None:
    ua, ub = SipUri.parse(a), SipUri.parse(b)
    assert not uri_equal(ua, ub) and not uri_equal(ub, ua)


def test_uri_equal_is_not_transitive_over_unknown_params() -> None:
    # RFC 3261 §19.1.4 notes this: each pair equal, the ends differ.
    a = SipUri.parse("sip:carol@h;security=on")
    b = SipUri.parse("sip:carol@h")
    c = SipUri.parse("sip:carol@h;security=off")
    assert uri_equal(a, b) and uri_equal(b, c) and not uri_equal(a, c)


LABEL = string.ascii_letters + string.digits
USER = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
PARAM = string.ascii_lowercase + string.digits + "-_.!~*'"

uris = st.builds(
    SipUri,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.none() | st.text(USER, min_size=1, max_size=12).filter(lambda u: "@" not in u),
    password=st.none(),
    host=st.lists(st.text(LABEL, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join)
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    port=st.none() | st.integers(1, 65535),
    params=st.lists(
        st.tuples(st.text(PARAM, min_size=1, max_size=6), st.none() | st.text(PARAM, max_size=6)),
        max_size=3,
    ).map(tuple),
    headers=st.lists(
        st.tuples(st.text(LABEL, min_size=1, max_size=6), st.text(LABEL, max_size=6)), max_size=2
    ).map(tuple),
)


@given(uris)
@settings(max_examples=300, deadline=None)
def test_generated_uris_round_trip(uri: SipUri) -> None:
    parsed = SipUri.parse(str(uri))
    assert parsed == uri
    assert uri_equal(parsed, uri)


@given(st.text(max_size=60))
@settings(max_examples=500, deadline=None)
def test_parse_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        SipUri.parse("sip:" + text)


def test_forbidden_characters_are_exactly_the_rfc_3261_set() -> None:
    import re

    from sipserver.sip.uri import _FORBIDDEN

    # RFC 3261 §25.1: no whitespace, controls, non-ASCII, nor <>"{}|\^` unescaped in a URI.
    reference = re.compile(r'[^\x21-\x7e]|[<>"{}|\\^`]')
    differ = [
        hex(c)
        for c in range(0x110000)
        if (_FORBIDDEN.search(chr(c)) is None) != (reference.search(chr(c)) is None)
    ]
    assert differ == []


# Every printable ASCII character, the structural ones several times over so that random
# strings often hit the boundaries of the common shape (a second '@', ':' in the user, ';' and
# '?' in odd places, ports of 0 or 6 digits, brackets).
_SHAPES = string.printable[:95] + "@@::;;??==[]0000999" + string.ascii_lowercase


# Mostly the common shape; a piece is clean or has characters of every other kind mixed in.
_ODD = '@:;?<> %[]"\t'


def _piece(alphabet: str, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=max_size) | st.text(alphabet + _ODD, max_size=max_size)


_SHAPED = st.builds(
    lambda user, at, host, port, params: user + at + host + port + params,
    _piece(string.ascii_letters + string.digits + "-_.!~*'()&=+$,/#%", 10),
    st.sampled_from(["@", "", "@@"]),
    _piece(string.ascii_letters + string.digits + "-_.", 12),
    st.sampled_from(["", ":"]).flatmap(lambda c: st.text("0123456789x", max_size=7).map(c.__add__)),
    _piece(string.ascii_lowercase + string.digits + ";=-_.!~*'", 16),
)


@given(
    st.sampled_from(["sip:", "SIP:", "sips:", "sIpS:", "tel:", "sip"]),
    st.text(_SHAPES, max_size=40) | _SHAPED,
)
@settings(max_examples=3000, deadline=None)
def test_common_shape_is_parsed_as_the_general_path_parses_it(scheme: str, rest: str) -> None:
    from sipserver.sip.uri import _parse_general, _parse_simple

    text = scheme + rest
    try:
        simple = _parse_simple(text)
    except ValueError as exc:
        # A bad parameter list in the common shape: the general path refuses it as well.
        with pytest.raises(ValueError) as general:
            _parse_general(text)
        assert str(general.value) == str(exc)
        return
    if simple is None:
        return  # the general path alone decides (covered by the tests above)
    # Where the one-regex path answers, the general one accepts the URI and gives equal fields.
    assert _parse_general(text) == simple
    assert (simple.scheme, simple.password, simple.headers) == (
        text[: text.index(":")].lower(),
        None,
        (),
    )


# The common shape as the regular expression uri.py documents; _parse_simple scans for it.
_COMMON_SHAPE = re.compile(
    r"([sS][iI][pP][sS]?):"
    r"(?:([\x21\x23-\x39\x3d\x41-\x5b\x5d\x5f\x61-\x7a\x7e]+)@)?"
    r"([A-Za-z0-9_.\-]+)"
    r"(?::([0-9]{1,5}))?"
    r"((?:;[\x21\x23-\x3a\x3d\x41-\x5b\x5d\x5f\x61-\x7a\x7e]*)*)"
)


@given(
    st.sampled_from(["sip:", "SIP:", "sips:", "sIpS:", "sipS:", "tel:", "sip", "si:", "sipss:"]),
    st.text(_SHAPES, max_size=40) | _SHAPED | st.text(max_size=12),
)
@settings(max_examples=3000, deadline=None)
def test_the_scan_takes_exactly_the_common_shape(scheme: str, rest: str) -> None:
    from sipserver.sip.uri import _parse_simple

    text = scheme + rest
    m = _COMMON_SHAPE.fullmatch(text)
    if m is not None and m[4] is not None and not 0 < int(m[4]) <= 65535:
        m = None  # a port out of range: the general path names the error
    try:
        simple = _parse_simple(text)
    except ValueError:
        # A bad parameter list inside the common shape: the scan took it, as it should.
        assert m is not None
        return
    if m is None:
        assert simple is None, text
        return
    assert simple is not None, text
    port = int(m[4]) if m[4] is not None else None
    assert (simple.scheme, simple.user, simple.host, simple.port) == (
        m[1].lower(),
        m[2],
        m[3],
        port,
    )


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@192.0.2.1",
        "SIP:alice@192.0.2.1:5060",
        "sips:bob@example.com:5061;transport=tcp;lr",
        "sip:192.0.2.1:5060;ob",
        "sip:+15005550101@sip.example.com",
        "sip:alice@host;maddr=239.255.255.1;ttl=15",
    ],
)
def test_common_uris_take_the_one_regex_path(text: str) -> None:
    from sipserver.sip.uri import _parse_general, _parse_simple

    assert _parse_simple(text) == _parse_general(text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice:secret@host",  # a password
        "sip:+1555;phone-context=example.com@host",  # telephone-subscriber parameters
        "sip:alice@[2001:db8::1]:5060",  # IPv6 reference
        "sip:alice@host?subject=hi",  # URI headers
        "sip:alice@host:0",  # port out of range: the general path names the error
        "sip:alice@host:65536",
        "sip:@host",
    ],
)
def test_other_uris_take_the_general_path(text: str) -> None:
    from sipserver.sip.uri import _parse_simple

    assert _parse_simple(text) is None


@given(st.text(max_size=12) | st.text("0123456789\u0660\u00b2 x", max_size=6))
@settings(max_examples=500, deadline=None)
def test_ascii_digits_is_isascii_and_isdigit(text: str) -> None:
    # The native loop stands for str.isascii() and str.isdigit() on CSeq, Content-Length,
    # Max-Forwards, Expires, status codes, ports and nonce-counts: non-ASCII digits
    # (Arabic-Indic, superscript) are refused.
    assert ascii_digits(text) == (text.isascii() and text.isdigit())
