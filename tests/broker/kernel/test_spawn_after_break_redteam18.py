"""Red team 18 (invariant 15, availability): red team 17's fix has a record that makes a child
(`proc.spawn`, `host.fork`) vouch only if the chain is whole before it: ANY problem at a
lower seq, however old and whoever's records it lies in. A chain problem never goes away (it
stays in the records, and no command accepts or re-anchors past it), so after one edited
record (a writer's one UPDATE of a record nobody's label depends on, or a corrupted page)
every child an honest broker spawns from then on, for ever, holds nothing after the next
open: its capabilities are left out (failing closed, logged as "no record in the audit
created process N: planted", which it was not), while a process the host spawns in the same
session keeps its own. `libos audit --verify` names the old edit only, not that every
later child is disarmed by it, and the operator has no way back (MEDIUM, availability; a
writer gets the same DoS with any one edit). Now the chain need be whole only from the first
record that made the child's lineage on (`ProcessEnds.first_birth`): the records that can
show the label it inherits. Test fails without; red team 17's test (an edit inside the
lineage) still holds the child to nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel.test_label_row_redteam11 import secret_child
from tests.broker.kernel.test_labels import EXPORT, NEEDS, TOOLS, _tree
from tests.broker.store.conftest import raw
from tests.conftest import open_image


async def test_a_child_spawned_long_after_an_unrelated_edit_keeps_its_capabilities(
        db_path: Path, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        _tree(kernel)
        await open_image(kernel, needs=NEEDS, tools=TOOLS)
        other = kernel.spawn("agent", caps=[EXPORT])
        await kernel.call_tool(other, "write_file", {"path": "/exports/o", "data": "ok"})
    with raw(db_path) as db:  # one old record edited (its hash left): nobody's label in it
        assert db.execute("UPDATE audit SET ts=ts+1 WHERE seq=(SELECT max(seq) FROM audit"
                          " WHERE pid=? AND phase='intent')", (other,)).rowcount == 1
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        assert kernel.verify_audit()[1]  # the edit is seen, and noted
        parent = kernel.spawn("agent", caps=[EXPORT, "proc:agent:spawn"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [EXPORT]})
        await kernel.call_tool(child, "write_file", {"path": "/exports/a", "data": "ok"})
    async with Kernel.open(db_path, fs_root=fs) as kernel:  # a later, honest restart
        await kernel.call_tool(parent, "write_file", {"path": "/exports/p", "data": "ok"})
        await kernel.call_tool(child, "write_file", {"path": "/exports/c", "data": "ok"})
    assert (fs / "exports" / "c").read_text() == "ok"


async def test_a_childs_maker_rewritten_to_a_later_process_does_not_drop_its_label(
        db_path: Path, tmp_path: Path) -> None:
    """Red team 17's edit, and one more: the child's `proc.spawn` outcome (the record that
    vouches for it) rewritten to name a process the host made after the edited records as its
    maker, so its lineage starts after them. The child still holds nothing (a guard of the
    narrower check: the edited voucher is not intact, so it vouches for nothing anyway; its
    own seq's problem counts for a maker's record too, as a record deleted before it shows
    only there)."""
    fs = tmp_path / "fs"
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        parent, token, child = await secret_child(kernel)
        later = kernel.spawn("agent", caps=[EXPORT])
    with raw(db_path) as db:  # (each hash left as it was)
        db.execute("UPDATE audit SET detail=replace(detail, 'labels\":[\"secret\"]', "
                   "'labels\":[]') WHERE detail LIKE '%labels\":[\"secret\"]%'")
        db.execute("UPDATE processes SET labels='[]' WHERE pid=?", (child,))
        assert db.execute("UPDATE audit SET pid=? WHERE pid=? AND syscall='proc.spawn' AND "
                          "phase!='intent'", (later, parent)).rowcount == 1
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        await kernel.call_tool(later, "write_file", {"path": "/exports/n", "data": "hi"})
        with pytest.raises(NotCapable):
            await kernel.call_tool(child, "write_file", {"path": "/exports/t", "data": token})
    assert not (fs / "exports" / "t").exists()
