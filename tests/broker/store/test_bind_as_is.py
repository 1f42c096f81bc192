"""The SQLite store binds None and bytes through adapters that give them back as they are
(`broker.store.sqlite._bind_as_is`): found in one lookup, where sqlite3 otherwise fails three.
What is stored must not change: None is NULL, bytes a BLOB, and an adapter someone else
registered first is kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.store import sqlite as store_sqlite
from broker.store.audit import AuditRecord, verify_chain
from broker.store.sqlite import SQLiteStore


def test_none_and_bytes_have_adapters_that_change_nothing(tmp_path: Path) -> None:
    for kind in (type(None), bytes):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters
    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k")
    try:
        store.append_pair(AuditRecord(phase="intent", syscall="fs.read", pid=1),
                          AuditRecord(phase="outcome", syscall="fs.read", pid=1),
                          b"\x00\xffpayload")
        rows = store._db.execute(
            "SELECT typeof(inv), typeof(tool), typeof(payload), payload FROM audit"
            " WHERE syscall='fs.read' ORDER BY seq").fetchall()
        _, problems = verify_chain(store.audit_records())
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [("null", "null", "null", None),
                                        ("null", "null", "blob", b"\x00\xffpayload")]
    assert problems == []


def test_an_adapter_registered_before_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = {(bytes, sqlite3.PrepareProtocol): bytearray}
    monkeypatch.setattr(sqlite3, "adapters", theirs)
    monkeypatch.setattr(sqlite3, "register_adapter", lambda kind, fn: theirs.__setitem__(
        (kind, sqlite3.PrepareProtocol), fn))
    store_sqlite._bind_as_is()
    assert theirs[(bytes, sqlite3.PrepareProtocol)] is bytearray
    assert (type(None), sqlite3.PrepareProtocol) in theirs
