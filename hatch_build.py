"""Hatch build hook: compile the typed sans-I/O signalling modules with mypyc, or build pure.

The modules listed in ``[tool.hatch.build.targets.wheel.hooks.custom] native-modules`` are
compiled in place (``.so`` files next to their ``.py`` files, gitignored) for both the wheel and
the editable install, so an editable checkout runs the compiled code too. The ``.py`` sources
always ship as well: they are the fallback. The build is pure Python, and says why on stderr
(``pip install -v`` shows it), when:

- ``SIPSERVER_PURE_PYTHON`` is set (not ``0``) at build time;
- mypyc (the ``mypy`` package) or setuptools cannot be imported;
- mypyc rejects a module or the C compiler fails or is missing.

A successful build writes ``sipserver/_native.json``: the compiled modules and the SHA-256 of
each source. ``sipserver/__init__.py`` reads it at import time and loads every module from its
``.py`` file when a source has changed since (a stale in-place build) or when
``SIPSERVER_PURE_PYTHON`` is set.

``python hatch_build.py`` compiles in place without pip (``--clean`` removes the build).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

PACKAGE = "sipserver"
MANIFEST = "_native.json"
#: The shared library mypyc links every compiled module into: sipserver/_native__mypyc.*.so.
GROUP = f"{PACKAGE}._native"


def configured_patterns(root: Path) -> list[str]:
    """``native-modules`` of the hook's table in pyproject.toml (``python hatch_build.py``)."""
    with (root / "pyproject.toml").open("rb") as f:
        hooks = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]
    return list(hooks["custom"]["native-modules"])


def pure_requested() -> bool:
    return os.environ.get("SIPSERVER_PURE_PYTHON", "") not in ("", "0")


def source_files(root: Path, patterns: list[str]) -> list[str]:
    """The ``.py`` files the patterns name (relative to root), ``__init__.py`` left pure."""
    files: set[str] = set()
    for pattern in patterns:
        for path in glob.glob(pattern, root_dir=root):
            if path.endswith(".py") and not path.endswith("__init__.py"):
                files.add(path.replace(os.sep, "/"))
    return sorted(files)


def artifacts(root: Path) -> list[str]:
    """Every in-place build output under the package (relative paths)."""
    found = glob.glob(f"{PACKAGE}/**/*.so", root_dir=root, recursive=True)
    found += glob.glob(f"{PACKAGE}/**/*.pyd", root_dir=root, recursive=True)
    manifest = root / PACKAGE / MANIFEST
    if manifest.exists():
        found.append(f"{PACKAGE}/{MANIFEST}")
    return sorted(path.replace(os.sep, "/") for path in found)


def clean(root: Path) -> None:
    for path in artifacts(root):
        (root / path).unlink()


def compile_in_place(root: Path, files: list[str]) -> str | None:
    """Compile ``files`` with mypyc next to their sources. Returns None, or why it did not."""
    clean(root)
    if not files:
        return "no module to compile"
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        return f"mypyc or setuptools missing ({exc})"
    work = Path(tempfile.mkdtemp(prefix="sipserver-mypyc-"))
    cwd = os.getcwd()
    try:
        # mypy must not read the project's [tool.mypy] (its pydantic plugin is not a build
        # dependency): the type check already ran in CI, mypyc only needs the types. Modules
        # the compiled ones import are read for their types only (follow_imports = silent):
        # without the plugin, pydantic's Field(default_factory=Model) would be reported in
        # config.py, which is not compiled (the edge's modules import the config).
        config = work / "mypy.ini"
        config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
        os.chdir(root)
        extensions = mypycify(
            [f"--config-file={config}", *files],
            opt_level="3",
            group_name=GROUP,
            target_dir=str(work / "c"),
        )
        dist = Distribution({"name": PACKAGE, "ext_modules": extensions})
        command: Any = dist.get_command_obj("build_ext")
        command.inplace = True
        command.build_temp = str(work / "temp")
        command.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
    except (Exception, SystemExit) as exc:
        # SystemExit: mypy's type errors end in sys.exit; CompileError: no or a failing compiler.
        clean(root)
        return f"mypyc build failed: {type(exc).__name__}: {exc}"
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    write_manifest(root, files)
    return None


def write_manifest(root: Path, files: list[str]) -> None:
    modules = {}
    for path in files:
        digest = hashlib.sha256((root / path).read_bytes()).hexdigest()
        modules[path[: -len(".py")].replace("/", ".")] = digest
    (root / PACKAGE / MANIFEST).write_text(json.dumps({"modules": modules}, indent=1) + "\n")


def build(root: Path, patterns: list[str], log: Any) -> bool:
    """Compile or explain why not; True when compiled modules were built."""
    if pure_requested():
        clean(root)
        log(f"{PACKAGE}: pure-Python build (SIPSERVER_PURE_PYTHON is set)")
        return False
    started = time.monotonic()
    files = source_files(root, patterns)
    reason = compile_in_place(root, files)
    if reason is not None:
        log(f"{PACKAGE}: pure-Python build: {reason}")
        return False
    took = time.monotonic() - started
    log(f"{PACKAGE}: compiled {len(files)} modules with mypyc in {took:.0f} s")
    return True


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # `python hatch_build.py` outside a build environment
    BuildHookInterface = object  # type: ignore[assignment,misc]


class NativeBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Hatch's ``custom`` hook: mypyc-compiled modules when it can, pure Python otherwise."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        patterns = list(self.config["native-modules"])
        if not build(root, patterns, self.app.display_warning):
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        # The outputs are gitignored: name them so the wheel carries them.
        build_data["artifacts"].extend(f"/{path}" for path in artifacts(root))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    if sys.argv[1:] == ["--clean"]:
        clean(here)
    else:
        compiled = build(here, configured_patterns(here), lambda text: print(text, file=sys.stderr))
        sys.exit(0 if compiled else 1)
