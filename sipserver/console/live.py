"""The console's live views (docs/console.md, "Live"): the call workers' load and one page.

- ``GET /api/workers``: the media/call workers: id, engine, pid, up, ready, calls held,
  capacity, and the counters the worker last sent in STATS (frames, late frames, media clock
  ticks and late ticks, RTP received/lost/late, concealed frames) plus the CPU time the
  process has used (read from ``/proc``, Linux; null elsewhere). No new worker protocol: it
  is the server's ``media_workers`` status (``GET /status``) in the console's shape.
- ``GET /dashboard/live``: active calls per agent, SIP registrations and the call workers,
  refreshed every few seconds by ``live.js`` from ``/api/calls/active``,
  ``/api/registrations`` and ``/api/workers``.

Roles are the other GETs' (:data:`~sipserver.console.api.READ_ROLES`): ``admin``,
``workspace_admin`` and ``supervisor`` read; other roles 403; no session 401 (the page: the
login form).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from sipserver.console.api import READ_ROLES, SessionGate, Who
from sipserver.console.pages import PAGE_HEADERS, asset_response, login_or_redirect, render
from sipserver.console.users import admin_links
from sipserver.observability import get_logger

__all__ = ["COUNTERS", "LiveViews", "worker_rows"]

log = get_logger(__name__)

COUNTERS: Final = (
    "frames",
    "late_frames",
    "ticks",
    "late_ticks",
    "rtp_received",
    "rtp_lost",
    "rtp_late",
    "concealed_frames",
)
"""STATS keys ``/api/workers`` passes on (docs/framelink.md, "STATS counters"); a pjsua2
worker's ``tx_frames``/``tx_underflow`` are given as ``frames``/``late_frames``."""
_PJSUA2_NAMES: Final = {"frames": "tx_frames", "late_frames": "tx_underflow"}
_ASSETS: Final = {"live.js": "text/javascript", "live.css": "text/css"}
_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` has used (``/proc/<pid>/stat``), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except (OSError, ValueError):
        return None
    # proc(5): the fields after the command's ")": state is field 3, utime 14, stime 15.
    fields = text.rpartition(")")[2].split()
    try:
        return round((int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND, 2)
    except (IndexError, ValueError):
        return None


def worker_rows(
    status: Sequence[Mapping[str, Any]],
    engine: str,
    cpu: Callable[[int | None], float | None] = cpu_seconds,
) -> list[dict[str, Any]]:
    """The workers of ``MediaWorkers.status()`` as ``/api/workers`` gives them.

    Args:
        status: One mapping per worker (``id``, ``pid``, ``up``, ``kind``, ``ready``,
            ``capacity``, ``calls``, ``stats``).
        engine: ``server.media.engine`` (a worker that has not said HELLO has no kind yet).
        cpu: CPU seconds of a pid.
    """
    rows = []
    for worker in status:
        kind = worker.get("kind") or engine
        stats = worker.get("stats") or {}
        counters: dict[str, int | float | None] = {}
        for key in COUNTERS:
            source = _PJSUA2_NAMES.get(key, key) if kind == "pjsua2" else key
            value = stats.get(source)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            counters[key] = value if ok else None
        capacity = worker.get("capacity") or None  # 0: a pjsua2 worker, no fixed capacity
        rows.append(
            {
                "id": worker.get("id"),
                "engine": kind,
                "pid": worker.get("pid"),
                "up": bool(worker.get("up")),
                "ready": bool(worker.get("ready")),
                "calls": worker.get("calls", 0),
                "capacity": capacity,
                "cpu_seconds": cpu(worker.get("pid")),
                "stats_received": bool(stats),
                "counters": counters,
            }
        )
    return rows


class LiveViews:
    """``GET /api/workers`` and the live page.

    Args:
        gate: The dashboard's login.
        workers: The media workers' status (``MediaWorkers.status``).
        engine: ``server.media.engine`` in force.
    """

    def __init__(
        self,
        *,
        gate: SessionGate,
        workers: Callable[[], list[dict[str, Any]]],
        engine: Callable[[], str],
    ) -> None:
        self.gate = gate
        self._workers = workers
        self._engine = engine

    def add_routes(self, app: web.Application) -> None:
        """Register the API route, the page and its script."""
        r = app.router
        r.add_get("/api/workers", self.workers)
        r.add_get("/dashboard/live", self.page)
        r.add_get("/dashboard/live/{file}", self.asset)

    def _login(self, request: web.Request, *, api: bool) -> Who:
        if not api:
            login = login_or_redirect(self.gate, request)
        elif (found := self.gate.login_of(request)) is not None:
            login = found
        else:
            raise web.HTTPUnauthorized(
                text='{"error": "login required"}', content_type="application/json"
            )
        if login.role not in READ_ROLES:
            log.info("console_forbidden", user=login.name, role=login.role, path=request.path)
            message = f"the role {login.role} may not see the live views"
            if api:
                raise web.HTTPForbidden(
                    text=json.dumps({"error": message}), content_type="application/json"
                )
            raise web.HTTPForbidden(text=message, headers=PAGE_HEADERS)
        return login

    async def workers(self, request: web.Request) -> web.Response:
        """The call workers and their load."""
        self._login(request, api=True)
        rows = worker_rows(self._workers(), self._engine())
        return web.json_response(
            {
                "engine": self._engine(),
                "workers": rows,
                "calls": sum(r["calls"] for r in rows),
                "capacity": sum(r["capacity"] or 0 for r in rows),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def page(self, request: web.Request) -> web.Response:
        """The live page's shell (its script fills the three panels)."""
        login = self._login(request, api=False)
        return render(
            "live.html",
            {
                "USER": html.escape(login.name),
                "ROLE": html.escape(login.role),
                "ADMIN_LINKS": admin_links(login.role),
            },
        )

    async def asset(self, request: web.Request) -> web.Response:
        """The page's script and stylesheet."""
        return asset_response(request.match_info["file"], _ASSETS)
