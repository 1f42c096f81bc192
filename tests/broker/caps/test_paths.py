"""Path attacks through the real kernel and `LocalFs`: `..`, absolute paths, `//` and `.`,
NUL, trailing slashes, empty paths, symlinks (inside, out of the root, loops, dangling) and a
symlink swapped in between the check and the use (TOCTOU).

Every process call goes through `kernel.call_tool` (builtin tool → syscall → dispatch), and
every attack checks the typed error and the audit record it left. Symlinks are made directly
in the kernel's fs root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.caps import VirtualPath, normalize
from broker.errors import Conflict, InvalidArgument, LibosError, NotCapable, NotFound
from tests.broker.syscalls.path_attacks import after_the_check
from tests.conftest import open_image

OUTSIDE_TEXT = "OUTSIDE THE ROOT"


class Tree:
    """A kernel, its fs root, a directory beside the root that no process may reach, and
    helpers to call tools and read the audit."""

    def __init__(self, kernel: Kernel, root: Path, outside: Path) -> None:
        self.kernel = kernel
        self.root = root
        self.outside = outside

    def spawn(self, *caps: Any, root: str = "/") -> int:
        return self.kernel.spawn("agent", caps=list(caps), root=root)

    async def call(self, pid: int, tool: str, **args: Any) -> Any:
        return await self.kernel.call_tool(pid, tool, args)

    async def fails(self, error: type[LibosError], pid: int, tool: str,
                    **args: Any) -> dict[str, Any]:
        """Call, expect `error`, and return the audit record of the failed syscall."""
        before = len(self.kernel.audit(pid))
        with pytest.raises(error):
            await self.call(pid, tool, **args)
        new = self.kernel.audit(pid)[before:]
        failed = [r for r in new if r["syscall"] != "tool.call" and "error" in r["detail"]]
        assert failed, f"no audit record for the failed call: {new}"
        assert failed[-1]["detail"]["error"] == error.code
        return failed[-1]

    def link(self, at: str, target: str | Path) -> Path:
        path = self.root / at
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(str(target), path)
        return path

    def outside_files(self) -> set[str]:
        return {str(p.relative_to(self.outside)) for p in self.outside.rglob("*")}


@pytest.fixture
async def tree(kernel: Kernel) -> Tree:
    await open_image(kernel)
    root = Path(kernel.fs.root)
    outside = root.parent / "outside"
    for path, text in [("data/a/b/c.txt", "abc"), ("data/real.txt", "real"),
                       ("private/s.txt", "private"), ("sub/x", "inner"), ("x", "top")]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for path in ("secret.txt", "b/c.txt"):
        (outside / path).parent.mkdir(parents=True, exist_ok=True)
        (outside / path).write_text(OUTSIDE_TEXT)
    return Tree(kernel, root, outside)


def assert_denied(record: dict[str, Any]) -> None:
    assert record["phase"] == "denied" and record["detail"]["error"] == "NOT_CAPABLE"


# -- lexical: .., absolute, //, ., NUL, trailing slash, empty -----------------------------------


async def test_dotdot_inside_the_root(tree: Tree) -> None:
    pid = tree.spawn("fs:/data/**:read")
    for path in ("/data/a/b/../b/./c.txt", "/data/a/../a/b/c.txt", "/x/../data/a/b/c.txt"):
        assert await tree.call(pid, "read_file", path=path) == "abc"
    assert await tree.call(pid, "change_dir", path="/data/a/b") == "/data/a/b"
    for path in ("c.txt", "../b/c.txt", "../../a/b/c.txt", "./../../../data/a/b/c.txt"):
        assert await tree.call(pid, "read_file", path=path) == "abc"
    intents = [r for r in tree.kernel.audit(pid)
               if r["phase"] == "intent+outcome" and r["syscall"] == "fs.read"]
    assert {r["resource"] for r in intents} == {"/data/a/b/c.txt"}


@pytest.mark.parametrize("path", [
    "/..", "/../outside/secret.txt", "/data/../../outside/secret.txt",
    "../outside/secret.txt", "/data/a/b/../../../../etc/passwd", "/../../../../../../etc/passwd",
])
async def test_dotdot_above_the_root_is_not_capable(tree: Tree, path: str) -> None:
    pid = tree.spawn("fs:/**:read")  # even a process that may read the whole tree
    assert_denied(await tree.fails(NotCapable, pid, "read_file", path=path))
    assert not [r for r in tree.kernel.audit(pid) if r["phase"] == "intent+outcome"
                and r["syscall"] == "fs.read"]


async def test_dotdot_above_a_process_root(tree: Tree) -> None:
    """With root /sub, "/.." is an escape even though the fs root has a file there."""
    pid = tree.spawn("fs:/**:read", root="/sub")
    assert await tree.call(pid, "read_file", path="/x") == "inner"
    for path in ("/../x", "../x", "/x/../../x"):
        assert_denied(await tree.fails(NotCapable, pid, "read_file", path=path))
    assert await tree.call(pid, "change_dir", path="/") == "/"
    assert_denied(await tree.fails(NotCapable, pid, "change_dir", path=".."))


async def test_absolute_paths_are_rooted_in_the_process_root(tree: Tree) -> None:
    pid = tree.spawn("fs:/sub/**:read", root="/sub")
    assert await tree.call(pid, "read_file", path="/x") == "inner"  # <fs root>/sub/x
    assert [e["name"] for e in await tree.call(pid, "list_dir", path="/")] == ["x"]
    assert Path("/etc/passwd").exists()
    record = await tree.fails(NotFound, pid, "read_file", path="/etc/passwd")
    assert record["resource"] == "/sub/etc/passwd"  # never the host's /etc/passwd
    # a process at the top of the tree reaches <fs root>/etc, not the host's /etc, either
    top = tree.spawn("fs:/**:read")
    assert await tree.call(top, "read_file", path="/x") == "top"
    record = await tree.fails(NotFound, top, "read_file", path="/etc/passwd")
    assert record["resource"] == "/etc/passwd"


async def test_double_slash_and_dot_fold(tree: Tree) -> None:
    pid = tree.spawn("fs:/data/**:read")
    for path in ("//data//a/./b/.//c.txt", "/./data/a/b/c.txt", "///data/a/b///c.txt",
                 "data/./a/b/c.txt"):
        assert await tree.call(pid, "read_file", path=path) == "abc"
    intents = {r["resource"] for r in tree.kernel.audit(pid) if r["phase"] == "intent+outcome"
               and r["syscall"] == "fs.read"}
    assert intents == {"/data/a/b/c.txt"}
    # folding happens before the check: // and . cannot smuggle a path past a scope
    for path in ("/data//../private/s.txt", "/data/./../private/s.txt", "//private/s.txt"):
        assert_denied(await tree.fails(NotCapable, pid, "read_file", path=path))
    assert normalize("//a//./b/") == VirtualPath(("a", "b"), want_dir=True)


@pytest.mark.parametrize("path", ["/data/real.txt\x00", "/data/\x00/real.txt", "\x00",
                                  "/data/real.txt\x00/../../../etc/passwd"])
async def test_nul_byte_is_invalid(tree: Tree, path: str) -> None:
    pid = tree.spawn("fs:/**:read,write")
    record = await tree.fails(InvalidArgument, pid, "read_file", path=path)
    assert record["phase"] == "rejected" and record["syscall"] == "fs.read"
    await tree.fails(InvalidArgument, pid, "write_file", path=path, data="x")


async def test_trailing_slash_on_a_file_is_invalid(tree: Tree) -> None:
    pid = tree.spawn("fs:/data/**:read,write")
    file = tree.root / "data" / "real.txt"
    for tool, args in [("read_file", {}), ("write_file", {"data": "clobbered"}),
                       ("stat", {}), ("list_dir", {}), ("change_dir", {}),
                       ("remove", {})]:
        await tree.fails(InvalidArgument, pid, tool, path="/data/real.txt/", **args)
    assert file.read_text() == "real"
    await tree.fails(InvalidArgument, pid, "write_file", path="/data/new.txt/", data="x")
    assert not (tree.root / "data" / "new.txt").exists()
    # on a directory a trailing slash is fine where a directory is meant
    assert await tree.call(pid, "stat", path="/data/a/")
    assert await tree.call(pid, "list_dir", path="/data/a/")
    await tree.fails(InvalidArgument, pid, "read_file", path="/data/a/")


async def test_empty_path_is_invalid(tree: Tree) -> None:
    pid = tree.spawn("fs:/**:read,write")
    for tool in ("read_file", "stat", "list_dir", "remove"):
        with pytest.raises(InvalidArgument):
            await tree.call(pid, tool, path="")
    # straight at the syscall (no tool schema in front): rejected and audited
    proc = tree.kernel.process(pid)
    for syscall in ("fs.read", "fs.write", "fs.remove"):
        args: dict[str, Any] = {"path": ""}
        if syscall == "fs.write":
            args["data"] = "x"
        with pytest.raises(InvalidArgument):
            await tree.kernel.dispatcher.run(proc, None, syscall, args)
        record = tree.kernel.audit(pid)[-1]
        assert (record["phase"], record["syscall"]) == ("rejected", syscall)
    for bad in ("", None, 5):
        with pytest.raises(InvalidArgument):
            normalize(bad)


# -- symlinks -------------------------------------------------------------------------------------


async def test_symlink_inside_the_root_to_an_allowed_file(tree: Tree) -> None:
    tree.link("data/rel.txt", "real.txt")
    tree.link("data/abs.txt", tree.root / "data" / "real.txt")  # absolute, into the root
    tree.link("data/dir", "a/b")
    tree.link("data/chain1", "chain2")
    tree.link("data/chain2", "a/../real.txt")
    pid = tree.spawn("fs:/data/**:read,write")
    for path in ("/data/rel.txt", "/data/abs.txt", "/data/chain1"):
        assert await tree.call(pid, "read_file", path=path) == "real"
    assert await tree.call(pid, "read_file", path="/data/dir/c.txt") == "abc"
    assert await tree.call(pid, "stat", path="/data/rel.txt") == {
        **await tree.call(pid, "stat", path="/data/real.txt")}
    await tree.call(pid, "write_file", path="/data/rel.txt", data="via link")
    assert (tree.root / "data" / "real.txt").read_text() == "via link"
    assert (tree.root / "data" / "rel.txt").is_symlink()
    # what is audited and checked is the resolved path
    intents = [r["resource"] for r in tree.kernel.audit(pid) if r["phase"] == "intent+outcome"
               and r["syscall"] == "fs.read"]
    assert intents == ["/data/real.txt", "/data/real.txt", "/data/real.txt",
                       "/data/a/b/c.txt"]


async def test_symlink_from_an_allowed_dir_to_a_forbidden_dir(tree: Tree) -> None:
    tree.link("data/esc", "../private")
    tree.link("data/esc_file", "../private/s.txt")
    tree.link("data/esc_abs", tree.root / "private")
    pid = tree.spawn("fs:/data/**:read,write")
    for path in ("/data/esc/s.txt", "/data/esc_file", "/data/esc_abs/s.txt"):
        record = await tree.fails(NotCapable, pid, "read_file", path=path)
        assert_denied(record)
        assert record["resource"] == "/private/s.txt"  # the resolved path was re-checked
    assert_denied(await tree.fails(NotCapable, pid, "list_dir", path="/data/esc"))
    assert_denied(await tree.fails(NotCapable, pid, "write_file", path="/data/esc/new",
                                   data="x"))
    assert_denied(await tree.fails(NotCapable, pid, "remove", path="/data/esc/s.txt"))
    assert sorted(p.name for p in (tree.root / "private").iterdir()) == ["s.txt"]


async def test_symlink_into_a_denied_tree(tree: Tree) -> None:
    tree.link("data/pub", "../private")
    pid = tree.spawn("fs:/**:read", {"kind": "fs", "scope": "/private/**",
                                     "rights": ["read"], "effect": "deny"})
    record = await tree.fails(NotCapable, pid, "read_file", path="/data/pub/s.txt")
    assert_denied(record)
    assert "denied by a rule" in record["detail"]["message"]


async def test_absolute_symlink_to_host_etc(tree: Tree) -> None:
    tree.link("data/etc", "/etc")
    tree.link("data/passwd", "/etc/passwd")
    tree.link("data/out", tree.outside / "secret.txt")
    pid = tree.spawn("fs:/**:read,write")
    for path in ("/data/etc/passwd", "/data/passwd", "/data/out", "/data/etc"):
        assert_denied(await tree.fails(NotCapable, pid, "read_file", path=path))
    assert_denied(await tree.fails(NotCapable, pid, "list_dir", path="/data/etc"))
    assert_denied(await tree.fails(NotCapable, pid, "stat", path="/data/passwd"))
    assert_denied(await tree.fails(NotCapable, pid, "write_file", path="/data/out", data="x"))
    assert (tree.outside / "secret.txt").read_text() == OUTSIDE_TEXT


async def test_relative_symlink_climbing_out_of_the_root(tree: Tree) -> None:
    tree.link("data/up", "../../outside")
    tree.link("data/deep/up", "../../../outside/secret.txt")
    tree.link("data/hop", "../hop2")       # stays inside for one hop ...
    tree.link("hop2", "../outside/secret.txt")  # ... and leaves on the next
    tree.link("data/dots", "a/b/../../../../outside/secret.txt")
    pid = tree.spawn("fs:/**:read,write")
    for path in ("/data/up/secret.txt", "/data/deep/up", "/data/hop", "/data/dots"):
        assert_denied(await tree.fails(NotCapable, pid, "read_file", path=path))
    assert_denied(await tree.fails(NotCapable, pid, "write_file", path="/data/up/new",
                                   data="x"))
    assert tree.outside_files() == {"secret.txt", "b", "b/c.txt"}


async def test_symlink_leaving_the_process_root_but_not_the_fs_root(tree: Tree) -> None:
    """A process rooted at /sub, holding fs:/** (say, granted carelessly): a link inside /sub
    to a sibling of /sub stays in the fs root, so only the process-root re-check stops it."""
    tree.link("sub/up", "../x")
    tree.link("sub/abs", tree.root / "private" / "s.txt")
    pid = tree.spawn("fs:/**:read", root="/sub")
    for path in ("/up", "/abs"):
        record = await tree.fails(NotCapable, pid, "read_file", path=path)
        assert_denied(record)
        assert "outside the process root" in record["detail"]["message"]
    assert await tree.call(pid, "read_file", path="/x") == "inner"


async def test_symlink_loop_is_invalid(tree: Tree) -> None:
    tree.link("data/l1", "l2")
    tree.link("data/l2", "l1")
    tree.link("data/self", "self")
    tree.link("data/dirloop", "dirloop/x")
    pid = tree.spawn("fs:/**:read,write")
    for path in ("/data/l1", "/data/self", "/data/dirloop", "/data/l1/x"):
        record = await tree.fails(InvalidArgument, pid, "read_file", path=path)
        assert record["phase"] == "rejected"
    await tree.fails(InvalidArgument, pid, "write_file", path="/data/l2", data="x")
    # a long chain that is not a loop still resolves
    for i in range(10):
        tree.link(f"data/c{i}", f"c{i + 1}" if i < 9 else "real.txt")
    assert await tree.call(pid, "read_file", path="/data/c0") == "real"


async def test_write_through_a_dangling_symlink_stays_inside(tree: Tree) -> None:
    tree.link("data/dangle_abs", tree.outside / "created_abs.txt")
    tree.link("data/dangle_rel", "../../outside/created_rel.txt")
    tree.link("data/dangle_priv", "../private/created.txt")
    tree.link("data/dangle_in", "made/here.txt")
    pid = tree.spawn("fs:/data/**:read,write")
    for path in ("/data/dangle_abs", "/data/dangle_rel", "/data/dangle_priv"):
        assert_denied(await tree.fails(NotCapable, pid, "write_file", path=path, data="x"))
        assert_denied(await tree.fails(NotCapable, pid, "make_dir", path=path))
    assert tree.outside_files() == {"secret.txt", "b", "b/c.txt"}
    assert not (tree.root / "private" / "created.txt").exists()
    # a dangling link that stays inside the allowed tree is followed to its target
    await tree.call(pid, "make_dir", path="/data/made")
    assert await tree.call(pid, "write_file", path="/data/dangle_in", data="ok") == 2
    assert (tree.root / "data" / "made" / "here.txt").read_text() == "ok"
    assert (tree.root / "data" / "dangle_in").is_symlink()


# -- TOCTOU: the tree changes between the check and the use ----------------------------------------


Swap = tuple[Callable[[], None], Callable[[], None]]  # (swap, undo)


def swap_after_check(monkeypatch: pytest.MonkeyPatch, tree: Tree,
                     swap: Swap) -> list[VirtualPath]:
    """Let `check_path` resolve and check the real tree, then change the tree before the
    provider opens anything: the window a provider that re-resolved by name would fall into.
    Each call starts from the real tree again (the check of a later call would otherwise see
    the planted link and refuse it up front)."""
    do, undo = swap
    return after_the_check(monkeypatch, tree.kernel.fs, do, before=undo)


def replace_with_link(tree: Tree, at: str, target: Path) -> Swap:
    path = tree.root / at
    saved = path.with_name(path.name + ".orig")

    def do() -> None:
        path.rename(saved)
        os.symlink(str(target), path)

    def undo() -> None:
        if path.is_symlink():
            path.unlink()
            saved.rename(path)

    return do, undo


def plant_link(tree: Tree, at: str, target: Path) -> Swap:
    path = tree.root / at

    def do() -> None:
        os.symlink(str(target), path)

    def undo() -> None:
        if path.is_symlink():
            path.unlink()

    return do, undo


async def test_toctou_directory_swapped_for_a_symlink(tree: Tree,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pid = tree.spawn("fs:/**:read,write")
    resolved = swap_after_check(monkeypatch, tree, replace_with_link(tree, "data/a", tree.outside))
    record = await tree.fails(Conflict, pid, "read_file", path="/data/a/b/c.txt")
    assert record["phase"] == "intent+outcome" and record["resource"] == "/data/a/b/c.txt"
    assert resolved[0].parts == ("data", "a", "b", "c.txt")  # the check saw the real dir
    # a provider that re-resolved the path by name would have read this:
    assert (tree.root / "data" / "a" / "b" / "c.txt").read_text() == OUTSIDE_TEXT
    # every other operation through the swapped directory fails the same way
    await tree.fails(Conflict, pid, "write_file", path="/data/a/b/new.txt", data="x")
    await tree.fails(Conflict, pid, "list_dir", path="/data/a/b")
    await tree.fails(Conflict, pid, "stat", path="/data/a/b/c.txt")
    await tree.fails(Conflict, pid, "make_dir", path="/data/a/b/newdir")
    await tree.fails(Conflict, pid, "remove", path="/data/a/b/c.txt")
    assert tree.outside_files() == {"secret.txt", "b", "b/c.txt"}
    assert (tree.outside / "b" / "c.txt").read_text() == OUTSIDE_TEXT


async def test_toctou_file_swapped_for_a_symlink(tree: Tree,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pid = tree.spawn("fs:/data/**:read,write")
    swap_after_check(monkeypatch, tree,
                     replace_with_link(tree, "data/real.txt", tree.outside / "secret.txt"))
    record = await tree.fails(Conflict, pid, "read_file", path="/data/real.txt")
    assert "symlink" in record["detail"]["message"]
    await tree.fails(Conflict, pid, "write_file", path="/data/real.txt", data="clobber")
    assert (tree.outside / "secret.txt").read_text() == OUTSIDE_TEXT


async def test_toctou_dangling_symlink_planted_at_a_new_name(
        tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file does not exist when checked; a link to outside appears before the create."""
    pid = tree.spawn("fs:/data/**:read,write")
    swap_after_check(monkeypatch, tree,
                     plant_link(tree, "data/fresh.txt", tree.outside / "planted.txt"))
    await tree.fails(Conflict, pid, "write_file", path="/data/fresh.txt", data="x")
    await tree.fails(Conflict, pid, "write_file", path="/data/fresh.txt", data="x",
                     exclusive=True)
    assert not (tree.outside / "planted.txt").exists()


async def test_kernel_keeps_serving_after_path_attacks(tree: Tree) -> None:
    tree.link("data/l1", "l1")
    tree.link("data/out", "/etc")
    attacker = tree.spawn("fs:/**:read,write")
    bystander = tree.spawn("fs:/data/**:read")
    for path in ("/data/l1", "/data/out/passwd", "/..", "a\x00"):
        with pytest.raises((InvalidArgument, NotCapable)):
            await tree.call(attacker, "read_file", path=path)
    assert await tree.call(bystander, "read_file", path="/data/real.txt") == "real"
    count, problems = tree.kernel.verify_audit()
    assert count > 0 and problems == []
