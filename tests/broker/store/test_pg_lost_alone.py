"""Red team (session 16): after a deferred write the store refused for good, the writes that
waited with it are committed one at a time (`Connected._set_aside_refused`). A connection that
broke there, after the server committed one of them and before its answer came back, was
misread on PostgreSQL: a lone audit write found committed once the server was back was taken
for another broker's (`WrittenMeanwhile`: the writer stopped for good), since the head it
made was not the newest in memory (records waited after it)."""

from __future__ import annotations

import time

import pytest

from broker.store import AuditRecord
from broker.store.pg_connection import RETRY, StoreUnavailable
from broker.store.postgres import PostgresStore
from broker.store.refusals import WriteRefused
from tests.broker.store.pg_proxy import Proxy


def record(n: int) -> AuditRecord:
    return AuditRecord(phase="admin", syscall="caps.revoke", detail={"n": n})


def _ns(store: PostgresStore) -> list[str]:
    rows = store._db.execute("SELECT detail::jsonb->>'n' FROM audit WHERE detail::jsonb ? 'n'"
                             " ORDER BY seq").fetchall()
    return [row[0] for row in rows]


def test_a_lone_audit_write_whose_answer_was_lost_is_its_own(pg_database: str,
                                                             proxy: Proxy) -> None:
    store = PostgresStore(proxy.dsn(pg_database))
    try:
        victim = store.insert_process(parent=None, image="i", version="1", state="running",
                                      root="/", cwd="/")
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)
        # Refused as it is bound (nothing of the transaction sent): the writes beside it are
        # then committed one at a time, the first (record 2) alone.
        store.update_process(victim, defer=True, reason="x\ud800")
        store.append_audit(record(3), defer=True)
        proxy.trigger, proxy.refusing = b'"n":2', True  # its answer lost, the server gone
        with pytest.raises((StoreUnavailable, UnicodeEncodeError)):
            store.commit_deferred()
        assert proxy.lost == 1 and store.deferred
        proxy.refusing = False
        time.sleep(RETRY[1])  # (past the backoff)
        store.append_audit(record(4))  # (the head says record 2 is committed: not again)
        assert not store.deferred and _ns(store) == ["1", "2", "3", "4"]
        assert isinstance(store.refusals_of(victim), WriteRefused)
    finally:
        store.close()
    after = PostgresStore(pg_database)
    try:
        assert after.audit_problems() == (4, [])
    finally:
        after.close()
