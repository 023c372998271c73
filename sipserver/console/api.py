"""The console's JSON API on the public HTTP site, behind the dashboard login (docs/console.md).

``GET /api/agents``, ``GET|PUT|DELETE /api/agents/{slug}``, ``POST /api/secrets/generate``,
``GET /api/models``, ``GET|PUT|DELETE /api/models/{name}``, ``GET /api/credentials``,
``PUT|DELETE /api/credentials/{name}``, ``GET /api/registrations``, ``GET /api/calls/active``,
``GET /api/audit``.

The session is the dashboard's (:class:`SessionGate`: its cookie and its same-origin check, not
a copy of them). Roles: ``admin`` and ``workspace_admin`` write, ``supervisor`` reads (403 on a
write, with the reason), every other role gets 403, no session 401; the audit log is for
``admin``. A write must be same-origin (the dashboard's CSRF rule) and a PUT's body JSON. A
save goes through :class:`~sipserver.console.document.ConfigDocument` (422 with the key path of
each problem, 409 when the file changed, 403 on the embedded default), is recorded in the audit
log, and the server then reloads the new configuration: the answer carries what was applied
and what needs a restart. Secrets never leave in an answer except in the URLs a writer gets
back from a save of the agent (they end with its websocket secret), nor in a log line.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from aiohttp import web

from sipserver.admission import CallLedger
from sipserver.config import GENERATED_SECRET_LENGTH, Agent, Config, generate_secret
from sipserver.console.audit import AuditLog
from sipserver.console.document import (
    ConfigDocument,
    Conflict,
    DocumentError,
    Invalid,
    NotFound,
    ReadOnly,
    Saved,
)
from sipserver.console.masking import MASK, Kind
from sipserver.observability import get_logger
from sipserver.registrar.bindings import BindingStore

__all__ = ["READ_ROLES", "WRITE_ROLES", "ConsoleApi", "SessionGate"]

log = get_logger(__name__)

WRITE_ROLES: Final = frozenset({"admin", "workspace_admin"})
"""Roles that change the configuration."""
READ_ROLES: Final = WRITE_ROLES | {"supervisor"}
"""Roles that see it."""
_MAX_BODY: Final = 1 << 20


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


Reload = Callable[[Config], Awaitable[Mapping[str, Any]]]
"""Applies a saved configuration; returns the reload result (``applied``, ``changed``,
``restart_needed``, ``errors``, ``notes``)."""


class ConsoleApi:
    """The handlers of the console's API.

    Args:
        document: The configuration file.
        audit: Where saves are recorded.
        gate: The dashboard's login and same-origin check.
        config: The configuration in force (URLs, registrations' agents).
        reload: The server's reload, given the saved configuration.
        bindings: The registrar's store (it is opened when the server starts).
        ledger: Calls in progress per agent.
        wall_clock: Epoch seconds (the bindings' expiry clock).
    """

    def __init__(
        self,
        *,
        document: ConfigDocument,
        audit: AuditLog,
        gate: SessionGate,
        config: Callable[[], Config],
        reload: Reload,
        bindings: Callable[[], BindingStore],
        ledger: CallLedger,
        wall_clock: Callable[[], float],
    ) -> None:
        self.document = document
        self.audit = audit
        self.gate = gate
        self._config = config
        self._reload = reload
        self._bindings = bindings
        self.ledger = ledger
        self._wall_clock = wall_clock
        self._saving = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        """Register the API on the public site."""
        r = app.router
        r.add_get("/api/agents", self.list_agents)
        r.add_get("/api/agents/{name}", self.get_agent)
        r.add_put("/api/agents/{name}", self.put_agent)
        r.add_delete("/api/agents/{name}", self.delete_agent)
        r.add_post("/api/secrets/generate", self.generate)
        r.add_get("/api/models", self.list_models)
        r.add_get("/api/models/{name}", self.get_model)
        r.add_put("/api/models/{name}", self.put_model)
        r.add_delete("/api/models/{name}", self.delete_model)
        r.add_get("/api/credentials", self.list_credentials)
        r.add_put("/api/credentials/{name}", self.put_credential)
        r.add_delete("/api/credentials/{name}", self.delete_credential)
        r.add_get("/api/registrations", self.registrations)
        r.add_get("/api/calls/active", self.active_calls)
        r.add_get("/api/audit", self.audit_records)

    # ------------------------------------------------------------------------ access

    def guard(self, request: web.Request, *, write: bool = False, roles: Any = None) -> Who:
        login = self.gate.login_of(request)
        if login is None:
            raise http_error(401, "login required")
        allowed = roles or (WRITE_ROLES if write else READ_ROLES)
        if login.role not in allowed:
            if write and login.role in READ_ROLES:
                reason = f"the role {login.role} may only read the configuration"
            else:
                reason = f"the role {login.role} may not use this"
            log.info("console_forbidden", user=login.name, role=login.role, path=request.path)
            raise http_error(403, reason)
        if write and not self.gate.same_origin(request):
            raise http_error(403, "cross-site request refused")
        return login

    # ------------------------------------------------------------------------- reads

    async def fresh(self) -> str:
        try:
            return await asyncio.to_thread(self.document.refresh)
        except DocumentError as exc:
            raise http_error(503, str(exc)) from exc

    async def list_agents(self, request: web.Request) -> web.Response:
        """The agents: summaries (ways in, numbers, URLs with the secret masked)."""
        self.guard(request)
        version = await self.fresh()
        config = self._config()
        agents = []
        for slug in await asyncio.to_thread(self.document.names, "agent"):
            view = await asyncio.to_thread(self.document.get, "agent", slug)
            running = config.agent_by_slug(slug)
            agents.append(_agent_summary(slug, view, running, config.server.public_url))
        return self.versioned_json({"agents": agents}, version)

    async def get_agent(self, request: web.Request) -> web.Response:
        """One agent's mapping, as in the file, secrets masked."""
        return await self._get(request, "agent")

    async def get_model(self, request: web.Request) -> web.Response:
        """One model's mapping, secrets masked."""
        return await self._get(request, "model")

    async def _get(self, request: web.Request, kind: Kind) -> web.Response:
        self.guard(request)
        version = await self.fresh()
        try:
            view = await asyncio.to_thread(self.document.get, kind, request.match_info["name"])
        except NotFound as exc:
            raise http_error(404, str(exc)) from exc
        return self.versioned_json(view, version)

    async def list_models(self, request: web.Request) -> web.Response:
        """The models: name, type, credential and the agents that use each."""
        self.guard(request)
        version = await self.fresh()
        agents = await self._views("agent")
        models = []
        for name, view in (await self._views("model")).items():
            models.append(
                {
                    "name": name,
                    "type": view.get("type", "custom") if isinstance(view, dict) else None,
                    "credential": view.get("credential") if isinstance(view, dict) else None,
                    "used_by": [
                        slug
                        for slug, agent in agents.items()
                        if isinstance(agent, dict)
                        and isinstance(agent.get("realtime"), dict)
                        and agent["realtime"].get("model") == name
                    ],
                }
            )
        return self.versioned_json({"models": models}, version)

    async def list_credentials(self, request: web.Request) -> web.Response:
        """The credentials: names, their keys (never a value) and the models that use each."""
        self.guard(request)
        version = await self.fresh()
        models = await self._views("model")
        credentials = []
        for name, view in (await self._views("credential")).items():
            credentials.append(
                {
                    "name": name,
                    "keys": sorted(view) if isinstance(view, dict) else [],
                    "used_by": sorted(m for m, v in models.items() if _uses(v, name)),
                }
            )
        return self.versioned_json({"credentials": credentials}, version)

    async def _views(self, kind: Kind) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            return {n: self.document.get(kind, n) for n in self.document.names(kind)}

        return await asyncio.to_thread(read)

    async def registrations(self, request: web.Request) -> web.Response:
        """The SIP registrations: AOR, contact, source, agent, expiry."""
        self.guard(request)
        now = self._wall_clock()
        rows = [
            {
                "aor": b.aor,
                "contact": b.contact,
                "source": b.source,
                "agent": b.agent,
                "user_agent": b.user_agent,
                "expires_in": b.expires_in(now),
                "expires_at": _iso(b.expires_at),
                "registered_at": _iso(b.registered_at),
            }
            for b in self._bindings().all()
            if b.expires_at > now
        ]
        rows.sort(key=lambda row: (row["aor"], row["contact"]))
        return web.json_response({"registrations": rows})

    async def active_calls(self, request: web.Request) -> web.Response:
        """Calls in progress, per agent and in total, with their limits; each agent's calls
        with their id (a SIP call's Call-ID, else ``<ingress>-<n>``), door and start."""
        self.guard(request)
        ledger = self.ledger
        return web.json_response(
            {
                "total": ledger.total,
                "max_calls": ledger.max_calls,
                "by_ingress": ledger.by_ingress(),
                "agents": [
                    {
                        "agent": agent.slug,
                        "calls": ledger.in_progress(agent.slug),
                        "limit": ledger.limit_of(agent.slug),
                        "in_progress": [
                            {"id": r.label, "ingress": r.ingress, "started_at": _iso(r.started_at)}
                            for r in ledger.calls(agent.slug)
                        ],
                    }
                    for agent in self._config().agents
                ],
            }
        )

    async def audit_records(self, request: web.Request) -> web.Response:
        """The last saves (``?limit=``, default 100), oldest first; admins only."""
        self.guard(request, roles=frozenset({"admin"}))
        text = request.query.get("limit", "100")
        limit = min(int(text), 1000) if text.isdigit() else 100
        return web.json_response({"records": await asyncio.to_thread(self.audit.read, limit)})

    # ------------------------------------------------------------------------ writes

    async def generate(self, request: web.Request) -> web.Response:
        """A new random secret (the generator of ``sipserver gen-secret``); nothing is saved."""
        self.guard(request, write=True)
        length = GENERATED_SECRET_LENGTH
        if request.can_read_body:
            body = await json_body(request)
            wanted = body.get("length", length) if isinstance(body, dict) else length
            if not isinstance(wanted, int) or not GENERATED_SECRET_LENGTH <= wanted <= 256:
                message = f"must be a whole number from {GENERATED_SECRET_LENGTH} to 256"
                return invalid_input([("length", message)])
            length = wanted
        return web.json_response({"secret": generate_secret(length)})

    async def put_agent(self, request: web.Request) -> web.Response:
        """Create or replace an agent; the answer carries its URLs."""
        return await self._put(request, "agent")

    async def put_model(self, request: web.Request) -> web.Response:
        """Create or replace a model."""
        return await self._put(request, "model")

    async def put_credential(self, request: web.Request) -> web.Response:
        """Create or replace a credential (values are write-only)."""
        return await self._put(request, "credential")

    async def delete_agent(self, request: web.Request) -> web.Response:
        """Remove an agent."""
        return await self._delete(request, "agent")

    async def delete_model(self, request: web.Request) -> web.Response:
        """Remove a model (422 while an agent uses it)."""
        return await self._delete(request, "model")

    async def delete_credential(self, request: web.Request) -> web.Response:
        """Remove a credential (422 while a model uses it)."""
        return await self._delete(request, "credential")

    async def _put(self, request: web.Request, kind: Kind) -> web.Response:
        login = self.guard(request, write=True)
        body = await json_body(request)
        name = request.match_info["name"]
        expected = if_match(request)
        saved, reload = await self.save(login, kind, name, lambda: self.document.put(
            kind, name, body, expected=expected
        ))  # fmt: skip
        answer: dict[str, Any] = {
            kind: await asyncio.to_thread(self.document.get, kind, name),
            "version": saved.fingerprint,
        }
        if kind == "agent":
            agent = saved.config.agent_by_slug(name)
            answer["urls"] = agent.urls(saved.config.server.public_url) if agent else {}
        answer["reload"] = reload
        return self.versioned_json(answer, saved.fingerprint)

    async def _delete(self, request: web.Request, kind: Kind) -> web.Response:
        login = self.guard(request, write=True)
        name, expected = request.match_info["name"], if_match(request)
        saved, reload = await self.save(
            login, kind, name, lambda: self.document.delete(kind, name, expected=expected)
        )
        answer = {"deleted": name, "version": saved.fingerprint, "reload": reload}
        return self.versioned_json(answer, saved.fingerprint)

    async def save(
        self, login: Who, kind: Kind, name: str, change: Callable[[], Saved]
    ) -> tuple[Saved, dict[str, Any]]:
        """Save, record and reload, one save at a time (the reloads follow the saves' order:
        the server never ends up running an older save than the file holds)."""
        async with self._saving:
            try:
                saved = await asyncio.to_thread(change)
            except Invalid as exc:
                log.info("console_invalid", user=login.name, kind=kind, name=name)
                raise invalid_input(exc.errors) from exc
            except Conflict as exc:
                raise http_error(409, str(exc)) from exc
            except ReadOnly as exc:
                raise http_error(403, str(exc), read_only=True) from exc
            except NotFound as exc:
                raise http_error(404, str(exc)) from exc
            except DocumentError as exc:
                raise http_error(503, str(exc)) from exc
            try:
                await asyncio.to_thread(
                    self.audit.append,
                    user=login.name,
                    role=login.role,
                    kind=kind,
                    name=name,
                    action=saved.action,
                    before=saved.before,
                    after=saved.after,
                )
            except OSError as exc:  # the file is saved already: the server must follow it
                log.error("console_audit_not_written", path=str(self.audit.path), error=str(exc))
            log.info("console_saved", user=login.name, kind=kind, name=name, action=saved.action)
            result = dict(await self._reload(saved.config))
            reload = {k: list(v) if isinstance(v, tuple) else v for k, v in result.items()}
            return saved, reload

    def versioned_json(self, data: Any, version: str) -> web.Response:
        read_only = self.document.read_only_reason
        headers = {"ETag": f'"{version}"', "Cache-Control": "no-store"}
        if read_only is not None:
            headers["X-Console-Read-Only"] = "1"
            if isinstance(data, dict) and ("agents" in data or "models" in data):
                data = {**data, "read_only": read_only}
        return web.json_response(data, headers=headers)


def _agent_summary(slug: str, view: Any, running: Agent | None, public_url: str) -> dict[str, Any]:
    view = view if isinstance(view, dict) else {}

    def enabled(section: str) -> bool:
        part = view.get(section)
        return isinstance(part, dict) and part.get("enabled") is True

    urls: dict[str, str] = {}
    if running is not None:
        secret = running.websocket.secret
        urls = {
            key: url.replace(secret, MASK) if secret else url
            for key, url in running.urls(public_url).items()
        }
    sip, listens = view.get("sip"), view.get("listens")
    return {
        "slug": slug,
        "name": view.get("name") or slug,
        "sip": enabled("sip"),
        "websocket": enabled("websocket"),
        "listens": enabled("listens"),
        "realtime_model": (view.get("realtime") or {}).get("model")
        if isinstance(view.get("realtime"), dict)
        else None,
        "numbers": (sip.get("numbers") or []) if isinstance(sip, dict) else [],
        "listens_numbers": (listens.get("numbers") or []) if isinstance(listens, dict) else [],
        "urls": urls,
        "running": running is not None,
    }


def _uses(model: Any, credential: str) -> bool:
    if not isinstance(model, dict):
        return False
    if model.get("credential") == credential:
        return True
    return any(
        isinstance(model.get(stage), dict) and model[stage].get("credential") == credential
        for stage in ("stt", "llm", "tts")
    )


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


def if_match(request: web.Request) -> str | None:
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    return value.strip().removeprefix("W/").strip('"')


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise http_error(415, "the body must be JSON (Content-Type: application/json)")
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise http_error(413, "the body is too large")
    text = await request.text()
    if len(text) > _MAX_BODY:
        raise http_error(413, "the body is too large")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise invalid_input([("", f"the body is not JSON: {exc}")]) from exc


def invalid_input(errors: list[tuple[str, str]]) -> web.HTTPException:
    body = {"errors": [{"loc": loc, "msg": msg} for loc, msg in errors]}
    return web.HTTPUnprocessableEntity(text=json.dumps(body), content_type="application/json")


_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    413: web.HTTPRequestEntityTooLarge,
    415: web.HTTPUnsupportedMediaType,
    503: web.HTTPServiceUnavailable,
}


def http_error(status: int, message: str, **extra: Any) -> web.HTTPException:
    body = json.dumps({"error": message, **extra})
    kind = _ERRORS[status]
    if kind is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            _MAX_BODY, 0, text=body, content_type="application/json"
        )
    return kind(text=body, content_type="application/json")
