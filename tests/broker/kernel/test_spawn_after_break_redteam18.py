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
writer gets the same DoS with any one edit). A fix would bound the "whole before" to the
records that can show the maker's label (from its lineage's first birth on), not the whole
chain: not small enough for this lane."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel
from tests.broker.kernel.test_labels import EXPORT, NEEDS, TOOLS, _tree
from tests.broker.store.conftest import raw
from tests.conftest import open_image


@pytest.mark.xfail(strict=True, reason="red team 18: a chain problem anywhere before a "
                   "proc.spawn outcome disarms its child for ever (links.vouches, _INHERITING)")
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
