"""A genuine end acknowledged just before a crash still counts (invariant 15): only ends past
the anchored head are discounted (`test_ends_unvouched_redteam5.py`), and on the broker's own
host the anchor file's head, MACed at every commit, covers every acknowledged record. A real
broker (a subprocess) kills one process (the host's `proc.signal`) and ends another
(`host.exit`), prints their pids once both calls returned, and SIGKILLs itself at once. A
database writer then sets both rows runnable: the next open ends each again and records it,
notes nothing `caps.unvouched`, and a neighbour runs on. Both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, _revived_notes
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parents[3]
fs_root = links.fs_root
_CHILD = f"""
import os, signal, sys
import trio
from broker import Kernel
from tests.conftest import open_image

async def main():
    async with Kernel.open(sys.argv[1], fs_root=sys.argv[2]) as kernel:
        await open_image(kernel)
        killed, exited, neighbour = (kernel.spawn("agent", caps=["{PUB}"]) for _ in range(3))
        await trio.sleep(0.2)  # signed: what follows lies past the signed anchor
        kernel.kill(killed)
        kernel.exit(exited, 3, "done")
        print(killed, exited, neighbour, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
"""


async def test_an_end_acknowledged_before_a_crash_still_ends_the_process(
        store_at: Path | str, fs_root: Path) -> None:
    env = bare_env(PYTHONPATH=str(ROOT), XDG_STATE_HOME=os.environ.get("XDG_STATE_HOME", ""))
    crashed = subprocess.run([sys.executable, "-c", _CHILD, str(store_at), str(fs_root)],
                             env=env, capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert crashed.returncode == -9, crashed.stderr
    killed, exited, neighbour = map(int, crashed.stdout.split())
    for pid in (killed, exited):
        edit(store_at, REVIVE, (pid,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        for pid in (killed, exited):
            with pytest.raises(Conflict):
                await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
            assert len(_revived_notes(kernel, pid)) == 1
        assert not [r for r in kernel.audit() if r["syscall"] == "caps.unvouched"]
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
