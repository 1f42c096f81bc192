"""The label ceiling (invariant 19, `broker/store/label_ceiling.py`): a single broker's store
whose labelled write records a writer (plain SQL, no key) removed while the broker was down,
the data's row label dropped too, reads that data with every label the store knows at the
next open (the walk finds the broken link), for a file, an object, a message and an event:
the export is refused, and the open records once that it over-labels. An intact chain
over-labels nothing: public data still flows and no such record is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.store.label_ceiling import BROKEN_CHAIN, CEILING_RECORD
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree
from tests.broker.store.conftest import raw

OBJ = "obj:shared:read,write"
# Each kind of data at rest: the syscall whose records a writer removes.
HIDDEN = {"file": "fs.write", "object": "obj.put", "message": "proc.send", "event": "proc.raise"}
# The ceiling of these stores: the secret, and the mark of a broken chain (red team 28).
OVER = frozenset({"secret", BROKEN_CHAIN})


def ceiling_records(store_at: Path | str) -> list[dict[str, Any]]:
    """The details of the chain's `labels.ceiling` records."""
    with raw(store_at) as db:
        return [json.loads(text) for (text,) in db.execute(
            "SELECT detail FROM audit WHERE syscall=?", (CEILING_RECORD,)).fetchall()]


async def _secret_everywhere(store_at: Path | str, fs: Path) -> int:
    """A process that read the secret writes it to a file, an object, a message (to the
    process returned) and an event."""
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        receiver = await _agent(kernel, EXPORT)
        writer = await _agent(kernel, SECRET_READ, OBJ, f"proc:{receiver}:message",
                              "proc:event:*:message")
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(writer, "write_file", {"path": "/work/copy.txt", "data": token})
        await kernel.call_tool(writer, "put_object", {"name": "t", "type": "text",
                                                      "value": token, "ns": "shared"})
        await kernel.call_tool(writer, "send", {"pid": receiver, "body": token})
        await kernel.call_tool(writer, "raise_event", {"name": "news", "data": token})
        return receiver


async def _read(kernel: Kernel, kind: str, receiver: int) -> tuple[int, str]:
    """A process reads the secret `kind` of data: its pid, and what it read."""
    if kind == "message":
        return receiver, (await kernel.call_tool(receiver, "receive", {"timeout": 0}))["body"]
    reader = await _agent(kernel, EXPORT, "obj:shared:read", "proc:event:news:message")
    if kind == "file":
        return reader, await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
    if kind == "object":
        got = await kernel.call_tool(reader, "get_object", {"name": "t", "ns": "shared"})
        return reader, got["value"]
    got = await kernel.call_tool(reader, "wait_event", {"name": "news", "timeout": 0})
    return reader, got["data"]


@pytest.mark.parametrize("kind", sorted(HIDDEN))
async def test_data_whose_write_records_a_writer_removed_reads_over_labelled(
        store_at: Path | str, tmp_path: Path, kind: str) -> None:
    fs = tmp_path / "fs"
    receiver = await _secret_everywhere(store_at, fs)
    with raw(store_at) as db:  # the writer: the write's records gone, every row's label too
        db.execute("DELETE FROM audit WHERE syscall=?", (HIDDEN[kind],))
        db.execute("DELETE FROM file_labels", ())
        for table in ("objects", "mailbox", "raised"):
            db.execute(f"UPDATE {table} SET labels=NULL", ())
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        pid, got = await _read(kernel, kind, receiver)
        assert got == "tok-123"
        if kind == "message":  # (made before the break: its capabilities fail closed too)
            assert kernel.process(pid).label == OVER
        else:
            await _refused(kernel, pid, got, OVER)
        # Public data reads over-labelled too (nothing says which data the records labelled),
        # and the open recorded once why.
        other = await _agent(kernel, EXPORT)
        hello = await kernel.call_tool(other, "read_file", {"path": "/public/readme.txt"})
        await _refused(kernel, other, hello, OVER)
    [detail] = ceiling_records(store_at)
    assert detail["ceiling"] == sorted(OVER) and type(detail["break"]) is int
    assert not (fs / "exports" / "x").exists()


async def test_a_labelled_write_cut_from_the_chains_end_reads_over_labelled(
        store_at: Path | str, tmp_path: Path) -> None:
    """The records removed from the very end (no link after them breaks): the open finds
    the chain short of its signed anchor, a span no anchor vouches for, and over-labels."""
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        writer = await _agent(kernel, SECRET_READ)
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        with raw(store_at) as db:
            [(top,)] = db.execute("SELECT max(seq) FROM audit", ()).fetchall()
        await kernel.call_tool(writer, "write_file", {"path": "/work/copy.txt", "data": token})
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (top,))
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        reader = await _agent(kernel, EXPORT)
        await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        await _refused(kernel, reader, "x", OVER)
    assert [detail["ceiling"] for detail in ceiling_records(store_at)] == [sorted(OVER)]


async def test_an_intact_chain_over_labels_nothing(store_at: Path | str, tmp_path: Path) -> None:
    """The neighbour: the same data, the rows' labels dropped but the records left (the
    chain's floor keeps the secret's label), and a public file still exports."""
    fs = tmp_path / "fs"
    receiver = await _secret_everywhere(store_at, fs)
    with raw(store_at) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        for kind in sorted(HIDDEN):
            pid, got = await _read(kernel, kind, receiver)
            await _refused(kernel, pid, got)
        other = await _agent(kernel, EXPORT)
        hello = await kernel.call_tool(other, "read_file", {"path": "/public/readme.txt"})
        await kernel.call_tool(other, "write_file", {"path": "/exports/n", "data": hello})
        assert kernel.process(other).label == frozenset()
    assert (fs / "exports" / "n").read_text() == "hello"
    assert ceiling_records(store_at) == []


async def test_the_ceiling_holds_the_label_rules_labels_too(db_path: Path, tmp_path: Path
                                                            ) -> None:
    """A label only this kernel's label rules give (not stored anywhere) is in the ceiling."""
    fs = tmp_path / "fs"
    await _secret_everywhere(db_path, fs)
    with raw(db_path) as db:
        db.execute("DELETE FROM audit WHERE syscall='fs.write'", ())
    rules = [{"kind": "net", "scope": "*", "labels": ["untrusted"]}]
    async with Kernel.open(db_path, fs_root=fs, label_rules=rules) as kernel:
        reader = await _agent(kernel)
        await kernel.call_tool(reader, "read_file", {"path": "/public/readme.txt"})
        assert kernel.process(reader).label == {"secret", "untrusted", BROKEN_CHAIN}
