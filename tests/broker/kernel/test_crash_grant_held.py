"""A grant acknowledged just before a crash holds after it. A real broker (a subprocess)
spawns a process (the host's `spawn`) and has it spawn a child (`proc.spawn`), prints their
pids once both calls returned, and SIGKILLs itself at once. At the next open on this host
both still hold what they were granted: the anchor file's head, MACed at every commit,
vouches for the records that granted it (not only the signed anchor, which lags by up to
`SIGN_INTERVAL`), so nothing is recorded `caps.unvouched`. (From another host a PostgreSQL
store has only the published signed anchor: docs/DESIGN.md §9.) Both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker import Kernel
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parents[3]
READ = "fs:/data/**:read"
_CHILD = f"""
import os, signal, sys
import trio
from broker import Kernel
from tests.conftest import open_image

async def main():
    async with Kernel.open(sys.argv[1], fs_root=sys.argv[2]) as kernel:
        await open_image(kernel)
        await trio.sleep(0.2)  # signed: what follows lies past the signed anchor
        parent = kernel.spawn("agent", caps=["{READ}", "proc:*:spawn"])
        child = await kernel.call_tool(parent, "spawn", {{"image": "agent", "caps": ["{READ}"]}})
        print(parent, child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
"""


def _granted(kernel: Kernel, pid: int) -> set[str]:
    return {f"{c['kind']}:{c['scope']}:{','.join(c['rights'])}"
            for c in kernel.capabilities(pid)}


async def test_a_grant_acknowledged_before_a_crash_holds_after_it(
        store_at: Path | str, tmp_path: Path) -> None:
    env = bare_env(PYTHONPATH=str(ROOT), XDG_STATE_HOME=os.environ.get("XDG_STATE_HOME", ""))
    crashed = subprocess.run([sys.executable, "-c", _CHILD, str(store_at), str(tmp_path / "fs")],
                             env=env, capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert crashed.returncode == -9, crashed.stderr
    parent, child = map(int, crashed.stdout.split())
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        assert {READ, "proc:*:spawn"} <= _granted(kernel, parent)
        assert READ in _granted(kernel, child)
        assert not [r for r in kernel.audit() if r["syscall"] == "caps.unvouched"]
        assert kernel.verify_audit()[1] == []
