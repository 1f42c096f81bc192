"""Red team 44 on red team 40's session settings: the store's session connects in UTF-8
whatever a writer set for the database's sessions, but the connection a broker listens on
(`wait_for_notice`, LISTEN) did not. The writer's `client_encoding = SQL_ASCII` and a
notice of theirs with a non-ASCII byte (pg_notify, which any session may send) raised a
UnicodeDecodeError out of the wait, not a psycopg error: out of the kernel's listening task
(`broker.kernel.notices.listen`), a traceback that ends the broker's run."""

from __future__ import annotations

from broker.store.postgres import NOTICES, PostgresStore
from tests.broker.store.conftest import raw
from tests.broker.store.test_session_settings_rt40 import _database_set


def test_a_writers_encoding_fails_no_wait_for_a_notice(pg_database: str) -> None:
    """LOW to MEDIUM (a writer ends a broker's run at will, with a traceback). The wait now
    returns the notice read in UTF-8; the neighbour, an ASCII notice, too."""
    PostgresStore(pg_database, broker="a").close()
    _database_set(pg_database, "client_encoding = 'SQL_ASCII'")
    store = PostgresStore(pg_database, broker="a")
    try:
        assert store.wait_for_notice(0.01) == []  # (the listening session made)
        for payload in ("caf\u00e9", "approval"):
            with raw(pg_database) as db:
                db.execute("SELECT pg_catalog.pg_notify(?, ?)", (NOTICES, payload))
            assert store.wait_for_notice(10) == [payload]
    finally:
        store.close()
