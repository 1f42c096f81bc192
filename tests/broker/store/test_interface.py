"""The store interface is the seam backends plug into: `SQLiteStore` and `PostgresStore` each
implement every method of `Store` with the same parameters, and the code above the store asks
nothing of a store that `Store` does not name."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from broker.store import SQLiteStore, Store
from broker.store.postgres import PostgresStore

ROOT = Path(__file__).resolve().parents[3]
# Names under which shipped code holds a store (`kernel.store`, `ctx.store`, `self._store`...).
STORE_NAMES = {"store", "_store"}


def interface_members() -> list[str]:
    return sorted(name for name, value in vars(Store).items()
                  if not name.startswith("_") and (callable(value) or isinstance(value, property)))


def _parameters(function: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("backend", [SQLiteStore, PostgresStore], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", interface_members())
def test_each_backend_implements_the_interface(name: str, backend: type) -> None:
    declared = inspect.getattr_static(Store, name)
    implemented = inspect.getattr_static(backend, name, None)
    assert implemented is not None, f"{backend.__name__} has no {name}"
    if isinstance(declared, property):
        assert isinstance(implemented, property), f"{backend.__name__}.{name} is not a property"
        return
    assert _parameters(implemented) == _parameters(declared), name


def store_uses_above_the_store() -> dict[str, set[str]]:
    """Every `<store>.<attribute>` in broker/ outside broker/store, with where it is used."""
    uses: dict[str, set[str]] = {}
    for path in sorted((ROOT / "broker").rglob("*.py")):
        if (ROOT / "broker" / "store") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            name = (holder.id if isinstance(holder, ast.Name)
                    else holder.attr if isinstance(holder, ast.Attribute) else None)
            if name in STORE_NAMES:
                uses.setdefault(node.attr, set()).add(str(path.relative_to(ROOT)))
    return uses


def test_code_above_the_store_uses_only_the_interface() -> None:
    uses = store_uses_above_the_store()
    assert {"append_audit", "get_process", "audit_problems"} <= set(uses)  # the scan sees them
    outside = {name: sorted(where) for name, where in uses.items()
               if name not in interface_members()}
    assert not outside, f"used of a store but not in broker.store.interface.Store: {outside}"
