"""The HTTP listener: aiohttp's request handling behind a capped accept loop with read deadlines.

aiohttp bounds how long a connection may wait between requests (``keepalive_timeout``) but not
how long a request head or body may take to arrive: a client sending a byte every few seconds
holds a connection (and a file descriptor) for ever. Here:

- connections are accepted by :class:`~sipserver.connections.StreamAcceptor`: a total and a
  per-source cap (refused at once, ``sipserver_refusals_total{ingress="http"}``), no traceback
  when the process is out of descriptors;
- each connection's handler (:class:`GuardedRequestHandler`, aiohttp's own with two timers)
  closes it when a request head is not complete ``header_timeout`` seconds after its first byte
  (a new connection's first head counts from the connection; a request line and headers take
  one round trip, so a few seconds are plenty) and when a body is not complete
  ``body_timeout`` seconds after its head; both are refusals (``header_timeout``,
  ``body_timeout``). A connection upgraded to a websocket has neither: its frames are the
  websocket's business (stall timeouts, message caps).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sipserver.connections import (
    ConnectionLimits,
    ConnectionSlot,
    StreamAcceptor,
    listening_sockets,
)
from sipserver.observability import RefusalLog, get_logger
from sipserver.web.app import request_error_logger

__all__ = ["GuardedRequestHandler", "HttpDeadlines", "HttpListener", "HttpSite"]

log = get_logger(__name__)

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


@dataclass(slots=True)
class HttpDeadlines:
    """The read deadlines of HTTP connections (changed in place by a reload)."""

    header_timeout: float = 10.0
    """Seconds from a request head's first byte (or the connection) to its end."""
    body_timeout: float = 30.0
    """Seconds from the end of a request head to the end of its body."""
    keepalive_timeout: float = 60.0
    """Seconds an idle keep-alive connection waits for its next request (new connections)."""


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's request handler with a header and a body read deadline and a connection slot.

    It reads four attributes of aiohttp's handler to know where a request stands
    (``_request_count`` counts parsed heads, ``_messages`` holds the newest head's payload,
    ``_upgraded`` and ``_payload_parser`` mark an upgraded connection); a unit test pins them,
    so an aiohttp upgrade that renames one fails there, not in production.
    """

    __slots__ = ("_body", "_deadline", "_deadline_kind", "_head_bytes", "_listener", "_slot")

    def __init__(
        self,
        manager: web.Server,
        *,
        listener: HttpListener,
        slot: ConnectionSlot | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            manager,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=listener.deadlines.keepalive_timeout,
            **kwargs,
        )
        self._listener = listener
        self._slot = slot
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None
        self._body: Any = None
        self._head_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm("header")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._arm(None)
        self._body = None
        if self._slot is not None:
            self._slot.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._payload_parser is not None:
            # A websocket (or another upgraded protocol): no read deadline from here on.
            if self._deadline_kind is not None:
                self._arm(None)
            super().data_received(data)
            return
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            payload = self._messages[-1][1] if self._messages else None
            self._body = payload if payload is not None and not payload.is_eof() else None
            self._head_bytes = False
            self._arm("body" if self._body is not None else None)
        elif self._body is not None:
            if self._body.is_eof():
                self._body = None
                self._arm(None)
        elif data:
            self._head_bytes = True
            if self._deadline_kind is None:
                self._arm("header")

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's "Error handling request": a handler whose client went away (a body cut by
        its deadline, a peer that hung up mid-upload) fails with a ConnectionError, or with
        aiohttp's ``RuntimeError("Connection closed.")`` when its next read starts after the
        close (the handler was between two chunks); that is one short debug line, not a
        traceback an attacker can print at will. Anything else keeps its traceback (a bug
        should be seen)."""
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError) or _read_after_close(exc):
            source = self._slot.host if self._slot is not None else ""
            log.debug("http_client_gone", source=source, error=str(exc))
            return
        super().log_exception(*args, **kw)

    def _arm(self, kind: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_kind = kind
        if kind is None:
            return
        deadlines = self._listener.deadlines
        delay = deadlines.header_timeout if kind == "header" else deadlines.body_timeout
        self._deadline = self._loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        kind, self._deadline, self._deadline_kind = self._deadline_kind, None, None
        transport = self.transport
        if transport is None or self._upgraded:
            return
        source = self._slot.host if self._slot is not None else ""
        if kind == "body" or self._head_bytes:
            self._listener.refusals.refuse(self._listener.ingress, f"{kind}_timeout", source=source)
        if kind == "header" and self._head_bytes and not transport.is_closing():
            transport.write(_TIMEOUT_RESPONSE)  # RFC 9110 §15.5.9
        self.force_close()


def _read_after_close(exc: object) -> bool:
    """aiohttp's payload raises ``RuntimeError("Connection closed.")`` (not a ConnectionError)
    when a handler starts a read on a connection already closed; matched by its text, which
    ``tests/unit/test_connections.py`` pins against the installed aiohttp."""
    return isinstance(exc, RuntimeError) and str(exc) == "Connection closed."


class HttpListener:
    """The HTTP listening socket of an aiohttp :class:`~aiohttp.web.AppRunner`, with
    connection caps (:class:`ConnectionLimits`) and read deadlines (:class:`HttpDeadlines`).

    Args:
        runner: an application runner after ``setup()``.
        limits: the caps of HTTP connections.
        refusals: where refused and timed-out connections are counted.
        deadlines: the read deadlines (the same object is read for every new timer).
        logger: aiohttp's request error logger.
        ingress: the refusal metric's ``ingress`` label.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        limits: ConnectionLimits,
        refusals: RefusalLog,
        deadlines: HttpDeadlines,
        *,
        logger: logging.Logger,
        ingress: str = "http",
    ) -> None:
        self._runner = runner
        self.ingress = ingress
        self.limits = limits
        self.refusals = refusals
        self.deadlines = deadlines
        self._logger = logger
        self._acceptors: list[StreamAcceptor] = []

    def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` and start accepting; the port bound (useful with 0).

        Raises:
            OSError: the address cannot be bound.
        """
        server = self._runner.server
        assert server is not None, "runner.setup() first"
        for sock in listening_sockets(host, port):
            acceptor = StreamAcceptor(
                sock,
                lambda slot: GuardedRequestHandler(
                    server, listener=self, slot=slot, access_log=None, logger=self._logger
                ),
                self.limits,
                self.refusals,
                self.ingress,
            )
            acceptor.start()
            self._acceptors.append(acceptor)
        return self._acceptors[0].port

    def close(self) -> None:
        """Stop accepting (the runner's cleanup closes the open connections)."""
        for acceptor in self._acceptors:
            acceptor.close()


class HttpSite:
    """An aiohttp application served behind an :class:`HttpListener` (the server's public
    port and its admin port each have one).

    Args:
        app: the application.
        limits: the caps of its connections.
        refusals: where refused and timed-out connections are counted.
        deadlines: the read deadlines.
        ingress: the refusal metric's ``ingress`` label.
    """

    def __init__(
        self,
        app: web.Application,
        limits: ConnectionLimits,
        refusals: RefusalLog,
        deadlines: HttpDeadlines,
        *,
        ingress: str = "http",
    ) -> None:
        self._app = app
        self.limits = limits
        self.refusals = refusals
        self.deadlines = deadlines
        self.ingress = ingress
        self._runner: web.AppRunner | None = None
        self._listener: HttpListener | None = None

    async def start(self, host: str, port: int, *, name: str) -> int:
        """Set the application up and bind ``host:port``; the port bound (useful with 0).

        Args:
            host: the address to listen on.
            port: the port (0: any free one).
            name: what the error names when the address cannot be bound (a key path).

        Raises:
            OSError: the address cannot be bound; the message names ``name``.
        """
        logger = request_error_logger()
        self._runner = web.AppRunner(self._app, access_log=None, logger=logger)
        await self._runner.setup()
        self._listener = HttpListener(
            self._runner,
            self.limits,
            self.refusals,
            self.deadlines,
            logger=logger,
            ingress=self.ingress,
        )
        try:
            return self._listener.start(host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind {name} {host}:{port}: {exc.strerror}") from exc

    async def stop(self) -> None:
        """Stop accepting, then close the open connections."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
