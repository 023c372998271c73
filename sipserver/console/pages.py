"""What every console page shares: its security headers, its files, its login redirect, the
``{{KEY}}`` templating, the read-only banner and the error page.

The page modules (agent_pages, model_pages, user_pages, live) keep only their routes, their role
rules and the values of their templates.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping
from importlib import resources
from typing import Final
from urllib.parse import quote

from aiohttp import web

from sipserver.console.api import SessionGate, Who

__all__ = [
    "MEDIA_PAGE_HEADERS",
    "PAGE_HEADERS",
    "asset_response",
    "error_page",
    "login_or_redirect",
    "read_only_banner",
    "render",
    "static_text",
]

_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'{media}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _headers(csp: str) -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": csp,
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
    }


PAGE_HEADERS: Final = _headers(_CSP.format(media=""))
"""Headers of a console page: the dashboard's policy (scripts and styles from this site only)."""
MEDIA_PAGE_HEADERS: Final = _headers(_CSP.format(media="; media-src 'self'"))
"""The same, plus ``media-src`` for the model page's sound previews."""


@functools.cache
def static_text(name: str) -> str:
    """A file of sipserver/console/static/ (read once per process)."""
    return (resources.files("sipserver.console") / "static" / name).read_text(encoding="utf-8")


def render(
    template: str, values: Mapping[str, str], headers: Mapping[str, str] = PAGE_HEADERS
) -> web.Response:
    """``template`` (a static file) with each ``{{KEY}}`` replaced by ``values[KEY]``, which
    the caller has escaped for HTML."""
    body = static_text(template)
    for key, value in values.items():
        body = body.replace("{{" + key + "}}", value)
    return web.Response(text=body, content_type="text/html", headers=dict(headers))


def asset_response(name: str, kinds: Mapping[str, str]) -> web.Response:
    """A page's script or stylesheet ``name`` if ``kinds`` (name -> content type) lists it."""
    if name not in kinds:
        raise web.HTTPNotFound(text="not found")
    return web.Response(
        text=static_text(name), content_type=kinds[name], headers={"Cache-Control": "no-cache"}
    )


def login_or_redirect(gate: SessionGate, request: web.Request) -> Who:
    """The request's login, or a redirect to the login form that comes back here."""
    login = gate.login_of(request)
    if login is None:
        raise web.HTTPSeeOther(f"/dashboard/login?next={quote(request.path_qs, safe='/')}")
    return login


def read_only_banner(reason: str | None) -> str:
    """The HTML of the banner a console page shows when the file cannot be saved.

    Args:
        reason: :attr:`ConfigDocument.read_only_reason` (None: writable, no banner).
    """
    if reason is None:
        return ""
    why = html.escape(reason[:1].upper() + reason[1:])
    return (
        '<p class="banner" role="status" id="read-only-banner"><strong>Read-only.</strong> '
        f"{why}. For a file to edit: <code>sipserver init DIR</code> writes the embedded "
        "default (with its knowledge base) to DIR; then start "
        "<code>sipserver run -c DIR/sipserver.yaml</code>.</p>"
    )


def error_page(status: int, message: str, headers: Mapping[str, str]) -> web.HTTPException:
    """A 403 or 404 page in the dashboard's look, saying ``message``."""
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{status} · sipserver</title>"
        '<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>'
        f'<body class="narrow"><main><h1 id="error-status">{status}</h1>'
        f'<p id="error-message">{html.escape(message)}</p>'
        '<p><a href="/dashboard">Agents</a> · <a href="/dashboard/login">Log in as someone '
        "else</a></p></main></body></html>"
    )
    kind = web.HTTPForbidden if status == 403 else web.HTTPNotFound
    return kind(text=page, content_type="text/html", headers=dict(headers))
