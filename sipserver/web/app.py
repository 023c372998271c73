"""The HTTP side of the server (aiohttp): liveness, readiness, metrics and a status page.

Later parts (Twilio webhook, media-stream websocket, dashboard) add their routes to the same
application.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from sipserver import __version__
from sipserver.observability import CONTENT_TYPE_LATEST, Metrics

__all__ = ["build_app", "request_error_logger"]

StatusProvider = Callable[[], dict[str, Any]]
ReadinessProvider = Callable[[], tuple[bool, dict[str, Any]]]
"""Returns (ready, JSON body of ``GET /readyz``)."""


def build_app(
    metrics: Metrics, status: StatusProvider, readiness: ReadinessProvider
) -> web.Application:
    """Build the aiohttp application.

    Args:
        metrics: rendered at ``GET /metrics`` in the Prometheus text format.
        status: returns the JSON body of ``GET /status`` (listeners, registrations ...).
        readiness: whether the server takes calls now, and what it still waits for:
            ``GET /readyz`` answers 200 when ready, else 503 (``/healthz`` is liveness only).
    """
    app = web.Application()

    async def metrics_handler(_: web.Request) -> web.Response:
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def ready_handler(_: web.Request) -> web.Response:
        ready, body = readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def status_handler(_: web.Request) -> web.Response:
        return web.json_response({"version": __version__, **status()})

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/readyz", ready_handler)
    app.router.add_get("/status", status_handler)
    return app


class _BadRequestRecords(logging.Filter):
    """Turns aiohttp's "Error handling request" record of a request it could not parse (its
    400 answer to a request line or header over 8190 bytes, a bad method...) into one short
    ``http_bad_request`` line: no traceback, and none of the client's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if isinstance(exc, LineTooLong):
            reason = f"line longer than {exc.args[1]} bytes"
        else:
            reason = type(exc).__name__
        record.msg, record.args = "http_bad_request", ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.__dict__.update(remote=remote, status=exc.code, reason=reason)
        return True


def request_error_logger() -> logging.Logger:
    """The logger given to aiohttp's request handler (``AppRunner(..., logger=...)``).

    aiohttp answers a request it cannot parse itself (400: RFC 9112 §3 asks for 414 on an
    over-long request-target, which aiohttp offers no hook for) and logs the parser's exception
    with a traceback; through this logger that becomes one structured ``http_bad_request``
    line. Other errors keep their traceback (a bug should be seen).
    """
    logger = logging.getLogger("sipserver.http")
    if not any(isinstance(f, _BadRequestRecords) for f in logger.filters):
        logger.addFilter(_BadRequestRecords())
    return logger
