"""The dashboard: login with the configured users, the agent list and AI Listens (SSE).

Pages (HTML, served from ``sipserver/listens/static``):

- ``GET /dashboard/login`` and ``POST /dashboard/login`` (form: ``name``, ``password``,
  ``next``), ``POST /dashboard/logout``;
- ``GET /dashboard``: the agents, each card with a menu (Settings: the console's agent page,
  :mod:`sipserver.console.agent_pages`; Calls: the agent's call history,
  :mod:`sipserver.records.pages`); its "AI Listens" entry opens
- ``GET /dashboard/agents/<slug>/listens``: the agent's monitored calls and, for the selected
  call, its transcript and suggestions, live.

API (JSON, or Server-Sent Events): ``GET /api/me``, ``GET /api/listens/<slug>/calls``,
``GET /api/listens/<slug>/events`` (the call list, sent again on each change),
``GET /api/listens/<slug>/calls/<call_id>/events`` (the call's history first, or only what
followed ``Last-Event-ID``, then live items; ``ended`` closes it).

Security: passwords are checked against ``users[].password_hash`` on a thread, in constant time
(an unknown user costs the same as a wrong password), ``server.login_limit.concurrent_checks``
at a time with a bounded queue behind them (503 past it). Every attempt is counted per source
address and per user name *before* its hash is computed (:mod:`sipserver.listens.login_limit`),
so a burst of parallel guesses is refused with 429 from the first one over the limit, without
hashing, and a login from another address still gets a hash slot at once. The session cookie
is random, HttpOnly and SameSite=Strict (Secure behind an https ``public_url``); sessions are
bounded in number and lifetime and are dropped when the user leaves the configuration,
changes role or gets a new password. Login and logout are POST only and refuse a cross-site
``Origin``. Roles: an agent's ``listens.roles`` may see its calls; anyone else gets 403; the API
without a session gets 401 (pages redirect to the login).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlsplit

from aiohttp import web

from sipserver.config import Agent, Config, User
from sipserver.listens.login_limit import LoginLimiter, LoginLimits
from sipserver.listens.monitor import Item, ListensHub, Subscription
from sipserver.listens.passwords import hash_password, verify_password
from sipserver.observability import Metrics, RefusalLog, get_logger

__all__ = ["COOKIE", "Dashboard", "LoginSessions"]

log = get_logger(__name__)

COOKIE: Final = "sipserver_session"
"""Name of the session cookie."""
SESSION_TTL: Final = 12 * 3600.0
"""Seconds a login lasts."""
MAX_SESSIONS: Final = 10_000
"""Logins kept at once (the oldest go first)."""
_HEARTBEAT: Final = 15.0
# The console's roles (sipserver.console.api, a sibling layer): who sees and edits agents.
_CONFIG_WRITERS: Final = frozenset({"admin", "workspace_admin"})
_CONFIG_READERS: Final = _CONFIG_WRITERS | {"supervisor"}
# The console's admin pages (sipserver.console.user_pages), linked for admins.
_ADMIN_LINKS: Final = (
    '<a href="/dashboard/settings/users">Users</a> <a href="/dashboard/settings/audit">Audit</a>'
)
_STATIC: Final = {"dashboard.css": "text/css", "listens.js": "text/javascript"}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True, slots=True)
class Login:
    """A logged-in user."""

    name: str
    role: str
    expires: float
    password_hash: str = field(default="", repr=False)
    """The hash the user logged in with: a new password ends the session."""


class LoginSessions:
    """Session tokens -> logins, bounded in number, expiring after ``ttl`` seconds."""

    def __init__(self, *, ttl: float = SESSION_TTL, limit: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._by_token: OrderedDict[str, Login] = OrderedDict()

    def create(self, user: User, now: float) -> str:
        """A new session for ``user``; returns its token."""
        token = secrets.token_urlsafe(32)
        self._by_token[token] = Login(user.name, user.role, now + self.ttl, user.password_hash)
        while len(self._by_token) > self.limit:
            self._by_token.popitem(last=False)
        return token

    def get(self, token: str, config: Config, now: float) -> Login | None:
        """The login of ``token`` if it is valid and its user still exists with that role."""
        login = self._by_token.get(token)
        if login is None:
            return None
        user = next((u for u in config.users if u.name == login.name), None)
        if (
            login.expires <= now
            or user is None
            or user.role != login.role
            or user.password_hash != login.password_hash
        ):
            del self._by_token[token]
            return None
        return login

    def drop(self, token: str) -> None:
        """Log out."""
        self._by_token.pop(token, None)

    def __len__(self) -> int:
        return len(self._by_token)


@functools.cache
def _static(name: str) -> str:
    """A file of ``sipserver/listens/static``, read once (a refusal flood must not read the
    error page from disk per request)."""
    return (resources.files("sipserver.listens") / "static" / name).read_text(encoding="utf-8")


def _page(template: str, **values: str) -> web.Response:
    body = _static(template)
    for key, value in values.items():
        body = body.replace("{{" + key + "}}", value)
    return web.Response(text=body, content_type="text/html", headers=_page_headers())


def _page_headers() -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": _CSP,
        # not no-referrer: with it, browsers send "Origin: null" on form posts
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
    }


def _error(
    status: int, message: str, api: bool, headers: dict[str, str] | None = None
) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        429: web.HTTPTooManyRequests,
        503: web.HTTPServiceUnavailable,
    }
    if api:
        body = json.dumps({"error": message})
        return kinds[status](text=body, content_type="application/json", headers=headers)
    return kinds[status](
        text=_static("error.html")
        .replace("{{STATUS}}", str(status))
        .replace("{{MESSAGE}}", html.escape(message)),
        content_type="text/html",
        headers={**_page_headers(), **(headers or {})},
    )


class Dashboard:
    """The dashboard's routes.

    Args:
        config: Returns the configuration in force (users and agents are read per request).
        hub: The monitored calls.
        metrics: Login counters.
        refusals: Where throttled and busy logins are counted and logged (ingress ``login``).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        hub: ListensHub,
        metrics: Metrics,
        refusals: RefusalLog | None = None,
    ) -> None:
        self._config = config
        self.hub = hub
        self.metrics = metrics
        self.refusals = refusals or RefusalLog(metrics)
        self.sessions = LoginSessions()
        self.limiter = LoginLimiter()
        """Attempts per source and per user name (counted before each hash)."""
        self._checks_allowed = 0
        self._checks: asyncio.Semaphore | None = None
        self._waiting = 0
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()
        self.read_only_banner: Callable[[], str] = lambda: ""
        """HTML of the console's read-only banner for the agent list ("" when the file can be
        saved); the server sets it (``sipserver.console.model_pages.read_only_banner``)."""

    def add_routes(self, app: web.Application) -> None:
        """Register the pages, the API and the static files."""
        r = app.router
        r.add_get("/dashboard", self.agents_page)
        r.add_get("/dashboard/login", self.login_page)
        r.add_post("/dashboard/login", self.login)
        r.add_post("/dashboard/logout", self.logout)
        r.add_get("/dashboard/static/{name}", self.static)
        r.add_get("/dashboard/agents/{slug}/listens", self.listens_page)
        r.add_get("/api/me", self.me)
        r.add_get("/api/listens/{slug}/calls", self.calls)
        r.add_get("/api/listens/{slug}/events", self.calls_events)
        r.add_get("/api/listens/{slug}/calls/{call_id}/events", self.call_events)

    # ----------------------------------------------------------------------- sessions

    def login_of(self, request: web.Request) -> Login | None:
        """The login of the request's session cookie, or None (also used by the console)."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        # Session lifetimes and the login throttle live in memory: the loop's monotonic clock,
        # which a stepped wall clock cannot move (the cookie's Max-Age is relative).
        return self.sessions.get(token, self._config(), asyncio.get_running_loop().time())

    def _require(self, request: web.Request, *, api: bool) -> Login:
        login = self.login_of(request)
        if login is not None:
            return login
        if api:
            raise _error(401, "login required", api=True)
        raise web.HTTPSeeOther(f"/dashboard/login?next={quote(request.path_qs, safe='/')}")

    def _agent_for(self, request: web.Request, login: Login, *, api: bool) -> Agent:
        agent = self._config().agent_by_slug(request.match_info["slug"])
        if agent is None or not agent.listens.enabled:
            raise _error(404, "no such agent with AI Listens", api)
        if login.role not in agent.listens.roles:
            log.info("dashboard_forbidden", user=login.name, role=login.role, agent=agent.slug)
            raise _error(403, f"the role {login.role} may not see this agent's calls", api)
        return agent

    def same_origin(self, request: web.Request) -> bool:
        """CSRF defence for POSTs: a browser's Origin must be this server's."""
        origin = request.headers.get("Origin")
        if origin is None:
            return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
        own = f"{request.scheme}://{request.host}"
        public = self._config().server.public_url.rstrip("/")
        return origin in (own, public)

    # -------------------------------------------------------------------------- login

    async def login_page(self, request: web.Request) -> web.Response:
        """The login form."""
        return self._login_form(_safe_next(request.query.get("next", "")), "")

    def _login_form(self, next_path: str, message: str, status: int = 200) -> web.Response:
        response = _page(
            "login.html", NEXT=html.escape(next_path, quote=True), MESSAGE=html.escape(message)
        )
        response.set_status(status)
        return response

    async def login(self, request: web.Request) -> web.Response:
        """Check the form's name and password; on success set the session cookie.

        Order (docs/security.md): same-origin check; the source's allowance, before the body is
        read; the attempt is counted for the source and the user name; a hash slot (bounded
        queue); the scrypt check on a thread; the outcome recorded.
        """
        if not self.same_origin(request):
            self.metrics.dashboard_logins.labels("bad_origin").inc()
            raise _error(403, "cross-site login refused", api=False)
        source = request.remote or "?"
        loop = asyncio.get_running_loop()
        limits = self._config().server.login_limit
        self.limiter.configure(
            LoginLimits(
                max_failures_per_source=limits.max_failures_per_source,
                max_failures_per_user=limits.max_failures_per_user,
                window=limits.window,
            )
        )
        early = self.limiter.check_source(source, now=loop.time())
        if early is not None:
            raise self._throttled(early, source, "")
        form = await request.post()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        next_path = _safe_next(str(form.get("next", "")))
        admitted = self.limiter.admit(source, name[:256], now=loop.time())
        if isinstance(admitted, str):
            raise self._throttled(admitted, source, name)
        checks = self._hash_slots(limits.concurrent_checks)
        if self._waiting >= limits.concurrent_checks + limits.max_waiting:
            self.limiter.abandoned(admitted)
            self.metrics.dashboard_logins.labels("busy").inc()
            self.refusals.refuse("login", "busy", source=source)
            raise _error(503, "too many logins at once; try again", False, {"Retry-After": "2"})
        user = next((u for u in self._config().users if u.name == name), None)
        self._waiting += 1
        try:
            async with checks:
                ok = await asyncio.to_thread(
                    self._check, password[:1024], user.password_hash if user else None
                )
        except BaseException:
            # Cancelled (the client went away, a stop): the hash may be running on its thread
            # all the same, so the attempt stays counted (leaving early buys no free hashes).
            self.limiter.failed(admitted)
            raise
        finally:
            self._waiting -= 1
        if user is None or not ok:
            self.limiter.failed(admitted)
            self.metrics.dashboard_logins.labels("bad_credentials").inc()
            log.info("dashboard_login_failed", user=name[:64], source=source)
            return self._login_form(next_path, "Wrong name or password.", status=401)
        self.limiter.succeeded(admitted)
        now = loop.time()
        token = self.sessions.create(user, now)
        self.metrics.dashboard_logins.labels("ok").inc()
        log.info("dashboard_login", user=user.name, role=user.role, source=source)
        response = _see_other(next_path or "/dashboard")
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(self.sessions.ttl),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._config().server.public_url.startswith("https://"),
        )
        return response

    def _throttled(self, reason: str, source: str, name: str) -> web.HTTPException:
        self.metrics.dashboard_logins.labels("throttled").inc()
        self.refusals.refuse("login", reason, source=source, user=name[:64])
        return _error(429, "too many failed logins; try again later", api=False)

    def _hash_slots(self, allowed: int) -> asyncio.Semaphore:
        """The semaphore of the password checks (a new one when the setting changed: checks
        in progress finish on the old one)."""
        if self._checks is None or allowed != self._checks_allowed:
            self._checks, self._checks_allowed = asyncio.Semaphore(allowed), allowed
        return self._checks

    def _check(self, password: str, encoded: str | None) -> bool:
        """The password check, on a worker thread; an unknown user costs the same (a hash of
        a random password made once)."""
        if encoded is None:
            with self._dummy_lock:
                if self._dummy_hash is None:
                    self._dummy_hash = hash_password(secrets.token_urlsafe(16))
            verify_password(password, self._dummy_hash)
            return False
        return verify_password(password, encoded)

    async def logout(self, request: web.Request) -> web.Response:
        """End the session (POST, same origin only)."""
        if not self.same_origin(request):
            raise _error(403, "cross-site logout refused", api=False)
        token = request.cookies.get(COOKIE)
        if token:
            self.sessions.drop(token)
        response = _see_other("/dashboard/login")
        response.del_cookie(COOKIE, path="/")
        return response

    # -------------------------------------------------------------------------- pages

    async def static(self, request: web.Request) -> web.Response:
        """The stylesheet and the script of the pages."""
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound(text="not found")
        return web.Response(
            text=_static(name), content_type=_STATIC[name], headers={"Cache-Control": "no-cache"}
        )

    async def agents_page(self, request: web.Request) -> web.Response:
        """The agent list: one card per agent with its menu."""
        login = self._require(request, api=False)
        cards = "\n".join(_agent_card(agent, login) for agent in self._config().agents)
        return _page(
            "agents.html",
            USER=html.escape(login.name),
            ROLE=html.escape(login.role),
            CARDS=cards or "<p>No agents are configured.</p>",
            ADMIN_LINKS=_ADMIN_LINKS if login.role == "admin" else "",
            BANNER=self.read_only_banner() if login.role in _CONFIG_READERS else "",
            ADD='<a class="button" href="/dashboard/agents/new">Add agent</a>'
            if login.role in _CONFIG_WRITERS
            else "",
        )

    async def listens_page(self, request: web.Request) -> web.Response:
        """AI Listens for one agent (403 for roles not in its ``listens.roles``)."""
        login = self._require(request, api=False)
        agent = self._agent_for(request, login, api=False)
        return _page(
            "listens.html",
            AGENT_NAME=html.escape(agent.name or agent.slug),
            AGENT_SLUG=html.escape(agent.slug, quote=True),
            USER=html.escape(login.name),
            ROLE=html.escape(login.role),
        )

    # ---------------------------------------------------------------------------- API

    async def me(self, request: web.Request) -> web.Response:
        """Who is logged in."""
        login = self._require(request, api=True)
        return web.json_response({"name": login.name, "role": login.role})

    async def calls(self, request: web.Request) -> web.Response:
        """The agent's active monitored calls."""
        login = self._require(request, api=True)
        agent = self._agent_for(request, login, api=True)
        return web.json_response([s.as_dict() for s in self.hub.calls_of(agent.slug)])

    async def calls_events(self, request: web.Request) -> web.StreamResponse:
        """SSE: the agent's call list, now and after each change (event ``calls``)."""
        login = self._require(request, api=True)
        agent = self._agent_for(request, login, api=True)
        sub = self.hub.watch_list(agent.slug)
        try:
            return await self._stream(request, login, sub, [], _calls_event)
        finally:
            self.hub.unwatch_list(agent.slug, sub)

    async def call_events(self, request: web.Request) -> web.StreamResponse:
        """SSE: one call's history (after ``Last-Event-ID``), then its live items."""
        login = self._require(request, api=True)
        agent = self._agent_for(request, login, api=True)
        call = self.hub.get(request.match_info["call_id"])
        if call is None or call.summary.agent != agent.slug:
            raise _error(404, "no such call (it may have ended)", api=True)
        last = request.headers.get("Last-Event-ID", "")
        backlog, sub = call.subscribe(int(last) if last.isdigit() else 0)
        head = [_event("call", call.summary.as_dict())] + [_item_event(i) for i in backlog]
        try:
            return await self._stream(request, login, sub, head, _item_event)
        finally:
            call.unsubscribe(sub)

    async def _stream(
        self,
        request: web.Request,
        login: Login,
        sub: Subscription,
        head: list[bytes],
        render: Callable[[Any], bytes],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\n\n" + b"".join(head))
            while True:
                try:
                    item = await sub.get(timeout=_HEARTBEAT)
                except TimeoutError:
                    if self.login_of(request) is None:  # logged out or removed meanwhile
                        break
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await response.write(render(item))
        except ConnectionResetError:
            return response  # the viewer went away
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _safe_next(path: str) -> str:
    """Only local dashboard paths are redirected to after login (no open redirect)."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/dashboard") or "\\" in path:
        return ""
    return path


def _event(kind: str, data: Any, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _item_event(item: Item) -> bytes:
    seq = None if item.kind == "suggestion_delta" else item.seq
    return _event(item.kind, item.data, seq)


def _calls_event(calls: list[dict[str, Any]]) -> bytes:
    return _event("calls", calls)


def _agent_card(agent: Agent, login: Login) -> str:
    name = html.escape(agent.name or agent.slug)
    slug = html.escape(agent.slug, quote=True)
    ways = [
        label
        for on, label in (
            (agent.sip.enabled, "SIP"),
            (agent.websocket.enabled, "websocket"),
            (agent.listens.enabled, "AI Listens"),
        )
        if on
    ]
    numbers = ", ".join(html.escape(n) for n in (*agent.sip.numbers, *agent.listens.numbers))
    if login.role in _CONFIG_READERS:
        settings = f'<a role="menuitem" href="/dashboard/agents/{slug}/settings">Settings</a>'
    else:
        settings = '<span role="menuitem" aria-disabled="true">Settings (not for your role)</span>'
    if login.role in _CONFIG_READERS or login.role in agent.listens.roles:
        # The call history pages (sipserver.records.pages): the same roles see the calls.
        calls = f'<a role="menuitem" href="/dashboard/calls?agent={slug}">Calls</a>'
    else:
        calls = '<span role="menuitem" aria-disabled="true">Calls (not for your role)</span>'
    if agent.listens.enabled and login.role in agent.listens.roles:
        entry = f'<a role="menuitem" href="/dashboard/agents/{slug}/listens">AI Listens</a>'
    elif agent.listens.enabled:
        entry = '<span role="menuitem" aria-disabled="true">AI Listens (not for your role)</span>'
    else:
        entry = '<span role="menuitem" aria-disabled="true">AI Listens (not enabled)</span>'
    return (
        f'<article class="card" data-agent="{slug}"><header><h2>{name}</h2>'
        f'<details class="menu"><summary aria-label="Menu of {name}">&#8942;</summary>'
        f'<nav role="menu">{settings}{entry}{calls}</nav></details></header>'
        f'<p class="slug">{slug}</p><p>{html.escape(", ".join(ways)) or "no ingress"}</p>'
        f'<p class="numbers">{numbers}</p><p class="live" aria-live="polite"></p></article>'
    )
