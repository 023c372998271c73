"""The dashboard users in the console: ``users[]`` of the configuration file, admins only.

- ``GET /api/users``: ``{"users": [{name, role}], "roles": [...], "min_password_length"}``,
  never a hash;
- ``PUT /api/users/{name}``: create a user (``{"role", "password"}``) or change its role
  (``{"role"}``; a ``password`` given too replaces it);
- ``POST /api/users/{name}/password``: ``{"password"}``, a new password;
- ``DELETE /api/users/{name}``.

Only ``admin`` may use these (every other role gets 403 with the reason). A password is hashed
here with the hash the dashboard checks at login (scrypt, ``sipserver hash-password``), on a
thread, and only the hash reaches the file; the password is never stored, logged or sent back,
and the hash is a secret of the console (masked in answers and in the audit log). A change that
would leave the file without an ``admin`` (demoting or deleting the last one) is refused with
422. Each change is a save of the document like any other (round-trip YAML, ``If-Match`` and 409,
the same validation as ``check-config``, which also checks the role, the audit log, the reload);
the dashboard drops the sessions of a user who is deleted, changes role or gets a new password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, get_args

from aiohttp import web

from sipserver.config import Role
from sipserver.console.api import ConsoleApi, Who, http_error, if_match, invalid_input, json_body
from sipserver.console.document import Saved, path_of
from sipserver.observability import get_logger

__all__ = [
    "ADMIN_LINKS",
    "ADMIN_ROLES",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "UsersApi",
    "admin_links",
]

log = get_logger(__name__)

ROLES: Final[tuple[str, ...]] = get_args(Role)
"""The roles ``users[].role`` accepts (:data:`sipserver.config.Role`)."""
ADMIN_ROLES: Final = frozenset({"admin"})
"""Who manages the users (and reads the audit log)."""
MIN_PASSWORD_LENGTH: Final = 8
"""Shortest password accepted (the default of ``sipserver hash-password --min-length``)."""
MAX_PASSWORD_LENGTH: Final = 1024
"""Longest one: the login form checks only the first 1024 characters."""

ADMIN_LINKS: Final = (
    '<a href="/dashboard/settings/users">Users</a> <a href="/dashboard/settings/audit">Audit</a>'
)
"""The top bar's links to the Users and Audit pages (:mod:`sipserver.console.user_pages`)."""


def admin_links(role: str) -> str:
    """The top bar's Users and Audit links for ``role`` (empty unless admin)."""
    return ADMIN_LINKS if role in ADMIN_ROLES else ""


Hasher = Callable[[str], str]
"""Turns a password into the ``users[].password_hash`` the login checks."""


class UsersApi:
    """The users endpoints, saving through the console's document, audit log and reload.

    Args:
        console: The console API (its document, session gate, save and reload).
        hash_password: The dashboard's password hash (CPU-bound: it is run on a thread).
    """

    def __init__(self, *, console: ConsoleApi, hash_password: Hasher) -> None:
        self.console = console
        self.hash_password = hash_password

    def add_routes(self, app: web.Application) -> None:
        """Register the endpoints on the public site."""
        r = app.router
        r.add_get("/api/users", self.list_users)
        r.add_put("/api/users/{name}", self.put_user)
        r.add_post("/api/users/{name}/password", self.reset_password)
        r.add_delete("/api/users/{name}", self.delete_user)

    def _admin(self, request: web.Request, *, write: bool = False) -> Who:
        login = self.console.gate.login_of(request)
        if login is not None and login.role not in ADMIN_ROLES:
            log.info("console_forbidden", user=login.name, role=login.role, path=request.path)
            raise http_error(403, f"only an admin manages the users; the role {login.role} may not")
        return self.console.guard(request, write=write, roles=ADMIN_ROLES)

    async def list_users(self, request: web.Request) -> web.Response:
        """The users: name and role (never the hash)."""
        self._admin(request)
        version = await self.console.fresh()
        document = self.console.document

        def read() -> list[dict[str, Any]]:
            views = (document.get("user", n) for n in document.names("user"))
            return [{"name": v.get("name"), "role": v.get("role")} for v in views]

        users = await asyncio.to_thread(read)
        answer = {
            "users": users,
            "roles": list(ROLES),
            "min_password_length": MIN_PASSWORD_LENGTH,
        }
        return self.console.versioned_json(answer, version)

    async def put_user(self, request: web.Request) -> web.Response:
        """Create a user or change its role (and, if given, its password)."""
        login = self._admin(request, write=True)
        name = request.match_info["name"]
        body = await json_body(request)
        if not isinstance(body, dict):
            raise invalid_input([("", "the body must be a JSON object: {role, password}")])
        unknown = sorted(set(body) - {"name", "role", "password"})
        if unknown:
            raise invalid_input(
                [(k, "not a field of a user (send role and password)") for k in unknown]
            )
        at = await self._path(name)
        stored = await asyncio.to_thread(self.console.document.raw, "user", name)
        password = body.get("password")
        if password is None and stored is None:
            raise invalid_input([(f"{at}.password", "a new user needs a password")])
        if "role" not in body:
            if stored is None:
                raise invalid_input([(f"{at}.role", "a new user needs a role")])
            body["role"] = stored.get("role") if isinstance(stored, dict) else None
        mapping: dict[str, Any] = {"name": body.get("name", name), "role": body["role"]}
        if password is not None:
            mapping["password_hash"] = await self._hash(password, f"{at}.password")
        expected = if_match(request)
        saved, reload = await self.console.save(login, "user", name, lambda: (
            self.console.document.put("user", name, mapping, expected=expected, rule=keep_admin)
        ))  # fmt: skip
        return self._saved(saved, reload, name)

    async def reset_password(self, request: web.Request) -> web.Response:
        """A new password for an existing user."""
        login = self._admin(request, write=True)
        name = request.match_info["name"]
        body = await json_body(request)
        stored = await asyncio.to_thread(self.console.document.raw, "user", name)
        if not isinstance(stored, dict):
            raise http_error(404, f"no user {name!r}")
        at = await self._path(name)
        password = body.get("password") if isinstance(body, dict) else None
        if password is None:
            raise invalid_input([(f"{at}.password", "give the new password")])
        mapping = {**stored, "password_hash": await self._hash(password, f"{at}.password")}
        expected = if_match(request)
        saved, reload = await self.console.save(login, "user", name, lambda: (
            self.console.document.put("user", name, mapping, expected=expected, rule=keep_admin)
        ))  # fmt: skip
        return self._saved(saved, reload, name)

    async def delete_user(self, request: web.Request) -> web.Response:
        """Remove a user (not the last admin)."""
        login = self._admin(request, write=True)
        name, expected = request.match_info["name"], if_match(request)
        saved, reload = await self.console.save(login, "user", name, lambda: (
            self.console.document.delete("user", name, expected=expected, rule=keep_admin)
        ))  # fmt: skip
        answer = {"deleted": name, "version": saved.fingerprint, "reload": reload}
        return self.console.versioned_json(answer, saved.fingerprint)

    async def _path(self, name: str) -> str:
        await self.console.fresh()
        document = self.console.document

        def where() -> str:
            users = [document.raw("user", n) for n in document.names("user")]
            return path_of({"users": users}, "user", name)

        return await asyncio.to_thread(where)

    async def _hash(self, password: Any, loc: str) -> str:
        if not isinstance(password, str):
            raise invalid_input([(loc, "must be a string")])
        if len(password) < MIN_PASSWORD_LENGTH:
            raise invalid_input([(loc, f"must have at least {MIN_PASSWORD_LENGTH} characters")])
        if len(password) > MAX_PASSWORD_LENGTH:
            raise invalid_input([(loc, f"must have at most {MAX_PASSWORD_LENGTH} characters")])
        return await asyncio.to_thread(self.hash_password, password)

    def _saved(self, saved: Saved, reload: dict[str, Any], name: str) -> web.Response:
        after = saved.after if isinstance(saved.after, dict) else {}
        answer = {
            "user": {"name": name, "role": after.get("role")},
            "version": saved.fingerprint,
            "reload": reload,
        }
        return self.console.versioned_json(answer, saved.fingerprint)


def keep_admin(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
    """The rule of every users save: a file that had an ``admin`` keeps one.

    Args:
        before: The raw file before the change.
        after: After it.

    Returns:
        The problem, at the key path of the user whose change removes the last admin.
    """
    if not _admins(after) and _admins(before):
        (index, user), *_ = _admins(before).items()
        gone = not any(isinstance(u, dict) and u.get("name") == user for u in _users(after))
        where = f"users[{index}]" if gone else f"users[{index}].role"
        what = "deleted" if gone else "given another role"
        return [(where, f"the last admin cannot be {what}; make another user admin first")]
    return []


def _users(raw: dict[str, Any]) -> list[Any]:
    users = raw.get("users")
    return users if isinstance(users, list) else []


def _admins(raw: dict[str, Any]) -> dict[int, str]:
    return {
        i: str(u.get("name"))
        for i, u in enumerate(_users(raw))
        if isinstance(u, dict) and u.get("role") == "admin"
    }
