"""The calls API on the public HTTP site, behind the dashboard login (docs/records.md, "API").

``GET /api/calls`` (list, newest first, filters and text search), ``GET /api/calls/{id}`` (the
record with its events and its latency summary), ``GET /api/calls/{id}/recording`` (the audio,
with HTTP ranges so a browser's ``<audio>`` can seek), ``GET /api/calls/{id}/export.jsonl`` and
``DELETE /api/calls/{id}`` (admin).

Who sees what: the session is the dashboard's (the gate's cookie and same-origin rules, not a
copy). ``admin`` and ``workspace_admin`` see every agent's calls (they edit the configuration,
``listens.roles`` included), also those of agents since removed; every other role sees the
calls of the agents whose ``listens.roles`` holds it, the roles that already see those agents'
live transcripts (:func:`visible_agents`). A call of an agent the user cannot see answers 404,
exactly like a call that does not exist, so its id leaks nothing. No session: 401. Only
``admin`` deletes (403 for the others, before the id is even looked up, and a delete must be
same-origin).

Every store read runs in a thread (:class:`~sipserver.records.store.RecordStore` reads block).
The recording is served only from the record's own file, and only when that file (symlinks
resolved) lies under ``<data_dir>/recordings/``: a tampered row cannot make the server read
anything else. The server's path of the file is not in the answers (``recording.url`` is).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from sipserver.config import Config
from sipserver.observability import get_logger
from sipserver.pipeline.call_record import CallRecord
from sipserver.records.store import RecordStore

__all__ = [
    "ALL_CALLS_ROLES",
    "MAX_LIMIT",
    "MAX_QUERY",
    "RECORDINGS_DIR",
    "CallsApi",
    "percentile",
    "recording_file",
    "visible_agents",
]

log = get_logger(__name__)

ALL_CALLS_ROLES: Final = frozenset({"admin", "workspace_admin"})
"""Roles that see every agent's calls."""
DELETE_ROLES: Final = frozenset({"admin"})
"""Roles that delete a call."""
MAX_LIMIT: Final = 200
"""Most calls per page."""
DEFAULT_LIMIT: Final = 50
MAX_QUERY: Final = 200
"""Most characters of a text search (``q``)."""
_MAX_PARAM: Final = 200
RECORDINGS_DIR: Final = "recordings"
"""Recordings live under ``<data_dir>/recordings/`` (and nowhere else)."""
AGENT_WINDOW: Final = 24 * 3600.0
"""Seconds of an agent's history in a call's latency summary."""
_ID: Final = r"[A-Za-z0-9_.-]{1,100}"
_EPOCH: Final = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


class Who(Protocol):
    """A logged-in user (the dashboard's ``Login``)."""

    @property
    def name(self) -> str:
        """Login name."""
        ...

    @property
    def role(self) -> str:
        """Dashboard role."""
        ...


class SessionGate(Protocol):
    """The dashboard's session and CSRF rules (:class:`sipserver.listens.dashboard.Dashboard`)."""

    def login_of(self, request: web.Request) -> Who | None:
        """The request's login, or None."""
        ...

    def same_origin(self, request: web.Request) -> bool:
        """The request comes from this server's pages (or no browser at all)."""
        ...


def visible_agents(config: Config, role: str) -> frozenset[str] | None:
    """The agents whose calls ``role`` sees: None for every agent (:data:`ALL_CALLS_ROLES`),
    else the configured agents whose ``listens.roles`` holds the role."""
    if role in ALL_CALLS_ROLES:
        return None
    return frozenset(a.slug for a in config.agents if role in a.listens.roles)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` (0-1) percentile of ``values`` by linear interpolation between the
    closest ranks (numpy's default); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def recording_file(record: CallRecord, data_dir: str | os.PathLike[str]) -> Path | None:
    """The record's recording file, symlinks resolved, if it is a regular file under
    ``<data_dir>/recordings/``; None otherwise (no recording, missing, or outside). Blocking
    (it asks the file system): call it in a thread."""
    if record.recording is None or not record.recording.path:
        return None
    root = (Path(data_dir) / RECORDINGS_DIR).resolve()
    try:
        path = Path(record.recording.path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    if not path.is_relative_to(root) or path == root or not path.is_file():
        log.warning("records_recording_outside", record=record.id, path=str(path))
        return None
    return path


def _summary(values: Sequence[float]) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "p50": rounded(percentile(values, 0.5)),
        "p95": rounded(percentile(values, 0.95)),
        "turns": len(values),
    }


class CallsApi:
    """The handlers of the calls API.

    Args:
        gate: The dashboard's login and same-origin check.
        config: The configuration in force (agents' roles, ``server.data_dir``).
        store: The record store, or None while there is none (``server.records.store: none``,
            or not opened yet): the API then answers 503.
        wall_clock: Epoch seconds (the agent's last 24 h).
        webhook_status: the record's webhook delivery status per kind (the ``webhooks`` key
            of a record; None: the record's stored one).
        on_deleted: awaited with the id of a deleted record (its webhook deliveries go too).
        in_progress: whether the record's call is still going on (its record open in the
            book): such a record is not deleted (409), or its last events would write it again.
    """

    def __init__(
        self,
        *,
        gate: SessionGate,
        config: Callable[[], Config],
        store: Callable[[], RecordStore | None],
        wall_clock: Callable[[], float],
        webhook_status: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
        on_deleted: Callable[[list[str]], Awaitable[None]] | None = None,
        in_progress: Callable[[str], bool] | None = None,
    ) -> None:
        self.gate = gate
        self._config = config
        self._store = store
        self._wall_clock = wall_clock
        self._webhook_status = webhook_status
        self._on_deleted = on_deleted
        self._in_progress = in_progress

    def add_routes(self, app: web.Application) -> None:
        """Register the API on the public site, after the console's (its
        ``GET /api/calls/active`` comes first)."""
        r = app.router
        r.add_get("/api/calls", self.list_calls)
        r.add_get(f"/api/calls/{{id:{_ID}}}", self.get_call)
        r.add_get(f"/api/calls/{{id:{_ID}}}/recording", self.recording)
        r.add_get(f"/api/calls/{{id:{_ID}}}/export.jsonl", self.export)
        r.add_delete(f"/api/calls/{{id:{_ID}}}", self.delete_call)

    # ------------------------------------------------------------------------ access

    def _login(self, request: web.Request) -> Who:
        login = self.gate.login_of(request)
        if login is None:
            raise _error(401, "login required")
        return login

    def _records(self) -> RecordStore:
        store = self._store()
        if store is None:
            raise _error(503, "call records are not kept (server.records.store: none)")
        return store

    async def _visible_record(self, request: web.Request, login: Who) -> CallRecord:
        """The record of the URL's id with its events; 404 when there is none or the user
        may not see its agent (the same answer, so an id says nothing)."""
        store = self._records()
        record = await asyncio.to_thread(store.get, request.match_info["id"])
        scope = visible_agents(self._config(), login.role)
        if record is None or (scope is not None and record.agent not in scope):
            raise _error(404, "no such call")
        return record

    # ------------------------------------------------------------------------- reads

    async def list_calls(self, request: web.Request) -> web.Response:
        """``?agent=&from=&to=&q=&limit=&cursor=``: calls newest first, without events;
        ``cursor`` in the answer (null on the last page) fetches the next page."""
        login = self._login(request)
        query = request.query
        for name in ("agent", "from", "to", "cursor", "limit"):
            if len(query.get(name, "")) > _MAX_PARAM:
                raise _bad(name, f"longer than {_MAX_PARAM} characters")
        since = _time_param(query, "from")
        until = _time_param(query, "to")
        if since is not None and until is not None and since > until:
            raise _bad("from", "is after 'to'")
        text = query.get("q", "")
        if len(text) > MAX_QUERY:
            raise _bad("q", f"longer than {MAX_QUERY} characters")
        limit = _limit_param(query.get("limit"))
        agents: Collection[str] | None = visible_agents(self._config(), login.role)
        agent = query.get("agent", "")
        if agent:
            agents = {agent} if agents is None or agent in agents else set()
        store = self._records()
        try:
            page = await asyncio.to_thread(
                store.search,
                agents=agents,
                since=since,
                until=until,
                text=text or None,
                limit=limit,
                cursor=query.get("cursor") or None,
            )
        except ValueError as exc:
            raise _bad("cursor", str(exc)) from exc
        calls = [_public(r.to_json(events=False)) for r in page.records]
        return _json({"calls": calls, "cursor": page.cursor})

    async def get_call(self, request: web.Request) -> web.Response:
        """The record with its events and ``latency``: voice-to-voice p50/p95 (ms) of the
        call's turns and of the agent's turns in the last 24 h."""
        login = self._login(request)
        record = await self._visible_record(request, login)
        store = self._records()
        since = self._wall_clock() - AGENT_WINDOW
        agent_turns = await asyncio.to_thread(store.turn_latencies, record.agent, since)
        if self._webhook_status is not None:  # the sender's live status over the stored one
            live = await self._webhook_status(record.id)
            record.webhook_status = {**record.webhook_status, **live}
        body = _public(record.to_json())
        body["latency"] = {
            "call": _summary(record.voice_to_voice()),
            "agent_24h": _summary(agent_turns),
        }
        return _json(body)

    async def recording(self, request: web.Request) -> web.StreamResponse:
        """The recording file (``Content-Type`` of its format); ``Range`` requests get 206
        with ``Content-Range``, an unsatisfiable range 416 (aiohttp's FileResponse, which
        reads the file off the event loop)."""
        login = self._login(request)
        record = await self._visible_record(request, login)
        if record.recording is None:
            raise _error(404, "this call has no recording")
        data_dir = self._config().server.data_dir
        path = await asyncio.to_thread(recording_file, record, data_dir)
        if path is None:
            raise _error(404, "the recording file is missing")
        suffix = path.suffix or (".ogg" if record.recording.format == "opus" else ".wav")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": record.recording.media_type,
                "Content-Disposition": f'inline; filename="call-{record.id}{suffix}"',
                "Cache-Control": "private, no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def export(self, request: web.Request) -> web.Response:
        """JSON Lines: the record without its events, then one line per event, in order."""
        login = self._login(request)
        record = await self._visible_record(request, login)

        def render() -> bytes:
            head = _public(record.to_json(events=False))
            lines = [json.dumps(head, ensure_ascii=False)]
            lines.extend(json.dumps(e.to_json(), ensure_ascii=False) for e in record.events)
            return ("\n".join(lines) + "\n").encode()

        body = await asyncio.to_thread(render)
        return web.Response(
            body=body,
            content_type="application/x-ndjson",
            charset="utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="call-{record.id}.jsonl"',
                "Cache-Control": "no-store",
            },
        )

    # ------------------------------------------------------------------------ writes

    async def delete_call(self, request: web.Request) -> web.Response:
        """Delete the record, its events and its recording file (admin, same-origin)."""
        login = self._login(request)
        if login.role not in DELETE_ROLES:
            log.info("records_forbidden", user=login.name, role=login.role, path=request.path)
            raise _error(403, f"only an admin deletes calls; the role {login.role} may not")
        if not self.gate.same_origin(request):
            raise _error(403, "cross-site request refused")
        store = self._records()
        record_id = request.match_info["id"]
        if self._in_progress is not None and self._in_progress(record_id):
            raise _error(409, "the call is in progress: delete its record after it ends")
        data_dir = self._config().server.data_dir

        def delete() -> tuple[CallRecord | None, bool]:
            record = store.get(record_id)
            if record is None:
                return None, False
            path = recording_file(record, data_dir)
            store.delete(record_id)
            if path is None:
                return record, False
            try:
                path.unlink()
            except FileNotFoundError:
                return record, False
            return record, True

        record, file_deleted = await asyncio.to_thread(delete)
        if record is None:
            raise _error(404, "no such call")
        if self._on_deleted is not None:
            await self._on_deleted([record_id])
        log.info(
            "records_deleted",
            record=record_id,
            agent=record.agent,
            user=login.name,
            recording=file_deleted,
        )
        return _json({"deleted": record_id, "recording_deleted": file_deleted})


# ---------------------------------------------------------------------------- helpers


def _public(body: dict[str, Any]) -> dict[str, Any]:
    """The API's form of a record: the recording's URL in place of the server's file path."""
    recording = body.get("recording")
    if isinstance(recording, dict):
        recording = {k: v for k, v in recording.items() if k != "path"}
        recording["url"] = f"/api/calls/{body['id']}/recording"
        body["recording"] = recording
    return body


def _time_param(query: Any, name: str) -> float | None:
    """``from``/``to``: epoch seconds or ISO-8601 (no zone: UTC)."""
    text = str(query.get(name, "")).strip()
    if not text:
        return None
    if _EPOCH.fullmatch(text):
        return float(text)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(name, "must be ISO-8601 (2026-12-06T10:00:00Z) or epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _limit_param(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise _bad("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _json(data: Any) -> web.Response:
    return web.json_response(data, headers={"Cache-Control": "no-store"})


_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    503: web.HTTPServiceUnavailable,
}


def _error(status: int, message: str, **extra: Any) -> web.HTTPException:
    body = json.dumps({"error": message, **extra})
    return _ERRORS[status](text=body, content_type="application/json")


def _bad(parameter: str, problem: str) -> web.HTTPException:
    return _error(400, f"{parameter}: {problem}", parameter=parameter)
