"""The project carries its own design document: the README links to it, nothing points
outside the repository, and every path the document names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# `broker/store/`, `tests/broker/protocol/test_frames.py`, `pyproject.toml`: a path in the
# repository (absolute ones, like a process's `/reports/x.md`, are the virtual filesystem's).
PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:py|toml|md|sql|ts|wat))`")


def named_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def test_the_scan_finds_paths() -> None:
    assert named_paths("`broker/`, `a/b.py`, `pyproject.toml`, `/etc/x`, `libos audit`") == {
        "broker/", "a/b.py", "pyproject.toml"}


def test_every_path_the_design_names_exists() -> None:
    paths = named_paths(DESIGN.read_text(encoding="utf-8"))
    assert len(paths) > 10
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def test_the_readme_links_the_design_and_nothing_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/DESIGN.md)" in readme
    for document in (readme, DESIGN.read_text(encoding="utf-8")):
        assert "../" not in document
