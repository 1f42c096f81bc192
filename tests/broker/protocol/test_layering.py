"""broker/protocol is sans-IO: it may import the standard library, msgpack, broker.errors and
itself, never trio, a sandbox, or any other part of the broker."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import broker.protocol

PACKAGE = Path(broker.protocol.__file__).parent
ALLOWED = {"msgpack", "broker.errors"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_protocol_imports_only_downward() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            ok = (
                name in ALLOWED
                or name.startswith("broker.protocol")
                or name == "__future__"
                or top in sys.stdlib_module_names
            )
            assert ok, f"{path.name} imports {name}"
