"""A PostgreSQL store dropped without `close` (its last reference gone, garbage collected)
lets go of what it holds, as an SQLite store does (test_store_dropped_unclosed.py): its
session (the database's writer lock goes with it) and its anchor file's lock. A second
store then opens the same database as the writer (before, both stayed held until the
process ended: `Conflict`, another broker has it open), and the first one's writes are
there; its session is gone from pg_stat_activity."""

from __future__ import annotations

import gc

from broker.store import AuditRecord
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw

NAME = "libos broker dropped"


def _sessions(dsn: str) -> int:
    with raw(dsn) as db:
        return int(db.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE"
                              " application_name=?", (NAME,)).fetchone()[0])


def test_a_dropped_store_lets_go_of_its_session_and_locks(pg_database: str) -> None:
    store = PostgresStore(pg_database, broker="dropped")
    store.append_audit(AuditRecord(phase="admin", syscall="host.obj.put", detail={"n": 1}))
    assert _sessions(pg_database) == 1
    del store
    gc.collect()
    second = PostgresStore(pg_database, broker="dropped")  # both its locks are free
    try:
        assert second.last_seq() == 2  # (the first shared open's `audit.signed` marker)
    finally:
        second.close()
    assert _sessions(pg_database) == 0
    # A closed store is closed once: its finaliser does nothing more when it is dropped.
    del second
    gc.collect()
    PostgresStore(pg_database, broker="dropped").close()
