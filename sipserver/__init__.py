"""sipserver: a SIP softswitch-style server for realtime AI voice agents.

The signalling modules may be compiled with mypyc (hatch_build.py). They load from their ``.py``
files instead when ``SIPSERVER_PURE_PYTHON`` is set (not ``0``; child processes inherit it) or
when a source changed after the in-place build (``_native.json`` holds the sources' hashes):
compiled modules call each other natively, so a mixed set would run stale code.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
_PREFIX = __name__ + "."


class _SourceFirstFinder:
    """Meta-path finder: a ``sipserver.*`` module with a ``.py`` file loads from it, never from
    the compiled extension module next to it."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(_PREFIX) or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        assert spec.origin is not None
        source = Path(spec.origin).with_name(fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return spec
        return importlib.util.spec_from_file_location(fullname, source)


def _stale_modules() -> list[str]:
    """Compiled modules whose source changed since the build (none when nothing is compiled)."""
    try:
        manifest = json.loads((_HERE / "_native.json").read_text())
    except FileNotFoundError:
        return []
    stale = []
    for module, digest in manifest["modules"].items():
        source = _HERE.parent.joinpath(*module.split(".")).with_suffix(".py")
        try:
            if hashlib.sha256(source.read_bytes()).hexdigest() != digest:
                stale.append(module)
        except FileNotFoundError:
            stale.append(module)
    return stale


def _choose_sources() -> None:
    if os.environ.get("SIPSERVER_PURE_PYTHON", "") not in ("", "0"):
        sys.meta_path.insert(0, _SourceFirstFinder)
        return
    stale = _stale_modules()
    if stale:
        warnings.warn(
            f"sipserver: {', '.join(stale)} changed since the mypyc build: running every module"
            " from its .py source (rebuild: python hatch_build.py, or pip install -e .)",
            RuntimeWarning,
            stacklevel=2,
        )
        sys.meta_path.insert(0, _SourceFirstFinder)


_choose_sources()
