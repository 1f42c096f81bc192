"""Red team: on hosts without openat2 the provider now holds the root's descriptor too
(`LocalFs._top_fd`, taken when it is made). A shell command must inherit no descriptor of the
tree: the one it could `openat(fd, "..")` or `fchdir` from. (The openat2 way's test,
test_fs_descriptors.py, skips where `_root_fd` is None: this is the walk way's.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import Kernel
from tests.broker.syscalls.test_fs_descriptors import shell_descriptors


async def test_the_walk_ways_root_descriptor_is_in_no_shell_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.providers import beneath

    monkeypatch.setattr(beneath, "usable", lambda: False)
    async with Kernel.open(tmp_path / "libos.db") as kernel:
        fs = kernel.fs
        assert fs._root_fd is None  # type: ignore[attr-defined]  (the walk way)
        root = os.path.realpath(fs.root)  # type: ignore[attr-defined]
        top = fs._top_fd  # type: ignore[attr-defined]
        assert os.readlink(f"/proc/self/fd/{top}") == root  # (what a child must not hold)
        assert not os.get_inheritable(top)
        pid, held = await shell_descriptors(kernel)
        assert held and not any(t == root or t.startswith(root + "/") for t in held), held
        # The neighbour: the tree is still used, by the command and by the fs calls.
        await kernel.call_tool(pid, "write_file", {"path": "/x.txt", "data": "x"})
        assert await kernel.call_tool(pid, "read_file", {"path": "/x.txt"}) == "x"
        out = await kernel.call_tool(pid, "run_command", {"command": "cat x.txt"})
        assert out["stdout"] == "x"
