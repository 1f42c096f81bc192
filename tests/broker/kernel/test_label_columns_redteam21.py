"""Red team 21 on lane labelcols (invariant 19, DESIGN §9 "Labels are coarse and beside the
chain"): a database writer without the key against the chain's floor for data at rest."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import trio

from broker import ApprovalDenied, Kernel, NotCapable
from broker.store.audit import WHOLE, AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.connection import dump_json
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_label_columns_redteam import _refused, _secret_file
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree
from tests.broker.store.conftest import raw

# A forged record past the head breaks the chain: reads carry the label ceiling.
BROKEN = frozenset({"secret", BROKEN_CHAIN})


async def secret_written(a: Kernel, path: str = "/work/f.txt") -> None:
    """The labels test tree laid out, and a secret-reading process's copy of the token
    written to `path`."""
    _tree(a)
    writer = await _agent(a, SECRET_READ)
    token = await a.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await a.call_tool(writer, "write_file", {"path": path, "data": token})


async def peer_appends_the_secret(dsn: str, fs: Path) -> None:
    """Broker b, beside the caller's: a secret process there appends the token to
    /work/f.txt."""
    async with Kernel.open(dsn, fs_root=fs, broker="b") as b:
        peer = await _agent(b, SECRET_READ)
        token = await b.call_tool(peer, "read_file", {"path": "/secrets/token.txt"})
        await b.call_tool(peer, "write_file", {"path": "/work/f.txt", "data": token,
                                               "append": True})


async def test_a_replace_forged_past_the_head_narrows_nothing_on_each_backend(
        store_at: Path | str, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    await _secret_file(store_at, fs)
    append_past_head(store_at, AuditRecord(
        phase=WHOLE, syscall="fs.write", pid=1, resource="/work/copy.txt",
        detail={"args": {"path": "/work/copy.txt", "data": "x"}, "ok": True, "result": 1}))
    for _ in range(2):  # (the open notes the span: the next must still discount it)
        async with Kernel.open(store_at, fs_root=fs) as kernel:
            reader = await _agent(kernel, EXPORT)
            await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
            await _refused(kernel, reader, "x", BROKEN)  # (a record past the head: a break)
        with raw(store_at) as db:
            db.execute("DELETE FROM file_labels", ())


async def test_an_object_a_peer_broker_wrote_after_this_open_keeps_its_label(
        pg_database: str, tmp_path: Path) -> None:
    """Shared mode: broker a is open; broker b's process puts a secret object; the writer
    drops the row's label; a's reader must still take `secret` on."""
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a:
        _tree(a)
        reader = await _agent(a, "obj:shared:read", EXPORT)
        async with Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
            _tree(b)
            writer = await _agent(b, SECRET_READ, "obj:shared:read,write")
            token = await b.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
            await b.call_tool(writer, "put_object", {"name": "t", "type": "text",
                                                     "value": token, "ns": "shared"})
            public = await _agent(b, "obj:shared:read,write")
            await b.call_tool(public, "put_object", {"name": "p", "type": "text",
                                                     "value": "hi", "ns": "shared"})
        with raw(pg_database) as db:
            db.execute("UPDATE objects SET labels=NULL", ())
        got = await a.call_tool(reader, "get_object", {"name": "t", "ns": "shared"})
        assert got["value"] == "tok-123"
        await _refused(a, reader, got["value"])
        neighbour = await _agent(a, "obj:shared:read", EXPORT)  # a public peer object flows
        got = await a.call_tool(neighbour, "get_object", {"name": "p", "ns": "shared"})
        await a.call_tool(neighbour, "write_file", {"path": "/exports/n", "data": got["value"]})
        assert a.process(neighbour).label == frozenset()


async def test_a_replace_forged_while_a_peer_runs_narrows_nothing(
        pg_database: str, tmp_path: Path) -> None:
    """Shared mode: a secret file; broker b is open (its records past the anchor are a
    peer's, not a forger's, to a's open); the writer forges a public replace past the head
    and drops the row; a opens beside b and reads the file: still `secret`."""
    fs = tmp_path / "fs"
    await _secret_file(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        await _agent(b)
        _forge_beside(pg_database, FORGED_REPLACE)
        with raw(pg_database) as db:
            db.execute("DELETE FROM file_labels", ())
        async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
            reader = await _agent(a, EXPORT)
            await a.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
            await _refused(a, reader, "x")
            neighbour = await _agent(a, EXPORT)  # public data still flows
            hello = await a.call_tool(neighbour, "read_file", {"path": "/public/readme.txt"})
            await a.call_tool(neighbour, "write_file", {"path": "/exports/n", "data": hello})
    with raw(pg_database) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(pg_database, fs_root=fs) as kernel:  # alone again: still not
        reader = await _agent(kernel, EXPORT)
        await kernel.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        await _refused(kernel, reader, "x", BROKEN)
    assert not (fs / "exports" / "x").exists() and (fs / "exports" / "n").read_text() == "hello"


FORGED_REPLACE = AuditRecord(
    phase=WHOLE, syscall="fs.write", pid=1, resource="/work/copy.txt",
    detail={"args": {"path": "/work/copy.txt", "data": "x"}, "ok": True, "result": 1})


def _forge_beside(store_at: str, record: AuditRecord) -> int:
    """`append_past_head` through a raw connection (a broker holds the store open)."""
    with raw(store_at) as db:
        [(seq, prev, ts)] = db.execute(
            "SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1", ()).fetchall()
        seq, ts, detail = seq + 1, ts + 1, dump_json(record.detail)
        r = record
        db.execute(INSERT_AUDIT, (seq, ts, r.pid, r.inv, r.tool, r.phase, r.syscall, r.resource,
                                  r.args_hash, r.cap_id, detail, prev,
                                  record_hash(seq, ts, r, detail, prev), None))
    return seq


async def test_a_database_writer_cannot_answer_a_flow_request(db_path: Path,
                                                               tmp_path: Path) -> None:
    async with Kernel.open(db_path, fs_root=tmp_path / "fs") as kernel:
        root = _tree(kernel)
        ask = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
               "flows": {"secret": "ask"}}
        pid = await _agent(kernel, SECRET_READ, ask)
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        done: list[Any] = []

        async def export() -> None:
            with contextlib.suppress(ApprovalDenied, NotCapable):
                done.append(await kernel.call_tool(pid, "write_file",
                                                   {"path": "/exports/t", "data": token}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(export)
            with trio.fail_after(5):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [request] = kernel.approvals()
            with raw(db_path) as db:  # no person: the writer answers
                db.execute("UPDATE approvals SET state='approved', answer='once', who='cli',"
                           " answered=? WHERE id=?", (kernel.clock.now(), request["id"]))
            with trio.move_on_after(3):
                while not done:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not (root / "exports" / "t").exists()


async def test_a_file_this_broker_replaced_beside_a_peer_is_public(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour: shared mode walks a's own records since its open too, yet a's public
    replace of a file its secret writer wrote leaves the file public (its row, as narrowed)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        await _agent(b)
        async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
            await secret_written(a, "/work/own.txt")
            assert a.store.file_labels("/work/own.txt") == {"secret"}
            clean = await _agent(a)
            await a.call_tool(clean, "write_file", {"path": "/work/own.txt", "data": "x"})
            reader = await _agent(a, EXPORT)
            data = await a.call_tool(reader, "read_file", {"path": "/work/own.txt"})
            await a.call_tool(reader, "write_file", {"path": "/exports/n", "data": data})
            assert a.process(reader).label == frozenset()
    assert (fs / "exports" / "n").read_text() == "x"


async def test_a_peers_secret_append_to_a_file_this_broker_narrowed_keeps_its_label(
        pg_database: str, tmp_path: Path) -> None:
    """Red team 21's second open point: a narrowed a secret file (a public replace: its row is
    a's); then b's secret process appends the token and the writer drops the row's label.
    a's reader must still take `secret` on (the records after a's narrowing count)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        before = await _agent(a, EXPORT)  # (the neighbour: narrowed here, public)
        await a.call_tool(before, "read_file", {"path": "/work/f.txt"})
        assert a.process(before).label == frozenset()
        await peer_appends_the_secret(pg_database, fs)
        with raw(pg_database) as db:
            db.execute("DELETE FROM file_labels", ())
        reader = await _agent(a, EXPORT)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
        await _refused(a, reader, "x")
    assert not (fs / "exports" / "x").exists()
