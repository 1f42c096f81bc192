"""A store made to fail deterministically: the real database (SQLite, or PostgreSQL when given
a DSN), a trigger that raises on inserts into (or updates of) some tables while a switch row
(set from a second connection) says so. Shared by the tests of a failing store
(`broker.kernel.faults`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from broker.store.location import is_database
from broker.store.pg_connection import connect

# PostgreSQL's trigger: raises what a statement that fails raises (SQLSTATE P0001, psycopg's
# RaiseException: neither a lost connection nor a value it cannot hold).
_PG_RAISE = """
CREATE FUNCTION fail_while_set() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT failing FROM fault) <> 0 THEN RAISE EXCEPTION 'disk full'; END IF;
  RETURN NEW;
END $$"""


class Fault:
    """Triggers on the broker's own database that make writes to some tables fail (as a
    disk that is full would) while the switch (`set`) is on."""

    def __init__(self, db: Path | str) -> None:
        self.db = db
        self.other: Any = None  # sqlite3.Connection, or broker.store.pg_connection's

    @property
    def postgres(self) -> bool:
        return is_database(self.db)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.other is not None:
            self.other.close()

    def install(self, *tables: str, updates: tuple[str, ...] = ()) -> None:
        """Inserts into `tables`, and updates of `updates`, fail while the switch is on."""
        if self.postgres:
            self.other = connect(str(self.db), "fault")
            self.other.execute("CREATE TABLE fault(failing INTEGER NOT NULL); "
                               "INSERT INTO fault VALUES (0)")
            self.other.execute(_PG_RAISE)
        else:
            self.other = sqlite3.connect(self.db, isolation_level=None)
            self.other.executescript("CREATE TABLE fault(failing INTEGER NOT NULL); "
                                     "INSERT INTO fault VALUES (0);")
        for verb, names in (("INSERT", tables), ("UPDATE", updates)):
            for table in names:
                self.other.execute(
                    f"CREATE TRIGGER fail_{verb}_{table} BEFORE {verb} ON {table} FOR EACH ROW "
                    "EXECUTE FUNCTION fail_while_set()" if self.postgres else
                    f"CREATE TRIGGER fail_{verb}_{table} BEFORE {verb} ON {table} "
                    "WHEN (SELECT failing FROM fault) BEGIN SELECT RAISE(ABORT, 'disk full'); "
                    "END")

    def set(self, failing: bool) -> None:
        assert self.other is not None
        self.other.execute("UPDATE fault SET failing=?", (int(failing),))

    def count(self, sql: str, *args: object) -> int:
        assert self.other is not None
        return int(self.other.execute(sql, args).fetchone()[0])
