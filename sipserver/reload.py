"""What a configuration reload applies at once and what needs a restart, and its result file.

Every key under ``server.`` is classified in :data:`SERVER_KEYS` (a test walks the config model
and fails on a key that is not), so a new setting cannot be silently ignored by a reload:

- ``live``: the running server uses the new value at once (new calls, requests, connections);
- ``restart``: bound at start-up (sockets, stores, files); the reload names it and the running
  server keeps the old value until it is restarted;
- ``worker_pool``: a setting of the media worker processes. Applied when the reload builds the
  worker pool (the first agent that takes SIP calls); once the pool runs it needs a restart
  (workers are not restarted behind the calls they carry).

:class:`ReloadResult` is what :meth:`sipserver.server.Server.reload` returns; the server writes
it to ``<data_dir>/reload-result.json`` (:func:`write_result`), where ``sipserver reload`` reads
it (:func:`read_result`) after signalling the server.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from sipserver.config import Config, ServerConfig
from sipserver.data_dir import FILE_MODE, make_private_dir

__all__ = [
    "SECTIONS",
    "SERVER_KEYS",
    "KeyClass",
    "ReloadPlan",
    "ReloadResult",
    "changed_keys",
    "classify",
    "plan_reload",
    "read_result",
    "result_path",
    "server_key_paths",
    "write_result",
]

KeyClass = Literal["live", "restart", "worker_pool"]

SERVER_KEYS: dict[str, KeyClass] = {
    # Identity and routing: the edge's router is rebuilt; the call proxy's outside address
    # (Via and Record-Route towards callers) changes for new requests.
    "server.public_host": "live",
    "server.public_url": "live",
    "server.realm": "live",
    "server.domains": "live",
    "server.sip.numbering": "live",
    "server.sip.digest_algorithms": "live",
    "server.sip.digest_uri_check": "live",
    "server.sip.min_expires": "live",
    "server.sip.max_expires": "live",
    "server.sip.default_expires": "live",
    "server.sip.max_contacts_per_aor": "live",
    "server.sip.force_rport": "live",
    # Read for each new websocket call, demo page request and stop.
    "server.media_streams": "live",
    "server.demo_page": "live",
    "server.drain_timeout": "live",
    "server.max_calls": "live",
    "server.log_rate_limit": "live",
    # Connection caps and deadlines: new connections get the new caps, every open one the new
    # deadlines from the next timer (SIP: each second; HTTP: its next request).
    "server.sip.max_connections": "live",
    "server.sip.max_connections_per_source": "live",
    "server.sip.connection_idle_timeout": "live",
    "server.sip.message_timeout": "live",
    "server.http_limits": "live",
    # Read by the dashboard on each login attempt.
    "server.login_limit": "live",
    # Checked on each request to /status or /metrics on the public listener.
    "server.admin_token": "live",
    # Read again into a new TLS context for new connections (a renewed certificate).
    "server.sip.tls": "live",
    "server.store_commit_ms": "live",  # read by the group commit for each batch
    # Targets and sender settings are read by the webhook sender for each delivery attempt.
    "server.webhooks": "live",
    # Bound at start-up.
    "server.http": "restart",
    "server.admin_http": "restart",
    "server.sip.udp": "restart",
    "server.sip.tcp": "restart",
    "server.sip.tls.listen": "restart",
    "server.sip.max_message_size": "restart",
    "server.sip.nonce_ttl": "restart",
    "server.sip.ban": "restart",
    "server.store": "restart",
    "server.data_dir": "restart",
    # Call records: the store is opened at start (and its writer's interval set then);
    # retention is read by each pass of the retention task.
    "server.records.store": "restart",
    "server.records.flush_interval": "restart",
    "server.records.retention_days": "live",
    "server.records.max_size_mb": "live",
    # Command-line options of the media worker processes.
    "server.workers": "worker_pool",
    "server.media": "worker_pool",
    # pjsua2 media workers or native call workers: which processes, and where sessions run.
    "server.media.engine": "restart",
}
"""The reload class of every ``server.`` key; an entry covers the keys below it."""

SECTIONS = ("credentials", "models", "agents", "users")
"""Top-level sections besides ``server``: all applied at once (calls in progress keep the agent
and models they started with)."""

RESULT_FILE = "reload-result.json"


def server_key_paths(model: type[BaseModel] = ServerConfig, prefix: str = "server") -> list[str]:
    """Every leaf key under ``server.`` (nested settings objects are walked)."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += server_key_paths(annotation, path)
        else:
            paths.append(path)
    return paths


def classify(key: str) -> KeyClass | None:
    """The class of ``key`` (the nearest classified key at or above it), None if unclassified."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = SERVER_KEYS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def changed_keys(old: BaseModel, new: BaseModel, prefix: str) -> list[str]:
    """The leaf keys whose values differ between two instances of one settings model."""
    changed: list[str] = []
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        path = f"{prefix}.{name}"
        if isinstance(before, BaseModel) and isinstance(after, BaseModel):
            changed += changed_keys(before, after, path)
        elif before != after:
            changed.append(path)
    return changed


_M = TypeVar("_M", bound=BaseModel)


def _put_back(model: _M, path: Sequence[str], value: object) -> _M:
    """A copy of ``model`` with the field at ``path`` (names, outermost first) set to ``value``
    (the settings models are frozen: each level is copied, the rest is shared)."""
    name, *rest = path
    if rest:
        value = _put_back(getattr(model, name), rest, value)
    return model.model_copy(update={name: value})


def _value_at(model: BaseModel, path: Sequence[str]) -> object:
    value: object = model
    for name in path:
        value = getattr(value, name)
    return value


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload applies (see :func:`plan_reload`)."""

    config: Config
    """The configuration to run with: the new file, except that every key in
    :attr:`restart_needed` keeps its running value. Everything that reads the configuration
    after the reload (router, authenticator, pid file, result file, a worker pool built now)
    sees only what is really in force."""
    changed: tuple[str, ...]
    """Sections and ``server.`` keys that changed and are applied."""
    restart_needed: tuple[str, ...]
    """``server.`` keys that changed but are not applied."""


def plan_reload(running: Config, new: Config, *, pool_runs: bool) -> ReloadPlan:
    """Split a reload into what is applied and what needs a restart.

    Args:
        running: The configuration in force.
        new: The new, validated configuration.
        pool_runs: The media worker pool exists (its ``worker_pool`` keys need a restart).

    Returns:
        The plan; its :attr:`~ReloadPlan.config` is ``new`` with every key that is not
        applied put back to its value in ``running``.
    """
    changed = [name for name in SECTIONS if getattr(running, name) != getattr(new, name)]
    restart: list[str] = []
    for key in changed_keys(running.server, new.server, "server"):
        kind = classify(key)
        if kind == "live" or (kind == "worker_pool" and not pool_runs):
            changed.append(key)
        else:
            # "restart", a worker setting of a running pool, or (caught by a unit test, never
            # shipped) a key nobody classified: not applied, and said so.
            restart.append(key)
    config = new
    for key in restart:
        path = key.split(".")
        config = _put_back(config, path, _value_at(running, path))
    return ReloadPlan(config, tuple(changed), tuple(restart))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload did."""

    applied: bool
    """The new configuration is in force (except :attr:`restart_needed`); False: nothing
    changed (see :attr:`errors`)."""
    errors: tuple[str, ...] = ()
    """Why nothing was applied (validation errors name the key path)."""
    changed: tuple[str, ...] = ()
    """Sections and ``server.`` keys that changed and are in force now."""
    restart_needed: tuple[str, ...] = ()
    """``server.`` keys that changed but keep their old value until a restart."""
    notes: tuple[str, ...] = ()
    """What else happened (the media worker pool was started, ...)."""


def result_path(config: Config) -> Path:
    """``<data_dir>/reload-result.json``: the last reload's result."""
    return Path(config.server.data_dir) / RESULT_FILE


def write_result(path: Path, result: ReloadResult, *, pid: int, sequence: int, source: str) -> None:
    """Write ``result`` atomically (a reader never sees half a file), private (0600)."""
    record = {
        "pid": pid,
        "sequence": sequence,
        "source": source,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **asdict(result),
    }
    make_private_dir(path.parent, key="server.data_dir")
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def read_result(path: Path) -> tuple[int, int, ReloadResult] | None:
    """``(pid, sequence, result)`` from a result file; None when absent or unreadable."""
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        result = ReloadResult(
            applied=bool(record["applied"]),
            errors=tuple(record.get("errors", ())),
            changed=tuple(record.get("changed", ())),
            restart_needed=tuple(record.get("restart_needed", ())),
            notes=tuple(record.get("notes", ())),
        )
        return int(record["pid"]), int(record["sequence"]), result
    except (OSError, ValueError, KeyError, TypeError):
        return None
