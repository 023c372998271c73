"""``sipserver init``: the embedded default configuration, written out as a starting point.

The server started without ``-c`` runs on the packaged default and its console is read-only
(docs/console.md). :func:`write_starter` copies that default, and every file it refers to by a
relative path (knowledge base patterns, sound files), to a directory the operator owns, so
``sipserver run -c DIR/sipserver.yaml`` gives a console that can save.
"""

from __future__ import annotations

import glob
import os
import pathlib
from typing import Any, Final

import yaml

from sipserver.config import SHIPPED_SOUNDS, embedded_config_path

__all__ = ["CONFIG_NAME", "StarterExists", "starter_files", "write_starter"]

CONFIG_NAME: Final = "sipserver.yaml"
"""Name of the configuration file written."""


class StarterExists(Exception):
    """Files to be written exist already (nothing was written).

    Attributes:
        paths: The files that exist.
    """

    def __init__(self, paths: list[pathlib.Path]) -> None:
        self.paths = paths
        names = ", ".join(str(p) for p in paths)
        super().__init__(f"these files exist already (use --force to overwrite them): {names}")


def starter_files() -> dict[pathlib.PurePosixPath, pathlib.Path]:
    """The files of the starting point: relative target path -> embedded source file.

    The configuration itself, then each file matched by a relative ``knowledge_base`` pattern
    of its agents and each relative sound file of its models' ``audio_feedback`` (taken, like
    the server does, from the configuration's directory). Absolute paths are left out: they
    name files outside the package.
    """
    source = embedded_config_path()
    base = source.parent
    files = {pathlib.PurePosixPath(CONFIG_NAME): source}
    raw: Any = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    patterns: list[str] = []
    for agent in raw.get("agents") or []:
        kb = (agent.get("knowledge_base") or []) if isinstance(agent, dict) else []
        patterns += [kb] if isinstance(kb, str) else [p for p in kb if isinstance(p, str)]
    for model in (raw.get("models") or {}).values():
        feedback = model.get("audio_feedback") if isinstance(model, dict) else None
        for key in ("thinking_sound", "ambient_sound"):
            sound = feedback.get(key) if isinstance(feedback, dict) else None
            if isinstance(sound, str) and sound not in (*SHIPPED_SOUNDS, "none"):
                patterns.append(glob.escape(sound))
    for pattern in patterns:
        if os.path.isabs(pattern) or ".." in pathlib.PurePath(pattern).parts:
            continue
        for match in sorted(base.glob(pattern)):
            if match.is_file():
                files[pathlib.PurePosixPath(match.relative_to(base).as_posix())] = match
    return files


def write_starter(directory: pathlib.Path, *, force: bool = False) -> list[pathlib.Path]:
    """Write the embedded default configuration and its files to ``directory``.

    Args:
        directory: Where to write (created if missing).
        force: Overwrite files that exist; otherwise nothing is written when any does.

    Returns:
        The files written, the configuration first.

    Raises:
        StarterExists: A file exists and ``force`` is false.
    """
    files = starter_files()
    targets = {directory / rel: src for rel, src in files.items()}
    existing = [path for path in targets if path.exists() or path.is_symlink()]
    if existing and not force:
        raise StarterExists(existing)
    written = []
    for target, src in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        # The configuration holds the demo passwords: readable by its owner only, as the
        # console's saves leave it (0600).
        mode = 0o600 if target.name == CONFIG_NAME else 0o644
        if target.is_symlink():
            target.unlink()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(target, mode)
        written.append(target)
    return written
