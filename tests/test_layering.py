"""Layers import downward only (docs/DESIGN.md): cli → kernel → syscalls → providers / caps /
store / sandboxes → protocol / errors. A sandbox driver never reaches a provider, the store or
the capability layer; a primitive never imports the kernel; the planner never imports a
provider or the store; and no module of `broker/` or `sandboxes/` is part of an import
circle, type-only imports included. (That shipped code never imports `bench` or `tests` is
`test_shipped_imports.py`.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("broker", "sandboxes")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "broker/caps": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                    "sandboxes", "trio", "broker.cli"),
    "broker/store": ("broker.kernel", "broker.syscalls", "broker.providers", "sandboxes",
                     "broker.cli"),
    "broker/providers": ("broker.kernel", "broker.syscalls", "broker.store", "sandboxes",
                         "broker.cli"),
    "broker/syscalls": ("broker.kernel", "broker.cli"),
    "broker/kernel": ("broker.cli", "broker.demo", "broker.demo_story"),
    # Schema compilation sits beside the errors, at the bottom: everything above may use it.
    "broker/schema": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                         "broker.caps", "sandboxes", "trio", "broker.cli"),
    "sandboxes": ("broker.kernel", "broker.syscalls", "broker.store", "broker.providers",
                  "broker.caps", "broker.cli"),
    # The planner decides; it never touches the world or the records itself.
    "broker/planner": ("broker.providers", "broker.store", "broker.kernel", "broker.syscalls",
                       "sandboxes", "broker.cli"),
    # The answer rules and stored requests: the CLI and the page use them without a kernel.
    "broker/approvals": ("broker.kernel", "broker.syscalls", "broker.providers", "sandboxes",
                         "broker.planner", "broker.cli", "trio"),
    "broker/lifecycle.py": ("broker.", "sandboxes", "trio"),
}

# Top to bottom. A module may import its own layer or a lower one, never a higher one; every
# module of shipped code is in a layer (a new top-level module is placed on purpose). The
# package `broker` itself is the embedding API, at the top.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("=broker", "broker.cli", "broker.demo", "broker.demo_story", "broker.run",
             "broker.mcp_server", "broker.mcp_forms", "broker.mcp_refusal",
             "broker.mcp_unreadable", "broker.mcp_writable", "broker.render", "broker.render_long",
             "broker.benchmarks",
             "broker.kernel_thread", "broker.adapters",
             "broker.cli_control", "broker.cli_entry", "broker.cli_errors", "broker.cli_keys",
             "broker.cli_parser", "broker.cli_prestart", "broker.command_trio",
             "broker.progress",
             "broker.waits",
             "broker.resume_all", "broker.serve")),
    ("kernel", ("broker.kernel",)),
    ("syscalls", ("broker.syscalls", "broker.approvals")),
    ("providers/caps/store/sandboxes", ("broker.providers", "broker.caps", "broker.store",
                                        "sandboxes", "broker.planner")),
    ("protocol/errors", ("broker.protocol", "broker.errors", "broker.schema", "broker.inert",
                         "broker.lifecycle", "broker.assets", "broker.lru", "broker.json_text",
                         "broker.json_tree")),
)

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
                assert not within(name, banned), f"{path.relative_to(ROOT)} imports {name}"


def within(name: str, prefix: str) -> bool:
    """`name` is `prefix` or below it (`prefix` ending in "." is a package's contents only;
    one starting with "=" is that exact module)."""
    if prefix.startswith("="):
        return name == prefix[1:]
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


# -- the whole graph ---------------------------------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {module_name(p): p for top in SHIPPED for p in sorted((ROOT / top).rglob("*.py"))}
    assert "broker.kernel.kernel" in found and "sandboxes.base" in found
    return found


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module `name` imports: at the top, inside functions and under `TYPE_CHECKING`
    alike; `from package import module` is an import of that module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            subs = [f"{base}.{alias.name}" for alias in node.names]
            named = [s for s in subs if s in modules()]
            yield from named
            if len(named) < len(subs):
                yield base


@cache
def graph() -> dict[str, set[str]]:
    return {name: {i for i in imported(name, path) if i != name}
            for name, path in modules().items()}


def internal_edges() -> Iterator[tuple[str, str]]:
    for name, targets in graph().items():
        for target in sorted(targets):
            if target in modules():
                yield name, target


def layer_of(name: str) -> int:
    best = max(((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
                for prefix in prefixes if within(name, prefix)), default=None)
    assert best is not None, f"{name} is in no layer: place it in LAYERS"
    return best[1]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(edges.get(node, ())):
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_import_circle_in_shipped_code() -> None:
    edges: dict[str, set[str]] = {}
    for name, target in internal_edges():
        edges.setdefault(name, set()).add(target)
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above can fail: a circle of three, beside an acyclic branch, is found."""
    edges = {"a": {"b", "x"}, "b": {"c"}, "c": {"a"}, "x": {"y"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    del edges["c"]
    assert find_cycle(edges) is None


def test_every_import_goes_to_the_same_layer_or_a_lower_one() -> None:
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
              f"({LAYERS[layer_of(target)][0]})"
              for name, target in internal_edges()
              if layer_of(target) < layer_of(name)]
    assert upward == []


def test_no_room_of_the_kernel_imports_the_kernel() -> None:
    """The rooms depend on the narrow interfaces of `broker.kernel.ports`; only the package's
    `__init__` re-exports `Kernel`."""
    offenders = [name for name, target in internal_edges()
                 if name.startswith("broker.kernel.") and target in ("broker.kernel",
                                                                     "broker.kernel.kernel")]
    assert offenders == []
