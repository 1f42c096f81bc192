"""The project carries its own design document, true of the code: the README links to it,
nothing points outside the repository, every path (and `path::test`) the document names
exists, every shipped module is in the rooms tables, every hop of a traced call is a function
defined where the document says, and every invariant names the code that enforces it and a
test that attacks it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# `broker/store/`, `tests/broker/protocol/test_frames.py`, `pyproject.toml`: a path in the
# repository (absolute ones, like a process's `/reports/x.md`, are the virtual filesystem's).
PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:py|toml|md|sql|ts|wat))`")
# A path under a top-level directory, quoted or not, optionally naming a test in it.
ROOTED = re.compile(r"(?<![\w./-])((?:broker|sandboxes|tests|ts-runtime|wasm-tools|bench|docs)"
                    r"/[\w./-]*[\w/])(?:::(\w+))?")
# A hop: | 12 | `module path` | `Class.function` | what happens |
HOP = re.compile(r"^\| *\w+ *\| *`([^`]+)` *\| *`([\w.]+)` *\|", re.M)
SHIPPED = ("broker", "sandboxes", "ts-runtime")


def text() -> str:
    return DESIGN.read_text(encoding="utf-8")


def named_paths(doc: str) -> set[str]:
    return set(PATH.findall(doc))


def defines(source: str, name: str) -> bool:
    return re.search(rf"\b(?:def|class|function)\s+{re.escape(name)}\b", source) is not None


def shipped_modules() -> list[str]:
    """Every module of shipped code: Python and TypeScript under `SHIPPED`, build and
    environment directories left out."""
    skip = {".venv", "__pycache__", "_assets", "node_modules"}
    return sorted(str(p.relative_to(ROOT)) for top in SHIPPED for p in (ROOT / top).rglob("*")
                  if p.suffix in (".py", ".ts") and not skip & set(p.parts))


def rooms(doc: str) -> str:
    """Sections 1 and 2: the layers and the rooms tables."""
    return doc.split("## 1. ", 1)[1].split("\n## 3. ", 1)[0]


def invariants(doc: str) -> list[str]:
    section = doc.split("## 6. Invariants", 1)[1].split("\n## ", 1)[0]
    return section.split("\n### ")[1:]


def test_the_scans_find_what_they_look_for() -> None:
    assert named_paths("`broker/`, `a/b.py`, `pyproject.toml`, `/etc/x`, `libos audit`") == {
        "broker/", "a/b.py", "pyproject.toml"}
    assert ROOTED.findall("see tests/a.py::test_b and `broker/x.py`, not /tmp/broker/y") == [
        ("tests/a.py", "test_b"), ("broker/x.py", "")]
    assert HOP.findall("| 3 | `broker/k.py` | `Scheduler._step` | charges |") == [
        ("broker/k.py", "Scheduler._step")]
    assert defines("async def _step(self):", "_step") and not defines("x._step()", "_step")


def test_every_path_the_design_names_exists() -> None:
    doc = text()
    paths = named_paths(doc) | {path for path, _ in ROOTED.findall(doc)}
    assert len(paths) > 10
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def test_every_shipped_module_is_in_the_rooms() -> None:
    """A module added without a line saying its one job makes the design stale: each is named
    by its path in sections 1-2 (a package's `__init__.py` by its directory's)."""
    section = rooms(text())
    named = named_paths(section) | {path for path, _ in ROOTED.findall(section)}
    modules = shipped_modules()
    assert "broker/kernel/kernel.py" in modules and "ts-runtime/main.ts" in modules
    missing = [m for m in modules if m not in named and not (
        m.endswith("/__init__.py") and m.removesuffix("__init__.py") in named)]
    assert missing == []


def test_every_test_the_design_names_exists() -> None:
    named = [(path, test) for path, test in ROOTED.findall(text()) if test]
    assert named
    missing = [f"{path}::{test}" for path, test in named
               if not defines((ROOT / path).read_text(encoding="utf-8"), test)]
    assert missing == []


def test_every_hop_is_a_function_defined_where_the_design_says() -> None:
    hops = HOP.findall(text())
    assert len(hops) > 40
    missing = [f"{path}: {name}" for path, name in hops
               if not all(defines((ROOT / path).read_text(encoding="utf-8"), part)
                          for part in name.split("."))]
    assert missing == []


def test_every_invariant_names_where_it_is_enforced_and_a_test() -> None:
    sections = invariants(text())
    assert len(sections) >= 10
    for section in sections:
        paths = [path for path, _ in ROOTED.findall(section)]
        title = section.splitlines()[0]
        assert any(p.startswith("tests/") and p.endswith(".py") for p in paths), title
        assert any(p.startswith(SHIPPED) for p in paths), title


def test_the_readme_links_the_design_and_nothing_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/DESIGN.md)" in readme
    for document, base in ((readme, ROOT), (text(), DESIGN.parent)):
        assert "../" not in document
        for target in re.findall(r"\]\(([^)#]+)", document):
            assert not re.match(r"\w+:", target) and (base / target).exists(), target


def test_no_source_points_at_a_design_outside_the_repository() -> None:
    outside = "ARCHITECTURE" + ".md"
    sources = [p for top in (*SHIPPED, "tests") for p in (ROOT / top).rglob("*")
               if p.suffix in (".py", ".ts") and ".venv" not in p.parts]
    assert [str(p.relative_to(ROOT)) for p in sources
            if outside in p.read_text(encoding="utf-8")] == []
