"""Red team: the symlink walk resolves links in the root the provider pinned, not in whatever
now bears the root's name. A directory put in the root's place (here a symlink to a tree
outside it, full of links of its own) must not decide what a checked name resolves to: its
links would be followed instead of the pinned root's, and the walk would read a tree outside
the root. Both ways of opening (openat2, whose walk runs when a path holds a link, and the
component walk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotFound
from broker.providers.fs import LocalFs
from tests.conftest import open_image

pytestmark = pytest.mark.usefixtures("fs_walk")


async def test_links_resolve_in_the_pinned_root_not_in_a_planted_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("pinned a")
    (root / "data" / "l2").symlink_to("a.txt")  # a legitimate link of the pinned root
    planted = tmp_path / "outside"
    (planted / "data").mkdir(parents=True)
    (planted / "data" / "x.txt").write_text("OUTSIDE")
    (planted / "data" / "a.txt").symlink_to("x.txt")
    (planted / "data" / "l2").symlink_to("/etc/passwd")
    async with Kernel.open(tmp_path / "libos.db", fs=LocalFs(root)) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read,write"])
        root.rename(tmp_path / "root.old")
        root.symlink_to(planted)  # the root's name now leads outside, to planted links

        # The escape tried: the planted tree's links steer the resolution. They must not:
        # the pinned root's own file and its own link are what is read.
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "pinned a"
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/l2"}) == "pinned a"
        # A name only the planted tree has is not found, with its record.
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "read_file", {"path": "/data/x.txt"})
        refused = [r for r in kernel.audit(pid)
                   if r["syscall"] == "fs.read" and r["resource"] == "/data/x.txt"]
        assert refused and refused[-1]["detail"]["error"] == "NOT_FOUND"
        # The neighbour: a write lands in the pinned root, and is read back through a link.
        await kernel.call_tool(pid, "write_file", {"path": "/data/new.txt", "data": "n"})
        assert (tmp_path / "root.old" / "data" / "new.txt").read_text() == "n"
        assert not (planted / "data" / "new.txt").exists()
        assert kernel.verify_audit()[1] == []
