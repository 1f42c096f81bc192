"""`libos audit --verify` (a reader) consults the anchor this user's key remembers signing for
a store (`broker.store.remembered`), as a writer's open does: an older lock file put back by
whoever writes the database's directory (a genuine anchor of this store, on the chain) is
named by the verifier itself, not only at the next open: one put back with the records
after it cut off (a rollback) passed before."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from broker.cli import main
from broker.store import anchor
from broker.store.audit import AuditRecord
from broker.store.sqlite import SQLiteStore

REMEMBERED = "but this user's key signed record"


def _step(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))
    finally:
        store.close()


def _verdict(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["audit", "--verify", "--db", str(db), "--json"])
    return code, json.loads(capsys.readouterr().out)["problems"]


def test_a_lock_file_deleted_is_named_by_verify(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Named as before (nothing proves the chain was not written again), once; the writer's
    next open records it from the memory (the audit record), and the verifier names that."""
    db = tmp_path / "libos.db"
    _step(db)
    assert _verdict(db, capsys) == (0, [])  # (the neighbour: a store as its writer left it)
    Path(f"{db}.lock").unlink()
    code, problems = _verdict(db, capsys)
    assert code != 0 and len(problems) == 1 and "signed anchor was removed" in problems[0]
    _step(db)
    code, problems = _verdict(db, capsys)
    assert code != 0 and len([p for p in problems if REMEMBERED in p]) == 1
    store = SQLiteStore(db, writer=False)
    try:
        notes = [r.record.detail["problem"] for r in store.audit_records()
                 if r.record.syscall == "audit.anchor"]
    finally:
        store.close()
    assert [n for n in notes if REMEMBERED in n]


def test_a_chain_rolled_back_with_its_older_lock_file_is_named_by_verify(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The writer of the directory keeps a copy of the lock file, later cuts the records
    written since off the chain and puts the copy back: chain and lock file agree, so the
    anchor check alone passed it (DESIGN §9: a rollback). The memory names it."""
    db = tmp_path / "libos.db"
    _step(db)
    kept = tmp_path / "kept.lock"
    shutil.copy(f"{db}.lock", kept)
    _step(db)
    _step(db)
    assert _verdict(db, capsys) == (0, [])
    shutil.copy(kept, f"{db}.lock")
    # (put back alone, the records past it are named as unvouched, as before)
    code, problems = _verdict(db, capsys)
    assert code != 0 and not [p for p in problems if REMEMBERED in p]
    signed = anchor.read(str(kept))[1]
    assert signed is not None
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM audit WHERE seq > ?", (signed.seq,))
    con.close()
    code, problems = _verdict(db, capsys)
    assert code != 0 and len(problems) == 1
    assert REMEMBERED in problems[0] and f"signed only record {signed.seq}" in problems[0]
