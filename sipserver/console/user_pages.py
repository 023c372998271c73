"""The console's admin pages (docs/console.md "Pages"): the dashboard users and the audit log.

- ``GET /dashboard/settings/users``: the users with their roles; add a user, change a role,
  reset a password, delete (through ``/api/users``, :mod:`sipserver.console.users`);
- ``GET /dashboard/settings/audit``: the audit log, newest first (``GET /api/audit``);
- ``GET /dashboard/settings/static/{file}``: their scripts.

Both are for ``admin`` only: any other role gets a 403 page with the reason, no session the
login. The shells carry no data: the scripts read and save through the API, which enforces the
same rules.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from typing import Final
from urllib.parse import quote

from aiohttp import web

from sipserver.console.api import SessionGate, Who
from sipserver.console.document import ConfigDocument
from sipserver.console.model_pages import read_only_banner
from sipserver.console.users import ADMIN_ROLES, MIN_PASSWORD_LENGTH

__all__ = ["UserPages"]

_ASSETS: Final = {"users.js": "text/javascript", "audit.js": "text/javascript"}
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


@functools.cache
def _asset(name: str) -> str:
    return (resources.files("sipserver.console") / "static" / name).read_text(encoding="utf-8")


class UserPages:
    """The Users and Audit pages.

    Args:
        gate: The dashboard's login (the same session cookie).
        document: The configuration file (whether it can be written).
    """

    def __init__(self, *, gate: SessionGate, document: ConfigDocument) -> None:
        self.gate = gate
        self.document = document

    def add_routes(self, app: web.Application) -> None:
        """Register the pages and their scripts on the public site."""
        r = app.router
        r.add_get("/dashboard/settings/users", self.users_page)
        r.add_get("/dashboard/settings/audit", self.audit_page)
        r.add_get("/dashboard/settings/static/{file}", self.asset)

    def _admin(self, request: web.Request, what: str) -> Who:
        login = self.gate.login_of(request)
        if login is None:
            raise web.HTTPSeeOther(f"/dashboard/login?next={quote(request.path_qs, safe='/')}")
        if login.role not in ADMIN_ROLES:
            raise _forbidden(f"Only an admin {what}; the role {login.role} may not.")
        return login

    def _page(self, template: str, login: Who) -> web.Response:
        reason = self.document.read_only_reason
        fields = {
            "USER": html.escape(login.name),
            "ROLE": html.escape(login.role),
            "CAN_WRITE": "false" if reason else "true",
            "BANNER": read_only_banner(reason),
            "MIN_LENGTH": str(MIN_PASSWORD_LENGTH),
        }
        body = _asset(template)
        for key, value in fields.items():
            body = body.replace("{{" + key + "}}", value)
        return web.Response(text=body, content_type="text/html", headers=_HEADERS)

    async def users_page(self, request: web.Request) -> web.Response:
        """Settings > Users."""
        return self._page("users.html", self._admin(request, "manages the users"))

    async def audit_page(self, request: web.Request) -> web.Response:
        """Settings > Audit log."""
        return self._page("audit.html", self._admin(request, "reads the audit log"))

    async def asset(self, request: web.Request) -> web.Response:
        """The pages' scripts."""
        name = request.match_info["file"]
        if name not in _ASSETS:
            raise web.HTTPNotFound(text="not found")
        return web.Response(
            text=_asset(name), content_type=_ASSETS[name], headers={"Cache-Control": "no-cache"}
        )


def _forbidden(message: str) -> web.HTTPException:
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>403 · sipserver</title>"
        '<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>'
        '<body class="narrow"><main><h1 id="error-status">403</h1>'
        f'<p id="error-message">{html.escape(message)}</p>'
        '<p><a href="/dashboard">Agents</a> · <a href="/dashboard/login">Log in as someone '
        "else</a></p></main></body></html>"
    )
    return web.HTTPForbidden(text=page, content_type="text/html", headers=_HEADERS)
