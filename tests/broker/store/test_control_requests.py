"""The `control` table, where `libos` commands leave requests for the broker: a request no
broker will apply (its process ended, or never existed) is answered, not left pending for ever;
done requests are trimmed in time, never one a command has yet to read back; the poll looks
through an index of the pending ones; and many brokers of one store each take only their own
processes' requests, each once. Both backends."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker.store.durable import _PENDING, _PENDING_OTHERS, KEEP_DONE, KEEP_DONE_FOR
from broker.store.keys import AuditKey
from broker.store.location import is_database
from broker.store.opening import open_store
from tests.broker.store.conftest import raw


def _process(store: Any, state: str = "running") -> int:
    return int(store.insert_process(parent=None, image="agent", version="1", state=state,
                                    root="/", cwd="/"))


def _pending(store_at: Path | str) -> int:
    with raw(store_at) as db:
        return int(db.execute("SELECT COUNT(*) FROM control WHERE done IS NULL").fetchone()[0])


def test_requests_no_broker_will_apply_are_answered_not_left_pending(
        store_at: Path | str) -> None:
    store = open_store(store_at)
    try:
        live, ended, killed = _process(store), _process(store, "exited"), _process(store, "killed")
        asks = {"live": store.add_control("pause", live),
                "ended": store.add_control("kill", ended),
                "killed": store.add_control("resume", killed),
                "unknown": store.add_control("pause", 999_999),
                "fork": store.add_control("fork", ended, {"checkpoint": None})}
        # A broker that runs none of them: it takes the fork from the ended process (anyone
        # may: nobody runs it) and answers those nobody will ever apply; the live process's
        # request stays for its own broker.
        taken = store.take_controls({12345})
        assert [(t["id"], t["verb"]) for t in taken] == [(asks["fork"], "fork")]
        assert store.control_result(asks["ended"]) == {
            "error": "CONFLICT", "message": f"process {ended} has ended (exited)"}
        assert store.control_result(asks["killed"]) == {
            "error": "CONFLICT", "message": f"process {killed} has ended (killed)"}
        assert store.control_result(asks["unknown"]) == {
            "error": "NOT_FOUND", "message": "process 999999 does not exist"}
        assert not store.control_done(asks["live"]) and _pending(store_at) == 1
        assert store.take_controls({12345}) == []
        [mine] = store.take_controls({live})
        assert mine["id"] == asks["live"] and store.control_result(asks["live"]) is None
        assert _pending(store_at) == 0
    finally:
        store.close()


def test_a_kill_of_an_ended_process_with_live_processes_below_it_is_taken(
        store_at: Path | str) -> None:
    """Its end left its children running: a kill of it kills them (`tree_kill`, the host's
    `kill`), so it is taken by a broker that runs one of them, not answered "has ended". A
    lineage that loops (rows anyone who writes the database may write) ends the walk."""
    store = open_store(store_at)
    try:
        root = _process(store, "exited")
        child = int(store.insert_process(parent=root, image="agent", version="1",
                                         state="exited", root="/", cwd="/"))
        grandchild = int(store.insert_process(parent=child, image="agent", version="1",
                                              state="running", root="/", cwd="/"))
        alone = _process(store, "exited")
        assert store.live_below(root) == [grandchild] and store.live_below(alone) == []
        asks = {"root": store.add_control("kill", root),
                "alone": store.add_control("kill", alone),
                "paused": store.add_control("pause", root)}  # (a pause needs it alive)
        assert store.take_controls({12345}) == []  # a broker that runs none of them
        assert store.control_result(asks["alone"])["error"] == "CONFLICT"
        assert store.control_result(asks["paused"])["error"] == "CONFLICT"
        assert not store.control_done(asks["root"])
        [taken] = store.take_controls({grandchild})
        assert (taken["id"], taken["verb"], taken["pid"]) == (asks["root"], "kill", root)
        assert store.control_result(asks["root"]) is None
        again = store.add_control("kill", root)
        assert [t["id"] for t in store.take_controls()] == [again]  # one broker: it
        with raw(store_at) as db:
            db.execute("UPDATE processes SET parent=? WHERE pid=?", (grandchild, root))
        assert store.live_below(root) == [grandchild]
    finally:
        store.close()


def _age(store_at: Path | str, seconds: float, ids: list[int]) -> None:
    with raw(store_at) as db:
        for request in ids:
            db.execute("UPDATE control SET done=done-? WHERE id=?", (seconds, request))


def test_done_requests_are_trimmed_but_not_before_their_command_can_read_them(
        store_at: Path | str) -> None:
    store = open_store(store_at)
    try:
        pid = _process(store)
        old = [store.add_control("pause", pid) for _ in range(3)]
        fork = store.add_control("fork", pid, {"checkpoint": None})
        unanswered = store.add_control("resume", pid)
        assert len(store.take_controls()) == 5
        for request in old:  # what the broker that took them writes (`Controls.apply`)
            store.finish_control(request, {"applied": True})
        _age(store_at, KEEP_DONE_FOR + 1, old[:2])
        _age(store_at, 120, [fork, unanswered])  # taken two minutes ago, answers still to come
        just_done = store.add_control("kill", pid)
        store.take_controls()  # (the trim runs with a take)
        store.finish_control(just_done, {"applied": True})
        with raw(store_at) as db:
            kept = {r[0] for r in db.execute("SELECT id FROM control").fetchall()}
        assert kept == {old[2], fork, unanswered, just_done}
        # Beyond the newest KEEP_DONE done requests, those older than a minute go too; but not
        # one still to be answered (a fork, or any other verb), nor any done in the last minute.
        with raw(store_at) as db:
            db.execute("INSERT INTO control(verb, pid, created, done, result) WITH RECURSIVE"
                       " n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?) SELECT"
                       " 'pause', ?, 0, ?, '{}' FROM n", (KEEP_DONE + 50, pid, time.time()))
        _age(store_at, 120, [old[2], just_done])
        store.add_control("pause", pid)
        store.take_controls()
        with raw(store_at) as db:
            kept = {r[0] for r in db.execute("SELECT id FROM control").fetchall()}
        assert fork in kept and unanswered in kept
        assert old[2] not in kept and just_done not in kept
        assert len(kept) == KEEP_DONE + 50 + 3  # the last minute's, the two unanswered, the new
        store.finish_control(fork, {"pid": 7})
        assert store.control_result(fork) == {"pid": 7}
    finally:
        store.close()


def test_the_poll_reads_through_the_index_of_pending_requests(store_at: Path | str) -> None:
    open_store(store_at).close()
    with raw(store_at) as db:
        if is_database(store_at):
            [(definition,)] = db.execute("SELECT indexdef FROM pg_indexes WHERE"
                                         " indexname='control_pending'").fetchall()
            assert definition.endswith("WHERE (done IS NULL)")
            return
        plans = [" ".join(str(r[-1]) for r in db.execute(f"EXPLAIN QUERY PLAN {query}"))
                 for query in ("SELECT pid FROM control WHERE done IS NULL", _PENDING,
                               _PENDING_OTHERS)]
    assert all("control_pending" in plan for plan in plans), plans


def test_a_store_at_version_6_gets_the_index_and_keeps_its_requests(
        store_at: Path | str) -> None:
    store = open_store(store_at)
    pid = _process(store)
    waiting = store.add_control("pause", pid)
    store.close()
    with raw(store_at) as db:  # back to version 6, as that libos left it
        db.execute("DROP INDEX control_pending")
        db.execute("DROP INDEX audit_vouching")  # (version 8's)
        db.execute("DROP INDEX audit_signed")  # (version 10's, and its column)
        db.execute("ALTER TABLE audit DROP COLUMN sig")
        db.execute("DROP INDEX audit_controls")  # (version 11's, and its column)
        db.execute("ALTER TABLE control DROP COLUMN sig")
        db.execute("DROP INDEX audit_answers")  # (version 12's, and its column)
        db.execute("ALTER TABLE approvals DROP COLUMN sig")
        db.execute("ALTER TABLE mailbox DROP COLUMN aside")  # (version 13's, and events')
        db.execute("ALTER TABLE raised_seen DROP COLUMN aside")
        db.execute("DROP INDEX audit_admin")  # (version 14's)
        db.execute("DROP INDEX audit_expired")  # (version 16's)
        db.execute("DELETE FROM schema_migrations WHERE version>=7")
    store = open_store(store_at)
    try:
        assert [t["id"] for t in store.take_controls({pid})] == [waiting]
    finally:
        store.close()
    with raw(store_at) as db:
        assert db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] >= 7
        if is_database(store_at):
            found = db.execute("SELECT 1 FROM pg_indexes WHERE indexname='control_pending'")
        else:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE name='control_pending'")
        assert found.fetchall()


def test_many_brokers_each_take_only_their_own_requests_each_once(pg_database: str) -> None:
    """(PostgreSQL: the store many brokers share, each running the processes it leases.)
    Two brokers poll at once while a command leaves requests for both, and for ended
    processes: each request is taken once, by the broker that runs its process, or answered."""
    store_at = pg_database
    first, second = open_store(store_at, broker="a"), open_store(store_at, broker="b")
    cli = open_store(store_at, writer=False)  # (`libos`'s: it signs with the user's key)
    key = AuditKey.open()
    try:
        ours = {id(first): {_process(first) for _ in range(3)},
                id(second): {_process(first) for _ in range(3)}}
        ended = _process(first, "exited")
        targets = [*sorted(ours[id(first)] | ours[id(second)]), ended]
        stop = threading.Event()
        taken: dict[int, list[dict[str, Any]]] = {id(first): [], id(second): []}

        def poll(store: Any) -> None:
            while not stop.is_set():
                taken[id(store)] += store.take_controls(ours[id(store)])

        asked: dict[int, int] = {}
        with ThreadPoolExecutor(2) as pool:
            polls = [pool.submit(poll, first), pool.submit(poll, second)]
            for n in range(60):
                pid = targets[n % len(targets)]
                asked[cli.add_control(("pause", "resume", "kill")[n % 3], pid, signer=key)] = pid
            deadline = time.monotonic() + 30
            while _pending(store_at) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            for done in polls:
                done.result(timeout=30)
        ids = [t["id"] for store in (first, second) for t in taken[id(store)]]
        assert len(ids) == len(set(ids))  # none taken twice
        for store in (first, second):
            assert all(t["pid"] in ours[id(store)] for t in taken[id(store)])
        answered = {r for r, pid in asked.items() if pid == ended}
        assert set(ids) == set(asked) - answered  # none lost
        assert all(cli.control_result(r)["error"] == "CONFLICT" for r in answered)
        assert _pending(store_at) == 0
    finally:
        for store in (cli, first, second):
            store.close()
