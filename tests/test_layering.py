"""Layers import downward only (ARCHITECTURE.md): cli → kernel → syscalls → providers / caps /
store / sandboxes → protocol / errors. A sandbox driver never reaches a provider, the store or
the capability layer; a primitive never imports the kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "broker/caps": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                    "sandboxes", "trio", "broker.cli"),
    "broker/store": ("broker.kernel", "broker.syscalls", "broker.providers", "sandboxes",
                     "broker.cli"),
    "broker/providers": ("broker.kernel", "broker.syscalls", "broker.store", "sandboxes",
                         "broker.cli"),
    "broker/syscalls": ("broker.kernel", "broker.cli"),
    "broker/kernel": ("broker.cli", "broker.demo"),
    # Schema compilation sits beside the errors, at the bottom: everything above may use it.
    "broker/schema": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                         "broker.caps", "sandboxes", "trio", "broker.cli"),
    "sandboxes": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                  "broker.caps", "broker.cli"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downward(layer: str) -> None:
    where = ROOT / layer
    files = [where] if where.is_file() else sorted(where.rglob("*.py"))
    assert files
    for path in files:
        for name in imports(path):
            for banned in FORBIDDEN[layer]:
                assert not (name == banned or name.startswith(banned + ".")), (
                    f"{path.relative_to(ROOT)} imports {name}")
