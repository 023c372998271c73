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

import html
from typing import Final

from aiohttp import web

from sipserver.console.api import SessionGate, Who
from sipserver.console.document import ConfigDocument
from sipserver.console.pages import (
    PAGE_HEADERS,
    asset_response,
    error_page,
    login_or_redirect,
    read_only_banner,
    render,
)
from sipserver.console.users import ADMIN_ROLES, MIN_PASSWORD_LENGTH

__all__ = ["UserPages"]

_ASSETS: Final = {"users.js": "text/javascript", "audit.js": "text/javascript"}


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
        login = login_or_redirect(self.gate, request)
        if login.role not in ADMIN_ROLES:
            raise error_page(
                403, f"Only an admin {what}; the role {login.role} may not.", PAGE_HEADERS
            )
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
        return render(template, fields)

    async def users_page(self, request: web.Request) -> web.Response:
        """Settings > Users."""
        return self._page("users.html", self._admin(request, "manages the users"))

    async def audit_page(self, request: web.Request) -> web.Response:
        """Settings > Audit log."""
        return self._page("audit.html", self._admin(request, "reads the audit log"))

    async def asset(self, request: web.Request) -> web.Response:
        """The pages' scripts."""
        return asset_response(request.match_info["file"], _ASSETS)
