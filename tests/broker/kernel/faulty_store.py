"""A store made to fail deterministically: real SQLite, a trigger that raises on inserts into
one table while a switch row (set from a second connection) says so. Shared by the tests of
a failing store (`broker.kernel.faults`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Fault:
    """Triggers on the broker's own database that make writes to some tables fail (as a
    disk that is full would) while the switch (`set`) is on."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.other: sqlite3.Connection | None = None

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.other is not None:
            self.other.close()

    def install(self, *tables: str, updates: tuple[str, ...] = ()) -> None:
        """Inserts into `tables`, and updates of `updates`, fail while the switch is on."""
        self.other = sqlite3.connect(self.db, isolation_level=None)
        self.other.executescript("CREATE TABLE fault(failing INTEGER NOT NULL); "
                                 "INSERT INTO fault VALUES (0);")
        for verb, names in (("INSERT", tables), ("UPDATE", updates)):
            for table in names:
                self.other.execute(
                    f"CREATE TRIGGER fail_{verb}_{table} BEFORE {verb} ON {table} "
                    "WHEN (SELECT failing FROM fault) BEGIN SELECT RAISE(ABORT, 'disk full'); "
                    "END")

    def set(self, failing: bool) -> None:
        assert self.other is not None
        self.other.execute("UPDATE fault SET failing=?", (int(failing),))

    def count(self, sql: str, *args: object) -> int:
        assert self.other is not None
        return int(self.other.execute(sql, args).fetchone()[0])
