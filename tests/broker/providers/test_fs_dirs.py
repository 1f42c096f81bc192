"""The rooted provider's directory descriptors (`broker/providers/fs_dirs.py`): every way out
of an operation, a failure of the open, of the block that holds the descriptor, or of its
own check, closes every descriptor it opened and says the typed error; both ways of opening
(openat2 and the component walk)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.caps import Capability, CapabilityTable, CheckedPath, normalize
from broker.errors import Conflict, InvalidArgument, LibosError, LimitExceeded, NotFound
from broker.providers import fs as fs_module
from broker.providers.fs import LocalFs

pytestmark = pytest.mark.usefixtures("fs_walk")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def checked(fs: LocalFs, right: str, path: str) -> CheckedPath:
    table = CapabilityTable(1)
    table.add(Capability("fs", "/**", frozenset({"read", "write"}), owner=1))
    proof = table.check_path(right, normalize(path), root=(), locate=fs.locate,
                             identify=fs.identify, now=0.0).proof
    assert isinstance(proof, CheckedPath)
    return proof


def swap_for_link(host: Path) -> None:
    """`host`, a directory, replaced by a symlink to a copy of it (after a check saw it)."""
    host.rename(host.with_name("moved"))
    host.symlink_to("moved")


@pytest.fixture
def tree(tmp_path: Path) -> LocalFs:
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("f")
    (root / "d" / "g.txt").write_text("g")
    (root / "neighbour.txt").write_text("ok")
    return LocalFs(root)


# (what is done, the error it must end in); each is given the provider and its root.
FAILURES: dict[str, tuple[Callable[[LocalFs, Path], Any], type[LibosError]]] = {
    "read under a missing directory": (
        lambda fs, root: fs.read(checked(fs, "read", "/nope/f.txt"), 0, None), NotFound),
    "read a directory": (
        lambda fs, root: fs.read(checked(fs, "read", "/d/sub"), 0, None), InvalidArgument),
    "exclusive write on a file (raised inside the block)": (
        lambda fs, root: fs.write(checked(fs, "write", "/d/f.txt"), b"x", append=False,
                                  exclusive=True), Conflict),
    "write the root": (
        lambda fs, root: fs.write(checked(fs, "write", "/"), b"x", append=False,
                                  exclusive=False), InvalidArgument),
    "mkdir over a file (raised inside the block)": (
        lambda fs, root: fs.mkdir(checked(fs, "write", "/d/f.txt"), parents=True),
        Conflict),
    "list past the bound (raised inside the block)": (
        lambda fs, root: fs.listdir(checked(fs, "read", "/d")), LimitExceeded),
    "remove a file changed after the check": (
        lambda fs, root: _after(fs.remove, checked(fs, "write", "/d/g.txt"),
                                lambda: _replace(root / "d" / "g.txt"), recursive=False),
        Conflict),
    "write under a directory swapped for a symlink after the check": (
        lambda fs, root: _after(fs.write, checked(fs, "write", "/d/sub/new.txt"),
                                lambda: swap_for_link(root / "d" / "sub"), b"x",
                                append=False, exclusive=False), Conflict),
}


def _replace(host: Path) -> None:
    """Another file (another inode, made while the first still holds its own) at `host`."""
    other = host.with_name("other")
    other.write_text("another file")
    other.replace(host)


def _after(op: Callable[..., Any], proof: CheckedPath, change: Callable[[], None],
           *args: Any, **kwargs: Any) -> Any:
    change()
    return op(proof, *args, **kwargs)


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_failure_closes_what_it_opened(tree: LocalFs, case: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs_module, "MAX_LIST_ENTRIES", 1)
    action, error = FAILURES[case]
    root = Path(tree.root)
    tree.read(checked(tree, "read", "/neighbour.txt"), 0, None)  # pins /proc/self/fd once
    before = open_descriptors()
    for _ in range(1 if "after the check" in case else 3):  # (a change is made once)
        with pytest.raises(error):
            action(tree, root)
    assert open_descriptors() == before, case
    assert tree.read(checked(tree, "read", "/neighbour.txt"), 0, None) == b"ok"
    assert open_descriptors() == before
