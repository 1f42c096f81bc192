"""shell.run works in the fs root the provider pinned, as the fs syscalls do: a directory put
in the root's place after the kernel opened (full of files of its own) is never where a
command runs, nor what Landlock lets it write. Its cwd and its writable root were the root's
host name joined again at each call, so the command ran in the planted tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotFound
from broker.providers.fs import LocalFs
from tests.broker.syscalls.test_shell import NEEDS
from tests.conftest import ALL_BUILTINS, open_image

pytestmark = pytest.mark.usefixtures("fs_walk")


async def test_a_directory_put_in_the_roots_place_is_never_where_a_command_runs(
        tmp_path: Path) -> None:
    root, old = tmp_path / "root", tmp_path / "root.old"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("old a")
    async with Kernel.open(tmp_path / "libos.db", fs=LocalFs(root)) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command"))
        pid = kernel.spawn("agent", caps=["shell:*:run", "fs:/**:read,write"])
        root.rename(old)  # the attacker's move: another root in its place
        (root / "data").mkdir(parents=True)
        (root / "data" / "a.txt").write_text("PLANTED")
        (root / "data" / "planted.txt").write_text("PLANTED")

        read = await kernel.call_tool(pid, "run_command", {"argv": ["cat", "a.txt"],
                                                           "cwd": "/data"})
        assert read == {"exit_code": 0, "stdout": "old a", "stderr": ""}
        where = await kernel.call_tool(pid, "run_command", {"argv": ["pwd", "-P"],
                                                            "cwd": "/data"})
        assert where["stdout"].strip() == str(old / "data")
        planted = await kernel.call_tool(pid, "run_command", {"argv": ["cat", "planted.txt"],
                                                              "cwd": "/data"})
        assert planted["exit_code"] != 0 and "PLANTED" not in planted["stdout"]
        made = await kernel.call_tool(pid, "run_command", {"argv": ["touch", "made.txt"],
                                                           "cwd": "/data"})
        assert made["exit_code"] == 0, made
        assert (old / "data" / "made.txt").exists()
        assert not (root / "data" / "made.txt").exists()

        # A cwd only the planted tree has is refused, typed and on the record.
        (root / "only").mkdir()
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "run_command", {"argv": ["true"], "cwd": "/only"})
        [refused] = [r for r in kernel.audit(pid) if r["syscall"] == "shell.run"
                     and r["phase"] == "outcome" and not r["detail"]["ok"]]
        assert refused["detail"]["error"] == "NOT_FOUND"
        assert kernel.verify_audit()[1] == []
