"""sipserver.data_dir: state directories 0700, files 0600, errors that name the key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sipserver.data_dir import (
    DataDirError,
    make_private_dir,
    make_private_file,
    make_private_if_present,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_directories_are_created_0700_and_existing_ones_kept(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        (tmp_path / "shared").mkdir(mode=0o755)
        made = make_private_dir(tmp_path / "shared" / "a" / "b", key="server.data_dir")
        assert made == tmp_path / "shared" / "a" / "b"
        assert (mode(tmp_path / "shared" / "a"), mode(made)) == (0o700, 0o700)
        assert mode(tmp_path / "shared") == 0o755  # the operator's own directory is untouched
        assert make_private_dir(made, key="server.data_dir") == made
    finally:
        os.umask(old)


def test_a_directory_that_cannot_be_made_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError) as info:
        make_private_dir(tmp_path / "file" / "data", key="server.data_dir")
    assert str(info.value).startswith(f"server.data_dir: cannot create {tmp_path / 'file'}")
    with pytest.raises(DataDirError, match=r"^server\.store: .* exists and is not a directory"):
        make_private_dir(tmp_path / "file", key="server.store")


def test_files_are_created_or_made_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        make_private_file(tmp_path / "new.pid")
        (tmp_path / "old.pid").write_text("1\n")
        (tmp_path / "old.pid").chmod(0o644)
        make_private_file(tmp_path / "old.pid")
        assert (mode(tmp_path / "new.pid"), mode(tmp_path / "old.pid")) == (0o600, 0o600)
        assert (tmp_path / "old.pid").read_text() == "1\n"  # kept: only the mode changes
    finally:
        os.umask(old)


def test_existing_files_are_made_0600_and_missing_ones_skipped(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        (tmp_path / "db-wal").write_text("x")
        (tmp_path / "db-wal").chmod(0o644)
        make_private_if_present(tmp_path / "db-wal", tmp_path / "db-shm")
        assert mode(tmp_path / "db-wal") == 0o600
        assert not (tmp_path / "db-shm").exists()  # never created
    finally:
        os.umask(old)


def test_the_server_makes_its_state_when_it_starts_not_when_built(tmp_path: Path) -> None:
    """DESIGN: no I/O in Server.__init__; start() makes the data directory and opens the
    store (first thing, before anything is bound: a failure names the key and binds nothing)."""
    from sipserver.config import parse_config
    from sipserver.registrar.bindings import SqliteStore
    from sipserver.server import Server

    data = tmp_path / "state" / "data"
    config = parse_config(f"server: {{data_dir: '{data}', store: sqlite}}\n", env={})
    server = Server(config)
    assert not (tmp_path / "state").exists()
    server._open_state()  # what start() runs first
    assert isinstance(server.store, SqliteStore)
    assert server.router._registrar.store is server.store
    assert (mode(data), mode(data / "bindings.db")) == (0o700, 0o600)
    server.store.close()
