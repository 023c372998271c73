"""Everything below the objects of :mod:`sipserver.config`: value rules, the YAML source, wording.

- ``check_*``: single-value rules. Each returns the value (or its normal form) when it is valid
  and raises :class:`ValueError` with a message for the operator otherwise.
- :func:`read_yaml` and :func:`expand_env`: the YAML source (duplicate keys, ``${VAR}``).
- :func:`issues_from_validation`: pydantic errors as ``(key path, reason)`` in plain words.
"""

from __future__ import annotations

import difflib
import ipaddress
import pathlib
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "SECRET_MIN_LENGTH",
    "SHIPPED_SOUNDS",
    "Issue",
    "Loc",
    "RuleErrors",
    "check_ambient_sound",
    "check_cidr",
    "check_e164",
    "check_host",
    "check_host_port",
    "check_livekit_spec",
    "check_password_hash",
    "check_public_url",
    "check_realm",
    "check_secret",
    "check_sip_number",
    "check_sip_username",
    "check_slug",
    "check_sound",
    "check_store",
    "check_thinking_sound",
    "check_unique",
    "check_workers",
    "expand_env",
    "format_path",
    "int_text",
    "issues_from_validation",
    "normalize_number",
    "one_or_many",
    "parse_host_port",
    "parse_store",
    "read_yaml",
    "reject_tls",
]

Loc = tuple[int | str, ...]
"""A key path as a tuple: ``("agents", 1, "sip", "numbers", 0)``."""
Issue = tuple[Loc, str]
"""One problem: where, and why."""

SHIPPED_SOUNDS: Final = (
    "keyboard_typing",
    "keyboard_typing2",
    "office_ambience",
    "city_ambience",
    "forest_ambience",
    "crowded_room",
)
"""Names of the clips for ``thinking_sound`` and ``ambient_sound`` (files in ``sipserver/sounds/``,
which arrive with audio feedback)."""

DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful voice assistant on a phone call. Answer briefly, clearly and politely."
)
"""The system prompt of an agent that gives no ``instructions``."""

SECRET_MIN_LENGTH: Final = 16
"""Shortest websocket secret accepted."""

_NUMBER_PUNCTUATION: Final = str.maketrans("", "", " -().")
_E164: Final = re.compile(r"\+[1-9][0-9]{7,14}")
_DIAL_STRING: Final = re.compile(r"[0-9]{2,20}")
_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved )
_SIP_USER: Final = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_URL_SAFE: Final = re.compile(r"[A-Za-z0-9_.~-]+")


def normalize_number(number: str) -> str:
    """The form phone numbers are compared in: without ``+``, spaces, ``-``, ``(``, ``)``, ``.``.

    Args:
        number: A phone number as configured or as dialled (``+1 (415) 555-0100``).

    Returns:
        The digits (``14155550100``), so E.164 matches with or without ``+``.
    """
    return number.translate(_NUMBER_PUNCTUATION).replace("+", "")


def check_sip_number(value: str) -> str:
    """A SIP number: E.164 (``+`` and 8-15 digits) or a dial string of 2-20 digits.

    Spaces, ``-``, ``(``, ``)`` and ``.`` are allowed as punctuation.
    """
    compact = value.translate(_NUMBER_PUNCTUATION)
    if _E164.fullmatch(compact) or _DIAL_STRING.fullmatch(compact):
        return value
    raise ValueError(
        f"{value!r} is not a phone number: use E.164 ('+' and 8-15 digits, e.g. +14155550100)"
        " or a dial string of 2-20 digits"
    )


def check_e164(value: str) -> str:
    """An E.164 number: ``+``, a country code and digits, 8-15 digits in all."""
    if _E164.fullmatch(value.translate(_NUMBER_PUNCTUATION)):
        return value
    raise ValueError(
        f"{value!r} is not E.164: '+', the country code and the number, 8-15 digits"
        " (e.g. +14155550199)"
    )


def check_host(value: str) -> str:
    """An IPv4 or IPv6 address (without brackets) or a host name (RFC 1123)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.split(".")
        if (
            len(value) > 253
            or not all(_HOST_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()
        ):
            raise ValueError(f"{value!r} is not an IP address or a host name") from None
    return value


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port``; an IPv6 host is written ``[::1]:5060`` and returned without brackets.

    Args:
        value: ``0.0.0.0:5060``, ``sip.example.com:5060`` or ``[2001:db8::1]:5060``.

    Returns:
        ``(host, port)``.

    Raises:
        ValueError: Not host:port, a bad host, or a port outside 1-65535.
    """
    example = "e.g. 0.0.0.0:5060 or [::]:5060"
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{value!r} is not [IPv6]:port ({example})")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{value!r} is not host:port ({example})")
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets, [{host}]:{port_text}")
        check_host(host)
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError(f"{value!r}: port {port_text!r} is not a number in 1-65535")
    return host, int(port_text)


def check_host_port(value: str) -> str:
    """``host:port`` as accepted by :func:`parse_host_port`."""
    parse_host_port(value)
    return value


def check_public_url(value: str) -> str:
    """``http(s)://host[:port]`` with no path; a trailing ``/`` is removed."""
    problem = (
        f"{value!r} is not http(s)://host[:port] without a path (e.g. https://voice.example.com)"
    )
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(problem)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(problem) from None
    if not parts.netloc.startswith("["):
        check_host(parts.hostname)
    return f"{parts.scheme}://{parts.netloc}"


def check_cidr(value: str) -> str:
    """A CIDR network; a bare address or host bits set get a suggestion of what was meant."""
    if "/" not in value:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not CIDR (e.g. 203.0.113.0/24 or 2001:db8::/32)"
            ) from None
        raise ValueError(f"{value!r} is not CIDR; did you mean {value}/{address.max_prefixlen}?")
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR network (e.g. 203.0.113.0/24)") from None
        raise ValueError(f"{value!r} has host bits set; did you mean {network}?") from None
    return value


def check_sip_username(value: str) -> str:
    """A SIP user part (RFC 3261 §25.1): no spaces, ``@`` or ``:``."""
    if _SIP_USER.fullmatch(value):
        return value
    raise ValueError(f"{value!r} is not a SIP user name (no spaces, '@' or ':')")


def check_secret(value: str) -> str:
    """A URL secret: at least 16 characters from ``A-Z a-z 0-9 - _ . ~``."""
    hint = "generate one: sipserver gen-secret"
    if len(value) < SECRET_MIN_LENGTH:
        raise ValueError(
            f"must be at least {SECRET_MIN_LENGTH} characters, got {len(value)}; {hint}"
        )
    if not _URL_SAFE.fullmatch(value):
        raise ValueError(f"must contain only A-Z a-z 0-9 - _ . ~ (it goes in URLs); {hint}")
    return value


def check_sound(value: str, *, allow_none: bool) -> str:
    """A shipped clip, ``none`` when ``allow_none``, or the path of an existing file."""
    if value in SHIPPED_SOUNDS or (allow_none and value == "none"):
        return value
    if pathlib.Path(value).is_file():
        return value
    choices = ", ".join(SHIPPED_SOUNDS + (("none",) if allow_none else ()))
    raise ValueError(f"{value!r} is neither a shipped sound ({choices}) nor an existing file")


def parse_store(value: str) -> tuple[Literal["memory", "sqlite"], str | None]:
    """Parse a bindings store: ``memory``, ``sqlite`` or ``sqlite://PATH``.

    ``PATH`` is everything after ``sqlite://``: ``sqlite:///var/lib/sipserver/bindings.db`` is
    absolute, ``sqlite://var/bindings.db`` relative to the working directory.

    Returns:
        ``(kind, path)``; the path is ``None`` for ``memory`` and plain ``sqlite``.
    """
    if value in ("memory", "sqlite"):
        return ("memory" if value == "memory" else "sqlite"), None
    if value.startswith("sqlite://") and value != "sqlite://":
        return "sqlite", value.removeprefix("sqlite://")
    raise ValueError(
        f"{value!r} is not a store: use memory, sqlite or sqlite://PATH"
        " (e.g. sqlite:///var/lib/sipserver/bindings.db)"
    )


def check_store(value: str) -> str:
    """A bindings store as accepted by :func:`parse_store`."""
    parse_store(value)
    return value


def check_realm(value: str) -> str:
    """A digest realm: goes in a quoted string, so no ``"`` or ``\\``."""
    if not value or '"' in value or "\\" in value:
        raise ValueError("must be a non-empty text without '\"' or '\\'")
    return value


def int_text(value: object) -> object:
    """Digits in a string (as ``${VAR}`` expands) become an int; anything else is unchanged."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def check_workers(value: object) -> object:
    """``auto`` or an integer >= 1 (not a boolean); digits in a string count."""
    value = int_text(value)
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise ValueError(f"must be 'auto' or an integer >= 1 (got {value!r})")


def reject_tls(value: object) -> None:
    """TLS listeners come later: only ``null`` is accepted."""
    if value is not None:
        raise ValueError("TLS is not supported yet; remove server.sip.tls or set it to null")


def one_or_many(value: object) -> object:
    """A single string is a list of one."""
    return [value] if isinstance(value, str) else value


def check_unique(value: list[str]) -> list[str]:
    """No item twice."""
    twice = sorted({item for item in value if value.count(item) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once")
    return value


def check_slug(value: str) -> str:
    """An agent slug: ``[a-z0-9][a-z0-9-]*``."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
        raise ValueError(f"{value!r} must match [a-z0-9][a-z0-9-]* (lowercase, digits, '-')")
    return value


def check_password_hash(value: str) -> str:
    """``scrypt$...`` or ``pbkdf2_sha256$...``: a hash, never a password."""
    scheme, sep, rest = value.partition("$")
    if not (sep and rest and scheme in ("scrypt", "pbkdf2_sha256")):
        raise ValueError("must be a 'scrypt$...' or 'pbkdf2_sha256$...' hash, not a password")
    return value


def check_thinking_sound(value: str) -> str:
    """A shipped clip or the path of an existing file."""
    return check_sound(value, allow_none=False)


def check_ambient_sound(value: str) -> str:
    """A shipped clip, ``none`` or the path of an existing file."""
    return check_sound(value, allow_none=True)


_LIVEKIT_FORMATS: Final = {
    "stt": ("provider/model[:language]", "deepgram/nova-3:en"),
    "llm": ("provider/model", "openai/gpt-4o-mini"),
    "tts": ("provider/model[:voice]", "cartesia/sonic-2:<voice-id>"),
}


def check_livekit_spec(kind: Literal["stt", "llm", "tts"]) -> Callable[[str], str]:
    """A checker for a LiveKit Inference model string of ``kind`` (see ``_LIVEKIT_FORMATS``)."""
    expected, example = _LIVEKIT_FORMATS[kind]

    def check(value: str) -> str:
        head, colon, suffix = value.partition(":")
        provider, slash, model = head.partition("/")
        valid = (
            bool(slash and provider and model)
            and not any(char.isspace() for char in value)
            and (not colon or (kind != "llm" and bool(suffix)))
        )
        if not valid:
            raise ValueError(f"{value!r} is not {expected} (e.g. {example})")
        return value

    return check


# --- the YAML source ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<" may override: not a duplicate
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse the document; returns ``(mapping, None)`` or ``(None, error line)``."""
    try:
        tree = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:

        def at(mark: Any) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        mark = exc.problem_mark or exc.context_mark
        message = f"{source}: YAML syntax error at {at(mark) if mark else 'unknown position'}"
        message += f": {exc.problem or exc.context}"
        if exc.context and exc.problem:
            started = f" started at {at(exc.context_mark)}" if exc.context_mark else ""
            message += f" ({exc.context}{started})"
        return None, message
    except yaml.YAMLError as exc:
        return None, f"{source}: YAML syntax error: {exc}"
    if not isinstance(tree, dict):
        got = {type(None): "an empty document", list: "a list"}.get(type(tree), f"{tree!r}")
        sections = "server, credentials, models, agents, users"
        return None, f"{source}: the top level must be a mapping ({sections}), got {got}"
    return tree, None


_ENV_REFERENCE: Final = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env(node: Any, env: Mapping[str, str], issues: list[Issue], loc: Loc = ()) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string value (not in keys).

    Like the shell, ``:-`` takes the default when the variable is unset or empty. A string with
    an unset variable (or a malformed reference) stays as it is and adds an issue at its key.
    """
    if isinstance(node, dict):
        return {key: expand_env(value, env, issues, (*loc, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_env(value, env, issues, (*loc, i)) for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node
    failed: list[Issue] = []

    def substitute(match: re.Match[str]) -> str:
        name, default_sep, default = match.group(1).partition(":-")
        value = env.get(name)
        if not _ENV_NAME.fullmatch(name):
            hint = "use ${NAME} or ${NAME:-default}"
            failed.append((loc, f"invalid reference {match.group(0)!r}; {hint}"))
        elif default_sep and not value:
            return default
        elif value is None:
            failed.append((loc, f"environment variable {name} is not set"))
        else:
            return value
        return match.group(0)

    expanded = _ENV_REFERENCE.sub(substitute, node)
    issues += failed
    return node if failed else expanded


# --- pydantic errors in plain words ------------------------------------------------------------


class RuleErrors(ValueError):
    """Raised by model validators: the violated rules, each with its key relative to the model."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(message for _, message in issues))
        self.issues = issues

    @classmethod
    def raise_if_any(cls, issues: list[Issue]) -> None:
        """Raise with these issues, if there are any."""
        if issues:
            raise cls(issues)


def format_path(loc: Loc) -> str:
    """``("agents", 1, "sip", "numbers", 0)`` -> ``agents[1].sip.numbers[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def issues_from_validation(exc: ValidationError, root: type[BaseModel]) -> tuple[list[Issue], bool]:
    """The errors of validating ``root`` as issues; also whether ``root``'s own rules ran.

    Discriminator tags pydantic puts in ``loc`` are dropped, :class:`RuleErrors` are expanded
    into one issue per rule, with its key under the model that raised it.
    """
    issues: list[Issue] = []
    root_rules_ran = False
    for error in exc.errors(include_url=False):
        loc, parent, held = _key_path(root, error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, RuleErrors):
            root_rules_ran |= not loc
            issues += [((*loc, *sub), message) for sub, message in cause.issues]
        elif error["type"] == "union_tag_not_found":
            issues.append(((*loc, "type"), f"required: {_tags(held)}"))
        else:
            issues.append((loc, _humanize(error, parent, held)))
    return issues, root_rules_ran


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``| None``."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _tag_of(member: Any) -> object:
    if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
        return member.model_fields["type"].default
    return None


def _key_path(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[Loc, Any, Any]:
    """Drop discriminator tags from a pydantic ``loc``; also return the annotations holding and
    held by the last key (a model for "did you mean", a union for its tags)."""
    path: list[int | str] = []
    annotation: Any = root
    parent: Any = None
    for part in loc:
        annotation = _unwrap(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            tagged = [m for m in typing.get_args(annotation) if _tag_of(m) == part]
            if tagged:  # the tag pydantic inserts for a member of a discriminated union
                annotation = tagged[0]
                continue
        path.append(part)
        parent = annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field is not None else None
        elif typing.get_origin(annotation) in (list, dict):
            annotation = typing.get_args(annotation)[-1]
        else:
            annotation = None
    return tuple(path), parent, _unwrap(annotation)


def _tags(union: Any) -> str:
    tags = [repr(tag) for m in typing.get_args(union) if isinstance(tag := _tag_of(m), str)]
    return " or ".join(tags) or "a type"


_TYPE_WORDS: Final = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS: Final = {
    "greater_than_equal": ">=",
    "less_than_equal": "<=",
    "greater_than": ">",
    "less_than": "<",
}


_YAML_TYPES: Final = {dict: "mapping", list: "list", str: "string", bool: "boolean"}


def _shown(value: object) -> str:
    """``int 5``, ``mapping {'a': 1}``: the YAML type and (the start of) the value."""
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:56] + " ..."
    return f"{_YAML_TYPES.get(type(value), type(value).__name__)} {text}"


def _humanize(error: ErrorDetails, parent: Any, held: Any) -> str:
    """A short reason for one pydantic error, in words rather than pydantic's."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
        known = list(parent.model_fields) if is_model else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _BOUNDS:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {_BOUNDS[kind]} {limit} (got {value!r})"
    if kind == "literal_error":
        return f"must be {ctx['expected']} (got {value!r})"
    if kind == "union_tag_invalid":
        return f"unknown type {ctx['tag']!r}; expected {_tags(held)}"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind == "string_type":
        quote = "; put it in quotes" if isinstance(value, int | float) else ""
        return f"must be a string, got {_shown(value)}{quote}"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]} (got {_shown(value)})"
    return str(error["msg"]).removeprefix("Value error, ")
