"""The package's import graph: every module imports on its own, and no two
modules of aiozcrx (or two scripts of benchmarks/) import each other, directly or
round a longer circle.

The graph counts every import statement, wherever it stands: at the top, inside
a function (a lazy import is still a dependency), and under ``if TYPE_CHECKING:``
(a type is one too). An import of a name from a package (``from .. import
_kernel``) is an edge to the submodule where one of that name exists, else to the
package. A circle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "aiozcrx"


def package_modules(root: Path, package: str) -> dict[str, Path | None]:
    """Module name -> its file (None: a compiled extension module, a leaf)."""
    mods: dict[str, Path | None] = {}
    for path in sorted((root / package).rglob("*")):
        rel = path.relative_to(root)
        if path.suffix == ".py":
            name = ".".join(rel.with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
        else:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if path.name.endswith(suffix):
                    mods[".".join(rel.parts)[: -len(suffix)]] = None
    return mods


def script_modules(folder: Path) -> dict[str, Path | None]:
    """The scripts of a folder that puts itself on sys.path (benchmarks/): each
    imports the others by bare name."""
    return {p.stem: p for p in sorted(folder.glob("*.py"))}


def imports_of(name: str, path: Path, mods: dict[str, Path | None]) -> set[str]:
    """The modules of ``mods`` that module ``name`` imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in mods else module
                       for alias in node.names]
        for target in targets:
            while target and target not in mods:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(mods: dict[str, Path | None]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {name: imports_of(name, path, mods) for name, path in mods.items() if path is not None}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_script_finds_a_circle(tmp_path):
    # the checker itself: a circle of three, one through a lazy import and one
    # through a TYPE_CHECKING import, and a module that only imports
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    (pkg / "d.py").write_text("from .a import b\nimport pkg.c\n")
    assert circles(package_modules(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("x = 1\n")
    assert circles(package_modules(tmp_path, "pkg")) == []


def test_no_import_circle_in_the_package():
    mods = package_modules(ROOT, PACKAGE)
    assert f"{PACKAGE}.receiver" in mods and f"{PACKAGE}.transport" in mods  # it read the tree
    assert circles(mods) == []


def test_no_import_circle_among_the_benchmarks():
    mods = script_modules(ROOT / "benchmarks")
    assert "run" in mods and "records" in mods
    assert circles(mods) == []


# aiozcrx.__main__ runs the command line when imported: that is what it is for
ALONE = sorted(name for name, path in package_modules(ROOT, PACKAGE).items()
               if path is not None and name != f"{PACKAGE}.__main__")


@pytest.mark.parametrize("module", ALONE)
def test_module_imports_alone(module):
    """Each module imports in a fresh interpreter, first of the package: no
    import order hides a circle or a missing import."""
    if module == f"{PACKAGE}.anyio._trio":
        pytest.importorskip("trio", reason="aiozcrx.anyio._trio needs trio (the [trio] extra)")
    r = subprocess.run([sys.executable, "-c", f"import importlib; importlib.import_module({module!r})"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, f"import {module} alone failed:\n{r.stderr}"
