"""A single writer's memory of its newest signed anchor (broker/store/remembered.py): kept
owner-only in its key's directory, the same anchor as the lock file's; a store this key never
signed here (no memory, no lock file) is taken as before."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from broker.store import anchor, remembered
from broker.store.audit import AuditRecord
from broker.store.sqlite import SQLiteStore


def written(db: Path, records: int = 3) -> SQLiteStore:
    store = SQLiteStore(db)
    for _ in range(records):
        store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))
    return store


def test_each_signing_is_remembered_owner_only_beside_the_key(db_path: Path) -> None:
    store = written(db_path)
    assert store._key is not None
    memory = remembered.place(store._key, str(db_path) + ".lock")
    store.close()
    kept = remembered.recall(memory)
    assert kept is not None and kept == anchor.read(str(db_path) + ".lock")[1]
    assert kept.seq == store.head_seq
    assert memory.parent == store._key.path.parent / "anchors"
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600
    assert stat.S_IMODE(memory.parent.stat().st_mode) == 0o700


def test_a_store_this_key_never_signed_here_is_taken_as_before(db_path: Path) -> None:
    """No memory and no lock file (a store from before signed anchors, or a copy moved
    here): recorded as not signed, and nothing unvouched, as before."""
    store = written(db_path)
    assert store._key is not None
    memory = remembered.place(store._key, str(db_path) + ".lock")
    store.close()
    os.unlink(memory)
    os.unlink(str(db_path) + ".lock")
    store = SQLiteStore(db_path)
    try:
        problems = [r.record.detail["problem"] for r in store.audit_records()
                    if r.record.syscall == "audit.anchor"]
        assert store.unvouched_span is None
        assert [p for p in problems if "not signed" in p] and not [
            p for p in problems if "remembered" in p], problems
    finally:
        store.close()


def test_a_store_made_again_at_the_same_place_is_not_named_cut(db_path: Path) -> None:
    """A store deleted with its lock file and made again at the same path (as `libos demo`
    does at each run) starts an empty chain: nothing in it to vouch for, so the memory of the
    old store's anchor is not held against it (it was recorded as "removed" at every demo
    run, three more records each time), and the new store's first signing replaces it."""
    store = written(db_path)
    assert store._key is not None
    memory = remembered.place(store._key, str(db_path) + ".lock")
    store.close()
    for leftover in (db_path, Path(str(db_path) + ".lock"), Path(str(db_path) + "-wal"),
                     Path(str(db_path) + "-shm")):
        leftover.unlink(missing_ok=True)
    store = written(db_path, records=1)
    try:
        problems = [r.record.detail["problem"] for r in store.audit_records()
                    if r.record.syscall == "audit.anchor"]
        assert store.unvouched_span is None
        assert not [p for p in problems if "remembered" in p], problems
    finally:
        store.close()
    kept = remembered.recall(memory)
    assert kept is not None and kept == anchor.read(str(db_path) + ".lock")[1]


async def test_an_audit_wiped_beside_its_processes_is_not_taken_for_a_new_store(
        db_path: Path) -> None:
    """A writer who deletes every audit row and the lock file, leaving the process rows,
    made the chain look like a store made again (nothing noted): an empty chain beside
    process rows is an audit wiped, and the remembered anchor names it."""
    from broker import Kernel
    from tests.conftest import open_image

    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        kernel.spawn("agent", caps=["clock:*:read"])
    with sqlite3.connect(db_path) as con:
        con.execute("DELETE FROM audit")
    con.close()
    os.unlink(str(db_path) + ".lock")
    store = SQLiteStore(db_path)
    try:
        problems = [r.record.detail["problem"] for r in store.audit_records()
                    if r.record.syscall == "audit.anchor"]
        assert [p for p in problems if "remembered" in p], problems
    finally:
        store.close()
