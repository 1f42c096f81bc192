"""A store made to fail deterministically: real SQLite, a trigger that raises on inserts into
one table while a switch row (set from a second connection) says so. Shared by the tests of
a failing store (`broker.kernel.faults`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Fault:
    """A trigger on the broker's own database that makes an insert into `table` fail (as a
    disk that is full would) while `on`."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.other: sqlite3.Connection | None = None

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.other is not None:
            self.other.close()

    def install(self, table: str) -> None:
        self.other = sqlite3.connect(self.db, isolation_level=None)
        self.other.executescript(f"""
            CREATE TABLE fault(failing INTEGER NOT NULL);
            INSERT INTO fault VALUES (0);
            CREATE TRIGGER fail_{table} BEFORE INSERT ON {table}
            WHEN (SELECT failing FROM fault) BEGIN SELECT RAISE(ABORT, 'disk full'); END;""")

    def set(self, failing: bool) -> None:
        assert self.other is not None
        self.other.execute("UPDATE fault SET failing=?", (int(failing),))

    def count(self, sql: str, *args: object) -> int:
        assert self.other is not None
        return int(self.other.execute(sql, args).fetchone()[0])
