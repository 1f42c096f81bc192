"""A single writer whose connection to PostgreSQL breaks (a server restart, a network blip)
connects again at its next statement, with its writer lock and settings, and only if nobody
wrote the audit chain meanwhile: a typed error otherwise, never an append on a stale head and
never a hang."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from broker import Conflict
from broker.store import AuditRecord
from broker.store.pg_connection import RETRY, StoreUnavailable, connect
from broker.store.postgres import WRITER_LOCK, PostgresStore, WrittenMeanwhile
from broker.store.refusals import WriteRefused
from tests.broker.store.pg_proxy import Proxy


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


def _assert_whole(dsn: str, records: int) -> None:
    """The chain, opened again, holds `records` records and verifies."""
    after = PostgresStore(dsn)
    try:
        assert after.audit_problems() == (records, [])
    finally:
        after.close()


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
    _assert_whole(pg_database, 3)


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


def _ns(store: PostgresStore) -> list[str]:
    rows = store._db.execute("SELECT detail::jsonb->>'n' FROM audit WHERE detail::jsonb ? 'n'"
                             " ORDER BY seq").fetchall()
    return [row[0] for row in rows]


def test_a_commit_whose_answer_was_lost_is_its_own_and_goes_on(pg_database: str,
                                                                proxy: Proxy) -> None:
    """The connection broke after the write's end (a transaction's COMMIT, or the one
    INSERT of records alone) reached the server, before its answer came back: the writer
    stopped for good (`WrittenMeanwhile`), its own records taken for another's. Now it
    connects again at once, finds the chain's head is the one its write made, and goes on as
    committed: no error, nothing written twice, the chain whole."""
    store = PostgresStore(proxy.dsn(pg_database))
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)  # carried by the transaction below
        proxy.trigger = b"COMMIT"
        with store.audited() as (_, append):
            append(record(3))
        assert proxy.lost == 1 and not store.deferred and store.head_seq == 3
        proxy.trigger = b"INSERT INTO audit"  # records alone: one statement, no COMMIT
        store.append_audit(record(4))
        assert proxy.lost == 2 and store.head_seq == 4
        store.append_audit(record(5))  # it goes on writing
        assert _ns(store) == ["1", "2", "3", "4", "5"]
    finally:
        store.close()
    _assert_whole(pg_database, 5)


def test_a_commit_whose_answer_was_lost_is_found_when_the_server_comes_back(
        pg_database: str, proxy: Proxy) -> None:
    """The same, the server not reachable at once: the caller is told the store is
    unavailable, what was deferred waits; once it is back, the head says the records that
    waited were committed: they are not written again, and the writer goes on."""
    store = PostgresStore(proxy.dsn(pg_database))
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)
        store.append_audit(record(3), defer=True)
        proxy.trigger, proxy.refusing = b"INSERT INTO audit", True
        with pytest.raises(StoreUnavailable):
            store.commit_deferred()
        assert proxy.lost == 1 and store.deferred
        proxy.refusing = False
        time.sleep(RETRY[1])  # (past the backoff)
        store.append_audit(record(4))
        assert not store.deferred and _ns(store) == ["1", "2", "3", "4"]
    finally:
        store.close()
    _assert_whole(pg_database, 4)


def test_a_writer_that_cannot_reach_the_server_tries_again_backing_off(
        pg_database: str, proxy: Proxy) -> None:
    """Every statement of every task tried to connect again at once (a hot loop against a
    server that is down). Now a failed try waits a delay that doubles before the next; the
    statements meanwhile are told `StoreUnavailable` at once."""
    store = PostgresStore(proxy.dsn(pg_database))
    try:
        store.append_audit(record(1))
        proxy.refusing = True
        cut(pg_database, store)
        tried = proxy.accepted
        for n in range(50):
            with pytest.raises(StoreUnavailable):
                store.append_audit(record(2 + n))
        assert proxy.accepted - tried < 10
        proxy.refusing = False
        time.sleep(RETRY[1])
        store.append_audit(record(2))
        assert store.head_seq == 2
    finally:
        store.close()


def test_a_lone_audit_write_whose_answer_was_lost_is_its_own(pg_database: str,
                                                             proxy: Proxy) -> None:
    """Red team (session 16): after a deferred write the store refused for good, those that
    waited with it are committed one at a time (`Connected._set_aside_refused`). The answer
    of one (a lone audit write) lost, the server gone a while: once it was back, the write
    was taken for another broker's (`WrittenMeanwhile`, the writer stopped for good), as its
    head was not the newest in memory (records waited after it). Now it is its own: taken as
    committed, nothing written twice."""
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
    _assert_whole(pg_database, 4)


def test_a_lost_commit_of_other_writes_beside_waiting_records_is_never_written_twice(
        pg_database: str, proxy: Proxy) -> None:
    """Red team rtd: a transaction of writes that are not records (events here; a process's
    row, a checkpoint) carried records that waited; its COMMIT's answer lost, the server gone
    a while. Its caller was told it failed (`StoreUnavailable`), and writes again; once the
    server was back, the head said the records that waited committed, and the transaction
    was taken for theirs alone: the caller's write, committed, was written a second time.
    Now its own writes count as its own: the writer stops (`WrittenMeanwhile`: its memory
    does not hold what it wrote; a reopen reads the store as it is), nothing twice."""
    store = PostgresStore(proxy.dsn(pg_database))
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)  # carried by the transaction below
        proxy.trigger, proxy.refusing = b"COMMIT", True
        with pytest.raises(StoreUnavailable):
            store.append_events([(None, "note", {"n": 1})])
        assert proxy.lost == 1
        proxy.refusing = False
        time.sleep(RETRY[1])  # (past the backoff)
        with pytest.raises(WrittenMeanwhile):  # (told it failed, the caller writes again)
            store.append_events([(None, "note", {"n": 1})])
    finally:
        with pytest.raises(Conflict):  # (stopped: nothing more is written)
            store.close()
    after = PostgresStore(pg_database)
    try:
        assert [e["data"] for e in after.events()] == [{"n": 1}]
        # (What the stopped writer committed unsigned is noted on this reopen, as after a
        # crash: the chain links.)
        records, problems = after.audit_problems()
        assert records == 3 and _ns(after) == ["1", "2"]
        assert all("a broker opening the store found" in p for p in problems), problems
    finally:
        after.close()


def test_a_reconnect_waits_for_its_lost_sessions_lock(pg_database: str) -> None:
    """The server ends a lost session's backend (and frees its writer lock) a moment after
    the client saw the connection go: a writer connecting again meanwhile finds the lock
    still held. It waits that out, briefly, instead of failing `Conflict` ("another broker
    has it open"), which it did on a loaded host. Here the moment is made long: another
    session holds the writer lock when the writer reconnects, and lets it go 0.3 s later."""
    store = PostgresStore(pg_database)
    holder = connect(pg_database, "holder")
    try:
        store.append_audit(record(1))
        store.append_audit(record(2), defer=True)
        cut(pg_database, store)
        assert holder.execute(f"SELECT pg_try_advisory_lock({WRITER_LOCK})").fetchone()[0]
        release = threading.Timer(0.3, lambda: holder.execute(
            f"SELECT pg_advisory_unlock({WRITER_LOCK})"))
        release.start()
        with pytest.raises(StoreUnavailable, match="lost the store"):
            store.commit_deferred()  # the cut found
        store.append_audit(record(3))  # connects again: waits for the lock, then writes
        release.join()
        assert not store.deferred and store.head_seq == 3
    finally:
        store.close()
        holder.close()
    _assert_whole(pg_database, 3)


def test_an_open_waits_for_a_crashed_brokers_session_lock(pg_database: str) -> None:
    """A broker SIGKILLed on this host leaves its anchor's flock free at once, but the server
    holds its session's writer lock until its backend sees the socket gone: an open at once
    (a restart, or a crash test's next open on a loaded host) failed `Conflict`. It waits that
    out, briefly. Made long here: another session holds the lock and lets it go 0.3 s into
    the open. The neighbour: a lock held past the patience still refuses."""
    holder = connect(pg_database, "holder")
    try:
        assert holder.execute(f"SELECT pg_try_advisory_lock({WRITER_LOCK})").fetchone()[0]
        with pytest.raises(Conflict, match="another broker"):
            PostgresStore(pg_database)
        release = threading.Timer(0.3, lambda: holder.execute(
            f"SELECT pg_advisory_unlock({WRITER_LOCK})"))
        release.start()
        store = PostgresStore(pg_database)
        release.join()
        store.append_audit(record(1))
        store.close()
    finally:
        holder.close()
    _assert_whole(pg_database, 1)
