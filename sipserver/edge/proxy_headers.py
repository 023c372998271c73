"""Header rewriting of a stateful proxy (RFC 3261 §16.6), on header lists.

Pure functions over ``[(name, value), ...]`` lists (the proxy keeps a request's or response's
headers in order and rewrites them before relaying): split comma lists, pop and stamp Vias,
Max-Forwards, Record-Route insertion, and re-encoding.
"""

from __future__ import annotations

from sipserver.edge.calls import Endpoint
from sipserver.sip.headers import Via, split_comma_list
from sipserver.sip.invite_transaction import MAX_FORWARDS
from sipserver.sip.message import Headers, SipRequest, SipResponse

__all__ = [
    "encode_relayed_request",
    "encode_relayed_response",
    "explode",
    "hostport_key",
    "insert_record_routes",
    "pop_top_via",
    "set_max_forwards",
    "set_received",
    "sip_toward_worker",
    "sips_toward_caller",
    "swap_scheme",
]

_LIST_NAMES = frozenset(("Via", "Route", "Record-Route"))


def explode(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One entry per value for Via, Route and Record-Route (comma lists split)."""
    out: list[tuple[str, str]] = []
    for name, value in items:
        if name in _LIST_NAMES and "," in value:
            out.extend((name, v) for v in split_comma_list(value))
        else:
            out.append((name, value))
    return out


def pop_top_via(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for i, (name, _) in enumerate(items):
        if name == "Via":
            return items[:i] + items[i + 1 :]
    return items


def set_received(items: list[tuple[str, str]], source: Endpoint) -> list[tuple[str, str]]:
    """RFC 3261 §18.2.1 / RFC 3581 §4: record the observed source on the sender's Via."""
    for i, (name, value) in enumerate(items):
        if name == "Via":
            via = Via.parse(value).with_params(received=source.host, rport=source.port)
            return [*items[:i], ("Via", str(via)), *items[i + 1 :]]
    return items


def set_max_forwards(items: list[tuple[str, str]], current: int | None) -> list[tuple[str, str]]:
    # RFC 3261 §16.6 step 3: decrement, or add 70 when absent.
    if current is None:
        return [*items, ("Max-Forwards", str(MAX_FORWARDS))]
    return [(n, str(current - 1) if n == "Max-Forwards" else v) for n, v in items]


def insert_record_routes(
    items: list[tuple[str, str]], entries: tuple[str, ...]
) -> list[tuple[str, str]]:
    """RFC 3261 §16.6 step 4: the edge's entries go above the existing Record-Route."""
    new = [("Record-Route", e) for e in entries]
    for i, (name, _) in enumerate(items):
        if name == "Record-Route":
            return [*items[:i], *new, *items[i:]]
    last_via = max((i for i, (n, _) in enumerate(items) if n == "Via"), default=-1)
    return [*items[: last_via + 1], *new, *items[last_via + 1 :]]


def sips_toward_caller(items: list[tuple[str, str]], inside: str) -> list[tuple[str, str]]:
    """A message of a SIPS dialog on its way to the caller: the edge's inside Record-Route
    entry (``inside``, as inserted) and the worker's Contact become ``sips:``.

    RFC 5630 / RFC 3261 §12.1.1: in a dialog set up by a SIPS Request-URI every
    Record-Route entry and the Contact must be SIPS (pjsip ends the call otherwise: "Secure
    dialog requires SIPS scheme"). The hop between edge and worker is the edge's own loopback
    (the edge and the worker are the one user agent the caller talks to), so the edge rewrites
    its own entry (RFC 3261 §16.7 step 9 lets a proxy rewrite its Record-Route in responses)
    and presents the worker's Contact as SIPS; :func:`sip_toward_worker` does the reverse.
    """
    secure_inside = "<sips:" + inside.removeprefix("<sip:").replace(";transport=udp", "", 1)
    out: list[tuple[str, str]] = []
    for name, value in items:
        if name == "Record-Route" and value == inside:
            value = secure_inside
        elif name == "Contact":
            value = _contact_scheme(value, secure=True).replace(";transport=udp", "")
        out.append((name, value))
    return out


def sip_toward_worker(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A message of a SIPS dialog on its way to the worker: the caller's Contact as ``sip:``.

    pjsip sends a request whose Request-URI (the remote target) is SIPS over TLS only, whatever
    the route set says (PJSIP_ETPNOTSUITABLE on the worker's UDP-only transport); with a
    ``sip:`` target its requests take the route set, to the edge, which makes them SIPS again
    for the caller (:func:`swap_scheme`).
    """
    return [(n, _contact_scheme(v, secure=False) if n == "Contact" else v) for n, v in items]


def swap_scheme(uri: str, *, secure: bool) -> str:
    """``uri`` with the scheme ``sips`` (``secure``) or ``sip``."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips"):
        return uri
    return f"{'sips' if secure else 'sip'}:{rest}"


def _contact_scheme(value: str, *, secure: bool) -> str:
    """A Contact value (``<uri>;params`` or a bare URI) with its URI's scheme swapped."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        if end > start:
            uri = swap_scheme(value[start + 1 : end], secure=secure)
            return f"{value[: start + 1]}{uri}{value[end:]}"
        return value
    return swap_scheme(value, secure=secure)


def encode_relayed_request(
    method: str, uri: str, items: list[tuple[str, str]], body: bytes
) -> bytes:
    return SipRequest(method, uri, Headers(items), body).encode()


def encode_relayed_response(response: SipResponse, items: list[tuple[str, str]]) -> bytes:
    return SipResponse(response.status, response.reason, Headers(items), response.body).encode()


def hostport_key(host: str, port: int) -> str:
    return f"{host.strip('[]').lower()}:{port}"
