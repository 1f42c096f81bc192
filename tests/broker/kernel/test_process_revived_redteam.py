"""Red team on process rows beside the chain, by whoever can write the database but holds no
key. The host kills a process (a `proc.signal` record in the chain); its row is set killed
and its capability rows stay (for lineage). A writer who sets the row back to runnable has
it served again at the next open, with every grant its records vouch for: the kill undone.
NOT FIXED (docs/DESIGN.md section 9): a process's state is not checked against the records
that ended it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


async def test_a_killed_process_set_runnable_again_stays_dead(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
        kernel.kill(pid)
        assert [r for r in kernel.audit() if r["syscall"] == "proc.signal" and r["pid"] == pid]
    edit(store_at, "UPDATE processes SET state='runnable', reason=NULL WHERE pid=?", (pid,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
