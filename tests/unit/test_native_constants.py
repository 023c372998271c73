"""Module constants of the compiled modules are declared ``Final``.

mypyc reads a ``Final`` module name from a C static; any other module name is a lookup in the
module's globals dict (and a type check) on every use. In the parser's per-header-line loop and
the router's per-message path those lookups were ~5% of a registration's instructions
(callgrind, bench/register_inproc.py). This test finds a module-level assignment in a module
that pyproject.toml compiles that is neither ``Final`` nor a type alias, so a new constant does
not quietly bring the lookups back.

Names tests replace with ``monkeypatch.setattr`` must stay plain (a compiled module would not
see the replacement of a ``Final``): they are listed in ``PLAIN``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.unit.test_native_build import ROOT, load_hook

PLAIN = {"__all__", "log"}
"""Module names that stay plain: ``__all__`` is read by Python, and ``log`` is replaced by
tests (test_router's log recorder)."""


def _compiled_sources() -> list[Path]:
    """The files hatch_build.py compiles, as it finds them."""
    hook = load_hook()
    return [ROOT / path for path in hook.source_files(ROOT, hook.configured_patterns(ROOT))]


def _is_type_alias(value: ast.expr) -> bool:
    # X = tuple[int, bytes], X = Callable[[str], Hashable], X = A | B (names and subscripts).
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
        return _is_type_alias(value.left) and _is_type_alias(value.right)
    return isinstance(value, ast.Subscript | ast.Name) or (
        isinstance(value, ast.Constant) and value.value is None
    )


def _plain_constants(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Name)
                    and target.id not in PLAIN
                    and not _is_type_alias(node.value)
                ):
                    found.append(f"{target.id} (line {node.lineno})")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = ast.unparse(node.annotation)
            if node.target.id not in PLAIN and not annotation.startswith(("Final", "TypeAlias")):
                found.append(f"{node.target.id} (line {node.lineno})")
    return found


SOURCES = _compiled_sources()


def test_the_compiled_modules_are_found() -> None:
    names = {path.name for path in SOURCES}
    assert {"message.py", "router.py", "auth.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_constants_are_final(path: Path) -> None:
    assert _plain_constants(path) == [], "declare these Final (or list them in PLAIN)"


def test_the_check_finds_a_plain_constant(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import Final\n"
        "A: Final = 1\n"
        "B = {'x': 1}\n"
        "C: dict[str, int] = {}\n"
        "Alias = tuple[int, bytes]\n"
        "Either = Alias | None\n"
        "D = {'y': 2} | B\n"
        "log = object()\n"
    )
    assert _plain_constants(source) == ["B (line 3)", "C (line 4)", "D (line 7)"]
