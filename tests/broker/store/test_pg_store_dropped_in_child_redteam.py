"""Red team: a PostgreSQL store dropped unclosed lets go of its session and locks when
collected (test_pg_store_dropped_unclosed.py). A child the embedding program forks with the
store open (a worker) holds a copy of it on the same connection: the same server session.
Its copy collected in the child ran the finaliser there: `pg_advisory_unlock_all()` and a
close on the parent's session, so the broker that still writes lost its writer lock (a
second writer could open the database) and its session. The writer's flock already lets go
only in the process that took it (`broker.store.writer_lock`); the session now too."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest

from broker.store import AuditRecord
from broker.store.postgres import WRITER_LOCK, PostgresStore
from tests.broker.store.conftest import raw

NAME = "libos broker forked"


def _sessions(dsn: str) -> int:
    with raw(dsn) as db:
        return int(db.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE"
                              " application_name=?", (NAME,)).fetchone()[0])


def _writer_lock_free(dsn: str) -> bool:
    with raw(dsn) as db:
        got = bool(db.execute(f"SELECT pg_try_advisory_lock({WRITER_LOCK})").fetchone()[0])
        if got:
            db.execute(f"SELECT pg_advisory_unlock({WRITER_LOCK})")
        return got


def _record(n: int) -> AuditRecord:
    return AuditRecord(phase="admin", syscall="host.obj.put", detail={"n": n})


def _in_child(act: Callable[[], object]) -> None:
    """Fork; in the child, run `act`, then exit."""
    child = os.fork()
    if child == 0:
        try:
            act()
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0


def test_a_forked_child_dropping_its_copy_leaves_the_writers_session(
        pg_database: str) -> None:
    held = [PostgresStore(pg_database, broker="forked")]  # (the one reference)
    held[0].append_audit(_record(1))
    assert _sessions(pg_database) == 1 and not _writer_lock_free(pg_database)
    _in_child(lambda: (held.clear(), gc.collect()))  # its copy dropped and collected
    store = held[0]
    try:
        assert not _writer_lock_free(pg_database)  # still the writer's
        assert _sessions(pg_database) == 1
        store.append_audit(_record(2))
        assert store.last_seq() == 3  # (with the first shared open's `audit.signed`)
    finally:
        store.close()
    assert _writer_lock_free(pg_database) and _sessions(pg_database) == 0


@pytest.mark.parametrize("writer", [True, False])
def test_a_forked_child_closing_its_copy_leaves_the_parents_session(
        pg_database: str, writer: bool) -> None:
    """The same, closed explicitly in the child (a worker's clean-up): `close` let go of the
    writer lock and ended the session the parent still uses. A reader's copy too."""
    store = PostgresStore(pg_database, broker="forked") if writer else PostgresStore(
        pg_database, writer=False)
    if writer:
        store.append_audit(_record(1))
    before = store.last_seq()
    _in_child(store.close)
    try:
        assert store.last_seq() == before  # the parent's session still answers
        if writer:
            assert not _writer_lock_free(pg_database) and _sessions(pg_database) == 1
            store.append_audit(_record(2))
            assert store.last_seq() == 3  # (with the first shared open's `audit.signed`)
    finally:
        store.close()
    assert _writer_lock_free(pg_database)
    if writer:
        assert _sessions(pg_database) == 0
