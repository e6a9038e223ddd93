"""The package's import graph: every module imports on its own, no two modules import each other.

A cycle that only closes inside a function (encoder.py and onnx_encoder.py once did this) imports
fine in either order, so the graph is also read from the source, lazy imports included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "consentmatch"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports anywhere (in functions too), bar type-checking-only ones."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never runs: annotations only
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                parts = package.split(".")
                base = parts[: len(parts) - child.level + 1] if child.level else []
                target = ".".join([*base, child.module] if child.module else base)
                # `from . import vision` names a module; `from .errors import X` names a module's attribute
                found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {module for module in found if module in MODULES and module != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                walk(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return cycles


def test_the_package_has_the_modules_this_test_reads() -> None:
    assert {"consentmatch", "consentmatch.vision", "consentmatch.vision.types", "consentmatch.evaluate"} <= set(MODULES)


def test_no_two_modules_import_each_other() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert "consentmatch.vision.onnx" in graph["consentmatch.vision"]  # the reader sees lazy imports
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_closed_inside_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    # One interpreter, the package forgotten before each module: each is imported as the first of
    # the package's modules (third-party libraries stay loaded, which only saves time).
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'consentmatch' or m.startswith('consentmatch.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *MODULES], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("module", ["consentmatch.vision.types", "consentmatch.vision"])
def test_the_vision_types_load_no_image_or_model_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in ('PIL', 'dlib', 'onnxruntime', 'onnx', 'numpy', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
