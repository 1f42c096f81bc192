"""shell.run in a directory its broker may search but not read (mode 0711 to it): the cwd is
opened from the pinned root (`LocalFs.open_directory`), and an O_RDONLY open needs read
permission where `chdir` never did, so the command was refused. Root bypasses permission
checks: the broker runs in a forked child that drops to `nobody` once its kernel is open."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel, LibosError
from broker.providers.fs import LocalFs
from tests.broker.syscalls.test_shell import NEEDS
from tests.conftest import ALL_BUILTINS, open_image

NOBODY = 65534
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"

pytestmark = [pytest.mark.usefixtures("fs_walk"),
              pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                                 reason="needs root to drop to nobody, and a system Python")]


async def _as_nobody(base: Path) -> dict[str, Any]:
    """Open a kernel as root, run a command (the neighbour, and every import made), drop to
    nobody, then run in the search-only directory and in one nobody may not enter."""
    root = base / "root"
    seen: dict[str, Any] = {}

    async def run(pid: int, cwd: str) -> Any:
        try:
            return await kernel.call_tool(pid, "run_command", {"argv": ["pwd", "-P"],
                                                               "cwd": cwd})
        except LibosError as exc:
            return {"error": exc.code}

    async with Kernel.open(base / "libos.db", fs=LocalFs(root)) as kernel:
        await open_image(kernel, needs=NEEDS, tools=(*ALL_BUILTINS, "run_command"))
        pid = kernel.spawn("agent", caps=["shell:*:run", "fs:/**:read,write"])
        seen["as root"] = await run(pid, "/data/search")
        for path in base.iterdir():  # the store, as nobody's own
            if path != root:
                os.chown(path, NOBODY, NOBODY)
        # The confining shim runs under sys.executable, whose home here (/root) nobody may
        # not enter: the system's Python of the same version runs it (stdlib only).
        sys.executable = SYSTEM_PYTHON
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        seen["search only"] = await run(pid, "/data/search")
        seen["closed"] = await run(pid, "/data/closed")
        seen["audit"] = [(r["detail"].get("ok"), r["detail"].get("error"))
                         for r in kernel.audit(pid)
                         if r["syscall"] == "shell.run" and r["phase"] == "outcome"]
    return seen


def _in_child(base: Path) -> dict[str, Any]:
    """`_as_nobody` in a forked child (its uid is gone for good there), its result by pipe."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.close(read)
        try:
            text = json.dumps(trio.run(_as_nobody, base))
        except BaseException as exc:
            text = json.dumps({"crashed": repr(exc)})
        os.write(write, text.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 120
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, 9)
            os.waitpid(child, 0)
            pytest.fail("the child did not finish")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as pipe:
        return json.loads(pipe.read())


def test_a_cwd_with_search_but_no_read_permission_is_where_the_command_runs() -> None:
    base = Path(tempfile.mkdtemp(prefix="libos-search-only-"))
    try:
        base.chmod(0o755)
        (base / "root" / "data" / "search").mkdir(parents=True)
        (base / "root" / "data" / "closed").mkdir()
        (base / "root").chmod(0o755)
        (base / "root" / "data").chmod(0o711)  # searched on the way, never read
        (base / "root" / "data" / "search").chmod(0o711)
        (base / "root" / "data" / "closed").chmod(0o700)
        seen = _in_child(base)
    finally:
        shutil.rmtree(base)
    assert "crashed" not in seen, seen
    where = str(base / "root" / "data" / "search") + "\n"
    assert seen["as root"] == {"exit_code": 0, "stdout": where, "stderr": ""}
    assert seen["search only"] == {"exit_code": 0, "stdout": where, "stderr": ""}
    # A directory nobody may not even search: refused, typed and on the record.
    assert seen["closed"] == {"error": "NOT_CAPABLE"}, seen["closed"]
    assert seen["audit"] == [[True, None], [True, None], [False, "NOT_CAPABLE"]]
