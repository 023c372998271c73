"""What the console shows of a configuration object, and what a PUT body means.

One rule each way, so that a client may send back what it was shown:

- **shown** (:func:`shown`): every secret is replaced by :data:`MASK` (the value never leaves
  the server); a string whose raw YAML is exactly one environment reference (``"${VAR}"`` or
  ``"${VAR:-default}"``) is shown as ``{"from_env": "VAR"}`` (plus ``"default"``, masked for
  a secret); any other string holding a reference is shown as ``{"template": "<raw text>"}``
  (a secret one as :data:`MASK`).
- **written** (:func:`written`): a value equal to what was shown keeps the stored raw value
  (the mask keeps the secret, ``{"from_env": "VAR"}`` keeps the reference and its quoting); a
  secret left out of the body keeps the stored one; ``{"from_env": "VAR"}`` or
  ``{"template": "..."}`` writes a reference; anything else is written as given.

Secrets are every value of ``credentials`` and every key named ``password``, ``secret``,
``token`` or ``key``, or ending in ``_password``, ``_secret``, ``_token`` or ``_key``
(``sip.password``, ``websocket.secret``, ``websocket.twilio_auth_token``, a provider's
``api_key``...), and a user's ``password_hash``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from sipserver.config import format_key_path

__all__ = ["MASK", "BodyError", "Kind", "Loc", "is_secret", "shown", "written"]

Loc = tuple[int | str, ...]
"""A key path inside one object, outermost first."""

Kind = Literal["agent", "model", "credential", "user"]
"""The kinds of object the console edits: ``agents[]`` by slug, ``models`` and
``credentials`` by name, ``users[]`` (the dashboard logins) by name."""

MASK: Final = "********"
"""What a secret is shown as (never a valid secret: those are URL-safe)."""

_SECRET_NAME: Final = re.compile(r"(?:^|_)(?:password|secret|token|key)$")
_ONE_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BodyError(ValueError):
    """A PUT body that cannot be turned into YAML values: ``(key path, reason)`` each."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in errors))
        self.errors = errors


def is_secret(kind: Kind, path: Loc) -> bool:
    """True when the value at ``path`` (inside one object of ``kind``) is a secret."""
    if kind == "credential":
        return True
    names = [part for part in path if isinstance(part, str)]
    if kind == "user" and names[-1:] == ["password_hash"]:
        return True  # a hash is as good as the password to an offline guesser
    return bool(names) and _SECRET_NAME.search(names[-1]) is not None


def shown(kind: Kind, raw: Any, path: Loc = ()) -> Any:
    """The JSON view of a raw (unexpanded) YAML value: secrets masked, references named."""
    if isinstance(raw, Mapping):
        return {str(key): shown(kind, value, (*path, str(key))) for key, value in raw.items()}
    if isinstance(raw, list):
        return [shown(kind, value, (*path, i)) for i, value in enumerate(raw)]
    secret = is_secret(kind, path)
    if isinstance(raw, str) and "${" in raw:
        match = _ONE_REFERENCE.fullmatch(raw)
        if match is not None:
            view: dict[str, str] = {"from_env": match.group(1)}
            if match.group(2) is not None:
                view["default"] = MASK if secret else match.group(2)
            return view
        return MASK if secret else {"template": raw}
    if secret and raw is not None:
        return MASK
    return raw


def written(kind: Kind, body: Any, stored: Any, path: Loc = ()) -> Any:
    """The raw YAML value a PUT body stands for, given the value stored now.

    Args:
        kind: The object's kind (which keys are secrets).
        body: The JSON value sent.
        stored: The raw value in the file now (``None`` when there is none).
        path: Where ``body`` sits inside the object.

    Raises:
        BodyError: The mask where no secret is stored, a malformed reference.
    """
    errors: list[tuple[str, str]] = []
    value = _written(kind, body, stored, path, errors)
    if errors:
        raise BodyError(errors)
    return value


def _written(kind: Kind, body: Any, stored: Any, path: Loc, errors: list[tuple[str, str]]) -> Any:
    if stored is not None and body == shown(kind, stored, path):
        return stored  # unchanged: the stored raw text stays (secret, reference, quoting)
    where = format_key_path(path) or "(body)"
    if isinstance(body, dict) and body and set(body) <= {"from_env", "default"}:
        name, default = body.get("from_env"), body.get("default")
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            errors.append((where, "from_env must name an environment variable ([A-Za-z_]...)"))
            return None
        if default is None:
            return f"${{{name}}}"
        if not isinstance(default, str) or "}" in default or default == MASK:
            errors.append((where, "default must be a string without '}' (and not the mask)"))
            return None
        return f"${{{name}:-{default}}}"
    if isinstance(body, dict) and set(body) == {"template"}:
        template = body["template"]
        if not isinstance(template, str):
            errors.append((where, "template must be a string"))
            return None
        return template
    if isinstance(body, dict):
        old = stored if isinstance(stored, Mapping) else {}
        result = {}
        for key, value in body.items():
            result[key] = _written(kind, value, old.get(key), (*path, key), errors)
        for key, value in old.items():  # a secret left out of the body keeps its stored value
            if key not in body and is_secret(kind, (*path, str(key))) and _is_leaf(value):
                result[key] = value
        return result
    if isinstance(body, list):
        old_items = stored if isinstance(stored, list) else []
        return [
            _written(kind, value, old_items[i] if i < len(old_items) else None, (*path, i), errors)
            for i, value in enumerate(body)
        ]
    if body == MASK and is_secret(kind, path):
        errors.append((where, "no stored secret to keep here: give a value"))
        return None
    return body


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, Mapping | list)
