"""The browser demo: ``GET /demo/<slug>`` talks to an agent from a web page.

The page (``sipserver/web/static/demo.html`` and its scripts) captures the microphone with
getUserMedia and an AudioWorklet, streams 16 kHz L16 over the agent's media-stream websocket
(the extension of Twilio's protocol described in docs/websocket.md), plays the agent's audio and
shows the live transcript and the agent's state from the ``sipserver`` event messages.

Served only when ``server.demo_page`` is true, for agents whose websocket is enabled: the page
carries the agent's websocket secret, so anyone who can load it can call the agent.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from sipserver.config import Config

__all__ = ["STATIC_FILES", "add_demo_routes"]

STATIC_FILES = {
    "demo.js": "text/javascript",
    "capture-worklet.js": "text/javascript",
    "playback-worklet.js": "text/javascript",
}
"""Scripts of the page, by name, with their content type."""


def _static(name: str) -> str:
    return (resources.files("sipserver.web") / "static" / name).read_text(encoding="utf-8")


def add_demo_routes(app: web.Application, config: Callable[[], Config]) -> None:
    """Register ``/demo/<slug>`` and ``/demo/static/<name>`` on ``app``.

    Args:
        app: the server's application.
        config: returns the configuration in force (``server.demo_page``, the agents).
    """

    async def page(request: web.Request) -> web.Response:
        current = config()
        agent = current.agent_by_slug(request.match_info["slug"])
        if (
            not current.server.demo_page
            or agent is None
            or not agent.websocket.enabled
            or agent.websocket.secret is None
        ):
            raise web.HTTPNotFound(text="not found")
        body = (
            _static("demo.html")
            .replace("{{AGENT_NAME}}", html.escape(agent.name or agent.slug))
            .replace(
                "{{WS_PATH}}",
                html.escape(json.dumps(f"/ws/{agent.slug}/{agent.websocket.secret}")),
            )
        )
        return web.Response(
            text=body,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not config().server.demo_page or name not in STATIC_FILES:
            raise web.HTTPNotFound(text="not found")
        return web.Response(text=_static(name), content_type=STATIC_FILES[name])

    app.router.add_get("/demo/static/{name}", static)
    app.router.add_get("/demo/{slug}", page)
