"""The sandboxes package in rooms a newcomer can find (sizes: tests/test_module_sizes.py): no import
circle among them (imports inside functions and type-only ones count too), and the Pyodide
driver extends the Deno one only through the hooks the Deno driver documents."""

from __future__ import annotations

import ast
from pathlib import Path

from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import PyodideSandbox

PACKAGE = Path(__file__).resolve().parents[2] / "sandboxes"


def modules() -> dict[str, Path]:
    return {f"sandboxes.{p.stem}": p for p in sorted(PACKAGE.glob("*.py"))
            if p.stem != "__init__"}


def sandbox_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in modules()}


def test_no_import_circle_among_the_sandbox_modules() -> None:
    graph = {name: sandbox_imports(path) - {name} for name, path in modules().items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import circle: " + " -> ".join((*path, name))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_the_pyodide_driver_extends_the_deno_one_only_through_documented_hooks() -> None:
    overridden = {name for name in vars(PyodideSandbox)
                  if hasattr(DenoSandbox, name) and not name.startswith("__")}
    assert {"argv", "bound_key", "exit_reason"} <= overridden
    doc = DenoSandbox.__doc__ or ""
    for name in overridden:
        assert not name.startswith("_"), f"PyodideSandbox overrides private {name}"
        assert f"`{name}" in doc, f"{name} is not a hook DenoSandbox documents"
