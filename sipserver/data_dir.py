"""The server's state directory: created private (0700), its files private (0600).

``server.data_dir`` holds the bindings database (contacts and source addresses of every
registered PBX), the pid file and ``run/`` (the frame link socket); a relative ``sqlite://``
store may live elsewhere. None of it is anyone else's business on a shared machine, so the
directories the server creates are 0700 and the files 0600 (``sipserver run`` also sets the
process umask to 077, which covers SQLite's ``-wal``/``-shm`` files and anything created later).
An existing directory is left as the operator made it; files the server owns are tightened.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "DataDirError",
    "make_private_dir",
    "make_private_file",
    "make_private_if_present",
]

DIR_MODE = 0o700
"""Mode of the directories the server creates."""
FILE_MODE = 0o600
"""Mode of the files the server writes."""


class DataDirError(OSError):
    """A state directory or file cannot be created; the message names the configuration key."""


def make_private_dir(path: str | os.PathLike[str], *, key: str) -> Path:
    """Create ``path`` and its missing parents, each 0700; an existing directory is kept as is.

    Args:
        path: The directory.
        key: The configuration key it comes from (``server.data_dir``), for the error.

    Returns:
        The directory.

    Raises:
        DataDirError: It cannot be created (a file in the way, no permission, read-only...).
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise DataDirError(f"{key}: {directory} exists and is not a directory")
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        for part in reversed(missing):
            try:
                part.mkdir(mode=DIR_MODE)
            except FileExistsError:  # created meanwhile (another process)
                continue
            os.chmod(part, DIR_MODE)  # mkdir's mode is masked by the umask
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataDirError(f"{key}: cannot create {directory}: {reason}") from exc
    return directory


def make_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` (empty) if missing, and make it 0600 either way.

    Raises:
        OSError: The file cannot be created.
    """
    # An existing file is never opened here: it may be an SQLite database this process already
    # has a connection to, and closing any descriptor of a file drops every POSIX lock the
    # process holds on it (SQLite's locks included: "How To Corrupt An SQLite Database File",
    # 2.2). A reader in another process then thinks nobody uses the WAL and resets it, and the
    # writes that follow land in an unlinked file until the writer closes (seen with the
    # webhook queue opening records.db beside the record store).
    if not os.path.exists(path):
        with contextlib.suppress(FileExistsError):  # created meanwhile: only chmod below
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    make_private_if_present(path)


def make_private_if_present(*paths: str | os.PathLike[str]) -> None:
    """Make the files among ``paths`` that exist 0600 (an older, world-readable database and
    its ``-wal``/``-shm`` files); missing files are skipped, and so are files that are not
    ours (the operator made them: left as they are)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(path, FILE_MODE)
