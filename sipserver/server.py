"""The running server: wires the configuration to the SIP edge, the registrar and HTTP.

``sipserver run`` builds one :class:`Server` and awaits :meth:`Server.run`. Tests start it in a
subprocess the same way, on ports they choose.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from sipserver.config import Config
from sipserver.edge.router import SipRouter
from sipserver.edge.transport import SipListeners, parse_host_port
from sipserver.observability import Metrics, get_logger
from sipserver.registrar.auth import DigestAuthenticator, FailureTracker, NonceManager
from sipserver.registrar.bindings import BindingStore, SqliteStore, open_store
from sipserver.registrar.registrar import Registrar, RegistrarPolicy
from sipserver.sip.digest import DigestAlgorithm
from sipserver.web.app import build_app

__all__ = ["Server"]

log = get_logger(__name__)

#: How often write-behind binding changes are flushed to SQLite.
FLUSH_INTERVAL = 0.5


class Server:
    """One sipserver process: SIP edge (UDP/TCP), registrar, bindings store and HTTP.

    Args:
        config: validated configuration.
        metrics: metrics registry (a fresh one by default).
    """

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        sip = config.server.sip
        kind, path = config.server.store_url
        if kind == "sqlite" and path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.store: BindingStore = open_store(kind, path)
        self.registrar = Registrar(
            self.store,
            RegistrarPolicy(
                min_expires=sip.min_expires,
                max_expires=sip.max_expires,
                default_expires=sip.default_expires,
                max_contacts=sip.max_contacts_per_aor,
            ),
        )
        passwords = {
            a.sip.username: a.sip.password
            for a in config.agents
            if a.sip.enabled and a.sip.username and a.sip.password
        }
        self.authenticator = DigestAuthenticator(
            realm=config.server.effective_realm,
            algorithms=[DigestAlgorithm(a) for a in sip.digest_algorithms],
            nonces=NonceManager(secrets.token_bytes(32), ttl=sip.nonce_ttl),
            password_for=passwords.get,
        )
        self.tracker = FailureTracker(
            max_failures=sip.ban.max_failures,
            window=sip.ban.window,
            ban_duration=sip.ban.duration,
            max_sources=sip.ban.max_tracked_sources,
        )
        local_hosts = [parse_host_port(s)[0] for s in (*sip.udp, *sip.tcp)]
        self.router = SipRouter(
            config,
            registrar=self.registrar,
            authenticator=self.authenticator,
            tracker=self.tracker,
            metrics=self.metrics,
            local_hosts=local_hosts,
            force_rport=sip.force_rport,
        )
        self.listeners = SipListeners(
            self.router, self.metrics, max_message_size=sip.max_message_size
        )
        self.metrics.registrations_active.set(self.store.count())
        self._http_runner: web.AppRunner | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bindings-writer")
        self._flusher: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.http_port: int | None = None

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows."""
        return {
            "listeners": [
                {"transport": t, "host": h, "port": p} for t, h, p in self.listeners.bound
            ],
            "registrations": self.store.count(),
            "agents": [a.slug for a in self.config.agents],
        }

    async def start(self) -> None:
        """Bind the SIP listeners and the HTTP server."""
        sip = self.config.server.sip
        self.router.handle_timer(now=time.time())  # drop bindings that expired while down
        await self.listeners.start(list(sip.udp), list(sip.tcp))
        app = build_app(self.metrics, self.status)
        self._http_runner = web.AppRunner(app, access_log=None)
        await self._http_runner.setup()
        host, port = self.config.server.http_host_port
        site = web.TCPSite(self._http_runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind HTTP {host}:{port}: {exc.strerror}") from exc
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.http_port = int(server.sockets[0].getsockname()[1])
        log.info("http_listening", host=host, port=self.http_port or port)
        if isinstance(self.store, SqliteStore):
            self._flusher = asyncio.create_task(self._flush_loop(self.store), name="bindings-flush")

    async def _flush_loop(self, store: SqliteStore) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            changes = store.take_changes()
            if changes:
                try:
                    await loop.run_in_executor(self._writer, store.write_changes, changes)
                except Exception:
                    # Keep the changes for the next flush rather than losing them.
                    store.requeue(changes)
                    log.exception("bindings_flush_failed", aors=len(changes))

    async def stop(self) -> None:
        """Stop listening, flush the bindings and close the store."""
        await self.listeners.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if isinstance(self.store, SqliteStore):
            # Let a write in flight finish, then write what is left.
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.flush)
        self._writer.shutdown(wait=True)
        self.store.close()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._stopped.set)
        await self.start()
        log.info(
            "started",
            agents=len(self.config.agents),
            registrations=self.store.count(),
            public_url=self.config.server.public_url,
        )
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (thread-unsafe; call on the loop)."""
        self._stopped.set()
