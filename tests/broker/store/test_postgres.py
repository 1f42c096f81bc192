"""What the PostgreSQL store must do that SQLite gets from being one file: one writing broker
per database (across hosts), write transactions that never interleave, the same hashes for
the same records, typed errors for an unreachable server, a broken connection and values it
cannot hold; and psycopg loaded only by those who use it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker import Conflict, InvalidArgument
from broker.cli import main as cli
from broker.store import AuditRecord, SQLiteStore
from broker.store.pg_connection import StoreUnavailable, connect
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw


def test_psycopg_is_loaded_only_for_a_postgresql_store(tmp_path: Path) -> None:
    code = ("import sys, trio\n"
            "from broker import Kernel\n"
            "import broker.cli, broker.store.postgres\n"
            "async def main():\n"
            f"    async with Kernel.open({str(tmp_path / 'a.db')!r}) as k:\n"
            "        k.verify_audit()\n"
            "trio.run(main)\n"
            "assert 'psycopg' not in sys.modules, 'psycopg imported eagerly'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_one_writing_broker_per_database_whatever_the_host(pg_database: str,
                                                           tmp_path: Path) -> None:
    first = PostgresStore(pg_database)
    try:
        with pytest.raises(Conflict, match="another broker"):
            PostgresStore(pg_database)  # same host: the anchor file's lock
        # Another host has an anchor of its own: the database's writer lock still refuses.
        with pytest.raises(Conflict, match="another broker"):
            PostgresStore(pg_database, anchor=tmp_path / "elsewhere" / "anchor")
        reader = PostgresStore(pg_database, writer=False)  # the CLI: reads, answers
        assert reader.head_seq == 0
        with pytest.raises(Conflict, match="read-only"):
            reader.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
        reader.close()
        first.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
    finally:
        first.close()
    # The lock goes with the writer: another broker (on another host) may now write.
    second = PostgresStore(pg_database, anchor=tmp_path / "elsewhere" / "anchor")
    try:
        # Its host has no anchor file of this chain, but the first writer's signed anchor is
        # in the database (signed by the same user's key): it vouches for the chain, and
        # nothing is recorded against it.
        assert [r.record.syscall for r in second.audit_records()] == ["caps.revoke"]
        second.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
        count, problems = second.audit_problems()
        assert count == 2 and problems == []
    finally:
        second.close()
    with raw(pg_database) as db:  # the tail is cut while no broker runs
        db.execute("DELETE FROM audit WHERE seq=2")
    third = PostgresStore(pg_database, anchor=tmp_path / "third" / "anchor")
    try:  # a third host finds the cut by the anchor in the database, and records it at once
        [_, found] = [r for r in third.audit_records()]
        assert found.record.syscall == "audit.anchor"
        assert "removed from the end" in found.record.detail["problem"]
    finally:
        third.close()


def test_write_transactions_never_interleave(pg_database: str) -> None:
    """Read-modify-write from two connections at once (a broker and a CLI): each put reads
    the newest version and writes the next. Under the write lock every put succeeds and the
    versions are 1..n; without it (READ COMMITTED alone) two puts read the same version and
    one fails on the key."""
    stores = [PostgresStore(pg_database, writer=False) for _ in range(2)]
    errors: list[BaseException] = []

    def put(store: PostgresStore) -> None:
        try:
            for i in range(40):
                store.put_object("ns", "doc", "json", i, pid=None, expect_version=None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        assert stores[0].get_object("ns", "doc")["version"] == 80
    finally:
        for s in stores:
            s.close()


def test_the_same_records_hash_the_same_on_both_backends(pg_database: str,
                                                         tmp_path: Path) -> None:
    ticks = iter(range(10**6))

    def clock() -> float:
        return 1_700_000_000.125 + next(ticks) / 7  # floats with long mantissas

    records = [AuditRecord(phase="intent", syscall="fs.write", pid=1, inv=2, tool="w",
                           resource="/données/ü.txt", args_hash="ab" * 32,
                           detail={"args": {"data": "\u202e\x1b[31m", "n": 2**53}}),
               AuditRecord(phase="outcome", syscall="fs.write", pid=1, inv=2, tool="w",
                           detail={"ok": True, "result": 1.5e-300}),
               AuditRecord(phase="admin", syscall="caps.revoke", resource="cap_x")]
    chains = []
    for store in (SQLiteStore(tmp_path / "s.db", clock=clock),
                  PostgresStore(pg_database, clock=clock)):
        ticks = iter(range(10**6))
        try:
            for record in records:
                store.append_audit(record, payload=b"\x00\xff" if record.phase == "outcome"
                                   else None)
            chains.append([(s.seq, s.ts, s.detail_json, s.hash)
                           for s in store.audit_records()])
        finally:
            store.close()
    assert chains[0] == chains[1]
    assert len({h for *_, h in chains[0]}) == 3


def test_an_unreachable_server_is_a_typed_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://libos:s3cret@127.0.0.1:{port}/nothing"
    with pytest.raises(StoreUnavailable, match="cannot reach the store") as caught:
        PostgresStore(dsn, anchor=tmp_path / "anchor")
    assert "s3cret" not in str(caught.value)
    assert cli(["ps", "--db", dsn]) != 0
    out = capsys.readouterr()
    assert "cannot reach the store" in out.err and "Traceback" not in out.err
    assert "s3cret" not in out.out + out.err
    with pytest.raises(InvalidArgument):
        PostgresStore("postgresql://[nonsense", anchor=tmp_path / "anchor")


def test_a_broken_connection_is_a_typed_error_and_writes_nothing(pg_database: str) -> None:
    store = PostgresStore(pg_database)
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
        pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]
        killer = connect(pg_database, "killer")
        killer.execute("SELECT pg_terminate_backend(?)", (pid,))
        killer.close()
        with pytest.raises(StoreUnavailable, match="lost the store"):
            store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
    finally:
        store.close()
    # The writer's lock went with its connection; the next broker finds one record, intact.
    after = PostgresStore(pg_database)
    try:
        assert after.audit_problems() == (1, [])
    finally:
        after.close()


def test_a_value_the_server_cannot_hold_is_a_typed_error(pg_database: str) -> None:
    """PostgreSQL text cannot hold NUL (SQLite's can): refused as InvalidArgument, nothing
    written, and the store goes on."""
    store = PostgresStore(pg_database)
    try:
        with pytest.raises(InvalidArgument, match="cannot hold"):
            store.append_audit(AuditRecord(phase="denied", syscall="fs.read",
                                           resource="/a\x00b"))
        with pytest.raises(InvalidArgument, match="cannot hold"):
            store.put_object("ns", "x\x00", "json", 1, pid=None, expect_version=None)
        with pytest.raises(InvalidArgument):
            store.put_object("ns", "big", "json", 1, pid=2**70, expect_version=None)
        assert store.list_objects("ns") == [] and store.head_seq == 0
        store.append_audit(AuditRecord(phase="denied", syscall="fs.read", resource="/a"))
        assert store.audit_problems() == (1, [])
    finally:
        store.close()
