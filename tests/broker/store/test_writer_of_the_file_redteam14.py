"""Red team 14 against the writer's lock on the database file itself (lane inodelock,
`store_file.file_lock_path`): the database directory's writer, who holds no key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import broker.store.sqlite as sqlite_module
from broker.errors import Conflict, InvalidArgument
from broker.store.sqlite import SQLiteStore
from tests.broker.store.test_writer_of_the_file import _append, made_with_a_record


def test_a_name_swapped_after_sqlites_open_does_not_lock_another_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 14: the file's lock was keyed by a second look at the name after SQLite's
    open; the directory's writer who renamed another file over the hard link in that window
    had two writers (two WALs) on one file. The name's file before the open and at the lock
    are now compared (a swap there and back again is still not seen: DESIGN §9)."""
    store = made_with_a_record(tmp_path / "d" / "libos.db")
    link = tmp_path / "d" / "other.db"
    os.link(store, link)
    decoy = tmp_path / "d" / "decoy"
    decoy.write_bytes(b"x")
    running = SQLiteStore(store)
    real_check = sqlite_module.check_opened

    def swapped(db: object, path: str) -> None:  # (the attacker's rename, in the window)
        real_check(db, path)  # type: ignore[arg-type]
        if path == str(link):
            os.rename(decoy, link)

    monkeypatch.setattr(sqlite_module, "check_opened", swapped)
    second = None
    try:
        with pytest.raises((Conflict, InvalidArgument)):
            second = SQLiteStore(link)
    finally:
        if second is not None:
            second.close()
        running.close()


def test_an_old_anchor_put_at_a_linked_name_is_not_a_rollback_unseen(tmp_path: Path) -> None:
    """The directory's writer keeps an earlier lock file of the store (its anchor, signed),
    cuts the chain back to it, removes the lock beside the file and puts the earlier one at
    the linked name the user opens it by: the takeover moves it beside the file. Held: the
    anchor's memory names the rollback."""
    import sqlite3

    from broker.store.verify import audit_problems
    real = tmp_path / "d" / "real.db"
    real.parent.mkdir()
    SQLiteStore(real).close()
    link = tmp_path / "d" / "link.db"
    link.symlink_to(real)
    store = SQLiteStore(link)
    for _ in range(3):
        _append(store)
    store.close()
    earlier = Path(f"{real}.lock").read_bytes()
    with sqlite3.connect(real) as db:
        (kept,) = db.execute("SELECT max(seq) FROM audit").fetchone()
    store = SQLiteStore(link)
    for _ in range(5):
        _append(store)
    store.close()
    with sqlite3.connect(real) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (kept,))
    os.unlink(f"{real}.lock")
    Path(f"{link}.lock").write_bytes(earlier)
    store = SQLiteStore(link)
    try:
        _, problems = audit_problems(store)
    finally:
        store.close()
    assert any("removed or put back" in p for p in problems), problems  # (held: the memory)
