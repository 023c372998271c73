"""The call history pages (docs/records.md, "Pages"): the Calls list and one call.

- ``GET /dashboard/calls``: the calls the user may see, newest first, with filters (agent,
  from, to), a transcript search and paging; ``calls.js`` reads ``GET /api/calls`` (its
  ``agent``, ``from``, ``to``, ``q``, ``limit`` and ``cursor``). ``?agent=<slug>`` (the agent
  card's "Calls" entry) opens it filtered to that agent.
- ``GET /dashboard/calls/{id}``: one call. The latency timeline
  (:func:`~sipserver.records.timeline.timeline_svg`) is rendered here, into the page; ``call.js``
  fills the facts, the summary row, the transcript, the recording's player and the webhook
  status from ``GET /api/calls/{id}``, and deletes through ``DELETE /api/calls/{id}`` (admin).
- ``GET /dashboard/static/calls/{name}``: their scripts and stylesheet.

This package may not import the console (siblings), so :class:`RecordPages` is handed what it
shares with the console pages by ``server.py``: the dashboard's login, the agents a role may
see, and the top bar's admin links. What is left here (the security headers with
``media-src`` for the player, the ``{{KEY}}`` renderer over this package's files) is a few
lines, kept apart from the console's on purpose.
"""

from __future__ import annotations

import asyncio
import functools
import html
import re
from collections.abc import Callable, Collection, Mapping
from importlib import resources
from typing import Final, Protocol
from urllib.parse import quote

from aiohttp import web

from sipserver.observability import get_logger
from sipserver.records.store import RecordStore
from sipserver.records.timeline import timeline_svg

__all__ = ["PAGE_HEADERS", "RecordPages", "Viewer"]

log = get_logger(__name__)

PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; media-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
"""The console pages' policy (scripts and styles from this site only) plus ``media-src`` for
the recording's player."""

_ASSETS: Final = {
    "calls.js": "text/javascript",
    "call.js": "text/javascript",
    "records.css": "text/css",
}
_RECORD_ID: Final = re.compile(r"[0-9a-f]{26}")
""":func:`~sipserver.pipeline.call_record.new_record_id`'s form."""
_ADMIN: Final = "admin"
"""The role that may delete a call (``DELETE /api/calls/{id}``)."""


class Viewer(Protocol):
    """A logged-in user (the dashboard's ``Login``)."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


@functools.cache
def _static_text(name: str) -> str:
    return (resources.files("sipserver.records") / "static" / name).read_text(encoding="utf-8")


def _render(template: str, values: Mapping[str, str], status: int = 200) -> web.Response:
    """``template`` with each ``{{KEY}}`` replaced by ``values[KEY]`` (already HTML)."""
    body = _static_text(template)
    for key, value in values.items():
        body = body.replace("{{" + key + "}}", value)
    return web.Response(
        text=body, status=status, content_type="text/html", headers=dict(PAGE_HEADERS)
    )


class RecordPages:
    """The Calls page and the call page.

    Args:
        login: The request's login (the dashboard's session), or None.
        visible: The agents (slugs) a role may see the calls of; None: every agent's,
            including agents no longer in the configuration.
        agents: The agents of the configuration (the agent filter's choices).
        top_links: The top bar's extra links for a role (the console's Users and Audit for an
            admin), as HTML.
        store: The record store in use (None: ``server.records.store: none``).
    """

    def __init__(
        self,
        *,
        login: Callable[[web.Request], Viewer | None],
        visible: Callable[[str], Collection[str] | None],
        agents: Callable[[], Collection[str]],
        top_links: Callable[[str], str],
        store: Callable[[], RecordStore | None],
    ) -> None:
        self._login = login
        self._visible = visible
        self._agents = agents
        self._top_links = top_links
        self._store = store

    def add_routes(self, app: web.Application) -> None:
        """Register the pages and their static files."""
        r = app.router
        r.add_get("/dashboard/calls", self.calls_page)
        r.add_get("/dashboard/calls/{id}", self.call_page)
        r.add_get("/dashboard/static/calls/{name}", self.asset)

    async def asset(self, request: web.Request) -> web.Response:
        """The pages' scripts and stylesheet."""
        name = request.match_info["name"]
        if name not in _ASSETS:
            raise web.HTTPNotFound(text="not found")
        return web.Response(
            text=_static_text(name),
            content_type=_ASSETS[name],
            headers={"Cache-Control": "no-cache"},
        )

    def _require(self, request: web.Request) -> Viewer:
        login = self._login(request)
        if login is None:
            raise web.HTTPSeeOther(f"/dashboard/login?next={quote(request.path_qs, safe='/')}")
        return login

    def _common(self, login: Viewer) -> dict[str, str]:
        return {
            "USER": html.escape(login.name),
            "ROLE": html.escape(login.role),
            "ADMIN_LINKS": self._top_links(login.role),
        }

    async def calls_page(self, request: web.Request) -> web.Response:
        """The list's shell: the agent filter's options are the agents the role may see."""
        login = self._require(request)
        visible = self._visible(login.role)
        agents = sorted(self._agents() if visible is None else visible)
        chosen = request.query.get("agent", "")
        options = ['<option value="">Every agent</option>']
        for slug in agents:
            selected = " selected" if slug == chosen else ""
            options.append(
                f'<option value="{html.escape(slug, quote=True)}"{selected}>'
                f"{html.escape(slug)}</option>"
            )
        off = self._store() is None
        values = {
            **self._common(login),
            "AGENT_OPTIONS": "".join(options),
            "RECORDS_OFF": "" if off else "hidden",
        }
        return _render("calls.html", values)

    async def call_page(self, request: web.Request) -> web.Response:
        """One call: 404 when there is none of that id or its agent is not the user's to see
        (the same answer, so ids of hidden calls are not confirmed)."""
        login = self._require(request)
        record_id = request.match_info["id"]
        store = self._store()
        record = None
        if store is not None and _RECORD_ID.fullmatch(record_id):
            record = await asyncio.to_thread(store.get, record_id)
        visible = self._visible(login.role)
        if record is None or (visible is not None and record.agent not in visible):
            return self._not_found(login)
        svg = await asyncio.to_thread(timeline_svg, record)
        values = {
            **self._common(login),
            "ID": html.escape(record.id, quote=True),
            "AGENT": html.escape(record.agent),
            "AGENT_Q": quote(record.agent, safe=""),
            "CAN_DELETE": "true" if login.role == _ADMIN else "false",
            "TIMELINE": svg,
        }
        return _render("call.html", values)

    def _not_found(self, login: Viewer) -> web.Response:
        log.info("call_page_not_found", user=login.name, role=login.role)
        return _render("call-missing.html", self._common(login), status=404)
