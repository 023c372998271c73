"""Tests for sipserver.sip.digest: RFC 7616 / RFC 2617 vectors, parsing, client-server trip."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import hypothesis
import hypothesis.strategies
import pytest

from sipserver.sip.digest import (
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    build_authorization,
    compute_ha1,
    compute_response,
    parse_auth_params,
    verify,
)

# RFC 7616 §3.9.1 example inputs.
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (DigestAlgorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (
            DigestAlgorithm.SHA256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
    ],
)
def test_rfc7616_vectors(algorithm: DigestAlgorithm, expected: str) -> None:
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    response = compute_response(
        ha1=ha1,
        algorithm=algorithm,
        method="GET",
        uri="/dir/index.html",
        nonce=RFC7616_NONCE,
        qop="auth",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )
    assert response == expected


def test_rfc7616_vector_through_parse_and_verify() -> None:
    header = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        "algorithm=SHA-256, "
        f'nonce="{RFC7616_NONCE}", nc=00000001, cnonce="{RFC7616_CNONCE}", qop=auth, '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        f'opaque="{RFC7616_OPAQUE}"'
    )
    creds = DigestCredentials.parse(header)
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", DigestAlgorithm.SHA256)
    assert verify(creds, ha1=ha1, method="GET")
    assert not verify(creds, ha1=ha1, method="POST")
    wrong = compute_ha1("Mufasa", RFC7616_REALM, "Circle of life", DigestAlgorithm.SHA256)
    assert not verify(creds, ha1=wrong, method="GET")


def test_rfc2617_md5_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", DigestAlgorithm.MD5)
    response = compute_response(
        ha1=ha1,
        algorithm=DigestAlgorithm.MD5,
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc=1,
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def _md5(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.md5(data).hexdigest()


def test_legacy_no_qop_matches_rfc2069_formula() -> None:
    ha1 = _md5("bob:example.com:pw")
    expected = _md5(f"{ha1}:abc:{_md5('REGISTER:sip:example.com')}")
    got = compute_response(
        ha1=compute_ha1("bob", "example.com", "pw", DigestAlgorithm.MD5),
        algorithm=DigestAlgorithm.MD5,
        method="REGISTER",
        uri="sip:example.com",
        nonce="abc",
        qop=None,
        nc=None,
        cnonce=None,
    )
    assert got == expected


def test_auth_int_hashes_body() -> None:
    ha1 = _md5("bob:example.com:pw")
    body = b"v=0\r\n"
    ha2 = _md5(f"INVITE:sip:x@example.com:{_md5(body)}")
    expected = _md5(f"{ha1}:n:0000000a:c:auth-int:{ha2}")
    got = compute_response(
        ha1=ha1,
        algorithm=DigestAlgorithm.MD5,
        method="INVITE",
        uri="sip:x@example.com",
        nonce="n",
        qop="auth-int",
        nc=10,
        cnonce="c",
        body=body,
    )
    assert got == expected


def test_sess_variant_rekeys_ha1() -> None:
    base = _md5("bob:example.com:pw")
    session = _md5(f"{base}:n:c")
    ha2 = _md5("REGISTER:sip:example.com")
    expected = _md5(f"{session}:n:00000001:c:auth:{ha2}")
    assert compute_ha1("bob", "example.com", "pw", DigestAlgorithm.MD5_SESS) == base
    got = compute_response(
        ha1=base,
        algorithm=DigestAlgorithm.MD5_SESS,
        method="REGISTER",
        uri="sip:example.com",
        nonce="n",
        qop="auth",
        nc=1,
        cnonce="c",
    )
    assert got == expected


@pytest.mark.parametrize(
    ("qop", "nc", "cnonce", "reason"),
    [
        ("auth", None, "c", "missing nc"),
        ("auth", 1, None, "missing cnonce"),
        ("auth-conf", 1, "c", "bad qop"),
    ],
)
def test_compute_response_errors(
    qop: str | None, nc: int | None, cnonce: str | None, reason: str
) -> None:
    with pytest.raises(DigestError, match=reason):
        compute_response(
            ha1="0" * 32,
            algorithm=DigestAlgorithm.MD5,
            method="REGISTER",
            uri="sip:a",
            nonce="n",
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )


def test_sess_without_cnonce_is_an_error() -> None:
    with pytest.raises(DigestError, match="missing cnonce"):
        compute_response(
            ha1="0" * 64,
            algorithm=DigestAlgorithm.SHA256_SESS,
            method="REGISTER",
            uri="sip:a",
            nonce="n",
            qop=None,
            nc=None,
            cnonce=None,
        )


# --- parse_auth_params ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scheme", "params"),
    [
        ('Digest a=b, c="d,e"', "Digest", {"a": "b", "c": "d,e"}),
        ("digest A=b", "digest", {"a": "b"}),
        ('Digest realm="a \\"quoted\\" \\\\ realm"', "Digest", {"realm": 'a "quoted" \\ realm'}),
        ('  Digest   a = "x" ,b=y,,  c="" ', "Digest", {"a": "x", "b": "y", "c": ""}),
        ("Digest a=b,\r\n\tc=d", "Digest", {"a": "b", "c": "d"}),
        ("Digest", "Digest", {}),
        (
            'Digest uri="sip:a@b;transport=tcp", NC=00000001',
            "Digest",
            {
                "uri": "sip:a@b;transport=tcp",
                "nc": "00000001",
            },
        ),
        ("Digest uri=sip:bob@example.com", "Digest", {"uri": "sip:bob@example.com"}),
    ],
)
def test_parse_auth_params(value: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_auth_params(value) == (scheme, params)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "missing auth scheme"),
        ('Digest a="unterminated', "unterminated"),
        ('Digest a="ends in backslash\\"', "unterminated"),
        ("Digest a", "has no value"),
        ("Digest a=", "has no value"),
        ("Digest a=,b=c", "has no value"),
        ("Digest a=b c=d", "unexpected"),
        ('Digest a="b"c', "unexpected"),
        ("Digest a=b, a=c", "duplicate parameter a"),
        ("Digest =b", "expected parameter name"),
        ("Digest, a=b", "unexpected"),
        ('Digest a="x"; b=c', "unexpected"),
    ],
)
def test_parse_auth_params_garbage(value: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        parse_auth_params(value)


# --- DigestCredentials.parse -----------------------------------------------------------------

GOOD = (
    'Digest username="bob", realm="example.com", nonce="n1", uri="sip:example.com", '
    'response="{resp}", algorithm={alg}, qop=auth, nc=0000000a, cnonce="c1", opaque="o"'
)


def test_credentials_parse_fields() -> None:
    creds = DigestCredentials.parse(GOOD.format(resp="AB" * 32, alg="sha-256"))
    assert creds == DigestCredentials(
        username="bob",
        realm="example.com",
        nonce="n1",
        uri="sip:example.com",
        response="ab" * 32,
        algorithm=DigestAlgorithm.SHA256,
        qop="auth",
        nc=10,
        cnonce="c1",
        opaque="o",
    )


def test_credentials_algorithm_defaults_to_md5() -> None:
    value = 'DIGEST username="bob", realm="r", nonce="n", uri="sip:r", response="' + "0" * 32 + '"'
    creds = DigestCredentials.parse(value)
    assert creds.algorithm is DigestAlgorithm.MD5
    assert creds.qop is None and creds.nc is None and creds.cnonce is None


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response"])
def test_credentials_missing_param(missing: str) -> None:
    params = {
        "username": '"bob"',
        "realm": '"r"',
        "nonce": '"n"',
        "uri": '"sip:r"',
        "response": '"' + "0" * 32 + '"',
    }
    del params[missing]
    value = "Digest " + ", ".join(f"{k}={v}" for k, v in params.items())
    with pytest.raises(DigestError, match=f"missing {missing}"):
        DigestCredentials.parse(value)


def test_credentials_name_the_first_missing_param() -> None:
    with pytest.raises(DigestError, match="missing realm"):
        DigestCredentials.parse('Digest username="bob", response="' + "0" * 32 + '"')


@pytest.mark.parametrize(("nc", "value"), [("00000001", 1), ("0000000a", 10), ("0000001F", 31)])
def test_credentials_nc_is_hex(nc: str, value: int) -> None:
    tail = f'response="{"0" * 32}", qop=auth, nc={nc}, cnonce="c"'
    assert DigestCredentials.parse(BASE + tail).nc == value


BASE = 'Digest username="bob", realm="r", nonce="n", uri="sip:r", '


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ('response="' + "0" * 32 + '", qop=auth, nc=1, cnonce="c"', "bad nc '1'"),
        ('response="' + "0" * 32 + '", qop=auth, nc=0000000g, cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc=000000001, cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc=00000000, cnonce="c"', "bad nc"),
        # int(x, 16) alone would take these: the nc grammar is exactly 8 hex digits.
        ('response="' + "0" * 32 + '", qop=auth, nc=0x000001, cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc=+0000001, cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc=0000_001, cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc="١٢٣٤٥٦٧٨", cnonce="c"', "bad nc"),
        ('response="' + "0" * 32 + '", qop=auth, cnonce="c"', "missing nc"),
        ('response="' + "0" * 32 + '", qop=auth, nc=00000001', "missing cnonce"),
        ('response="' + "0" * 32 + '", nc=00000001', "nc without qop"),
        ('response="' + "0" * 32 + '", qop=auth-conf, nc=00000001, cnonce="c"', "bad qop"),
        ('response="' + "0" * 64 + '", algorithm=SHA-512-256', "unsupported algorithm SHA-512-256"),
        ('response="' + "0" * 32 + '", algorithm=SHA-256', "bad response for SHA-256"),
        ('response="' + "z" * 32 + '"', "bad response for MD5"),
        ('response="' + "0" * 32 + '", algorithm=MD5-sess', "missing cnonce"),
        ('response="' + "0" * 32 + '", userhash=true', "userhash not supported"),
    ],
)
def test_credentials_bad_values(tail: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        DigestCredentials.parse(BASE + tail)


def test_credentials_other_scheme() -> None:
    with pytest.raises(DigestError, match="unsupported auth scheme Basic"):
        DigestCredentials.parse("Basic Ym9iOnB3")


@pytest.mark.parametrize("field", ["username", "realm", "nonce", "uri", "cnonce", "opaque"])
@pytest.mark.parametrize("bad", ["\r\nVia: x", "\r", "\n", "\x00"])
def test_credentials_reject_header_injection(field: str, bad: str) -> None:
    fields: dict[str, object] = {
        "username": "bob",
        "realm": "r",
        "nonce": "n",
        "uri": "sip:r",
        "response": "0" * 32,
        "qop": "auth",
        "nc": 1,
        "cnonce": "c",
        "opaque": "o",
    }
    fields[field] = f"a{bad}b"
    with pytest.raises(DigestError, match=f"^{field} contains a control character$"):
        DigestCredentials(**fields)  # type: ignore[arg-type]


def test_credentials_round_trip() -> None:
    creds = DigestCredentials(
        username='we"ird\\user',
        realm="r",
        nonce="n",
        uri="sip:r;transport=tcp",
        response="f" * 64,
        algorithm=DigestAlgorithm.SHA256_SESS,
        qop="auth",
        nc=0xFFFFFFFF,
        cnonce="c,c",
        opaque="o",
    )
    assert DigestCredentials.parse(creds.to_header()) == creds


# --- DigestChallenge --------------------------------------------------------------------------


def test_challenge_to_header() -> None:
    challenge = DigestChallenge(
        realm="sip.example.com", nonce="abc", algorithm=DigestAlgorithm.SHA256
    )
    assert challenge.to_header() == (
        'Digest realm="sip.example.com", nonce="abc", algorithm=SHA-256, qop="auth"'
    )
    stale = DigestChallenge(
        realm="r", nonce="n", algorithm=DigestAlgorithm.MD5, stale=True, opaque="o"
    )
    assert stale.to_header() == (
        'Digest realm="r", nonce="n", algorithm=MD5, qop="auth", stale=true, opaque="o"'
    )
    legacy = DigestChallenge(realm="r", nonce="n", algorithm=DigestAlgorithm.MD5, qop=None)
    assert legacy.to_header() == 'Digest realm="r", nonce="n", algorithm=MD5'


def test_challenge_round_trip() -> None:
    challenge = DigestChallenge(
        realm='r "x"', nonce="n", algorithm=DigestAlgorithm.SHA256_SESS, stale=True, opaque="o"
    )
    assert DigestChallenge.parse(challenge.to_header()) == challenge


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"realm": ""}, "empty realm"),
        ({"nonce": ""}, "empty nonce"),
        ({"qop": "auth-conf"}, "bad qop"),
        ({"nonce": "a\nb"}, "control character"),
    ],
)
def test_challenge_validation(kwargs: dict[str, str], reason: str) -> None:
    fields: dict[str, object] = {"realm": "r", "nonce": "n", "algorithm": DigestAlgorithm.MD5}
    fields.update(kwargs)
    with pytest.raises(DigestError, match=reason):
        DigestChallenge(**fields)  # type: ignore[arg-type]


# --- client <-> server end to end -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(DigestAlgorithm))
@pytest.mark.parametrize("qop", ["auth", "auth-int", "auth,auth-int", None])
def test_build_authorization_verifies(algorithm: DigestAlgorithm, qop: str | None) -> None:
    challenge = DigestChallenge(
        realm="sip.example.com", nonce="nonce-1", algorithm=algorithm, qop=qop, opaque="op"
    )
    body = b"some body"
    header = build_authorization(
        challenge,
        username="alice",
        password="s3cret",
        method="REGISTER",
        uri="sip:sip.example.com",
        cnonce="cn",
        nc=3,
        body=body,
    )
    creds = DigestCredentials.parse(header)
    assert creds.algorithm is algorithm
    assert creds.opaque == "op"
    assert creds.qop == (None if qop is None else ("auth-int" if qop == "auth-int" else "auth"))
    assert creds.nc == (None if qop is None else 3)
    ha1 = compute_ha1("alice", "sip.example.com", "s3cret", algorithm)
    assert verify(creds, ha1=ha1, method="REGISTER", body=body)
    assert not verify(creds, ha1=ha1, method="INVITE", body=body)
    bad = compute_ha1("alice", "sip.example.com", "wrong", algorithm)
    assert not verify(creds, ha1=bad, method="REGISTER", body=body)


def test_algorithm_tokens() -> None:
    assert DigestAlgorithm.from_token("sha-256-SESS") is DigestAlgorithm.SHA256_SESS
    assert DigestAlgorithm("MD5") is DigestAlgorithm.MD5
    assert str(DigestAlgorithm.SHA256) == "SHA-256"
    with pytest.raises(DigestError, match="unsupported algorithm SHA-512-256"):
        DigestAlgorithm.from_token("SHA-512-256")


def test_challenge_parse_defaults_and_errors() -> None:
    challenge = DigestChallenge.parse('digest realm="r", nonce="n", qop="auth,auth-int"')
    assert challenge == DigestChallenge(
        realm="r", nonce="n", algorithm=DigestAlgorithm.MD5, qop="auth,auth-int"
    )
    assert DigestChallenge.parse('Digest realm="r", nonce="n"').qop is None
    with pytest.raises(DigestError, match="missing nonce"):
        DigestChallenge.parse('Digest realm="r"')
    with pytest.raises(DigestError, match="unsupported auth scheme Basic"):
        DigestChallenge.parse('Basic realm="r"')


@pytest.mark.parametrize("nc", [0, 0x1_0000_0000])
def test_credentials_nc_range(nc: int) -> None:
    with pytest.raises(DigestError, match="bad nc"):
        DigestCredentials(
            username="u",
            realm="r",
            nonce="n",
            uri="sip:r",
            response="0" * 32,
            qop="auth",
            nc=nc,
            cnonce="c",
        )


# parse_auth_params has three tiers (find/slice, one regex per parameter, the strict parser);
# the first two hand anything they are not sure about to the next. Every tier must agree with the
# strict parser on every input: the same result, or (only the strict parser raises) its error.
_AUTH_ALPHABET = 'Digest rnu=",\\ \t\r\nab-.:@;%0Aé\x0b'


def _outcome(parse: Callable[[str], object], value: str) -> object:
    try:
        return parse(value)
    except DigestError as exc:
        return ("error", str(exc))


def _first_tier(value: str) -> tuple[str, dict[str, str]] | None:
    """What the find/slice tier makes of the parameters after the scheme (None: handed on)."""
    from sipserver.sip.digest import _parse_params_fast, _split_scheme

    scheme, pos = _split_scheme(value)
    if pos < 0:
        return None
    params = _parse_params_fast(value, pos)
    return None if params is None else (scheme, params)


def _second_tier(value: str) -> tuple[str, dict[str, str]] | None:
    """What the regex tier makes of the whole value (None: handed on)."""
    from sipserver.sip.digest import _SCHEME_RE, _parse_params_regex

    m = _SCHEME_RE.match(value)
    if m is None:
        return None
    params = _parse_params_regex(value, m.end())
    return None if params is None else (m.group(1), params)


def _reference_digest_params(value: str) -> dict[str, str]:
    """_digest_params as first written: the scheme token checked, then the strict parser."""
    from sipserver.sip.digest import _parse_auth_params_strict

    m = re.match(r"[A-Za-z0-9\-.!%*_+`'~]+", value.lstrip(" \t\r\n"))
    if m is not None and m.group().lower() != "digest":
        raise DigestError(f"unsupported auth scheme {m.group()}")
    return _parse_auth_params_strict(value)[1]


@hypothesis.given(hypothesis.strategies.text(alphabet=_AUTH_ALPHABET, max_size=60))
@hypothesis.settings(max_examples=3000, deadline=None)
def test_fast_auth_param_parser_agrees_with_strict(value: str) -> None:
    from sipserver.sip.digest import _digest_params, _parse_auth_params_strict

    expected = _outcome(_parse_auth_params_strict, value)
    assert _outcome(parse_auth_params, value) == expected
    for tier in (_first_tier, _second_tier):
        taken = tier(value)
        assert taken is None or taken == expected, tier.__name__
    assert _outcome(_digest_params, value) == _outcome(_reference_digest_params, value)


_st = hypothesis.strategies


@_st.composite
def _auth_headers(draw: _st.DrawFn) -> str:
    parts = []
    for _ in range(draw(_st.integers(0, 6))):
        name = draw(
            _st.sampled_from(["username", "realm", "nonce", "uri", "qop", "nc", "X-y", "NC", "Uri"])
        )
        alphabet = draw(_st.sampled_from(['abc:@;,= \\"\t', "aB09:@;.-=/é\r\n "]))
        raw = draw(_st.text(alphabet=alphabet, max_size=12))
        value = draw(_st.sampled_from([f'"{raw}"', raw, f'"{raw}', raw.strip()]))
        eq = draw(_st.sampled_from(["=", "=", " = ", "\t="]))
        parts.append(f"{name}{eq}{value}")
    sep = draw(_st.sampled_from([", ", ",", " ,", ",,", " ", ",\r\n\t"]))
    scheme = draw(
        _st.sampled_from(["Digest ", "digest\t", "Digest", " Digest  ", "DIGEST ", "Basic "])
    )
    tail = draw(_st.sampled_from(["", "", ",", ", ", " "]))
    return scheme + sep.join(parts) + tail


@hypothesis.given(_auth_headers())
@hypothesis.settings(max_examples=3000, deadline=None)
def test_fast_auth_param_parser_agrees_on_structured_input(value: str) -> None:
    test_fast_auth_param_parser_agrees_with_strict.hypothesis.inner_test(value)  # type: ignore[attr-defined]


# The common form as user agents send it: the first tier must take it itself (not hand it on)
# and give the strict parser's result.
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_QUOTED_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
_BARE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",\\')


@_st.composite
def _common_auth_headers(draw: _st.DrawFn) -> str:
    names = draw(
        _st.lists(
            _st.text(alphabet=_NAME_CHARS, min_size=1, max_size=9),
            max_size=10,
            unique_by=str.lower,
        )
    )
    parts = []
    for name in names:
        if draw(_st.booleans()):
            value = '"' + draw(_st.text(alphabet=_QUOTED_CHARS, max_size=20)) + '"'
        else:
            value = draw(_st.text(alphabet=_BARE_CHARS, min_size=1, max_size=20))
        parts.append(f"{name}={value}")
    sep = draw(_st.sampled_from([",", ", "]))
    scheme = draw(_st.sampled_from(["Digest", "digest", "DIGEST", "Basic", "X1"]))
    tail = draw(_st.sampled_from(["", ",", ", "])) if parts else ""
    return f"{scheme} " + sep.join(parts) + tail


@hypothesis.given(_common_auth_headers())
@hypothesis.settings(max_examples=500, deadline=None)
def test_first_tier_takes_the_common_form_itself(value: str) -> None:
    from sipserver.sip.digest import _parse_auth_params_strict

    assert _first_tier(value) == _parse_auth_params_strict(value)
    test_fast_auth_param_parser_agrees_with_strict.hypothesis.inner_test(value)  # type: ignore[attr-defined]


# The common form with a few characters inserted or deleted: the inputs next to the first
# tier's boundary, where it must either give the strict result or hand the value on.
@_st.composite
def _near_common_auth_headers(draw: _st.DrawFn) -> str:
    value = draw(_common_auth_headers())
    for _ in range(draw(_st.integers(1, 3))):
        pos = draw(_st.integers(0, len(value)))
        if draw(_st.booleans()):
            value = value[:pos] + draw(_st.sampled_from(' \t\r\n,,==""\\é\x0b-A')) + value[pos:]
        else:
            value = value[:pos] + value[pos + 1 :]
    return value


@hypothesis.given(_near_common_auth_headers())
@hypothesis.settings(max_examples=800, deadline=None)
def test_fast_auth_param_parser_agrees_near_the_common_form(value: str) -> None:
    test_fast_auth_param_parser_agrees_with_strict.hypothesis.inner_test(value)  # type: ignore[attr-defined]


_TYPICAL = (
    'Digest username="1001",realm="example.com",nonce="ZTk1YjQ3MmEtNjM0Ni00ZWQ5",'
    'uri="sip:example.com",response="0123456789abcdef0123456789abcdef",algorithm=MD5,'
    'cnonce="6b8b4567",qop=auth,nc=00000001'
)
_TYPICAL_PARAMS = {
    "username": "1001",
    "realm": "example.com",
    "nonce": "ZTk1YjQ3MmEtNjM0Ni00ZWQ5",
    "uri": "sip:example.com",
    "response": "0123456789abcdef0123456789abcdef",
    "algorithm": "MD5",
    "cnonce": "6b8b4567",
    "qop": "auth",
    "nc": "00000001",
}


# (value, what the first tier makes of it: its result or None when it hands the value on,
# the final result or the strict parser's error)
_TIER_BOUNDARIES: list[tuple[str, object, object]] = [
    (_TYPICAL, ("Digest", _TYPICAL_PARAMS), ("Digest", _TYPICAL_PARAMS)),
    (
        _TYPICAL.replace(",", ", "),
        ("Digest", _TYPICAL_PARAMS),
        ("Digest", _TYPICAL_PARAMS),
    ),
    (
        "Digest nc=00000001, qop=auth-int, algorithm=SHA-256-sess, uri=sip:a@b;transport=tcp",
        (
            "Digest",
            {
                "nc": "00000001",
                "qop": "auth-int",
                "algorithm": "SHA-256-sess",
                "uri": "sip:a@b;transport=tcp",
            },
        ),
        (
            "Digest",
            {
                "nc": "00000001",
                "qop": "auth-int",
                "algorithm": "SHA-256-sess",
                "uri": "sip:a@b;transport=tcp",
            },
        ),
    ),
    # empty quoted value
    ('Digest a=""', ("Digest", {"a": ""}), ("Digest", {"a": ""})),
    ('Digest a="",b=c', ("Digest", {"a": "", "b": "c"}), ("Digest", {"a": "", "b": "c"})),
    # empty list element: handed on, skipped by the next tier
    ("Digest a=b,,c=d", None, ("Digest", {"a": "b", "c": "d"})),
    ("Digest a=b, ,c=d", None, ("Digest", {"a": "b", "c": "d"})),
    # trailing comma
    ("Digest a=b,", ("Digest", {"a": "b"}), ("Digest", {"a": "b"})),
    ('Digest a="b", ', ("Digest", {"a": "b"}), ("Digest", {"a": "b"})),
    ("Digest a=b,  ", None, ("Digest", {"a": "b"})),
    # tabs
    ("Digest a=b,\tc=d", None, ("Digest", {"a": "b", "c": "d"})),
    ("Digest a=\tb", None, ("Digest", {"a": "b"})),
    ("Digest a=b\t", None, ("Digest", {"a": "b"})),
    ("Digest\ta=b", ("Digest", {"a": "b"}), ("Digest", {"a": "b"})),
    # folded CRLF whitespace (between parameters; inside a quoted string it is content)
    ("Digest a=b,\r\n c=d", None, ("Digest", {"a": "b", "c": "d"})),
    ('Digest a="b"\r\n ,c=d', None, ("Digest", {"a": "b", "c": "d"})),
    ('Digest a="x\r\n y"', ("Digest", {"a": "x\r\n y"}), ("Digest", {"a": "x\r\n y"})),
    # whitespace around names and '='
    ("Digest a = b", None, ("Digest", {"a": "b"})),
    ("Digest  a=b", None, ("Digest", {"a": "b"})),
    # scheme case, and schemes other than Digest (parse_auth_params takes any scheme)
    ("digest A=b", ("digest", {"a": "b"}), ("digest", {"a": "b"})),
    ('Basic realm="r"', ("Basic", {"realm": "r"}), ("Basic", {"realm": "r"})),
    ("Basic Ym9iOnB3", None, ("error", "parameter ym9ionb3 has no value")),
    ("Basic Ym9iOnB3==", ("Basic", {"ym9ionb3": "="}), ("Basic", {"ym9ionb3": "="})),
    # missing '='
    ("Digest a", None, ("error", "parameter a has no value")),
    ("Digest a, b=c", None, ("error", "parameter a has no value")),
    ("Digest a=", None, ("error", "parameter a has no value")),
    ("Digest a=,b=c", None, ("error", "parameter a has no value")),
    # duplicate parameter, also in another case
    ("Digest a=b,a=c", None, ("error", "duplicate parameter a")),
    ('Digest a=b, A="c"', None, ("error", "duplicate parameter a")),
    # quoted value with a comma (and '=' and a space)
    ('Digest a="b,c=d e",f=g', ("Digest", {"a": "b,c=d e", "f": "g"}), None),
    # unterminated quote
    ('Digest a="b', None, ("error", "unterminated quoted string in a")),
    ('Digest a="b,c=d', None, ("error", "unterminated quoted string in a")),
    ('Digest a=b, c="', None, ("error", "unterminated quoted string in c")),
    # text after a value
    ('Digest a="b"c', None, ("error", "unexpected 'c' after parameter a")),
    ('Digest a=b"c"', None, ("error", "unexpected '\"' after parameter a")),
    ("Digest a=b\x0bc", None, ("error", "unexpected '\\x0b' after parameter a")),
    # backslashes, other token characters, non-ASCII: handed on
    ('Digest a="x\\"y"', None, ("Digest", {"a": 'x"y'})),
    ("Digest a=x\\y", None, ("Digest", {"a": "x\\y"})),
    ("Digest X-y=1", None, ("Digest", {"x-y": "1"})),
    ('Digest username="José"', None, ("Digest", {"username": "José"})),
    ("Digesté a=b", None, ("error", "unexpected 'é' after auth scheme")),
    ("Digest a=b\x7f", None, ("Digest", {"a": "b\x7f"})),
    # no parameters
    ("Digest ", ("Digest", {}), ("Digest", {})),
    ("Digest", ("Digest", {}), ("Digest", {})),
    (" Digest a=b", ("Digest", {"a": "b"}), ("Digest", {"a": "b"})),
    ("", None, ("error", "missing auth scheme")),
    (" =a", None, ("error", "missing auth scheme")),
]


@pytest.mark.parametrize(("value", "first", "final"), _TIER_BOUNDARIES)
def test_auth_param_tier_boundaries(value: str, first: object, final: object) -> None:
    from sipserver.sip.digest import _parse_auth_params_strict

    assert _first_tier(value) == first
    expected = _outcome(_parse_auth_params_strict, value)
    assert final is None or expected == final
    assert _outcome(parse_auth_params, value) == expected
    test_fast_auth_param_parser_agrees_with_strict.hypothesis.inner_test(value)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Basic Ym9iOnB3", "unsupported auth scheme Basic"),
        ("Basic Ym9iOnB3==", "unsupported auth scheme Basic"),
        ('Basic realm="r"', "unsupported auth scheme Basic"),
        ("  Bearer\tabc", "unsupported auth scheme Bearer"),
        ("Basic", "unsupported auth scheme Basic"),
        ("Basic;x", "unsupported auth scheme Basic"),
        ("Digestx a=b", "unsupported auth scheme Digestx"),
        ("Digest a", "parameter a has no value"),
        ("Digest;x", "unexpected ';' after auth scheme"),
        ("", "missing auth scheme"),
    ],
)
def test_digest_params_reports_another_scheme_first(value: str, reason: str) -> None:
    from sipserver.sip.digest import _digest_params

    with pytest.raises(DigestError) as caught:
        _digest_params(value)
    assert str(caught.value) == reason
    with pytest.raises(DigestError) as reference:
        _reference_digest_params(value)
    assert str(reference.value) == reason


def test_credentials_parse_typical_header() -> None:
    for value in (_TYPICAL, _TYPICAL.replace(",", ", "), _TYPICAL.replace("Digest", "digest")):
        creds = DigestCredentials.parse(value)
        assert creds.username == "1001" and creds.uri == "sip:example.com"
        assert creds.nc == 1 and creds.qop == "auth" and creds.cnonce == "6b8b4567"
        assert creds.algorithm is DigestAlgorithm.MD5


# Real-world shapes the fast path itself must accept (not hand to the strict parser), with the
# strict parser's result: quoted commas and escapes, bare values, folded whitespace, empty values.
_VALID_AUTH_HEADERS = [
    'Digest username="bench",realm="127.0.0.1",cnonce="6b8b4567",nc=00000001,qop=auth,'
    'uri="sip:127.0.0.1:5090",nonce="AbC-_x",response="0123456789abcdef0123456789abcdef",'
    "algorithm=MD5",
    'Digest username="a,b", realm="r", nonce="n", uri=sip:x@y;transport=udp, response="00"',
    'Digest username="say \\"hi\\"", realm="back\\\\slash", opaque=""',
    'digest\tusername = "u" ,\r\n realm="r",, nonce="n" ',
    "Digest",
]


@pytest.mark.parametrize("value", _VALID_AUTH_HEADERS)
def test_fast_auth_param_parser_takes_valid_headers_itself(value: str) -> None:
    from sipserver.sip.digest import _PARAM_RE, _SCHEME_RE, _parse_auth_params_strict

    # The fast path's own matches reach the end of the value: no fallback to the strict parser.
    scheme = _SCHEME_RE.match(value)
    assert scheme is not None
    pos = scheme.end()
    while pos < len(value):
        param = _PARAM_RE.match(value, pos)
        assert param is not None, value[pos:]
        pos = param.end()
    assert parse_auth_params(value) == _parse_auth_params_strict(value)


def test_fast_auth_param_parser_unescapes_and_keeps_quoted_commas() -> None:
    scheme, params = parse_auth_params(_VALID_AUTH_HEADERS[2])
    assert scheme == "Digest"
    assert params == {"username": 'say "hi"', "realm": "back\\slash", "opaque": ""}
    assert parse_auth_params(_VALID_AUTH_HEADERS[1])[1]["username"] == "a,b"
    assert parse_auth_params(_VALID_AUTH_HEADERS[1])[1]["uri"] == "sip:x@y;transport=udp"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('Digest a="b', "unterminated quoted string in a"),
        ("Digest a=b, a=c", "duplicate parameter a"),
        ("Digest a", "parameter a has no value"),
        ('Digest a=b "c"', "unexpected '\"' after parameter a"),
    ],
)
def test_malformed_auth_params_get_the_strict_parsers_error(value: str, reason: str) -> None:
    with pytest.raises(DigestError) as caught:
        parse_auth_params(value)
    assert str(caught.value) == reason


@hypothesis.given(hypothesis.strategies.binary(max_size=300))
@hypothesis.settings(max_examples=200, deadline=None)
def test_md5_is_hashlibs_md5(data: bytes) -> None:
    from sipserver.sip import digest

    assert digest._MD5(data).hexdigest() == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("nc", [1, 255, 256, 0xFFFFFFFF])
def test_response_formats_nc_as_eight_hex_digits(nc: int) -> None:
    # RFC 7616 §3.4.1: KD(HA1, nonce ":" nc ":" cnonce ":" qop ":" H(A2)), nc as 8LHEX.
    ha1, ha2 = _md5("bob:r:pw"), _md5("REGISTER:sip:r")
    expected = _md5(f"{ha1}:n:{nc:08x}:c:auth:{ha2}")
    got = compute_response(
        ha1=ha1,
        algorithm=DigestAlgorithm.MD5,
        method="REGISTER",
        uri="sip:r",
        nonce="n",
        qop="auth",
        nc=nc,
        cnonce="c",
    )
    assert got == expected


def test_md5_falls_back_to_hashlib_without_the_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from sipserver.sip import digest

    def no_builtin(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_builtin)
    factory = digest._md5_factory()
    assert factory(b"abc").hexdigest() == hashlib.md5(b"abc").hexdigest()


@pytest.mark.parametrize(
    "response",
    [
        "0" * 31 + "g",
        "g" + "0" * 31,
        " " + "0" * 31,
        "0" * 16 + "-" + "0" * 15,
        "\u0660" * 32,
        # int(x, 16) or bytes.fromhex would take some of these: the check must not.
        "0x" + "0" * 30,
        "+" + "0" * 31,
        "0" * 15 + "_" + "0" * 16,
        "0" * 30 + " 0",
        "\u00e9" * 32,
    ],
)
def test_response_must_be_hex_digits(response: str) -> None:
    with pytest.raises(DigestError, match="bad response for MD5"):
        DigestCredentials.parse(
            f'Digest username="bob", realm="r", nonce="n", uri="sip:r", response="{response}"'
        )


def test_response_in_upper_case_hex_is_kept_lower_cased() -> None:
    value = (
        'Digest username="bob", realm="r", nonce="n", uri="sip:r", response="'
        + "AbCdEf" * 5
        + '09"'
    )
    assert DigestCredentials.parse(value).response == "abcdef" * 5 + "09"


# DigestCredentials.parse reads the form user agents send straight into the fields
# (_credentials_fast) and hands everything else to _credentials_general, which goes through
# the three tiers above: on every input the two must give equal credentials or the same error.
_CREDENTIAL_VALUES: dict[str, list[str]] = {
    "response": ["0123456789abcdef0123456789abcdef", "0123456789ABCDEF" * 2, "0" * 64, "xyz", ""],
    "nc": ["00000001", "0000000a", "0000000A", "00000000", "1", "0000000g", "000000001"],
    "qop": ["auth", "AUTH", "auth-int", "bogus", "auth,auth-int", ""],
    "algorithm": ["MD5", "md5", "SHA-256", "MD5-sess", "SHA-512-256", "bogus"],
    "userhash": ["true", "false", "TRUE"],
}
_CREDENTIAL_NAMES = [
    *("username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce"),
    *("opaque", "userhash", "x", "nonc", "uris", "cnonce2", "n", "user-name"),
]


@_st.composite
def _credentials_headers(draw: _st.DrawFn) -> str:
    names = draw(_st.lists(_st.sampled_from(_CREDENTIAL_NAMES), max_size=4))
    if draw(_st.integers(0, 3)):
        required = ["username", "realm", "nonce", "uri", "response"]
        names = draw(_st.permutations(required + names))
    parts = []
    for name in names:
        spelled = draw(_st.sampled_from([name, name, name, name.upper(), name.capitalize()]))
        quoted = draw(_st.booleans())
        if name in _CREDENTIAL_VALUES and draw(_st.integers(0, 4)):
            value = draw(_st.sampled_from(_CREDENTIAL_VALUES[name]))
        elif draw(_st.integers(0, 3)):
            value = draw(_st.text(alphabet=_QUOTED_CHARS if quoted else _BARE_CHARS, max_size=10))
        else:
            value = draw(_st.text(alphabet='ab:@;.-=/ ,"\\é\r\n', max_size=10))
        parts.append(f'{spelled}="{value}"' if quoted else f"{spelled}={value}")
    sep = draw(_st.sampled_from([",", ", ", ",", ", ", " ,", ",,", ",  "]))
    scheme = draw(_st.sampled_from(["Digest ", "Digest ", "digest ", "DIGEST ", "Basic ", "Dig "]))
    value = scheme + sep.join(parts) + draw(_st.sampled_from(["", "", "", ",", " "]))
    for _ in range(draw(_st.sampled_from([0, 0, 0, 1, 2]))):
        pos = draw(_st.integers(0, len(value)))
        value = value[:pos] + draw(_st.sampled_from(' \t,=""\\é-Aa1')) + value[pos:]
    return value


def _fast_credentials(value: str) -> object:
    from sipserver.sip.digest import _credentials_fast, _split_scheme

    scheme, pos = _split_scheme(value)
    if pos < 0 or scheme.lower() != "digest":
        return None
    return _outcome(lambda v: _credentials_fast(v, pos), value)


@hypothesis.given(_credentials_headers())
@hypothesis.settings(max_examples=1000, deadline=None)
def test_credentials_fast_path_agrees_with_the_tiers(value: str) -> None:
    from sipserver.sip.digest import _credentials_general

    expected = _outcome(_credentials_general, value)
    assert _outcome(DigestCredentials.parse, value) == expected
    fast = _fast_credentials(value)
    assert fast is None or fast == expected


@_st.composite
def _clean_credentials_headers(draw: _st.DrawFn) -> str:
    """The fast path's own form: the names of credentials, each once, the required ones."""
    optional = ["algorithm", "qop", "nc", "cnonce", "opaque"]
    names = ["username", "realm", "nonce", "uri", "response"]
    names += draw(_st.lists(_st.sampled_from(optional), unique=True))
    parts = []
    for name in draw(_st.permutations(names)):
        spelled = draw(_st.sampled_from([name, name, name.upper(), name.capitalize()]))
        if name in _CREDENTIAL_VALUES and draw(_st.integers(0, 5)):
            value = draw(_st.sampled_from(_CREDENTIAL_VALUES[name][:3]))
        else:
            value = draw(_st.text(alphabet=_BARE_CHARS, min_size=1, max_size=10))
        parts.append(f'{spelled}="{value}"' if draw(_st.booleans()) else f"{spelled}={value}")
    return draw(_st.sampled_from(["Digest ", "digest "])) + draw(
        _st.sampled_from([",", ", "])
    ).join(parts)


@hypothesis.given(_clean_credentials_headers())
@hypothesis.settings(max_examples=400, deadline=None)
def test_credentials_fast_path_agrees_on_its_own_form(value: str) -> None:
    test_credentials_fast_path_agrees_with_the_tiers.hypothesis.inner_test(value)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "value",
    [
        _TYPICAL,
        _TYPICAL.replace(",", ", ").replace("Digest", "DIGEST"),
        _VALID_AUTH_HEADERS[0],
        _VALID_AUTH_HEADERS[0].replace("username", "UserName").replace("algorithm=MD5", "opaque=x"),
    ],
)
def test_credentials_fast_path_takes_what_user_agents_send(value: str) -> None:
    from sipserver.sip.digest import _credentials_general

    fast = _fast_credentials(value)
    assert isinstance(fast, DigestCredentials)
    assert fast == _credentials_general(value) == DigestCredentials.parse(value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (_TYPICAL.replace("nc=00000001", "nc=00000000"), "bad nc '00000000'"),
        (_TYPICAL.replace("algorithm=MD5", "algorithm=SHA-512-256"), "unsupported algorithm"),
        (_TYPICAL.replace("qop=auth", "qop=bogus"), "bad qop 'bogus'"),
        (_TYPICAL.replace("0123456789abcdef0123", "0123"), "bad response for MD5"),
    ],
)
def test_credentials_fast_path_raises_what_the_tiers_raise(value: str, error: str) -> None:
    from sipserver.sip.digest import _credentials_general

    fast = _fast_credentials(value)
    assert fast == _outcome(_credentials_general, value)
    assert isinstance(fast, tuple) and error in fast[1]


@pytest.mark.parametrize(
    "value",
    [
        _TYPICAL + ",userhash=false",  # a name credentials do not read into a field
        _TYPICAL + ",nc=00000002",  # a repeat
        _TYPICAL.replace('realm="example.com",', ""),  # a required one missing
        _TYPICAL.replace('"1001"', '"10\\01"'),  # a quoted-pair
        _TYPICAL.replace(",", " ,", 1),  # space before a comma
    ],
)
def test_credentials_fast_path_hands_on_other_forms(value: str) -> None:
    from sipserver.sip.digest import _credentials_general

    assert _fast_credentials(value) is None
    assert _outcome(DigestCredentials.parse, value) == _outcome(_credentials_general, value)
