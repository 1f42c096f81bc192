"""The write path of brokers sharing one PostgreSQL store, where each write transaction is
sent as one batch and its checks run on the server (migration 5): an append that links to a
head another broker has moved is refused with nothing written and made again on the new head;
the fence refuses a lost lease's whole transaction, writes already sent included; brokers
appending at once from real concurrent connections make one chain that verifies, with no
record lost, repeated or forked; and a transaction reaches the server as one query."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from broker.store import AuditRecord
from broker.store.audit import GENESIS
from broker.store.chain import HeadMoved
from broker.store.leases import FENCE, LeaseLost
from broker.store.opening import open_store
from broker.store.postgres import WRITE_LOCK, PostgresStore
from tests.broker.store.conftest import raw


def _record(n: int, pid: int | None = None) -> AuditRecord:
    return AuditRecord(phase="intent", syscall="clock.now", pid=pid, detail={"n": n})


@pytest.fixture
def brokers(pg_database: str) -> Iterator[list[PostgresStore]]:
    opened = [PostgresStore(pg_database, broker=f"b{i}") for i in range(3)]
    yield opened
    for store in opened:
        store.close()


def _chain(dsn: str, brokers: list[PostgresStore]) -> tuple[list[int], list[str]]:
    """The chain's seqs, and what verifying it finds (each broker's head signed first)."""
    for store in brokers:
        store.sign_anchor()
    reader = open_store(dsn, writer=False)
    try:
        seqs = [r.seq for r in reader.audit_records()]
        return seqs, reader.audit_problems()[1]
    finally:
        reader.close()


def test_an_append_on_a_moved_head_is_refused_then_made_on_the_new_head(
        brokers: list[PostgresStore], pg_database: str) -> None:
    a, b, _ = brokers
    first = a.append_audit(_record(1))
    moved = b.append_audit(_record(2))  # a does not know of this one
    assert moved == first + 1
    assert a.appends_redone == 0
    third = a.append_audit(_record(3))
    assert third == moved + 1 and a.appends_redone == 1  # refused once, then linked to b's
    redone = b.appends_redone
    pair = b.append_pair(_record(4), AuditRecord(phase="outcome", syscall="clock.now",
                                                 detail={"ok": True}))
    assert pair == third + 1 and b.appends_redone == redone + 1
    assert a.append_audit(_record(5)) == pair + 2 and a.appends_redone == 2
    assert a.append_audit(_record(6)) == pair + 3 and a.appends_redone == 2  # its own head
    seqs, problems = _chain(pg_database, brokers)
    assert problems == [] and seqs == list(range(1, pair + 4))


def test_the_server_refuses_a_transaction_on_a_head_that_is_not_the_chains(
        brokers: list[PostgresStore], pg_database: str) -> None:
    a, _, _ = brokers
    head = a.append_audit(_record(1))
    with pytest.raises(HeadMoved) as refused, a.transaction() as db:
        db.execute("INSERT INTO meta(key, value) VALUES ('sent', 'before the check')")
        a._expect_head(db, (0, GENESIS))
        db.execute("INSERT INTO meta(key, value) VALUES ('sent', 'after the check')")
    assert refused.value.head is not None and refused.value.head[0] == head
    assert a.meta("sent") is None  # the whole transaction, sent in one batch, wrote nothing
    assert a.append_audit(_record(2)) == head + 1  # and the connection goes on
    assert _chain(pg_database, brokers)[1] == []


def test_the_fence_refuses_the_whole_batch_of_a_lost_lease(
        brokers: list[PostgresStore], pg_database: str) -> None:
    a, b, _ = brokers
    lease = a.take_lease(5, "b0", ttl=60)
    before = a.append_audit(_record(0))
    with raw(pg_database) as db:  # as if a froze past its lease and b took the process
        db.execute("UPDATE leases SET expires=0 WHERE pid=5")
    taken = b.take_lease(5, "b1", ttl=60)
    token = FENCE.set(lease)
    try:
        with pytest.raises(LeaseLost, match="lease 1 was taken by another broker"):
            a.append_audit(_record(1, pid=5))
        with pytest.raises(LeaseLost, match="taken by another broker"):
            a.save_checkpoint(5, 1, {"cwd": "/"}, defer=True)  # written at once, refused
    finally:
        FENCE.reset(token)
    with pytest.raises(LeaseLost, match=f"lease {taken.token} expired"), a.transaction() as db:
        db.execute("INSERT INTO meta(key, value) VALUES ('late', 'x')")
        db.execute("SELECT libos_fence(?, ?, ?)", (5, taken.token, 10.0**12))
    assert a.meta("late") is None and a.checkpoint(5) is None
    seqs, problems = _chain(pg_database, brokers)
    assert problems == [] and seqs[-1] == before  # nothing of a's late writes landed
    token = FENCE.set(taken)
    try:
        assert b.append_audit(_record(2, pid=5)) == before + 1  # the new holder writes
    finally:
        FENCE.reset(token)


def test_brokers_appending_at_once_make_one_chain(brokers: list[PostgresStore],
                                                  pg_database: str) -> None:
    """Real connections, one thread per broker, every kind of append at once: each append is
    one batch that links to the head its broker last knew, checked under the write lock."""
    rounds = 40
    start = threading.Barrier(len(brokers))
    errors: list[BaseException] = []

    def work(store: PostgresStore, i: int) -> None:
        try:
            start.wait()
            for n in range(rounds):
                store.append_audit(_record(n, pid=i))
                store.append_pair(_record(n, pid=i), AuditRecord(
                    phase="outcome", syscall="clock.now", pid=i, detail={"ok": True}))
                with store.audited() as (db, append):
                    db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key)"
                               " DO UPDATE SET value=excluded.value", (f"b{i}", str(n)))
                    append(_record(n, pid=i))
        except BaseException as exc:
            errors.append(exc)

    before = brokers[0].last_seq()
    threads = [threading.Thread(target=work, args=(s, i)) for i, s in enumerate(brokers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    seqs, problems = _chain(pg_database, brokers)
    assert problems == []
    assert seqs == list(range(1, before + len(brokers) * rounds * 4 + 1))
    with raw(pg_database) as db:
        per_broker = dict(db.execute("SELECT pid, COUNT(*) FROM audit WHERE pid IS NOT NULL"
                                     " GROUP BY pid").fetchall())
    assert per_broker == {i: rounds * 4 for i in range(len(brokers))}
    assert sum(s.appends_redone for s in brokers) > 0  # the brokers did interleave


def test_a_write_transaction_reaches_the_server_as_one_query(
        brokers: list[PostgresStore], pg_database: str) -> None:
    """The lock, the fence, the writes and the COMMIT arrive together, so the server never
    holds the write lock while it waits for the broker: its record of the session's last
    query is the whole transaction."""
    a = brokers[0]
    lease = a.take_lease(9, "b0", ttl=60)
    token = FENCE.set(lease)
    try:
        a.save_checkpoint(9, 1, {"cwd": "/"})
    finally:
        FENCE.reset(token)
    with raw(pg_database) as db:
        [(last,)] = db.execute("SELECT query FROM pg_stat_activity WHERE pid=?",
                               (a._db.raw.info.backend_pid,)).fetchall()
    parts = [part.strip().split()[0:2] for part in last.split(";\n")]
    assert parts[0] == ["BEGIN"] and parts[-1] == ["COMMIT"]
    assert [p for p in parts if p[0] == "SELECT"] == [
        ["SELECT", f"pg_catalog.pg_advisory_xact_lock({WRITE_LOCK})"],
        ["SELECT", "public.libos_fence(9::pg_catalog.int8,"]]
    assert ["INSERT", "INTO"] in parts and ["DELETE", "FROM"] in parts
    assert a.checkpoint(9)["step"] == 1
