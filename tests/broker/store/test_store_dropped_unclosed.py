"""An SQLite store dropped without `close` (its last reference gone, garbage collected) lets
go of what it holds: its WAL checkpointer's thread and connection, its own connection and
the writer's lock. A second store then opens the same file as the writer (before, the lock
stayed held until the process ended: `Conflict`, another broker has it open), and the first
one's writes are there."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from broker.store import AuditRecord, SQLiteStore


def _checkpointers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "libos-wal-checkpoint"}


def test_a_dropped_store_lets_go_of_its_thread_connection_and_lock(db_path: Path) -> None:
    before = _checkpointers()
    store = SQLiteStore(db_path)
    store.append_audit(AuditRecord(phase="admin", syscall="host.obj.put", detail={"n": 1}))
    [thread] = _checkpointers() - before
    del store
    gc.collect()
    second = SQLiteStore(db_path)  # the writer's lock is free
    try:
        assert second.last_seq() == 1
        thread.join(timeout=10)  # (it sees its stop within its next wait)
        assert not thread.is_alive()
    finally:
        second.close()
    # A closed store is closed once: its finaliser does nothing more when it is dropped.
    del second
    gc.collect()
    SQLiteStore(db_path).close()
