"""SIP message parsing, building and serialisation (RFC 3261 §7, §8.2.6, §18.3, §20)."""

from __future__ import annotations

import contextlib
import string
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sipserver.sip import message as message_module
from sipserver.sip.headers import parse_contacts
from sipserver.sip.message import (
    REASON_PHRASES,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    canonical_header_name,
    make_response,
    parse_message,
)

TORTURE = Path(__file__).parent / "sip_torture"

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b'Authorization: Digest username="alice", realm="example.com", nonce="dcd98b7102dd2f0e",'
    b' uri="sip:example.com", response="6629fae49393a05397450978507c4ef1", algorithm=MD5\r\n'
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def build(start: str, *headers: str, body: bytes = b"", eol: str = "\r\n") -> bytes:
    return (eol.join((start, *headers)) + eol + eol).encode() + body


BASE_HEADERS = (
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
    "From: <sip:a@example.com>;tag=1",
    "To: <sip:b@example.com>",
    "Call-ID: base@192.0.2.1",
    "CSeq: 1 OPTIONS",
)


def options(
    *extra: str, body: bytes = b"", start: str = "OPTIONS sip:b@example.com SIP/2.0"
) -> bytes:
    return build(start, *BASE_HEADERS, *extra, body=body)


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


# ------------------------------------------------------------------ torture corpus


@dataclass(frozen=True)
class Valid:
    kind: type = SipRequest
    method: str | None = None
    call_id: str | None = None
    cseq: tuple[int, str] | None = None
    body: bytes | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    vias: int | None = None


@dataclass(frozen=True)
class Invalid:
    status: int
    reason: str
    partial: bool


CORPUS: dict[str, Valid | Invalid] = {
    "valid_ws_fold_invite.sip": Valid(
        method="INVITE",
        call_id="fold-42.kq7@198.51.100.7",
        cseq=(17, "INVITE"),
        body=b"hello from the fold test\r\n",
        headers={
            "Max-Forwards": "0031",
            "X-Odd-Header": "first part second part",
            "X-Punct": ";;,,;;,;",
            "Subject": "",
            "s": "",
        },
        vias=3,
    ),
    "valid_compact_register.sip": Valid(
        method="REGISTER",
        call_id="compact-1@192.0.2.50",
        cseq=(5, "REGISTER"),
        body=b"",
        headers={"Supported": "path, outbound", "Allow-Events": "presence"},
        vias=1,
    ),
    "valid_mixed_case_names.sip": Valid(
        method="OPTIONS",
        call_id="CaSe@client.test.example",
        headers={"WWW-Authenticate": 'Digest realm="x"', "User-Agent": "CaseAgent/1.0"},
    ),
    "valid_multi_via.sip": Valid(method="BYE", cseq=(231, "BYE"), vias=3),
    "valid_unknown_headers.sip": Valid(
        method="NEW.METHOD_x!%*+`'~",
        cseq=(3, "NEW.METHOD_x!%*+`'~"),
        headers={
            "X-Tenant-Id": "8f1c",
            "P-Weird.header!%*_+`'~": 'token soup ;;,, "quoted, with comma" <angle,bracket>',
            "Supported": "",
        },
    ),
    "valid_long_values.sip": Valid(
        method="MESSAGE",
        call_id="c" * 500 + "@" + "h" * 200,
        cseq=(2147483647, "MESSAGE"),
        body=b"short text body",
        headers={"X-Long": "x" * 2000},
    ),
    "valid_ipv6.sip": Valid(method="REGISTER", call_id="ipv6@[2001:db8::20]", vias=1),
    "valid_invite_sdp.sip": Valid(
        method="INVITE", headers={"Content-Type": "application/sdp", "c": "application/sdp"}
    ),
    "valid_escaped_uri.sip": Valid(method="INVITE", cseq=(8, "INVITE")),
    "valid_bare_lf.sip": Valid(method="OPTIONS", call_id="bare-lf@192.0.2.7", body=b""),
    "valid_datagram_extra_bytes.sip": Valid(method="OPTIONS", body=b"12345"),
    "valid_no_content_length.sip": Valid(method="MESSAGE", body=b"the rest of the datagram"),
    "valid_register_canonical.sip": Valid(method="REGISTER", cseq=(2, "REGISTER")),
    "valid_response_200.sip": Valid(kind=SipResponse, call_id="response@192.0.2.11"),
    "valid_leading_crlf.sip": Valid(method="OPTIONS", headers={"Max-Forwards": "0"}),
    "valid_unknown_scheme_options.sip": Valid(method="OPTIONS"),
    "valid_tel_invite.sip": Valid(method="INVITE"),
    "valid_utf8_and_bad_bytes.sip": Valid(
        method="MESSAGE",
        headers={"Subject": b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape")},
    ),
    "invalid_missing_call_id.sip": Invalid(400, "Missing Call-ID", partial=False),
    "invalid_missing_via.sip": Invalid(400, "Missing Via", partial=False),
    "invalid_cseq_not_numeric.sip": Invalid(400, "Invalid CSeq", partial=True),
    "invalid_cseq_too_large.sip": Invalid(400, "CSeq number too large", partial=True),
    "invalid_cseq_huge.sip": Invalid(400, "CSeq number too large", partial=True),
    "invalid_cseq_no_method.sip": Invalid(400, "Invalid CSeq", partial=True),
    "invalid_cseq_method_mismatch.sip": Invalid(400, "CSeq method mismatch", partial=True),
    "invalid_negative_content_length.sip": Invalid(400, "Invalid Content-Length", partial=True),
    "invalid_garbage_content_length.sip": Invalid(400, "Invalid Content-Length", partial=True),
    "invalid_short_body.sip": Invalid(400, "Content-Length mismatch", partial=True),
    "invalid_conflicting_content_length.sip": Invalid(
        400, "Multiple Content-Length values", partial=True
    ),
    "invalid_bad_version.sip": Invalid(505, "Version Not Supported", partial=True),
    "invalid_register_tel.sip": Invalid(416, "Unsupported URI Scheme", partial=True),
    "invalid_unterminated_quote.sip": Invalid(400, "Unterminated quote in From", partial=True),
    "invalid_unterminated_angle.sip": Invalid(400, "Unterminated <URI> in To", partial=True),
    "invalid_angle_request_uri.sip": Invalid(400, "Invalid Request-URI", partial=True),
    "invalid_space_in_request_uri.sip": Invalid(400, "Malformed Request-Line", partial=True),
    "invalid_double_space_request_line.sip": Invalid(400, "Malformed Request-Line", partial=True),
    "invalid_request_uri_headers.sip": Invalid(
        400, "Request-URI must not contain headers", partial=True
    ),
    "invalid_request_uri_port.sip": Invalid(400, "Invalid Request-URI", partial=True),
    "invalid_duplicate_call_id.sip": Invalid(400, "Multiple Call-ID values", partial=True),
    "invalid_bad_max_forwards.sip": Invalid(400, "Invalid Max-Forwards", partial=True),
    "invalid_header_without_colon.sip": Invalid(400, "Malformed header line", partial=True),
    "invalid_continuation_first.sip": Invalid(
        400, "Continuation line before the first header", partial=False
    ),
    "invalid_bare_cr.sip": Invalid(400, "Control character in header section", partial=False),
    "invalid_status_code.sip": Invalid(400, "Invalid status code", partial=False),
    "invalid_response_version.sip": Invalid(505, "Version Not Supported", partial=False),
    "invalid_missing_empty_line.sip": Invalid(
        400, "Missing empty line after the header section", partial=True
    ),
    "invalid_garbage.sip": Invalid(400, "Control character in header section", partial=False),
}

#: Canonical messages: parse then encode gives the same bytes.
BYTE_EXACT = [
    "valid_register_canonical.sip",
    "valid_invite_sdp.sip",
    "valid_response_200.sip",
    "valid_ipv6.sip",
    "valid_multi_via.sip",
    "valid_long_values.sip",
    "valid_utf8_and_bad_bytes.sip",
]


def test_corpus_table_covers_every_file() -> None:
    assert sorted(p.name for p in TORTURE.glob("*.sip")) == sorted(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_torture_corpus(name: str) -> None:
    data = (TORTURE / name).read_bytes()
    expected = CORPUS[name]
    if isinstance(expected, Invalid):
        error = parse_error(data)
        assert (error.status, error.reason) == (expected.status, expected.reason)
        assert (error.partial is not None) == expected.partial
        if error.partial is not None:
            # The partial request is enough to address the error response.
            response = make_response(error.partial, error.status, error.reason)
            assert response.call_id == error.partial.headers.get("Call-ID")
        return
    message = parse_message(data)
    assert isinstance(message, expected.kind)
    if expected.method is not None:
        assert isinstance(message, SipRequest) and message.method == expected.method
    if expected.call_id is not None:
        assert message.call_id == expected.call_id
    if expected.cseq is not None:
        assert message.cseq == expected.cseq
    if expected.body is not None:
        assert message.body == expected.body
    for header, value in expected.headers.items():
        assert message.headers.get(header) == value
    if expected.vias is not None:
        assert len(message.vias()) == expected.vias
    # Every valid message survives encode -> parse with the same meaning.
    again = parse_message(message.encode())
    assert without_length(again.headers) == without_length(message.headers)
    assert again.headers.get("Content-Length") == str(len(message.body))
    assert again.body == message.body


def without_length(headers: Headers) -> list[tuple[str, str]]:
    return [entry for entry in headers if entry[0] != "Content-Length"]


@pytest.mark.parametrize("name", BYTE_EXACT)
def test_byte_exact_round_trip(name: str) -> None:
    data = (TORTURE / name).read_bytes()
    assert parse_message(data).encode() == data


def test_ws_fold_invite_structured_views() -> None:
    request = parse_request((TORTURE / "valid_ws_fold_invite.sip").read_bytes())
    vias = request.vias()
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "198.51.100.7", 5062, "z9hG4bKfold1"),
        ("TCP", "relay.test.example", None, "z9hG4bKfold2"),
        ("UDP", "203.0.113.40", None, "z9hG4bKfold3"),
    ]
    assert request.top_via() == vias[0]
    sender = request.from_()
    assert sender.display_name == 'Dave "the dialer"' and sender.tag == "a9f3"
    assert request.to().tag == "77zz1"
    assert request.max_forwards == 31
    assert request.request_uri().params == (("transport", "udp"), ("custom", None))
    assert request.headers.get_all("Route") == ["<sip:edge.test.example;lr;knob=on;flag>"]
    contacts = parse_contacts(request.headers.get_all("Contact"))
    assert contacts != "*"
    assert contacts[0].display_name == 'Dave ""'
    assert contacts[0].params == (("expiry-hint", "soon"), ("flagparam", None), ("q", "0.5"))


def test_escaped_and_telephone_user_parts_stay_raw() -> None:
    request = parse_request((TORTURE / "valid_escaped_uri.sip").read_bytes())
    uri = request.request_uri()
    assert uri.user == "%61nn%20marie;tsp=x" and uri.param("user") == "ip"
    assert request.from_().uri.user == "+15551234;isub=77"
    assert request.to().uri.aor() == "sip:ann marie;tsp=x@test.example"


def test_ipv6_addresses() -> None:
    request = parse_request((TORTURE / "valid_ipv6.sip").read_bytes())
    assert request.request_uri().host == "[2001:db8::1]"
    assert request.request_uri().port == 5070
    via = request.top_via()
    assert (via.host, via.port, via.received, via.rport) == (
        "[2001:db8::20]",
        40000,
        "[2001:db8::21]",
        40001,
    )


def test_non_sip_request_uri_is_kept_as_string() -> None:
    request = parse_request((TORTURE / "valid_tel_invite.sip").read_bytes())
    assert request.uri == "tel:+14155550100;phone-context=+1"
    with pytest.raises(ValueError, match="scheme"):
        request.request_uri()


def test_bad_bytes_survive_byte_exact() -> None:
    data = (TORTURE / "valid_utf8_and_bad_bytes.sip").read_bytes()
    request = parse_request(data)
    assert request.from_().display_name == "Zoë Ångström"
    assert request.encode() == data


# ------------------------------------------------------------------ start line


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [
        ("INVITE sip:b@example.com SIP/2.1", 505, "Version Not Supported"),
        ("INVITE sip:b@example.com SIP/3.0", 505, "Version Not Supported"),
        ("INVITE sip:b@example.com HTTP/1.1", 400, "Malformed Request-Line"),
        ("INVITE sip:b@example.com", 400, "Malformed Request-Line"),
        ("INVITE sip:b@example.com SIP/2.0 ", 400, "Malformed Request-Line"),
    ],
)
def test_request_line_errors(start: str, status: int, reason: str) -> None:
    data = build(start, *BASE_HEADERS[:4], "CSeq: 1 INVITE")
    error = parse_error(data)
    assert (error.status, error.reason) == (status, reason)
    assert error.partial is not None


@pytest.mark.parametrize(
    "start", ["INVITE\tsip:b@example.com SIP/2.0", "<x> sip:a@b SIP/2.0", "", "ÄÖ sip:a@b SIP/2.0"]
)
def test_start_line_that_is_not_a_request_has_no_partial(start: str) -> None:
    error = parse_error(build(start, *BASE_HEADERS))
    assert error.status == 400 and error.partial is None


@pytest.mark.parametrize("version", ["SIP/2.0", "sip/2.0", "Sip/2.0"])
def test_version_is_case_insensitive(version: str) -> None:
    request = parse_request(options(start=f"OPTIONS sip:b@example.com {version}"))
    assert request.version == "SIP/2.0"


def test_extension_method_is_accepted() -> None:
    data = build("FOO.BAR-1 sip:b@example.com SIP/2.0", *BASE_HEADERS[:4], "CSeq: 1 FOO.BAR-1")
    assert parse_request(data).method == "FOO.BAR-1"


def test_method_is_case_sensitive_in_cseq_match() -> None:
    data = build("invite sip:b@example.com SIP/2.0", *BASE_HEADERS[:4], "CSeq: 1 INVITE")
    assert parse_error(data).reason == "CSeq method mismatch"


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 183 Session Progress", 183, "Session Progress"),
        ("sip/2.0 486 Busy  Here ", 486, "Busy  Here "),
        ("SIP/2.0 299 ", 299, ""),
        ("SIP/2.0 699", 699, ""),
    ],
)
def test_status_line(line: str, status: int, reason: str) -> None:
    response = parse_message(build(line, *BASE_HEADERS))
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (status, reason)


@pytest.mark.parametrize("line", ["SIP/2.0 20 OK", "SIP/2.0 700 X", "SIP/2.0 099 X", "SIP/2.0 2x0"])
def test_bad_status_code(line: str) -> None:
    error = parse_error(build(line, *BASE_HEADERS))
    assert error.reason == "Invalid status code" and error.partial is None


def test_response_cseq_method_is_any_token() -> None:
    response = parse_message(build("SIP/2.0 200 OK", *BASE_HEADERS[:4], "CSeq: 9 PUBLISH"))
    assert response.cseq == (9, "PUBLISH")


# ------------------------------------------------------------------ header section


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("call-id", "Call-ID"),
        ("CALL-ID", "Call-ID"),
        ("i", "Call-ID"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("proxy-authenticate", "Proxy-Authenticate"),
        ("content-length", "Content-Length"),
        ("l", "Content-Length"),
        ("max-forwards", "Max-Forwards"),
        ("user-agent", "User-Agent"),
        ("record-route", "Record-Route"),
        ("min-expires", "Min-Expires"),
        ("retry-after", "Retry-After"),
        ("mime-version", "MIME-Version"),
        ("rack", "RAck"),
        ("sip-etag", "SIP-ETag"),
        ("x-my-header", "X-My-Header"),
        ("X-GUID", "X-Guid"),
        ("v", "Via"),
        ("f", "From"),
        ("T", "To"),
        ("m", "Contact"),
        ("c", "Content-Type"),
        ("e", "Content-Encoding"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("y", "Identity"),
        ("a", "Accept-Contact"),
        ("j", "Reject-Contact"),
        ("d", "Request-Disposition"),
        ("n", "Identity-Info"),
    ],
)
def test_canonical_header_names(spelling: str, canonical: str) -> None:
    assert canonical_header_name(spelling) == canonical
    if canonical in {"Via", "From", "To", "Call-ID", "CSeq", "Content-Length"}:
        return
    request = parse_request(options(f"{spelling}: 1"))
    assert (canonical, "1") in list(request.headers)
    assert request.headers.get(spelling) == "1"


@pytest.mark.parametrize("name", ["", "Bad Name", "Bad:", "Ä", "a(b)"])
def test_invalid_header_names(name: str) -> None:
    with pytest.raises(ValueError, match="Invalid header name"):
        canonical_header_name(name)


@pytest.mark.parametrize(
    "line",
    [
        "Subject: hello",
        "Subject:hello",
        "Subject :hello",
        "Subject\t:\thello",
        "subject  :   hello   ",
        "Subject:\t \thello \t",
        "s: hello",
        "Subject:\r\n hello",
        "Subject:\r\n\thello",
        "Subject: \r\n  \r\n hello",
    ],
)
def test_lws_around_colon_and_folding(line: str) -> None:
    assert parse_request(options(line)).headers.get("Subject") == "hello"


@pytest.mark.parametrize("line", ["Subject:", "Subject: ", "Subject:\t \t", "Subject :  "])
def test_empty_header_value(line: str) -> None:
    assert parse_request(options(line)).headers.get("Subject") == ""


def test_folding_replaces_the_fold_with_one_space() -> None:
    request = parse_request(options("Subject: one  \r\n   two\r\n\tthree"))
    assert request.headers.get("Subject") == "one two three"


def test_bare_lf_line_endings() -> None:
    data = build("OPTIONS sip:b@example.com SIP/2.0", *BASE_HEADERS, "l: 2", body=b"hi", eol="\n")
    request = parse_request(data)
    assert request.body == b"hi" and request.call_id == "base@192.0.2.1"


def test_mixed_line_endings() -> None:
    data = options("Subject: a").replace(b"Subject: a\r\n", b"Subject: a\n")
    assert parse_request(data).headers.get("Subject") == "a"


def test_lf_blank_line_ends_the_header_section_early() -> None:
    data = options("Subject: a").replace(b"Subject: a\r\n", b"Subject: a\n\n")
    request = parse_request(data)
    assert request.headers.get("Subject") == "a"
    assert request.body == b"\r\n"


def test_repeated_headers_keep_order() -> None:
    request = parse_request(options("X-A: 1", "Route: <sip:p1;lr>", "X-A: 2", "Route: <sip:p2;lr>"))
    assert request.headers.get("X-A") == "1"
    assert request.headers.get_all("x-a") == ["1", "2"]
    assert request.headers.get_all("Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]


def test_repeated_single_value_header_with_same_value_is_tolerated() -> None:
    request = parse_request(options("Max-Forwards: 70", "Max-Forwards: 70"))
    assert request.max_forwards == 70


def test_repeated_headers_with_one_character_values_are_all_kept() -> None:
    # CPython shares one object per one-character string: a repeat must be told by the
    # table's size, not by identity with the first value.
    request = parse_request(
        options("X-A: 1", "Max-Forwards: 7", "X-A: 1", "Max-Forwards: 7", "X-A: 2")
    )
    assert request.headers.get_all("X-A") == ["1", "1", "2"]
    assert request.headers.get_all("Max-Forwards") == ["7", "7"]
    assert request.max_forwards == 7


@pytest.mark.parametrize(
    "header", ["From: <sip:c@example.com>;tag=2", "To: <sip:c@example.com>", "CSeq: 2 OPTIONS"]
)
def test_repeated_single_value_headers_are_rejected(header: str) -> None:
    name = header.partition(":")[0]
    error = parse_error(options(header))
    assert error.reason == f"Multiple {name} values"


def test_header_line_control_characters() -> None:
    assert parse_error(options("X-A: a\x00b")).partial is None
    assert parse_error(options("X-A: a\rb")).partial is None


@pytest.mark.parametrize(
    "subject",
    [b"caf\xc3\xa9 \xe2\x82\xac", b"caf\xe9", b"\xc3\xa9\xe9"],
    ids=["utf-8", "invalid byte", "both"],
)
def test_body_after_non_ascii_header_bytes(subject: bytes) -> None:
    # The body starts at a byte offset, whatever the header bytes decode to (one character for
    # several bytes in UTF-8, one for each byte surrogateescape keeps).
    data = options("Content-Length: 4").replace(
        b"\r\n\r\n", b"\r\nSubject: " + subject + b"\r\n\r\n"
    )
    request = parse_request(data + b"\x00\xffhi")
    assert request.body == b"\x00\xffhi"
    assert request.headers.get("Subject") == subject.decode("utf-8", "surrogateescape")


def test_tab_and_non_ascii_in_values_are_kept() -> None:
    request = parse_request(options("Subject: a\tb ü"))
    assert request.headers.get("Subject") == "a\tb ü"


# ------------------------------------------------------------------ required headers


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_required_header(missing: str) -> None:
    headers = [h for h in BASE_HEADERS if not h.startswith(missing + ":")]
    error = parse_error(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert (error.status, error.reason, error.partial) == (400, f"Missing {missing}", None)


@pytest.mark.parametrize("header", ["Call-ID:", "Via:"])
def test_empty_required_header(header: str) -> None:
    name = header[:-1]
    headers = [header if h.startswith(name + ":") else h for h in BASE_HEADERS]
    error = parse_error(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert error.status == 400 and error.reason == "Empty Call-ID or Via"


def test_max_forwards_is_optional() -> None:
    assert parse_request(options()).max_forwards is None


@pytest.mark.parametrize("value", ["-1", "7O", "", "1.5", "\u0663"])
def test_max_forwards_must_be_digits(value: str) -> None:
    assert parse_error(options(f"Max-Forwards: {value}")).reason == "Invalid Max-Forwards"


@pytest.mark.parametrize(
    ("cseq", "reason"),
    [
        ("CSeq: 1 INVITE", "CSeq method mismatch"),
        ("CSeq: -1 OPTIONS", "Invalid CSeq"),
        ("CSeq: 1.0 OPTIONS", "Invalid CSeq"),
        ("CSeq: \u0661 OPTIONS", "Invalid CSeq"),
        ("CSeq: OPTIONS", "Invalid CSeq"),
        ("CSeq: 1 OPTIONS extra", "Invalid CSeq"),
        ("CSeq: 2147483648 OPTIONS", "CSeq number too large"),
        ("CSeq: 99999999999999999999999 OPTIONS", "CSeq number too large"),
    ],
)
def test_cseq_rules(cseq: str, reason: str) -> None:
    headers = [cseq if h.startswith("CSeq") else h for h in BASE_HEADERS]
    error = parse_error(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert error.reason == reason and error.partial is not None


@pytest.mark.parametrize(
    "cseq", ["CSeq: 0 OPTIONS", "CSeq: 2147483647 OPTIONS", "CSeq:  7 \t OPTIONS"]
)
def test_valid_cseq(cseq: str) -> None:
    headers = [cseq if h.startswith("CSeq") else h for h in BASE_HEADERS]
    request = parse_request(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert request.cseq[1] == "OPTIONS"


# ------------------------------------------------------------------ body and Content-Length


@pytest.mark.parametrize(
    ("content_length", "payload", "body"),
    [
        ("0", b"", b""),
        ("4", b"abcd", b"abcd"),
        ("2", b"abcd", b"ab"),
        ("0", b"abcd", b""),
        (None, b"rest of datagram", b"rest of datagram"),
        (None, b"", b""),
        ("4", b"a\r\n\r\n", b"a\r\n\r"),
    ],
)
def test_datagram_body_length(content_length: str | None, payload: bytes, body: bytes) -> None:
    extra = () if content_length is None else (f"Content-Length: {content_length}",)
    assert parse_request(options(*extra, body=payload)).body == body


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("5", "Content-Length mismatch"),
        ("99999999999", "Content-Length mismatch"),
        ("-1", "Invalid Content-Length"),
        ("abc", "Invalid Content-Length"),
        ("", "Invalid Content-Length"),
        ("1 2", "Invalid Content-Length"),
        ("\u0663", "Invalid Content-Length"),
    ],
)
def test_bad_content_length(value: str, reason: str) -> None:
    error = parse_error(options(f"Content-Length: {value}", body=b"abc"))
    assert (error.status, error.reason) == (400, reason)
    assert error.partial is not None


def test_body_is_bytes_and_binary_safe() -> None:
    payload = bytes(range(256))
    request = parse_request(options(f"Content-Length: {len(payload)}", body=payload))
    assert request.body == payload


# ------------------------------------------------------------------ Request-URI


@pytest.mark.parametrize(
    ("method", "uri", "ok"),
    [
        ("OPTIONS", "sip:b@example.com", True),
        ("OPTIONS", "SIP:b@example.com", True),
        ("OPTIONS", "sips:b@example.com:5061", True),
        ("OPTIONS", "tel:+15551234", True),
        ("OPTIONS", "urn:service:sos", True),
        ("OPTIONS", "x-custom+scheme.1:opaque", True),
        ("REGISTER", "sip:example.com", True),
        ("REGISTER", "sips:example.com", True),
    ],
)
def test_request_uri_accepted(method: str, uri: str, ok: bool) -> None:
    headers = [f"CSeq: 1 {method}" if h.startswith("CSeq") else h for h in BASE_HEADERS]
    request = parse_request(build(f"{method} {uri} SIP/2.0", *headers))
    assert request.uri == uri


@pytest.mark.parametrize(
    ("method", "uri", "status", "reason"),
    [
        ("REGISTER", "tel:+15551234", 416, "Unsupported URI Scheme"),
        ("REGISTER", "urn:x:y", 416, "Unsupported URI Scheme"),
        ("REGISTER", "<sip:example.com>", 400, "Invalid Request-URI"),
        ("OPTIONS", "sip:", 400, "Invalid Request-URI"),
        ("OPTIONS", "sip:b@", 400, "Invalid Request-URI"),
        ("OPTIONS", "sip:b@host:0", 400, "Invalid Request-URI"),
        ("OPTIONS", "sip:b@[::1", 400, "Invalid Request-URI"),
        ("OPTIONS", "sip:b@example.com?Subject=x", 400, "Request-URI must not contain headers"),
        ("OPTIONS", "1tel:123", 400, "Invalid Request-URI"),
        ("OPTIONS", "tel:", 400, "Invalid Request-URI"),
        ("OPTIONS", "noscheme", 400, "Invalid Request-URI"),
        ("OPTIONS", "", 400, "Invalid Request-URI"),
    ],
)
def test_request_uri_rejected(method: str, uri: str, status: int, reason: str) -> None:
    headers = [f"CSeq: 1 {method}" if h.startswith("CSeq") else h for h in BASE_HEADERS]
    error = parse_error(build(f"{method} {uri} SIP/2.0", *headers))
    assert (error.status, error.reason) == (status, reason)
    assert error.partial is not None and error.partial.method == method


def test_request_uri_is_parsed_once_and_follows_changes() -> None:
    request = parse_request(REGISTER)
    assert request.request_uri() is request.request_uri()
    request.uri = "sip:other.example.com"
    assert request.request_uri().host == "other.example.com"


# ------------------------------------------------------------------ Headers API


def test_headers_api() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a"), ("x-one", "1"), ("Via", "SIP/2.0/UDP b")])
    assert list(headers) == [("Via", "SIP/2.0/UDP a"), ("X-One", "1"), ("Via", "SIP/2.0/UDP b")]
    assert len(headers) == 3
    assert "via" in headers and "V" in headers and "X-ONE" in headers
    assert "Route" not in headers and 3 not in headers and "bad name" not in headers
    assert headers.get("VIA") == "SIP/2.0/UDP a"
    assert headers.get("Route") is None
    assert headers.get_all("Route") == []
    headers.add("Route", "<sip:p;lr>")
    headers.set("Via", "SIP/2.0/TCP c")
    assert list(headers) == [("Via", "SIP/2.0/TCP c"), ("X-One", "1"), ("Route", "<sip:p;lr>")]
    headers.set("Expires", "60")
    assert list(headers)[-1] == ("Expires", "60")
    headers.remove("x-one")
    headers.remove("Not-There")
    assert [n for n, _ in headers] == ["Via", "Route", "Expires"]
    copy = headers.copy()
    copy.add("Via", "SIP/2.0/UDP d")
    assert headers.get_all("Via") == ["SIP/2.0/TCP c"]
    assert copy.get_all("Via") == ["SIP/2.0/TCP c", "SIP/2.0/UDP d"]
    assert copy != headers and headers == headers.copy()
    assert "Headers(" in repr(headers)


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\nb", "a\rb"])
def test_headers_reject_line_breaks(value: str) -> None:
    headers = Headers()
    with pytest.raises(ValueError, match="line break"):
        headers.add("Subject", value)
    with pytest.raises(ValueError, match="line break"):
        headers.set("Subject", value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "Via",
            "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b",
            ["SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b"],
        ),
        (
            "Contact",
            '"Doe, J" <sip:a@b>, <sip:c@d;x=1,2>',
            ['"Doe, J" <sip:a@b>', "<sip:c@d;x=1,2>"],
        ),
        ("Allow", "INVITE, ACK,BYE", ["INVITE", "ACK", "BYE"]),
        ("Supported", "", []),
        ("Route", "<sip:a;lr>,<sip:b;lr>", ["<sip:a;lr>", "<sip:b;lr>"]),
        ("Record-Route", "<sip:a;lr>", ["<sip:a;lr>"]),
        ("Path", "<sip:a;lr>, <sip:b;lr>", ["<sip:a;lr>", "<sip:b;lr>"]),
        ("Service-Route", "<sip:a;lr>, <sip:b;lr>", ["<sip:a;lr>", "<sip:b;lr>"]),
        ("Require", "100rel, timer", ["100rel", "timer"]),
        ("Proxy-Require", "a,b", ["a", "b"]),
        ("Unsupported", "a,b", ["a", "b"]),
        ("Accept", "application/sdp, text/plain;q=0.5", ["application/sdp", "text/plain;q=0.5"]),
        ("Accept-Encoding", "gzip, identity", ["gzip", "identity"]),
        ("Accept-Language", "en, fr", ["en", "fr"]),
        ("Content-Encoding", "gzip, x", ["gzip", "x"]),
        ("In-Reply-To", "a@b, c@d", ["a@b", "c@d"]),
        ("Allow-Events", "presence, dialog", ["presence", "dialog"]),
        ("Authorization", 'Digest username="a", realm="b"', ['Digest username="a", realm="b"']),
        ("Proxy-Authorization", "Digest a=1, b=2", ["Digest a=1, b=2"]),
        ("WWW-Authenticate", "Digest a=1, b=2", ["Digest a=1, b=2"]),
        ("Proxy-Authenticate", "Digest a=1, b=2", ["Digest a=1, b=2"]),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT", ["Sat, 13 Nov 2010 23:29:00 GMT"]),
        ("X-Unknown", "a, b", ["a, b"]),
    ],
)
def test_get_all_splits_only_list_headers(name: str, value: str, expected: list[str]) -> None:
    assert Headers([(name, value)]).get_all(name) == expected


# ------------------------------------------------------------------ make_response and encode


def test_make_response_copies_addressing_headers() -> None:
    data = options(
        "Via: SIP/2.0/UDP p2;branch=z9hG4bK3, SIP/2.0/UDP p1;branch=z9hG4bK2",
        "Subject: not copied",
    )
    request = parse_request(data)
    response = make_response(request, 200, to_tag="tt", headers=[("Server", "x"), ("l", "99")])
    assert response.reason == "OK"
    assert list(response.headers) == [
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
        ("Via", "SIP/2.0/UDP p2;branch=z9hG4bK3, SIP/2.0/UDP p1;branch=z9hG4bK2"),
        ("From", "<sip:a@example.com>;tag=1"),
        ("To", "<sip:b@example.com>;tag=tt"),
        ("Call-ID", "base@192.0.2.1"),
        ("CSeq", "1 OPTIONS"),
        ("Server", "x"),
        ("Content-Length", "99"),
    ]
    assert [v.branch for v in response.vias()] == ["z9hG4bK1", "z9hG4bK3", "z9hG4bK2"]
    wire = response.encode()
    assert wire.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n")
    assert wire.endswith(b"Server: x\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("<sip:b@example.com>", "<sip:b@example.com>;tag=new"),
        ("<sip:b@example.com>;tag=old", "<sip:b@example.com>;tag=old"),
        ("<sip:b@example.com> ; TAG = old", "<sip:b@example.com> ; TAG = old"),
        ("sip:b@example.com", "sip:b@example.com;tag=new"),
        ("sip:b@example.com;tag=old", "sip:b@example.com;tag=old"),
        (
            '"tag=fake" <sip:tag@example.com;tag=uri>',
            '"tag=fake" <sip:tag@example.com;tag=uri>;tag=new',
        ),
    ],
)
def test_make_response_to_tag(to: str, expected: str) -> None:
    headers = [f"To: {to}" if h.startswith("To:") else h for h in BASE_HEADERS]
    request = parse_request(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert make_response(request, 200, to_tag="new").headers.get("To") == expected


def test_make_response_without_tag_keeps_to() -> None:
    request = parse_request(options())
    assert make_response(request, 100).headers.get("To") == "<sip:b@example.com>"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(100, "Trying"), (423, "Interval Too Brief"), (299, "Success"), (499, "Client Error")],
)
def test_reason_defaults(status: int, reason: str) -> None:
    assert make_response(parse_request(options()), status).reason == reason


def test_make_response_validation() -> None:
    request = parse_request(options())
    for status in (99, 700):
        with pytest.raises(ValueError, match="status"):
            make_response(request, status)
    with pytest.raises(ValueError, match="line break"):
        make_response(request, 400, "bad\r\nX: 1")
    # Alphanumeric but not ASCII (str.isalnum alone would pass it), and not a token at all.
    for tag in ("a b", "caf\u00e9", "\u00b2", ""):
        with pytest.raises(ValueError, match="tag"):
            make_response(request, 200, to_tag=tag)
    assert "tag=a.b-c_9" in make_response(request, 200, to_tag="a.b-c_9").headers.get("To")
    with pytest.raises(ValueError, match="line break"):
        make_response(request, 200, headers=[("X", "a\nb")])
    with pytest.raises(ValueError, match="header name"):
        make_response(request, 200, headers=[("X Y", "a")])
    with pytest.raises(ValueError, match="Request has no Call-ID"):
        make_response(SipRequest("OPTIONS", "sip:a", Headers(list(request.headers)[:3])), 200)


def test_reason_phrases_table() -> None:
    rfc3261 = [100, 180, 181, 182, 183, 200, 300, 301, 302, 305, 380]
    rfc3261 += [400, 401, 402, 403, 404, 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 421]
    rfc3261 += [423, 480, 481, 482, 483, 484, 485, 486, 487, 488, 491, 493]
    rfc3261 += [500, 501, 502, 503, 504, 505, 513, 600, 603, 604, 606]
    extensions = [423, 429, 433, 439, 469, 470, 494, 603, 607, 608]
    assert all(REASON_PHRASES[code] for code in rfc3261 + extensions)
    assert REASON_PHRASES[481] == "Call/Transaction Does Not Exist"
    assert REASON_PHRASES[416] == "Unsupported URI Scheme"


def test_encode_writes_computed_content_length_in_place() -> None:
    request = parse_request(options("Content-Length: 3", "Subject: s", body=b"abc"))
    request.body = b"hello"
    wire = request.encode()
    assert b"Content-Length: 5\r\nSubject: s\r\n\r\nhello" in wire
    response = SipResponse(200, "OK", Headers([("l", "1"), ("Content-Length", "2")]), b"xyz")
    assert response.encode() == b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nxyz"
    assert (
        SipResponse(200, "OK", Headers()).encode() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    )


def test_parsed_partial_answers_bad_request() -> None:
    error = parse_error(options("Content-Length: x"))
    assert error.partial is not None
    response = make_response(error.partial, error.status, error.reason, to_tag="z")
    wire = response.encode()
    assert wire.startswith(b"SIP/2.0 400 Invalid Content-Length\r\n")
    assert b"To: <sip:b@example.com>;tag=z\r\n" in wire


def test_convenience_errors_on_hand_built_request() -> None:
    request = SipRequest("OPTIONS", "sip:a@b", Headers([("CSeq", "x OPTIONS"), ("Via", " , ")]))
    with pytest.raises(ValueError, match="Missing Call-ID"):
        _ = request.call_id
    with pytest.raises(ValueError, match="Invalid CSeq"):
        _ = request.cseq
    with pytest.raises(ValueError, match="Missing From"):
        request.from_()
    with pytest.raises(ValueError, match="Empty Via"):
        request.top_via()
    request.headers.set("Max-Forwards", "x")
    with pytest.raises(ValueError, match="Max-Forwards"):
        _ = request.max_forwards


def test_register_fast_path_fields() -> None:
    request = parse_request(REGISTER)
    assert request.request_uri().host == "example.com"
    assert request.to().uri.aor() == "sip:alice@example.com"
    assert request.top_via().has_rport and request.top_via().rport is None
    assert (request.headers.get("Authorization") or "").startswith("Digest username=")
    assert request.encode() == REGISTER
    response = make_response(request, 200, to_tag="x").encode()
    assert parse_message(response).cseq == (2, "REGISTER")


# ------------------------------------------------------------------ hypothesis

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
hosts = st.lists(labels, min_size=1, max_size=3).map(".".join)
users = st.text(string.ascii_letters + string.digits + "-_.+%;=&", min_size=1, max_size=10).filter(
    lambda u: "%" not in u
)
sip_uris = st.builds(
    lambda scheme, user, host, port: (
        f"{scheme}:{user + '@' if user else ''}{host}" + (f":{port}" if port else "")
    ),
    st.sampled_from(["sip", "sips"]),
    st.none() | users,
    hosts,
    st.none() | st.integers(1, 65535),
)
value_chars = st.characters(blacklist_categories=("Cs", "Cc"))
header_values = st.text(value_chars, max_size=30).map(lambda s: s.strip(" \t"))
extra_names = tokens.filter(
    lambda n: (
        canonical_header_name(n)
        not in {"Via", "From", "To", "Call-ID", "CSeq", "Content-Length", "Max-Forwards"}
    )
)


@st.composite
def valid_requests(draw: st.DrawFn) -> SipRequest:
    method = draw(tokens)
    headers = Headers()
    for _ in range(draw(st.integers(1, 3))):
        transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "WS"]))
        headers.add("Via", f"SIP/2.0/{transport} {draw(hosts)};branch=z9hG4bK{draw(tokens)}")
    headers.add("From", f"<{draw(sip_uris)}>;tag={draw(tokens)}")
    headers.add("To", f"<{draw(sip_uris)}>")
    headers.add("Call-ID", f"{draw(tokens)}@{draw(hosts)}")
    headers.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    for name, value in draw(st.lists(st.tuples(extra_names, header_values), max_size=6)):
        headers.add(name, value)
    body = draw(st.binary(max_size=60))
    headers.add("Content-Length", str(len(body)))
    return SipRequest(method, draw(sip_uris), headers, body)


@given(valid_requests())
@settings(max_examples=300, deadline=None)
def test_generated_requests_round_trip(request: SipRequest) -> None:
    parsed = parse_message(request.encode())
    assert parsed == request
    assert parsed.encode() == request.encode()


@given(valid_requests(), st.integers(100, 699), header_values)
@settings(max_examples=150, deadline=None)
def test_generated_responses_round_trip(request: SipRequest, status: int, reason: str) -> None:
    response = make_response(request, status, reason, to_tag="t")
    parsed = parse_message(response.encode())
    assert isinstance(parsed, SipResponse)
    assert (parsed.status, parsed.reason, parsed.body) == (status, reason, b"")
    assert without_length(parsed.headers) == list(response.headers)
    assert parsed.headers.get("Content-Length") == "0"


def _parse_strict(data: bytes) -> None:
    # The internal parser without the last-resort net: any non-SipParseError is a bug.
    try:
        message = message_module._parse(data)
    except SipParseError:
        return
    # Structured views on a parsed message may only raise ValueError (the edge catches it).
    for view in ("vias", "top_via", "from_", "to"):
        with contextlib.suppress(ValueError):
            getattr(message, view)()
    for attribute in ("call_id", "cseq"):
        with contextlib.suppress(ValueError):
            getattr(message, attribute)
    if isinstance(message, SipRequest):
        with contextlib.suppress(ValueError):
            message.request_uri()
        with contextlib.suppress(ValueError):
            _ = message.max_forwards
    message.encode()


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_random_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    _parse_strict(data)
    with contextlib.suppress(SipParseError):
        parse_message(data)


SEEDS = [REGISTER] + [(TORTURE / name).read_bytes() for name in sorted(CORPUS)]
INTERESTING = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b'"', b"\\", b"<", b">"]
INTERESTING += [b"@", b"[", b"]", b"=", b"%", b"\x00", b"\xff", b"SIP/2.0", b"Content-Length: "]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        piece = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4))
        if action == "insert":
            data[position:position] = piece
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "replace":
            data[position : position + len(piece)] = piece
        else:
            del data[position:]
    return bytes(data)


@given(mutated())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_raise_only_sip_parse_error(data: bytes) -> None:
    _parse_strict(data)


@given(st.lists(st.sampled_from(INTERESTING) | st.text(TOKEN_CHARS, max_size=5).map(str.encode)))
@settings(max_examples=300, deadline=None)
def test_token_soup_after_valid_start_line(parts: list[bytes]) -> None:
    data = b"INVITE sip:a@b SIP/2.0\r\n" + b"".join(parts)
    assume(data)
    _parse_strict(data)


# ------------------------------------------------------------------ adversarial sizes


def test_many_escapes_in_a_quoted_display_name() -> None:
    # Each escape is skipped once: linear work, not a rescan per escape.
    display = '"' + "\\a" * 20000 + '"'
    headers = [
        f"From: {display} <sip:a@example.com>;tag=1" if h.startswith("From") else h
        for h in BASE_HEADERS
    ]
    request = parse_request(build("OPTIONS sip:b@example.com SIP/2.0", *headers))
    assert request.from_().display_name == "a" * 20000


def test_many_continuation_lines() -> None:
    request = parse_request(options("Subject: a" + "\r\n b" * 20000))
    assert request.headers.get("Subject") == "a" + " b" * 20000


def test_many_headers() -> None:
    request = parse_request(options(*[f"X-H{i}: {i}" for i in range(5000)]))
    assert len(request.headers) == 5005
    assert request.headers.get("x-h4999") == "4999"


# ------------------------------------------------------------------ encode_response fast path

_response_extra_names = st.sampled_from(
    ["Contact", "Date", "Server", "Path", "Content-Length", "l", "content-length", "X-Odd", "m"]
)
_response_extra_values = st.sampled_from(
    ["<sip:a@192.0.2.1>;expires=60", "", "7", "line\r\nbreak", "bare\nlf", "caf\xe9", "\udcff"]
)


@given(
    valid_requests(),
    st.integers(100, 699) | st.sampled_from([99, 200, 401, 700]),
    st.none() | st.sampled_from(["OK", "Not Your Address-of-Record", "bad\r\nreason", ""]),
    st.none() | st.sampled_from(["t1", "abc0123456789def", "bad tag", ""]),
    st.lists(st.tuples(_response_extra_names, _response_extra_values), max_size=5),
    st.booleans(),
    st.sampled_from([False] * 7 + [True]),
)
@settings(max_examples=1500, deadline=None)
def test_encode_response_agrees_with_make_response(
    request: SipRequest,
    status: int,
    reason: str | None,
    to_tag: str | None,
    extra: list[tuple[str, str]],
    tagged_to: bool,
    drop_from: bool,
) -> None:
    if tagged_to:
        request.headers.set("To", (request.headers.get("To") or "") + ";tag=existing")
    if drop_from:
        request.headers.remove("From")
    try:
        expected: object = make_response(
            request, status, reason, to_tag=to_tag, headers=iter(extra)
        ).encode()
    except ValueError as exc:
        expected = ("error", type(exc), str(exc))
    try:
        got: object = message_module.encode_response(
            request, status, reason, to_tag=to_tag, headers=iter(extra)
        )
    except ValueError as exc:
        got = ("error", type(exc), str(exc))
    assert got == expected
