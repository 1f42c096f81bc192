"""Red team (lane loose) on a spawn the broker undid: its grants were not stored (the store
failed them), so it forgot the process and ended its row with a deferred write, recording
no `proc.end`. A writer who set that row runnable again (the database is anyone's who writes
it) had it served at the next open, a process nobody was given. Now its row ends with its
chained `proc.end`, in one transaction; the open ends the revived row again and records
that once, and a neighbour runs on. An end the store fails too (`row-fails-too`) was written
with the next commit, its row alone: set runnable again, it was served; now its `proc.end`
is written at once, alone (the chain still takes records), the row after. Both stores,
the store made to fail by triggers (`faulty_store.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, stays_dead
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


@pytest.mark.parametrize("tables,updates", [
    (("capabilities",), ()), ((), ("processes",))], ids=["grants-fail", "row-fails-too"])
async def test_a_spawn_undone_set_runnable_again_stays_dead(
        store_at: Path | str, fs_root: Path, tables: tuple[str, ...],
        updates: tuple[str, ...]) -> None:
    with Fault(store_at) as fault:
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            await open_image(kernel)
            neighbour = kernel.spawn("agent", caps=[PUB])
            fault.install(*tables, updates=updates)
            fault.set(True)
            with pytest.raises(Conflict):
                kernel.spawn("agent", caps=[PUB])
            fault.set(False)
            kernel.checkpoint(neighbour)  # a commit: what waited for one lands
            [undone] = [p["pid"] for p in kernel.store.list_processes() if p["pid"] != neighbour]
            assert kernel.store.get_process(undone)["state"] == "killed"
            ends = [(r["phase"], r["detail"]["state"]) for r in kernel.audit()
                    if r["syscall"] == "proc.end" and r["pid"] == undone]
            assert ends == [("admin", "killed")]
            assert kernel.verify_audit()[1] == []
    edit(store_at, REVIVE, (undone,))
    await stays_dead(store_at, fs_root, undone, neighbour)
