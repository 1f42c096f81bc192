"""shell.run opens its cwd and writable root from the pinned fs root for each call: every
way a call can fail (a program not on PATH, a cwd that is a file, a symlink, a timeout, the
output cap) closes both again. 200 failing runs leave the broker's descriptors as they were,
and a command that runs still works beside them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import Kernel, LibosError
from broker.providers.fs import LocalFs
from tests.broker.syscalls.test_shell import NEEDS
from tests.conftest import ALL_BUILTINS, open_image

pytestmark = pytest.mark.usefixtures("fs_walk")

FAILING = (
    {"argv": ["no-such-program-here"], "cwd": "/data"},
    {"argv": ["true"], "cwd": "/data/a.txt"},
    {"argv": ["true"], "cwd": "/link"},
    {"argv": ["sleep", "5"], "cwd": "/data", "timeout": 0.01},
    {"argv": ["head", "-c", "5000", "/dev/zero"], "cwd": "/data", "max_output": 10},
)


async def test_failing_runs_leak_no_descriptor(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("a")
    (root / "link").symlink_to(tmp_path)  # out of the root
    async with Kernel.open(tmp_path / "libos.db", fs=LocalFs(root)) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command"))
        pid = kernel.spawn("agent", caps=["shell:*:run", "fs:/**:read,write"])
        ok = {"argv": ["cat", "a.txt"], "cwd": "/data"}
        assert (await kernel.call_tool(pid, "run_command", ok))["stdout"] == "a"
        before = len(os.listdir("/proc/self/fd"))
        failed = 0
        for _ in range(40):
            for args in FAILING:
                try:
                    result = await kernel.call_tool(pid, "run_command", args)
                except LibosError:
                    failed += 1
                else:
                    assert result["exit_code"] != 0, (args, result)
        assert failed >= 160
        assert len(os.listdir("/proc/self/fd")) <= before
        assert (await kernel.call_tool(pid, "run_command", ok))["stdout"] == "a"
