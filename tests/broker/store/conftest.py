"""The store suite runs on both backends: `store_at` is an SQLite file, or a fresh database on
the session's PostgreSQL server (`tests.pg_cluster`). `raw` opens either behind the broker's
back, for the tests that tamper with what it wrote."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.store.location import is_database
from broker.store.pg_connection import connect


@contextmanager
def raw(store_at: str | Path) -> Iterator[Any]:
    """The store's database, opened behind the broker's back: `execute(sql, params)` with `?`
    placeholders, each statement committed."""
    if is_database(store_at):
        db = connect(str(store_at), "raw")
        try:
            yield db
        finally:
            db.close()
        return
    lite = sqlite3.connect(store_at)
    try:
        with lite:
            yield lite
    finally:
        lite.close()
