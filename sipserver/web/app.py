"""The HTTP side of the server (aiohttp): liveness, readiness, metrics and a status page.

Two applications: the public one (:func:`build_app`; the Twilio webhooks, media-stream
websockets, dashboard and demo page add their routes to it) serves ``/healthz`` and ``/readyz``,
and ``/status`` and ``/metrics`` only to a request that carries ``server.admin_token`` (404
without a token configured, so the port does not even say they exist). The admin application
(:func:`build_admin_app`, on ``server.admin_http``, loopback by default) serves all four
without a token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from sipserver import __version__
from sipserver.observability import CONTENT_TYPE_LATEST, Metrics

__all__ = ["build_admin_app", "build_app", "request_error_logger"]

StatusProvider = Callable[[], dict[str, Any]]
ReadinessProvider = Callable[[], tuple[bool, dict[str, Any]]]
"""Returns (ready, JSON body of ``GET /readyz``)."""


def build_app(
    metrics: Metrics,
    status: StatusProvider,
    readiness: ReadinessProvider,
    *,
    admin_token: Callable[[], str | None] = lambda: None,
) -> web.Application:
    """Build the public aiohttp application.

    Args:
        metrics: rendered at ``GET /metrics`` in the Prometheus text format.
        status: returns the JSON body of ``GET /status`` (listeners, registrations ...).
        readiness: whether the server takes calls now, and what it still waits for:
            ``GET /readyz`` answers 200 when ready, else 503 (``/healthz`` is liveness only).
        admin_token: returns ``server.admin_token`` (read per request, so a reload applies):
            ``/status`` and ``/metrics`` need ``Authorization: Bearer <it>`` (401 without);
            None: they answer 404 here (the admin listener serves them).
    """
    app = web.Application()
    handlers = _handlers(metrics, status, readiness)

    def guarded(handler: _Handler) -> _Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            token = admin_token()
            if token is None:
                raise web.HTTPNotFound(text="404: Not Found")
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                raise web.HTTPUnauthorized(
                    text="bearer token required",
                    headers={"WWW-Authenticate": 'Bearer realm="sipserver admin"'},
                )
            return await handler(request)

        return check

    app.router.add_get("/healthz", handlers["/healthz"])
    app.router.add_get("/readyz", handlers["/readyz"])
    app.router.add_get("/metrics", guarded(handlers["/metrics"]))
    app.router.add_get("/status", guarded(handlers["/status"]))
    return app


def build_admin_app(
    metrics: Metrics, status: StatusProvider, readiness: ReadinessProvider
) -> web.Application:
    """The admin application (``server.admin_http``): ``/status``, ``/metrics``, ``/healthz``
    and ``/readyz``, without a token (the listener's address is its protection)."""
    app = web.Application()
    for path, handler in _handlers(metrics, status, readiness).items():
        app.router.add_get(path, handler)
    return app


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _handlers(
    metrics: Metrics, status: StatusProvider, readiness: ReadinessProvider
) -> dict[str, _Handler]:
    async def metrics_handler(_: web.Request) -> web.StreamResponse:
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "version": __version__})

    async def ready_handler(_: web.Request) -> web.StreamResponse:
        ready, body = readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def status_handler(_: web.Request) -> web.StreamResponse:
        return web.json_response({"version": __version__, **status()})

    return {
        "/metrics": metrics_handler,
        "/healthz": health_handler,
        "/readyz": ready_handler,
        "/status": status_handler,
    }


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
