"""Shipped code (the `broker` and `sandboxes` packages a wheel installs) never imports the
benchmarks or the tests: not by an import statement, and not by name through importlib or
`__import__`. A wheel carries no tests, and carries the benchmark suites only as files that
`libos bench` runs in a child process (broker/_assets/bench, mapped in by setup.py)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("broker", "sandboxes")
NOT_SHIPPED = ("bench", "tests")


def imported_names(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
        elif isinstance(node, ast.Call) and _imports_by_name(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value


def _imports_by_name(func: ast.expr) -> bool:
    """`__import__(...)`, or `importlib.import_module(...)` however it was imported."""
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def test_the_scan_sees_every_kind_of_import() -> None:
    tree = ast.parse("import bench\nfrom tests.x import y\n"
                     "importlib.import_module('bench.kernel_bench')\n__import__('tests')\n")
    assert list(imported_names(tree)) == ["bench", "tests.x", "bench.kernel_bench", "tests"]


@pytest.mark.parametrize("package", SHIPPED)
def test_shipped_code_imports_no_benchmark_and_no_test(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = [f"{path.relative_to(ROOT)} imports {name}"
             for path in files
             for name in imported_names(ast.parse(path.read_text(encoding="utf-8")))
             if name.split(".")[0] in NOT_SHIPPED]
    assert not found
