"""Red team 11, beside the lane (invariants 15 and 19): a process's label is stored in its
row as it grows, and loading a process (an open, a takeover) takes it from there. No record
binds it. A database writer (no key) sets a secret-labelled process's `labels` to none; at
the next open it exports the secret through a capability whose bound denies `secret`
(HIGH in effect: "dropping a label ... is escalation", done with one UPDATE; DESIGN §9 lists
label columns as rows beside the chain, a known gap: this pins what it costs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel.test_labels import EXPORT, NEEDS, SECRET_READ, TOOLS, _tree
from tests.broker.store.conftest import raw
from tests.conftest import open_image


async def test_a_label_dropped_from_the_row_is_not_dropped(db_path: Path,
                                                           tmp_path: Path) -> None:
    async with Kernel.open(db_path, fs_root=tmp_path / "fs") as kernel:
        _tree(kernel)
        await open_image(kernel, needs=NEEDS, tools=TOOLS)
        pid = kernel.spawn("agent", caps=[SECRET_READ, EXPORT])
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        assert kernel.process(pid).label == {"secret"}
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "write_file", {"path": "/exports/t", "data": token})
    with raw(db_path) as db:
        db.execute("UPDATE processes SET labels=? WHERE pid=?", ("[]", pid))
    async with Kernel.open(db_path, fs_root=tmp_path / "fs") as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "write_file", {"path": "/exports/t", "data": token})
