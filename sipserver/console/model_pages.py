"""The console's pages for realtime voice models and credentials (docs/console.md "Pages").

- ``GET /dashboard/models``: the models (name, type, credential, the agents that use each);
- ``GET /dashboard/models/new`` and ``GET /dashboard/models/{name}``: create or edit one, the
  type chosen first (Custom: providers and every setting, grouped; LiveKit Inference: the
  credential and the STT/LLM/TTS model IDs);
- ``GET /dashboard/settings/credentials``: names, kind, the models that use each; values are
  write-only;
- ``GET /dashboard/sounds/{name}.wav``: the shipped thinking and ambient clips, read-only, for
  the page's play buttons;
- ``GET /dashboard/console/{file}``: the pages' scripts and stylesheet.

The pages are HTML shells with the dashboard's login and look; their scripts read and save
through the JSON API (:mod:`sipserver.console.api`), which enforces the roles: the shells only
tell the script whether the user may write, so a supervisor sees the forms disabled. A server on
the embedded default (or an unwritable file) shows a banner saying the console is read-only and
how to get a writable configuration (``sipserver init`` and ``-c``).
"""

from __future__ import annotations

import functools
import html
import json
from importlib import resources
from typing import Final

from aiohttp import web

from sipserver.config import SHIPPED_SOUNDS
from sipserver.console.api import READ_ROLES, WRITE_ROLES, SessionGate, Who
from sipserver.console.document import ConfigDocument
from sipserver.console.model_fields import page_schema
from sipserver.console.pages import (
    MEDIA_PAGE_HEADERS,
    error_page,
    login_or_redirect,
    read_only_banner,
    render,
    static_text,
)
from sipserver.console.users import admin_links

__all__ = ["ModelPages", "read_only_banner"]

_ASSETS: Final = {
    "models.js": "text/javascript",
    "model.js": "text/javascript",
    "credentials.js": "text/javascript",
    "console.js": "text/javascript",
    "console.css": "text/css",
}


@functools.cache
def _sound(name: str) -> bytes:
    return (resources.files("sipserver") / "sounds" / f"{name}.wav").read_bytes()


@functools.cache
def _schema_json() -> str:
    # Inside <script type="application/json">: no "</script>" can close it early.
    return json.dumps(page_schema()).replace("<", "\\u003c")


class ModelPages:
    """The model and credential pages.

    Args:
        gate: The dashboard's login (the same session cookie).
        document: The configuration file (whether it can be written).
    """

    def __init__(self, *, gate: SessionGate, document: ConfigDocument) -> None:
        self.gate = gate
        self.document = document

    def add_routes(self, app: web.Application) -> None:
        """Register the pages on the public site."""
        r = app.router
        r.add_get("/dashboard/models", self.models_page)
        r.add_get("/dashboard/models/new", self.model_page)
        r.add_get("/dashboard/models/{name}", self.model_page)
        r.add_get("/dashboard/settings/credentials", self.credentials_page)
        r.add_get("/dashboard/sounds/{file}", self.sound)
        r.add_get("/dashboard/console/{file}", self.asset)

    def _login(self, request: web.Request) -> Who:
        login = login_or_redirect(self.gate, request)
        if login.role not in READ_ROLES:
            raise error_page(
                403, f"the role {login.role} may not see the configuration", MEDIA_PAGE_HEADERS
            )
        return login

    def _page(self, template: str, login: Who, **values: str) -> web.Response:
        reason = self.document.read_only_reason
        writable = login.role in WRITE_ROLES and reason is None
        fields = {
            "USER": html.escape(login.name),
            "ROLE": html.escape(login.role),
            "CAN_WRITE": "true" if writable else "false",
            "BANNER": read_only_banner(reason),
            "ADMIN_LINKS": admin_links(login.role),
            **values,
        }
        return render(template, fields, MEDIA_PAGE_HEADERS)

    async def models_page(self, request: web.Request) -> web.Response:
        """The list of realtime voice models."""
        return self._page("models.html", self._login(request))

    async def model_page(self, request: web.Request) -> web.Response:
        """Create (``/new``) or edit one model."""
        login = self._login(request)
        name = request.match_info.get("name", "")
        title = f"Realtime voice model {name}" if name else "New realtime voice model"
        return self._page(
            "model.html",
            login,
            TITLE=html.escape(title),
            MODEL=html.escape(name, quote=True),
            SCHEMA=_schema_json(),
        )

    async def credentials_page(self, request: web.Request) -> web.Response:
        """Settings > Credentials."""
        return self._page("credentials.html", self._login(request))

    async def sound(self, request: web.Request) -> web.Response:
        """A shipped clip (``<name>.wav``), for the play buttons; only those clips."""
        self._login(request)
        name = request.match_info["file"].removesuffix(".wav")
        if name not in SHIPPED_SOUNDS or not request.match_info["file"].endswith(".wav"):
            raise error_page(404, "no such sound", MEDIA_PAGE_HEADERS)
        return web.Response(
            body=_sound(name),
            content_type="audio/wav",
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    async def asset(self, request: web.Request) -> web.Response:
        """The pages' scripts and stylesheet."""
        name = request.match_info["file"]
        if name not in _ASSETS:
            raise error_page(404, "not found", MEDIA_PAGE_HEADERS)
        return web.Response(
            text=static_text(name),
            content_type=_ASSETS[name],
            headers={"Cache-Control": "no-cache"},
        )
