"""Red team 12: numbers the store reads back as text, checked with `str.isdigit` and then
read with `int`. The attacker writes the database: a digit `isdigit` accepts and `int` does
not (the superscript two) raised ValueError, a traceback from a reader's command or a
writer's registration, where a typed answer or the default was meant (LOW: the same class
as the lock file's seq, `test_store_file_redteam12`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker.store.sqlite import SQLiteStore


def _edit(db: Path, sql: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(sql)
    con.close()


def test_a_noted_retention_in_digits_int_refuses_is_the_default(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    store = SQLiteStore(db)
    store.set_checkpoint_retention(3)
    store.close()
    _edit(db, "UPDATE meta SET value='\u00b2' WHERE key='checkpoint_retention'")
    reader = SQLiteStore(db, writer=False)
    try:
        assert reader._read_keep() > 0
    finally:
        reader.close()


def test_an_image_version_in_digits_int_refuses_is_not_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    store = SQLiteStore(db)
    store.add_image_version("agent", {"entry": "a"})
    store.close()
    _edit(db, "UPDATE images SET version='\u00b2'")
    store = SQLiteStore(db)
    try:
        assert store.add_image_version("agent", {"entry": "b"}) == "1"
    finally:
        store.close()
