"""Hard links through the real kernel and `LocalFs` (issue 14, item 1).

A hard link planted inside a process's tree (by an extracted archive, another user, an
allowlisted `ln`) is the same file as the one it links to: one a deny rule protects, or one
outside the fs root altogether. Such a file (a regular file with more than one name) is
refused for read, write and stat: `NotCapable`, a `denied` record before any effect, the file
untouched, unless a capability with the `link` right covers the name. A link made, or a file
swapped, after the check and before the use is `Conflict` with nothing written.

Each attack runs through builtin tools (tool → syscall → dispatch) and checks the typed error,
the audit record, the file left as it was, and a neighbour that still works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, Kernel, NotCapable
from broker.caps import CapSpec, VirtualPath
from tests.broker.syscalls.path_attacks import after_the_check
from tests.conftest import open_image

# Both ways the rooted provider opens a checked path (openat2, and the component walk).
pytestmark = pytest.mark.usefixtures("fs_walk")

SECRET = "TOKEN hunter2"
OUTSIDE = "OUTSIDE THE ROOT"
ALLOW_ALL_BUT_SECRET = ["fs:/**:read,write",
                        {"kind": "fs", "scope": "/secret/**", "rights": ["read", "write"],
                         "effect": "deny"}]


class Links:
    def __init__(self, kernel: Kernel, tmp: Path) -> None:
        self.kernel = kernel
        self.root = Path(kernel.fs.root)  # type: ignore[attr-defined]
        self.outside = tmp / "outside.txt"
        for path, text in (("secret/token.txt", SECRET), ("data/plain.txt", "plain"),
                           ("other/file.txt", "other")):
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_text(text)
        self.outside.write_text(OUTSIDE)
        # The planted links: to a file a deny rule protects, and to one outside the fs root.
        os.link(self.root / "secret/token.txt", self.root / "data/alias.txt")
        os.link(self.outside, self.root / "data/outside.txt")

    def spawn(self, *caps: Any, root: str = "/") -> int:
        return self.kernel.spawn("agent", caps=list(caps), root=root)

    async def refused(self, pid: int, tool: str, error: type[Exception] = NotCapable,
                      **args: Any) -> dict[str, Any]:
        """Call, expect `error`, return the one record the refused syscall left."""
        before = self.kernel.store.head_seq
        with pytest.raises(error) as caught:
            await self.kernel.call_tool(pid, tool, args)
        records = [r for r in self.kernel.audit(pid) if r["seq"] > before
                   and r["syscall"].startswith("fs.")]
        assert len(records) in (1, 2), records
        assert records[-1]["detail"]["error"] == caught.value.code  # type: ignore[attr-defined]
        return records[-1]

    def untouched(self) -> None:
        assert (self.root / "secret/token.txt").read_text() == SECRET
        assert self.outside.read_text() == OUTSIDE
        assert os.stat(self.outside).st_nlink == 2  # still linked: nothing was replaced


@pytest.fixture
async def links(kernel: Kernel, tmp_path: Path) -> Links:
    await open_image(kernel, needs=("fs:/**:read,write,link",))
    return Links(kernel, tmp_path)


@pytest.mark.parametrize("alias", ["/data/alias.txt", "/data/outside.txt"])
@pytest.mark.parametrize(("tool", "args"), [
    ("read_file", {}),
    ("read_file", {"binary": True, "offset": 0, "length": 5}),
    ("write_file", {"data": "clobbered"}),
    ("write_file", {"data": "appended", "append": True}),
    ("stat", {}),
])
async def test_a_hard_link_is_refused_before_any_effect(links: Links, alias: str, tool: str,
                                                        args: dict[str, Any]) -> None:
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    record = await links.refused(pid, tool, path=alias, **args)
    assert record["phase"] == "denied" and record["resource"] == alias
    assert "hard link" in record["detail"]["message"]
    assert "2 names" in record["detail"]["message"]
    assert [e["data"]["resource"] for e in links.kernel.store.events(pid=pid)
            if e["kind"] == "denied"] == [alias]
    links.untouched()
    # The neighbours: a plain file in the same directory, read and written.
    assert await links.kernel.call_tool(pid, "read_file", {"path": "/data/plain.txt"}) == "plain"
    assert await links.kernel.call_tool(pid, "write_file", {"path": "/data/plain.txt",
                                                            "data": "new"}) == 3
    # The protected file itself stays protected by its rule.
    await links.refused(pid, "read_file", path="/secret/token.txt")


async def test_the_refusal_says_how_to_allow_it(links: Links) -> None:
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    with pytest.raises(NotCapable) as caught:
        await links.kernel.call_tool(pid, "read_file", {"path": "/data/outside.txt"})
    assert caught.value.message == (
        "'/data/outside.txt' is a file with 2 names (a hard link): it may be another path's "
        "file, and no capability allows linked files there (fs:<scope>:link)")


async def test_a_link_into_another_part_of_the_tree_leaves_a_process_root(links: Links) -> None:
    """A process rooted at /data: the link leads to /other, outside its root."""
    os.link(links.root / "other/file.txt", links.root / "data/to-other.txt")
    pid = links.spawn("fs:/**:read,write", root="/data")
    record = await links.refused(pid, "read_file", path="/to-other.txt")
    assert record["phase"] == "denied" and record["resource"] == "/data/to-other.txt"
    await links.refused(pid, "write_file", path="/to-other.txt", data="x")
    assert (links.root / "other/file.txt").read_text() == "other"
    assert await links.kernel.call_tool(pid, "read_file", {"path": "/plain.txt"}) == "plain"


async def test_a_symlink_to_a_hard_link_is_refused_too(links: Links) -> None:
    os.symlink("alias.txt", links.root / "data/sym.txt")
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    record = await links.refused(pid, "read_file", path="/data/sym.txt")
    assert record["phase"] == "denied" and record["resource"] == "/data/alias.txt"
    links.untouched()


async def test_removing_a_planted_link_is_allowed_and_leaves_the_file(links: Links) -> None:
    """Removing a name never touches the file it shares: the way to clean a planted link."""
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    await links.kernel.call_tool(pid, "remove", {"path": "/data/alias.txt"})
    assert not (links.root / "data/alias.txt").exists()
    assert (links.root / "secret/token.txt").read_text() == SECRET
    assert os.stat(links.root / "secret/token.txt").st_nlink == 1


async def test_the_link_right_allows_linked_files_under_its_scope_only(links: Links) -> None:
    pid = links.spawn("fs:/data/**:read,write", "fs:/data/outside.txt:link")
    assert await links.kernel.call_tool(pid, "read_file",
                                        {"path": "/data/outside.txt"}) == OUTSIDE
    assert await links.kernel.call_tool(pid, "write_file", {"path": "/data/outside.txt",
                                                            "data": "shared"}) == 6
    assert links.outside.read_text() == "shared"  # the caller was told it may be shared
    record = await links.refused(pid, "read_file", path="/data/alias.txt")
    assert record["phase"] == "denied" and "hard link" in record["detail"]["message"]
    # `link` alone grants nothing: the read or write right is still needed.
    only_link = links.spawn("fs:/data/**:link")
    await links.refused(only_link, "read_file", path="/data/outside.txt")


async def test_a_deny_rule_on_link_wins(links: Links) -> None:
    pid = links.spawn("fs:/**:read,write,link",
                      {"kind": "fs", "scope": "/data/**", "rights": ["link"], "effect": "deny"})
    record = await links.refused(pid, "read_file", path="/data/outside.txt")
    assert record["phase"] == "denied"
    assert await links.kernel.call_tool(pid, "read_file", {"path": "/data/plain.txt"}) == "plain"


async def test_a_tool_manifest_must_name_link_too(links: Links) -> None:
    """The `link` right is narrowed by manifests like any other: a caller holding it does not
    lend it to a tool whose manifest leaves it out."""
    pid = links.spawn("fs:/**:read,write,link")
    proc = links.kernel.process(pid)

    narrow = ((CapSpec.parse("fs:/data/**:read"),),)
    with pytest.raises(NotCapable, match="hard link"):
        proc.caps.check_path("read", VirtualPath(("data", "outside.txt")), root=(),
                             locate=links.kernel.fs.locate, identify=links.kernel.fs.identify,
                             now=0.0, manifests=narrow)
    assert await links.kernel.call_tool(pid, "read_file",
                                        {"path": "/data/outside.txt"}) == OUTSIDE


# -- after the check, before the use ------------------------------------------------------------

def link_after_check(monkeypatch: pytest.MonkeyPatch, links: Links, at: str,
                     target: Path) -> None:
    """Let the check see the tree as it is; make the link as the check's last step returns."""
    def link() -> None:
        if not (links.root / at).exists():
            os.link(target, links.root / at)

    after_the_check(monkeypatch, links.kernel.fs, link)


async def test_a_link_made_after_the_check_is_a_conflict_and_nothing_is_written(
        links: Links, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    link_after_check(monkeypatch, links, "data/late.txt", links.root / "secret/token.txt")
    record = await links.refused(pid, "write_file", Conflict, path="/data/late.txt",
                                 data="clobbered")
    assert record["phase"] == "outcome" and "appeared" in record["detail"]["message"]
    links.untouched()


async def test_a_name_given_to_the_file_after_the_check_is_a_conflict(
        links: Links, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checked file itself gains a second name (pointing it at protected content from the
    other side) between the check and the use: refused, not truncated."""
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    after_the_check(monkeypatch, links.kernel.fs, lambda: os.link(
        links.root / "data/plain.txt", links.root / "secret/also.txt"))
    record = await links.refused(pid, "write_file", Conflict, path="/data/plain.txt", data="x")
    assert record["phase"] == "outcome" and "another name" in record["detail"]["message"]
    assert (links.root / "secret/also.txt").read_text() == "plain"


async def test_a_file_swapped_after_the_check_is_a_conflict(
        links: Links, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory renamed into place after the check: same names, another device/inode."""
    pid = links.spawn(*ALLOW_ALL_BUT_SECRET)
    def swap() -> None:
        os.rename(links.root / "data", links.root / "data.old")
        os.rename(links.root / "secret", links.root / "data")

    after_the_check(monkeypatch, links.kernel.fs, swap)
    (links.root / "data/token.txt").write_text("decoy")
    record = await links.refused(pid, "read_file", Conflict, path="/data/token.txt")
    assert record["phase"] == "intent+outcome" and "changed" in record["detail"]["message"]
    assert (links.root / "data/token.txt").read_text() == SECRET  # now under the old name
