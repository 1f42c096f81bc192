"""Versioned schema migrations: one numbered line of SQL files per backend.

`sqlite/0001_initial.sql`, `postgres/0001_initial.sql`, then `0002_<what>.sql` and on: each
backend has its own line (the SQL differs), and both lines say the same thing version by
version, so the same store code reads and writes either. A store records each version applied
in `schema_migrations`. Opening a store applies the versions it lacks, in order, in one
transaction that holds the store's migration lock; a store that has a version this libos does
not know (a newer libos wrote it) is refused with `Conflict` and left untouched.

Version 1 of the SQLite line is the schema stores had before versions were numbered (every
statement IF NOT EXISTS), so such a store becomes version 1 by applying it, with the columns
added to it since (`_legacy_columns`).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from broker.errors import Conflict

LINES = ("sqlite", "postgres")
TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
         " name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)")
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations(line: str) -> tuple[Migration, ...]:
    """A backend's migrations, in order: numbered 1, 2, ... with no gap."""
    found = []
    # The package's own directory: what `importlib.resources.files` gives for a package on
    # disk (as libos is, installed or editable), without importing it (~1 ms at start-up).
    for entry in Path(__file__).with_name(line).iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {line} migrations are not numbered 1..n: {found}")
    return tuple(found)


def latest(line: str) -> int:
    return len(migrations(line))


def to_apply(line: str, have: int, where: str) -> tuple[Migration, ...]:
    """What a store at version `have` lacks; `Conflict` if it is newer than this libos."""
    if have > latest(line):
        raise Conflict(f"{where} has schema version {have}, newer than this libos knows "
                       f"({latest(line)}): open it with a newer libos")
    return migrations(line)[have:]


# -- SQLite ----------------------------------------------------------------------------------


def migrate_sqlite(db: sqlite3.Connection, now: float, where: str) -> int:
    """Bring an SQLite store up to date; returns its version. Reading the version first takes
    no lock: a store that is current (the usual case) costs one read."""
    if _sqlite_version(db) == latest("sqlite"):
        return latest("sqlite")
    db.execute("BEGIN IMMEDIATE")  # the write lock: two openers never both migrate
    try:
        db.execute(TABLE)
        have = _sqlite_version(db)
        for migration in to_apply("sqlite", have, where):
            for statement in _statements(migration.sql):
                db.execute(statement)
            if migration.version == 1:
                _legacy_columns(db)
            _record(db, migration, now)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return latest("sqlite")


def _sqlite_version(db: sqlite3.Connection) -> int:
    try:
        return int(db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0  # no such table: a new store, or one from before versions were numbered


def _statements(script: str) -> list[str]:
    """A script's statements, one by one (sqlite3's executescript would commit first)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def _legacy_columns(db: sqlite3.Connection) -> None:
    """Columns added to version 1 before versions were numbered (CREATE TABLE IF NOT EXISTS
    keeps an old table as it was)."""
    for table, column, kind in (("raised_seen", "taken", "INTEGER"), ("control", "arg", "TEXT"),
                                ("control", "result", "TEXT")):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _record(db: Any, migration: Migration, now: float) -> None:
    db.execute("INSERT INTO schema_migrations(version, name, applied) VALUES (?,?,?)",
               (migration.version, migration.name, now))


# -- PostgreSQL ------------------------------------------------------------------------------

# pg_advisory_xact_lock key of the migration lock (any fixed 64-bit number, distinct from the
# store's other lock keys in `broker.store.postgres`).
MIGRATION_LOCK = 0x6C69626F73_0001  # "libos", 1
# The migrations' transaction made in the store's schema, the one its versions are read from
# (a new store's: the session's first), pg_catalog searched first and pg_temp last: a schema
# a writer put ahead of the store's in the path (`ALTER DATABASE ... SET search_path`) had an
# upgrade make a whole new store there, which the brokers then read.
IN_STORE_SCHEMA = (
    "SELECT pg_catalog.set_config('search_path', pg_catalog.concat(COALESCE((SELECT"
    " relnamespace::pg_catalog.regnamespace::pg_catalog.text FROM pg_catalog.pg_class WHERE oid"
    " OPERATOR(pg_catalog.=) pg_catalog.to_regclass('schema_migrations')),"
    " pg_catalog.quote_ident(pg_catalog.current_schema())), ', pg_temp'), true)")


def migrate_postgres(db: Any, now: float, where: str) -> int:
    """Bring a PostgreSQL store up to date (DDL is transactional there: all of it, or none).
    `db` is the store's connection (`broker.store.pg_connection`)."""
    if _postgres_version(db) == latest("postgres"):
        return latest("postgres")
    db.execute(f"BEGIN; SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK});"
               f" {IN_STORE_SCHEMA}; {TABLE}")
    try:
        have = _postgres_version(db)
        for migration in to_apply("postgres", have, where):
            db.execute_script(migration.sql)
            _record(db, migration, now)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return latest("postgres")


def _postgres_version(db: Any) -> int:
    # (the catalog's functions, named: the session's path is not pinned yet)
    if db.execute("SELECT pg_catalog.to_regclass('schema_migrations')").fetchone()[0] is None:
        return 0
    return int(db.execute("SELECT pg_catalog.max(version) FROM schema_migrations"
                          ).fetchone()[0] or 0)
