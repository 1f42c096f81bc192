"""Processes ended together (a tree killed): every process row and every request of theirs
settled, with its audit record (and each end its `proc.end`), in one transaction on each
backend; a write that fails on one of them leaves all of them, and the chain, as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.kernel.faults import STORE_FAULTS
from broker.store import AuditRecord, approvals
from broker.store.opening import open_store

KILLED = {"state": "killed", "reason": "killed", "usage": {}}


def _request(approval_id: str, pid: int) -> dict[str, Any]:
    return {"id": approval_id, "kind": "capability", "pid": pid, "syscall": "fs.write",
            "args": "{}", "args_hash": "h", "created": 1.0, "deadline": 4e9,
            "state": "pending"}


def _cancelled(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(phase="admin", syscall=row["syscall"], pid=row["pid"],
                       detail={"request": row["id"], "state": "cancelled"})


def test_processes_end_with_their_requests_all_or_none(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        a, b, c = (store.insert_process(parent=None, image="agent", version="1",
                                        state="runnable", root="/", cwd="/") for _ in range(3))
        for pid in (a, b, c):
            store.insert_approval(_request(f"r{pid}", pid))
        head = store.last_seq()
        # The second end cannot be written: the first, and its request, are rolled back.
        with pytest.raises(STORE_FAULTS):
            store.settle_approvals("cancelled", 2.0, _cancelled, answered_too=True,
                                   ended=[(a, KILLED), (b, {**KILLED, "no_such_column": 1})])
        assert {store.get_process(p)["state"] for p in (a, b)} == {"runnable"}
        assert {r["id"] for r in store.list_approvals()} == {f"r{a}", f"r{b}", f"r{c}"}
        assert store.last_seq() == head
        rows = store.settle_approvals("cancelled", 2.0, _cancelled, answered_too=True,
                                      ended=[(a, KILLED), (b, KILLED)])
        assert sorted(r["id"] for r in rows) == [f"r{a}", f"r{b}"]
        assert [store.get_process(p)["state"] for p in (a, b, c)] == [
            "killed", "killed", "runnable"]
        assert [r["id"] for r in store.list_approvals()] == [f"r{c}"]
        assert store.last_seq() == head + 4  # each end's `proc.end`, each request's record
        assert sorted((r.record.syscall, r.record.pid) for r in store.audit_records(after=head)
                      ) == [("fs.write", a), ("fs.write", b), ("proc.end", a), ("proc.end", b)]
        # No process ended: nothing settled (not every request, as with no filter at all).
        assert store.settle_approvals("cancelled", 3.0, _cancelled, answered_too=True,
                                      ended=[]) == []
        assert [r["id"] for r in store.list_approvals()] == [f"r{c}"]
    finally:
        store.close()


def test_a_tree_larger_than_one_statement_has_every_request_settled(
        store_at: str | Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree's pids are looked up a few at a time (a statement's parameters are bounded):
    every process's requests are settled, whatever the tree's size."""
    monkeypatch.setattr(approvals, "PIDS_AT_ONCE", 2)
    store = open_store(store_at)
    try:
        pids = [store.insert_process(parent=None, image="agent", version="1",
                                     state="runnable", root="/", cwd="/") for _ in range(5)]
        for pid in pids:
            store.insert_approval(_request(f"r{pid}", pid))
        rows = store.settle_approvals("cancelled", 2.0, _cancelled, answered_too=True,
                                      ended=[(pid, KILLED) for pid in pids])
        assert sorted(r["id"] for r in rows) == sorted(f"r{pid}" for pid in pids)
        assert store.list_approvals() == []
        assert {store.get_process(p)["state"] for p in pids} == {"killed"}
    finally:
        store.close()
