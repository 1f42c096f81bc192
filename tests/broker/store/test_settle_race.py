"""An answer given on one broker races the expiry of its request on another (issue #18):
exactly one outcome. The expiring broker read the request as pending, and another broker's
answer lands before its conditional update does: the answer stands (the person was told it
was taken), and no expiry is recorded over it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from broker.store import AuditRecord
from broker.store.pg_connection import connect
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw


def request(approval_id: str, pid: int, deadline: float) -> dict[str, Any]:
    return {"id": approval_id, "kind": "capability", "pid": pid, "syscall": "fs.write",
            "args": "{}", "args_hash": "h", "created": deadline - 60, "deadline": deadline,
            "state": "pending"}


def expiry(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(phase="denied", syscall=row["syscall"], pid=row["pid"],
                       detail={"request": row["id"], "state": "expired"})


def blocked_backends(dsn: str) -> int:
    with raw(dsn) as db:
        return db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type='Lock'"
                          " AND query LIKE 'UPDATE approvals%'").fetchone()[0]


def test_an_answer_that_lands_first_is_never_overwritten_by_an_expiry(
        pg_database: str, tmp_path: Path) -> None:
    now = time.time()
    store = PostgresStore(pg_database, broker="b", anchor=tmp_path / "b.anchor",
                          audit_key=tmp_path / "b.key")
    try:
        store.insert_approval(request("r1", 7, deadline=now))
        before = store.last_seq()
        # Another broker's answer, mid-transaction: its row version is not committed yet.
        answerer = connect(pg_database, "answerer")
        answerer.execute("BEGIN")
        answerer.execute("UPDATE approvals SET state='approved', answer='allow', who='alice',"
                         " answered=? WHERE id='r1' AND state='pending'", (now - 1,))
        settled: list[Any] = []
        sweep = threading.Thread(target=lambda: settled.append(store.settle_approvals(
            "expired", now + 1, expiry, ids=["r1"])))
        sweep.start()
        deadline = time.monotonic() + 20
        while blocked_backends(pg_database) == 0:  # it read 'pending'; its update waits
            assert time.monotonic() < deadline and sweep.is_alive()
            time.sleep(0.02)
        answerer.execute("COMMIT")
        sweep.join(20)
        answerer.close()
        assert settled == [[]]  # nothing expired: the answer came first
        assert store.get_approval("r1")["state"] == "approved"
        assert store.get_approval("r1")["applied"] is None  # the owner's to apply
        assert store.last_seq() == before  # no expiry record over the answer
        # The neighbour: a request nobody answered still expires, once, with its record.
        store.insert_approval(request("r2", 7, deadline=now))
        [row] = store.settle_approvals("expired", now + 1, expiry, ids=["r2"])
        assert row["id"] == "r2" and store.get_approval("r2")["state"] == "expired"
        assert store.last_seq() == before + 1
        assert store.settle_approvals("expired", now + 2, expiry, ids=["r2"]) == []
    finally:
        store.close()
