"""Red team 28 against the label ceiling (invariant 19, `broker/store/label_ceiling.py`).

The ceiling is the union of label names a writer without the key can delete: capability rows
(a row deleted only makes its holder hold less), label columns, the walked records (once the
chain is broken, deleting more breaks nothing new). Only this kernel's label rules are out
of their reach. A writer who wipes every name from all of these leaves an empty ceiling: the
broken store's reads then carry no label at all, and a sink bounded by `{"*": "deny"}` (only
public data may flow here) takes the secret. Also: a process whose labelled records a writer
removed (held: its capabilities go unvouched), and a fork from a kept checkpoint (not vouched
for by the chain) whose label a writer dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.errors import NotCapable
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_label_ceiling import ceiling_records
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _records, _tree
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


# The secret's label comes from a label rule (given at every open, stored nowhere), so the
# process's capabilities name no label, and their grant records survive the writer's cut.
RULES = [{"kind": "fs", "scope": "/secrets/**", "labels": ["secret"]}]


async def test_a_process_whose_labelled_records_a_writer_removed_keeps_its_label(
        store_at: Path | str, tmp_path: Path) -> None:
    """A process that read the secret, its records of it deleted (a break) and its row's
    label dropped, is reloaded at the next open public (a process's label takes no ceiling),
    but holds nothing: the break leaves its capabilities unvouched (planted), so it cannot
    export what it read. (Held: a regression guard.)"""
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs, label_rules=RULES) as kernel:
        _tree(kernel)
        reader = await _agent(kernel, "fs:/secrets/**:read", PUBLIC_ONLY)
        token = await kernel.call_tool(reader, "read_file", {"path": "/secrets/token.txt"})
        assert kernel.process(reader).label == {"secret"}
        await _agent(kernel)  # (records after the read's: its removal breaks a link)
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE detail LIKE ?", ('%"secret"%',))
        db.execute("UPDATE processes SET labels=NULL", ())
    async with Kernel.open(store_at, fs_root=fs, label_rules=RULES) as kernel:
        assert kernel.store.chain_links().data_break() is not None
        with pytest.raises(NotCapable, match="no capability"):
            await kernel.call_tool(reader, "write_file", {"path": "/exports/x", "data": token})
    assert not (fs / "exports" / "x").exists()


async def test_a_fork_from_a_kept_checkpoint_a_writer_unlabelled_keeps_the_label(
        store_at: Path | str, tmp_path: Path) -> None:
    """Checkpoints are not vouched for by the chain: a writer drops the label from a kept
    checkpoint of a process that read the secret (its history, holding it, kept); a host
    fork from it must not start public with the source's export capability."""
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        source = await _agent(kernel, SECRET_READ, EXPORT)
        token = await kernel.call_tool(source, "read_file", {"path": "/secrets/token.txt"})
        kernel.checkpoint(source)
        kept = kernel.checkpoints(source)[-1]["id"]
        public = await _agent(kernel, EXPORT)  # (the neighbour: a public one's fork)
        kernel.checkpoint(public)
        kept_public = kernel.checkpoints(public)[-1]["id"]
    with raw(store_at) as db:
        [(text,)] = db.execute("SELECT state FROM checkpoint_log WHERE id=?", (kept,)
                               ).fetchall()
        state = json.loads(text)
        assert state["labels"] == ["secret"]
        db.execute("UPDATE checkpoint_log SET state=? WHERE id=?",
                   (json.dumps({**state, "labels": []}), kept))
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        child = kernel.fork(source, checkpoint=kept)
        assert kernel.process(child).label == {"secret"}
        with pytest.raises(NotCapable, match="secret"):
            await kernel.call_tool(child, "write_file", {"path": "/exports/x", "data": token})
        [denied] = _records(kernel, child, "fs.write", "denied")
        assert denied["detail"]["labels"] == ["secret"]
        other = kernel.fork(public, checkpoint=kept_public)
        assert kernel.process(other).label == frozenset()
        await kernel.call_tool(other, "write_file", {"path": "/exports/n", "data": "hi"})
    assert not (fs / "exports" / "x").exists()
    assert (fs / "exports" / "n").read_text() == "hi"
