"""The console's agent pages under ``/dashboard`` (docs/console.md, "Pages").

- ``GET /dashboard/agents/new``: a blank agent settings form;
- ``GET /dashboard/agents/{slug}/settings``: the agent's settings;
- ``GET /dashboard/static/agents/{name}``: their script and stylesheet, and the agent list's
  live call counts (``agents-list.js``).

The pages are HTML shells: the script reads and saves the agent through the JSON API
(``/api/agents/{slug}``, ``/api/models``, ``/api/secrets/generate``), so the page and a script
use the same rules. The session is the dashboard's (:class:`~sipserver.console.api.SessionGate`).
A ``supervisor`` gets the page read-only (inputs disabled, no Save, a note why), as does every
writer when the server runs on the embedded default or cannot write its file; then every role
also sees the model pages' banner (:func:`~sipserver.console.model_pages.read_only_banner`:
why, and how to get a file to edit).
"""

from __future__ import annotations

import html
import re
from typing import Final

from aiohttp import web

from sipserver.console.api import READ_ROLES, WRITE_ROLES, SessionGate, Who
from sipserver.console.document import ConfigDocument
from sipserver.console.pages import (
    PAGE_HEADERS,
    asset_response,
    login_or_redirect,
    read_only_banner,
    render,
)

__all__ = ["AgentPages"]

_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
_STATIC: Final = {
    "agent.js": "text/javascript",
    "agent.css": "text/css",
    "agents-list.js": "text/javascript",
}


class AgentPages:
    """The agent settings pages.

    Args:
        gate: The dashboard's login.
        document: The configuration file (whether it can be written).
    """

    def __init__(self, *, gate: SessionGate, document: ConfigDocument) -> None:
        self.gate = gate
        self.document = document

    def add_routes(self, app: web.Application) -> None:
        """Register the pages and their static files."""
        r = app.router
        r.add_get("/dashboard/agents/new", self.new_page)
        r.add_get("/dashboard/agents/{slug}/settings", self.settings_page)
        r.add_get("/dashboard/static/agents/{name}", self.static)

    async def static(self, request: web.Request) -> web.Response:
        """The pages' script and stylesheet."""
        return asset_response(request.match_info["name"], _STATIC)

    async def new_page(self, request: web.Request) -> web.Response:
        """A new agent (writers; a reader is sent the read-only note)."""
        return self._page(request, slug="")

    async def settings_page(self, request: web.Request) -> web.Response:
        """One agent's settings (the script loads it; an unknown slug shows "no such agent")."""
        slug = request.match_info["slug"]
        if not _SLUG.fullmatch(slug):  # the rule of config.Agent.slug
            raise web.HTTPNotFound(text="no such agent")
        return self._page(request, slug=slug)

    def _page(self, request: web.Request, *, slug: str) -> web.Response:
        login = self._require(request)
        reason = ""
        if login.role not in WRITE_ROLES:
            reason = f"The role {login.role} may only read the configuration."
        elif self.document.read_only_reason is not None:
            reason = "The console is read-only (the banner above says why)."
        values = {
            "SLUG": html.escape(slug, quote=True),
            "TITLE": html.escape(slug or "New agent"),
            "USER": html.escape(login.name),
            "ROLE": html.escape(login.role),
            "READ_ONLY": html.escape(reason, quote=True),
            "BANNER": read_only_banner(self.document.read_only_reason),
        }
        return render("agent.html", values)

    def _require(self, request: web.Request) -> Who:
        login = login_or_redirect(self.gate, request)
        if login.role not in READ_ROLES:
            raise web.HTTPForbidden(
                text=f"the role {login.role} may not see the configuration",
                headers=PAGE_HEADERS,
            )
        return login
