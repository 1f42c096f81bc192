"""Red team 28 against the label ceiling (invariant 19, `broker/store/label_ceiling.py`).

The ceiling is the union of label names a writer without the key can delete: capability rows
(a row deleted only makes its holder hold less), label columns, the walked records (once the
chain is broken, deleting more breaks nothing new). Only this kernel's label rules are out
of their reach. A writer who wipes every name from all of these leaves an empty ceiling: the
broken store's reads then carry no label at all, and a sink bounded by `{"*": "deny"}` (only
public data may flow here) takes the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel
from broker.errors import NotCapable
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_label_ceiling import ceiling_records
from tests.broker.kernel.test_labels import SECRET_READ, _agent, _records, _tree
from tests.broker.store.conftest import raw

# A sink only public data may flow into: it names no label.
PUBLIC_ONLY = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"*": "deny"}}
LABEL_COLUMNS = ("file_labels", "processes", "objects", "mailbox", "raised", "approvals")


def _wipe_every_name(store_at: Path | str) -> None:
    """The writer: every record, capability row and label column naming the label gone."""
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE detail LIKE ?", ("%secret%",))
        db.execute("DELETE FROM capabilities WHERE policy LIKE ?", ("%secret%",))
        db.execute("DELETE FROM file_labels", ())
        for table in LABEL_COLUMNS[1:]:
            db.execute(f"UPDATE {table} SET labels=NULL", ())


async def test_a_ceiling_wiped_of_every_name_still_refuses_a_public_only_sink(
        store_at: Path | str, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        writer = await _agent(kernel, SECRET_READ)
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(writer, "write_file", {"path": "/work/copy.txt", "data": token})
    _wipe_every_name(store_at)
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        reader = await _agent(kernel, PUBLIC_ONLY)
        got = await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        assert got == "tok-123"
        assert kernel.process(reader).label == {BROKEN_CHAIN}  # (nothing else names one)
        with pytest.raises(NotCapable, match=BROKEN_CHAIN):
            await kernel.call_tool(reader, "write_file", {"path": "/exports/x", "data": got})
        [denied] = _records(kernel, reader, "fs.write", "denied")
        assert denied["detail"]["labels"] == [BROKEN_CHAIN]
        # The neighbour: the reader's own work still writes where no bound stands.
        await kernel.call_tool(reader, "write_file", {"path": "/work/mine.txt", "data": got})
    assert not (fs / "exports" / "x").exists()
    assert (fs / "work" / "mine.txt").read_text() == "tok-123"
    [detail] = ceiling_records(store_at)
    assert detail["ceiling"] == [BROKEN_CHAIN] and detail["count"] == 1
