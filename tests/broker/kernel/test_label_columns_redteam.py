"""Lane labelcols (invariant 19, DESIGN §9 "Labels are coarse and beside the chain"): a file's
and an object's label are rows beside the chain, and a read used to take them from there
alone. A database writer (no key) who deleted a secret file's `file_labels` row, or set an
object version's `labels` to NULL, let a process read the secret without taking the label on
and export it through a capability whose bound denies `secret` (declassification without a
person). Now a read joins in what the chain's write records show the data was written with
(`broker.store.data_labels`); unlabelled data still flows, and a file replaced by a public
writer is public again at the next open (its replace is in the chain), but not by a replace
a writer forged past the anchored head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotCapable
from broker.store.audit import WHOLE, AuditRecord
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _records, _tree
from tests.broker.store.conftest import raw


async def _refused(kernel: Kernel, pid: int, data: Any,
                   labels: frozenset[str] = frozenset({"secret"})) -> None:
    """`pid` took `secret` on (`labels` all told): its export is refused (typed) and the
    refusal recorded (naming the label the bound refuses)."""
    assert kernel.process(pid).label == labels
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(pid, "write_file", {"path": "/exports/x", "data": data})
    [denied] = _records(kernel, pid, "fs.write", "denied")
    assert denied["detail"]["labels"] == ["secret"]


async def _secret_file(store_at: Path | str, fs: Path) -> None:
    """A process that read the secret copies it to /work/copy.txt (labelled `secret`)."""
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        writer = await _agent(kernel, SECRET_READ)
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(writer, "write_file", {"path": "/work/copy.txt", "data": token})
        assert kernel.store.file_labels("/work/copy.txt") == {"secret"}
    with raw(store_at) as db:  # the writer: the file's label, and its directory's, dropped
        db.execute("DELETE FROM file_labels", ())


async def test_a_files_label_dropped_from_its_row_is_not_dropped(store_at: Path | str,
                                                                 tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    await _secret_file(store_at, fs)
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        laundry = await _agent(kernel, EXPORT)
        data = await kernel.call_tool(laundry, "read_file", {"path": "/work/copy.txt"})
        assert data == "tok-123"
        await _refused(kernel, laundry, data)
        lister = await _agent(kernel, EXPORT)  # the directory's listing names what it wrote
        await kernel.call_tool(lister, "list_dir", {"path": "/work"})
        assert kernel.process(lister).label == {"secret"}
        neighbour = await _agent(kernel, EXPORT)  # public data still flows
        hello = await kernel.call_tool(neighbour, "read_file", {"path": "/public/readme.txt"})
        await kernel.call_tool(neighbour, "write_file", {"path": "/exports/n", "data": hello})
        assert kernel.process(neighbour).label == frozenset()
    assert not (fs / "exports" / "x").exists() and (fs / "exports" / "n").read_text() == "hello"


async def test_an_objects_label_dropped_from_its_row_is_not_dropped(store_at: Path | str,
                                                                   tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        writer = await _agent(kernel, SECRET_READ, "obj:shared:read,write")
        public = await _agent(kernel, "obj:shared:read,write")
        await kernel.call_tool(public, "put_object", {"name": "p", "type": "text",
                                                      "value": "hi", "ns": "shared"})
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(writer, "put_object", {"name": "t", "type": "text",
                                                      "value": token, "ns": "shared"})
    with raw(store_at) as db:
        db.execute("UPDATE objects SET labels=NULL", ())
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        reader = await _agent(kernel, "obj:shared:read", EXPORT)
        got = await kernel.call_tool(reader, "get_object", {"name": "t", "ns": "shared"})
        assert got["value"] == "tok-123"
        await _refused(kernel, reader, got["value"])
        lister = await _agent(kernel, "obj:shared:read", EXPORT)
        await kernel.call_tool(lister, "list_objects", {"ns": "shared"})
        assert kernel.process(lister).label == {"secret"}
        neighbour = await _agent(kernel, "obj:shared:read", EXPORT)
        got = await kernel.call_tool(neighbour, "get_object", {"name": "p", "ns": "shared"})
        await kernel.call_tool(neighbour, "write_file", {"path": "/exports/n",
                                                         "data": got["value"]})
        assert kernel.process(neighbour).label == frozenset()
    assert not (fs / "exports" / "x").exists() and (fs / "exports" / "n").read_text() == "hi"


async def test_a_file_replaced_by_a_public_writer_is_public_at_the_next_open_unless_forged(
        db_path: Path, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    await _secret_file(db_path, fs)
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        clean = await _agent(kernel)
        await kernel.call_tool(clean, "write_file", {"path": "/work/copy.txt", "data": "x"})
        assert kernel.store.file_labels("/work/copy.txt") == frozenset()
        await kernel.call_tool(clean, "write_file", {"path": "/work/more.txt", "data": "y"})
    async with Kernel.open(db_path, fs_root=fs) as kernel:  # the replace is in the chain
        reader = await _agent(kernel, EXPORT)
        await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        assert kernel.process(reader).label == frozenset()
    await _secret_file(db_path, fs)  # labelled again, the row dropped, and a replace forged
    append_past_head(db_path, AuditRecord(
        phase=WHOLE, syscall="fs.write", pid=1, resource="/work/copy.txt",
        detail={"args": {"path": "/work/copy.txt", "data": "x"}, "ok": True, "result": 1}))
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        reader = await _agent(kernel, EXPORT)
        await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        # (the forged record past the head breaks the chain: the label ceiling)
        await _refused(kernel, reader, "x", frozenset({"secret", BROKEN_CHAIN}))


async def test_a_messages_and_an_events_label_dropped_from_its_row_is_not_dropped(
        store_at: Path | str, tmp_path: Path) -> None:
    """Sent (raised) by a process that read the secret, not yet taken; the writer drops the
    rows' labels; at the next open the receiver and the waiter take the secret on. A public
    message and a public event still flow."""
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        receiver = await _agent(kernel, EXPORT, "proc:event:news:message")
        neighbour = await _agent(kernel, EXPORT, "proc:event:weather:message")
        sender = await _agent(kernel, SECRET_READ, f"proc:{receiver}:message",
                              f"proc:{neighbour}:message", "proc:event:*:message")
        public = await _agent(kernel, f"proc:{neighbour}:message", "proc:event:*:message")
        await kernel.call_tool(public, "send", {"pid": neighbour, "body": "hi"})
        await kernel.call_tool(public, "raise_event", {"name": "weather", "data": "sun"})
        token = await kernel.call_tool(sender, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(sender, "send", {"pid": receiver, "body": token})
        await kernel.call_tool(sender, "raise_event", {"name": "news", "data": token})
    with raw(store_at) as db:
        db.execute("UPDATE mailbox SET labels=NULL", ())
        db.execute("UPDATE raised SET labels=NULL", ())
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        got = await kernel.call_tool(receiver, "receive", {"timeout": 0})
        assert got["body"] == "tok-123"
        await _refused(kernel, receiver, got["body"])
        waiter = await _agent(kernel, EXPORT, "proc:event:news:message")
        got = await kernel.call_tool(waiter, "wait_event", {"name": "news", "timeout": 0})
        assert got["data"] == "tok-123"
        await _refused(kernel, waiter, got["data"])
        got = await kernel.call_tool(neighbour, "receive", {"timeout": 0})
        event = await kernel.call_tool(neighbour, "wait_event", {"name": "weather", "timeout": 0})
        await kernel.call_tool(neighbour, "write_file", {
            "path": "/exports/n", "data": got["body"] + event["data"]})
        assert kernel.process(neighbour).label == frozenset()
    assert not (fs / "exports" / "x").exists() and (fs / "exports" / "n").read_text() == "hisun"
