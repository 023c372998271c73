"""The running configuration file as an editable document: read one object, put or delete it,
validate the whole file, write it back.

The file is read twice: by ruamel.yaml in round-trip mode (the document that is edited and
written back, so the operator's comments, key order, quoting and ``${VAR}`` references stay)
and by the loader of :mod:`sipserver.config` (the raw values the console shows and compares,
exactly what ``check-config`` and the server see). A change touches only the keys whose values
change; new strings are written double-quoted (a literal block when they span lines), so that
no YAML 1.1 reading turns them into something else, and the written text is read back with the
loader and compared with what was meant before anything else happens.

A save (:meth:`ConfigDocument.put` / :meth:`ConfigDocument.delete`) then

1. refuses with :class:`Conflict` when the file on disk is no longer the one loaded (its
   SHA-256, :attr:`ConfigDocument.fingerprint`, or the one the client names, differs);
2. validates the whole new text with :func:`sipserver.config.parse_config` (the environment
   expanded, relative paths from the file's directory): :class:`Invalid` lists every problem
   with its key path, and the file is left as it was;
3. keeps the previous file as ``<file>.bak`` and replaces the file atomically: a temporary file
   in the same directory, fsync, rename, then fsync of the directory; both are 0600. A crash
   leaves the old file or the new one, never a mix. A symbolic link is followed: its target is
   replaced.

A server started on the embedded default has no file of its own: the document is read-only
(:class:`ReadOnly`, with the reason).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

from sipserver.config import (
    Config,
    ConfigError,
    embedded_config_path,
    format_key_path,
    parse_config,
    read_raw_config,
)
from sipserver.console.masking import BodyError, Kind, shown, written
from sipserver.data_dir import FILE_MODE

__all__ = [
    "READ_ONLY_REASON",
    "SECTIONS",
    "ConfigDocument",
    "Conflict",
    "DocumentError",
    "Invalid",
    "NotFound",
    "ReadOnly",
    "Rule",
    "Saved",
    "path_of",
]

SECTIONS: Final[dict[Kind, str]] = {
    "agent": "agents",
    "model": "models",
    "credential": "credentials",
    "user": "users",
}
"""The top-level key of each kind: ``agents`` is a list keyed by ``slug``, ``users`` a list
keyed by ``name``, the others are mappings keyed by name."""
_LISTED: Final[dict[Kind, str]] = {"agent": "slug", "user": "name"}
"""The kinds kept as a list, and the key that names each item."""

Rule = Callable[[dict[str, Any], dict[str, Any]], list[tuple[str, str]]]
"""An extra check of a save, given the raw file before and after: ``(key path, reason)`` of
each problem (a rule of the console, not of the configuration, e.g. "keep one admin")."""

READ_ONLY_REASON: Final = (
    "the server runs on the embedded default configuration, which the console does not edit;"
    " start it with a writable configuration file (sipserver run -c FILE) to edit from here"
)


class DocumentError(Exception):
    """Base of the refusals of a save; the message says why."""


class ReadOnly(DocumentError):
    """There is no file the console may write."""


class Conflict(DocumentError):
    """The file changed on disk since it was loaded (reload it and try again)."""


class NotFound(DocumentError):
    """No object of that kind and name."""


class Invalid(DocumentError):
    """The change would make the configuration invalid (nothing was written).

    Attributes:
        errors: ``(key path, reason)`` of every problem; the key path is ``""`` for a problem
            of the whole file.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Saved:
    """What a successful save wrote."""

    config: Config
    """The new configuration, validated (what the server reloads)."""
    action: str
    """``create``, ``replace`` or ``delete``."""
    before: Any
    """The object's raw value before (None when created)."""
    after: Any
    """Its raw value now (None when deleted)."""
    fingerprint: str
    """SHA-256 of the file written."""


class ConfigDocument:
    """The configuration file the server runs with, editable one object at a time.

    Args:
        path: The file (``sipserver run -c``); None: the embedded default (read-only).
        env: Variables for ``${VAR}`` expansion in validation; defaults to ``os.environ``.

    Nothing is read until the first call (the server builds this before it starts); every
    read loads the file again when it changed on disk. On the embedded default the objects are
    read from it, and every write is refused.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, env: dict[str, str] | None = None):
        self.path = Path(path) if path is not None else None
        self._env = env
        self._lock = threading.Lock()
        self._yaml = YAML()  # round-trip
        self._yaml.preserve_quotes = True
        self._yaml.width = 4096  # never fold long lines the operator wrote on one
        self._text = ""
        self._raw: dict[str, Any] = {}
        self.fingerprint = ""
        """SHA-256 (hex) of the file as last loaded ("" before the first read)."""

    @property
    def read_only_reason(self) -> str | None:
        """Why nothing can be written (None: writable)."""
        if self.path is None:
            return READ_ONLY_REASON
        target = Path(os.path.realpath(self.path))
        if not os.access(target.parent, os.W_OK) or not os.access(target, os.W_OK):
            return f"{self.path} or its directory is not writable by the server"
        return None

    # ------------------------------------------------------------------------------ read

    def refresh(self) -> str:
        """Load the file again if it changed on disk (an operator's edit, a reload).

        Returns:
            The fingerprint of what is loaded now.

        Raises:
            DocumentError: The file cannot be read or parsed.
        """
        with self._lock:
            self._fresh()
            return self.fingerprint

    def _fresh(self) -> None:
        try:
            source = self.path if self.path is not None else embedded_config_path()
            data = source.read_bytes()
        except OSError as exc:
            raise DocumentError(f"{exc.filename}: cannot be read: {exc.strerror}") from exc
        if _sha(data) != self.fingerprint:
            self._load(data)

    def names(self, kind: Kind) -> list[str]:
        """The names (slugs) of the objects of ``kind``, in file order."""
        with self._lock:
            self._fresh()
            return list(_objects(self._raw, kind))

    def get(self, kind: Kind, name: str) -> Any:
        """One object as JSON, secrets masked (:func:`~sipserver.console.masking.shown`).

        Raises:
            NotFound: No such object.
        """
        with self._lock:
            self._fresh()
            objects = _objects(self._raw, kind)
            if name not in objects:
                raise NotFound(f"no {kind} {name!r}")
            return shown(kind, objects[name])

    def raw(self, kind: Kind, name: str) -> Any:
        """One object's raw (unexpanded, unmasked) value, or None: for the server's own use."""
        with self._lock:
            self._fresh()
            return copy.deepcopy(_objects(self._raw, kind).get(name))

    # ----------------------------------------------------------------------------- write

    def put(
        self,
        kind: Kind,
        name: str,
        body: Any,
        *,
        expected: str | None = None,
        rule: Rule | None = None,
    ) -> Saved:
        """Create or replace one object from its JSON body and save the file.

        Args:
            kind: What it is.
            name: Its slug or name (an agent body's ``slug``, when given, must be this).
            body: The object as JSON (the keys of the configuration file); masked secrets,
                left-out secrets and unchanged references keep their stored values.
            expected: The fingerprint the client loaded; None: the one loaded here.
            rule: An extra check of the new file (its problems are :class:`Invalid`), run
                under the same lock as the save, so nothing changes between it and the write.

        Raises:
            ReadOnly, Conflict, Invalid: See the module docstring.
            BodyError: The body cannot be written (see :mod:`sipserver.console.masking`).
        """
        if not isinstance(body, dict):
            raise Invalid([("", "the body must be a JSON object (the keys of the YAML file)")])
        with self._lock:
            self._writable(expected)
            at = self._path_of(kind, name)
            if kind in _LISTED:
                field = _LISTED[kind]
                if body.get(field, name) != name:
                    raise Invalid([(f"{at}.{field}", f"must be {name!r}, the {field} in the URL")])
                body = {field: name, **body}
            before = copy.deepcopy(_objects(self._raw, kind).get(name))
            try:
                after = written(kind, body, before)
            except BodyError as exc:
                raise Invalid([(f"{at}.{loc}", msg) for loc, msg in exc.errors]) from exc
            return self._save(kind, name, before, after, rule)

    def _path_of(self, kind: Kind, name: str) -> str:
        """The key path of the object (a new agent or user: the index it will take)."""
        return path_of(self._raw, kind, name)

    def delete(
        self, kind: Kind, name: str, *, expected: str | None = None, rule: Rule | None = None
    ) -> Saved:
        """Remove one object and save the file (refused when the rest then is invalid, e.g.
        a model an agent still uses).

        Raises:
            ReadOnly, Conflict, NotFound, Invalid: See the module docstring (``rule``: see
                :meth:`put`).
        """
        with self._lock:
            self._writable(expected)
            objects = _objects(self._raw, kind)
            if name not in objects:
                raise NotFound(f"no {kind} {name!r}")
            return self._save(kind, name, copy.deepcopy(objects[name]), None, rule)

    # --------------------------------------------------------------------------- private

    def _load(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
            doc = self._yaml.load(text) if text.strip() else CommentedMap()
        except (UnicodeDecodeError, YAMLError) as exc:
            raise DocumentError(f"{self.path}: cannot be read: {exc}") from exc
        try:
            raw = read_raw_config(text, source=str(self.path)) if text.strip() else {}
        except ConfigError as exc:
            raise DocumentError(str(exc)) from exc
        if not isinstance(doc, CommentedMap):
            raise DocumentError(f"{self.path}: the top level must be a mapping")
        self._text, self._raw, self.fingerprint = text, raw, _sha(data)
        self._indent(text)

    def _indent(self, text: str) -> None:
        """Indent new mappings and lists as the file does (``key:\n  sub:`` with 2 or 4 spaces;
        ``key:\n- item`` or ``key:\n  - item``)."""
        blank = r"(?:[ \t]*(?:#[^\n]*)?\n)*"
        nested = re.search(rf"^( *)[^\s#-][^\n]*:[ \t]*\n{blank}( *)[^\s#-]", text, re.M)
        mapping = len(nested.group(2)) - len(nested.group(1)) if nested else 2
        listed = re.search(rf"^( *)[^\s#-][^\n]*:[ \t]*\n{blank}( *)- ", text, re.M)
        offset = len(listed.group(2)) - len(listed.group(1)) if listed else 0
        mapping = mapping if 2 <= mapping <= 8 else 2
        offset = offset if 0 <= offset <= 8 else 0
        self._yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)

    def _writable(self, expected: str | None) -> None:
        reason = self.read_only_reason
        if reason is not None:
            raise ReadOnly(reason)
        assert self.path is not None
        loaded = self.fingerprint
        self._fresh()
        if loaded and loaded != self.fingerprint:
            raise Conflict("the file changed on disk since it was loaded; load it again")
        if expected is not None and expected != self.fingerprint:
            raise Conflict("the file changed since this client loaded it; load it again")

    def _save(
        self, kind: Kind, name: str, before: Any, after: Any, rule: Rule | None = None
    ) -> Saved:
        assert self.path is not None
        # A fresh document per save (a deep copy of a round-trip document loses comments).
        doc = self._yaml.load(self._text) if self._text.strip() else CommentedMap()
        expected = copy.deepcopy(self._raw)
        _place(expected, kind, name, after)
        problems = rule(self._raw, expected) if rule is not None else []
        if problems:
            raise Invalid(problems)
        _edit(doc, kind, name, before, after)
        out = io.StringIO()
        self._yaml.dump(doc, out)
        text = out.getvalue()
        try:
            reread: Any = read_raw_config(text, source=str(self.path))
        except ConfigError:
            reread = None
        if reread != expected:  # a value the round trip could not write faithfully
            raise Invalid([("", "the change cannot be written without altering other values;"
                            " edit the file by hand")])  # fmt: skip
        try:
            config = parse_config(
                text, source=str(self.path), env=self._env, base_dir=self.path.resolve().parent
            )
        except ConfigError as exc:
            raise Invalid(exc.located) from exc
        data = text.encode("utf-8")
        _replace_atomically(Path(os.path.realpath(self.path)), data)
        self._text, self._raw, self.fingerprint = text, expected, _sha(data)
        action = "delete" if after is None else ("replace" if before is not None else "create")
        return Saved(config, action, before, after, self.fingerprint)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_of(raw: dict[str, Any], kind: Kind, name: str) -> str:
    """The key path of an object in the raw file (a new agent or user: the index it will take)."""
    if kind not in _LISTED:
        return format_key_path((SECTIONS[kind], name))
    items = raw.get(SECTIONS[kind])
    index = _index(items, kind, name) if isinstance(items, list) else None
    if index is None:
        index = len(items) if isinstance(items, list) else 0
    return format_key_path((SECTIONS[kind], index))


def _objects(raw: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """The objects of ``kind`` by name (agents by slug; malformed entries are skipped)."""
    section = raw.get(SECTIONS[kind])
    if kind in _LISTED:
        field = _LISTED[kind]
        items = section if isinstance(section, list) else []
        return {a[field]: a for a in items if isinstance(a, dict) and isinstance(a.get(field), str)}
    return dict(section) if isinstance(section, dict) else {}


def _index(items: list[Any], kind: Kind, name: str) -> int | None:
    field = _LISTED[kind]
    return next(
        (i for i, a in enumerate(items) if isinstance(a, dict) and a.get(field) == name), None
    )


def _place(raw: dict[str, Any], kind: Kind, name: str, value: Any) -> None:
    """Put ``value`` (None: remove) as the object ``name`` into a plain tree."""
    key = SECTIONS[kind]
    if kind in _LISTED:
        items = raw[key] if isinstance(raw.get(key), list) else []
        at = _index(items, kind, name)
        if value is None and at is not None:
            del items[at]
        elif value is not None and at is not None:
            items[at] = value
        elif value is not None:
            items.append(value)
        raw[key] = items
    else:
        mapping = raw[key] if isinstance(raw.get(key), dict) else {}
        if value is None:
            mapping.pop(name, None)
        else:
            mapping[name] = value
        raw[key] = mapping
    if not raw[key]:  # the last one went: the section goes (an empty one is the default)
        del raw[key]


def _edit(doc: CommentedMap, kind: Kind, name: str, before: Any, after: Any) -> None:
    """Apply the change to the round-trip document, touching only what differs."""
    key = SECTIONS[kind]
    empty = CommentedSeq() if kind in _LISTED else CommentedMap()
    if not isinstance(doc.get(key), type(empty)):
        doc[key] = empty
    section = doc[key]
    if kind in _LISTED:
        at = _index(section, kind, name)
        if after is None:
            if at is not None:
                del section[at]
        elif at is None:
            section.append(_node(after))
        else:
            section[at] = _patched(section[at], before, after)
    elif after is None:
        del section[name]
    elif name in section:
        section[name] = _patched(section[name], before, after)
    else:
        section[name] = _node(after)
    if not section:
        del doc[key]


def _patched(node: Any, old: Any, new: Any) -> Any:
    """``node`` (holding ``old``) changed to hold ``new``; unchanged parts stay as they were."""
    if old == new:
        return node
    if isinstance(node, CommentedMap) and isinstance(old, dict) and isinstance(new, dict):
        for key in [k for k in node if k not in new]:
            del node[key]
        for key, value in new.items():
            if key in node and key in old:
                node[key] = _patched(node[key], old[key], value)
            else:
                node[key] = _node(value)
        return node
    if (
        isinstance(node, CommentedSeq)
        and isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new) == len(node)
    ):
        for i, value in enumerate(new):
            node[i] = _patched(node[i], old[i], value)
        return node
    return _node(new)


def _node(value: Any) -> Any:
    """A new YAML node for a plain value (strings quoted, see the module docstring)."""
    if isinstance(value, dict):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _node(item)
        return mapping
    if isinstance(value, list):
        return CommentedSeq(_node(item) for item in value)
    if isinstance(value, str):
        if "\n" in value and not value.endswith((" ", "\t")):
            return LiteralScalarString(value)
        return DoubleQuotedScalarString(value)
    return value


def _drop_stale_temporaries(path: Path) -> None:
    """Remove temporary files a killed process left beside ``path`` (they hold a whole
    configuration, secrets included)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_atomically(path: Path, data: bytes) -> None:
    """``<path>.bak`` := the current file, then ``path`` := ``data``; each by a temporary file
    in the same directory, fsync and rename (a crash leaves the old or the new file)."""
    if path.exists():
        _write_and_rename(path.with_name(path.name + ".bak"), path.read_bytes())
    _write_and_rename(path, data)


def _write_and_rename(path: Path, data: bytes) -> None:
    _drop_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
