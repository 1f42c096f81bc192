"""Red team 17 (invariants 15 and 19): a database writer (no key) edits the label lists that
show a process's label (`labels":["secret"]` -> `labels":[]`, one UPDATE, each record's hash
left as it was) and drops the row's label (a second). A parent read the secret and spawned a
child with it: the child's label is on the parent's records alone (a `proc.spawn` intent),
all before the `proc.spawn` outcome that vouches for the child's capabilities. A voucher
needed the chain whole only after it, so those still counted while the label was gone: the
child exported the secret (HIGH in effect; `libos audit --verify` reported the broken chain,
nothing stopped the load; test fails without). Now a record that makes a child (`proc.spawn`,
`host.fork`) vouches only if the chain is whole before it too: the child holds nothing, as
its parent (whose `host.spawn` lies before the edits) already did; a process the host made
after the edits still exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel.test_label_row_redteam11 import secret_child
from tests.broker.kernel.test_labels import EXPORT
from tests.broker.store.conftest import raw


async def test_a_childs_label_edited_out_of_its_parents_records_is_not_dropped(
        db_path: Path, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        _, token, child = await secret_child(kernel)
        neighbour = kernel.spawn("agent", caps=[EXPORT])
        assert kernel.process(child).label == {"secret"}
    with raw(db_path) as db:  # (each hash left as it was: the next link holds)
        edited = db.execute("UPDATE audit SET detail=replace(detail, 'labels\":[\"secret\"]', "
                            "'labels\":[]') WHERE detail LIKE '%labels\":[\"secret\"]%'").rowcount
        db.execute("UPDATE processes SET labels='[]' WHERE pid=?", (child,))
    assert edited >= 2
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        assert kernel.verify_audit()[1]  # the edit is seen
        await kernel.call_tool(neighbour, "write_file", {"path": "/exports/n", "data": "hi"})
        with pytest.raises(NotCapable):  # (its capabilities left out: failing closed)
            await kernel.call_tool(child, "write_file", {"path": "/exports/t", "data": token})
    assert not (fs / "exports" / "t").exists()
