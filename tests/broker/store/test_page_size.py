"""A new SQLite store is made with 2 KiB pages (`broker.store.sqlite.PAGE_SIZE`: a call's
commit writes its audit table's last leaf whole, so a smaller page is less log per call); a
store made before keeps its own page size, and everything in it reads and verifies as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.store import sqlite as sqlite_store
from broker.store.audit import AuditRecord
from broker.store.sqlite import SQLiteStore


def _page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def _append(store: SQLiteStore, n: int) -> None:
    for i in range(n):  # (a row of about a call's size: a few leaf splits)
        store.append_audit(AuditRecord(phase="intent+outcome", syscall="fs.read", pid=1,
                                       resource=f"/data/{i}", detail={"result": "x" * 400}))


def test_a_new_store_has_the_smaller_pages_and_its_chain_verifies(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, audit_key=tmp_path / "key")
    _append(store, 40)
    store.close()
    assert _page_size(path) == sqlite_store.PAGE_SIZE == 2048
    store = SQLiteStore(path, audit_key=tmp_path / "key")
    try:
        checked, problems = store.audit_problems()
        assert checked >= 40 and problems == []
    finally:
        store.close()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_store_made_with_4k_pages_keeps_them_and_its_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str) -> None:
    path = tmp_path / "s.db"
    monkeypatch.setattr(sqlite_store, "PAGE_SIZE", 4096)  # as a libos before this made it
    store = SQLiteStore(path, audit_key=tmp_path / "key", durability=durability)
    _append(store, 20)
    store.close()
    monkeypatch.undo()
    store = SQLiteStore(path, audit_key=tmp_path / "key", durability=durability)
    _append(store, 20)  # appended to by this libos: same file, same pages
    try:
        assert _page_size(path) == 4096
        checked, problems = store.audit_problems()
        assert checked >= 40 and problems == []
        assert len(list(store.audit_records(pid=1))) == 40
    finally:
        store.close()
