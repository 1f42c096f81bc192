"""Red team 44 on red team 40's pinned session settings: a writer without the key sets
`default_transaction_isolation = 'repeatable read'` for the database's sessions (`ALTER
DATABASE ... SET`, as the brokers' role). A write transaction's snapshot was then taken at its
first statement, the wait for the write lock (`pg_advisory_xact_lock`): a shared broker that
waited while another appended read the chain's head as it was before, its head check passed
on it, and its record was refused as a duplicate `seq`: `StoreRefused`, refused for good (a
deferred write set aside, its owner told its write was refused). Each session now sets
`read committed` itself."""

from __future__ import annotations

import threading
import time

from broker.store import AuditRecord
from broker.store.pg_connection import connect
from broker.store.postgres import WRITE_LOCK, PostgresStore
from tests.broker.store.test_session_settings_rt40 import _database_set

_WAITING = ("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND wait_event = 'advisory' AND datname = pg_catalog.current_database()")


def test_a_writers_isolation_refuses_no_append_after_a_wait(pg_database: str) -> None:
    """MEDIUM: two shared brokers append while a third holds the write lock: the one that
    takes it second had a stale head, and its record was refused for good. Both are
    appended now, the chain whole."""
    PostgresStore(pg_database, broker="broker-a").close()
    _database_set(pg_database, "default_transaction_isolation = 'repeatable read'")
    a, b = (PostgresStore(pg_database, broker=name) for name in ("broker-a", "broker-b"))
    holder = connect(pg_database, "holder")
    errors: list[BaseException] = []

    def append(store: PostgresStore) -> None:
        try:
            store.append_audit(AuditRecord(phase="admin", syscall="clock.now"))
        except BaseException as exc:  # (told the test, not lost in the thread)
            errors.append(exc)

    try:
        start = a.last_seq()
        holder.execute("BEGIN")
        holder.execute(f"SELECT pg_catalog.pg_advisory_xact_lock({WRITE_LOCK})")
        appending = []
        for waiters, store in enumerate((a, b), 1):
            appending.append(threading.Thread(target=append, args=(store,)))
            appending[-1].start()
            deadline = time.monotonic() + 10
            while holder.execute(_WAITING).fetchone()[0] < waiters:  # (in line for the lock)
                assert time.monotonic() < deadline, "no broker waited for the write lock"
                time.sleep(0.02)
        holder.execute("COMMIT")
        for thread in appending:
            thread.join(15)
        assert errors == []
        for store in (a, b):
            store.sign_anchor()
        assert a.last_seq() == start + 2 and a.audit_problems()[1] == []
    finally:
        holder.close()
        a.close()
        b.close()
