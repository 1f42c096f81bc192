"""Red team 44 (syscall surface): a recursive remove takes everything beneath a directory,
so its check covers everything beneath too. Before, only the directory's own path was
checked: a deny rule on a subtree did not hold against removing its parent, and a
capability naming only the directory (`/work/box`, exactly) removed all it held."""

from __future__ import annotations

from typing import Any

import pytest

from broker import Kernel, NotCapable
from tests.conftest import approve_a_call, open_image

pytestmark = pytest.mark.usefixtures("fs_walk")

RW = {"kind": "fs", "scope": "/work/**", "rights": ["read", "write"]}


async def _spawn(kernel: Kernel, *caps: Any) -> int:
    await open_image(kernel)
    return kernel.spawn("agent", caps=list(caps))


async def _refused(kernel: Kernel, pid: int, path: str) -> None:
    before = len(kernel.audit())
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "remove", {"path": path, "recursive": True})
    [denied] = [r for r in kernel.audit()[before:] if r["phase"] == "denied"]
    assert denied["syscall"] == "fs.remove"
    assert denied["resource"].rstrip("/") == path.rstrip("/")


async def test_a_deny_rule_beneath_holds_against_removing_its_parent(kernel: Kernel) -> None:
    deny = {"kind": "fs", "scope": "/work/keep/**", "rights": ["write"], "effect": "deny"}
    pid = await _spawn(kernel, RW, deny)
    setup = await _spawn(kernel, RW)
    await kernel.call_tool(setup, "make_dir", {"path": "/work/keep", "parents": True})
    await kernel.call_tool(setup, "write_file", {"path": "/work/keep/x", "data": "kept"})
    await kernel.call_tool(pid, "make_dir", {"path": "/work/a/b", "parents": True})
    await _refused(kernel, pid, "/work")
    await _refused(kernel, pid, "/work/")
    assert await kernel.call_tool(pid, "read_file", {"path": "/work/keep/x"}) == "kept"
    # the neighbour: a subtree no rule protects goes, recursively
    await kernel.call_tool(pid, "remove", {"path": "/work/a", "recursive": True})
    assert [e["name"] for e in await kernel.call_tool(pid, "list_dir", {"path": "/work"})] == [
        "keep"]


async def test_a_name_pattern_deny_beneath_holds_too(kernel: Kernel) -> None:
    deny = {"kind": "fs", "scope": "/work/d/keep*", "rights": ["write"], "effect": "deny"}
    pid = await _spawn(kernel, RW, deny)
    await kernel.call_tool(pid, "make_dir", {"path": "/work/d", "parents": True})
    await _refused(kernel, pid, "/work/d")
    await _refused(kernel, pid, "/work")


async def test_a_capability_naming_only_the_directory_does_not_reach_beneath(
        kernel: Kernel) -> None:
    box = {"kind": "fs", "scope": "/work/box", "rights": ["write"]}
    read = {"kind": "fs", "scope": "/work/**", "rights": ["read"]}
    setup = await _spawn(kernel, RW)
    await kernel.call_tool(setup, "make_dir", {"path": "/work/box/in", "parents": True})
    await kernel.call_tool(setup, "write_file", {"path": "/work/box/in/f", "data": "theirs"})
    await kernel.call_tool(setup, "make_dir", {"path": "/work/empty"})
    pid = await _spawn(kernel, box, read)
    with pytest.raises(NotCapable):  # the file itself it may not write
        await kernel.call_tool(pid, "remove", {"path": "/work/box/in/f"})
    await _refused(kernel, pid, "/work/box")
    assert await kernel.call_tool(pid, "read_file", {"path": "/work/box/in/f"}) == "theirs"
    # the neighbours: a subtree scope removes its directory recursively; an exact one, empty
    tree = await _spawn(kernel, {"kind": "fs", "scope": "/work/box/**", "rights": ["write"]})
    await kernel.call_tool(tree, "remove", {"path": "/work/box", "recursive": True})
    empty = await _spawn(kernel, {"kind": "fs", "scope": "/work/empty", "rights": ["write"]})
    await kernel.call_tool(empty, "remove", {"path": "/work/empty"})


async def test_a_person_approving_the_recursive_remove_lets_it_run(kernel: Kernel) -> None:
    """An `ask` capability over the subtree: the approved-once grant names the directory only,
    and it is bound to exactly the asked arguments (recursive included), so it stands."""
    ask = {"kind": "fs", "scope": "/work/**", "rights": ["write"], "effect": "ask"}
    setup = await _spawn(kernel, RW)
    await kernel.call_tool(setup, "make_dir", {"path": "/work/t/u", "parents": True})
    pid = await _spawn(kernel, ask, {"kind": "fs", "scope": "/work/**", "rights": ["read"]})
    await approve_a_call(kernel, pid, "remove", {"path": "/work/t", "recursive": True})
    assert await kernel.call_tool(pid, "list_dir", {"path": "/work"}) == []


async def test_mkdir_parents_makes_no_directory_it_may_not_write(kernel: Kernel) -> None:
    """`mkdir -p` made every missing directory above the one checked: write on
    `/work/a/b/**` made `/work` and `/work/a` too, past a deny rule on `/work/a` itself."""
    deny = {"kind": "fs", "scope": "/work/a", "rights": ["write"], "effect": "deny"}
    read = {"kind": "fs", "scope": "/**", "rights": ["read"]}
    b = {"kind": "fs", "scope": "/work/a/b/**", "rights": ["write"]}
    pid = await _spawn(kernel, b, deny, read)
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "make_dir", {"path": "/work/a/b/c", "parents": True})
    assert await kernel.call_tool(pid, "list_dir", {"path": "/"}) == []
    # the neighbour: once the directories above are there, the same call makes the rest
    setup = await _spawn(kernel, RW)
    await kernel.call_tool(setup, "make_dir", {"path": "/work/a", "parents": True})
    await kernel.call_tool(pid, "make_dir", {"path": "/work/a/b/c", "parents": True})
    await kernel.call_tool(pid, "make_dir", {"path": "/work/a/b/c/d/e", "parents": True})
    assert [e["name"] for e in await kernel.call_tool(pid, "list_dir", {"path": "/work/a/b/c/d"})
            ] == ["e"]
