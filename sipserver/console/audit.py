"""The console's audit log: one JSON line per save, in ``<data_dir>/console-audit.jsonl``.

Each record says who (user name and role), when (UTC, ISO 8601), which object (kind and name),
what (``create``, ``replace``, ``delete``) and how: a unified diff of the object's YAML before
and after, with every secret masked (a secret that changed reads ``<changed secret>``, so the
log tells that it changed and never what it is). The file is private (0600) like the rest of
the data directory.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Final

import yaml

from sipserver.console.masking import MASK, Kind, Loc, is_secret, shown
from sipserver.data_dir import FILE_MODE, make_private_dir

__all__ = ["AUDIT_FILE", "CHANGED_SECRET", "AuditLog", "masked_diff"]

AUDIT_FILE: Final = "console-audit.jsonl"
"""The log's name inside ``server.data_dir``."""
CHANGED_SECRET: Final = "<changed secret>"
"""What a secret that changed is shown as in a diff."""


def masked_diff(kind: Kind, name: str, before: Any, after: Any) -> str:
    """The unified diff of one object's YAML, secrets masked."""
    old = shown(kind, before) if before is not None else None
    new = _mark_changed(kind, before, shown(kind, after), after) if after is not None else None

    def lines(value: Any) -> list[str]:
        if value is None:
            return []
        text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)
        return text.splitlines(keepends=True)

    label = f"{kind}/{name}"
    return "".join(difflib.unified_diff(lines(old), lines(new), f"a/{label}", f"b/{label}"))


def _mark_changed(kind: Kind, before: Any, view: Any, after: Any, path: Loc = ()) -> Any:
    """``view`` (the masked ``after``) with each secret that differs from ``before`` marked."""
    if isinstance(view, dict) and isinstance(after, dict):
        old = before if isinstance(before, dict) else {}
        return {
            key: _mark_changed(kind, old.get(key), value, after.get(key), (*path, key))
            for key, value in view.items()
        }
    if isinstance(view, list) and isinstance(after, list):
        old_items = before if isinstance(before, list) else []
        return [
            _mark_changed(
                kind, old_items[i] if i < len(old_items) else None, value, after[i], (*path, i)
            )
            for i, value in enumerate(view)
        ]
    if view == MASK and is_secret(kind, path) and before != after:
        return CHANGED_SECRET
    return view


class AuditLog:
    """Appends and reads the audit records.

    Args:
        path: The JSON-lines file (its directory is made private when missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(
        self,
        *,
        user: str,
        role: str,
        kind: Kind,
        name: str,
        action: str,
        before: Any,
        after: Any,
        at: datetime.datetime | None = None,
    ) -> dict[str, Any]:
        """Write one record (and return it)."""
        when = at or datetime.datetime.now(datetime.UTC)
        record = {
            "at": when.isoformat(timespec="seconds"),
            "user": user,
            "role": role,
            "kind": kind,
            "name": name,
            "action": action,
            "diff": masked_diff(kind, name, before, after),
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            make_private_dir(self.path.parent, key="server.data_dir")
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, FILE_MODE)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return record

    def read(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` records, oldest first (an unreadable line is skipped)."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as lines:
                tail = deque(lines, maxlen=max(limit, 0))
        except FileNotFoundError:
            return []
        records = []
        for line in tail:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records
