"""Red team 26: the chain's records the approval check reads (cancellations: `admin`; answers
applied: `approval.answer`) were read past the last seq seen, and that seq taken from any row,
even one past the chain's head. A database writer (no key) inserted one record far past the
head, let the broker read it (its read mark jumped there), and deleted it: the chain whole
again (`libos audit --verify` finds nothing), and every cancellation (or answer) the broker
recorded since unread for its life, so red team 24's revived answer was applied after its
request was cancelled. Now only records up to the chain's head are read."""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import CONTROL_RECORD
from broker.store.opening import open_store
from tests.broker.kernel.test_signed_answers_redteam21 import _exporting, _signed_for, _write
from tests.broker.store.conftest import raw

FAR = 10**12
FORGED = json.dumps({"request": "x", "state": "cancelled"})  # (a request never filed)


def _forge_far_record(db_path: Path, phase: str, syscall: str) -> None:
    with raw(db_path) as db:
        db.execute("INSERT INTO audit(seq, ts, phase, syscall, detail, prev_hash, hash)"
                   " VALUES (?,?,?,?,?,?,?)",
                   (FAR, time.time(), phase, syscall, FORGED, "0", "0"))


def _delete_far_record(db_path: Path) -> None:
    with raw(db_path) as db:
        db.execute("DELETE FROM audit WHERE seq=?", (FAR,))


async def test_a_record_past_the_head_does_not_hide_later_cancellations(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, _root, requests, done):
        [request, other] = sorted(requests, key=lambda r: r["resource"])
        # The writer's record past the head, read (a sweep's look at an answer written in
        # the store: the writer's own, unsigned, refused), then deleted: the chain is whole.
        _forge_far_record(db_path, "admin", "approval.answer")
        _write(db_path, other["id"], {"state": "approved", "answer": "once", "who": "cli",
                                      "answered": time.time()})
        kernel.queue.sweep()
        assert kernel.store.get_approval(other["id"])["state"] == "pending"  # (refused)
        _delete_far_record(db_path)
        assert kernel.store.audit_problems()[1] == []
        # Red team 24's revived cancellation: the person's signed answer, the call gone.
        signed = _signed_for(kernel, request)
        _write(db_path, request["id"], signed)
        kernel.queue._settle("cancelled", "cancelled: its call ended", ids=[request["id"]],
                             answered_too=True)
        await trio.sleep(0.3)  # (the waiting call takes its cancellation)
        _write(db_path, request["id"], {"state": "approved", "applied": None})
        kernel.queue.sweep()
        assert not [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "admin" and r["detail"]["request"] == request["id"]]
        assert kernel.store.get_approval(request["id"])["state"] == "cancelled"
        # The neighbour: the other request, answered by the person (signed), is applied.
        _write(db_path, other["id"], _signed_for(kernel, other))
        kernel.queue._wake(other["id"])
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
        assert done == ["u"]


def test_one_writers_store_reads_no_record_past_its_head(db_path: Path) -> None:
    """The writer's rows past the head (none is the chain's) are never read: nor a flood of
    them (each look read every one before the mark moved past them)."""
    store = SQLiteStore(db_path)
    try:
        head = store.linked_seq
        with raw(db_path) as db:
            for seq, phase, syscall in [(head + 5, "admin", "approval.answer"),
                                        (head + 6, "admin", CONTROL_RECORD)]:
                db.execute("INSERT INTO audit(seq, ts, phase, syscall, detail, prev_hash, hash)"
                           " VALUES (?,?,?,?,?,?,?)", (seq, time.time(), phase, syscall,
                                                       FORGED, "0", "0"))
        assert all(s <= head for s, _ in store.cancel_records(0))
        assert all(s <= head for s, _, _ in store.answer_records(0))
        assert all(s <= head for s, _ in store.control_records(0))
        assert not [d for _, d in store.cancel_records(0) if d.get("request") == "x"]
    finally:
        store.close()


def test_cancellations_are_read_and_other_admin_records_not(store_at: str | Path) -> None:
    """Only the admin records that may be a cancellation are read (a start's first look read
    every host act, ~3 a process), on both backends; a cancellation is."""
    store = open_store(store_at)
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="proc.end", pid=1,
                                       detail={"state": "killed"}))
        seq = store.append_audit(AuditRecord(
            phase="admin", syscall="fs.write", pid=1,
            detail={"request": "r1", "state": "cancelled", "error": "CANCELLED"}))
        store.append_audit(AuditRecord(phase="rejected", syscall="fs.write", pid=1,
                                       detail={"request": "r2", "state": "cancelled"}))
        assert [(s, d["request"]) for s, d in store.cancel_records(0)] == [(seq, "r1")]
        assert store.cancel_records(seq) == []
    finally:
        store.close()
