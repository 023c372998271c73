"""The mypyc build of hatch_build.py: compiled modules load, SIPSERVER_PURE_PYTHON=1 and a stale
build load the .py sources instead, and a pure build removes what an earlier build left."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import sipserver
import sipserver.registrar.registrar
import sipserver.sip.message

PACKAGE = Path(sipserver.__file__).resolve().parent
ROOT = PACKAGE.parent
PURE = os.environ.get("SIPSERVER_PURE_PYTHON", "") not in ("", "0")
PROBE = (
    "import sys, sipserver.sip.message as m, sipserver.registrar.registrar as r;"
    "print(m.__file__); print(r.__file__); print(any('mypyc' in k for k in sys.modules))"
)

needs_build = pytest.mark.skipif(
    not (PACKAGE / "_native.json").exists(),
    reason="no compiled build here (python hatch_build.py or pip install -e . makes one)",
)


def probe(env: dict[str, str], path: Path = ROOT) -> tuple[str, str, bool, str]:
    """Module files and whether the mypyc library loaded, in a fresh interpreter."""
    env = {**env, "PYTHONPATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", PROBE],
        env=env,
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    )
    message, registrar, native = done.stdout.split()
    return message, registrar, native == "True", done.stderr


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SIPSERVER_PURE_PYTHON"}


@needs_build
def test_this_process_runs_the_build_it_was_asked_for() -> None:
    for module in (sipserver.sip.message, sipserver.registrar.registrar):
        assert module.__file__ is not None
        assert module.__file__.endswith(".py") is PURE, module.__file__


@needs_build
def test_compiled_modules_load_from_extension_modules() -> None:
    message, registrar, native, _ = probe(clean_env())
    assert message.endswith(".so") and registrar.endswith(".so")
    assert native


@needs_build
def test_pure_python_env_loads_the_sources_even_next_to_the_build() -> None:
    message, registrar, native, _ = probe({**clean_env(), "SIPSERVER_PURE_PYTHON": "1"})
    assert message == str(PACKAGE / "sip" / "message.py")
    assert registrar == str(PACKAGE / "registrar" / "registrar.py")
    assert not native
    # "0" means compiled, like unset.
    assert probe({**clean_env(), "SIPSERVER_PURE_PYTHON": "0"})[0].endswith(".so")


def copy_build(tmp_path: Path) -> Path:
    """The package's sip/ and registrar/ (and what they import) with the build, in a tree of
    their own."""
    target = tmp_path / "sipserver"
    target.mkdir()
    for name in os.listdir(PACKAGE):
        # counters: a compiled top-level module
        if name in ("__init__.py", "data_dir.py") or name.startswith(("_native", "counters.")):
            shutil.copy2(PACKAGE / name, target / name)
    for sub in ("sip", "registrar", "edge"):  # every package with a compiled module
        shutil.copytree(PACKAGE / sub, target / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@needs_build
def test_a_source_changed_after_the_build_loads_every_module_from_source(
    tmp_path: Path,
) -> None:
    target = copy_build(tmp_path)
    assert probe(clean_env(), tmp_path)[0].endswith(".so")
    with (target / "sip" / "uri.py").open("a") as f:
        f.write("# edited after the build\n")
    message, registrar, native, stderr = probe(clean_env(), tmp_path)
    assert message.endswith("message.py") and registrar.endswith("registrar.py")
    assert not native
    assert "sipserver.sip.uri changed since the mypyc build" in stderr


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pure_build_removes_an_earlier_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = load_hook()
    package = tmp_path / "sipserver"
    (package / "sip").mkdir(parents=True)
    (package / "sip" / "message.py").write_text("")
    (package / "sip" / "message.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (package / "_native__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (package / "_native.json").write_text(json.dumps({"modules": {}}))
    said: list[str] = []
    monkeypatch.setenv("SIPSERVER_PURE_PYTHON", "1")
    assert hook.build(tmp_path, ["sipserver/sip/*.py"], said.append) is False
    assert sorted(p.name for p in package.rglob("*") if p.is_file()) == ["message.py"]
    assert said == ["sipserver: pure-Python build (SIPSERVER_PURE_PYTHON is set)"]


def test_the_compiled_modules_are_the_configured_ones() -> None:
    hook = load_hook()
    files = hook.source_files(ROOT, hook.configured_patterns(ROOT))
    assert "sipserver/sip/message.py" in files
    assert "sipserver/registrar/registrar.py" in files
    # The edge's REGISTER path (bench/README.md, regfast): its globals stay patchable (tests
    # replace registration.log), no test subclasses its classes.
    assert {"sipserver/edge/registration.py", "sipserver/edge/router.py"} <= set(files)
    assert not any(f.endswith("__init__.py") for f in files)
    # The SQLite store is subclassed (tests) and I/O-bound: it stays pure.
    assert "sipserver/registrar/bindings.py" not in files
    manifest = PACKAGE / "_native.json"
    if manifest.exists():
        built = json.loads(manifest.read_text())["modules"]
        assert sorted(built) == sorted(f[: -len(".py")].replace("/", ".") for f in files)
