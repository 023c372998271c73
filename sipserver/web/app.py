"""The HTTP side of the server (aiohttp): health, metrics and a status page.

Later parts (Twilio webhook, media-stream websocket, dashboard) add their routes to the same
application.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from sipserver import __version__
from sipserver.observability import CONTENT_TYPE_LATEST, Metrics

__all__ = ["build_app"]

StatusProvider = Callable[[], dict[str, Any]]


def build_app(metrics: Metrics, status: StatusProvider) -> web.Application:
    """Build the aiohttp application.

    Args:
        metrics: rendered at ``GET /metrics`` in the Prometheus text format.
        status: returns the JSON body of ``GET /status`` (listeners, registrations ...).
    """
    app = web.Application()

    async def metrics_handler(_: web.Request) -> web.Response:
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def status_handler(_: web.Request) -> web.Response:
        return web.json_response({"version": __version__, **status()})

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/status", status_handler)
    return app
