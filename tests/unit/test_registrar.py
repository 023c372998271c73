"""REGISTER semantics, RFC 3261 §10.3 steps 6-8: one or more tests per rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from sipserver.registrar.bindings import Binding, MemoryStore, SqliteStore
from sipserver.registrar.registrar import (
    ContactSpec,
    RegisterRequest,
    RegisterResult,
    Registrar,
    RegistrarPolicy,
    _contact_key,
)

T0 = 1_700_000_000.0
AOR = "sip:demo@127.0.0.1"
URI = "sip:demo@192.0.2.4:5062;transport=udp"
URI2 = "sip:demo@192.0.2.5:5060"
POLICY = RegistrarPolicy(min_expires=60, max_expires=3600, default_expires=1800, max_contacts=3)


class CountingStore(MemoryStore):
    """MemoryStore that counts writes, to prove that a request changed nothing."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        self.writes += 1
        super().replace(aor, bindings)


def contact(uri: str = URI, **fields: object) -> ContactSpec:
    return ContactSpec(uri, **fields)  # type: ignore[arg-type]


def register(
    *contacts: ContactSpec,
    cseq: int = 1,
    call_id: str = "call-1",
    **fields: object,
) -> RegisterRequest:
    return RegisterRequest(
        aor=AOR,
        agent="demo",
        call_id=call_id,
        cseq=cseq,
        contacts=contacts,
        **fields,  # type: ignore[arg-type]
    )


def new_registrar(policy: RegistrarPolicy = POLICY) -> tuple[Registrar, CountingStore]:
    store = CountingStore()
    return Registrar(store, policy), store


def ok(result: RegisterResult) -> RegisterResult:
    assert (result.status, result.reason) == (200, "OK"), result
    return result


# --- RFC 3261 §10.3 step 7: expiry of each contact ------------------------------------------


def test_step7_new_binding_uses_expires_header() -> None:
    registrar, store = new_registrar()
    result = ok(
        registrar.handle_register(
            register(
                contact(q=0.7, instance="<urn:uuid:1>"),
                expires=300,
                source="udp:203.0.113.7:5060",
                path=("sip:edge;lr",),
                user_agent="Phone/1.0",
            ),
            now=T0,
        )
    )
    assert (result.added, result.removed, result.refreshed) == (1, 0, 0)
    assert result.bindings == (
        Binding(
            aor=AOR,
            contact=URI,
            expires_at=T0 + 300,
            registered_at=T0,
            call_id="call-1",
            cseq=1,
            q=0.7,
            agent="demo",
            source="udp:203.0.113.7:5060",
            path=("sip:edge;lr",),
            user_agent="Phone/1.0",
            instance="<urn:uuid:1>",
        ),
    )
    assert store.get(AOR) == list(result.bindings)
    assert result.bindings[0].expires_in(T0) == 300


def test_step7_contact_expires_param_overrides_header() -> None:
    registrar, _ = new_registrar()
    result = ok(registrar.handle_register(register(contact(expires=120), expires=300), now=T0))
    assert result.bindings[0].expires_at == T0 + 120


def test_step7_default_expires_when_neither_is_given() -> None:
    registrar, _ = new_registrar()
    result = ok(registrar.handle_register(register(contact()), now=T0))
    assert result.bindings[0].expires_at == T0 + POLICY.default_expires


def test_step7_each_contact_has_its_own_expiry() -> None:
    registrar, _ = new_registrar()
    result = ok(
        registrar.handle_register(
            register(contact(URI, expires=100), contact(URI2), expires=200), now=T0
        )
    )
    assert [b.expires_at for b in result.bindings] == [T0 + 100, T0 + 200]
    assert result.added == 2


@pytest.mark.parametrize(
    ("contact_expires", "header_expires"),
    [(59, None), (1, 3600), (None, 30), (None, 1)],
)
def test_step7_too_brief_is_423_with_min_expires(
    contact_expires: int | None, header_expires: int | None
) -> None:
    """RFC 3261 §10.3 step 7 / §21.4.17: 423 Interval Too Brief carries Min-Expires."""
    registrar, store = new_registrar()
    result = registrar.handle_register(
        register(contact(expires=contact_expires), expires=header_expires), now=T0
    )
    assert result == RegisterResult(423, "Interval Too Brief", min_expires=60)
    assert store.writes == 0


def test_step7_min_expires_itself_is_accepted() -> None:
    registrar, _ = new_registrar()
    result = ok(registrar.handle_register(register(contact(expires=60)), now=T0))
    assert result.bindings[0].expires_at == T0 + 60


def test_step7_423_is_atomic() -> None:
    """One too-brief contact fails the whole request: nothing added, refreshed or removed."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI), expires=300), now=T0))
    before = store.get(AOR)
    writes = store.writes
    result = registrar.handle_register(
        register(
            contact(URI, expires=0),  # would remove
            contact(URI2, expires=600),  # would add
            contact("sip:demo@192.0.2.6", expires=10),  # too brief
            call_id="call-2",
        ),
        now=T0 + 10,
    )
    assert result.status == 423
    assert store.get(AOR) == before
    assert store.writes == writes


def test_step7_longer_than_max_is_shortened() -> None:
    registrar, _ = new_registrar()
    result = ok(registrar.handle_register(register(contact(expires=86_400)), now=T0))
    assert result.bindings[0].expires_at == T0 + POLICY.max_expires
    assert result.bindings[0].expires_in(T0) == 3600


@pytest.mark.parametrize(("contact_expires", "header_expires"), [(-1, None), (None, -5)])
def test_step7_negative_expiry_is_400(
    contact_expires: int | None, header_expires: int | None
) -> None:
    """delta-seconds is unsigned (RFC 3261 §20.19), so a negative expiry is malformed."""
    registrar, store = new_registrar()
    result = registrar.handle_register(
        register(contact(expires=contact_expires), expires=header_expires), now=T0
    )
    assert result == RegisterResult(400, "Invalid Expires")
    assert store.writes == 0


# --- RFC 3261 §10.3 step 6: wildcard and queries --------------------------------------------


def registered_two(registrar: Registrar) -> None:
    ok(
        registrar.handle_register(
            register(contact(URI), contact(URI2), call_id="call-1", cseq=5), now=T0
        )
    )


@pytest.mark.parametrize("call_id", ["call-1", "call-other"])
def test_step6_wildcard_with_expires_zero_removes_everything(call_id: str) -> None:
    registrar, store = new_registrar()
    registered_two(registrar)
    result = ok(
        registrar.handle_register(
            register(wildcard=True, expires=0, call_id=call_id, cseq=6), now=T0 + 1
        )
    )
    assert result.bindings == ()
    assert result.removed == 2
    assert store.get(AOR) == []
    assert store.count() == 0


@pytest.mark.parametrize(
    "request_",
    [
        register(wildcard=True, expires=300, cseq=6),
        register(wildcard=True, cseq=6),  # no Expires header at all
        register(contact(URI2), wildcard=True, expires=0, cseq=6),
        register(contact(URI2, expires=0), wildcard=True, expires=0, cseq=6),
    ],
)
def test_step6_invalid_wildcard_is_400(request_: RegisterRequest) -> None:
    """RFC 3261 §10.3 step 6: "*" needs Expires: 0 and no other Contact."""
    registrar, store = new_registrar()
    registered_two(registrar)
    writes = store.writes
    assert registrar.handle_register(request_, now=T0 + 1) == RegisterResult(
        400, "Invalid wildcard"
    )
    assert len(store.get(AOR)) == 2
    assert store.writes == writes


@pytest.mark.parametrize("cseq", [4, 5])
def test_step6_wildcard_same_call_id_not_higher_cseq_fails(cseq: int) -> None:
    """RFC 3261 §10.3 step 6: same Call-ID and CSeq not higher aborts the whole removal."""
    registrar, store = new_registrar()
    registered_two(registrar)
    result = registrar.handle_register(
        register(wildcard=True, expires=0, cseq=cseq, call_id="call-1"), now=T0 + 1
    )
    assert result == RegisterResult(400, "Out of Order CSeq")
    assert len(store.get(AOR)) == 2


def test_step6_wildcard_on_unknown_aor_is_200() -> None:
    registrar, store = new_registrar()
    result = ok(registrar.handle_register(register(wildcard=True, expires=0), now=T0))
    assert result.removed == 0
    assert store.writes == 0


def test_step6_wildcard_ignores_expired_bindings_for_cseq() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(expires=60), cseq=9), now=T0))
    result = ok(registrar.handle_register(register(wildcard=True, expires=0, cseq=1), now=T0 + 60))
    assert result.removed == 0
    assert store.count() == 0


def test_step6_query_returns_bindings_and_changes_nothing() -> None:
    """RFC 3261 §10.3 step 6/8: a REGISTER without Contact lists the current bindings."""
    registrar, store = new_registrar()
    registered_two(registrar)
    writes = store.writes
    result = ok(registrar.handle_register(register(cseq=6), now=T0 + 10))
    assert [b.contact for b in result.bindings] == [URI, URI2]
    assert (result.added, result.removed, result.refreshed) == (0, 0, 0)
    assert store.writes == writes


def test_step6_query_of_unknown_aor() -> None:
    registrar, _ = new_registrar()
    assert ok(registrar.handle_register(register(), now=T0)).bindings == ()


def test_step6_query_leaves_out_expired_bindings() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, expires=60)), now=T0))
    ok(registrar.handle_register(register(contact(URI2, expires=600), cseq=2), now=T0))
    result = ok(registrar.handle_register(register(cseq=3), now=T0 + 60))
    assert [b.contact for b in result.bindings] == [URI2]
    assert store.count() == 2  # expire() has not run; the query does not write


# --- RFC 3261 §10.3 step 8: updating bindings -----------------------------------------------


def test_step8_refresh_same_call_id_higher_cseq() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(q=0.5), expires=300, cseq=1), now=T0))
    result = ok(
        registrar.handle_register(
            register(
                contact(q=0.9),
                expires=600,
                cseq=2,
                source="tcp:203.0.113.9:40000",
                path=("sip:new-edge;lr",),
                user_agent="Phone/2.0",
            ),
            now=T0 + 100,
        )
    )
    assert (result.added, result.removed, result.refreshed) == (0, 0, 1)
    (b,) = result.bindings
    assert b.registered_at == T0  # creation time is kept
    assert b.expires_at == T0 + 700
    assert (b.cseq, b.call_id, b.q) == (2, "call-1", 0.9)
    assert (b.source, b.path, b.user_agent) == (
        "tcp:203.0.113.9:40000",
        ("sip:new-edge;lr",),
        "Phone/2.0",
    )
    assert store.get(AOR) == [b]
    assert store.count() == 1


@pytest.mark.parametrize("cseq", [1, 2, 3])
def test_step8_same_call_id_cseq_not_higher_fails(cseq: int) -> None:
    """RFC 3261 §10.3 step 8: "the request fails"; answered 400 Out of Order CSeq."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(), cseq=3), now=T0))
    before = store.get(AOR)
    result = registrar.handle_register(register(contact(expires=0), cseq=cseq), now=T0 + 1)
    assert result == RegisterResult(400, "Out of Order CSeq")
    assert store.get(AOR) == before


def test_step8_out_of_order_is_atomic() -> None:
    """An out-of-order second contact keeps the first contact's change from being applied."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI2), call_id="b", cseq=9), now=T0))
    before = store.get(AOR)
    writes = store.writes
    result = registrar.handle_register(
        register(contact(URI), contact(URI2), call_id="b", cseq=8), now=T0 + 1
    )
    assert result.status == 400
    assert store.get(AOR) == before
    assert store.writes == writes


def test_step8_different_call_id_updates_even_with_lower_cseq() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(), call_id="old", cseq=50), now=T0))
    result = ok(registrar.handle_register(register(contact(), call_id="new", cseq=1), now=T0 + 5))
    (b,) = result.bindings
    assert (b.call_id, b.cseq, b.registered_at, b.expires_at) == ("new", 1, T0, T0 + 5 + 1800)
    assert result.refreshed == 1
    assert store.count() == 1


@pytest.mark.parametrize("call_id", ["call-1", "call-2"])
def test_step8_expires_zero_removes_the_binding(call_id: str) -> None:
    registrar, store = new_registrar()
    registered_two(registrar)
    result = ok(
        registrar.handle_register(
            register(contact(URI, expires=0), call_id=call_id, cseq=6), now=T0 + 1
        )
    )
    assert [b.contact for b in result.bindings] == [URI2]
    assert result.removed == 1
    assert store.count() == 1


def test_step8_expires_header_zero_removes_every_listed_contact() -> None:
    registrar, store = new_registrar()
    registered_two(registrar)
    result = ok(
        registrar.handle_register(register(contact(URI), contact(URI2), expires=0, cseq=6), now=T0)
    )
    assert result.bindings == ()
    assert result.removed == 2
    assert list(store.aors()) == []


def test_step8_removing_an_unknown_contact_is_a_noop() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI)), now=T0))
    writes = store.writes
    result = ok(registrar.handle_register(register(contact(URI2, expires=0), cseq=2), now=T0))
    assert [b.contact for b in result.bindings] == [URI]
    assert (result.added, result.removed, result.refreshed) == (0, 0, 0)
    assert store.writes == writes


def test_step8_new_contact_is_added_next_to_existing() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI)), now=T0))
    result = ok(registrar.handle_register(register(contact(URI2), call_id="x"), now=T0 + 1))
    assert [b.contact for b in result.bindings] == [URI, URI2]
    assert store.count() == 2


def test_step8_duplicate_contact_in_one_request_is_not_out_of_order() -> None:
    registrar, store = new_registrar()
    result = ok(
        registrar.handle_register(
            register(contact(URI, expires=100), contact(URI, expires=200)), now=T0
        )
    )
    (b,) = result.bindings
    assert b.expires_at == T0 + 200  # the last one wins
    assert store.count() == 1


def test_step8_expired_binding_is_replaced_not_matched() -> None:
    """An expired binding no longer exists: its CSeq does not block, a new binding is made."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(expires=60), cseq=9), now=T0))
    result = ok(registrar.handle_register(register(contact(), cseq=1), now=T0 + 100))
    (b,) = result.bindings
    assert (b.registered_at, b.cseq) == (T0 + 100, 1)
    assert (result.added, result.refreshed) == (1, 0)
    assert store.count() == 1


# --- Binding matching: Contact URI equality (RFC 3261 §19.1.4) and +sip.instance ------------


@pytest.mark.parametrize(
    ("stored", "given"),
    [
        ("sip:demo@192.0.2.4:5062", "SIP:demo@192.0.2.4:5062"),
        ("sip:demo@Host.Example.COM", "sip:demo@host.example.com"),
        ("sip:demo@h;transport=udp;ob", "sip:demo@h;ob;transport=udp"),
        ("sip:demo@h;Transport=UDP", "sip:demo@h;transport=udp"),
        ("sip:%64emo@h", "sip:demo@h"),
        ("sip:+1555;phone-context=x@h;user=phone", "sip:+1555;phone-context=x@H;user=phone"),
        ("sip:h;lr", "sip:H;lr"),
        ("sip:demo@h?B=2&a=1", "sip:demo@h?a=1&B=2"),
    ],
)
def test_step8_contact_uris_match_after_normalisation(stored: str, given: str) -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(stored)), now=T0))
    result = ok(registrar.handle_register(register(contact(given), cseq=2), now=T0 + 1))
    assert result.refreshed == 1
    assert [b.contact for b in store.get(AOR)] == [given]  # stored as given last


@pytest.mark.parametrize(
    ("stored", "given"),
    [
        ("sip:demo@h", "sip:Demo@h"),  # user part is case-sensitive
        ("sip:demo@h", "sip:demo@h:5060"),  # an explicit default port differs
        ("sip:demo@h", "sips:demo@h"),
        ("sip:demo@h;transport=udp", "sip:demo@h;transport=tcp"),
        ("sip:demo@h;transport=udp", "sip:demo@h"),
        ("sip:demo:pw@h", "sip:demo@h"),
    ],
)
def test_step8_different_contact_uris_do_not_match(stored: str, given: str) -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(stored)), now=T0))
    result = ok(registrar.handle_register(register(contact(given), cseq=2), now=T0 + 1))
    assert result.added == 1
    assert store.count() == 2


def test_contact_key_of_a_non_uri_is_the_string() -> None:
    assert _contact_key("garbage") == "garbage"


def test_step8_same_instance_matches_despite_new_contact_uri() -> None:
    """RFC 5626: a UA that re-registers from a new address keeps one binding per instance."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, instance="<urn:uuid:a>")), now=T0))
    result = ok(
        registrar.handle_register(
            register(contact(URI2, instance="<urn:uuid:a>"), call_id="c2"), now=T0 + 1
        )
    )
    (b,) = result.bindings
    assert (b.contact, b.registered_at) == (URI2, T0)
    assert result.refreshed == 1
    assert store.count() == 1


def test_step8_different_instances_do_not_match_on_same_uri() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, instance="<urn:uuid:a>")), now=T0))
    result = ok(
        registrar.handle_register(register(contact(URI, instance="<urn:uuid:b>"), cseq=2), now=T0)
    )
    assert result.added == 1
    assert store.count() == 2


@pytest.mark.parametrize(
    ("stored_instance", "given_instance"), [(None, "<urn:uuid:a>"), ("<urn:uuid:a>", None)]
)
def test_step8_instance_on_one_side_only_matches_by_uri(
    stored_instance: str | None, given_instance: str | None
) -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, instance=stored_instance)), now=T0))
    result = ok(
        registrar.handle_register(
            register(contact(URI.replace("udp", "UDP"), instance=given_instance), cseq=2),
            now=T0,
        )
    )
    assert result.refreshed == 1
    assert store.count() == 1
    assert result.bindings[0].instance == given_instance


def test_step8_custom_contact_key() -> None:
    store = MemoryStore()
    registrar = Registrar(store, POLICY, contact_key=lambda uri: uri.split("@")[0])
    ok(registrar.handle_register(register(contact("sip:demo@a")), now=T0))
    result = ok(registrar.handle_register(register(contact("sip:demo@b"), cseq=2), now=T0))
    assert result.refreshed == 1


# --- max_contacts ---------------------------------------------------------------------------


def test_max_contacts_removes_the_earliest_registered() -> None:
    registrar, store = new_registrar()  # max_contacts=3
    for i in range(3):
        ok(
            registrar.handle_register(
                register(contact(f"sip:demo@192.0.2.{i}"), call_id=f"c{i}"), now=T0 + i
            )
        )
    # Refreshing the oldest does not make it younger: registered_at is kept.
    ok(registrar.handle_register(register(contact("sip:demo@192.0.2.0"), call_id="r"), now=T0 + 5))
    result = ok(
        registrar.handle_register(register(contact("sip:demo@192.0.2.9"), call_id="n"), now=T0 + 6)
    )
    assert (result.added, result.removed) == (1, 1)
    assert [b.contact for b in result.bindings] == [
        "sip:demo@192.0.2.1",
        "sip:demo@192.0.2.2",
        "sip:demo@192.0.2.9",
    ]
    assert store.count() == 3


def test_max_contacts_applies_within_one_request() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact("sip:demo@old"), call_id="a"), now=T0))
    result = ok(
        registrar.handle_register(
            register(*(contact(f"sip:demo@n{i}") for i in range(4)), call_id="b"), now=T0 + 1
        )
    )
    assert (result.added, result.removed) == (4, 2)
    assert [b.contact for b in result.bindings] == ["sip:demo@n1", "sip:demo@n2", "sip:demo@n3"]
    assert store.count() == 3


# --- lookup and expire ----------------------------------------------------------------------


def test_lookup_orders_by_q_then_most_recent() -> None:
    registrar, _ = new_registrar(RegistrarPolicy(max_contacts=10))
    specs = [
        ("sip:demo@low", 0.1, T0),
        ("sip:demo@none-old", None, T0 + 1),
        ("sip:demo@high", 0.9, T0 + 2),
        ("sip:demo@none-new", None, T0 + 3),
        ("sip:demo@full", 1.0, T0 + 4),
    ]
    for i, (uri, q, at) in enumerate(specs):
        ok(registrar.handle_register(register(contact(uri, q=q), call_id=f"c{i}"), now=at))
    assert [b.contact for b in registrar.lookup(AOR, now=T0 + 10)] == [
        "sip:demo@full",
        "sip:demo@none-new",
        "sip:demo@none-old",
        "sip:demo@high",
        "sip:demo@low",
    ]


def test_lookup_never_returns_expired_bindings() -> None:
    """Expired bindings are invisible even before expire() removed them."""
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, expires=60)), now=T0))
    ok(registrar.handle_register(register(contact(URI2, expires=120), call_id="x"), now=T0))
    assert [b.contact for b in registrar.lookup(AOR, now=T0 + 59)] == [URI, URI2]
    assert [b.contact for b in registrar.lookup(AOR, now=T0 + 60)] == [URI2]
    assert registrar.lookup(AOR, now=T0 + 120) == []
    assert registrar.lookup("sip:nobody@h", now=T0) == []
    assert store.count() == 2


def test_register_200_never_returns_expired_bindings() -> None:
    registrar, _ = new_registrar()
    ok(registrar.handle_register(register(contact(URI, expires=60)), now=T0))
    result = ok(registrar.handle_register(register(contact(URI2), call_id="x"), now=T0 + 61))
    assert [b.contact for b in result.bindings] == [URI2]


def test_expire_delegates_to_the_store() -> None:
    registrar, store = new_registrar()
    ok(registrar.handle_register(register(contact(URI, expires=60)), now=T0))
    ok(registrar.handle_register(register(contact(URI, expires=600), cseq=2), now=T0 + 30))
    assert registrar.expire(now=T0 + 60) == []  # refreshed: not expired at the old time
    assert [b.contact for b in registrar.expire(now=T0 + 630)] == [URI]
    assert store.count() == 0


def test_count_through_registrar_operations() -> None:
    registrar, store = new_registrar()
    registered_two(registrar)
    assert store.count() == 2
    ok(registrar.handle_register(register(contact("sip:demo@x", expires=60), call_id="y"), now=T0))
    assert store.count() == 3
    ok(registrar.handle_register(register(contact(URI, expires=0), cseq=6), now=T0))
    assert store.count() == 2
    registrar.expire(now=T0 + 60)
    assert store.count() == 1
    ok(registrar.handle_register(register(wildcard=True, expires=0, cseq=7), now=T0 + 61))
    assert store.count() == 0


def test_registrar_over_sqlite_store_persists(tmp_path: Path) -> None:
    db = tmp_path / "bindings.db"
    store = SqliteStore(db)
    registrar = Registrar(store, POLICY)
    ok(registrar.handle_register(register(contact(URI, q=0.5), expires=300), now=T0))
    store.close()
    reopened = Registrar(SqliteStore(db), POLICY)
    (b,) = reopened.lookup(AOR, now=T0 + 1)
    assert (b.contact, b.q, b.expires_at) == (URI, 0.5, T0 + 300)


# --- policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_expires": -1},
        {"min_expires": 100, "default_expires": 50},
        {"default_expires": 7200, "max_expires": 3600},
        {"max_contacts": 0},
    ],
)
def test_policy_rejects_inconsistent_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="registrar policy"):
        RegistrarPolicy(**kwargs)


def test_default_policy() -> None:
    registrar = Registrar(MemoryStore())
    assert registrar.policy == RegistrarPolicy(60, 3600, 3600, 10)
