"""Red team 9 on the lock file beside an SQLite store (lane anchorkept keeps the anchor in
the key's directory; the lock file is where the anchor is written first). The attacker
writes the database's directory, not the key's: it replaces `<db>.lock` with a symbolic link
to a file of the broker's user, here the audit key itself. The writer opened the link,
flocked the file it names and wrote its head and signed anchor over its first 640 bytes
(HIGH: any file the broker's user may write is overwritten, the key that signs the chain
destroyed; the next open has no key). A lock file that is a symbolic link is refused, typed,
before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import Conflict, InvalidArgument
from broker.store.audit import AuditRecord
from broker.store.sqlite import SQLiteStore


def _written(db: Path) -> Path:
    store = SQLiteStore(db)
    store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))
    assert store._key is not None
    key = store._key.path
    store.close()
    return key


def test_a_lock_file_linked_to_the_key_is_refused_and_the_key_kept(tmp_path: Path) -> None:
    db = tmp_path / "store" / "libos.db"
    db.parent.mkdir()
    key = _written(db)
    kept = key.read_bytes()
    lock = Path(f"{db}.lock")
    lock.unlink()
    lock.symlink_to(key)
    with pytest.raises(InvalidArgument, match="symbolic link"):
        SQLiteStore(db)
    assert key.read_bytes() == kept
    # The neighbour: the lock file put back as a file, the store opens and writes.
    lock.unlink()
    store = SQLiteStore(db)
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))
    finally:
        store.close()
    assert key.read_bytes() == kept


def test_a_database_linked_to_another_open_store_is_not_opened_past_its_lock(
        tmp_path: Path) -> None:
    """The attacker replaces the database (in a directory it writes) with a symbolic link to
    another store of the same user, open now: the writer opened that store under a lock file
    of its own, a second writer of it (MEDIUM: the running broker's chain gets appends it did
    not make, its head moves under it; the memory of the attacker's path takes that store's
    anchor). Fixed: the path is resolved once, the lock taken beside the file it names."""
    other = tmp_path / "other" / "libos.db"
    other.parent.mkdir()
    _written(other)
    attacked = tmp_path / "attacked" / "libos.db"
    attacked.parent.mkdir()
    running = SQLiteStore(other)
    try:
        attacked.symlink_to(other)
        with pytest.raises(Conflict):
            SQLiteStore(attacked).close()
    finally:
        running.close()


def _records(db: Path) -> int:
    import sqlite3
    with sqlite3.connect(db) as con:
        count = con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    con.close()
    return int(count)


def test_a_database_swapped_for_a_link_as_it_is_opened_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the resolution leaves: the name is a file when it is resolved, a link to
    another store when SQLite opens it (here: the resolution sees the name as it is, the link
    unresolved). SQLite opened the other store: refused, typed, nothing appended to it."""
    import broker.store.sqlite as sqlite_module

    other = tmp_path / "other" / "libos.db"
    other.parent.mkdir()
    _written(other)
    before = _records(other)
    attacked = tmp_path / "attacked" / "libos.db"
    attacked.parent.mkdir()
    attacked.symlink_to(other)
    monkeypatch.setattr(sqlite_module, "resolved", str)  # (the name still a file then)
    with pytest.raises(InvalidArgument, match="replaced while it was opened"):
        SQLiteStore(attacked)
    assert _records(other) == before
    monkeypatch.undo()
    # The neighbour: a link of the user's own to a store nobody has open opens that store,
    # its lock beside it; a second writer through either name is refused.
    store = SQLiteStore(attacked)
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="test.step", detail={}))
        assert Path(f"{other}.lock").exists()
        with pytest.raises(Conflict):
            SQLiteStore(other).close()
    finally:
        store.close()
    assert _records(other) > before
