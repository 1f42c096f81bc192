"""Red team 15 on a tree's kill (`tree_kill`; lane heldkill's c826146 reads a held root's
children from the rows).

MEDIUM (a database writer, no key): the kill walked the tree by the rows' `parent` column
(a loaded root's children are read from it at every open too). A writer who rewrote a
child's parent before an open shielded it: the operator's kill of its parent left it
running, while the kill's record ended it on the chain (`ends.ProcessEnds.ended`: a kill
ends what the chain made below it), so `--verify` named a live row the chain ended, and
the child ran on until the next open. Now the walk takes the chain's lineage too
(`ChainLinks.lineage`): the child is killed, told which ancestor was, in the kill's one
transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker import Kernel
from tests.conftest import open_image


async def test_a_child_whose_parent_a_writer_rewrote_is_killed_with_its_parent(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=["proc:agent:spawn"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": []})
        neighbour = kernel.spawn("agent", caps=[])
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("UPDATE processes SET parent=NULL WHERE pid=?", (child,))
    writer.close()
    async with Kernel.open(db_path) as kernel:
        kernel.kill(parent, "stop them")
        row = kernel.store.get_process(child)
        assert (row["state"], row["reason"]) == ("killed",
                                                  f"parent {parent} was killed (stop them)")
        assert kernel.verify_audit()[1] == []  # (no live row the chain ended)
        kills = [r for r in kernel.audit(parent) if r["syscall"] == "proc.signal"]
        assert [(r["phase"], r["detail"]["signal"]) for r in kills] == [("admin", "kill")]
        # The neighbour, made by the host, not below the parent: it runs on.
        assert kernel.process_info(neighbour)["state"] == "runnable"
