"""Audit records that wait for a commit (`defer`) are committed with the next record in one
INSERT (no transaction around it): all of them are on disk once the append returns, in chain
order; if that statement fails, none of them is, they wait again, and the next append commits
them. Checked from a second connection, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.store import AuditRecord
from broker.store.location import is_database
from broker.store.opening import open_store
from tests.broker.store.conftest import raw


def _seqs(store_at: str | Path) -> list[tuple[int, str]]:
    with raw(store_at) as db:
        return [(r[0], r[1]) for r in db.execute(
            "SELECT seq, syscall FROM audit WHERE pid=7 ORDER BY seq").fetchall()]


def _refuse(store_at: str | Path, syscall: str) -> None:
    """A trigger that makes any INSERT of a row naming `syscall` fail."""
    with raw(store_at) as db:
        if is_database(store_at):
            db.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION"
                       " 'refused'; END $$ LANGUAGE plpgsql")
            db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON audit FOR EACH ROW WHEN"
                       f" (NEW.syscall = '{syscall}') EXECUTE FUNCTION refuse()")
        else:
            db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN"
                       f" NEW.syscall = '{syscall}' BEGIN SELECT RAISE(ABORT, 'refused'); END")
            db.commit()


def _allow(store_at: str | Path) -> None:
    with raw(store_at) as db:
        db.execute("DROP TRIGGER refuse" + (" ON audit" if is_database(store_at) else ""))
        if not is_database(store_at):
            db.commit()


def test_waiting_records_are_committed_with_the_next_one(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7), defer=True)
        store.append_pair(AuditRecord(phase="intent", syscall="fs.read", pid=7),
                          AuditRecord(phase="outcome", syscall="fs.read", pid=7), defer=True)
        assert _seqs(store_at) == []
        store.append_audit(AuditRecord(phase="outcome", syscall="tool.call", pid=7))
        found = _seqs(store_at)
        assert [s for _, s in found] == ["tool.call", "fs.read", "fs.read", "tool.call"]
        assert [q for q, _ in found] == list(range(found[0][0], found[0][0] + 4))
        assert not store.deferred
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()


def test_a_failed_statement_writes_none_of_its_records_and_they_wait(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7), defer=True)
        store.append_pair(AuditRecord(phase="intent", syscall="fs.read", pid=7),
                          AuditRecord(phase="outcome", syscall="fs.read", pid=7), defer=True)
        _refuse(store_at, "fs.write")
        with pytest.raises(Exception, match="refused"):  # (the database's own error)
            store.append_audit(AuditRecord(phase="intent", syscall="fs.write", pid=7))
        assert _seqs(store_at) == []  # the rows before it in the statement: not written
        assert store.deferred
        with pytest.raises(Exception, match="refused"):  # a pair fails alike
            store.append_pair(AuditRecord(phase="intent", syscall="fs.write", pid=7),
                              AuditRecord(phase="outcome", syscall="fs.write", pid=7))
        assert _seqs(store_at) == []
        _allow(store_at)
        store.append_audit(AuditRecord(phase="outcome", syscall="tool.call", pid=7))
        found = _seqs(store_at)
        assert [s for _, s in found] == ["tool.call", "fs.read", "fs.read", "tool.call"]
        assert [q for q, _ in found] == list(range(found[0][0], found[0][0] + 4))
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()


def test_what_waits_alone_is_committed_in_one_statement(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        for _ in range(3):
            store.append_pair(AuditRecord(phase="intent", syscall="fs.read", pid=7),
                              AuditRecord(phase="outcome", syscall="fs.read", pid=7),
                              defer=True)
        total = store.deferred_total
        store.commit_deferred()
        assert store.committed_total == total
        assert len(_seqs(store_at)) == 6
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
