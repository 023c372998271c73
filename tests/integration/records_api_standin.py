"""A stand-in for the calls API (branch ``api``) in front of a real server, for the page tests
while that API is not in the server yet.

It serves the contract the pages are written against (docs/records.md, "API") from the
server's own ``records.db`` and passes every other request (login, pages, scripts) to the
server unchanged, ``Host`` and ``Origin`` included, so the server's session and same-origin
rules apply as they do without it:

- ``GET /api/calls?agent=&from=&to=&q=&limit=&cursor=`` -> ``{"calls": [...], "cursor"}``;
- ``GET /api/calls/{id}`` -> the record with its events and ``summary`` (``call`` and
  ``agent_24h``: ``p50``/``p95`` of voice-to-voice, ms);
- ``GET /api/calls/{id}/recording`` -> the file (aiohttp's FileResponse: HTTP ranges);
- ``DELETE /api/calls/{id}`` -> the record and its recording deleted.

It checks only that a session cookie is present (the server's scope rules are the API's to
test). With the real API in the server, :func:`needs_standin` is false and tests talk to the
server directly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from sipserver.records.store import RecordStore

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


async def needs_standin(base: str) -> bool:
    """The server has no ``GET /api/calls`` (404 rather than the API's 401 without a login)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/calls") as resp:
        return resp.status == 404


def _percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@asynccontextmanager
async def api_standin(base: str, records_db: Path) -> AsyncIterator[str]:
    """Serve the stand-in on a free loopback port in front of ``base``; yields its URL."""
    store = RecordStore(records_db)
    await asyncio.to_thread(store.open)
    http = aiohttp.ClientSession(auto_decompress=True)

    def require_login(request: web.Request) -> None:
        if not request.cookies:
            raise web.HTTPUnauthorized(text='{"error": "login required"}')

    async def list_calls(request: web.Request) -> web.Response:
        require_login(request)
        q = request.query
        page = await asyncio.to_thread(
            store.search,
            agents=[q["agent"]] if q.get("agent") else None,
            since=float(q["from"]) if q.get("from") else None,
            until=float(q["to"]) if q.get("to") else None,
            text=q.get("q") or None,
            limit=int(q.get("limit", "50")),
            cursor=q.get("cursor") or None,
        )
        calls = [r.to_json(events=False) for r in page.records]
        return web.json_response({"calls": calls, "cursor": page.cursor})

    async def one_call(request: web.Request) -> web.Response:
        require_login(request)
        record = await asyncio.to_thread(store.get, request.match_info["id"])
        if record is None:
            raise web.HTTPNotFound(text='{"error": "no such call"}')
        day = await asyncio.to_thread(store.turn_latencies, record.agent, time.time() - 86400)
        own = record.voice_to_voice()
        body = record.to_json()
        body["summary"] = {
            "call": {"p50": _percentile(own, 50), "p95": _percentile(own, 95)},
            "agent_24h": {"p50": _percentile(day, 50), "p95": _percentile(day, 95)},
        }
        return web.json_response(body)

    async def recording(request: web.Request) -> web.StreamResponse:
        require_login(request)
        record = await asyncio.to_thread(store.get, request.match_info["id"])
        if record is None or record.recording is None:
            raise web.HTTPNotFound()
        return web.FileResponse(
            record.recording.path, headers={"Content-Type": record.recording.media_type}
        )

    async def delete(request: web.Request) -> web.Response:
        require_login(request)
        record = await asyncio.to_thread(store.delete, request.match_info["id"])
        if record is None:
            raise web.HTTPNotFound(text='{"error": "no such call"}')
        if record.recording is not None:
            Path(record.recording.path).unlink(missing_ok=True)
        return web.json_response({"deleted": record.id})

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with http.request(
            request.method,
            f"{base}{request.path_qs}",
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            response = web.Response(status=upstream.status, body=body)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            return response

    app = web.Application()
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/active", forward)  # the console's, not a record id
    app.router.add_get("/api/calls/{id}/recording", recording)
    app.router.add_get("/api/calls/{id}", one_call)
    app.router.add_delete("/api/calls/{id}", delete)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await http.close()
        await asyncio.to_thread(store.close)
