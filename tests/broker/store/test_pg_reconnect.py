"""A single writer whose connection to PostgreSQL breaks (a server restart, a network blip)
connects again at its next statement, with its writer lock and settings, and only if nobody
wrote the audit chain meanwhile: a typed error otherwise, never an append on a stale head and
never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker import Conflict
from broker.store import AuditRecord
from broker.store.pg_connection import StoreUnavailable, connect
from broker.store.postgres import PostgresStore, WrittenMeanwhile


def record(n: int) -> AuditRecord:
    return AuditRecord(phase="admin", syscall="caps.revoke", detail={"n": n})


def cut(dsn: str, store: PostgresStore) -> None:
    """End the store's session on the server, and wait until its backend (and its locks)
    are gone."""
    pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]
    killer = connect(dsn, "killer")
    try:
        killer.execute("SELECT pg_terminate_backend(?)", (pid,))
        for _ in range(200):
            if not killer.execute("SELECT 1 FROM pg_stat_activity WHERE pid=?",
                                  (pid,)).fetchall():
                return
            time.sleep(0.02)
        raise AssertionError("the backend did not end")
    finally:
        killer.close()


def test_a_single_writer_connects_again_and_goes_on(pg_database: str) -> None:
    store = PostgresStore(pg_database)
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)  # waits for a commit when the cut comes
        cut(pg_database, store)
        with pytest.raises(StoreUnavailable, match="lost the store"):
            store.commit_deferred()  # the cut found: nothing of this was written
        assert store.deferred
        store.append_audit(record(3))  # a new session, with what waited
        assert not store.deferred and store.head_seq == 3
        # Its writer lock is held again: no other broker opens the store beside it.
        with pytest.raises(Conflict, match="open"):
            PostgresStore(pg_database, anchor=Path(store._anchor_path).with_name("other"))
    finally:
        store.close()
    after = PostgresStore(pg_database)
    try:
        assert after.audit_problems() == (3, [])
    finally:
        after.close()


def test_a_writer_whose_store_was_written_meanwhile_stops(pg_database: str,
                                                          tmp_path: Path) -> None:
    store = PostgresStore(pg_database)
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)
        cut(pg_database, store)
        other = PostgresStore(pg_database, anchor=tmp_path / "other")  # the lock was free
        other.append_audit(record(20))
        other.close()
        with pytest.raises(StoreUnavailable):
            store.commit_deferred()
        for _ in range(2):  # for good, and typed each time
            with pytest.raises(WrittenMeanwhile, match="written while this broker"):
                store.append_audit(record(3))
    finally:
        with pytest.raises(Conflict):  # what waited is never written on a stale head
            store.close()
    after = PostgresStore(pg_database, anchor=tmp_path / "other")
    try:
        # The chain links (the one note: the other broker's anchor file is not this one's).
        problems = after.audit_problems()[1]
        assert all("a broker opening the store found" in p for p in problems), problems
        rows = after._db.execute("SELECT detail::jsonb->>'n' FROM audit WHERE detail::jsonb ? 'n'"
                                 " ORDER BY seq").fetchall()
        assert [row[0] for row in rows] == ["1", "20"]  # nothing of the stale writer's after
    finally:
        after.close()


def test_a_reconnect_that_cannot_retake_the_writer_lock_is_a_conflict(
        pg_database: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_database)
    other: PostgresStore | None = None
    try:
        store.append_audit(record(1))
        cut(pg_database, store)
        other = PostgresStore(pg_database, anchor=tmp_path / "other")  # holds the lock now
        with pytest.raises(StoreUnavailable):
            store.append_audit(record(2))
        for _ in range(2):  # each statement tries again, and is refused, typed
            with pytest.raises(Conflict, match="another broker has") as refused:
                store.append_audit(record(2))
            assert not isinstance(refused.value, WrittenMeanwhile | StoreUnavailable)
    finally:
        if other is not None:
            other.close()
        store.close()
