"""The fs root is pinned when the provider is made, in both ways of opening paths (openat2,
and the component walk, which starts from that descriptor too): a directory put in the
root's place later, full of files of its own, is never acted on. A file only it holds is
NOT_FOUND, with its record; the files of the root the provider opened are still read, and a
write still lands there."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotFound
from broker.providers.fs import LocalFs
from tests.conftest import open_image

pytestmark = pytest.mark.usefixtures("fs_walk")


async def test_a_directory_put_in_the_roots_place_is_never_acted_on(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("old a")
    (root / "data" / "b.txt").write_text("old b")
    async with Kernel.open(tmp_path / "libos.db", fs=LocalFs(root)) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read,write"])
        root.rename(tmp_path / "root.old")  # the attacker's move: another root in its place
        (root / "data").mkdir(parents=True)
        (root / "data" / "a.txt").write_text("PLANTED")
        (root / "data" / "planted.txt").write_text("PLANTED")

        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "read_file", {"path": "/data/planted.txt"})
        refused = [r for r in kernel.audit(pid)
                   if r["syscall"] == "fs.read" and r["resource"] == "/data/planted.txt"]
        assert refused and refused[-1]["detail"]["error"] == "NOT_FOUND"

        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "old a"
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/b.txt"}) == "old b"
        assert await kernel.call_tool(pid, "stat", {"path": "/"}) is not None
        await kernel.call_tool(pid, "write_file", {"path": "/data/new.txt", "data": "n"})
        assert (tmp_path / "root.old" / "data" / "new.txt").read_text() == "n"
        assert not (root / "data" / "new.txt").exists()
        assert kernel.verify_audit()[1] == []
